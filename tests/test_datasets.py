"""Dataset loaders on small fixtures (5 real MATH-500 items, 5 real GSM8K items plus one
hand-made, 3 hand-made WildBench-v2-shaped items; see docs/grading.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from reasoning_circuits import datasets
from reasoning_circuits.datasets import (
    DatasetFormatError,
    DatasetUnavailableError,
    Problem,
    load_gsm8k,
    load_math500,
    load_wildbench,
    problems_to_frame,
)

FIXTURES = Path(__file__).parent / "fixtures"
MATH = FIXTURES / "datasets_math500.jsonl"
GSM = FIXTURES / "datasets_gsm8k.jsonl"
WILD = FIXTURES / "datasets_wildbench.jsonl"


def rows(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


# ------------------------------------------------------------------ MATH-500
def test_math500_fixture():
    problems = load_math500(MATH)
    assert [p.id for p in problems] == [
        "test/precalculus/807.json",
        "test/intermediate_algebra/1994.json",
        "test/algebra/2584.json",
        "test/number_theory/572.json",
        "test/algebra/1349.json",
    ]
    assert [p.gold for p in problems] == [
        "\\left( 3, \\frac{\\pi}{2} \\right)",
        "p - q",
        "\\frac{14}{3}",
        "9",
        "\\text{Evelyn}",
    ]
    first = problems[0]
    assert first.kind == "math"
    assert first.question.startswith("Convert the point $(0,3)$")
    assert first.metadata["subject"] == "Precalculus" and first.metadata["level"] == 2
    assert first.metadata["solution"].endswith("\\right)}.$")
    with pytest.raises(TypeError):
        first.metadata["level"] = 3  # type: ignore[index]


def test_math500_limit_and_formats(tmp_path):
    assert [p.id for p in load_math500(MATH, limit=2)] == [p.id for p in load_math500(MATH)][:2]
    records = rows(MATH)
    as_list = tmp_path / "math.json"
    as_list.write_text(json.dumps(records, indent=1), encoding="utf-8")
    as_parquet = tmp_path / "math.parquet"
    pd.DataFrame(records).to_parquet(as_parquet)
    reference = load_math500(MATH)
    assert load_math500(as_list) == reference
    assert load_math500(as_parquet) == reference


def test_math500_without_unique_id_uses_the_position(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [{"problem": "1+1?", "answer": "2"}] * 2)
    assert [p.id for p in load_math500(path, split="mine")] == ["math500/mine/0", "math500/mine/1"]


def test_problem_round_trip_and_grade():
    problem = load_math500(MATH)[2]  # gold \frac{14}{3}
    again = Problem.from_dict(json.loads(json.dumps(problem.to_dict())))
    assert again == problem
    assert problem.grade("<think>...</think> $\\boxed{\\frac{14}{3}}$").correct
    assert problem.grade("<think>...</think> $\\boxed{\\frac{11}{3}}$").reason == "wrong"


# ------------------------------------------------------------------ GSM8K
def test_gsm8k_fixture():
    problems = load_gsm8k(GSM)
    # the first five test answers of GSM8K, and a hand-made '#### 1,250'
    assert [p.gold for p in problems] == ["18", "3", "70000", "540", "20", "1250"]
    assert [p.id for p in problems] == [f"gsm8k/test/{i}" for i in range(6)]
    assert all(p.kind == "gsm8k" for p in problems)
    assert problems[0].question.startswith("Janet’s ducks lay 16 eggs")
    assert problems[0].metadata["solution"].endswith("#### 18")
    assert problems[5].metadata["index"] == 5
    assert [p.id for p in load_gsm8k(GSM, split="train", limit=2)] == [
        "gsm8k/train/0",
        "gsm8k/train/1",
    ]
    assert problems[2].grade("</think> The profit is \\boxed{\\$70,000}.").correct


def test_gsm8k_refuses_answers_without_a_number(tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl", [{"question": "q?", "answer": "no marker"}])
    with pytest.raises(DatasetFormatError, match=r"g\.jsonl line 1.*'####'"):
        load_gsm8k(path)
    path = write_jsonl(tmp_path / "g.jsonl", [{"question": "q?", "answer": "#### many"}])
    with pytest.raises(DatasetFormatError, match="not a number"):
        load_gsm8k(path)


# ------------------------------------------------------------------ WildBench
def test_wildbench_fixture_turns():
    last = load_wildbench(WILD)
    assert [p.id for p in last] == ["wb-made-up-001", "wb-made-up-002", "wb-made-up-003"]
    assert all(p.gold is None and p.kind is None for p in last)
    multi = last[1]
    assert multi.question == "Why was it chosen over Sydney?"
    assert multi.metadata["history"] == [
        {"role": "user", "content": "What is the capital of Australia?"},
        {"role": "assistant", "content": "The capital of Australia is Canberra."},
    ]
    assert multi.metadata["n_turns"] == 3
    assert multi.metadata["primary_tag"] == "Information seeking"
    assert multi.metadata["checklist"][0].startswith("Does it mention")
    first = load_wildbench(WILD, turn="first")[1]
    assert first.question == "What is the capital of Australia?"
    assert first.metadata["history"] == []
    assert last[0].question == load_wildbench(WILD, turn="first")[0].question
    with pytest.raises(ValueError, match="no gold answer"):
        multi.grade("</think> Canberra.")
    with pytest.raises(ValueError, match="turn"):
        load_wildbench(WILD, turn="final")  # type: ignore[arg-type]


def test_wildbench_parquet_with_nested_fields(tmp_path):
    path = tmp_path / "wb.parquet"
    pd.DataFrame(rows(WILD)).to_parquet(path)
    assert load_wildbench(path) == load_wildbench(WILD)


def test_wildbench_refusals(tmp_path):
    record = rows(WILD)[0]
    ends_with_assistant = {
        **record,
        "conversation_input": [
            *record["conversation_input"],
            {"role": "assistant", "content": "x"},
        ],
    }
    with pytest.raises(DatasetFormatError, match="end with a user turn"):
        load_wildbench(write_jsonl(tmp_path / "a.jsonl", [ends_with_assistant]))
    bad_turn = {**record, "conversation_input": [{"role": "user"}]}
    with pytest.raises(DatasetFormatError, match=r"conversation_input\[0\]"):
        load_wildbench(write_jsonl(tmp_path / "b.jsonl", [bad_turn]))


# ------------------------------------------------------------------ refusals and offline
def test_format_refusals(tmp_path):
    with pytest.raises(DatasetFormatError, match="line 2 has no field 'answer'"):
        load_math500(
            write_jsonl(tmp_path / "a.jsonl", [{"problem": "p", "answer": "1"}, {"problem": "p"}])
        )
    with pytest.raises(DatasetFormatError, match=r"field 'problem' is of type int.*expected str"):
        load_math500(write_jsonl(tmp_path / "b.jsonl", [{"problem": 3, "answer": "1"}]))
    with pytest.raises(DatasetFormatError, match="appears twice"):
        load_math500(write_jsonl(tmp_path / "c.jsonl", [rows(MATH)[0]] * 2))
    with pytest.raises(DatasetFormatError, match="empty"):
        load_math500(write_jsonl(tmp_path / "d.jsonl", [{"problem": "p", "answer": " "}]))
    with pytest.raises(DatasetFormatError, match="not an object"):
        load_math500(write_jsonl(tmp_path / "e.jsonl", [[1, 2]]))
    (tmp_path / "f.jsonl").write_text('{"problem": "p", "answer": "1"}\n{oops\n')
    with pytest.raises(DatasetFormatError, match="line 2 is not valid JSON"):
        load_math500(tmp_path / "f.jsonl")
    with pytest.raises(FileNotFoundError, match="no file"):
        load_gsm8k(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="limit"):
        load_gsm8k(GSM, limit=0)


def test_offline_error_says_how_to_pass_a_path(monkeypatch):
    import datasets as hf_datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(hf_datasets, "load_dataset", offline)
    with pytest.raises(DatasetUnavailableError) as info:
        load_gsm8k()
    message = str(info.value)
    assert 'rc.datasets.load_gsm8k("path/to/gsm8k_test.jsonl")' in message
    assert "openai/gsm8k" in message and "question, answer" in message
    assert isinstance(info.value, OSError)
    with pytest.raises(DatasetUnavailableError, match=r"load_math500\("):
        load_math500()
    with pytest.raises(DatasetUnavailableError, match=r"load_wildbench\("):
        load_wildbench()
    with pytest.raises(ValueError, match="splits"):
        load_gsm8k(split="validation")


def test_hub_rows_are_read_like_files(monkeypatch):
    """The Hub path converts rows exactly as a local file with the same fields."""
    import datasets as hf_datasets

    calls = []

    def fake(repo, config, split):
        calls.append((repo, config, split))
        return hf_datasets.Dataset.from_list(rows(GSM))

    monkeypatch.setattr(hf_datasets, "load_dataset", fake)
    assert load_gsm8k(limit=3) == load_gsm8k(GSM, limit=3)
    assert calls == [("openai/gsm8k", "main", "test")]


def test_problem_checks_and_frame():
    with pytest.raises(ValueError, match="go together"):
        Problem("a", "q", "1", None)
    with pytest.raises(TypeError, match="question"):
        Problem("a", "", "1", "math")
    with pytest.raises(ValueError, match="kind"):
        Problem("a", "q", "1", "algebra")  # type: ignore[arg-type]
    frame = problems_to_frame(load_math500(MATH))
    assert frame.index.name == "id" and len(frame) == 5
    assert {"question", "gold", "kind", "subject", "level", "solution"} <= set(frame.columns)
    assert frame.loc["test/algebra/2584.json", "gold"] == "\\frac{14}{3}"
    assert datasets.__all__  # the module's public names are declared
