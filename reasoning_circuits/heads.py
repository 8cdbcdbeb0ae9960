"""Heads: ranking reasoning-focused heads (RFHs) and comparing them with induction heads.

A *reasoning-focused head* is a head whose answer tokens put much of their attention on the
reasoning (a high ``answer→reasoning`` mass, see :mod:`reasoning_circuits.attention`). Given
per-trace masses ``[trace, layer, head]``, :func:`rank_heads` orders heads by

* ``method="mean"``: the mean over traces (R2A's red boxes: top-10 by mean ``a2r``), or
* ``method="frequency"``: how many traces have the head in their own top-k (R2A's unused
  per-example ranking), ties broken by the mean.

Ties are broken deterministically by (layer, head). :func:`rank_stability` tells how often a
head stays in the top-k when traces are resampled; :func:`contrast_heads` compares a set of
traces with reasoning and one without. :func:`induction_scores` and
:func:`previous_token_scores` give the classic head-type scores on repeated random tokens, so
RFHs can be compared with induction heads (which also attend far back, to copy).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float

if TYPE_CHECKING:
    from reasoning_circuits.attention import AttentionProfile, ProfileSet

__all__ = [
    "Head",
    "HeadRanking",
    "as_heads",
    "contrast_heads",
    "induction_scores",
    "previous_token_scores",
    "rank_heads",
    "rank_stability",
]

RankMethod = Literal["mean", "frequency"]


@dataclass(frozen=True, order=True)
class Head:
    """One attention head: ``Head(layer=5, head=1)``, printed as ``L5H1``."""

    layer: int
    head: int

    def __post_init__(self) -> None:
        if self.layer < 0 or self.head < 0:
            raise ValueError(f"layer and head must be >= 0, got {self.layer}, {self.head}")

    def __str__(self) -> str:
        return f"L{self.layer}H{self.head}"


def as_heads(heads: Iterable[Head | tuple[int, int]]) -> list[Head]:
    """Normalise ``Head`` objects and ``(layer, head)`` pairs to a list of ``Head``."""
    out = []
    for item in heads:
        if isinstance(item, Head):
            out.append(item)
        elif isinstance(item, tuple | list) and len(item) == 2:
            out.append(Head(int(item[0]), int(item[1])))
        else:
            raise TypeError(f"expected Head or (layer, head) pair, got {item!r}")
    return out


@dataclass(frozen=True)
class HeadRanking:
    """Heads in rank order with the score each was ranked by (iterable over the heads)."""

    heads: tuple[Head, ...]
    scores: tuple[float, ...]
    method: str
    query: str | None = None
    key: str | None = None

    def __iter__(self) -> Iterator[Head]:
        return iter(self.heads)

    def __len__(self) -> int:
        return len(self.heads)

    def __getitem__(self, index: int) -> Head:
        return self.heads[index]

    def to_frame(self) -> pd.DataFrame:
        """Columns ``rank, layer, head, score``."""
        return pd.DataFrame(
            {
                "rank": np.arange(1, len(self.heads) + 1),
                "layer": [h.layer for h in self.heads],
                "head": [h.head for h in self.heads],
                "score": self.scores,
            }
        )


def _per_trace(
    data: ProfileSet | Sequence[AttentionProfile] | AttentionProfile | np.ndarray,
    query: str,
    key: str,
) -> tuple[np.ndarray, tuple[int, ...], tuple[int, ...]]:
    """``[trace, layer, head]`` values and the model layer/head indices of its axes."""
    from reasoning_circuits.attention import AttentionProfile, ProfileSet

    if isinstance(data, AttentionProfile):
        data = ProfileSet([data])
    if isinstance(data, np.ndarray | torch.Tensor):
        array = np.asarray(data, dtype=np.float64)
        if array.ndim == 2:
            array = array[None]
        if array.ndim != 3:
            raise ValueError(
                f"an array of scores must be [trace, layer, head] or [layer, head], got shape "
                f"{array.shape}"
            )
        return array, tuple(range(array.shape[1])), tuple(range(array.shape[2]))
    profiles = data if isinstance(data, ProfileSet) else ProfileSet(list(data))
    return profiles.values(query, key), profiles.layers, profiles.heads


def _top_order(scores: np.ndarray) -> np.ndarray:
    """Flat indices sorted by descending score, NaN last, ties by (layer, head)."""
    flat = scores.ravel()
    key = np.where(np.isnan(flat), np.inf, -flat)
    return np.lexsort((np.arange(flat.size), key))


def rank_heads(
    data: ProfileSet | Sequence[AttentionProfile] | AttentionProfile | np.ndarray,
    *,
    query: str = "answer",
    key: str = "reasoning",
    k: int = 10,
    method: RankMethod = "mean",
) -> HeadRanking:
    """The top-``k`` heads by ``query→key`` mass.

    Args:
        data: profiles (a :class:`ProfileSet`, a list of profiles, one profile) or a plain
            array ``[trace, layer, head]`` (e.g. published per-example ``a2r`` arrays).
        query, key: the parts whose mass ranks the heads (ignored for arrays).
        k: how many heads to return.
        method: ``"mean"`` (mean over traces) or ``"frequency"`` (number of traces whose own
            top-k contains the head; ties broken by the mean).
    """
    values, layers, heads = _per_trace(data, query, key)
    n_layers, n_heads = values.shape[1:]
    if not 1 <= k <= n_layers * n_heads:
        raise ValueError(f"k must be in [1, {n_layers * n_heads}], got {k}")
    mean = np.nanmean(values, axis=0)
    if method == "mean":
        order = _top_order(mean)[:k]
        scores = mean.ravel()[order]
    elif method == "frequency":
        counts = np.zeros(n_layers * n_heads)
        for trace_values in values:
            counts[_top_order(trace_values)[:k]] += 1
        # descending count, then descending mean, then (layer, head)
        order = np.lexsort(
            (np.arange(counts.size), -np.nan_to_num(mean.ravel(), nan=-np.inf), -counts)
        )[:k]
        scores = counts[order]
    else:
        raise ValueError(f"method must be 'mean' or 'frequency', got {method!r}")
    chosen = tuple(Head(layers[i // n_heads], heads[i % n_heads]) for i in order)
    return HeadRanking(chosen, tuple(float(s) for s in scores), method, query, key)


def rank_stability(
    data: ProfileSet | Sequence[AttentionProfile] | np.ndarray,
    *,
    query: str = "answer",
    key: str = "reasoning",
    k: int = 10,
    method: RankMethod = "mean",
    n_resamples: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """How often each head is in the top-``k`` when traces are resampled with replacement.

    Returns a frame with ``layer, head, share, mean`` (share in [0, 1]) sorted by share. A head
    with share near 1 is a stable RFH; one near 0.5 depends on which traces were drawn.
    """
    values, layers, heads = _per_trace(data, query, key)
    rng = np.random.default_rng(seed)
    counts = np.zeros(values.shape[1] * values.shape[2])
    for _ in range(n_resamples):
        sample = values[rng.integers(0, len(values), size=len(values))]
        top = rank_heads(sample, k=k, method=method)
        for head in top:
            counts[head.layer * values.shape[2] + head.head] += 1
    mean = np.nanmean(values, axis=0).ravel()
    frame = pd.DataFrame(
        {
            "layer": np.repeat(np.asarray(layers), len(heads)),
            "head": np.tile(np.asarray(heads), len(layers)),
            "share": counts / n_resamples,
            "mean": mean,
        }
    )
    return frame.sort_values(["share", "mean"], ascending=False, kind="stable").reset_index(
        drop=True
    )


def contrast_heads(
    with_reasoning: ProfileSet | Sequence[AttentionProfile] | np.ndarray,
    without_reasoning: ProfileSet | Sequence[AttentionProfile] | np.ndarray,
    *,
    query: str = "answer",
    key: str = "reasoning",
    paired: bool | None = None,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """Per head, the mass with reasoning minus without, with a bootstrap CI.

    ``paired=True`` (default when both sets have the same number of traces) treats trace i
    of both sets as the same problem and resamples problems; ``paired=False`` resamples each
    set on its own. Returns ``layer, head, with, without, diff, ci_low, ci_high`` sorted by
    ``diff``, largest first.
    """
    a, layers, heads = _per_trace(with_reasoning, query, key)
    b, layers_b, heads_b = _per_trace(without_reasoning, query, key)
    if a.shape[1:] != b.shape[1:] or (layers, heads) != (layers_b, heads_b):
        raise ValueError(
            f"the two sets cover different heads ({a.shape[1:]} vs {b.shape[1:]}); compute "
            "both with the same layers and heads"
        )
    if paired is None:
        paired = len(a) == len(b)
    if paired and len(a) != len(b):
        raise ValueError(f"paired=True needs equal sizes, got {len(a)} and {len(b)}")
    rng = np.random.default_rng(seed)
    diff = np.nanmean(a, 0) - np.nanmean(b, 0)
    draws = np.empty((n_resamples, *diff.shape))
    for r in range(n_resamples):
        ia = rng.integers(0, len(a), size=len(a))
        ib = ia if paired else rng.integers(0, len(b), size=len(b))
        draws[r] = np.nanmean(a[ia], 0) - np.nanmean(b[ib], 0)
    alpha = (1 - confidence) / 2
    frame = pd.DataFrame(
        {
            "layer": np.repeat(np.asarray(layers), len(heads)),
            "head": np.tile(np.asarray(heads), len(layers)),
            "with": np.nanmean(a, 0).ravel(),
            "without": np.nanmean(b, 0).ravel(),
            "diff": diff.ravel(),
            "ci_low": np.quantile(draws, alpha, axis=0).ravel(),
            "ci_high": np.quantile(draws, 1 - alpha, axis=0).ravel(),
        }
    )
    return frame.sort_values("diff", ascending=False, kind="stable").reset_index(drop=True)


# ---------------------------------------------------------------------------- head types
def _repeated_tokens(model: Any, seq_len: int, n_sequences: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    vocab = int(model.cfg.d_vocab)
    if model.tokenizer is not None:
        vocab = min(vocab, len(model.tokenizer))  # ids the tokenizer can produce
    low = min(100, vocab // 2)  # skip the first ids (often special tokens)
    random_part = torch.randint(low, vocab, (n_sequences, seq_len), generator=generator)
    bos = getattr(model.tokenizer, "bos_token_id", None)
    parts = [random_part, random_part]
    if bos is not None:
        parts.insert(0, torch.full((n_sequences, 1), int(bos), dtype=torch.long))
    return torch.cat(parts, dim=1)


@torch.no_grad()
def _diagonal_scores(model: Any, tokens: torch.Tensor, offset: int, first_query: int) -> np.ndarray:
    """Mean over queries q >= first_query of A[q, q - offset], per layer × head."""
    n_layers = int(model.cfg.n_layers)
    scores = np.zeros((n_layers, int(model.cfg.n_heads)))

    def hook(pattern: torch.Tensor, hook: Any) -> None:
        layer = int(hook.name.split(".")[1])
        diagonal = pattern.diagonal(offset=-offset, dim1=-2, dim2=-1)  # [batch, head, pos-offset]
        start = first_query - offset
        scores[layer] = diagonal[..., start:].float().mean(dim=(0, 2)).cpu().numpy()

    model.run_with_hooks(
        tokens.to(model.cfg.device),
        return_type=None,
        fwd_hooks=[(f"blocks.{layer}.attn.hook_pattern", hook) for layer in range(n_layers)],
    )
    return scores


def induction_scores(
    model: Any, *, seq_len: int = 50, n_sequences: int = 8, seed: int = 0
) -> Float[np.ndarray, "layer head"]:
    """Induction score per head on ``[BOS] r r`` with ``r`` random tokens of length ``seq_len``.

    The score is the mean attention from each token of the second copy to the token right
    after its earlier occurrence (``A[q, q - seq_len + 1]``): 1 for a perfect induction head.
    """
    tokens = _repeated_tokens(model, seq_len, n_sequences, seed)
    offset = seq_len - 1
    first_query = tokens.shape[1] - seq_len
    return _diagonal_scores(model, tokens, offset, first_query)


def previous_token_scores(
    model: Any, *, seq_len: int = 50, n_sequences: int = 8, seed: int = 0
) -> Float[np.ndarray, "layer head"]:
    """Mean attention from every token (after the first) to the token before it."""
    tokens = _repeated_tokens(model, seq_len, n_sequences, seed)
    return _diagonal_scores(model, tokens, 1, 1)
