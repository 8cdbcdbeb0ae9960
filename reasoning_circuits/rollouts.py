"""Rollouts from one shared prefix: run the prefix once, sample many continuations of it.

Resampling importance (:mod:`reasoning_circuits.anchors`) needs hundreds of continuations of
the *same* token prefix ("the question and the reasoning up to sentence i"). Recomputing the
prefix for every continuation wastes most of the work: the prefix is usually far longer than
what is generated after it. :func:`sample_rollouts` runs the prefix through the model once,
keeps its KV cache, copies that cache to a batch of rows and samples the rows together. No row
is padded (they all start at the same position), rows leave the batch as soon as they stop,
and each row draws from its own random stream.

Seeds and batch size
--------------------
Every rollout has its own seed, and at every step it draws one uniform number from a
``torch.Generator`` seeded with it and picks its token by inverse CDF
(:func:`reasoning_circuits.collection.sample_tokens`, the rule trace collection uses). A
rollout therefore depends on its seed and its prefix, not on the batch size, the other rows
or the order of the rollouts. ``share_prefix=False`` computes the same rollouts the slow way
(one at a time, the prefix recomputed for each), for checking and benchmarking. The caveat of
:mod:`reasoning_circuits.collection` applies: a batch changes the floating-point rounding of
the logits slightly, so a draw within ~1e-6 of a CDF boundary could pick another token; the
tests compare batch sizes token for token.

Stopping
--------
A rollout stops at an end-of-sequence token (the tokenizer's and the model's
``generation_config`` EOS ids), at ``max_new_tokens``, at the model's context, or when the
caller's ``watch(rollout, generated)`` returns True (e.g. "the first sentence is complete and
it repeats the one we wanted to replace").
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from reasoning_circuits.collection import (
    _context_length,
    _hf_parts,
    _logits_kwarg,
    _select_rows,
    _stop_ids,
    sample_tokens,
)
from reasoning_circuits.errors import ContextLengthError

__all__ = ["Rollout", "RolloutStop", "Watch", "sample_rollouts"]

RolloutStop = Literal["eos", "length", "context", "watch"]
"""Why a rollout stopped: EOS, ``max_new_tokens``, the model's context, or ``watch``."""

Watch = Callable[[int, Sequence[int]], bool]
"""``watch(rollout, generated)`` after every sampled token (EOS excluded): True stops the row."""


@dataclass(frozen=True)
class Rollout:
    """One continuation of a prefix: the ids generated after it and why it stopped.

    ``ids`` include the final EOS token when ``stop_reason == "eos"``.
    """

    seed: int
    ids: tuple[int, ...]
    stop_reason: RolloutStop


def _expand_cache(cache: Any, n: int) -> Any:
    """A copy of a one-row KV cache repeated to ``n`` rows (the prefix cache stays intact)."""
    if hasattr(cache, "batch_repeat_interleave"):
        copied = copy.deepcopy(cache)
        if n > 1:
            copied.batch_repeat_interleave(n)
        return copied
    return tuple(tuple(t.expand(n, *t.shape[1:]).contiguous() for t in layer) for layer in cache)


@torch.no_grad()
def _prefix_state(hf: Any, prefix: Sequence[int], device: torch.device) -> tuple[Any, Tensor]:
    ids = torch.tensor([list(prefix)], dtype=torch.long, device=device)
    positions = torch.arange(len(prefix), device=device)[None, :]
    out = hf(input_ids=ids, position_ids=positions, use_cache=True, **_logits_kwarg(hf))
    return out.past_key_values, out.logits[:, -1, :]


@torch.no_grad()
def _decode(
    hf: Any,
    cache: Any,
    logits: Tensor,
    generators: Sequence[torch.Generator | None],
    *,
    start: int,
    limit: int,
    limit_reason: RolloutStop,
    temperature: float,
    top_p: float,
    stop_ids: set[int],
    watch: Callable[[int, list[int]], bool] | None,
    on_step: Callable[[int], None] | None,
) -> list[tuple[list[int], RolloutStop]]:
    """Sample every row from the cached state until it stops; rows share position ``start``."""
    device = logits.device
    extra = _logits_kwarg(hf)
    n = len(generators)
    active = list(range(n))
    generated: list[list[int]] = [[] for _ in range(n)]
    reasons: list[RolloutStop] = ["length"] * n
    position = start
    while active:
        uniforms = None
        if temperature > 0:
            draws = []
            for i in active:
                generator = generators[i]
                assert generator is not None
                draws.append(torch.rand((), generator=generator, dtype=torch.float64))
            uniforms = torch.stack(draws)
        tokens = sample_tokens(logits.float(), uniforms, temperature=temperature, top_p=top_p)
        if on_step is not None:
            on_step(len(active))
        keep: list[int] = []
        for j, (i, token) in enumerate(zip(active, tokens.tolist(), strict=True)):
            generated[i].append(int(token))
            if token in stop_ids:
                reasons[i] = "eos"
            elif watch is not None and watch(i, generated[i]):
                reasons[i] = "watch"
            elif len(generated[i]) >= limit:
                reasons[i] = limit_reason
            else:
                keep.append(j)
        if not keep:
            break
        if len(keep) < len(active):
            index = torch.tensor(keep, device=device)
            cache = _select_rows(cache, index)
            tokens = tokens[index]
            active = [active[j] for j in keep]
        positions = torch.full((len(active), 1), position, dtype=torch.long, device=device)
        out = hf(
            input_ids=tokens[:, None].to(device),
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            **extra,
        )
        cache, logits = out.past_key_values, out.logits[:, -1, :]
        position += 1
    return list(zip(generated, reasons, strict=True))


def sample_rollouts(
    model: Any,
    prefix: Sequence[int],
    seeds: Sequence[int],
    *,
    tokenizer: Any = None,
    temperature: float = 0.6,
    top_p: float = 0.95,
    max_new_tokens: int = 512,
    batch_size: int = 8,
    watch: Watch | None = None,
    share_prefix: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> list[Rollout]:
    """One continuation of the exact token ``prefix`` per seed, sampled in batches.

    Args:
        model: a ``TransformerBridge`` (its Hugging Face model generates) or an HF causal LM.
        prefix: the token ids to continue (BOS included if the model wants one); never text.
        seeds: one seed per rollout (e.g. from :func:`reasoning_circuits.anchors.rollout_seed`).
        tokenizer: default ``model.tokenizer``; gives the EOS ids.
        temperature: 0 = greedy; otherwise inverse-CDF sampling at this temperature.
        top_p: nucleus mass in (0, 1]; 1 = none.
        max_new_tokens: generated tokens per rollout at most (EOS included).
        batch_size: rollouts decoded together; does not change the rollouts.
        watch: ``watch(rollout_index, generated_ids) -> stop``, called after each token.
        share_prefix: True (default) runs the prefix once and copies its KV cache to every
            batch; False recomputes it for every rollout and decodes one rollout at a time
            (the slow reference; same rollouts).
        on_step: called with the number of rows decoded at each step (progress, throughput).

    Returns:
        One :class:`Rollout` per seed, in the order of ``seeds``.

    Raises:
        ContextLengthError: the prefix leaves no room in the model's context.
    """
    hf, tokenizer = _hf_parts(model, tokenizer)
    if not prefix:
        raise ValueError("prefix is empty; pass the token ids to continue (at least BOS)")
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if not (isinstance(max_new_tokens, int) and max_new_tokens >= 1):
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    stop_ids = set(_stop_ids(hf, tokenizer))
    context = _context_length(hf)
    limit = max_new_tokens
    limit_reason: RolloutStop = "length"
    if context is not None and context - len(prefix) < max_new_tokens:
        limit, limit_reason = context - len(prefix), "context"
        if limit < 1:
            raise ContextLengthError(
                f"the prefix has {len(prefix)} tokens and the model's context is {context}; "
                "nothing can be generated after it"
            )
    device = next(hf.parameters()).device
    was_training = bool(getattr(hf, "training", False))
    hf.eval()
    results: list[Rollout] = []
    try:
        groups = (
            [
                list(range(s, min(len(seeds), s + batch_size)))
                for s in range(0, len(seeds), batch_size)
            ]
            if share_prefix
            else [[i] for i in range(len(seeds))]
        )
        state = _prefix_state(hf, prefix, device) if share_prefix and seeds else None
        for group in groups:
            cache, logits = state if state is not None else _prefix_state(hf, prefix, device)
            generators: list[torch.Generator | None] = []
            for i in group:
                if temperature > 0:
                    generator = torch.Generator(device="cpu")
                    generator.manual_seed(int(seeds[i]))
                    generators.append(generator)
                else:
                    generators.append(None)
            row_watch = None
            if watch is not None:

                def row_watch(
                    row: int, ids: list[int], group: list[int] = group, user: Watch = watch
                ) -> bool:
                    return bool(user(group[row], ids))

            done = _decode(
                hf,
                _expand_cache(cache, len(group)),
                logits.expand(len(group), -1),
                generators,
                start=len(prefix),
                limit=limit,
                limit_reason=limit_reason,
                temperature=temperature,
                top_p=top_p,
                stop_ids=stop_ids,
                watch=row_watch,
                on_step=on_step,
            )
            results += [
                Rollout(int(seeds[i]), tuple(ids), reason)
                for i, (ids, reason) in zip(group, done, strict=True)
            ]
    finally:
        if was_training:
            hf.train()
    return results
