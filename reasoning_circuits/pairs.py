"""Clean/corrupted pairs for patching: one position frame for two traces, and answer probes.

Patching copies position ``p`` of the clean run into position ``p`` of the corrupted run, so
the two sequences must share a position frame. Two problems that differ in one number often
tokenize to different lengths ("7" vs "12"), and their reasonings differ in length too.
:func:`align_pair` lines them up **segment by segment**: each of the seven segments
(``bos, prompt, think_open, reasoning, think_close, answer, eos``) gets the width of the
longer of the two, and the shorter one is padded at the segment's *start*. Segment ends
therefore coincide: ``</think>``, the tokens just before it (where a probe goes) and the
last token sit at the same aligned position in both.

The padding is **masked**: its attention-mask entry is 0, so no real token attends to it,
and the position ids count real tokens only, so every real token sees exactly what it would
see unpadded (a test checks the logits). R2A padded with unmasked end-of-sentence tokens,
over half of one corrupted input; that changes what the model computes.

:func:`insert_probe` writes a probe sentence such as ``"Final answer is 12."`` right before
``</think>`` and re-tokenizes, as R2A does. Re-tokenizing can merge tokens across the
junctions differently in the two traces; :func:`probe_pair` checks that the probes of both
traces still have the same number of tokens and still end at ``</think>``, and raises
:class:`~reasoning_circuits.errors.PairAlignmentError` saying what differs otherwise.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from reasoning_circuits.errors import PairAlignmentError, TokenizerMismatchError
from reasoning_circuits.trace import SEGMENT_NAMES, Segment, Trace, tokenizer_fingerprint

__all__ = ["PatchPair", "align_pair", "insert_probe", "probe_pair"]

PositionSpec = int | str | Segment


@dataclass(frozen=True)
class PatchPair:
    """Clean and corrupted token sequences in one position frame, with attention masks.

    ``clean_tokens``/``corrupted_tokens``: ``[1, pos]`` ids; ``clean_mask``/``corrupted_mask``:
    ``[1, pos]``, 1 for a real token and 0 for padding. ``segments`` are the aligned spans
    (plus ``"probe"`` when a probe was inserted). ``clean_index``/``corrupted_index`` map an
    aligned position to the position in the original trace (-1 at padding).
    """

    clean_tokens: Int[Tensor, "1 pos"]
    corrupted_tokens: Int[Tensor, "1 pos"]
    clean_mask: Int[Tensor, "1 pos"]
    corrupted_mask: Int[Tensor, "1 pos"]
    segments: dict[str, Segment]
    clean_index: tuple[int, ...]
    corrupted_index: tuple[int, ...]

    def __len__(self) -> int:
        return int(self.clean_tokens.shape[1])

    def __repr__(self) -> str:
        spans = ", ".join(f"{n}[{s.start}:{s.stop}]" for n, s in self.segments.items())
        padding = int((self.clean_mask == 0).sum() + (self.corrupted_mask == 0).sum())
        return f"PatchPair({len(self)} positions, {padding} padded: {spans})"

    @property
    def padded(self) -> bool:
        """Whether either side has padding (then runs need the attention masks)."""
        return bool((self.clean_mask == 0).any() or (self.corrupted_mask == 0).any())

    @property
    def both_real(self) -> Tensor:
        """``[pos]`` bool: positions that hold a real token on both sides (patchable)."""
        return (self.clean_mask[0] == 1) & (self.corrupted_mask[0] == 1)

    def resolve(self, positions: Sequence[PositionSpec] | PositionSpec | None) -> list[int]:
        """Aligned positions from ints (negative from the end), segment names or Segments.

        Segments must be in the aligned frame (``pair.segments[...]``); a trace's own
        ``trace["answer"]`` indexes the unaligned trace. ``None``: every position.
        """
        if positions is None:
            return list(range(len(self)))
        items = [positions] if isinstance(positions, int | str | Segment) else positions
        out: list[int] = []
        for item in items:
            if isinstance(item, str):
                if not self.segments:
                    raise KeyError(
                        f"segment {item!r}: this pair was built from token tensors and has no "
                        "segments; pass two Traces (or rc.align_pair(clean, corrupted)) to "
                        "choose positions by segment name"
                    )
                if item not in self.segments:
                    raise KeyError(
                        f"no segment {item!r} in this pair; choose from {sorted(self.segments)}"
                    )
                out += list(self.segments[item].positions)
            elif isinstance(item, Segment):
                out += list(item.positions)
            else:
                position = int(item)
                if not -len(self) <= position < len(self):
                    raise IndexError(
                        f"position {position} is outside the pair's {len(self)} aligned positions"
                    )
                out.append(position % len(self))
        return out

    def segment_of(self, position: int) -> str:
        """Name of the aligned segment containing ``position`` (``"probe"`` wins)."""
        probe = self.segments.get("probe")
        if probe is not None and position in probe:
            return "probe"
        for name in SEGMENT_NAMES:
            if position in self.segments[name]:
                return name
        raise IndexError(f"position {position} outside the pair")


def _probe_span(trace: Trace) -> Segment | None:
    span = trace.metadata.get("probe_tokens")
    return None if span is None else Segment("probe", int(span[0]), int(span[1]))


def align_pair(clean: Trace, corrupted: Trace, *, pad_id: int = 0) -> PatchPair:
    """Align two traces segment by segment with masked padding (see the module docstring).

    Equal segment lengths give no padding at all. ``pad_id`` is the id written at padded
    positions; it is masked, so its value does not matter.
    """
    if (
        clean.tokenizer is not None
        and corrupted.tokenizer is not None
        and not clean.tokenizer.matches(corrupted.tokenizer)
    ):
        raise TokenizerMismatchError(
            f"the clean trace was tokenized by {clean.tokenizer} and the corrupted one by "
            f"{corrupted.tokenizer}; build both with the model's tokenizer"
        )
    clean_ids: list[int] = []
    corr_ids: list[int] = []
    clean_index: list[int] = []
    corr_index: list[int] = []
    segments: dict[str, Segment] = {}
    for name in SEGMENT_NAMES:
        a, b = clean[name], corrupted[name]
        width = max(len(a), len(b))
        start = len(clean_ids)
        for trace, seg, ids, index in (
            (clean, a, clean_ids, clean_index),
            (corrupted, b, corr_ids, corr_index),
        ):
            pad = width - len(seg)
            ids += [pad_id] * pad + list(trace.ids[seg.slice])
            index += [-1] * pad + list(seg.positions)
        segments[name] = Segment(name, start, start + width)
    probes = [_probe_span(clean), _probe_span(corrupted)]
    if all(p is not None for p in probes):
        aligned = [
            (index.index(p.start), index.index(p.stop - 1) + 1)  # type: ignore[union-attr]
            for index, p in zip((clean_index, corr_index), probes)
        ]
        if aligned[0] != aligned[1]:
            raise PairAlignmentError(
                f"the probes land at aligned positions {aligned[0]} (clean) and {aligned[1]} "
                "(corrupted); they must coincide. Use answers with the same number of tokens."
            )
        segments["probe"] = Segment("probe", *aligned[0])

    def tensor(values: list[int]) -> Tensor:
        return torch.tensor([values], dtype=torch.long)

    return PatchPair(
        clean_tokens=tensor(clean_ids),
        corrupted_tokens=tensor(corr_ids),
        clean_mask=tensor([int(i >= 0) for i in clean_index]),
        corrupted_mask=tensor([int(i >= 0) for i in corr_index]),
        segments=segments,
        clean_index=tuple(clean_index),
        corrupted_index=tuple(corr_index),
    )


def insert_probe(trace: Trace, probe: str, tokenizer: Any) -> Trace:
    """The trace with ``probe`` written right before ``</think>``, re-tokenized from text.

    The new trace's ``metadata["probe_tokens"]`` is the ``[start, stop)`` token span of the
    probe. Raises :class:`PairAlignmentError` when re-tokenizing merged the probe with the
    ``</think>`` delimiter, which would leave no clean boundary to patch at.
    """
    given = tokenizer_fingerprint(tokenizer)
    if trace.tokenizer is not None and not trace.tokenizer.matches(given):
        raise TokenizerMismatchError(
            f"the trace was tokenized by {trace.tokenizer} but the probe would be re-tokenized "
            f"with {given}; pass the tokenizer that made the trace (model.tokenizer)"
        )
    close = trace["think_close"]
    think_close = trace.text_of("think_close") or "</think>"
    if think_close in probe:
        raise ValueError(f"the probe {probe!r} contains {think_close!r}; write it without")
    text = trace.text[: close.char_start] + probe + trace.text[close.char_start :]
    probe_chars = (close.char_start, close.char_start + len(probe))
    think_open = trace.text_of("think_open") or "<think>"
    new = Trace.from_text(
        text,
        tokenizer,
        think_open=think_open,
        think_close=think_close,
        prepend_bos=False,  # the text already starts with the BOS string if it had one
        convention=trace.convention,
        strict=False,
    )
    inside = [
        i for i, (a, b) in enumerate(new.offsets) if a < probe_chars[1] and b > probe_chars[0]
    ]
    if not inside or inside[-1] + 1 != new["think_close"].start:
        raise PairAlignmentError(
            f"after inserting {probe!r} and re-tokenizing, the probe does not end right before "
            "</think> (a token merged across the junction); end the probe with a newline or "
            "punctuation that your tokenizer keeps separate"
        )
    metadata = {**trace.metadata, "probe_tokens": [inside[0], inside[-1] + 1], "probe": probe}
    return dataclasses.replace(new, metadata=MappingProxyType(metadata))


def probe_pair(
    clean: Trace,
    corrupted: Trace,
    tokenizer: Any,
    *,
    clean_answer: str,
    corrupted_answer: str,
    template: str = "Final answer is {answer}.\n",
    pad_id: int = 0,
) -> PatchPair:
    """Insert the probe ``template`` into both traces, re-tokenize, re-check, and align.

    The probe tokens become the aligned segment ``"probe"``. Raises
    :class:`PairAlignmentError` when the two probes tokenize to different numbers of tokens
    (e.g. ``"7"`` is one token and ``"12"`` two) or no longer end at ``</think>``.
    """
    with_probe = [
        insert_probe(clean, template.format(answer=clean_answer), tokenizer),
        insert_probe(corrupted, template.format(answer=corrupted_answer), tokenizer),
    ]
    spans = [_probe_span(t) for t in with_probe]
    lengths = [len(s) for s in spans if s is not None]
    if lengths[0] != lengths[1]:
        pieces = [
            [tokenizer.decode([i]) for i in t.ids[s.slice]]  # type: ignore[union-attr]
            for t, s in zip(with_probe, spans)
        ]
        raise PairAlignmentError(
            f"the probe is {lengths[0]} tokens in the clean trace {pieces[0]} and "
            f"{lengths[1]} in the corrupted one {pieces[1]}; patching needs them aligned "
            "token for token. Pick answers that tokenize to the same number of tokens."
        )
    return align_pair(*with_probe, pad_id=pad_id)
