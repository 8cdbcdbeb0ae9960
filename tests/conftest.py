"""Shared offline models. Session-scoped: each is built once per test run."""

from __future__ import annotations

import os

# Tests run offline: fail at once instead of retrying the hub (set before transformers loads).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

import reasoning_circuits as rc


@pytest.fixture(scope="session")
def gpt2():
    """A small random GPT-2 with single-token <think>/</think>."""
    return rc.testing.tiny_gpt2(seed=0)


@pytest.fixture(scope="session")
def gpt2_split():
    """The same architecture with a tokenizer that splits <think> into several tokens."""
    return rc.testing.tiny_gpt2(seed=0, think_tokens="split")


@pytest.fixture(scope="session")
def qwen():
    """A small Qwen2-style model with grouped-query attention (4 query heads, 2 KV heads)."""
    return rc.testing.tiny_qwen2(seed=0)


@pytest.fixture(scope="session")
def lively():
    """A random GPT-2 whose logits depend strongly on the input (init std 0.3), for patching:
    at the usual 0.02 the logits are nearly flat and clean/corrupted gaps vanish."""
    return rc.testing.tiny_gpt2(seed=3, n_layers=3, init_std=0.3)


@pytest.fixture(scope="session")
def gpt2_small():
    """The exact GPT-2-small architecture with random weights."""
    return rc.testing.gpt2_small(seed=0)


@pytest.fixture(scope="session")
def tokenizer(gpt2):
    return gpt2.tokenizer


@pytest.fixture(scope="session")
def split_tokenizer(gpt2_split):
    return gpt2_split.tokenizer
