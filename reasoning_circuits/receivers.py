"""Receiver heads and per-sentence attention: which reasoning sentences later sentences read.

Thought Anchors looks at attention between the *sentences* of the reasoning. For one trace and
one head, the sentence matrix ``M[i, j]`` is the attention a token of sentence ``i`` pays to a
token of sentence ``j``: the mass from sentence i's rows to sentence j's keys divided by the
keys the row can see, averaged over sentence i's rows (``AttentionProfile``'s per-token mass,
``by="sentences"``). Causality makes ``M`` lower triangular.

* **vertical score** of sentence ``j``: the mean of ``M[i, j]`` over the later sentences
  ``i >= j + proximity_ignore``. Neighbouring sentences are left out because every head reads
  its recent context; what is interesting is a sentence that sentences *far* downstream
  keep reading. Sentences with no sentence that far after them get NaN.
* **receiver head**: a head whose vertical scores are concentrated on a few sentences. The
  concentration is the (Fisher, i.e. excess) kurtosis of the vertical scores across the
  sentences of one trace; heads are ranked by the mean kurtosis over traces, with intervals
  over traces that hold for all heads at once (:func:`reasoning_circuits.stats.family_table`),
  because the top heads are picked by looking at the data.
* **receiver score** of a sentence: its vertical score averaged over the chosen receiver heads.

Per-sentence statistics of the sentence's *own* query rows, per layer × head, come with the
same computation (:class:`SentenceAttention`): normalised entropy (``H / ln(visible keys)``,
rows with fewer than two visible keys left out), Gini over the causal support, and the **sink
share** (the mass on the BOS token). Report the sink share beside any entropy: a head that
parks most of its attention on BOS has low entropy for that reason alone.

The study's convention (``pts``) is different and is kept in :func:`study_sentence_statistics`
only to reproduce its numbers: for sentence ``i`` the model reads BOS plus the reasoning up to
the end of sentence ``i`` (no question), the patterns of the last 4 layers and all heads are
averaged first, entropy is ``H / (n ln n)`` over the whole ``n × n`` matrix and Gini runs over
all ``n²`` entries, the causal zeros included. Its ceiling depends on ``n`` (uniform causal
attention gives 0.69 at n = 16, 0.84 at n = 512), its Gini is ≥ 0.63 for uniform attention,
and a larger sink share alone lowers the entropy; ``sink`` is reported beside it. Unlike the
study, the prefix is the trace's exact token prefix, never re-joined sentence text.

Caveats: sentences of one trace are not independent samples; compare traces or problems
(see :mod:`reasoning_circuits.stats`), not sentences pooled across traces.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.stats
import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from reasoning_circuits import stats
from reasoning_circuits._hooks import act_name
from reasoning_circuits._inputs import as_traces, check_traces
from reasoning_circuits.attention import AttentionProfile, Method
from reasoning_circuits.heads import Head
from reasoning_circuits.trace import Trace

__all__ = [
    "ReceiverHeads",
    "SentenceAttention",
    "receiver_heads",
    "receiver_scores",
    "sentence_attention",
    "study_sentence_statistics",
    "vertical_scores",
]


@dataclass(frozen=True, eq=False)
class SentenceAttention:
    """Sentence-level attention of one trace, per layer × head (arrays are numpy).

    ``matrix`` ``[layer, head, sentence, sentence]``: attention per key token from the rows of
    query sentence i to the keys of sentence j (NaN above the diagonal is 0: causal).
    ``entropy``, ``gini``, ``sink`` ``[layer, head, sentence]``: the mean normalised row
    entropy, the mean Gini over the causal support, and the mean mass on BOS of each
    sentence's own rows (``gini`` is ``None`` unless computed; ``sink`` is NaN when the trace
    has no BOS token). ``n_tokens`` ``[sentence]``. ``layers``/``heads`` are model indices.
    """

    layers: tuple[int, ...]
    heads: tuple[int, ...]
    matrix: np.ndarray
    entropy: np.ndarray
    gini: np.ndarray | None
    sink: np.ndarray
    n_tokens: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def n_sentences(self) -> int:
        return int(self.matrix.shape[-1])

    def __repr__(self) -> str:
        return (
            f"SentenceAttention({self.n_sentences} sentences, {len(self.layers)} layers × "
            f"{len(self.heads)} heads)"
        )

    def to_frame(self) -> pd.DataFrame:
        """One row per (layer, head, sentence): entropy, gini, sink, vertical score."""
        vertical = vertical_scores(self)
        rows = []
        for li, layer in enumerate(self.layers):
            for hi, head in enumerate(self.heads):
                for s in range(self.n_sentences):
                    rows.append(
                        {
                            "layer": layer,
                            "head": head,
                            "sentence": s,
                            "n_tokens": int(self.n_tokens[s]),
                            "entropy": float(self.entropy[li, hi, s]),
                            "gini": math.nan if self.gini is None else float(self.gini[li, hi, s]),
                            "sink": float(self.sink[li, hi, s]),
                            "vertical": float(vertical[li, hi, s]),
                        }
                    )
        return pd.DataFrame(rows)


def sentence_attention(
    model: Any,
    traces: Trace | Sequence[Trace],
    *,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    gini: bool = False,
    method: Method = "auto",
    batch_size: int = 1,
    progress: bool | None = None,
) -> list[SentenceAttention]:
    """Sentence × sentence attention and per-sentence row statistics, one per trace.

    One forward per batch (:meth:`AttentionProfile.compute` with ``by="sentences"``).
    ``gini=True`` adds the Gini coefficients (a sort of every row: about one more forward).
    ``method``: ``"fast"`` never builds a ``[T × T]`` pattern (O(T) memory, for long traces),
    ``"pattern"`` reduces the eager patterns, ``"auto"`` (default) is fast from
    ``rc.attention.AUTO_FAST_TOKENS`` tokens; both give the same numbers (within 1e-5).
    Traces need at least one reasoning sentence.
    """
    trace_list = as_traces(traces)
    for index, trace in enumerate(trace_list):
        if not trace.sentences:
            raise ValueError(
                f"trace {index} has no reasoning sentences; sentence attention needs a "
                "reasoning segment (empty-reasoning traces have nothing to measure)"
            )
    statistics: tuple[Any, ...] = ("mass", "per_token", "entropy") + (("gini",) if gini else ())
    profiles = AttentionProfile.compute(
        model,
        trace_list,
        layers=layers,
        heads=heads,
        by="sentences",
        statistics=statistics,
        method=method,
        batch_size=batch_size,
        progress=progress,
    )
    return [_from_profile(profile, trace) for profile, trace in zip(profiles, trace_list)]


def _from_profile(profile: AttentionProfile, trace: Trace) -> SentenceAttention:
    names = [s.name for s in trace.sentences]
    index = [profile.parts.index(n) for n in names]
    assert profile.per_token_masses is not None and profile.entropies is not None
    assert profile.masses is not None
    matrix = profile.per_token_masses[:, :, index][:, :, :, index]
    # rows that see no key of a later sentence give NaN; by causality that attention is 0
    matrix = np.where(np.tril(np.ones((len(index), len(index)), dtype=bool)), matrix, 0.0)
    has_bos = len(trace["bos"]) > 0
    bos = profile.parts.index("bos")
    sink = profile.masses[:, :, index, bos] if has_bos else np.full(matrix.shape[:3], np.nan)
    return SentenceAttention(
        layers=profile.layers,
        heads=profile.heads,
        matrix=matrix,
        entropy=profile.entropies[:, :, index],
        gini=None if profile.ginis is None else profile.ginis[:, :, index],
        sink=sink,
        n_tokens=profile.token_counts[index],
        metadata=dict(trace.metadata),
    )


def vertical_scores(
    attention: SentenceAttention, *, proximity_ignore: int = 4
) -> Float[np.ndarray, "layer head sentence"]:
    """Mean attention sentence j receives from sentences ``i >= j + proximity_ignore``.

    ``proximity_ignore >= 1`` (1 = every later sentence). NaN for sentences with no
    sentence that far after them.
    """
    if proximity_ignore < 1:
        raise ValueError(
            f"proximity_ignore must be >= 1 (1 = all later sentences), got {proximity_ignore}"
        )
    n = attention.n_sentences
    query = np.arange(n)[:, None]
    key = np.arange(n)[None, :]
    later = (query >= key + proximity_ignore).astype(float)  # [query, key]
    counts = later.sum(0)
    total = np.einsum("lhqk,qk->lhk", attention.matrix, later)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, total / np.where(counts > 0, counts, 1), np.nan)


@dataclass(frozen=True)
class ReceiverHeads:
    """Heads ranked by the kurtosis of their vertical scores, over traces.

    ``kurtosis`` ``[trace, layer, head]`` (NaN where a trace has fewer than 4 sentences with a
    vertical score); ``table``: one row per head, ``estimate`` = the mean excess kurtosis over
    traces, with marginal (``ci_*``) and simultaneous (``sim_*``) intervals over traces (see
    :func:`reasoning_circuits.stats.family_table`), sorted by the estimate, highest first. It
    ranks heads; it carries no p-value (no sound null for "a receiver head" exists here).
    """

    layers: tuple[int, ...]
    heads: tuple[int, ...]
    kurtosis: np.ndarray
    table: pd.DataFrame
    proximity_ignore: int

    def top(self, k: int = 16) -> list[Head]:
        """The ``k`` heads with the highest mean kurtosis."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        rows = self.table.head(k)
        return [Head(int(r.layer), int(r.head)) for r in rows.itertuples()]

    def to_frame(self) -> pd.DataFrame:
        return self.table.copy()

    def __repr__(self) -> str:
        best = ", ".join(f"{h} {m:.2f}" for h, m in zip(self.top(3), self.table["estimate"]))
        return f"ReceiverHeads({self.kurtosis.shape[0]} traces; top: {best})"


def receiver_heads(
    attentions: Sequence[SentenceAttention],
    *,
    proximity_ignore: int = 4,
    confidence: float = 0.95,
    seed: int = 0,
) -> ReceiverHeads:
    """Rank heads by the kurtosis of their vertical scores across each trace's sentences."""
    if not attentions:
        raise ValueError("pass the SentenceAttention of at least one trace")
    first = attentions[0]
    for i, a in enumerate(attentions):
        if (a.layers, a.heads) != (first.layers, first.heads):
            raise ValueError(
                f"trace {i} was measured on layers {a.layers} / heads {a.heads}, trace 0 on "
                f"{first.layers} / {first.heads}; compute all with the same layers and heads"
            )
    per_trace = []
    for a in attentions:
        v = vertical_scores(a, proximity_ignore=proximity_ignore)
        ok = np.isfinite(v).all(axis=(0, 1))  # sentences with a score in every head
        if ok.sum() < 4:
            per_trace.append(np.full(v.shape[:2], np.nan))
            continue
        per_trace.append(scipy.stats.kurtosis(v[:, :, ok], axis=-1, fisher=True))
    kurtosis = np.stack(per_trace)
    usable = int(np.isfinite(kurtosis).any(axis=(1, 2)).sum())
    if usable < 2:
        raise ValueError(
            f"only {usable} trace(s) have 4 or more sentences with a vertical score "
            f"(sentences followed by another sentence at least proximity_ignore="
            f"{proximity_ignore} later); use longer traces or a smaller proximity_ignore"
        )
    values, masked = stats.mask_degenerate_cells(kurtosis, confidence=confidence)
    if masked:
        warnings.warn(
            f"{masked} heads have too little spread over {usable} traces for an interval "
            "(a resample would often be constant): their intervals are NaN",
            RuntimeWarning,
            stacklevel=2,
        )
    table = stats.family_table(
        values, dims=("layer", "head"), confidence=confidence, seed=seed, nan_policy="omit"
    )
    # the ranking uses every head's mean, also where no interval could be estimated
    table["estimate"] = np.nanmean(kurtosis, axis=0).ravel()
    table["n"] = np.isfinite(kurtosis).sum(axis=0).ravel()
    # p against 0 would test "excess kurtosis = 0", but the biased sample kurtosis of normal
    # data is below 0 at a few dozen sentences and vertical scores are not normal: no test
    table = table.drop(columns=["p", "p_holm", "p_fdr"])
    table["layer"] = [first.layers[i] for i in table["layer"]]
    table["head"] = [first.heads[i] for i in table["head"]]
    table = table.sort_values("estimate", ascending=False, kind="stable").reset_index(drop=True)
    return ReceiverHeads(first.layers, first.heads, kurtosis, table, proximity_ignore)


def receiver_scores(
    attention: SentenceAttention, heads: Sequence[Head], *, proximity_ignore: int = 4
) -> Float[np.ndarray, " sentence"]:
    """Vertical scores of one trace's sentences averaged over ``heads`` (e.g.
    ``ranking.top(16)``)."""
    if not heads:
        raise ValueError("pass at least one head, e.g. receiver_heads(...).top(16)")
    v = vertical_scores(attention, proximity_ignore=proximity_ignore)
    rows = []
    for head in heads:
        if head.layer not in attention.layers or head.head not in attention.heads:
            raise ValueError(f"{head} was not measured (layers {attention.layers})")
        rows.append(v[attention.layers.index(head.layer), attention.heads.index(head.head)])
    return np.mean(rows, axis=0)


@torch.no_grad()
def study_sentence_statistics(
    model: Any,
    trace: Trace,
    *,
    last_layers: int = 4,
    progress: bool | None = None,
) -> pd.DataFrame:
    """The study's per-sentence entropy and focus (``pts`` convention; see module docstring).

    For each reasoning sentence i: one forward on BOS (if the trace has one) plus the
    reasoning tokens up to the end of sentence i; the post-softmax patterns of the last
    ``last_layers`` layers are averaged over layers and heads into one ``n × n`` matrix
    ``Ā``; ``entropy = -Σ Ā ln Ā / (n ln n)`` (0 when n = 1), ``gini`` over all ``n²``
    entries (causal zeros included), and ``sink`` = the mean mass of ``Ā``'s rows on
    position 0. Returns one row per sentence: ``sentence, n, entropy, gini, sink``.
    """
    (trace,) = as_traces(trace)
    check_traces(model, [trace], what="study_sentence_statistics")
    if not trace.sentences:
        raise ValueError("the trace has no reasoning sentences")
    n_layers = int(model.cfg.n_layers)
    if not 1 <= last_layers <= n_layers:
        raise ValueError(f"last_layers must be in 1..{n_layers}, got {last_layers}")
    chosen = range(n_layers - last_layers, n_layers)
    head = list(trace.ids[trace["bos"].slice])
    start = trace["reasoning"].start
    rows = []
    show = progress if progress is not None else len(trace.sentences) > 10
    for index, sentence in enumerate(
        tqdm(trace.sentences, desc="study statistics", disable=not show)
    ):
        ids = head + list(trace.ids[start : sentence.stop])
        tokens = torch.tensor([ids], device=model.cfg.device)
        total: torch.Tensor | None = None

        def keep(pattern: torch.Tensor, *, hook: Any) -> None:
            nonlocal total
            mean = pattern[0].float().mean(0)
            total = mean if total is None else total + mean

        hooks = [(act_name("pattern", layer), keep) for layer in chosen]
        model.run_with_hooks(tokens, fwd_hooks=hooks, return_type=None)
        assert total is not None
        averaged = (total / last_layers).double().cpu().numpy()
        rows.append({"sentence": index, **_study_numbers(averaged)})
    return pd.DataFrame(rows)


def _study_numbers(a: np.ndarray) -> dict[str, float]:
    """The study's entropy, Gini and sink share of one averaged ``n × n`` pattern."""
    n = a.shape[0]
    entropy = -(a * np.log(np.maximum(a, 1e-10))).sum()
    flat = np.sort(a.ravel())
    big_n = flat.size
    k = np.arange(1, big_n + 1)
    gini = float(((2 * k - big_n - 1) * flat).sum() / (big_n * flat.sum()))
    return {
        "n": n,
        "entropy": 0.0 if n == 1 else float(entropy / (n * math.log(n))),
        "gini": min(max(gini, 0.0), 1.0),
        "sink": float(a[:, 0].mean()),
    }
