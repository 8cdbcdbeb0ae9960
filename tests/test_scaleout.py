"""Profiles split across processes: shares, merge order, resume, refusals; a real 2-process run."""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

import reasoning_circuits as rc
from reasoning_circuits.errors import FileFormatError
from reasoning_circuits.scaleout import merge_profiles, profile_shard

SCRIPT = Path(__file__).parent / "scripts" / "profile_shard.py"


class FakeState:
    """Stands in for accelerate.PartialState: contiguous shares, as accelerate splits."""

    def __init__(self, rank: int, world: int) -> None:
        self.process_index, self.num_processes = rank, world

    @contextmanager
    def split_between_processes(self, items):
        size, extra = divmod(len(items), self.num_processes)
        start = self.process_index * size + min(self.process_index, extra)
        yield items[start : start + size + (self.process_index < extra)]


def traces(tokenizer, n):
    return [
        rc.Trace.from_parts(
            f"Q: {i}+1? ",
            f"\n{i}+1={i + 1}. Done.\n" * (1 + i % 3),
            f" It is {i + 1}.",
            tokenizer,
            append_eos=True,
        )
        for i in range(n)
    ]


def assert_same(merged, whole):
    assert len(merged) == len(whole)
    for a, b in zip(merged, whole):
        np.testing.assert_allclose(a.masses, b.masses, atol=1e-6)
        np.testing.assert_allclose(a.entropies, b.entropies, atol=1e-6)


def test_shares_merge_in_trace_order_and_equal_one_process(gpt2, tokenizer, tmp_path):
    items = traces(tokenizer, 7)
    options = {"statistics": ("mass", "entropy"), "progress": False}
    for rank in (2, 0, 1):  # any order of finishing
        profile_shard(gpt2, items, tmp_path, state=FakeState(rank, 3), **options)
    merged = merge_profiles(tmp_path)
    assert [p.metadata["trace_index"] for p in merged] == list(range(7))
    assert_same(merged, rc.AttentionProfile.compute(gpt2, items, **options))


def test_resume_skips_finished_shares_and_refuses_foreign_ones(gpt2, tokenizer, tmp_path):
    items = traces(tokenizer, 4)
    first = profile_shard(gpt2, items, tmp_path, state=FakeState(0, 2), progress=False)
    stamp = first.stat().st_mtime_ns
    again = profile_shard(gpt2, items, tmp_path, state=FakeState(0, 2), progress=False)
    assert again == first and first.stat().st_mtime_ns == stamp  # not recomputed
    with pytest.raises(FileFormatError, match="have no profile"):
        merge_profiles(tmp_path)  # share 1 of 2 is missing
    with pytest.raises(FileFormatError, match="another run"):
        profile_shard(gpt2, items[:3], tmp_path, state=FakeState(0, 2), progress=False)
    with pytest.raises(FileFormatError, match="another run"):  # same traces, other options
        profile_shard(gpt2, items, tmp_path, state=FakeState(0, 2), by="sentences")
    profile_shard(gpt2, items, tmp_path, state=FakeState(0, 1), progress=False)
    with pytest.raises(FileFormatError, match="different process counts"):
        merge_profiles(tmp_path)
    with pytest.raises(FileNotFoundError, match="profile_shard"):
        merge_profiles(tmp_path / "empty")
    with pytest.raises(ValueError, match="fewer processes"):
        profile_shard(gpt2, items[:1], tmp_path / "x", state=FakeState(1, 2), progress=False)


@pytest.mark.slow
def test_two_real_cpu_processes(gpt2, tokenizer, tmp_path):
    """torchrun starts 2 processes; each profiles its share; the merge equals one process."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    done = subprocess.run(
        [*command, str(SCRIPT), str(tmp_path), "5"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "shard-00000-of-00002.npz",
        "shard-00001-of-00002.npz",
    ]
    merged = merge_profiles(tmp_path)
    whole = rc.AttentionProfile.compute(
        gpt2, traces(tokenizer, 5), statistics=("mass", "entropy"), batch_size=2
    )
    assert_same(merged, whole)
