"""Read traces from files of generated responses: JSONL, JSON, ``datasets`` rows.

Reasoning-model outputs usually arrive as one record per generation, e.g. R2A's files::

    {"unique_id": "test/algebra/1255.json",
     "problem": "Evaluate $\\log_264$.",
     "response": "<｜begin▁of▁sentence｜>Evaluate ... <think>\\nOkay, ...</think>\\n\\n...
                  ...<｜end▁of▁sentence｜>"}

:func:`read_traces` turns such records into :class:`~reasoning_circuits.trace.Trace` objects,
keeps each record's id and other fields in ``trace.metadata``, and says which records are not
traces and why, instead of silently dropping them.

Where the text comes from
-------------------------
* ``text_field`` (default ``"response"``): the decoded text. It is tokenized with
  :meth:`Trace.from_text <reasoning_circuits.trace.Trace.from_text>`; a BOS token is
  prepended when the tokenizer has one and the text does not already start with it.
* ``ids_field``: when the records carry the token ids the model produced (prompt and
  generation), the trace is built from them with :meth:`Trace.from_ids
  <reasoning_circuits.trace.Trace.from_ids>` and the text is never re-tokenized. Decoded text
  need not re-tokenize to the generated ids, so prefer ids when you have them. A sequence of
  field names is concatenated in order, e.g. ``("prompt_token_ids", "output_token_ids")``.
* ``prompt_field``: some files store only the generated continuation, others the whole
  sequence. The rule: if the prompt's text occurs in the response **before the response's
  first** ``think_open`` the response already holds the prompt and is used alone (R2A's files,
  decoded chat templates); otherwise the response continues the prompt and the text is
  ``prompt + response`` with nothing in between (vLLM-style outputs, also when the prompt
  itself ends with ``<think>``). A prompt merely quoted inside the reasoning does not count.

Files written by :func:`~reasoning_circuits.collection.collect_traces`
--------------------------------------------------------------------------
A JSONL file whose first line is a ``TraceRecords`` header is read record by record through
:meth:`TraceRecord.to_trace <reasoning_circuits.collection.TraceRecord.to_trace>`: the trace
is the stored prompt and generated ids, the tokenizer must be the one that generated them
(:class:`~reasoning_circuits.errors.TokenizerMismatchError`), metadata is the record's id,
sample, mode, prompt and sampling parameters plus ``"row"``, and a record stopped by its
token limit is an ``"unfinished"`` problem. The text options (``text_field``,
``prompt_field``, ``ids_field``, delimiters, ...) do not apply and are refused if changed.

Metadata
--------
Every field except the text and the ids is kept in ``trace.metadata`` (or only the fields in
``metadata_fields``), as JSON-plain values (numpy scalars and arrays are converted), so
``trace.to_dict()`` stays JSON-ready. Two keys are added: ``"id"`` (the value of ``id_field``;
by default the first of ``"id"``, ``"unique_id"``, ``"problem_id"`` present) and ``"row"``
(the record's 0-based position in the source).

Records that are not traces
---------------------------
Each bad record gets a :class:`SkippedRow` with one of these ``problem`` kinds:

``"invalid_row"``
    not a JSON object, a required field missing or of the wrong type.
``"no_think_open"``
    no ``think_open`` in the text (often: the prompt is in another field; see
    ``prompt_field``).
``"unfinished"``
    no ``think_close`` after ``think_open``: the reasoning never ended (e.g. the generation
    hit its token limit). R2A drops these.
``"repeated_delimiters"``
    more than one ``think_open`` or ``think_close`` with ``strict=True``.
``"no_eos"``
    only with ``require_eos=True``: the sequence does not end with the EOS token, i.e. the
    answer may be cut off (R2A's "finished" test).
``"format"``
    any other :class:`~reasoning_circuits.errors.TraceFormatError`.

``on_error="raise"`` (default) stops at the first bad record with its row, line and id in the
message. ``"skip"`` returns the good traces and emits one :class:`SkippedRowsWarning` with the
count per problem. A callable, e.g. ``on_error=skipped.append``, receives every
:class:`SkippedRow` (record included) and nothing is warned. Filtering by validity decides
which items an analysis sees (R2A's accuracy is on valid traces only), so report the counts.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import typing
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
from tqdm.auto import tqdm

from reasoning_circuits.errors import TraceFormatError
from reasoning_circuits.trace import Convention, Trace

__all__ = ["Problem", "SkippedRow", "SkippedRowsWarning", "join_prompt", "read_traces"]

OnError = Literal["raise", "skip"]
Problem = Literal[
    "invalid_row", "no_think_open", "unfinished", "repeated_delimiters", "no_eos", "format"
]
DEFAULT_ID_FIELDS: tuple[str, ...] = ("id", "unique_id", "problem_id")


class SkippedRowsWarning(UserWarning):
    """Some records were skipped by ``read_traces(..., on_error="skip")``."""


@dataclass(frozen=True)
class SkippedRow:
    """A record that did not give a trace, and why.

    ``index`` is the record's 0-based position in the source (blank lines are not records);
    ``line`` its 1-based line in a JSONL file (``None`` otherwise); ``id`` its id when one was
    found; ``problem`` the kind (see the module docstring); ``message`` the full explanation;
    ``record`` the record as read (``None`` when the line was not valid JSON).
    """

    index: int
    line: int | None
    id: str | int | None
    problem: Problem
    message: str
    record: Mapping[str, Any] | None

    def where(self, source: str | None = None) -> str:
        """``"row 3 (line 4 of x.jsonl, id 'a')"``: where the record is, for messages."""
        parts = []
        if self.line is not None:
            parts.append(f"line {self.line}" + (f" of {source}" if source else ""))
        if self.id is not None:
            parts.append(f"id {self.id!r}")
        return f"row {self.index}" + (f" ({', '.join(parts)})" if parts else "")


class _RowError(Exception):
    """Internal: a record that is not a trace (becomes a SkippedRow)."""

    def __init__(self, problem: Problem, message: str) -> None:
        super().__init__(message)
        self.problem: Problem = problem
        self.message = message


# --------------------------------------------------------------------------- sources
def _records(
    source: str | os.PathLike[str] | Iterable[Mapping[str, Any]],
) -> tuple[Iterable[tuple[int | None, Any]], int | None, str | None]:
    """``(iterable of (line, record-or-error), count, name)`` for a path or an iterable."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(
                f"no file {str(path)!r}; pass the path of a .jsonl or .json file, or an iterable "
                "of dict rows (a list, a datasets.Dataset)"
            )
        name = path.name
        suffix = path.suffix.lower()
        content = path.read_text(encoding="utf-8-sig")
        if suffix in (".jsonl", ".ndjson"):
            lines = [
                (number, line)
                for number, line in enumerate(content.split("\n"), start=1)
                if line.strip()
            ]
            return ((number, _parse_line(line)) for number, line in lines), len(lines), name
        if suffix == ".json":
            data = json.loads(content)
            if not isinstance(data, list):
                raise ValueError(
                    f"{name} holds a JSON {type(data).__name__}, not a list of records; write "
                    "the records as a JSON list, or one object per line in a .jsonl file"
                )
            return ((None, record) for record in data), len(data), name
        raise ValueError(
            f"cannot tell the format of {name!r} from its suffix {suffix!r}; use .jsonl (one "
            "JSON object per line) or .json (a list of objects), or pass the rows themselves"
        )
    if isinstance(source, Mapping):
        raise TypeError(
            f"got a mapping with keys {list(source)[:5]}, not an iterable of rows; for a "
            "datasets.DatasetDict pass one split, e.g. ds['test']"
        )
    if isinstance(source, (bytes, bytearray)):
        raise TypeError("got bytes; pass a path, or an iterable of dict rows")
    count = len(source) if isinstance(source, typing.Sized) else None

    def checked() -> Iterable[tuple[int | None, Any]]:
        for index, record in enumerate(source):
            if not isinstance(record, Mapping):
                hint = (
                    " (iterating a pandas DataFrame gives its column names; pass "
                    "df.to_dict('records'))"
                    if isinstance(record, str)
                    else ""
                )
                raise TypeError(
                    f"row {index} is a {type(record).__name__}, not a mapping of fields{hint}"
                )
            yield None, record

    return checked(), count, None


class _BadJson:
    def __init__(self, message: str) -> None:
        self.message = message


def _parse_line(line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as err:
        return _BadJson(f"not valid JSON ({err.msg} at column {err.colno})")


# --------------------------------------------------------------------------- values
def _plain(value: Any, where: str) -> Any:
    """``value`` as JSON-plain data (numpy values converted), or TypeError naming the field."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray) or type(value).__name__ == "Tensor":
        return _plain(value.tolist(), where)
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        out = {}
        for key, v in value.items():
            if not isinstance(key, str):
                raise TypeError(f"metadata field {where} has a non-string key {key!r}")
            out[key] = _plain(v, f"{where}[{key!r}]")
        return out
    raise TypeError(
        f"metadata field {where} holds a {type(value).__name__}, which is not JSON-plain "
        "(str, int, float, bool, None, lists and dicts of those). Convert it first, or leave "
        "the field out with metadata_fields=[...]"
    )


def _ids_of(record: Mapping[str, Any], fields: Sequence[str]) -> list[int]:
    ids: list[int] = []
    for name in fields:
        if name not in record:
            raise _RowError(
                "invalid_row", f"no ids field {name!r}; the record has fields {sorted(record)}"
            )
        value = record[name]
        if isinstance(value, np.ndarray) or type(value).__name__ == "Tensor":
            value = value.tolist()
        if not isinstance(value, (list, tuple)) or not all(
            isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in value
        ):
            raise _RowError(
                "invalid_row",
                f"field {name!r} must be a list of token ids, got {value!r:.60}",
            )
        ids += [int(i) for i in value]
    if not ids:
        raise _RowError("invalid_row", f"the ids in {list(fields)} are empty")
    return ids


def _text_of(record: Mapping[str, Any], field: str, role: str) -> str:
    if field not in record:
        raise _RowError(
            "invalid_row",
            f"no {role} field {field!r}; the record has fields {sorted(record)}. Pass "
            f"{role}_field=... with the right name",
        )
    value = record[field]
    if not isinstance(value, str):
        raise _RowError(
            "invalid_row", f"{role} field {field!r} must be a string, got {type(value).__name__}"
        )
    return value


def join_prompt(prompt: str, response: str, think_open: str = "<think>") -> str:
    """The full text of a record whose prompt may or may not be in the response.

    If ``prompt`` occurs in ``response`` before the response's first ``think_open``, the
    response already holds it and is returned unchanged; otherwise ``prompt + response``.

    >>> join_prompt("Q? ", "<think>\\nhm</think> A")
    'Q? <think>\\nhm</think> A'
    >>> join_prompt("Q? ", "Q? <think>\\nhm</think> A")
    'Q? <think>\\nhm</think> A'
    """
    at = response.find(think_open)
    head = response[:at] if at >= 0 else ""
    return response if prompt and prompt in head else prompt + response


def _classify(text: str, think_open: str, think_close: str, strict: bool) -> Problem:
    opens = text.find(think_open)
    if opens < 0:
        return "no_think_open"
    if text.find(think_close, opens + len(think_open)) < 0:
        return "unfinished"
    if strict and (text.count(think_open) > 1 or text.count(think_close) > 1):
        return "repeated_delimiters"
    return "format"


# --------------------------------------------------------------------------- reader
def read_traces(
    source: str | os.PathLike[str] | Iterable[Mapping[str, Any]],
    tokenizer: Any,
    *,
    text_field: str = "response",
    prompt_field: str | None = None,
    ids_field: str | Sequence[str] | None = None,
    id_field: str | None = None,
    metadata_fields: Sequence[str] | None = None,
    think_open: str = "<think>",
    think_close: str = "</think>",
    strict: bool = True,
    convention: Convention = "exact",
    prepend_bos: bool | None = None,
    require_eos: bool = False,
    on_error: OnError | Callable[[SkippedRow], object] = "raise",
    progress: bool | None = None,
) -> list[Trace]:
    """Read one :class:`Trace` per record of a JSONL/JSON file or an iterable of dict rows.

    Args:
        source: a path to a ``.jsonl`` (one object per line) or ``.json`` (a list of
            objects) file, or an iterable of mappings (a list of dicts, a
            ``datasets.Dataset``; for a ``DatasetDict`` pick a split).
        tokenizer: the tokenizer of the model that produced the traces (a fast tokenizer
            when the text is tokenized).
        text_field: the field with the decoded text. Unused when ``ids_field`` is given.
        prompt_field: a field with the prompt, joined to the response by the rule in the
            module docstring (:func:`join_prompt`). Ignored when ``ids_field`` is given.
        ids_field: field name(s) with token ids; the trace is built from them and the text is
            not tokenized.
        id_field: the field with the record's id, stored as ``metadata["id"]``. Default: the
            first of ``"id"``, ``"unique_id"``, ``"problem_id"`` that the record has (no id if
            none). Given explicitly, a record without it is an ``"invalid_row"``.
        metadata_fields: fields to keep in ``trace.metadata``; default all fields except the
            text and ids fields.
        think_open, think_close, strict, convention: as in :meth:`Trace.from_text`.
        prepend_bos: as in :meth:`Trace.from_text` (text only; ids are used as they are).
        require_eos: make a record whose sequence does not end with the tokenizer's EOS token
            a ``"no_eos"`` problem (the answer may be cut off).
        on_error: ``"raise"`` (default): raise at the first bad record (``TraceFormatError``,
            or ``ValueError`` for an invalid record) saying which. ``"skip"``: leave bad records
            out and warn once (:class:`SkippedRowsWarning`) with counts; if no record at all is
            a trace, raise. A callable: called with each :class:`SkippedRow`; no warning.
        progress: show a progress bar (default: when there are more than 10 records).

    Returns:
        The traces, in source order, bad records left out.
    """
    if not (callable(on_error) or on_error in typing.get_args(OnError)):
        raise ValueError(
            f"on_error must be 'raise', 'skip' or a callable taking a SkippedRow, got {on_error!r}"
        )
    if convention not in typing.get_args(Convention):
        raise ValueError(f"convention must be 'exact' or 'r2a', got {convention!r}")
    ids_fields: tuple[str, ...] | None
    if ids_field is None:
        ids_fields = None
    elif isinstance(ids_field, str):
        ids_fields = (ids_field,)
    else:
        ids_fields = tuple(ids_field)
        if not ids_fields:
            raise ValueError("ids_field is an empty sequence; pass a field name or None")
    consumed = {text_field, *(ids_fields or ())}
    eos_id = getattr(tokenizer, "eos_token_id", None)
    if require_eos and eos_id is None:
        raise ValueError("require_eos=True but the tokenizer has no eos_token_id")

    records, count, name = _records(source)
    collected = _is_record_file(source)
    if collected:
        _refuse_text_options(
            text_field=text_field,
            prompt_field=prompt_field,
            ids_field=ids_field,
            id_field=id_field,
            metadata_fields=metadata_fields,
            think_open=think_open,
            think_close=think_close,
            strict=strict,
            convention=convention,
            prepend_bos=prepend_bos,
        )
        records = ((line, record) for line, record in records if line != 1)  # the header
        count = None if count is None else count - 1
    show = progress if progress is not None else (count is not None and count > 10)
    traces: list[Trace] = []
    skipped: list[SkippedRow] = []
    total = 0
    for index, (line, record) in enumerate(
        tqdm(records, total=count, desc="reading traces", disable=not show)
    ):
        total += 1
        row_id: str | int | None = None
        try:
            if isinstance(record, _BadJson):
                raise _RowError("invalid_row", record.message)
            if not isinstance(record, Mapping):
                raise _RowError(
                    "invalid_row", f"the line holds a JSON {type(record).__name__}, not an object"
                )
            row_id = _find_id(record, id_field)
            if collected:
                trace = _build_collected(record, tokenizer, index)
            else:
                metadata = _metadata(record, consumed, metadata_fields, id_field, row_id, index)
                trace = _build(
                    record,
                    tokenizer,
                    text_field=text_field,
                    prompt_field=prompt_field,
                    ids_fields=ids_fields,
                    think_open=think_open,
                    think_close=think_close,
                    strict=strict,
                    convention=convention,
                    prepend_bos=prepend_bos,
                    metadata=metadata,
                )
            if require_eos and (trace.ids[-1] != eos_id or len(trace["eos"]) == 0):
                raise _RowError(
                    "no_eos",
                    f"the sequence ends with token {trace.ids[-1]}, not EOS ({eos_id}): the "
                    "answer may be cut off. Pass require_eos=False to keep such records",
                )
        except _RowError as err:
            bad = SkippedRow(
                index=index,
                line=line,
                id=row_id,
                problem=err.problem,
                message=err.message,
                record=record if isinstance(record, Mapping) else None,
            )
            if on_error == "raise":
                cls = ValueError if err.problem == "invalid_row" else TraceFormatError
                raise cls(
                    f"{bad.where(name)}: {err.message}. Pass on_error='skip' to leave out records "
                    "that are not traces, or on_error=a_list.append to collect them"
                ) from err.__cause__
            skipped.append(bad)
            if callable(on_error):
                on_error(bad)
            continue
        traces.append(trace)
    if skipped and on_error == "skip":
        tally = collections.Counter(s.problem for s in skipped)
        counts = ", ".join(f"{n} {problem}" for problem, n in tally.most_common())
        first = skipped[0]
        summary = (
            f"skipped {len(skipped)} of {total} records ({counts}). First: "
            f"{first.where(name)}: {first.message}"
        )
        if not traces:
            raise TraceFormatError(
                f"no record is a trace: {summary}. Check text_field/ids_field, prompt_field and "
                "the think delimiters"
            )
        warnings.warn(
            f"{summary}. To see every skipped record pass on_error=skipped.append with "
            "skipped = []",
            SkippedRowsWarning,
            stacklevel=2,
        )
    return traces


def _is_record_file(source: object) -> bool:
    """Whether ``source`` is a JSONL file written by :func:`collect_traces` (header line)."""
    if not isinstance(source, (str, os.PathLike)):
        return False
    with open(source, encoding="utf-8-sig") as handle:
        first = handle.readline()
    try:
        header = json.loads(first)
    except json.JSONDecodeError:
        return False
    from reasoning_circuits.collection import KIND

    return isinstance(header, dict) and header.get("kind") == KIND


_TEXT_OPTIONS = {
    "text_field": "response",
    "prompt_field": None,
    "ids_field": None,
    "id_field": None,
    "metadata_fields": None,
    "think_open": "<think>",
    "think_close": "</think>",
    "strict": True,
    "convention": "exact",
    "prepend_bos": None,
}


def _refuse_text_options(**given: Any) -> None:
    changed = [k for k, v in given.items() if v != _TEXT_OPTIONS[k]]
    if changed:
        raise ValueError(
            f"this is a record file written by collect_traces: its traces are built from the "
            f"stored token ids and prompt, so {', '.join(changed)} would be ignored. Leave "
            "them at their defaults, or use reasoning_circuits.collection.read_records(path)"
        )


def _build_collected(record: Mapping[str, Any], tokenizer: Any, index: int) -> Trace:
    """The trace of one line of a collection file, through :meth:`TraceRecord.to_trace`."""
    from reasoning_circuits.collection import TraceRecord

    try:
        parsed = TraceRecord.from_dict(record)
    except (KeyError, TypeError, ValueError) as err:
        raise _RowError("invalid_row", f"not a trace record: {err}") from err
    if not parsed.finished:
        raise _RowError(
            "unfinished",
            f"stopped by {parsed.stop_reason} after {parsed.n_generated_tokens} tokens, so "
            "the answer is incomplete",
        )
    try:
        trace = parsed.to_trace(tokenizer)
    except TraceFormatError as err:
        text = parsed.prompt + parsed.text
        raise _RowError(_classify(text, "<think>", "</think>", True), str(err)) from err
    return dataclasses.replace(trace, metadata=MappingProxyType({**trace.metadata, "row": index}))


def _find_id(record: Mapping[str, Any], id_field: str | None) -> str | int | None:
    if id_field is not None:
        if id_field not in record:
            raise _RowError(
                "invalid_row",
                f"no id field {id_field!r}; the record has fields {sorted(record)}",
            )
        value = record[id_field]
    else:
        found = next((f for f in DEFAULT_ID_FIELDS if f in record), None)
        if found is None:
            return None
        value = record[found]
    value = _plain(value, "id")
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise _RowError("invalid_row", f"the id must be a string or an int, got {value!r:.60}")
    return value


def _metadata(
    record: Mapping[str, Any],
    consumed: set[str],
    metadata_fields: Sequence[str] | None,
    id_field: str | None,
    row_id: str | int | None,
    index: int,
) -> dict[str, Any]:
    if metadata_fields is None:
        names = [k for k in record if k not in consumed]
    else:
        missing = [k for k in metadata_fields if k not in record]
        if missing:
            raise _RowError(
                "invalid_row",
                f"no metadata field(s) {missing}; the record has fields {sorted(record)}",
            )
        names = list(metadata_fields)
    if "id" in names and id_field not in (None, "id") and record["id"] != row_id:
        raise ValueError(
            f"the records have a field 'id' and id_field={id_field!r}: metadata['id'] would be "
            "ambiguous. Pass id_field='id', or leave the field out with metadata_fields=[...]"
        )
    if "row" in names:
        raise ValueError(
            "the records have a field 'row', which read_traces uses for the record's position; "
            "leave it out with metadata_fields=[...] or rename it"
        )
    metadata = {str(k): _plain(record[k], repr(k)) for k in names}
    if row_id is not None:
        metadata["id"] = row_id
    metadata["row"] = index
    return metadata


def _build(
    record: Mapping[str, Any],
    tokenizer: Any,
    *,
    text_field: str,
    prompt_field: str | None,
    ids_fields: tuple[str, ...] | None,
    think_open: str,
    think_close: str,
    strict: bool,
    convention: Convention,
    prepend_bos: bool | None,
    metadata: dict[str, Any],
) -> Trace:
    common: dict[str, Any] = {
        "think_open": think_open,
        "think_close": think_close,
        "strict": strict,
        "convention": convention,
        "metadata": metadata,
    }
    if ids_fields is not None:
        ids = _ids_of(record, ids_fields)
        try:
            return Trace.from_ids(ids, tokenizer, **common)
        except TraceFormatError as err:
            text = str(
                tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            )
            raise _RowError(_classify(text, think_open, think_close, strict), str(err)) from err
    text = _text_of(record, text_field, "text")
    if prompt_field is not None:
        text = join_prompt(_text_of(record, prompt_field, "prompt"), text, think_open)
    try:
        return Trace.from_text(text, tokenizer, prepend_bos=prepend_bos, **common)
    except TraceFormatError as err:
        problem = _classify(text, think_open, think_close, strict)
        message = str(err)
        if problem == "no_think_open" and prompt_field is None:
            message += (
                f". If the prompt with {think_open!r} is in another field, pass prompt_field=..."
            )
        raise _RowError(problem, message) from err
