"""Attention profiles: how much each segment attends to each other segment, per layer and head.

For a query segment Q and a key segment K of one trace, and one head with post-softmax
attention pattern ``A`` (rows = queries, columns = keys):

* **mass** ``X2Y = mean_{q∈Q} Σ_{k∈K} A[q, k]``: sum over keys, mean over queries (R2A's
  ``a2r``, ``a2p``, ...). Causality makes the key segments partition what a row can see, so
  for every query segment the masses over all key segments sum to 1.
* **per-token mass** ``mean_{q∈Q} (Σ_{k∈K} A[q, k] / |K ∩ [0, q]|)``: the mass per key the
  row can see, averaged over the rows that can see at least one key of K. It corrects for
  segment length (a long reasoning gets more mass just by being long).
* **entropy** ``mean_{q∈Q} H(A[q]) / ln(n_q)``, with ``n_q`` the number of keys row q can
  see: 0 = all attention on one key, 1 = uniform over the causal support. Rows with
  ``n_q < 2`` have no defined normalised entropy and are left out of the mean.
* **gini**: the Gini coefficient of each row over its causal support only (the masked zeros
  of future tokens are not part of it), averaged like the entropy. 0 = uniform, → 1 =
  concentrated. It needs a sort of every row, which costs about as much as the forward pass
  itself on a GPT-2-small-sized model, so it is computed only on request
  (``statistics=(..., "gini")``).

How it is computed
------------------
One forward pass per batch of traces. A hook on each layer's ``hook_pattern`` reduces that
layer's ``[batch, head, query, key]`` pattern at once to ``[batch, head, part, part]`` sums
(a matmul with a one-hot part matrix) and drops it, so the patterns of all layers are never
held together. :func:`segment_statistics` is that reduction: it takes a pattern from any
source. Traces in a batch are right-padded with an attention mask; padding never changes a
real row (it lies in every real row's causal future), so batched numbers equal one-at-a-time
numbers up to float rounding.

That is the ``method="pattern"`` path: one layer's ``[batch, head, T, T]`` pattern is held at a
time (about 3 GB for 12 heads at 8k tokens in float32). ``method="fast"`` gives the same
numbers (within 1e-4, float rounding) without any ``[T × T]`` matrix: the model's Hugging Face
modules run with an attention function that returns each row's masses (attention output with
one-hot part values), entropy (from the row log-sum-exp and the attention-weighted scores)
and, on request, Gini (rows rebuilt in bounded blocks); see
:mod:`reasoning_circuits._fast_attention`. ``method="auto"`` (the default) takes the fast
path for traces of ``AUTO_FAST_TOKENS`` (1024) tokens or more, unless the model has active
TransformerLens hooks (a planted pattern lives in ``hook_pattern``, which only the pattern path
runs). ``query_parts=`` restricts the profiled query rows, e.g. to the answer, which the fast
path then computes alone.

Caveats
-------
* The self-key is included: the diagonal counts in ``answer→answer`` and
  ``reasoning→reasoning`` (as in R2A).
* Query means are unweighted over rows; early reasoning rows see few reasoning keys.
* Masses depend on BOS: models that dump attention on a BOS "sink" have a large
  ``answer→bos``. Compare heads within a model, not raw masses across models.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from einops import einsum
from jaxtyping import Bool, Float, Int
from torch import Tensor

from reasoning_circuits import _fast_attention, stats
from reasoning_circuits._fast_attention import row_gini
from reasoning_circuits._hooks import Hook, act_name, hook_layer
from reasoning_circuits._inputs import as_traces, batches, check_traces
from reasoning_circuits._options import check_option
from reasoning_circuits._store import load_npz, save_npz
from reasoning_circuits.errors import FileFormatError, ProfileMismatchError
from reasoning_circuits.rows import RowSelector, select_rows
from reasoning_circuits.trace import Partition, Trace, pad_traces

__all__ = [
    "AUTO_FAST_TOKENS",
    "AttentionProfile",
    "Method",
    "ProfileSet",
    "Statistic",
    "segment_statistics",
]

Statistic = Literal["mass", "per_token", "entropy", "gini"]
Method = Literal["pattern", "fast", "auto"]
QueryRows = RowSelector | Sequence[int] | str
DEFAULT_STATISTICS: tuple[Statistic, ...] = ("mass", "per_token", "entropy")
_CHUNK_ELEMENTS = 2**20  # pattern entries per chunk (4 MB of float32: stays in cache)
_SLICE_PARTS_MAX = 16  # up to this many contiguous parts, key masses are slice sums
AUTO_FAST_TOKENS = 1024  # method="auto" takes the fast path from this trace length on


def segment_statistics(
    pattern: Float[Tensor, "batch head query key"],
    labels: Int[Tensor, "batch pos"],
    n_parts: int,
    *,
    statistics: Sequence[Statistic] = DEFAULT_STATISTICS,
    query_rows: Float[Tensor, "batch pos extra"] | None = None,
) -> dict[str, Tensor]:
    """Reduce one layer's attention pattern to per-part statistics.

    Args:
        pattern: post-softmax attention, ``[batch, head, query, key]`` with query = key = pos.
        labels: part index (0 .. n_parts-1) of every position; ``-1`` marks padding.
        n_parts: number of parts.
        statistics: which statistics to compute (see the module docstring).
        query_rows: extra query groups, ``1.0`` where a position belongs to group e (rows may
            belong to several groups and to a part at once); they come after the parts on
            the query axis of every result.

    Returns:
        ``"mass_sum"`` and ``"per_token_sum"``: ``[batch, head, qpart, kpart]`` sums over the
        query rows of each part; ``"per_token_rows"``: ``[batch, qpart, kpart]`` rows that see
        at least one key of the part; ``"entropy_sum"``/``"gini_sum"``: ``[batch, head,
        qpart]`` sums over rows with at least two visible keys, counted in ``"row_count"``
        ``[batch, qpart]``; ``"query_count"``: ``[batch, qpart]`` rows per part. Divide a sum
        by its count to get a mean; sums are kept so batches and traces can be pooled. With
        ``query_rows``, every query axis has ``n_parts + extra`` entries.
    """
    groups = _RowGroups.build(labels.to(pattern.device), n_parts, query_rows)
    row_mass, entropy, gini = _pattern_rows(pattern, labels, groups, statistics)
    return groups.reduce(row_mass, entropy, gini, statistics)


def _pattern_rows(
    pattern: Float[Tensor, "batch head query key"],
    labels: Int[Tensor, "batch pos"],
    groups: _RowGroups,
    statistics: Sequence[Statistic],
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Per-row masses ``[batch, head, pos, part]``, entropies and Gini ``[batch, head, pos]``."""
    batch, n_heads, n_pos, _ = pattern.shape
    onehot, n_keys = groups.onehot, groups.n_keys
    n_parts = onehot.shape[-1]
    device = pattern.device

    # Per-row results, filled chunk by chunk: one head and a block of rows at a time, and only
    # the keys those rows can see causally (half the pattern is future zeros). A chunk of a
    # few MB stays in cache while the mass matmul and the entropy both read it.
    row_mass = torch.empty(batch, n_heads, n_pos, n_parts, device=device)
    entropy = torch.empty(batch, n_heads, n_pos, device=device) if "entropy" in statistics else None
    gini = torch.empty(batch, n_heads, n_pos, device=device) if "gini" in statistics else None
    rows = max(16, _CHUNK_ELEMENTS // max(1, batch * n_pos))
    runs = _contiguous_runs(labels, n_parts) if n_parts <= _SLICE_PARTS_MAX else None
    for h in range(n_heads):
        for r0 in range(0, n_pos, rows):
            r1 = min(n_pos, r0 + rows)
            chunk = pattern[:, h, r0:r1, :r1].to(torch.float32)  # [batch, rows, keys <= r1]
            if runs is None:
                row_mass[:, h, r0:r1] = torch.matmul(chunk, onehot[:, :r1])
            else:  # parts are runs of positions: sum key slices (3x faster than the matmul)
                for b, edges in enumerate(runs):
                    for part in range(n_parts):
                        lo, hi = min(edges[part], r1), min(edges[part + 1], r1)
                        row_mass[b, h, r0:r1, part] = chunk[b, :, lo:hi].sum(-1)
            if entropy is not None:
                # 0 * log(tiny) = 0 for masked keys; cheaper than xlogy
                entropy[:, h, r0:r1] = -(chunk * chunk.clamp(min=1e-30).log()).sum(-1)
            if gini is not None:
                # Sorted ascending, a row's masked zeros come first: the coefficient is taken
                # over the row's n visible keys only.
                gini[:, h, r0:r1] = row_gini(chunk.sort(dim=-1).values, n_keys[:, r0:r1])
    return row_mass, entropy, gini


@dataclass(frozen=True)
class _RowGroups:
    """Which rows make up each query group, and what each row can see (shared by the pattern
    path and the fast path, so both reduce rows to groups the same way)."""

    onehot: Float[Tensor, "batch pos part"]  # key part of every position (0 for padding)
    visible: Float[Tensor, "batch pos part"]  # keys of each part at positions <= q
    n_keys: Float[Tensor, "batch pos"]  # keys row q can see
    groups: Float[Tensor, "batch pos qgroup"]  # the parts, then any extra row groups

    @classmethod
    def build(
        cls,
        labels: Int[Tensor, "batch pos"],
        n_parts: int,
        query_rows: Float[Tensor, "batch pos extra"] | None,
        keep: Bool[Tensor, "batch qgroup"] | None = None,
    ) -> _RowGroups:
        valid = labels >= 0
        onehot = F.one_hot(labels.clamp(min=0), n_parts).to(torch.float32) * valid[..., None]
        visible = onehot.cumsum(dim=1)
        groups = onehot
        if query_rows is not None:
            extra = query_rows.to(labels.device, torch.float32) * valid[..., None]
            groups = torch.cat([onehot, extra], -1)
        if keep is not None:  # query groups left out: no rows
            groups = groups * keep.to(labels.device, torch.float32)[:, None]
        return cls(onehot=onehot, visible=visible, n_keys=visible.sum(-1), groups=groups)

    def rows(self) -> Tensor:
        """``[batch, pos]``: rows that belong to at least one query group."""
        return (self.groups > 0).any(-1)

    def reduce(
        self,
        row_mass: Float[Tensor, "batch head pos part"],
        entropy: Float[Tensor, "batch head pos"] | None,
        gini: Float[Tensor, "batch head pos"] | None,
        statistics: Sequence[Statistic],
    ) -> dict[str, Tensor]:
        """Per-row statistics to per-group sums and counts (see :func:`segment_statistics`)."""
        groups, visible, n_keys = self.groups, self.visible, self.n_keys
        row_ok = groups * (n_keys >= 2)[..., None]  # rows with a defined normalised entropy
        out: dict[str, Tensor] = {
            "query_count": groups.sum(1),
            "per_token_rows": einsum(groups, (visible > 0).float(), "b q s, b q t -> b s t"),
            "row_count": row_ok.sum(1),
        }
        if "mass" in statistics:
            out["mass_sum"] = einsum(groups, row_mass, "b q s, b h q t -> b h s t")
        if "per_token" in statistics:
            inv_visible = torch.where(visible > 0, 1.0 / visible.clamp(min=1), 0.0)
            out["per_token_sum"] = einsum(
                groups, row_mass * inv_visible[:, None], "b q s, b h q t -> b h s t"
            )
        if entropy is not None:
            log_n = torch.log(n_keys.clamp(min=2))
            out["entropy_sum"] = einsum(row_ok, entropy / log_n[:, None], "b q s, b h q -> b h s")
        if gini is not None:
            out["gini_sum"] = einsum(row_ok, gini, "b q s, b h q -> b h s")
        return out


def _contiguous_runs(labels: Tensor, n_parts: int) -> list[list[int]] | None:
    """Per batch row, the start of each part and the end of the last, if every part is one
    run of positions in order (padding, -1, only at the end); else ``None``."""
    ordered = torch.where(labels < 0, n_parts, labels)
    if bool((ordered[:, 1:] < ordered[:, :-1]).any()):
        return None
    targets = torch.arange(n_parts + 1, device=labels.device).expand(len(labels), -1)
    return torch.searchsorted(ordered.contiguous(), targets.contiguous()).tolist()


def _divide(total: np.ndarray, count: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.where(count > 0, count, 1), np.nan)


@dataclass(frozen=True, eq=False)
class AttentionProfile:
    """Per layer × head attention statistics between the parts of one trace.

    Arrays (``numpy``): ``masses`` and ``per_token_masses`` ``[layer, head, query, key]``;
    ``entropies`` and ``ginis`` ``[layer, head, query]`` (``None`` when not computed);
    ``token_counts`` ``[query]``, the rows of each query. The key axis is ``parts``; the
    query axis is ``parts`` followed by ``queries``, the chosen row groups (see
    :mod:`reasoning_circuits.rows`). ``layers``/``heads`` give the model indices of the first
    two axes. Values for a query with no rows are NaN.
    """

    parts: tuple[str, ...]
    layers: tuple[int, ...]
    heads: tuple[int, ...]
    masses: np.ndarray | None
    per_token_masses: np.ndarray | None
    entropies: np.ndarray | None
    ginis: np.ndarray | None
    token_counts: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)
    queries: tuple[str, ...] = ()

    @property
    def query_names(self) -> tuple[str, ...]:
        """Names along the query axis: the parts, then the chosen row groups."""
        return (*self.parts, *self.queries)

    # ------------------------------------------------------------------ compute
    @overload
    @classmethod
    def compute(
        cls,
        model: Any,
        traces: Trace,
        *,
        layers: Sequence[int] | None = ...,
        heads: Sequence[int] | None = ...,
        by: Partition = ...,
        statistics: Sequence[Statistic] = ...,
        queries: Mapping[str, QueryRows] | None = ...,
        batch_size: int = ...,
        progress: bool | None = ...,
        method: Method = ...,
        query_parts: Sequence[str] | None = ...,
    ) -> AttentionProfile: ...

    @overload
    @classmethod
    def compute(
        cls,
        model: Any,
        traces: Sequence[Trace],
        *,
        layers: Sequence[int] | None = ...,
        heads: Sequence[int] | None = ...,
        by: Partition = ...,
        statistics: Sequence[Statistic] = ...,
        queries: Mapping[str, QueryRows] | None = ...,
        batch_size: int = ...,
        progress: bool | None = ...,
        method: Method = ...,
        query_parts: Sequence[str] | None = ...,
    ) -> ProfileSet: ...

    @classmethod
    def compute(
        cls,
        model: Any,
        traces: Trace | Sequence[Trace],
        *,
        layers: Sequence[int] | None = None,
        heads: Sequence[int] | None = None,
        by: Partition = "segments",
        statistics: Sequence[Statistic] = DEFAULT_STATISTICS,
        queries: Mapping[str, QueryRows] | None = None,
        batch_size: int = 1,
        progress: bool | None = None,
        method: Method = "auto",
        query_parts: Sequence[str] | None = None,
    ) -> AttentionProfile | ProfileSet:
        """Profile one trace (returns an :class:`AttentionProfile`) or many (a :class:`ProfileSet`).

        Args:
            model: a ``TransformerBridge`` (see :func:`reasoning_circuits.load_model`).
            traces: a :class:`Trace` or a sequence of them.
            layers, heads: restrict to these model layers / heads (default: all). Layers
                after the last requested one are not run.
            by: ``"segments"`` (bos, prompt, ..., eos) or ``"sentences"`` (reasoning split
                into its sentences).
            statistics: any of ``"mass"``, ``"per_token"``, ``"entropy"``, ``"gini"``.
            queries: extra query rows by name, e.g. ``{"emit": rc.rows.predicting()}`` (the
                rows that predict the answer's value); a value is a row selector (see
                :mod:`reasoning_circuits.rows`), a list of positions, or a target name of
                :func:`~reasoning_circuits.rows.predicting`. Read them as queries:
                ``profile.mass("emit", "reasoning")``.
            batch_size: traces per forward pass (sorted by length to limit padding).
            progress: show a progress bar (default: when there is more than one batch).
            method: ``"pattern"`` reduces each layer's full eager ``[head, T, T]`` pattern
                (any hooked bridge, e.g. with planted patterns); ``"fast"`` runs the
                model's Hugging Face modules with an attention function that yields the
                statistics without a ``[T × T]`` matrix (O(T × parts) memory, see
                :mod:`reasoning_circuits._fast_attention`; the same numbers within float
                rounding); ``"auto"`` (default) takes the fast path when the longest trace
                has at least ``AUTO_FAST_TOKENS`` (1024) tokens and the model allows it (no
                active TransformerLens hooks, no sliding-window attention), else the pattern
                path.
            query_parts: profile only the query rows of these parts (and of ``queries``);
                the other parts stay on the query axis with NaN values and a token count
                of 0. ``query_parts=("answer",)`` computes just the answer rows, which the
                fast path makes cheap on long traces. Default: every part.
        """
        single = isinstance(traces, Trace)
        trace_list = as_traces(traces)
        check_option(by, Partition, "by")
        check_option(method, Method, "method")
        for statistic in statistics:
            check_option(statistic, Statistic, "statistics")
        check_traces(model, trace_list, what="AttentionProfile.compute")
        chosen_rows = dict(queries or {})
        clash = sorted(set(chosen_rows) & {n for t in trace_list[:1] for n in t.partition(by)[0]})
        if clash or any(n.startswith("sentence_") for n in chosen_rows):
            raise ValueError(
                f"query names {clash or sorted(chosen_rows)} clash with part names; name chosen "
                "rows differently, e.g. queries={'emit': ...}"
            )
        n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
        layer_idx = _check_indices(layers, n_layers, "layers")
        head_idx = _check_indices(heads, n_heads, "heads")
        chosen_parts = _check_query_parts(query_parts, trace_list, by)
        fast = _use_fast_path(model, method, max(map(len, trace_list)))
        results: list[AttentionProfile | None] = [None] * len(trace_list)
        for indices, chunk in batches(
            trace_list, batch_size, desc="attention profiles", progress=progress
        ):
            profiles = _profile_batch(
                model,
                chunk,
                layer_idx,
                head_idx,
                by,
                tuple(statistics),
                chosen_rows,
                query_parts=chosen_parts,
                fast=fast,
            )
            for i, profile in zip(indices, profiles):
                results[i] = profile
        done = [r for r in results if r is not None]
        return done[0] if single else ProfileSet(done)

    def __repr__(self) -> str:
        stats = [
            name
            for name, array in (
                ("mass", self.masses),
                ("per_token", self.per_token_masses),
                ("entropy", self.entropies),
                ("gini", self.ginis),
            )
            if array is not None
        ]
        tid = self.metadata.get("id")
        ident = f"id {tid!r}, " if tid is not None else ""
        parts = (
            list(self.parts) if len(self.parts) <= 9 else [*self.parts[:4], "…", *self.parts[-3:]]
        )
        return (
            f"AttentionProfile({ident}{len(self.layers)} layers × {len(self.heads)} heads, "
            f"{int(self.token_counts[: len(self.parts)].sum())} tokens, parts {parts}"
            + (f", queries {list(self.queries)}" if self.queries else "")
            + f", statistics {stats})"
        )

    # ------------------------------------------------------------------ access
    def _index(self, name: str, *, query: bool = False) -> int:
        names = self.query_names if query else self.parts
        try:
            return names.index(name)
        except ValueError:
            extra = f" and queries {list(self.queries)}" if query and self.queries else ""
            raise KeyError(
                f"no {'query' if query else 'key part'} {name!r}; parts are "
                f"{list(self.parts)}{extra}"
            ) from None

    def _need(self, array: np.ndarray | None, statistic: str) -> np.ndarray:
        if array is None:
            raise ValueError(
                f"{statistic!r} was not computed; pass statistics=(..., {statistic!r}) to compute"
            )
        return array

    def mass(self, query: str, key: str) -> Float[np.ndarray, "layer head"]:
        """``mean_{q∈query} Σ_{k∈key} A[q, k]`` per layer × head."""
        return self._need(self.masses, "mass")[
            :, :, self._index(query, query=True), self._index(key)
        ]

    def per_token_mass(self, query: str, key: str) -> Float[np.ndarray, "layer head"]:
        """The mass per visible key of ``key``, averaged over ``query`` rows."""
        array = self._need(self.per_token_masses, "per_token")
        return array[:, :, self._index(query, query=True), self._index(key)]

    def entropy(self, query: str) -> Float[np.ndarray, "layer head"]:
        """Mean normalised row entropy of the ``query`` rows (0 focused .. 1 uniform)."""
        return self._need(self.entropies, "entropy")[:, :, self._index(query, query=True)]

    def gini(self, query: str) -> Float[np.ndarray, "layer head"]:
        """Mean Gini coefficient of the ``query`` rows over their causal support."""
        return self._need(self.ginis, "gini")[:, :, self._index(query, query=True)]

    def split(self, query: str = "answer") -> dict[str, Float[np.ndarray, "layer head"]]:
        """Masses from ``query`` to every part; the values sum to 1 per layer × head."""
        return {key: self.mass(query, key) for key in self.parts}

    def to_frame(self) -> pd.DataFrame:
        """Long format: one row per (layer, head, query, key) with all computed statistics."""
        n_l, n_h, n_p = len(self.layers), len(self.heads), len(self.parts)
        n_q = len(self.query_names)
        grid = np.meshgrid(
            np.asarray(self.layers),
            np.asarray(self.heads),
            np.arange(n_q),
            np.arange(n_p),
            indexing="ij",
        )
        frame = pd.DataFrame(
            {
                "layer": grid[0].ravel(),
                "head": grid[1].ravel(),
                "query": np.asarray(self.query_names, dtype=object)[grid[2].ravel()],
                "key": np.asarray(self.parts, dtype=object)[grid[3].ravel()],
            }
        )
        shape = (n_l, n_h, n_q, n_p)
        for column, array in (("mass", self.masses), ("per_token_mass", self.per_token_masses)):
            if array is not None:
                frame[column] = array.ravel()
        for column, array in (("entropy", self.entropies), ("gini", self.ginis)):
            if array is not None:
                frame[column] = np.broadcast_to(array[..., None], shape).ravel()
        return frame

    # ------------------------------------------------------------------ io
    def _arrays(self) -> dict[str, np.ndarray]:
        arrays = {
            "masses": self.masses,
            "per_token_masses": self.per_token_masses,
            "entropies": self.entropies,
            "ginis": self.ginis,
            "token_counts": self.token_counts,
        }
        return {k: v for k, v in arrays.items() if v is not None}

    def _header(self) -> dict[str, Any]:
        return {
            "parts": list(self.parts),
            "queries": list(self.queries),
            "layers": list(self.layers),
            "heads": list(self.heads),
            "metadata": self.metadata,
        }

    def save(self, path: str | Path) -> Path:
        """Write one ``.npz`` file (arrays + a JSON header; no pickle). Returns the path."""
        return save_npz(path, "AttentionProfile", self._header(), self._arrays())

    @classmethod
    def load(cls, path: str | Path) -> AttentionProfile:
        """Read a file written by :meth:`save`."""
        header, arrays = load_npz(path, "AttentionProfile")
        return cls._from(header, arrays)

    @classmethod
    def _from(cls, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> AttentionProfile:
        n_l, n_h, n_p = len(header["layers"]), len(header["heads"]), len(header["parts"])
        n_q = n_p + len(header.get("queries", []))
        expected = {
            "masses": (n_l, n_h, n_q, n_p),
            "per_token_masses": (n_l, n_h, n_q, n_p),
            "entropies": (n_l, n_h, n_q),
            "ginis": (n_l, n_h, n_q),
            "token_counts": (n_q,),
        }
        for name, array in arrays.items():
            if name in expected and array.shape != expected[name]:
                raise FileFormatError(
                    f"array {name!r} has shape {array.shape} but the header's layers, heads "
                    f"and parts say {expected[name]}; the file is inconsistent"
                )
        return cls(
            parts=tuple(header["parts"]),
            layers=tuple(header["layers"]),
            heads=tuple(header["heads"]),
            masses=arrays.get("masses"),
            per_token_masses=arrays.get("per_token_masses"),
            entropies=arrays.get("entropies"),
            ginis=arrays.get("ginis"),
            token_counts=arrays["token_counts"],
            metadata=header.get("metadata", {}),
            queries=tuple(header.get("queries", [])),
        )


def _use_fast_path(model: Any, method: Method, longest: int) -> bool:
    if method == "pattern":
        return False
    problem = _fast_attention.fast_path_problem(model)
    if method == "fast":
        if problem is not None:
            raise ValueError(
                f"method='fast' cannot run this model: {problem}; use method='pattern'"
            )
        return True
    return problem is None and longest >= AUTO_FAST_TOKENS


def _check_query_parts(
    query_parts: Sequence[str] | None, traces: Sequence[Trace], by: Partition
) -> frozenset[str] | None:
    if query_parts is None:
        return None
    if isinstance(query_parts, str):
        raise TypeError(f"query_parts must be a sequence of part names, e.g. ({query_parts!r},)")
    chosen = frozenset(query_parts)
    for index, trace in enumerate(traces):
        names = trace.partition(by)[0]
        unknown = sorted(chosen - set(names))
        if unknown:
            raise KeyError(
                f"query_parts {unknown} are not parts of trace {index} (by={by!r}); its parts "
                f"are {list(names)}"
            )
    return chosen


def _check_indices(chosen: Sequence[int] | None, n: int, what: str) -> tuple[int, ...]:
    if chosen is None:
        return tuple(range(n))
    values = tuple(int(c) for c in chosen)
    bad = [c for c in values if not 0 <= c < n]
    if bad or not values or len(set(values)) != len(values):
        raise ValueError(f"{what} must be distinct indices in [0, {n}), got {list(chosen)}")
    return values


@torch.no_grad()
def _profile_batch(
    model: Any,
    traces: list[Trace],
    layers: tuple[int, ...],
    heads: tuple[int, ...],
    by: Partition,
    statistics: tuple[Statistic, ...],
    queries: dict[str, QueryRows],
    *,
    query_parts: frozenset[str] | None = None,
    fast: bool = False,
) -> list[AttentionProfile]:
    partitions = [trace.partition(by) for trace in traces]
    n_parts = max(len(names) for names, _ in partitions)
    pad_id = getattr(model.tokenizer, "pad_token_id", None) or 0
    tokens, mask = pad_traces(traces, pad_id=pad_id)
    labels = torch.full(tokens.shape, -1, dtype=torch.long)
    for row, (trace, (_, lab)) in enumerate(zip(traces, partitions)):
        labels[row, : len(trace)] = torch.from_numpy(lab)
    query_rows = None
    if queries:
        query_rows = torch.zeros(*tokens.shape, len(queries))
        for row, trace in enumerate(traces):
            for e, selector in enumerate(queries.values()):
                query_rows[row, select_rows(trace, selector), e] = 1.0
    keep = None
    if query_parts is not None:
        keep = torch.ones(len(traces), n_parts + len(queries), dtype=torch.bool)
        for row, (names, _) in enumerate(partitions):
            keep[row, :n_parts] = torch.tensor(
                [i < len(names) and names[i] in query_parts for i in range(n_parts)]
            )
    groups = _RowGroups.build(labels.to(model.cfg.device), n_parts, query_rows, keep)
    if fast:
        per_layer = _fast_layers(model, tokens, labels, groups, layers, heads, statistics)
    else:
        per_layer = _pattern_layers(model, tokens, mask, labels, groups, layers, heads, statistics)

    def stacked(key: str) -> np.ndarray | None:
        if key not in per_layer[layers[0]]:
            return None
        return torch.stack([per_layer[layer][key] for layer in layers], dim=1).cpu().numpy()

    mass_sum, pt_sum = stacked("mass_sum"), stacked("per_token_sum")
    ent_sum, gini_sum = stacked("entropy_sum"), stacked("gini_sum")
    stats0 = per_layer[layers[0]]
    query_count = stats0["query_count"].cpu().numpy()  # [batch, qgroup]
    row_count = stats0["row_count"].cpu().numpy()
    pt_rows = stats0["per_token_rows"].cpu().numpy()  # [batch, qgroup, kpart]
    n_extra = len(queries)
    profiles = []
    for row, (trace, (names, _)) in enumerate(zip(traces, partitions)):
        s = len(names)
        q = [*range(s), *range(n_parts, n_parts + n_extra)]  # this trace's query groups
        qc = query_count[row, q][None, None, :, None]
        rc = row_count[row, q][None, None, :]
        profiles.append(
            AttentionProfile(
                parts=tuple(names),
                layers=layers,
                heads=heads,
                masses=None if mass_sum is None else _divide(mass_sum[row][:, :, q, :s], qc),
                per_token_masses=None
                if pt_sum is None
                else _divide(pt_sum[row][:, :, q, :s], pt_rows[row][q, :s][None, None]),
                entropies=None if ent_sum is None else _divide(ent_sum[row][:, :, q], rc),
                ginis=None if gini_sum is None else _divide(gini_sum[row][:, :, q], rc),
                token_counts=query_count[row, q].astype(np.int64),
                metadata=dict(trace.metadata),
                queries=tuple(queries),
            )
        )
    return profiles


def _pattern_layers(
    model: Any,
    tokens: Tensor,
    mask: Tensor,
    labels: Tensor,
    groups: _RowGroups,
    layers: tuple[int, ...],
    heads: tuple[int, ...],
    statistics: tuple[Statistic, ...],
) -> dict[int, dict[str, Tensor]]:
    """Per-layer group sums from the bridge's eager patterns, reduced inside hooks."""
    head_index = torch.tensor(heads)
    labels = labels.to(model.cfg.device)
    per_layer: dict[int, dict[str, Tensor]] = {}

    def reduce(pattern: Tensor, layer: int) -> None:
        selected = pattern if len(heads) == pattern.shape[1] else pattern[:, head_index]
        rows = _pattern_rows(selected, labels, groups, statistics)
        per_layer[layer] = groups.reduce(*rows, statistics)

    def scores_hook(scores: Tensor, hook: Any) -> None:
        # A low-precision model's pattern rows sum to 1 only within ~1e-3 (bf16): take the
        # softmax of its (already causally masked) scores in float32 instead.
        if scores.dtype not in (torch.float32, torch.float64):
            reduce(scores.float().softmax(-1), hook_layer(hook))

    def pattern_hook(pattern: Tensor, hook: Any) -> None:
        if hook_layer(hook) not in per_layer:
            reduce(pattern, hook_layer(hook))

    fwd_hooks: list[Hook] = [(act_name("attn_scores", layer), scores_hook) for layer in layers]
    fwd_hooks += [(act_name("pattern", layer), pattern_hook) for layer in layers]
    run_to = max(layers) + 1
    model.run_with_hooks(
        tokens.to(model.cfg.device),
        attention_mask=mask.to(model.cfg.device) if len(tokens) > 1 else None,
        fwd_hooks=fwd_hooks,
        return_type=None,
        stop_at_layer=run_to if run_to < int(model.cfg.n_layers) else None,
    )
    missing = [layer for layer in layers if layer not in per_layer]
    if missing:
        raise RuntimeError(
            f"hook_pattern did not fire for layers {missing}; the model must run eager attention "
            "(load it with rc.load_model, which boots the bridge with eager attention)"
        )
    return per_layer


def _fast_layers(
    model: Any,
    tokens: Tensor,
    labels: Tensor,
    groups: _RowGroups,
    layers: tuple[int, ...],
    heads: tuple[int, ...],
    statistics: tuple[Statistic, ...],
) -> dict[int, dict[str, Tensor]]:
    """Per-layer group sums from the fast path (no ``[T × T]`` matrix)."""
    per_layer: dict[int, dict[str, Tensor]] = {}

    def reduce(layer: int, rows: _fast_attention.LayerRows) -> None:
        per_layer[layer] = groups.reduce(rows.row_mass, rows.entropy, rows.gini, statistics)

    _fast_attention.run_row_statistics(
        model,
        tokens,
        labels,
        groups.onehot.shape[-1],
        layers=layers,
        heads=heads,
        rows=groups.rows(),
        entropy="entropy" in statistics,
        gini="gini" in statistics,
        on_layer=reduce,
    )
    return per_layer


# ---------------------------------------------------------------------------- many traces
class ProfileSet(Sequence[AttentionProfile]):
    """Profiles of many traces, with per-head statistics across traces.

    Indexing and iteration give the :class:`AttentionProfile` of each trace. ``values`` stacks
    a statistic to ``[trace, layer, head]``; ``mean``, ``std`` and ``ci`` summarise
    it per head. Stacking needs the same parts, layers and heads in every profile (sentence
    partitions differ between traces, so aggregate those per trace first).
    """

    def __init__(self, profiles: Sequence[AttentionProfile]):
        self.profiles: tuple[AttentionProfile, ...] = tuple(profiles)
        if not self.profiles:
            raise ValueError("a ProfileSet needs at least one profile")

    @overload
    def __getitem__(self, index: int) -> AttentionProfile: ...

    @overload
    def __getitem__(self, index: slice) -> ProfileSet: ...

    def __getitem__(self, index: int | slice) -> AttentionProfile | ProfileSet:
        if isinstance(index, slice):
            return ProfileSet(self.profiles[index])
        return self.profiles[index]

    def __len__(self) -> int:
        return len(self.profiles)

    def __iter__(self) -> Iterator[AttentionProfile]:
        return iter(self.profiles)

    def __repr__(self) -> str:
        first = self.profiles[0]
        return (
            f"ProfileSet({len(self)} traces, {len(first.layers)} layers × "
            f"{len(first.heads)} heads, "
            f"parts {list(first.parts)})"
        )

    @property
    def layers(self) -> tuple[int, ...]:
        return self._common().layers

    @property
    def heads(self) -> tuple[int, ...]:
        return self._common().heads

    @property
    def parts(self) -> tuple[str, ...]:
        return self._common().parts

    def _common(self) -> AttentionProfile:
        first = self.profiles[0]
        for i, p in enumerate(self.profiles[1:], start=1):
            if (p.query_names, p.layers, p.heads) != (first.query_names, first.layers, first.heads):
                raise ProfileMismatchError(
                    f"profile {i} has parts {list(p.query_names)}, layers {list(p.layers)}, "
                    f"heads {list(p.heads)} but profile 0 has {list(first.query_names)}, "
                    f"{list(first.layers)}, {list(first.heads)}; stack profiles computed with "
                    "the same layers, heads and by='segments'"
                )
        return first

    def values(
        self, query: str, key: str | None = None, *, statistic: Statistic = "mass"
    ) -> Float[np.ndarray, "trace layer head"]:
        """Stack one statistic over traces: ``[trace, layer, head]``.

        ``key`` is needed for ``"mass"`` and ``"per_token"`` and must be omitted for
        ``"entropy"`` and ``"gini"``.
        """
        check_option(statistic, Statistic, "statistic")
        self._common()
        if statistic in ("mass", "per_token"):
            if key is None:
                raise ValueError(f"statistic {statistic!r} needs a key part")
            getter = {"mass": AttentionProfile.mass, "per_token": AttentionProfile.per_token_mass}
            return np.stack([getter[statistic](p, query, key) for p in self.profiles])
        if key is not None:
            raise ValueError(f"statistic {statistic!r} is per query part; omit key")
        row_getter = {"entropy": AttentionProfile.entropy, "gini": AttentionProfile.gini}
        return np.stack([row_getter[statistic](p, query) for p in self.profiles])

    def mass(self, query: str, key: str) -> Float[np.ndarray, "trace layer head"]:
        """``values(query, key)``: the mass of every trace."""
        return self.values(query, key)

    def mean(
        self, query: str, key: str | None = None, *, statistic: Statistic = "mass"
    ) -> np.ndarray:
        """Mean over traces per layer × head (traces where the value is NaN are skipped)."""
        return np.nanmean(self.values(query, key, statistic=statistic), axis=0)

    def std(
        self, query: str, key: str | None = None, *, statistic: Statistic = "mass"
    ) -> np.ndarray:
        """Sample standard deviation (ddof=1) over traces per layer × head."""
        return np.nanstd(self.values(query, key, statistic=statistic), axis=0, ddof=1)

    def ci(
        self,
        query: str,
        key: str | None = None,
        *,
        statistic: Statistic = "mass",
        confidence: float = 0.95,
        simultaneous: bool = False,
        n_resamples: int = 4999,
        seed: int = 0,
    ) -> tuple[Float[np.ndarray, "layer head"], Float[np.ndarray, "layer head"]]:
        """Confidence interval of the mean over traces, per layer × head: ``(low, high)``.

        ``simultaneous=False``: each head's own t interval (right for one head chosen in
        advance). ``simultaneous=True``: intervals that hold for all heads together
        (max-|t| bootstrap), right for heads picked by looking at the data, e.g. the top of
        a ranking. Traces with NaN for a head are left out for that head; heads with fewer
        than 2 values or no spread get NaN. See :func:`reasoning_circuits.stats.family_table`.
        """
        values = self.values(query, key, statistic=statistic)
        shape = values.shape[1:]
        values, masked = stats.mask_degenerate_cells(values, confidence=confidence)
        if masked:
            warnings.warn(
                f"{masked} heads have (almost) no spread across traces (e.g. a constant mass); "
                "no interval can be estimated for them: NaN",
                RuntimeWarning,
                stacklevel=2,
            )
        table = stats.family_table(
            values,
            dims=("layer", "head"),
            confidence=confidence,
            n_resamples=n_resamples,
            seed=seed,
            nan_policy="omit",
        )
        low, high = ("sim_low", "sim_high") if simultaneous else ("ci_low", "ci_high")
        return table[low].to_numpy().reshape(shape), table[high].to_numpy().reshape(shape)

    def to_frame(self) -> pd.DataFrame:
        """Long format of every profile with a ``trace`` column (the index in the set)."""
        frames = []
        for i, profile in enumerate(self.profiles):
            frame = profile.to_frame()
            frame.insert(0, "trace", i)
            frames.append(frame)
        return pd.concat(frames, ignore_index=True)

    def save(self, path: str | Path) -> Path:
        """Write one ``.npz`` file with every profile (no pickle)."""
        arrays: dict[str, np.ndarray] = {}
        headers = []
        for i, profile in enumerate(self.profiles):
            headers.append(profile._header())
            for name, array in profile._arrays().items():
                arrays[f"{i}/{name}"] = array
        return save_npz(path, "ProfileSet", {"profiles": headers}, arrays)

    @classmethod
    def load(cls, path: str | Path) -> ProfileSet:
        """Read a file written by :meth:`save`."""
        header, arrays = load_npz(path, "ProfileSet")
        profiles = []
        for i, sub in enumerate(header["profiles"]):
            prefix = f"{i}/"
            mine = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
            profiles.append(AttentionProfile._from(sub, mine))
        return cls(profiles)
