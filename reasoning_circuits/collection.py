"""Collect reasoning traces: batched, seeded, resumable generation into a JSONL file.

:func:`collect_traces` prompts a model with each problem in one prompt mode (see
:mod:`reasoning_circuits.prompts`: ``"reasoning"``, ``"empty"``, ``"finished"``), samples
``n_samples`` continuations per problem and returns one :class:`TraceRecord` per
``(problem id, sample index)``. A record keeps the exact prompt, the prompt's token ids and the
generated token ids, so :meth:`TraceRecord.to_trace` builds a
:class:`~reasoning_circuits.trace.Trace` from the ids the model produced, never from a
re-tokenisation of decoded text (decode→encode need not give the same ids).

Generation
----------
Problems are generated in batches with the model's KV cache. Prompts of different lengths are
left-padded; the attention mask hides the padding and the position ids count real tokens only
(so a padded row sees the same positions as the row alone: HF GPT-2 needs them passed
explicitly). A row stops at an end-of-sequence token (the tokenizer's and the model's
``generation_config`` EOS ids) and leaves the batch; a row that reaches ``max_new_tokens``
(or the model's context) is kept with ``finished=False``.

Why one seed per sample
-----------------------
``temperature=0`` is greedy decoding. Otherwise every ``(problem id, sample index)`` gets its
own random stream, seeded by a SHA-256 hash of ``(seed, id, sample)`` (never Python's
``hash()``, which changes between processes). Each step draws one uniform number from the
row's stream and picks the token by inverse CDF over the tempered, top-p-filtered
distribution. A sample therefore does not depend on which other rows share its batch, on the
batch size, on the order of the problems, or on whether the run was interrupted and resumed.
The one caveat: a batch changes the floating-point rounding of the logits slightly, so at a
near-tie (a uniform draw within ~1e-6 of a CDF boundary, or two equal top logits in greedy
mode) a sample could differ; on CPU in float32 this has not been seen in the tests. Another
backend (vLLM) has its own random streams: same parameters, other samples.

Files and resuming
------------------
With ``out=path`` each record is appended to a JSONL file as soon as its row finishes: one
line, one ``write`` call, then flush and ``fsync``. The first line is a header::

    {"kind": "TraceRecords", "format_version": 1, "model": ..., "mode": ..., "seed": ...}

Guarantees:

* A rerun with the same ``out`` skips every ``(id, sample)`` already in the file and never
  writes a record twice; asking for more samples or more problems extends the file.
* A run killed at any moment (even ``SIGKILL``) leaves a readable file: every line is a
  complete record except possibly the last, which the next run removes before appending; at
  most the record being written is lost.
* A file made with other parameters (model, tokenizer, mode, sampling, seed, ...) or holding
  another prompt for the same problem id is refused with a message that names the difference,
  so one file never mixes two experiments.
* Two processes cannot append to one file at once (an exclusive lock; on POSIX systems).
* NaN and infinity are never written (JSON has no such numbers).

Problems
--------
``problems`` are objects with ``.id`` and ``.question`` (e.g. a dataset problem), objects
with ``.question`` only (their id is a hash of the question), mappings with ``"id"`` and
``"question"``, ``(id, question)`` pairs, or plain question strings (id = hash). Ids are
stored as strings and must be unique.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, overload

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from reasoning_circuits._options import check_option
from reasoning_circuits.errors import ContextLengthError, FileFormatError, TokenizerMismatchError
from reasoning_circuits.prompts import PromptMode, Template, build_prompt, prompt_ids
from reasoning_circuits.prompts import resolve_template as _resolve_template
from reasoning_circuits.trace import TokenizerFingerprint, Trace, tokenizer_fingerprint

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "FORMAT_VERSION",
    "RecordSet",
    "RecordWriter",
    "ResumeMismatchError",
    "StopReason",
    "TraceRecord",
    "as_problems",
    "collect_traces",
    "read_records",
    "sample_seed",
    "sample_tokens",
]

FORMAT_VERSION = 1
"""Version of the JSONL layout; a file with a larger number was written by a newer release."""
KIND = "TraceRecords"

StopReason = Literal["eos", "length", "context"]
"""Why a row stopped: an EOS token (``finished``), ``max_new_tokens``, or the model's context."""
Backend = Literal["hf", "vllm"]
Unfinished = Literal["raise", "skip"]

# Parameters that must agree between a file's header and a run that appends to it.
_RUN_KEYS = (
    "model",
    "tokenizer",
    "mode",
    "template",
    "instruction",
    "temperature",
    "top_p",
    "seed",
    "max_new_tokens",
    "stop_token_ids",
    "backend",
)


class ResumeMismatchError(FileFormatError):
    """An output file was collected with other parameters than the run that would extend it."""


# --------------------------------------------------------------------------- seeds
def sample_seed(seed: int, problem_id: str, sample: int) -> int:
    """The seed of one sample's random stream: 63 bits of SHA-256 of ``(seed, id, sample)``.

    Stable across processes, platforms and Python versions (unlike ``hash()``).
    """
    key = f"reasoning_circuits.collection\0{int(seed)}\0{problem_id}\0{int(sample)}"
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") >> 1


def _generator(seed: int) -> torch.Generator:
    generator = torch.Generator(device="cpu")
    generator.manual_seed(seed)
    return generator


def sample_tokens(
    logits: Float[Tensor, "batch vocab"],
    uniforms: Float[Tensor, " batch"] | None,
    *,
    temperature: float,
    top_p: float = 1.0,
) -> Int[Tensor, " batch"]:
    """One token per row: greedy at ``temperature == 0``, else inverse-CDF sampling.

    Row ``i`` takes the first token whose cumulative probability exceeds ``uniforms[i] *
    total`` in the distribution ``softmax(logits / temperature)`` restricted to the nucleus
    (the most probable tokens, in descending order, until their mass reaches ``top_p``; at
    least one). The draw is made in float64 and uses vocabulary order, so ties in the sort do
    not matter. Greedy takes the first maximal logit; ``uniforms`` may then be ``None``.
    """
    if temperature == 0:
        return logits.argmax(-1)
    if uniforms is None:
        raise ValueError("sampling (temperature > 0) needs one uniform number per row")
    device = logits.device if logits.device.type != "mps" else torch.device("cpu")
    probs = torch.softmax(logits.to(device, torch.float64) / temperature, dim=-1)
    if top_p < 1.0:
        ordered, order = probs.sort(dim=-1, descending=True, stable=True)
        mass_before = ordered.cumsum(-1) - ordered
        drop = torch.zeros_like(probs, dtype=torch.bool)
        drop.scatter_(-1, order, mass_before >= top_p)
        probs = probs.masked_fill(drop, 0.0)
    cdf = probs.cumsum(-1)
    target = uniforms.to(device, torch.float64)[:, None] * cdf[:, -1:]
    picked = torch.searchsorted(cdf, target, right=True)[:, 0]
    vocab = torch.arange(probs.shape[-1], device=device)
    last_possible = torch.where(probs > 0, vocab, -1).max(-1).values
    return torch.minimum(picked, last_possible).to(logits.device)


# --------------------------------------------------------------------------- problems
def _hash_id(question: str) -> str:
    return "q" + hashlib.sha256(question.encode()).hexdigest()[:16]


def as_problems(problems: Any) -> list[tuple[str, str]]:
    """``[(id, question), ...]`` from the accepted problem forms (see the module docstring)."""
    if isinstance(problems, str) or hasattr(problems, "question"):
        problems = [problems]
    out: list[tuple[str, str]] = []
    for index, item in enumerate(problems):
        if isinstance(item, str):
            pid, question = _hash_id(item), item
        elif hasattr(item, "question"):
            question = item.question
            raw = getattr(item, "id", None)
            pid = _hash_id(question) if raw is None else raw
        elif isinstance(item, Mapping):
            if "question" not in item:
                raise TypeError(f"problems[{index}] is a mapping without a 'question' key")
            question = item["question"]
            pid = item.get("id", _hash_id(str(question)))
        elif isinstance(item, tuple | list) and len(item) == 2:
            pid, question = item
        else:
            raise TypeError(
                f"problems[{index}] is a {type(item).__name__}; pass objects with .id and "
                ".question, (id, question) pairs, {'id', 'question'} mappings or question strings"
            )
        if not isinstance(question, str):
            raise TypeError(f"problems[{index}]: the question must be a str, got {question!r}")
        if not isinstance(pid, str | int) or isinstance(pid, bool):
            raise TypeError(f"problems[{index}]: the id must be a str or int, got {pid!r}")
        out.append((str(pid), question))
    if not out:
        raise ValueError("problems is empty; pass at least one problem")
    seen: dict[str, int] = {}
    for index, (pid, _) in enumerate(out):
        if pid in seen:
            raise ValueError(
                f"problem id {pid!r} appears at positions {seen[pid]} and {index}; ids must be "
                "unique (they key the records and the resume)"
            )
        seen[pid] = index
    return out


# --------------------------------------------------------------------------- records
def _fingerprint_dict(fp: TokenizerFingerprint) -> dict[str, Any]:
    return {"name": fp.name, "vocab_size": fp.vocab_size, "digest": fp.digest}


@dataclass(frozen=True)
class TraceRecord:
    """One generated sample: the prompt, the generated ids and how they were made.

    ``prompt_ids + generated_ids`` is the whole sequence the model saw and wrote (BOS
    included); ``text`` is ``tokenizer.decode(generated_ids)`` with special tokens kept, so it
    ends with the EOS string when ``finished``. ``stop_reason`` is ``"eos"`` exactly when
    ``finished``.
    """

    id: str
    sample: int
    question: str
    prompt: str
    prompt_ids: tuple[int, ...]
    generated_ids: tuple[int, ...]
    text: str
    finished: bool
    stop_reason: StopReason
    model: str
    tokenizer: TokenizerFingerprint
    mode: PromptMode
    template: Literal["raw", "chat"]
    instruction: str
    temperature: float
    top_p: float
    seed: int
    max_new_tokens: int
    stop_token_ids: tuple[int, ...]
    backend: Backend = "hf"

    def __post_init__(self) -> None:
        if self.finished != (self.stop_reason == "eos"):
            raise ValueError(
                f"record {self.key}: finished={self.finished} contradicts "
                f"stop_reason={self.stop_reason!r} (finished means stopped at EOS)"
            )
        if not self.prompt_ids:
            raise ValueError(f"record {self.key}: prompt_ids is empty")

    @property
    def key(self) -> tuple[str, int]:
        """``(id, sample)``: what a record is unique by."""
        return (self.id, self.sample)

    @property
    def n_prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def n_generated_tokens(self) -> int:
        return len(self.generated_ids)

    @property
    def ids(self) -> tuple[int, ...]:
        """``prompt_ids + generated_ids``."""
        return self.prompt_ids + self.generated_ids

    @property
    def sample_seed(self) -> int:
        """The seed of this sample's random stream (:func:`sample_seed`)."""
        return sample_seed(self.seed, self.id, self.sample)

    def run_parameters(self) -> dict[str, Any]:
        """The parameters shared by every record of one run (the file header's content)."""
        return {
            "model": self.model,
            "tokenizer": _fingerprint_dict(self.tokenizer),
            "mode": self.mode,
            "template": self.template,
            "instruction": self.instruction,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "max_new_tokens": self.max_new_tokens,
            "stop_token_ids": list(self.stop_token_ids),
            "backend": self.backend,
        }

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (token counts included); :meth:`from_dict` inverts it."""
        return {
            "id": self.id,
            "sample": self.sample,
            "question": self.question,
            "prompt": self.prompt,
            "prompt_ids": list(self.prompt_ids),
            "generated_ids": list(self.generated_ids),
            "text": self.text,
            "finished": self.finished,
            "stop_reason": self.stop_reason,
            "n_prompt_tokens": self.n_prompt_tokens,
            "n_generated_tokens": self.n_generated_tokens,
            **self.run_parameters(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TraceRecord:
        """Inverse of :meth:`to_dict`; refuses missing fields and inconsistent token counts."""
        names = [f.name for f in dataclasses.fields(cls) if f.name != "backend"]
        missing = [n for n in names if n not in data]
        if missing:
            raise FileFormatError(f"a trace record lacks the fields {missing}")
        tok = data["tokenizer"]
        record = cls(
            id=str(data["id"]),
            sample=int(data["sample"]),
            question=str(data["question"]),
            prompt=str(data["prompt"]),
            prompt_ids=tuple(int(i) for i in data["prompt_ids"]),
            generated_ids=tuple(int(i) for i in data["generated_ids"]),
            text=str(data["text"]),
            finished=bool(data["finished"]),
            stop_reason=data["stop_reason"],
            model=str(data["model"]),
            tokenizer=TokenizerFingerprint(
                str(tok["name"]), int(tok["vocab_size"]), str(tok["digest"])
            ),
            mode=data["mode"],
            template=data["template"],
            instruction=str(data["instruction"]),
            temperature=float(data["temperature"]),
            top_p=float(data["top_p"]),
            seed=int(data["seed"]),
            max_new_tokens=int(data["max_new_tokens"]),
            stop_token_ids=tuple(int(i) for i in data["stop_token_ids"]),
            backend=data.get("backend", "hf"),
        )
        for name in ("n_prompt_tokens", "n_generated_tokens"):
            if name in data and int(data[name]) != getattr(record, name):
                raise FileFormatError(
                    f"record {record.key}: {name}={data[name]} but the ids hold "
                    f"{getattr(record, name)} tokens; the record was edited or corrupted"
                )
        return record

    @overload
    def to_trace(self, tokenizer: Any, *, unfinished: Literal["raise"] = ...) -> Trace: ...
    @overload
    def to_trace(self, tokenizer: Any, *, unfinished: Unfinished) -> Trace | None: ...
    def to_trace(self, tokenizer: Any, *, unfinished: Unfinished = "raise") -> Trace | None:
        """The :class:`Trace` of ``prompt_ids + generated_ids`` (no re-tokenisation).

        An unfinished record (stopped by a token limit) has no complete answer: it raises
        ``ValueError`` with ``unfinished="raise"`` and gives ``None`` with ``"skip"``. A
        finished record whose text is not ``prompt <think> reasoning </think> answer`` (e.g.
        the model never closed its reasoning) raises :class:`TraceFormatError`. The trace's
        metadata holds the id, sample, mode, exact prompt, seed and sampling parameters.
        """
        check_option(unfinished, Unfinished, "unfinished")
        if not self.finished:
            if unfinished == "skip":
                return None
            raise ValueError(
                f"record {self.key} is unfinished (stopped by {self.stop_reason} after "
                f"{self.n_generated_tokens} tokens), so it has no complete answer; pass "
                "unfinished='skip' to get None, or collect with a larger max_new_tokens"
            )
        theirs = tokenizer_fingerprint(tokenizer)
        if not theirs.matches(self.tokenizer):
            raise TokenizerMismatchError(
                f"record {self.key} was generated with tokenizer {self.tokenizer}, not "
                f"{theirs}; pass the tokenizer of the model that generated it"
            )
        metadata = {
            "id": self.id,
            "sample": self.sample,
            "mode": self.mode,
            "prompt": self.prompt,
            "template": self.template,
            "instruction": self.instruction,
            "model": self.model,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "n_prompt_tokens": self.n_prompt_tokens,
        }
        return Trace.from_ids(self.ids, tokenizer, metadata=metadata)


@dataclass(frozen=True)
class RecordSet(Sequence[TraceRecord]):
    """Records of one or more collection runs, in a fixed order; a read-only sequence."""

    records: tuple[TraceRecord, ...]
    skipped_partial: int = field(default=0, compare=False)

    @overload
    def __getitem__(self, index: int) -> TraceRecord: ...
    @overload
    def __getitem__(self, index: slice) -> RecordSet: ...
    def __getitem__(self, index: int | slice) -> TraceRecord | RecordSet:
        if isinstance(index, slice):
            return RecordSet(self.records[index])
        return self.records[index]

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[TraceRecord]:
        return iter(self.records)

    def __repr__(self) -> str:
        done = sum(r.finished for r in self.records)
        return f"RecordSet({len(self)} records, {done} finished)"

    def traces(self, tokenizer: Any, *, unfinished: Unfinished = "skip") -> list[Trace]:
        """The :class:`Trace` of every record (unfinished ones left out by default)."""
        out = [r.to_trace(tokenizer, unfinished=unfinished) for r in self.records]
        return [t for t in out if t is not None]

    def to_frame(self) -> Any:
        """One row per record: id, sample, finished, stop_reason, token counts, mode, text…"""
        import pandas as pd

        rows = []
        for r in self.records:
            row = r.to_dict()
            row.pop("prompt_ids")
            row.pop("generated_ids")
            row["tokenizer"] = r.tokenizer.name
            rows.append(row)
        return pd.DataFrame(rows)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write a new JSONL file (header + one line per record); all records must share one
        run's parameters. Refuses to overwrite: use :class:`RecordWriter` to append."""
        if not self.records:
            raise ValueError("nothing to save: the record set is empty")
        target = Path(path)
        if target.exists():
            raise FileExistsError(f"{target} exists; choose another path or delete it first")
        with RecordWriter(target, self.records[0].run_parameters()) as writer:
            for record in self.records:
                writer.write(record)
        return target

    @classmethod
    def load(cls, *paths: str | os.PathLike[str]) -> RecordSet:
        """Read one or more record files (e.g. the shards of a data-parallel run).

        A final partial line (a run killed mid-write, or still running) is left out with a
        warning. Records with the same ``(id, sample)`` in two files raise
        :class:`FileFormatError` if they differ and are kept once if equal.
        """
        if not paths:
            raise ValueError("pass at least one path")
        merged: dict[tuple[str, int], TraceRecord] = {}
        partial = 0
        for path in paths:
            _, records, tail = _read_file(Path(path))
            if tail:
                partial += 1
                warnings.warn(
                    f"{path} ends with a partial line ({tail} bytes): a collection was killed "
                    "mid-write or is still running; that record is left out",
                    stacklevel=2,
                )
            for record in records:
                old = merged.get(record.key)
                if old is not None and old != record:
                    raise FileFormatError(
                        f"record {record.key} occurs twice with different content (in {path}); "
                        "these files come from different runs"
                    )
                merged[record.key] = record
        return cls(tuple(merged.values()), skipped_partial=partial)


def read_records(path: str | os.PathLike[str]) -> RecordSet:
    """Read a record file written by :func:`collect_traces` (see :meth:`RecordSet.load`)."""
    return RecordSet.load(path)


# --------------------------------------------------------------------------- file I/O
def _dumps(data: Mapping[str, Any]) -> bytes:
    try:
        text = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except ValueError as err:
        raise ValueError(f"refusing to write NaN or infinity to a record file: {err}") from err
    return (text + "\n").encode("utf-8")


def _parse_lines(
    data: bytes, path: Path
) -> tuple[dict[str, Any] | None, list[TraceRecord], int, int]:
    """``(header, records, complete_bytes, partial_tail_bytes)`` of a file's content."""
    end = data.rfind(b"\n") + 1
    complete, tail = data[:end], len(data) - end
    header: dict[str, Any] | None = None
    records: list[TraceRecord] = []
    seen: set[tuple[str, int]] = set()
    for number, line in enumerate(complete.split(b"\n")[:-1], start=1):
        try:
            item = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise FileFormatError(
                f"{path} line {number} is not valid JSON ({err}); only the last line of a "
                "record file can be incomplete, so this file was edited or damaged"
            ) from err
        if number == 1:
            if not isinstance(item, dict) or item.get("kind") != KIND:
                raise FileFormatError(
                    f"{path} is not a trace record file: its first line is not a "
                    f"{{'kind': {KIND!r}, ...}} header. Write records to a new file"
                )
            version = int(item.get("format_version", 0))
            if version > FORMAT_VERSION:
                raise FileFormatError(
                    f"{path} uses format version {version}, newer than this release reads "
                    f"({FORMAT_VERSION}); upgrade reasoning_circuits"
                )
            header = item
            continue
        if not isinstance(item, dict):
            raise FileFormatError(f"{path} line {number} is not a JSON object")
        try:
            record = TraceRecord.from_dict(item)
        except FileFormatError as err:
            raise FileFormatError(f"{path} line {number}: {err}") from err
        except (KeyError, TypeError, ValueError) as err:
            raise FileFormatError(f"{path} line {number} is not a trace record: {err}") from err
        if record.key in seen:
            raise FileFormatError(
                f"{path} holds record {record.key} twice (line {number}); a collection never "
                "writes a record twice, so lines were copied in by hand"
            )
        seen.add(record.key)
        records.append(record)
    return header, records, end, tail


def _read_file(path: Path) -> tuple[dict[str, Any] | None, list[TraceRecord], int]:
    data = path.read_bytes()
    header, records, _, tail = _parse_lines(data, path)
    if header is None and records:
        raise FileFormatError(f"{path} has records but no header")
    return header, records, tail


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _differences(found: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    out = []
    for key in _RUN_KEYS:
        a, b = found.get(key), wanted.get(key)
        if key == "tokenizer" and isinstance(a, Mapping) and isinstance(b, Mapping):
            same = (a.get("vocab_size"), a.get("digest")) == (b.get("vocab_size"), b.get("digest"))
        elif isinstance(a, list) or isinstance(b, list):
            same = sorted(a or []) == sorted(b or [])
        else:
            same = a == b
        if not same:
            out.append(f"{key}: file {a!r}, this run {b!r}")
    return out


class RecordWriter:
    """Append-only JSONL writer of :class:`TraceRecord` lines, resuming an existing file.

    Opening takes an exclusive lock, checks the header against ``run`` (the parameters of
    this run; see :meth:`TraceRecord.run_parameters`), cuts a final partial line left by a
    killed run, and loads the records already there into :attr:`done`. Each :meth:`write` is
    one ``os.write`` of one complete line, then ``fsync`` (``fsync=False`` skips it: faster,
    but a power cut may then lose recent records; a killed process loses nothing either way).
    """

    def __init__(
        self, path: str | os.PathLike[str], run: Mapping[str, Any], *, fsync: bool = True
    ) -> None:
        self.path = Path(path)
        self.run = dict(run)
        self.fsync = fsync
        self.done: dict[tuple[str, int], TraceRecord] = {}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            self._lock()
            self._resume(created)
        except BaseException:
            os.close(self._fd)
            raise

    def _lock(self) -> None:
        if fcntl is None:  # pragma: no cover - not POSIX
            return
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            raise BlockingIOError(
                f"{self.path} is being written by another collection (it holds the lock); "
                "wait for it, or write to another file"
            ) from err

    def _resume(self, created: bool) -> None:
        chunks: list[bytes] = []
        offset = 0
        while chunk := os.pread(self._fd, 1 << 20, offset):
            chunks.append(chunk)
            offset += len(chunk)
        data = b"".join(chunks)
        header, records, end, tail = _parse_lines(data, self.path)
        if tail:
            os.ftruncate(self._fd, end)  # a record (or header) cut by a killed run
            self.truncated = tail
        else:
            self.truncated = 0
        if header is None:
            if records:
                raise FileFormatError(f"{self.path} has records but no header")
            self._append(_dumps({"kind": KIND, "format_version": FORMAT_VERSION, **self.run}))
            if created:
                self._sync_directory()
            return
        differences = _differences(header, self.run)
        if differences:
            raise ResumeMismatchError(
                f"{self.path} was collected with other parameters ({'; '.join(differences)}). "
                "Pass the same parameters to resume it, or write to another file"
            )
        self.done = {r.key: r for r in records}

    def _sync_directory(self) -> None:
        with contextlib.suppress(OSError):
            fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _append(self, line: bytes) -> None:
        _write_all(self._fd, line)
        if self.fsync:
            os.fsync(self._fd)

    def write(self, record: TraceRecord) -> None:
        """Append ``record`` (one line); refuses a record already in the file."""
        if record.key in self.done:
            raise ValueError(f"record {record.key} is already in {self.path}")
        differences = _differences(record.run_parameters(), self.run)
        if differences:
            raise ResumeMismatchError(
                f"record {record.key} belongs to another run ({'; '.join(differences)})"
            )
        self._append(_dumps(record.to_dict()))
        self.done[record.key] = record

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing releases the lock
            self._fd = -1

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


# --------------------------------------------------------------------------- the run
@dataclass(frozen=True)
class _Job:
    id: str
    sample: int
    question: str
    prompt: str
    prompt_ids: tuple[int, ...]


@dataclass
class _Plan:
    """Everything a backend needs: jobs to run, parameters, where finished records go."""

    jobs: list[_Job]
    order: list[tuple[str, int]]
    done: dict[tuple[str, int], TraceRecord]
    run: dict[str, Any]
    fingerprint: TokenizerFingerprint
    writer: RecordWriter | None


def _check_sampling(
    n_samples: int, temperature: float, top_p: float, max_new_tokens: int, batch_size: int
) -> None:
    if not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples must be an int >= 1, got {n_samples!r}")
    if not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be finite and >= 0 (0 = greedy), got {temperature}")
    if not math.isfinite(top_p) or not 0 < top_p <= 1:
        raise ValueError(f"top_p must lie in (0, 1] (1 = no nucleus filter), got {top_p}")
    if temperature == 0 and n_samples > 1:
        raise ValueError(
            f"temperature=0 is greedy decoding: all {n_samples} samples would be identical. "
            "Use n_samples=1, or temperature > 0 (R2A sampled at 0.6)"
        )
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")


def _plan(
    problems: Any,
    tokenizer: Any,
    *,
    model_name: str,
    mode: PromptMode,
    n_samples: int,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    seed: int,
    template: Template,
    math_instruction: bool,
    instruction: str | None,
    stop_token_ids: Sequence[int],
    backend: Backend,
    out: str | os.PathLike[str] | None,
    fsync: bool,
) -> _Plan:
    """Check the options, build the prompts, open (and resume) the output file."""
    check_option(mode, PromptMode, "mode")
    check_option(backend, Backend, "backend")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {seed!r}")
    items = as_problems(problems)
    kind = _resolve_template(template, tokenizer)
    fingerprint = tokenizer_fingerprint(tokenizer)
    from reasoning_circuits.prompts import MATH_INSTRUCTION

    run = {
        "model": model_name,
        "tokenizer": _fingerprint_dict(fingerprint),
        "mode": mode,
        "template": kind,
        "instruction": MATH_INSTRUCTION if math_instruction else instruction or "",
        "temperature": float(temperature),
        "top_p": float(top_p),
        "seed": seed,
        "max_new_tokens": max_new_tokens,
        "stop_token_ids": sorted(int(i) for i in stop_token_ids),
        "backend": backend,
    }
    writer = RecordWriter(out, run, fsync=fsync) if out is not None else None
    try:
        done = dict(writer.done) if writer is not None else {}
        prompts_in_file = {r.id: r.prompt for r in done.values()}
        jobs: list[_Job] = []
        order: list[tuple[str, int]] = []
        for pid, question in items:
            prompt = build_prompt(
                question,
                mode,
                tokenizer=tokenizer,
                template=kind,
                math_instruction=math_instruction,
                instruction=instruction,
            )
            if pid in prompts_in_file and prompts_in_file[pid] != prompt:
                raise ResumeMismatchError(
                    f"problem {pid!r} has another prompt in {out} than in this run "
                    f"(file: {prompts_in_file[pid][:60]!r}…, now: {prompt[:60]!r}…): the "
                    "question behind this id changed. Use new ids or another file"
                )
            ids = tuple(prompt_ids(prompt, tokenizer))
            for sample in range(n_samples):
                order.append((pid, sample))
                if (pid, sample) not in done:
                    jobs.append(_Job(pid, sample, question, prompt, ids))
    except BaseException:
        if writer is not None:
            writer.close()
        raise
    return _Plan(jobs, order, done, run, fingerprint, writer)


def _record(
    plan: _Plan, job: _Job, generated: Sequence[int], reason: StopReason, tokenizer: Any
) -> TraceRecord:
    run = plan.run
    return TraceRecord(
        id=job.id,
        sample=job.sample,
        question=job.question,
        prompt=job.prompt,
        prompt_ids=job.prompt_ids,
        generated_ids=tuple(int(t) for t in generated),
        text=tokenizer.decode(list(generated), skip_special_tokens=False),
        finished=reason == "eos",
        stop_reason=reason,
        model=run["model"],
        tokenizer=plan.fingerprint,
        mode=run["mode"],
        template=run["template"],
        instruction=run["instruction"],
        temperature=run["temperature"],
        top_p=run["top_p"],
        seed=run["seed"],
        max_new_tokens=run["max_new_tokens"],
        stop_token_ids=tuple(run["stop_token_ids"]),
        backend=run["backend"],
    )


class _Progress:
    """tqdm over records with a generated-tokens-per-second postfix."""

    def __init__(self, total: int, enabled: bool | None, initial_done: int) -> None:
        self.bar = tqdm(
            total=total, disable=enabled is False, unit="trace", desc="collect", leave=False
        )
        self.tokens = 0
        self.start = time.perf_counter()
        self.last = 0.0
        self.bar.set_postfix_str(f"{initial_done} already in file")

    def tokens_generated(self, n: int) -> None:
        self.tokens += n
        now = time.perf_counter()
        if now - self.last > 0.5:
            self.last = now
            self.bar.set_postfix_str(f"{self.tokens / max(now - self.start, 1e-9):.1f} tok/s")

    def record_done(self) -> None:
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def _finish(plan: _Plan, new: Iterable[TraceRecord]) -> RecordSet:
    by_key = dict(plan.done)
    by_key.update((r.key, r) for r in new)
    return RecordSet(tuple(by_key[key] for key in plan.order))


# --------------------------------------------------------------------------- HF backend
def _hf_parts(model: Any, tokenizer: Any) -> tuple[Any, Any]:
    hf = getattr(model, "original_model", model)  # a TransformerBridge wraps the HF model
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise TypeError("this model has no .tokenizer; pass tokenizer=...")
    if not callable(hf) or not hasattr(hf, "config"):
        raise TypeError(
            f"model must be a TransformerBridge or a Hugging Face causal LM, got "
            f"{type(model).__name__}"
        )
    return hf, tokenizer


def _model_name(model: Any, hf: Any) -> str:
    from reasoning_circuits.models import BUILTIN_MODELS

    cfg = getattr(model, "cfg", None)
    name = str(
        getattr(hf.config, "name_or_path", "")
        or getattr(cfg, "model_name", "")
        or type(hf).__name__
    )
    for builtin, directory in BUILTIN_MODELS.items():
        with contextlib.suppress(OSError):
            if Path(name).resolve() == directory.resolve():
                return builtin
    return name


def _stop_ids(hf: Any, tokenizer: Any) -> list[int]:
    ids: set[int] = set()
    for source in (
        getattr(tokenizer, "eos_token_id", None),
        getattr(getattr(hf, "generation_config", None), "eos_token_id", None),
    ):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, list | tuple):
            ids.update(int(i) for i in source)
    if not ids:
        raise ValueError(
            "neither the tokenizer nor the model's generation_config has an EOS token; "
            "generation could never finish"
        )
    return sorted(ids)


def _context_length(hf: Any) -> int | None:
    for name in ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length"):
        value = getattr(hf.config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _logits_kwarg(hf: Any) -> dict[str, int]:
    try:
        params = inspect.signature(hf.forward).parameters
    except (TypeError, ValueError):
        return {}
    for name in ("logits_to_keep", "num_logits_to_keep"):
        if name in params:
            return {name: 1}
    return {}


def _select_rows(cache: Any, keep: Tensor) -> Any:
    """Keep only the rows ``keep`` of a KV cache (``DynamicCache`` or legacy tuples)."""
    if hasattr(cache, "batch_select_indices"):
        cache.batch_select_indices(keep)
        return cache
    if hasattr(cache, "reorder_cache"):
        cache.reorder_cache(keep)
        return cache
    return tuple(tuple(t[keep] for t in layer) for layer in cache)


@torch.no_grad()
def _generate_batch(
    hf: Any,
    rows: Sequence[Sequence[int]],
    generators: Sequence[torch.Generator | None],
    limits: Sequence[int],
    *,
    temperature: float,
    top_p: float,
    stop_ids: set[int],
    pad_id: int,
    on_step: Callable[[int], None],
    on_row: Callable[[int, list[int], bool], None],
) -> None:
    """Generate every row (left-padded, KV cache) until EOS or its limit of new tokens.

    ``on_row(row, generated, hit_eos)`` is called as soon as a row stops.
    """
    device = next(hf.parameters()).device
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    extra = _logits_kwarg(hf)
    out = hf(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **extra)
    cache, logits = out.past_key_values, out.logits[:, -1, :]
    next_position = positions[:, -1] + 1
    active = list(range(len(rows)))
    generated: list[list[int]] = [[] for _ in rows]
    while active:
        uniforms = None
        if temperature > 0:
            uniforms = torch.stack(
                [torch.rand((), generator=generators[i], dtype=torch.float64) for i in active]
            )
        tokens = sample_tokens(logits.float(), uniforms, temperature=temperature, top_p=top_p)
        on_step(len(active))
        keep: list[int] = []
        for j, (i, token) in enumerate(zip(active, tokens.tolist())):
            generated[i].append(int(token))
            if token in stop_ids or len(generated[i]) >= limits[i]:
                on_row(i, generated[i], token in stop_ids)
            else:
                keep.append(j)
        if not keep:
            break
        if len(keep) < len(active):
            index = torch.tensor(keep, device=device)
            cache = _select_rows(cache, index)
            mask, next_position, tokens = mask[index], next_position[index], tokens[index]
            active = [active[j] for j in keep]
        mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)
        out = hf(
            input_ids=tokens[:, None],
            attention_mask=mask,
            position_ids=next_position[:, None],
            past_key_values=cache,
            use_cache=True,
            **extra,
        )
        cache, logits = out.past_key_values, out.logits[:, -1, :]
        next_position = next_position + 1


def collect_traces(
    model: Any,
    problems: Any,
    *,
    tokenizer: Any = None,
    mode: PromptMode = "reasoning",
    n_samples: int = 1,
    temperature: float = 0.0,
    top_p: float = 1.0,
    max_new_tokens: int = 1024,
    seed: int = 0,
    batch_size: int = 8,
    out: str | os.PathLike[str] | None = None,
    template: Template = "auto",
    math_instruction: bool = False,
    instruction: str | None = None,
    model_name: str | None = None,
    fsync: bool = True,
    progress: bool | None = None,
) -> RecordSet:
    """Generate ``n_samples`` traces per problem in one prompt mode; append them to ``out``.

    Args:
        model: a ``TransformerBridge`` (``rc.load_model``) or a Hugging Face causal LM.
        problems: see the module docstring (objects with ``.id``/``.question``, pairs,
            strings, ...).
        tokenizer: default ``model.tokenizer``.
        mode: ``"reasoning"``, ``"empty"`` or ``"finished"`` (:mod:`reasoning_circuits.prompts`).
        n_samples: samples per problem (sample indices ``0..n_samples-1``).
        temperature: 0 = greedy; R2A sampled at 0.6.
        top_p: nucleus mass in (0, 1]; 1 = none. (R2A's model defaults gave 0.95.)
        max_new_tokens: generated tokens per sample (EOS included); R2A used 10000.
        seed: run seed; each sample's stream is seeded from ``(seed, id, sample)``.
        batch_size: rows generated together. Does not change the output.
        out: JSONL file to append to and resume from; ``None`` keeps records in memory only.
        template, math_instruction, instruction: prompt options (:func:`build_prompt`).
        model_name: name stored in the records (default: the model's name or directory).
        fsync: ``fsync`` after every record (see :class:`RecordWriter`).
        progress: tqdm bar with tokens/s (``False`` hides it).

    Returns:
        A :class:`RecordSet` with one record per ``(id, sample)`` requested, in problem
        order then sample order: those already in ``out`` and the new ones.

    Raises:
        ContextLengthError: a prompt does not fit the model's context.
        ResumeMismatchError: ``out`` was collected with other parameters.
    """
    hf, tokenizer = _hf_parts(model, tokenizer)
    _check_sampling(n_samples, temperature, top_p, max_new_tokens, batch_size)
    stop_ids = _stop_ids(hf, tokenizer)
    plan = _plan(
        problems,
        tokenizer,
        model_name=model_name or _model_name(model, hf),
        mode=mode,
        n_samples=n_samples,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        seed=seed,
        template=template,
        math_instruction=math_instruction,
        instruction=instruction,
        stop_token_ids=stop_ids,
        backend="hf",
        out=out,
        fsync=fsync,
    )
    context = _context_length(hf)
    new: list[TraceRecord] = []
    bar = _Progress(len(plan.jobs), progress, len(plan.done))
    pad = getattr(tokenizer, "pad_token_id", None)
    pad_id = int(pad if pad is not None else stop_ids[0])
    was_training = bool(getattr(hf, "training", False))
    try:
        limits = []
        for job in plan.jobs:
            room = max_new_tokens if context is None else context - len(job.prompt_ids)
            if room < 1:
                raise ContextLengthError(
                    f"problem {job.id!r}: the prompt has {len(job.prompt_ids)} tokens, the "
                    f"model's context is {context}; shorten the question"
                )
            limits.append(min(max_new_tokens, room))
        hf.eval()
        for start in range(0, len(plan.jobs), batch_size):
            jobs = plan.jobs[start : start + batch_size]
            job_limits = limits[start : start + batch_size]
            generators = [
                _generator(sample_seed(seed, j.id, j.sample)) if temperature > 0 else None
                for j in jobs
            ]

            def on_row(
                i: int, generated: list[int], hit_eos: bool, jobs: list[_Job] = jobs,
                job_limits: list[int] = job_limits,
            ) -> None:  # fmt: skip
                reason: StopReason = (
                    "eos" if hit_eos
                    else "length" if job_limits[i] == max_new_tokens
                    else "context"
                )  # fmt: skip
                record = _record(plan, jobs[i], generated, reason, tokenizer)
                if plan.writer is not None:
                    plan.writer.write(record)
                new.append(record)
                bar.record_done()

            _generate_batch(
                hf,
                [j.prompt_ids for j in jobs],
                generators,
                job_limits,
                temperature=temperature,
                top_p=top_p,
                stop_ids=set(stop_ids),
                pad_id=pad_id,
                on_step=bar.tokens_generated,
                on_row=on_row,
            )
    finally:
        bar.close()
        if was_training:
            hf.train()
        if plan.writer is not None:
            plan.writer.close()
    return _finish(plan, new)
