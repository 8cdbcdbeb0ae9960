"""Offline test models: random-weight transformers, offline tokenizers, planted attention.

Nothing here touches the network. Every builder is seeded and runs in seconds:

* :func:`gpt2_small`: the exact GPT-2-small architecture (12 layers, 12 heads, d_model 768,
  d_mlp 3072, n_ctx 1024, GELU, LayerNorm, vocabulary 50257) with random weights.
* :func:`tiny_qwen2` / :func:`qwen2`: Qwen2-style models (rotary, RMSNorm, gated MLP,
  grouped-query attention with fewer key/value heads than query heads).
* :func:`bpe_tokenizer`: a byte-level BPE tokenizer trained on a small built-in corpus, with
  ``<think>``/``</think>`` either single added tokens or split into several tokens.
* :func:`planted_attention`: make chosen heads attend from one segment to another (e.g.
  answer → reasoning) with a known pattern, leaving everything else unchanged.

The models go through the same ``TransformerBridge.boot_transformers`` path as hub models.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from reasoning_circuits.heads import Head, as_heads

__all__ = [
    "bpe_tokenizer",
    "gpt2_small",
    "planted_attention",
    "planted_pattern",
    "qwen2",
    "tiny_gpt2",
    "tiny_qwen2",
]

ThinkTokens = Literal["single", "split"]

_CORPUS = """\
Let me think step by step. First, I add the two numbers: 12.50 + 3 = 15.50.
Then I multiply the result by 4, which gives 62. So the answer is 62.
Wait, let me check that again. The question asks for the total cost of the apples.
Each apple costs 2 dollars and she buys 7 apples, so 7 * 2 = 14 dollars.
Therefore the final answer is 14. Hmm, maybe I should verify the arithmetic.
We have x = 3 and y = x + 5 = 8. Now compute z = y * 2 = 16.
The quick brown fox jumps over the lazy dog. A train leaves the station at 9 am.
How many eggs does Janet sell every day? She lays 16 eggs and eats 3 for breakfast.
Okay, I think I have finished thinking. The answer is 8.
Step 1: read the question. Step 2: write the equation. Step 3: solve it.
Alternatively, we could subtract first: 20 - 7 = 13, and 13 / 13 = 1.
"""


@functools.cache
def _workdir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="reasoning_circuits_testing_"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


@functools.cache
def _tokenizer_dir(think_tokens: ThinkTokens, vocab_size: int) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if think_tokens not in ("single", "split"):
        raise ValueError(f"think_tokens must be 'single' or 'split', got {think_tokens!r}")
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(_CORPUS.splitlines() * 4, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    if think_tokens == "single":
        # non-special added tokens, as in the DeepSeek-R1 tokenizers
        tok.add_tokens(["<think>", "</think>"])
    path = _workdir() / f"tokenizer_{think_tokens}_{vocab_size}"
    tok.save_pretrained(path)
    return path


def bpe_tokenizer(*, think_tokens: ThinkTokens = "single", vocab_size: int = 1000) -> Any:
    """An offline byte-level BPE tokenizer (GPT-2 style, BOS = EOS = ``<|endoftext|>``).

    ``think_tokens="single"``: ``<think>`` and ``</think>`` are single added tokens.
    ``think_tokens="split"``: they are split into several ordinary tokens.
    """
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_tokenizer_dir(think_tokens, vocab_size))


def _boot(
    hf_model: Any,
    think_tokens: ThinkTokens,
    vocab_size: int,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
) -> TransformerBridge:
    # The bridge needs a tokenizer loaded from a directory (an in-memory one lacks
    # name_or_path); weights stay in memory. Weights are drawn on the CPU in float32 (the same
    # numbers whatever the device) and then moved.
    from reasoning_circuits.models import _resolve_dtype

    torch_dtype = _resolve_dtype(dtype) if dtype is not None else torch.float32
    hf_model.to(device=torch.device(device), dtype=torch_dtype)
    directory = _workdir() / f"model_{id(hf_model)}"
    hf_model.config.save_pretrained(directory)
    for item in _tokenizer_dir(think_tokens, vocab_size).iterdir():
        shutil.copy(item, directory / item.name)
    bridge = TransformerBridge.boot_transformers(
        str(directory),
        hf_model=hf_model,
        tokenizer=bpe_tokenizer(think_tokens=think_tokens, vocab_size=vocab_size),
        device=str(device),
        dtype=torch_dtype,
    )
    bridge.eval()
    return bridge


def _hf_gpt2(
    *,
    n_layers: int,
    n_heads: int,
    d_model: int,
    n_ctx: int,
    vocab_size: int,
    seed: int,
    init_std: float = 0.02,
) -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        n_layer=n_layers,
        n_head=n_heads,
        n_embd=d_model,
        n_inner=4 * d_model,
        n_positions=n_ctx,
        vocab_size=vocab_size,
        bos_token_id=0,
        eos_token_id=0,
        initializer_range=init_std,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GPT2LMHeadModel(config).eval()


def tiny_gpt2(
    *,
    n_layers: int = 2,
    n_heads: int = 4,
    d_model: int = 64,
    n_ctx: int = 512,
    vocab_size: int = 1024,
    seed: int = 0,
    think_tokens: ThinkTokens = "single",
    init_std: float = 0.02,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
) -> TransformerBridge:
    """A small GPT-2 with random weights (fast tests).

    ``init_std`` is the weights' standard deviation. GPT-2's 0.02 gives nearly flat logits;
    a larger one (e.g. 0.3) gives a random model whose outputs depend strongly on its input,
    which patching tests need. ``device`` and ``dtype`` (e.g. ``"cuda"``, ``torch.bfloat16``)
    place the model; its weights are the same numbers whatever they are.
    """
    hf_model = _hf_gpt2(
        n_layers=n_layers,
        n_heads=n_heads,
        d_model=d_model,
        n_ctx=n_ctx,
        vocab_size=vocab_size,
        seed=seed,
        init_std=init_std,
    )
    return _boot(hf_model, think_tokens, min(vocab_size, 1000), device, dtype)


def gpt2_small(
    *,
    seed: int = 0,
    think_tokens: ThinkTokens = "single",
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
) -> TransformerBridge:
    """The exact GPT-2-small architecture with random weights and an offline tokenizer."""
    return tiny_gpt2(
        n_layers=12,
        n_heads=12,
        d_model=768,
        n_ctx=1024,
        vocab_size=50257,
        seed=seed,
        think_tokens=think_tokens,
        device=device,
        dtype=dtype,
    )


def _hf_qwen2(
    *,
    n_layers: int,
    n_heads: int,
    n_kv_heads: int,
    d_head: int,
    d_mlp: int | None,
    n_ctx: int,
    vocab_size: int,
    seed: int,
) -> Any:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    if n_heads % n_kv_heads:
        raise ValueError(f"n_heads ({n_heads}) must be a multiple of n_kv_heads ({n_kv_heads})")
    d_model = n_heads * d_head
    config = Qwen2Config(
        hidden_size=d_model,
        intermediate_size=d_mlp or 2 * d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads,
        max_position_embeddings=n_ctx,
        vocab_size=vocab_size,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=0,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Qwen2ForCausalLM(config).eval()


def qwen2(
    *,
    n_layers: int = 8,
    n_heads: int = 12,
    n_kv_heads: int = 2,
    d_head: int = 64,
    d_mlp: int | None = None,
    n_ctx: int = 8192,
    vocab_size: int = 1024,
    seed: int = 0,
    think_tokens: ThinkTokens = "single",
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
) -> TransformerBridge:
    """A Qwen2-style model (rotary, RMSNorm, gated MLP, grouped-query attention)."""
    hf_model = _hf_qwen2(
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        d_head=d_head,
        d_mlp=d_mlp,
        n_ctx=n_ctx,
        vocab_size=vocab_size,
        seed=seed,
    )
    return _boot(hf_model, think_tokens, min(vocab_size, 1000), device, dtype)


def tiny_qwen2(
    *,
    seed: int = 0,
    think_tokens: ThinkTokens = "single",
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
) -> TransformerBridge:
    """A small Qwen2-style model: 2 layers, 4 query heads sharing 2 key/value heads, d_head 16."""
    return qwen2(
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        d_head=16,
        n_ctx=512,
        seed=seed,
        think_tokens=think_tokens,
        device=device,
        dtype=dtype,
    )


# --------------------------------------------------------------------------- planting
PatternFn = Callable[[Int[Tensor, "batch pos"]], Float[Tensor, "batch query key"]]


@contextmanager
def planted_pattern(
    model: TransformerBridge, heads: Iterable[Head | tuple[int, int]], pattern_fn: PatternFn
) -> Iterator[None]:
    """Within the block, replace chosen heads' attention rows by ``pattern_fn(input_ids)``.

    ``pattern_fn`` gets the ``[batch, pos]`` input ids and returns a ``[batch, query, key]``
    pattern; rows that are NaN keep the model's own attention. The replacement happens at
    ``hook_pattern``, so it changes the head's output and everything downstream, and any
    hook added later (e.g. by ``AttentionProfile.compute``) sees the planted pattern.
    """
    chosen = as_heads(heads)
    ids_box: dict[str, Tensor] = {}

    def grab_ids(tensor: Tensor, *, hook: Any) -> None:
        ids_box["ids"] = tensor

    def plant(layer_heads: list[int]) -> Callable[..., Tensor]:
        def hook_fn(pattern: Tensor, *, hook: Any) -> Tensor:
            target = pattern_fn(ids_box["ids"]).to(device=pattern.device, dtype=pattern.dtype)
            keep = torch.isnan(target)
            pattern = pattern.clone()
            for h in layer_heads:
                pattern[:, h] = torch.where(keep, pattern[:, h], target)
            return pattern

        return hook_fn

    by_layer: dict[int, list[int]] = {}
    for head in chosen:
        by_layer.setdefault(head.layer, []).append(head.head)
    handles = [model.hook_dict["embed.hook_in"].add_hook(grab_ids, dir="fwd", is_permanent=True)]
    for layer, layer_heads in by_layer.items():
        point = model.hook_dict[f"blocks.{layer}.attn.hook_pattern"]
        handles.append(point.add_hook(plant(layer_heads), dir="fwd", is_permanent=True))
    try:
        yield
    finally:
        for handle in handles:
            handle.hook.remove()
        for point in model.hook_dict.values():
            point.fwd_hooks = [h for h in point.fwd_hooks if h not in handles]


def _find_run(row: Sequence[int], needle: Sequence[int], *, last_before: int | None = None) -> int:
    """Start of the first (or last, before ``last_before``) occurrence of ``needle`` in ``row``."""
    hits = [
        i
        for i in range(len(row) - len(needle) + 1)
        if list(row[i : i + len(needle)]) == list(needle)
    ]
    if last_before is not None:
        hits = [i for i in hits if i < last_before]
        return hits[-1] if hits else -1
    return hits[0] if hits else -1


@contextmanager
def planted_attention(
    model: TransformerBridge,
    heads: Iterable[Head | tuple[int, int]],
    *,
    query: Literal["answer", "reasoning"] = "answer",
    key: Literal["prompt", "reasoning", "answer"] = "reasoning",
    think_open: str = "<think>",
    think_close: str = "</think>",
) -> Iterator[None]:
    """Make ``heads`` attend uniformly from every ``query`` token to the ``key`` tokens.

    Segments are found in each batch row's ids from the delimiters (the last ``think_open``
    before the first ``think_close``), so it works for any batch. Here ``answer`` is every
    token after ``think_close`` (including a final EOS), ``reasoning`` the tokens strictly
    between the delimiters and ``prompt`` the tokens before ``think_open``. Only keys a row
    can see causally receive weight; rows with no such key keep the model's attention.
    """
    tok = model.tokenizer
    open_ids = tok(think_open, add_special_tokens=False)["input_ids"]
    close_ids = tok(think_close, add_special_tokens=False)["input_ids"]

    def spans(row: list[int]) -> dict[str, tuple[int, int]]:
        close = _find_run(row, close_ids)
        opening = _find_run(row, open_ids, last_before=close) if close >= 0 else -1
        if opening < 0:
            raise ValueError(
                f"planted_attention: no {think_open!r} ... {think_close!r} in a batch row"
            )
        return {
            "prompt": (0, opening),
            "reasoning": (opening + len(open_ids), close),
            "answer": (close + len(close_ids), len(row)),
        }

    def pattern_fn(ids: Tensor) -> Tensor:
        batch, n = ids.shape
        target = torch.full((batch, n, n), float("nan"))
        for b, row in enumerate(ids.tolist()):
            s = spans(row)
            q0, q1 = s[query]
            k0, k1 = s[key]
            for q in range(q0, q1):
                stop = min(k1, q + 1)
                if stop > k0:
                    target[b, q] = 0.0
                    target[b, q, k0:stop] = 1.0 / (stop - k0)
        return target

    with planted_pattern(model, heads, pattern_fn):
        yield
