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

import re
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from reasoning_circuits import stats
from reasoning_circuits._hooks import act_name, hook_layer
from reasoning_circuits._inputs import check_batch_size, check_model
from reasoning_circuits._options import check_option
from reasoning_circuits._store import load_npz, save_npz
from reasoning_circuits.errors import ContextLengthError

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
_HEAD_NAME = re.compile(r"[Ll]\s*(\d+)\s*[Hh]\s*(\d+)")


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

    @classmethod
    def parse(cls, text: str) -> Head:
        """``Head.parse("L3H4")`` is ``Head(3, 4)`` (case and spaces ignored)."""
        match = _HEAD_NAME.fullmatch(text.strip())
        if match is None:
            raise ValueError(
                f"cannot read {text!r} as a head; write it like 'L3H4' (layer 3, head 4)"
            )
        return cls(int(match.group(1)), int(match.group(2)))


def as_heads(heads: Iterable[Head | tuple[int, int] | str] | Head | str) -> list[Head]:
    """Normalise ``Head`` objects, ``(layer, head)`` pairs and names such as ``"L3H4"`` (or one
    of them alone) to a list of ``Head``."""
    if isinstance(heads, Head | str):
        heads = [heads]
    out = []
    for item in heads:
        if isinstance(item, Head):
            out.append(item)
        elif isinstance(item, str):
            out.append(Head.parse(item))
        elif isinstance(item, tuple | list) and len(item) == 2:
            out.append(Head(int(item[0]), int(item[1])))
        else:
            raise TypeError(f"expected a Head, a (layer, head) pair or 'L3H4', got {item!r}")
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

    def __repr__(self) -> str:
        shown = ", ".join(f"{h}={s:.3g}" for h, s in zip(self.heads[:5], self.scores[:5]))
        more = f", … {len(self) - 5} more" if len(self) > 5 else ""
        what = f" {self.query}→{self.key}" if self.query is not None else ""
        return f"HeadRanking({self.method}{what}: {shown}{more})"

    def save(self, path: str | Path) -> Path:
        """Write ``.npz`` (``layer``, ``head``, ``score`` arrays and a JSON header)."""
        header = {"method": self.method, "query": self.query, "key": self.key}
        arrays = {
            "layer": np.asarray([h.layer for h in self.heads], dtype=np.int64),
            "head": np.asarray([h.head for h in self.heads], dtype=np.int64),
            "score": np.asarray(self.scores, dtype=np.float64),
        }
        return save_npz(path, "HeadRanking", header, arrays)

    @classmethod
    def load(cls, path: str | Path) -> HeadRanking:
        """Read a ranking written by :meth:`save`."""
        header, arrays = load_npz(path, "HeadRanking")
        heads = tuple(Head(int(a), int(b)) for a, b in zip(arrays["layer"], arrays["head"]))
        scores = tuple(float(x) for x in arrays["score"])
        return cls(heads, scores, header["method"], header["query"], header["key"])

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
    items = list(data)
    if not items:
        raise ValueError("no profiles given; rank heads over at least one trace")
    profiles = data if isinstance(data, ProfileSet) else ProfileSet(items)
    return profiles.values(query, key), profiles.layers, profiles.heads


def _scores(
    data: Any, query: str | None, key: str | None
) -> tuple[np.ndarray, tuple[int, ...], tuple[int, ...], str | None, str | None]:
    """``_per_trace`` with the query/key defaults; arrays refuse query/key (they are unused)."""
    if isinstance(data, np.ndarray | torch.Tensor):
        if query is not None or key is not None:
            raise ValueError(
                "query= and key= choose parts of profiles; an array of scores has none. "
                "Omit them, or pass the profiles instead of the array"
            )
        values, layers, heads = _per_trace(np.asarray(data), "", "")
        return values, layers, heads, None, None
    query, key = query or "answer", key or "reasoning"
    values, layers, heads = _per_trace(data, query, key)
    return values, layers, heads, query, key


def _trace_ids(data: Any) -> list[Any] | None:
    """The ``metadata["id"]`` of every profile, or ``None`` if any lacks one (or for arrays)."""
    if isinstance(data, np.ndarray | torch.Tensor):
        return None
    from reasoning_circuits.attention import AttentionProfile

    profiles = [data] if isinstance(data, AttentionProfile) else list(data)
    ids = [p.metadata.get("id") for p in profiles]
    return None if any(i is None for i in ids) else ids


def _usable(values: np.ndarray, what: str) -> np.ndarray:
    """``values`` without the traces that have no value for any head, under the NaN rule.

    Rule: a trace whose value is NaN for every head (e.g. an empty answer) is left out; a head
    whose value is NaN in some traces is scored on the traces where it has one. Both are
    counted in a warning. Nothing usable left raises ``ValueError``.
    """
    if values.shape[0] == 0:
        raise ValueError(f"{what} got zero traces; pass at least one")
    per_trace = np.isnan(values).reshape(len(values), -1)
    empty = per_trace.all(axis=1)
    if empty.all():
        raise ValueError(
            f"{what}: every value is NaN (in all {len(values)} traces); the query part has no "
            "tokens in any trace (e.g. empty answers), so there is nothing to rank"
        )
    if empty.any():
        warnings.warn(
            f"{what}: {int(empty.sum())} of {len(values)} traces have no value for any head "
            "(e.g. an empty answer) and were left out",
            RuntimeWarning,
            stacklevel=3,
        )
    kept = values[~empty]
    partial = np.isnan(kept).any(axis=0)
    if partial.any():
        warnings.warn(
            f"{what}: {int(partial.sum())} heads are NaN in some traces (at most "
            f"{int(np.isnan(kept).sum(axis=0).max())} of {len(kept)}); each is scored on the "
            "traces where it has a value",
            RuntimeWarning,
            stacklevel=3,
        )
    return kept


def _top_order(scores: np.ndarray) -> np.ndarray:
    """Flat indices sorted by descending score, NaN last, ties by (layer, head)."""
    flat = scores.ravel()
    key = np.where(np.isnan(flat), np.inf, -flat)
    return np.lexsort((np.arange(flat.size), key))


def rank_heads(
    data: ProfileSet | Sequence[AttentionProfile] | AttentionProfile | np.ndarray,
    *,
    query: str | None = None,
    key: str | None = None,
    k: int = 10,
    method: RankMethod = "mean",
) -> HeadRanking:
    """The top-``k`` heads by ``query→key`` mass.

    Args:
        data: profiles (a :class:`ProfileSet`, a list of profiles, one profile) or a plain
            array ``[trace, layer, head]`` (e.g. published per-example ``a2r`` arrays).
        query, key: the parts whose mass ranks the heads (default ``"answer"`` →
            ``"reasoning"``); not for arrays, which are scores already.
        k: how many heads to return.
        method: ``"mean"`` (mean over traces) or ``"frequency"`` (number of traces whose own
            top-k contains the head; ties broken by the mean).

    NaN values (a query part with no tokens) follow one rule: a trace with no value for any
    head is left out, and a head NaN in some traces is scored on the others; a warning counts
    both. Empty or all-NaN input raises ``ValueError``.
    """
    check_option(method, RankMethod, "method")
    values, layers, heads, query, key = _scores(data, query, key)
    values = _usable(values, "rank_heads")
    n_layers, n_heads = values.shape[1:]
    if not 1 <= k <= n_layers * n_heads:
        raise ValueError(f"k must be in [1, {n_layers * n_heads}], got {k}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN heads: counted above
        mean = np.nanmean(values, axis=0)
    n_scored = int(np.isfinite(mean).sum())
    if k > n_scored:
        raise ValueError(
            f"k={k} but only {n_scored} heads have a score (the rest are NaN in every trace)"
        )
    if method == "mean":
        order = _top_order(mean)[:k]
        scores = mean.ravel()[order]
    else:  # frequency
        counts = np.zeros(n_layers * n_heads)
        for trace_values in values:
            counts[_top_order(trace_values)[:k]] += 1
        # descending count, then descending mean, then (layer, head)
        order = np.lexsort(
            (np.arange(counts.size), -np.nan_to_num(mean.ravel(), nan=-np.inf), -counts)
        )[:k]
        scores = counts[order]
    chosen = tuple(Head(layers[i // n_heads], heads[i % n_heads]) for i in order)
    return HeadRanking(chosen, tuple(float(s) for s in scores), method, query, key)


def rank_stability(
    data: ProfileSet | Sequence[AttentionProfile] | np.ndarray,
    *,
    query: str | None = None,
    key: str | None = None,
    k: int = 10,
    method: RankMethod = "mean",
    n_resamples: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """How often each head is in the top-``k`` when traces are resampled with replacement.

    Returns a frame with ``layer, head, share, mean`` (share in [0, 1]) sorted by share. A head
    with share near 1 is a stable RFH; one near 0.5 depends on which traces were drawn.
    """
    check_option(method, RankMethod, "method")
    values, layers, heads, _, _ = _scores(data, query, key)
    values = _usable(values, "rank_stability")
    counts = np.zeros(values.shape[1] * values.shape[2])
    for draw in stats.bootstrap_indices(len(values), n_resamples, seed=seed):
        sample = values[draw]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # NaN heads: warned once above
            top = rank_heads(sample, k=k, method=method)
        for head in top:
            counts[head.layer * values.shape[2] + head.head] += 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
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
    query: str | None = None,
    key: str | None = None,
    paired: bool | None = None,
    confidence: float = 0.95,
    n_resamples: int = 4999,
    seed: int = 0,
) -> pd.DataFrame:
    """Per head, the mass with reasoning minus without, with intervals and adjusted p-values.

    Pairing: when every profile of both sets carries a problem id (``metadata["id"]``, kept
    from the trace), the sets are paired by id, in any order (default ``paired=None``); ids
    that are not in both sets, or repeated ids, raise ``ValueError``. Without ids (or for
    arrays) the sets are compared unpaired unless ``paired=True``, which then pairs trace i
    with trace i: say so only when the two lists are in the same problem order.
    ``paired=False`` compares the sets as independent (Welch).

    Returns one row per head, sorted by ``diff`` (largest first): ``layer, head, with,
    without, n, diff``; ``ci_low, ci_high`` and ``p``: the head's own (marginal) t interval
    and test; ``p_holm`` and ``p_fdr``: p adjusted over all heads (Holm: family-wise;
    Benjamini–Hochberg: false-discovery rate); ``sim_low, sim_high``: simultaneous intervals
    that hold for all heads together (max-|t| bootstrap). With hundreds of heads about 5%
    of null heads have a marginal interval without 0: to claim that particular heads
    differ read ``p_holm``; for candidates to follow up, ``p_fdr``; for the size of heads
    picked from this table, ``sim_*`` (see :func:`reasoning_circuits.stats.family_table`).
    """
    a, layers, heads, query, key = _scores(with_reasoning, query, key)
    b, layers_b, heads_b, _, _ = _scores(without_reasoning, query, key)
    if len(a) == 0 or len(b) == 0:
        raise ValueError("contrast_heads needs at least one trace in each set")
    ids_a, ids_b = _trace_ids(with_reasoning), _trace_ids(without_reasoning)
    if paired is None:
        paired = ids_a is not None and ids_b is not None
    if paired and ids_a is not None and ids_b is not None:
        b = b[_pair_order(ids_a, ids_b)]
    if a.shape[1:] != b.shape[1:] or (layers, heads) != (layers_b, heads_b):
        raise ValueError(
            f"the two sets cover different heads ({a.shape[1:]} vs {b.shape[1:]}); compute "
            "both with the same layers and heads"
        )
    if paired and len(a) != len(b):
        raise ValueError(f"paired=True needs equal sizes, got {len(a)} and {len(b)}")
    # heads with (almost) no spread of the difference get NaN instead of an unbounded bootstrap
    delta = a - b if paired else None
    if delta is not None:
        masked_delta, masked = stats.mask_degenerate_cells(delta, confidence=confidence)
        if masked:
            warnings.warn(
                f"contrast_heads: {masked} heads have (almost) no spread in their paired "
                "differences; their intervals and p-values are NaN",
                RuntimeWarning,
                stacklevel=2,
            )
            a = np.where(np.isnan(masked_delta), np.nan, a)
    table = stats.family_table(
        a,
        b,
        paired=bool(paired),
        dims=("layer", "head"),
        confidence=confidence,
        n_resamples=n_resamples,
        seed=seed,
        nan_policy="omit",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN heads stay NaN
        table.insert(2, "with", np.nanmean(a, 0).ravel())
        table.insert(3, "without", np.nanmean(b, 0).ravel())
    table["layer"] = np.asarray(layers)[table["layer"].to_numpy()]
    table["head"] = np.asarray(heads)[table["head"].to_numpy()]
    table = table.rename(columns={"estimate": "diff"})
    return table.sort_values("diff", ascending=False, kind="stable").reset_index(drop=True)


def _pair_order(ids_a: list[Any], ids_b: list[Any]) -> list[int]:
    """Indices into ``ids_b`` that put it in the order of ``ids_a``; refuse any mismatch."""
    for name, ids in (("with_reasoning", ids_a), ("without_reasoning", ids_b)):
        repeated = sorted({str(i) for i in ids if ids.count(i) > 1})
        if repeated:
            raise ValueError(
                f"{name} has repeated problem ids {repeated[:5]}; pairing needs one trace per "
                "problem in each set (average samples per problem first, or pass paired=False)"
            )
    only_a = [i for i in ids_a if i not in set(ids_b)]
    only_b = [i for i in ids_b if i not in set(ids_a)]
    if only_a or only_b:
        raise ValueError(
            f"the two sets do not hold the same problems: {len(only_a)} ids only with reasoning "
            f"(e.g. {only_a[:3]}), {len(only_b)} only without (e.g. {only_b[:3]}). Keep the "
            "problems present in both, or pass paired=False for an unpaired comparison"
        )
    where = {i: n for n, i in enumerate(ids_b)}
    return [where[i] for i in ids_a]


# ---------------------------------------------------------------------------- head types
def _repeated_tokens(model: Any, seq_len: int, n_sequences: int, seed: int) -> torch.Tensor:
    check_model(model)
    n_ctx = int(getattr(model.cfg, "n_ctx", 0) or 0)
    if seq_len < 2 or n_sequences < 1:
        raise ValueError(f"need seq_len >= 2 and n_sequences >= 1, got {seq_len}, {n_sequences}")
    if n_ctx and 2 * seq_len + 1 > n_ctx:
        raise ContextLengthError(
            f"repeated sequences of 2 × {seq_len} + 1 tokens exceed the model's context of "
            f"{n_ctx}; pass seq_len <= {(n_ctx - 1) // 2}"
        )
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
def _diagonal_scores(
    model: Any,
    tokens: torch.Tensor,
    offset: int,
    first_query: int,
    *,
    batch_size: int,
    progress: bool | None,
) -> np.ndarray:
    """Mean over queries q >= first_query of A[q, q - offset], per layer × head."""
    check_batch_size(batch_size)
    n_layers = int(model.cfg.n_layers)
    sums = np.zeros((n_layers, int(model.cfg.n_heads)))

    def hook(pattern: torch.Tensor, hook: Any) -> None:
        diagonal = pattern.diagonal(offset=-offset, dim1=-2, dim2=-1)  # [batch, head, pos-offset]
        start = first_query - offset
        sums[hook_layer(hook)] += diagonal[..., start:].float().mean(dim=2).sum(0).cpu().numpy()

    chunks = range(0, len(tokens), batch_size)
    show = progress if progress is not None else len(chunks) > 1
    for start in tqdm(chunks, desc="head scores", disable=not show):
        model.run_with_hooks(
            tokens[start : start + batch_size].to(model.cfg.device),
            return_type=None,
            fwd_hooks=[(act_name("pattern", layer), hook) for layer in range(n_layers)],
        )
    return sums / len(tokens)


def induction_scores(
    model: Any,
    *,
    seq_len: int = 50,
    n_sequences: int = 8,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool | None = None,
) -> Float[np.ndarray, "layer head"]:
    """Induction score per head on ``[BOS] r r`` with ``r`` random tokens of length ``seq_len``.

    The score is the mean attention from each token of the second copy to the token right
    after its earlier occurrence (``A[q, q - seq_len + 1]``): 1 for a perfect induction head.
    ``batch_size`` sequences run per forward pass.
    """
    tokens = _repeated_tokens(model, seq_len, n_sequences, seed)
    offset = seq_len - 1
    first_query = tokens.shape[1] - seq_len
    return _diagonal_scores(
        model, tokens, offset, first_query, batch_size=batch_size, progress=progress
    )


def previous_token_scores(
    model: Any,
    *,
    seq_len: int = 50,
    n_sequences: int = 8,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool | None = None,
) -> Float[np.ndarray, "layer head"]:
    """Mean attention from every token (after the first) to the token before it."""
    tokens = _repeated_tokens(model, seq_len, n_sequences, seed)
    return _diagonal_scores(model, tokens, 1, 1, batch_size=batch_size, progress=progress)
