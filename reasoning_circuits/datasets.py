"""Benchmark problems: MATH-500, GSM8K and WildBench as one :class:`Problem` type.

Each loader reads the Hugging Face Hub copy through the ``datasets`` library, or a local
file with the same fields (JSON Lines, a JSON list, or Parquet), and returns a list of
frozen :class:`Problem` values: ``id``, ``question``, ``gold`` (the reference answer, or None
for open-ended tasks), ``kind`` (how :mod:`reasoning_circuits.grading` compares answers) and
``metadata`` (subject, level, the worked solution, ...).

>>> problems = load_gsm8k("tests/fixtures/datasets_gsm8k.jsonl")  # doctest: +SKIP
>>> problems[0].id, problems[0].gold  # doctest: +SKIP
('gsm8k/test/0', '18')

=============  ===============================  =====================================
loader         Hub name (config)                local fields (one record per problem)
=============  ===============================  =====================================
load_math500   ``HuggingFaceH4/MATH-500``       problem, answer, solution, subject,
                                                level, unique_id
load_gsm8k     ``openai/gsm8k`` (``main``)      question, answer (``... #### 72``)
load_wildbench ``allenai/WildBench`` (``v2``)   session_id, conversation_input, checklist,
                                                primary_tag, secondary_tags, intent, ...
=============  ===============================  =====================================

Ids: MATH-500 uses ``unique_id`` (``test/precalculus/807.json``, R2A's pairing key);
GSM8K has no ids, so a problem's id is ``gsm8k/<split>/<0-based line index>``; WildBench
uses ``session_id``. Ids must be unique in a file.

Gold answers: MATH-500 ``answer`` as written (a LaTeX string; the ``solution``'s last
``\\boxed{}`` holds the same answer, see ``docs/grading.md``); GSM8K the number after
``####`` with thousands separators removed (``#### 1,000`` → ``"1000"``). WildBench has no
reference answer (``gold=None, kind=None``): R2A scores its responses with an LLM judge.

WildBench conversations can have several turns; ``conversation_input`` ends with the user
turn to answer. ``turn="last"`` (default) makes that turn the question and keeps the earlier
turns in ``metadata["history"]`` (``[{"role", "content"}, ...]``, for a chat template).
``turn="first"`` reproduces R2A, which used ``conversation_input[0]["content"]`` only (for a
multi-turn item that is not the turn the checklist judges).

Offline: loading from the Hub needs the network or a copy in the ``datasets`` cache.
Without either, the loaders raise :class:`DatasetUnavailableError` with the exact call that
reads a local file instead.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from reasoning_circuits._options import check_option
from reasoning_circuits.grading import Grade, Kind, gold_answer, grade

__all__ = [
    "DatasetFormatError",
    "DatasetUnavailableError",
    "Problem",
    "load_gsm8k",
    "load_math500",
    "load_wildbench",
    "problems_to_frame",
]

Turn = Literal["last", "first"]
"""Which WildBench user turn becomes the question (see the module docstring)."""


class DatasetUnavailableError(OSError):
    """A benchmark could not be loaded from the Hub (offline, not cached); pass a local path."""


class DatasetFormatError(ValueError):
    """A dataset record lacks a field, has a field of the wrong type, or repeats an id."""


@dataclass(frozen=True)
class _Source:
    name: str
    repo: str
    config: str | None
    splits: tuple[str, ...]
    fields: str
    example: str
    origin: str


_SOURCES = {
    "math500": _Source(
        "MATH-500",
        "HuggingFaceH4/MATH-500",
        None,
        ("test",),
        "problem, answer, solution, subject, level, unique_id",
        'rc.datasets.load_math500("path/to/math500_test.jsonl")',
        "prm800k/math_splits/test.jsonl of github.com/openai/prm800k",
    ),
    "gsm8k": _Source(
        "GSM8K",
        "openai/gsm8k",
        "main",
        ("train", "test"),
        "question, answer (ending in '#### <number>')",
        'rc.datasets.load_gsm8k("path/to/gsm8k_test.jsonl")',
        "grade_school_math/data/test.jsonl of github.com/openai/grade-school-math",
    ),
    "wildbench": _Source(
        "WildBench v2",
        "allenai/WildBench",
        "v2",
        ("test",),
        "session_id, conversation_input (list of {role, content}), checklist, primary_tag, ...",
        'rc.datasets.load_wildbench("path/to/wildbench_v2_test.jsonl")',
        "the v2 test split of huggingface.co/datasets/allenai/WildBench (Parquet files work too)",
    ),
}


# --------------------------------------------------------------------------------------------
# Problem
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One benchmark problem.

    Attributes:
        id: unique within its dataset (see the module docstring for each dataset's ids).
        question: the text to answer, without any instruction or chat template.
        gold: the reference answer as :func:`reasoning_circuits.grading.grade` takes it, or
            None when the task has none (WildBench).
        kind: how to grade ``gold`` (``"math"`` or ``"gsm8k"``), None without a gold.
        metadata: everything else (subject, level, solution, checklist, history, ...), as
            JSON-plain values in a read-only mapping.
    """

    id: str
    question: str
    gold: str | None
    kind: Kind | None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("id", "question"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise TypeError(f"Problem.{name} must be a non-empty str, got {value!r}")
        if self.gold is not None and not isinstance(self.gold, str):
            raise TypeError(f"Problem.gold must be a str or None, got {type(self.gold).__name__}")
        if (self.gold is None) != (self.kind is None):
            raise ValueError(
                f"Problem {self.id!r}: gold and kind go together (gold={self.gold!r}, "
                f"kind={self.kind!r}); a problem without a gold answer has kind=None"
            )
        if self.kind is not None:
            check_option(self.kind, Kind, "kind")
        if not isinstance(self.metadata, Mapping):
            raise TypeError(
                f"Problem.metadata must be a mapping, got {type(self.metadata).__name__}"
            )
        object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))

    def to_dict(self) -> dict[str, Any]:
        """``{"id", "question", "gold", "kind", "metadata"}``, JSON-ready."""
        return {
            "id": self.id,
            "question": self.question,
            "gold": self.gold,
            "kind": self.kind,
            "metadata": dict(self.metadata),
        }

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> Problem:
        """The inverse of :meth:`to_dict`."""
        missing = [k for k in ("id", "question", "gold", "kind") if k not in record]
        if missing:
            raise DatasetFormatError(
                f"a Problem record needs the fields id, question, gold, kind; missing {missing}"
            )
        return cls(
            id=record["id"],
            question=record["question"],
            gold=record["gold"],
            kind=record["kind"],
            metadata=record.get("metadata") or {},
        )

    def grade(self, response: str, **options: Any) -> Grade:
        """Grade ``response`` against this problem's gold answer with
        :func:`reasoning_circuits.grading.grade` (``options`` are passed on)."""
        if self.gold is None or self.kind is None:
            raise ValueError(
                f"problem {self.id!r} has no gold answer (an open-ended task such as "
                "WildBench); judge its responses another way"
            )
        return grade(response, self.gold, kind=self.kind, **options)


def problems_to_frame(problems: Sequence[Problem]) -> Any:
    """A pandas DataFrame indexed by id with columns question, gold, kind and one column per
    metadata key."""
    import pandas as pd

    rows = [
        {"id": p.id, "question": p.question, "gold": p.gold, "kind": p.kind, **p.metadata}
        for p in problems
    ]
    return pd.DataFrame(rows).set_index("id") if rows else pd.DataFrame()


# --------------------------------------------------------------------------------------------
# Reading records
# --------------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """JSON-plain data (numpy arrays and scalars from Parquet converted)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return _plain(tolist())
    item = getattr(value, "item", None)
    if callable(item):
        return _plain(item())
    return str(value)


def _file_records(path: Path) -> Iterator[tuple[str, Any]]:
    """``(where, record)`` for each record of a JSONL, JSON-list or Parquet file."""
    if path.suffix.lower() == ".parquet":
        import pandas as pd

        for index, record in enumerate(pd.read_parquet(path).to_dict("records")):
            yield f"{path.name} row {index}", _plain(record)
        return
    text = path.read_text(encoding="utf-8-sig")
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise DatasetFormatError(
                f"{path.name} is not valid JSON ({err.msg} at line {err.lineno}); write a JSON "
                "list of objects or one object per line (JSON Lines)"
            ) from err
        for index, record in enumerate(data):
            yield f"{path.name} item {index}", record
        return
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DatasetFormatError(
                f"{path.name} line {number} is not valid JSON ({err.msg} at column "
                f"{err.colno}); the file should hold one JSON object per line"
            ) from err
        yield f"{path.name} line {number}", record


def _hub_records(key: str, split: str, limit: int | None) -> Iterator[tuple[str, Any]]:
    source = _SOURCES[key]
    if split not in source.splits:
        raise ValueError(
            f"{source.repo} has the splits {list(source.splits)}, not {split!r}; to read "
            f"another file pass its path: {source.example}"
        )
    try:
        import datasets as hf_datasets

        data = hf_datasets.load_dataset(source.repo, source.config, split=split)
    except Exception as err:
        config = f", config {source.config!r}" if source.config else ""
        raise DatasetUnavailableError(
            f"could not load {source.repo!r}{config}, split {split!r} from the Hugging Face "
            f"Hub ({type(err).__name__}: {err}). Without network access (or with "
            f"HF_HUB_OFFLINE=1 and no cached copy) pass a local copy with the fields "
            f"{source.fields}, as JSON Lines, a JSON list or Parquet:\n    {source.example}\n"
            f"The original file: {source.origin}."
        ) from err
    if limit is not None:
        data = data.select(range(min(limit, len(data))))
    for index, record in enumerate(data):
        yield f"{source.repo} row {index}", _plain(record)


def _records(
    key: str, path: str | os.PathLike[str] | None, split: str, limit: int | None
) -> Iterator[tuple[str, Mapping[str, Any]]]:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")
    if not isinstance(split, str) or not split:
        raise ValueError(f"split must be a non-empty str, got {split!r}")
    if path is None:
        records = _hub_records(key, split, limit)
    else:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(
                f"path must be a file path (str or os.PathLike), got {type(path).__name__}"
            )
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(
                f"no file {str(file)!r}; pass the path of a .jsonl, .json or .parquet file with "
                f"the fields {_SOURCES[key].fields}"
            )
        records = _file_records(file)
    for count, (where, record) in enumerate(records):
        if limit is not None and count >= limit:
            break
        if not isinstance(record, Mapping):
            raise DatasetFormatError(
                f"{where} is a JSON {type(record).__name__}, not an object with the fields "
                f"{_SOURCES[key].fields}"
            )
        yield where, record


def _field(record: Mapping[str, Any], name: str, where: str, key: str, types: Any = str) -> Any:
    if name not in record:
        raise DatasetFormatError(
            f"{where} has no field {name!r} (fields: {sorted(record)}); "
            f"{_SOURCES[key].name} records need {_SOURCES[key].fields}"
        )
    value = record[name]
    if isinstance(value, bool) or not isinstance(value, types):
        expected = (
            types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)
        )
        raise DatasetFormatError(
            f"{where}: field {name!r} is of type {type(value).__name__} ({_brief(value)}), "
            f"expected {expected}"
        )
    return value


def _brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _problem(
    where: str,
    id: str,
    question: str,
    gold: str | None,
    kind: Kind | None,
    metadata: Mapping[str, Any],
) -> Problem:
    try:
        return Problem(id=id, question=question, gold=gold, kind=kind, metadata=metadata)
    except (TypeError, ValueError) as err:
        raise DatasetFormatError(f"{where}: {err}") from err


def _unique(problems: list[Problem], wheres: list[str]) -> list[Problem]:
    seen: dict[str, str] = {}
    for problem, where in zip(problems, wheres):
        if problem.id in seen:
            raise DatasetFormatError(
                f"id {problem.id!r} appears twice ({seen[problem.id]} and {where}); ids must be "
                "unique so that results can be paired by id"
            )
        seen[problem.id] = where
    return problems


# --------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------


def load_math500(
    path: str | os.PathLike[str] | None = None,
    *,
    split: str = "test",
    limit: int | None = None,
) -> list[Problem]:
    """MATH-500 (the 500-problem test subset of MATH used by PRM800K and R2A).

    ``path``: a local JSONL/JSON/Parquet file with the fields ``problem``, ``answer`` and
    optionally ``solution``, ``subject``, ``level``, ``unique_id`` (the id; without it the id
    is ``math500/<split>/<index>``); None loads ``HuggingFaceH4/MATH-500`` from the Hub.
    ``limit``: the first ``limit`` problems. Gold = ``answer``, ``kind="math"``; the other
    fields go to ``metadata``.
    """
    problems, wheres = [], []
    for index, (where, record) in enumerate(_records("math500", path, split, limit)):
        question = _field(record, "problem", where, "math500")
        answer = _field(record, "answer", where, "math500", (str, int))
        uid = record.get("unique_id")
        if uid is not None and not isinstance(uid, str):
            raise DatasetFormatError(f"{where}: unique_id must be a str, got {_brief(uid)}")
        gold = str(answer)
        try:
            gold_answer(gold, "math")
        except ValueError as err:
            raise DatasetFormatError(f"{where}: {err}") from err
        metadata = {k: _plain(v) for k, v in record.items() if k not in ("problem", "answer")}
        problems.append(
            _problem(where, uid or f"math500/{split}/{index}", question, gold, "math", metadata)
        )
        wheres.append(where)
    return _unique(problems, wheres)


def load_gsm8k(
    path: str | os.PathLike[str] | None = None,
    *,
    split: str = "test",
    limit: int | None = None,
) -> list[Problem]:
    """GSM8K (grade-school math word problems).

    ``path``: a local JSONL/JSON/Parquet file with the fields ``question`` and ``answer`` (the
    worked solution ending in ``#### <number>``); None loads ``openai/gsm8k`` (config
    ``main``) from the Hub. Gold = the number after ``####`` with thousands separators
    removed, ``kind="gsm8k"``; ``metadata["solution"]`` keeps the worked solution and
    ``metadata["index"]`` the 0-based position. Id: ``gsm8k/<split>/<index>``.
    """
    problems, wheres = [], []
    for index, (where, record) in enumerate(_records("gsm8k", path, split, limit)):
        question = _field(record, "question", where, "gsm8k")
        solution = _field(record, "answer", where, "gsm8k")
        if "####" not in solution:
            raise DatasetFormatError(
                f"{where}: the answer field has no '####' marker ({_brief(solution[-60:])}); "
                "GSM8K answers end in '#### <number>'"
            )
        try:
            gold = gold_answer(solution, "gsm8k")
        except ValueError as err:
            raise DatasetFormatError(f"{where}: {err}") from err
        metadata = {k: _plain(v) for k, v in record.items() if k not in ("question", "answer")}
        metadata.update(solution=solution, index=index)
        problems.append(
            _problem(where, f"gsm8k/{split}/{index}", question, gold, "gsm8k", metadata)
        )
        wheres.append(where)
    return _unique(problems, wheres)


def load_wildbench(
    path: str | os.PathLike[str] | None = None,
    *,
    split: str = "test",
    limit: int | None = None,
    turn: Turn = "last",
) -> list[Problem]:
    """WildBench v2 (real user tasks judged with per-task checklists).

    ``path``: a local JSONL/JSON/Parquet file with the v2 fields ``session_id``,
    ``conversation_input`` (a list of ``{"role", "content", ...}`` turns ending with the user
    turn to answer) and optionally ``checklist``, ``primary_tag``, ``secondary_tags``,
    ``intent``, ``length``, ``references``, ``id``; None loads ``allenai/WildBench`` (config
    ``v2``) from the Hub. ``turn``: ``"last"`` (the question is the final user turn, earlier
    turns in ``metadata["history"]``) or ``"first"`` (R2A: the first turn alone). No gold
    answer: ``gold=None, kind=None``. Id: ``session_id``.
    """
    check_option(turn, Turn, "turn")
    problems, wheres = [], []
    for where, record in _records("wildbench", path, split, limit):
        session = _field(record, "session_id", where, "wildbench")
        conversation = _field(record, "conversation_input", where, "wildbench", list)
        turns = []
        for number, item in enumerate(conversation):
            if not (
                isinstance(item, Mapping)
                and isinstance(item.get("content"), str)
                and isinstance(item.get("role"), str)
            ):
                raise DatasetFormatError(
                    f"{where}: conversation_input[{number}] is {_brief(item)}, expected an "
                    "object with string fields 'role' and 'content'"
                )
            turns.append({"role": item["role"], "content": item["content"]})
        if not turns or turns[-1]["role"] != "user":
            raise DatasetFormatError(
                f"{where}: conversation_input must end with a user turn, got roles "
                f"{[t['role'] for t in turns]}"
            )
        if turn == "last":
            question, history = turns[-1]["content"], turns[:-1]
        else:
            question, history = turns[0]["content"], []
        metadata = {
            k: _plain(v) for k, v in record.items() if k not in ("session_id", "conversation_input")
        }
        metadata.update(history=history, n_turns=len(turns))
        problems.append(_problem(where, session, question, None, None, metadata))
        wheres.append(where)
    return _unique(problems, wheres)
