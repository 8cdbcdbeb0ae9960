"""Traces and segments: where the prompt, the reasoning and the answer are, in tokens and text.

A reasoning model writes ``prompt <think> reasoning </think> answer``. A :class:`Trace` holds
the token ids (the ids the model produced, never a re-tokenisation of decoded text when the
ids are known), the text they decode to, a character span per token, and the ordered
segments::

    bos, prompt, think_open, reasoning, think_close, answer, eos

Each :class:`Segment` is a half-open token span ``[start, stop)`` plus the character span
``[char_start, char_stop)`` of the text it covers. The character spans partition the text.
``bos`` and ``eos`` are empty when the sequence has no BOS or final EOS token.

How tokens are assigned to segments
-----------------------------------
Delimiters are found in the *text* and mapped to tokens through the character offsets, so a
tokenizer that splits ``<think>`` into ``<``, ``think``, ``>`` gives the same segments as one
that has ``<think>`` as a single token. The rule for a token that straddles a boundary:

1. A token that overlaps a delimiter's characters belongs to the delimiter segment (so a
   merged token such as ``" <"`` joins ``think_open``).
2. Any other token belongs to the segment that contains its first non-whitespace character
   (so ``" The"`` after a sentence break starts the next sentence, and the space token that
   a tokenizer puts before ``<think>`` stays in the prompt, as in R2A).

Reasoning sentences (see :mod:`reasoning_circuits.sentences`) are sub-segments of
``reasoning`` named ``sentence_0``, ``sentence_1``, ...; their character spans cover the
reasoning text exactly and tokens are assigned by rule 2.

Repeated delimiters
-------------------
With ``strict=True`` (default) the text must contain exactly one opening and one closing
delimiter; anything else raises :class:`TraceFormatError` with the positions. With
``strict=False`` the closing delimiter is the first one after an opening delimiter, and the
opening delimiter is the last one before it (a literal ``<think>`` quoted in the prompt is
then treated as prompt text). :meth:`Trace.from_parts` needs no search at all.

Conventions
-----------
``convention="exact"`` (default) puts a final EOS token in ``eos`` and everything between
``</think>`` and it in ``answer``. ``convention="r2a"`` reproduces the R2A paper: first
occurrences of the delimiters, and the answer is ``[e+1, T-1)``: the last token is dropped
from the answer whatever it is (R2A assumes it is EOS), and becomes ``eos``.
"""

from __future__ import annotations

import bisect
import builtins
import contextlib
import hashlib
import itertools
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

from reasoning_circuits._options import check_option
from reasoning_circuits.errors import TraceFormatError
from reasoning_circuits.sentences import split_sentences

__all__ = [
    "SEGMENT_NAMES",
    "Segment",
    "TokenizerFingerprint",
    "Trace",
    "pad_traces",
    "tokenizer_fingerprint",
]

SEGMENT_NAMES: tuple[str, ...] = (
    "bos",
    "prompt",
    "think_open",
    "reasoning",
    "think_close",
    "answer",
    "eos",
)
Partition = Literal["segments", "sentences"]
Convention = Literal["exact", "r2a"]


@dataclass(frozen=True)
class Segment:
    """A named half-open token span ``[start, stop)`` and the character span it covers.

    ``ids[segment.slice]`` selects the segment's tokens; ``len(segment)`` counts them.
    """

    name: str
    start: int
    stop: int
    char_start: int = 0
    char_stop: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.start <= self.stop:
            raise ValueError(
                f"Segment {self.name!r}: need 0 <= start <= stop, got [{self.start}, {self.stop})"
            )
        if not 0 <= self.char_start <= self.char_stop:
            raise ValueError(
                f"Segment {self.name!r}: need 0 <= char_start <= char_stop, "
                f"got [{self.char_start}, {self.char_stop})"
            )

    def __len__(self) -> int:
        return self.stop - self.start

    def __contains__(self, position: object) -> bool:
        return isinstance(position, int) and self.start <= position < self.stop

    @property
    def slice(self) -> builtins.slice:
        """The token span as a ``slice``: ``ids[segment.slice]``, ``tensor[:, segment.slice]``."""
        return slice(self.start, self.stop)

    @property
    def positions(self) -> range:
        """The token positions of the segment."""
        return range(self.start, self.stop)

    @property
    def char_slice(self) -> builtins.slice:
        """The character span as a ``slice`` into :attr:`Trace.text`."""
        return slice(self.char_start, self.char_stop)


@dataclass(frozen=True)
class TokenizerFingerprint:
    """Which tokenizer made a trace: its name, vocabulary size and a hash of the vocabulary.

    Two fingerprints match when size and hash agree (the name is only for messages: a local
    copy of a hub tokenizer has another name but the same vocabulary).
    """

    name: str
    vocab_size: int
    digest: str

    def matches(self, other: TokenizerFingerprint) -> bool:
        """Same vocabulary (size and hash); names may differ."""
        return (self.vocab_size, self.digest) == (other.vocab_size, other.digest)

    def __str__(self) -> str:
        return f"{self.name!r} ({self.vocab_size} tokens, vocabulary hash {self.digest[:12]})"


_FINGERPRINTS: weakref.WeakKeyDictionary[Any, tuple[int, TokenizerFingerprint]] = (
    weakref.WeakKeyDictionary()
)


def tokenizer_fingerprint(tokenizer: Any) -> TokenizerFingerprint:
    """The :class:`TokenizerFingerprint` of a Hugging Face tokenizer (cached per object)."""
    size = len(tokenizer)
    try:
        cached = _FINGERPRINTS.get(tokenizer)
    except TypeError:  # not weak-referenceable: compute every time
        cached = None
    if cached is not None and cached[0] == size:
        return cached[1]
    vocab = tokenizer.get_vocab()
    digest = hashlib.sha256()
    for token, index in sorted(vocab.items(), key=lambda item: item[1]):
        digest.update(f"{index}\t{token}\n".encode())
    name = str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)
    result = TokenizerFingerprint(name, len(vocab), digest.hexdigest())
    with contextlib.suppress(TypeError):  # not weak-referenceable: no cache
        _FINGERPRINTS[tokenizer] = (size, result)
    return result


def _check_delimiters(think_open: str, think_close: str) -> None:
    for name, value in (("think_open", think_open), ("think_close", think_close)):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(
                f"{name}={value!r} is empty; pass the delimiter the model writes, e.g. "
                f"{name}={'<think>' if name == 'think_open' else '</think>'!r}"
            )
    if think_open == think_close:
        raise ValueError(f"think_open and think_close are both {think_open!r}; they must differ")


def _need_fast(tokenizer: Any, constructor: str) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(
            f"Trace.{constructor} needs a fast (Rust) tokenizer for character offsets, got "
            f"{type(tokenizer).__name__}; load it with AutoTokenizer.from_pretrained(..., "
            "use_fast=True) or build the trace with Trace.from_ids"
        )


def _bos_eos_ids(tokenizer: Any) -> tuple[int | None, int | None]:
    return getattr(tokenizer, "bos_token_id", None), getattr(tokenizer, "eos_token_id", None)


def _offsets_from_ids(ids: Sequence[int], tokenizer: Any) -> tuple[str, list[tuple[int, int]]]:
    """Decode ``ids`` and give each token the characters it adds to the decoded text.

    Decoding a short window before each token (rather than the token alone) keeps the
    tokenizer's context-dependent rules (SentencePiece's leading space, byte-level pieces of
    one character) right. Trailing replacement characters of an incomplete UTF-8 sequence are
    attributed to the token that completes it.
    """

    def decode(part: Sequence[int]) -> str:
        out = tokenizer.decode(
            list(part), skip_special_tokens=False, clean_up_tokenization_spaces=False
        )
        return str(out)

    text = decode(ids)
    window = 8
    pieces: list[str] = []
    for i in range(len(ids)):
        lo = max(0, i - window)
        before = decode(ids[lo:i]).rstrip("\ufffd")
        upto = decode(ids[lo : i + 1])
        if i < len(ids) - 1:
            upto = upto.rstrip("\ufffd")
        if not upto.startswith(before):
            pieces = []
            break
        pieces.append(upto[len(before) :])
    if "".join(pieces) != text:
        # Slow exact fallback: prefix decodes (quadratic, only for unusual tokenizers).
        pieces, done = [], ""
        for i in range(len(ids)):
            upto = decode(ids[: i + 1])
            if i < len(ids) - 1:
                upto = upto.rstrip("\ufffd")
            if not upto.startswith(done):
                raise TraceFormatError(
                    f"token {i} (id {ids[i]}) changes the text decoded before it; this tokenizer "
                    "cannot be mapped to character offsets. Use Trace.from_parts or "
                    "Trace.from_text instead."
                )
            pieces.append(upto[len(done) :])
            done = upto
    offsets, pos = [], 0
    for piece in pieces:
        offsets.append((pos, pos + len(piece)))
        pos += len(piece)
    return text, offsets


def _find_all(text: str, needle: str) -> list[int]:
    found, start = [], text.find(needle)
    while start != -1:
        found.append(start)
        start = text.find(needle, start + len(needle))
    return found


def _locate_delimiters(
    text: str, think_open: str, think_close: str, *, strict: bool, convention: Convention
) -> tuple[int, int]:
    """Character positions of the opening and closing delimiter (see module docstring)."""
    if not text:
        raise TraceFormatError(
            "the trace text is empty; a trace needs at least '<think>' and '</think>'"
        )
    opens, closes = _find_all(text, think_open), _find_all(text, think_close)
    if not opens:
        raise TraceFormatError(
            f"no {think_open!r} found in the text ({len(text)} chars); pass think_open=... if the "
            "model uses another delimiter, or build the trace with Trace.from_parts"
        )
    if closes and closes[0] < opens[0] and (strict or closes[-1] < opens[0]):
        raise TraceFormatError(
            f"{think_close!r} at char {closes[0]} comes before {think_open!r} at char {opens[0]}; "
            "the text should read 'prompt <think> reasoning </think> answer'"
        )
    if not [c for c in closes if c > opens[0]]:
        raise TraceFormatError(
            f"no {think_close!r} found after position {opens[0] + len(think_open)} (the end of "
            f"{think_open!r}); the reasoning may be unfinished or truncated. Pass "
            "think_close=... if the model uses another delimiter, or use Trace.from_parts"
        )
    if convention == "r2a":
        return opens[0], closes[0]
    if strict and (len(opens) > 1 or len(closes) > 1):
        raise TraceFormatError(
            f"found {think_open!r} at chars {opens} and {think_close!r} at chars {closes}; "
            f"strict=True needs exactly one of each. Pass strict=False to use the last "
            f"{think_open!r} before the first {think_close!r} that follows one, or build the "
            "trace with Trace.from_parts"
        )
    close = next(c for c in closes if c > opens[0])
    open_ = max(o for o in opens if o < close)
    return open_, close


def _anchor(text: str, start: int, stop: int) -> int:
    """First non-whitespace character of a token's span (its start if it has none)."""
    for pos in range(start, stop):
        if not text[pos].isspace():
            return pos
    return start


@dataclass(frozen=True, eq=False)
class Trace:
    """One ``prompt <think> reasoning </think> answer`` sequence as tokens, text and segments.

    Build with :meth:`from_text`, :meth:`from_ids` or :meth:`from_parts`. ``trace["answer"]``
    is a :class:`Segment`; ``trace.tokens`` is a ``[1, pos]`` tensor ready for a model.
    """

    ids: tuple[int, ...]
    text: str
    offsets: tuple[tuple[int, int], ...]
    segments: Mapping[str, Segment]
    sentences: tuple[Segment, ...]
    convention: Convention = "exact"
    metadata: Mapping[str, Any] = field(default_factory=dict)
    tokenizer: TokenizerFingerprint | None = None

    # ----------------------------------------------------------------- constructors
    @classmethod
    def from_text(
        cls,
        text: str,
        tokenizer: Any,
        *,
        think_open: str = "<think>",
        think_close: str = "</think>",
        prepend_bos: bool | None = None,
        strict: bool = True,
        convention: Convention = "exact",
        metadata: Mapping[str, Any] | None = None,
    ) -> Trace:
        """Tokenize ``text`` and find its segments.

        Use this only when the generated ids are lost: decode→encode need not return the ids
        a model produced. ``prepend_bos=None`` prepends the tokenizer's BOS string when the
        tokenizer has one and the text does not already start with it (so the model sees the
        attention sink it was trained with); ``True``/``False`` force it.
        """
        _check_delimiters(think_open, think_close)
        check_option(convention, Convention, "convention")
        _need_fast(tokenizer, "from_text")
        if not isinstance(text, str):
            raise TypeError(
                f"text must be a str, got {type(text).__name__}; for token ids use Trace.from_ids"
            )
        if not text:
            raise TraceFormatError(
                "the trace text is empty; a trace needs at least '<think>' and '</think>'"
            )
        bos = getattr(tokenizer, "bos_token", None)
        if prepend_bos is None:
            prepend_bos = bos is not None and not text.startswith(bos)
        if prepend_bos:
            if bos is None:
                raise ValueError("prepend_bos=True but the tokenizer has no bos_token")
            text = bos + text
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = [(int(a), int(b)) for a, b in enc["offset_mapping"]]
        return cls._build(
            list(enc["input_ids"]),
            text,
            offsets,
            tokenizer,
            think_open=think_open,
            think_close=think_close,
            strict=strict,
            convention=convention,
            metadata=metadata,
        )

    @classmethod
    def from_ids(
        cls,
        ids: Sequence[int] | Tensor,
        tokenizer: Any,
        *,
        text: str | None = None,
        think_open: str = "<think>",
        think_close: str = "</think>",
        strict: bool = True,
        convention: Convention = "exact",
        metadata: Mapping[str, Any] | None = None,
    ) -> Trace:
        """Build a trace from the token ids a model produced (prompt ids + generated ids).

        The text is ``tokenizer.decode(ids)`` with special tokens kept. If ``text`` is given it
        must equal that decoding; a mismatch raises :class:`TraceFormatError`.
        """
        _check_delimiters(think_open, think_close)
        check_option(convention, Convention, "convention")
        if isinstance(ids, Tensor):
            if ids.ndim == 2 and ids.shape[0] == 1:
                ids = ids[0]
            if ids.ndim != 1:
                raise ValueError(f"ids must be 1-D or [1, pos], got shape {tuple(ids.shape)}")
            ids = ids.tolist()
        ids = [int(i) for i in ids]
        if not ids:
            raise TraceFormatError("ids is empty; a trace needs at least '<think>' and '</think>'")
        n_vocab = len(tokenizer)
        bad = [i for i in ids if i < 0 or i >= n_vocab]
        if bad:
            raise TraceFormatError(
                f"ids {sorted(set(bad))[:5]} lie outside the tokenizer's vocabulary [0, "
                f"{n_vocab}); pass the ids with the tokenizer that produced them"
            )
        decoded, offsets = _offsets_from_ids(ids, tokenizer)
        if text is not None and text != decoded:
            first = next(
                (i for i, (a, b) in enumerate(zip(text, decoded)) if a != b),
                min(len(text), len(decoded)),
            )
            raise TraceFormatError(
                f"the ids do not decode to the given text: they differ from char {first} "
                f"(text has {text[first : first + 20]!r}, ids decode to "
                f"{decoded[first : first + 20]!r}). Pass the ids the model produced with the "
                "tokenizer that produced them, or omit text="
            )
        return cls._build(
            ids,
            decoded,
            offsets,
            tokenizer,
            think_open=think_open,
            think_close=think_close,
            strict=strict,
            convention=convention,
            metadata=metadata,
        )

    @classmethod
    def from_parts(
        cls,
        prompt: str,
        reasoning: str,
        answer: str,
        tokenizer: Any,
        *,
        think_open: str = "<think>",
        think_close: str = "</think>",
        prepend_bos: bool | None = None,
        append_eos: bool = False,
        metadata: Mapping[str, Any] | None = None,
    ) -> Trace:
        """Build a trace from its parts; each part is tokenized on its own.

        Segment boundaries are token boundaries by construction and no delimiter is searched
        for, so a prompt that quotes ``<think>`` is fine. ``prepend_bos`` is as in
        :meth:`from_text`; ``append_eos`` adds the tokenizer's EOS token.
        """
        _check_delimiters(think_open, think_close)
        _need_fast(tokenizer, "from_parts")
        for name, part in (("prompt", prompt), ("reasoning", reasoning), ("answer", answer)):
            if not isinstance(part, str):
                raise TypeError(f"{name} must be a str, got {type(part).__name__}")
        bos_id, _ = _bos_eos_ids(tokenizer)
        if prepend_bos is None:
            prepend_bos = bos_id is not None
        parts: list[tuple[str, str]] = []
        if prepend_bos:
            if tokenizer.bos_token is None:
                raise ValueError("prepend_bos=True but the tokenizer has no bos_token")
            parts.append(("bos", tokenizer.bos_token))
        parts += [
            ("prompt", prompt),
            ("think_open", think_open),
            ("reasoning", reasoning),
            ("think_close", think_close),
            ("answer", answer),
        ]
        if append_eos:
            if tokenizer.eos_token is None:
                raise ValueError("append_eos=True but the tokenizer has no eos_token")
            parts.append(("eos", tokenizer.eos_token))
        ids: list[int] = []
        offsets: list[tuple[int, int]] = []
        text = ""
        starts: dict[str, int] = {}
        for name, part in parts:
            starts[name] = len(text)
            if part:
                enc = tokenizer(part, add_special_tokens=False, return_offsets_mapping=True)
                ids += list(enc["input_ids"])
                offsets += [(len(text) + a, len(text) + b) for a, b in enc["offset_mapping"]]
            text += part
        open_at, close_at = starts["think_open"], starts["think_close"]
        return cls._build(
            ids,
            text,
            offsets,
            tokenizer,
            think_open=think_open,
            think_close=think_close,
            strict=True,
            convention="exact",
            metadata=metadata,
            delimiters_at=(open_at, close_at),
        )

    @classmethod
    def _build(
        cls,
        ids: list[int],
        text: str,
        offsets: list[tuple[int, int]],
        tokenizer: Any,
        *,
        think_open: str,
        think_close: str,
        strict: bool,
        convention: Convention,
        metadata: Mapping[str, Any] | None,
        delimiters_at: tuple[int, int] | None = None,
    ) -> Trace:
        if not ids:
            raise TraceFormatError("the text tokenizes to no tokens")
        if delimiters_at is None:
            open_at, close_at = _locate_delimiters(
                text, think_open, think_close, strict=strict, convention=convention
            )
        else:
            open_at, close_at = delimiters_at
        open_end, close_end = open_at + len(think_open), close_at + len(think_close)
        bos_id, eos_id = _bos_eos_ids(tokenizer)
        n = len(ids)
        has_bos = bos_id is not None and ids[0] == bos_id and offsets[0][1] <= open_at
        last_start = offsets[-1][0]
        if convention == "r2a":
            has_eos = n > 1
        else:
            has_eos = eos_id is not None and ids[-1] == eos_id and n > 1 and last_start >= close_end
        bos_stop = offsets[0][1] if has_bos else 0
        eos_start = last_start if has_eos else len(text)
        char_edges = [0, bos_stop, open_at, open_end, close_at, close_end, eos_start, len(text)]
        if any(a > b for a, b in itertools.pairwise(char_edges)):
            raise TraceFormatError(
                f"segment boundaries out of order at chars {char_edges}; the BOS/EOS tokens "
                "overlap the delimiters"
            )

        # Token labels: delimiter overlap first (rule 1), else the first non-space char (rule 2).
        labels = np.empty(n, dtype=np.int64)
        for i, (a, b) in enumerate(offsets):
            if a < open_end and b > open_at:
                labels[i] = 2
            elif a < close_end and b > close_at:
                labels[i] = 4
            else:
                anchor = _anchor(text, a, b)
                labels[i] = _segment_of_char(char_edges, anchor)
        if has_bos:
            labels[0] = 0
        if has_eos:
            labels[-1] = 6
        if np.any(np.diff(labels) < 0):
            bad = int(np.argmax(np.diff(labels) < 0))
            raise TraceFormatError(
                f"token {bad + 1} ({text[offsets[bad + 1][0] : offsets[bad + 1][1]]!r}) falls "
                f"before the segment of token {bad}; the tokenization crosses a delimiter. "
                "Build the trace with Trace.from_parts"
            )
        if not np.any(labels == 2) or not np.any(labels == 4):
            raise TraceFormatError(
                "no token covers the think delimiters; the tokenizer drops them. Check that "
                "'<think>' and '</think>' survive tokenization"
            )
        token_edges = np.searchsorted(labels, np.arange(len(SEGMENT_NAMES) + 1), side="left")
        segments = {
            name: Segment(
                name,
                int(token_edges[k]),
                int(token_edges[k + 1]),
                char_edges[k],
                char_edges[k + 1],
            )
            for k, name in enumerate(SEGMENT_NAMES)
        }
        if convention == "r2a":
            close_tok = segments["think_close"].stop
            segments["answer"] = Segment("answer", close_tok, n - 1, close_end, last_start)
            segments["eos"] = Segment("eos", n - 1, n, last_start, len(text))
        sentences = _sentence_segments(text, offsets, segments["reasoning"])
        return cls(
            ids=tuple(ids),
            text=text,
            offsets=tuple(offsets),
            segments=MappingProxyType(segments),
            sentences=tuple(sentences),
            convention=convention,
            metadata=MappingProxyType(dict(metadata or {})),
            tokenizer=tokenizer_fingerprint(tokenizer),
        )

    # ----------------------------------------------------------------- access
    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, name: str) -> Segment:
        if name in self.segments:
            return self.segments[name]
        if (
            name.startswith("sentence_")
            and name[9:].isdigit()
            and int(name[9:]) < len(self.sentences)
        ):
            return self.sentences[int(name[9:])]
        raise KeyError(
            f"no segment {name!r}; segments are {list(self.segments)} and sentence_0.."
            f"sentence_{len(self.sentences) - 1}"
        )

    def __iter__(self) -> Iterator[Segment]:
        return iter(self.segments.values())

    def __repr__(self) -> str:
        spans = ", ".join(f"{s.name}[{s.start}:{s.stop}]" for s in self.segments.values())
        return f"Trace({len(self)} tokens, {len(self.sentences)} sentences: {spans})"

    @property
    def tokens(self) -> Int[Tensor, "1 pos"]:
        """The ids as a ``[1, pos]`` long tensor."""
        return torch.tensor([self.ids], dtype=torch.long)

    def text_of(self, segment: Segment | str) -> str:
        """The characters of a segment (a :class:`Segment` or a name such as ``"answer"``)."""
        seg = self[segment] if isinstance(segment, str) else segment
        return self.text[seg.char_slice]

    def ids_of(self, segment: Segment | str) -> tuple[int, ...]:
        """The token ids of a segment."""
        seg = self[segment] if isinstance(segment, str) else segment
        return self.ids[seg.slice]

    @property
    def sentence_texts(self) -> list[str]:
        """The reasoning sentences' text, stripped of surrounding whitespace."""
        return [self.text_of(s).strip() for s in self.sentences]

    def partition(self, by: Partition = "segments") -> tuple[list[str], Int[np.ndarray, " pos"]]:
        """Names of the parts and the part index of every token.

        ``by="segments"``: the seven segments. ``by="sentences"``: the same with ``reasoning``
        replaced by its sentences ``sentence_0 ...``. Parts are in order and cover every token.
        """
        check_option(by, Partition, "by")
        labels = np.zeros(len(self), dtype=np.int64)
        if by == "segments":
            parts = list(self.segments.values())
        else:
            parts = [
                *[self.segments[n] for n in SEGMENT_NAMES[:3]],
                *self.sentences,
                *[self.segments[n] for n in SEGMENT_NAMES[4:]],
            ]
        for index, seg in enumerate(parts):
            labels[seg.slice] = index
        return [p.name for p in parts], labels

    # ----------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data; :meth:`from_dict` restores the trace without a tokenizer."""

        def seg(s: Segment) -> list[Any]:
            return [s.name, s.start, s.stop, s.char_start, s.char_stop]

        return {
            "ids": list(self.ids),
            "text": self.text,
            "offsets": [list(o) for o in self.offsets],
            "segments": [seg(s) for s in self.segments.values()],
            "sentences": [seg(s) for s in self.sentences],
            "convention": self.convention,
            "metadata": dict(self.metadata),
            "tokenizer": None
            if self.tokenizer is None
            else {
                "name": self.tokenizer.name,
                "vocab_size": self.tokenizer.vocab_size,
                "digest": self.tokenizer.digest,
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Trace:
        """Inverse of :meth:`to_dict`."""
        segs = {s[0]: Segment(*s) for s in data["segments"]}
        if tuple(segs) != SEGMENT_NAMES:
            raise TraceFormatError(f"segments must be {SEGMENT_NAMES}, got {tuple(segs)}")
        return cls(
            ids=tuple(int(i) for i in data["ids"]),
            text=data["text"],
            offsets=tuple((int(a), int(b)) for a, b in data["offsets"]),
            segments=MappingProxyType(segs),
            sentences=tuple(Segment(*s) for s in data["sentences"]),
            convention=data.get("convention", "exact"),
            metadata=MappingProxyType(dict(data.get("metadata", {}))),
            tokenizer=None
            if data.get("tokenizer") is None
            else TokenizerFingerprint(
                str(data["tokenizer"]["name"]),
                int(data["tokenizer"]["vocab_size"]),
                str(data["tokenizer"]["digest"]),
            ),
        )


def _segment_of_char(char_edges: list[int], pos: int) -> int:
    """Index of the (non-empty) char segment containing ``pos``; the last one at the end."""
    k = bisect.bisect_right(char_edges, pos) - 1
    k = min(max(k, 0), len(char_edges) - 2)
    # An empty segment can share its start with the next one: move to the non-empty one.
    while k < len(char_edges) - 2 and char_edges[k] == char_edges[k + 1]:
        k += 1
    return k


def _sentence_segments(
    text: str, offsets: Sequence[tuple[int, int]], reasoning: Segment
) -> list[Segment]:
    base = reasoning.char_start
    spans = [(a + base, b + base) for a, b in split_sentences(text[reasoning.char_slice])]
    if not spans:
        return []
    starts = [a for a, _ in spans]
    token_sentence = [
        max(0, bisect.bisect_right(starts, _anchor(text, *offsets[i])) - 1)
        for i in reasoning.positions
    ]
    edges = np.searchsorted(np.asarray(token_sentence, dtype=np.int64), np.arange(len(spans) + 1))
    return [
        Segment(
            f"sentence_{k}",
            reasoning.start + int(edges[k]),
            reasoning.start + int(edges[k + 1]),
            a,
            b,
        )
        for k, (a, b) in enumerate(spans)
    ]


def pad_traces(
    traces: Sequence[Trace], *, pad_id: int = 0, width: int | None = None
) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
    """Right-pad traces to one batch: ``(tokens, attention_mask)``, row i = ``traces[i]``.

    Right padding never changes a real token's result in a causal model: the padding lies in
    every real row's future. ``width`` defaults to the longest trace.
    """
    width = width or max(map(len, traces))
    tokens = torch.full((len(traces), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(traces), width), dtype=torch.long)
    for row, trace in enumerate(traces):
        tokens[row, : len(trace)] = torch.tensor(trace.ids)
        mask[row, : len(trace)] = 1
    return tokens, mask
