"""Fit a trace into a context window by dropping whole reasoning sentences.

Real reasoning traces run to 10k tokens and more; a model's context window, or the memory a
forward pass with hooks needs, may be smaller. :func:`fit_to_context` shortens a trace to a
token budget while keeping what an analysis of the answer needs::

    bos, prompt, <think>, [last reasoning sentences that fit], </think>, answer, eos

* The prompt, the delimiters, the answer and EOS are always kept whole. If they alone exceed
  the budget the trace cannot be fitted and :class:`~reasoning_circuits.errors.ContextLengthError`
  says by how much (:func:`min_fit_length` gives that floor up front).
* The reasoning is cut **at a sentence boundary** (sentences as in
  :mod:`reasoning_circuits.sentences`): by default the earliest sentences go
  (``keep="end"``: the end of the reasoning, which the answer usually leans on, stays);
  ``keep="start"`` drops the latest ones instead. As many whole sentences as fit are kept.
* Nothing is re-tokenized. The result's ids are the original ids with one contiguous run of
  reasoning tokens removed, its text is the original text with the matching characters
  removed, and its sentences are the kept sentences of the original (the same token ids;
  the same text up to whitespace at the cut), renumbered from ``sentence_0``. They are also
  exactly the sentences :meth:`Trace.from_ids` finds in the new ids (checked).
* A trace that already fits is returned as it is (the same object).

What was cut is recorded in ``metadata["fit"]`` (JSON-plain, so it survives
``to_dict()``/``from_dict()``); :meth:`FitInfo.of` reads it back. For a shortened trace::

    len(trace) == info.original_tokens - info.dropped_tokens + info.marker_tokens
    info.kept_sentences + info.dropped_sentences == info.original_sentences

and its reasoning sentences are the original's ``first_kept_sentence`` ...
``first_kept_sentence + kept_sentences - 1`` (after the marker's sentence, if any).

Markers
-------
``marker="[earlier reasoning omitted]\\n"`` (with ``tokenizer=``) inserts a note where the
cut is: right after ``<think>`` for ``keep="end"``, right before ``</think>`` for
``keep="start"`` (there ``"\\n[later reasoning omitted]\\n"`` reads well). The marker is
tokenized on its own and becomes a sentence of its own; it is refused if it does not decode
back to itself between its neighbours, or if it would merge with a kept sentence or split
into several (end it with a line break). Whitespace tokens at the start of a ``keep="start"``
marker join the last kept sentence, as whitespace after a sentence always does; a
whitespace-only marker (e.g. ``"\\n"``, to keep ``<think>\\n`` as the model wrote it) joins
the neighbouring kept sentence.

Caveat: any cut takes the model off its own distribution, and kept sentences may refer to
dropped ones ("as computed above"). Compare measurements on fitted traces with the same
measurements on traces that fit whole.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal, overload

from reasoning_circuits.errors import ContextLengthError
from reasoning_circuits.trace import SEGMENT_NAMES, Segment, Trace, _sentence_segments

__all__ = ["FitInfo", "Keep", "fit_to_context", "min_fit_length"]

Keep = Literal["end", "start"]
METADATA_KEY = "fit"
_WINDOW = 8  # neighbouring tokens decoded with a marker to check it in context


@dataclass(frozen=True)
class FitInfo:
    """What :func:`fit_to_context` cut from a trace (stored in ``metadata["fit"]``).

    Token and sentence counts refer to the **original** trace, also after repeated fitting.
    ``kept_sentences`` original sentences are kept, starting at ``first_kept_sentence``.
    """

    truncated: bool
    max_tokens: int
    keep: Keep
    original_tokens: int
    original_sentences: int
    first_kept_sentence: int
    kept_sentences: int
    dropped_sentences: int
    dropped_tokens: int
    marker: str | None
    marker_tokens: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-plain fields."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FitInfo:
        """Inverse of :meth:`to_dict`."""
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n not in data]
        if missing:
            raise ValueError(f"fit metadata lacks {missing}; it was not written by fit_to_context")
        return cls(**{n: data[n] for n in names})

    @classmethod
    def of(cls, trace: Trace) -> FitInfo | None:
        """The fit record of ``trace``, or ``None`` if it was never shortened."""
        data = trace.metadata.get(METADATA_KEY)
        return None if data is None else cls.from_dict(data)


def min_fit_length(trace: Trace) -> int:
    """The fewest tokens :func:`fit_to_context` can shorten ``trace`` to (without a marker).

    Everything but the reasoning sentences: bos, prompt, delimiters, answer, eos (and the
    reasoning's tokens when it has no sentence, i.e. is whitespace only). Filter with it:
    ``[t for t in traces if min_fit_length(t) <= budget]``.
    """
    if not trace.sentences:
        return len(trace)
    return len(trace) - len(trace["reasoning"])


@overload
def fit_to_context(
    traces: Trace,
    max_tokens: int,
    *,
    keep: Keep = ...,
    marker: str | None = ...,
    tokenizer: Any = ...,
) -> Trace: ...


@overload
def fit_to_context(
    traces: Sequence[Trace],
    max_tokens: int,
    *,
    keep: Keep = ...,
    marker: str | None = ...,
    tokenizer: Any = ...,
) -> list[Trace]: ...


def fit_to_context(
    traces: Trace | Sequence[Trace],
    max_tokens: int,
    *,
    keep: Keep = "end",
    marker: str | None = None,
    tokenizer: Any = None,
) -> Trace | list[Trace]:
    """Shorten a trace (or each of a sequence) to at most ``max_tokens`` tokens.

    Drops whole reasoning sentences from the start (``keep="end"``, default) or the end
    (``keep="start"``) of the reasoning until the trace fits; everything else is kept. See the
    module docstring for the guarantees and ``metadata["fit"]`` (:class:`FitInfo`).

    Args:
        traces: one :class:`Trace`, or a sequence of them.
        max_tokens: the budget in tokens (e.g. the model's ``cfg.n_ctx``), at least 1.
        keep: which end of the reasoning to keep.
        marker: text inserted where reasoning was cut (only when something is cut); needs
            ``tokenizer``.
        tokenizer: the trace's tokenizer; only used to tokenize ``marker``.

    Returns:
        A :class:`Trace` for one trace (the same object if it fits), a list for a sequence.

    Raises:
        ContextLengthError: the parts that are always kept exceed ``max_tokens``.
        ValueError: a marker without a tokenizer, or one that does not survive tokenization.
    """
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_tokens must be a positive int, got {max_tokens!r}")
    if keep not in typing.get_args(Keep):
        raise ValueError(f"keep must be 'end' or 'start', got {keep!r}")
    if marker is not None and tokenizer is None:
        raise ValueError("marker needs the trace's tokenizer: pass tokenizer=model.tokenizer")
    if marker is not None and not marker:
        raise ValueError("marker is empty; pass marker=None for no marker")
    if isinstance(traces, Trace):
        return _fit(traces, max_tokens, keep, marker, tokenizer)
    if isinstance(traces, (str, bytes)) or not isinstance(traces, Sequence):
        raise TypeError(f"expected a Trace or a sequence of Traces, got {type(traces).__name__}")
    out = []
    for index, trace in enumerate(traces):
        if not isinstance(trace, Trace):
            raise TypeError(f"item {index} is a {type(trace).__name__}, not a Trace")
        try:
            out.append(_fit(trace, max_tokens, keep, marker, tokenizer))
        except ContextLengthError as err:
            name = f" (id {trace.metadata['id']!r})" if "id" in trace.metadata else ""
            raise ContextLengthError(
                f"trace {index}{name}: {err}. Leave such traces out first with "
                f"[t for t in traces if rc.min_fit_length(t) <= {max_tokens}]"
            ) from err
    return out


def _boundary(offsets: Sequence[tuple[int, int]], i: int, n_chars: int) -> int:
    """The character where token ``i`` starts, for cutting the text before token ``i``.

    Characters no token covers (a gap in the offsets) go with the following token; a
    character two tokens share goes with the later one.
    """
    if i <= 0:
        return 0
    if i >= len(offsets):
        return n_chars
    return min(offsets[i - 1][1], offsets[i][0])


def _fit(trace: Trace, max_tokens: int, keep: Keep, marker: str | None, tokenizer: Any) -> Trace:
    n = len(trace)
    if n <= max_tokens:
        return trace
    previous = FitInfo.of(trace)
    if previous is not None and (previous.marker is not None or previous.keep != keep):
        raise ValueError(
            f"this trace was already shortened with keep={previous.keep!r}, "
            f"marker={previous.marker!r}; shorten the original trace instead (fitting again is "
            "supported only with the same keep and no marker)"
        )
    reasoning = trace["reasoning"]
    sentences = trace.sentences
    floor = min_fit_length(trace)
    marker_ids: list[int] = []
    if marker is not None:
        for name in ("think_open", "think_close"):
            delimiter = trace.text_of(name).strip()
            if delimiter and delimiter in marker:
                raise ValueError(f"marker {marker!r} contains the delimiter {delimiter!r}")
        marker_ids = [int(i) for i in tokenizer(marker, add_special_tokens=False)["input_ids"]]
        if not marker_ids:
            raise ValueError(f"marker {marker!r} tokenizes to no tokens")
    m = len(marker_ids)
    if floor + m > max_tokens:
        parts = ", ".join(
            f"{name} {len(trace[name])}" for name in SEGMENT_NAMES if name != "reasoning"
        )
        extra = f" + marker {m}" if m else ""
        whitespace = "" if sentences else " (the reasoning has no sentence to drop)"
        raise ContextLengthError(
            f"the trace has {n} tokens and cannot be fitted into {max_tokens}: the parts that "
            f"are always kept need {floor}{extra} ({parts}{whitespace}). Raise max_tokens, "
            "shorten the prompt or answer (e.g. rebuild with Trace.from_parts), or leave this "
            "trace out"
        )

    # Choose the cut: keep ids[:P] + marker + ids[Q:], with the reasoning cut at a sentence start.
    starts = sorted({s.start for s in sentences[1:]})
    budget = max_tokens - floor - m  # reasoning tokens that may stay
    if keep == "end":
        candidates = [*starts, reasoning.stop]
        q = next(d for d in candidates if reasoning.stop - d <= budget)
        p = reasoning.start
        kept = [j for j, s in enumerate(sentences) if s.start > q or (s.start == q and len(s))]
    else:
        candidates = [reasoning.start, *starts]
        p = max(e for e in candidates if e - reasoning.start <= budget)
        q = reasoning.stop
        kept = [j for j, s in enumerate(sentences) if s.start < p or (s.start == p and not len(s))]
    first, stop = (kept[0], kept[-1] + 1) if kept else (len(sentences), len(sentences))
    if keep == "start" and not kept:
        first = stop = 0

    # Text: the original characters of the kept tokens, with the marker between them.
    text, offsets = trace.text, trace.offsets
    c0, c1 = _boundary(offsets, p, len(text)), _boundary(offsets, q, len(text))
    before, after = list(trace.ids[:p][-_WINDOW:]), list(trace.ids[q:][:_WINDOW])
    pieces = _marker_pieces(marker, marker_ids, tokenizer, before, after) if marker else []
    marker_text = "".join(pieces)
    c1_new = c0 + len(marker_text)
    shift_tok = p + m - q
    shift_char = c1_new - c1

    def tok(t: int) -> int:
        return t if t <= p else t + shift_tok

    def char(c: int) -> int:
        return min(c, c0) if c <= c0 else max(c, c1) + shift_char

    new_ids = trace.ids[:p] + tuple(marker_ids) + trace.ids[q:]
    new_text = text[:c0] + marker_text + text[c1:]
    new_offsets: list[tuple[int, int]] = [(min(a, c0), min(b, c0)) for a, b in offsets[:p]]
    pos = c0
    for piece in pieces:
        new_offsets.append((pos, pos + len(piece)))
        pos += len(piece)
    new_offsets += [(char(max(a, c1)), char(max(b, c1))) for a, b in offsets[q:]]

    segments = {}
    for name, seg in trace.segments.items():
        if name == "reasoning":
            segments[name] = Segment(
                name, seg.start, tok(seg.stop), char(seg.char_start), char(seg.char_stop)
            )
        else:
            segments[name] = Segment(
                name, tok(seg.start), tok(seg.stop), char(seg.char_start), char(seg.char_stop)
            )
    new_reasoning = segments["reasoning"]

    # Sentences: found by the library's own rule in the new text (so they are what
    # Trace.from_ids would find), then checked against the kept sentences of the original.
    own_marker = marker is not None and bool(marker.strip())
    kept_starts = [tok(sentences[j].start) for j in range(first, stop)]
    expected = _expected_edges(kept_starts, keep, own_marker, pieces, p, m, new_reasoning)
    found = _sentence_segments(new_text, new_offsets, new_reasoning)
    found_edges = [s.start for s in found] + [new_reasoning.stop] if found else []
    if found_edges == expected:
        new_sentences = tuple(found)
    elif marker is not None:
        raise ValueError(
            f"marker {marker!r} does not stay a sentence of its own next to the kept "
            "sentences (it merges with one, or splits into several). End it with a line "
            "break and keep it to one sentence, e.g. '[earlier reasoning omitted]\\n' for "
            "keep='end' or '\\n[later reasoning omitted]\\n' for keep='start'"
        )
    else:  # not seen in practice: keep the original's sentences, mapped into the new text
        char_edges = [new_reasoning.char_start]
        char_edges += [char(sentences[j].char_start) for j in range(first + 1, stop)]
        char_edges.append(new_reasoning.char_stop)
        for k in range(1, len(char_edges)):
            char_edges[k] = min(max(char_edges[k], char_edges[k - 1]), new_reasoning.char_stop)
        new_sentences = tuple(
            Segment(f"sentence_{k}", expected[k], expected[k + 1], char_edges[k], char_edges[k + 1])
            for k in range(len(expected) - 1)
        )

    base_first = previous.first_kept_sentence if previous is not None else 0
    info = FitInfo(
        truncated=True,
        max_tokens=max_tokens,
        keep=keep,
        original_tokens=previous.original_tokens if previous is not None else n,
        original_sentences=(
            previous.original_sentences if previous is not None else len(sentences)
        ),
        first_kept_sentence=base_first + first,
        kept_sentences=stop - first,
        dropped_sentences=0,
        dropped_tokens=0,
        marker=marker,
        marker_tokens=m,
    )
    info = dataclasses.replace(
        info,
        dropped_sentences=info.original_sentences - info.kept_sentences,
        dropped_tokens=info.original_tokens - (len(new_ids) - m),
    )
    metadata = dict(trace.metadata)
    metadata[METADATA_KEY] = info.to_dict()
    return dataclasses.replace(
        trace,
        ids=new_ids,
        text=new_text,
        offsets=tuple(new_offsets),
        segments=MappingProxyType(segments),
        sentences=new_sentences,
        metadata=MappingProxyType(metadata),
    )


def _marker_pieces(
    marker: str, ids: list[int], tokenizer: Any, before: list[int], after: list[int]
) -> list[str]:
    """The text each marker token adds between its neighbours; refuses a marker that does
    not decode back to itself there."""

    def decode(part: list[int]) -> str:
        out = tokenizer.decode(part, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        return str(out)

    left, right = decode(before), decode(after)
    whole = decode(before + ids + after)
    if whole != left + marker + right:
        raise ValueError(
            f"marker {marker!r} does not decode back to itself where it goes (tokenized alone "
            f"it reads {decode(ids)!r}; in place the text becomes ...{whole[-80:]!r}). Choose a "
            "marker that starts and ends with plain characters, e.g. '[...]\\n'"
        )
    pieces, done = [], left
    for k in range(len(ids)):
        upto = decode(before + ids[: k + 1])
        if k < len(ids) - 1:
            upto = upto.rstrip("\ufffd")
        if not upto.startswith(done):
            return [marker] + [""] * (len(ids) - 1)
        pieces.append(upto[len(done) :])
        done = upto
    if "".join(pieces) != marker:
        return [marker] + [""] * (len(ids) - 1)
    return pieces


def _expected_edges(
    kept_starts: list[int],
    keep: Keep,
    own_marker: bool,
    pieces: list[str],
    p: int,
    m: int,
    reasoning: Segment,
) -> list[int]:
    """Token edges of the shortened reasoning's sentences: the kept ones and the marker's.

    A marker with text is a sentence of its own; whitespace tokens at its start join the last
    kept sentence for ``keep="start"`` (whitespace after a sentence belongs to it). A
    whitespace-only marker joins the neighbouring kept sentence.
    """
    if not kept_starts:
        return [reasoning.start, reasoning.stop] if own_marker else []
    starts = list(kept_starts)
    if keep == "end":
        starts[0] = p + m if own_marker else p
        if own_marker:
            starts.insert(0, p)
    elif own_marker:
        leading = next((k for k, piece in enumerate(pieces) if piece.strip()), m)
        starts.append(p + leading)
    return [*starts, reasoning.stop]
