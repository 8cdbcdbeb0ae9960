"""Records in the PTS study's JSONL shape: export, append without duplicates, read theirs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import reasoning_circuits as rc
from reasoning_circuits import Trace
from reasoning_circuits.anchor_records import (
    STUDY_FIELDS,
    StudyRecordConflictError,
    claim_operator,
    read_study_records,
    record_key,
    study_records,
    write_study_records,
)
from reasoning_circuits.anchors import AnchorSet, SentenceImportance
from reasoning_circuits.errors import FileFormatError
from reasoning_circuits.stats import proportion_ci, two_proportions

FIXTURE = Path(__file__).parent / "fixtures" / "anchor_records_study.jsonl"

PROMPT = "Janet's ducks lay 16 eggs. She eats 3 and bakes with 4. Eggs sell for $2. <think>"
REASONING = (
    "\nOkay, let me work out Janet's daily income. "
    "She uses 3 + 4 = 8 eggs herself. "
    "So 16 - 3 - 4 = 9 eggs are left.\n\n"
    "Each egg sells for $2. "
    "The answer is 18.\n"
)
ANSWER = " $18"
# (k_kept, n_kept, k_replaced, n_replaced) per sentence; the last has no replacement
COUNTS = [(6, 10, 5, 10), (3, 10, 9, 10), (10, 10, 2, 10), (7, 10, 7, 10), (9, 10, 0, 0)]


def _strict(line: str) -> dict:
    def refuse(token: str) -> None:
        raise AssertionError(f"non-standard JSON token {token} written")

    return json.loads(line, parse_constant=refuse)


@pytest.fixture(scope="module")
def trace():
    tokenizer = rc.testing.bpe_tokenizer()
    return Trace.from_parts(
        PROMPT, REASONING, ANSWER, tokenizer, metadata={"id": "gsm8k/test/0", "sample": 0}
    )


@pytest.fixture(scope="module")
def anchors(trace):
    records = []
    for i, (kk, nk, kr, nr) in enumerate(COUNTS):
        s = trace.sentences[i]
        records.append(
            SentenceImportance(
                "t0",
                i,
                trace.text_of(s).strip(),
                s.start,
                s.stop,
                logprob=-1.0,
                removal_logprob=-1.5 - i,
                k_kept=kk,
                n_kept=nk,
                k_replaced=kr,
                n_replaced=nr,
                alternatives=("Alternatively, count the eggs.",) * (nr > 0),
            )
        )
    return AnchorSet(tuple(records), {"trace_id": "t0"})


@pytest.fixture(scope="module")
def records(anchors, trace):
    attention = pd.DataFrame(
        {
            "sentence": range(5),
            "n": [12, 22, 35, 42, 49],
            "entropy": [0.31, 0.29, 0.27, 0.26, 0.25],
            "gini": [0.90, 0.91, 0.92, 0.93, 0.94],
            "sink": [0.7, 0.72, 0.74, 0.76, 0.78],
        }
    )
    return study_records(
        anchors,
        trace,
        model_id="tiny",
        dataset_id="gsm8k",
        attention=attention,
        timestamp="2026-01-01T00:00:00",
    )


def test_records_have_the_study_fields_and_our_numbers(records, trace):
    assert len(records) == 5
    for i, (record, (kk, nk, kr, nr)) in enumerate(zip(records, COUNTS)):
        assert list(record)[: len(STUDY_FIELDS)] == list(STUDY_FIELDS)
        assert record["sentence_id"] == i
        assert record["model_id"] == "tiny" and record["dataset_id"] == "gsm8k"
        assert record["dataset_item_id"] == "gsm8k/test/0" and record["task_type"] == "generic"
        assert record["prob_with_sentence"] == kk / nk
        kept = proportion_ci(kk, nk)
        assert (record["p_kept_low"], record["p_kept_high"]) == (kept.low, kept.high)
        assert record["removal_importance"] == pytest.approx(0.5 + i)
        assert record["verification_score"] is None
        if nr:
            delta = kk / nk - kr / nr
            assert record["prob_without_sentence"] == kr / nr
            assert record["prob_delta"] == pytest.approx(delta)
            assert record["importance_score"] == pytest.approx(abs(delta))
            assert record["is_positive"] is (delta > 0)
            comparison = two_proportions(kk, nk, kr, nr)
            assert record["delta_low"] == comparison.difference.low
            assert record["delta_high"] == comparison.difference.high
            assert record["delta_p"] == comparison.p_value
            assert record["alternatives_tested"] == ["Alternatively, count the eggs."]
        else:  # no replacement drawn: no probability, no label (the study used a fallback)
            assert math.isnan(record["prob_without_sentence"])
            assert math.isnan(record["prob_delta"]) and record["is_positive"] is None
            assert record["alternatives_tested"] == []
    # Δ = 0 is not positive
    assert records[3]["is_positive"] is False


def test_contexts_are_exact_slices_of_the_reasoning(records, trace):
    reasoning = trace.text_of("reasoning")
    for record in records:
        text = record["prefix_context"] + record["sentence"] + record["suffix_context"]
        assert text == reasoning
        assert trace.text[record["char_start"] : record["char_stop"]] == record["sentence"]
        assert record["sentence"] == record["sentence"].strip()
    # the paragraph break survives (the study re-joined sentences with spaces)
    assert records[3]["prefix_context"].endswith("left.\n\n")
    assert records[0]["full_reasoning_trace"] == trace.text[trace["think_open"].char_start :]


def test_failure_modes_and_arithmetic_come_from_verification(records):
    wrong, right = records[1], records[2]
    assert wrong["failure_mode"] == "computational_mistake"
    assert wrong["error_type"] == "arithmetic_error"
    assert wrong["correction_suggestion"] == "3 + 4 should be 7"
    assert wrong["arithmetic_errors"] == [
        {"expression": "3 + 4", "stated": 8.0, "correct": 7.0, "operator": "+"}
    ]
    assert wrong["verification_ok"] is False and wrong["failure_heuristic"] is False
    assert wrong["verification_method"] == "verify_arithmetic"
    assert wrong["sentence_category"] == "active_computation"
    assert right["verification_ok"] is True and right["arithmetic_errors"] == []
    assert right["failure_mode"] is None and right["n_claims"] == 1
    # no arithmetic: nothing to verify, so no verdict
    assert records[0]["verification_ok"] is None and records[0]["verification_method"] is None
    assert records[4]["sentence_category"] == "final_answer_emission"


def test_attention_is_the_given_study_statistics(records):
    assert [r["attention_entropy"] for r in records] == [0.31, 0.29, 0.27, 0.26, 0.25]
    assert [r["attention_focus_score"] for r in records] == [0.90, 0.91, 0.92, 0.93, 0.94]
    assert records[2]["attention_sink"] == 0.74 and records[2]["attention_n"] == 35


def test_without_attention_entropy_is_missing_not_zero(anchors, trace):
    (first, *_) = study_records(anchors, trace, model_id="tiny")
    assert math.isnan(first["attention_entropy"]) and math.isnan(first["attention_focus_score"])


def test_anchors_only_keeps_the_study_selection(anchors, trace):
    kept = study_records(anchors, trace, model_id="tiny", anchors_only=True)
    # |Δ| = 0.1, 0.6, 0.8, 0.0, NaN
    assert [r["sentence_id"] for r in kept] == [1, 2]


def test_a_record_of_another_trace_is_refused(anchors, trace):
    other = Trace.from_parts(
        PROMPT, REASONING.replace("9 eggs", "nine eggs"), ANSWER, rc.testing.bpe_tokenizer()
    )
    with pytest.raises(ValueError, match="the trace's sentence 2"):
        study_records(anchors, other, model_id="tiny")
    with pytest.raises(ValueError, match="no trace for trace id"):
        study_records(anchors, {"t9": trace}, model_id="tiny")


@pytest.mark.parametrize(
    ("expression", "operator"),
    [
        ("3 + 4", "+"),
        ("16 - 3 - 4", "-"),
        ("9 × $2", "*"),
        ("3 \\times 4", "*"),
        ("10/3", "/"),
        ("\\frac{10}{4}", "/"),
        ("2^10", "^"),
        ("-3 + 4", "+"),
        ("2 + 3 \\cdot 4", "mixed"),
        ("5", ""),
    ],
)
def test_claim_operator(expression, operator):
    assert claim_operator(expression) == operator


def test_round_trip(records, tmp_path):
    path = tmp_path / "out.jsonl"
    assert write_study_records(records, path) == 5
    lines = path.read_text().splitlines()
    assert _strict(lines[0]) == {"kind": "StudyRecords", "format_version": 1}
    stored = [_strict(line) for line in lines[1:]]  # strict JSON: no NaN or Infinity token
    assert stored[4]["prob_delta"] is None and stored[4]["is_positive"] is None
    frame = read_study_records(path)
    assert frame.attrs["format"] == "reasoning_circuits"
    assert len(frame) == 5
    assert list(frame["problem"]) == ["gsm8k/test/0"] * 5
    assert frame["sentence_id"].dtype == "Int64"
    assert frame["is_positive"].dtype == "boolean"
    assert frame["prob_delta"].dtype == "float64"
    for row, record in zip(frame.to_dict(orient="records"), records):
        for name, value in record.items():
            got = row[name]
            if isinstance(value, float) and math.isnan(value):
                assert pd.isna(got), name
            elif value is None:
                assert got is None or pd.isna(got), name
            else:
                assert got == value, name


def test_nan_and_infinity_are_written_as_null(records, tmp_path):
    path = tmp_path / "out.jsonl"
    odd = dict(records[0], prob_delta=float("inf"), attention_entropy=np.float32("nan"))
    write_study_records([odd], path)
    stored = _strict(path.read_text().splitlines()[1])
    assert stored["prob_delta"] is None and stored["attention_entropy"] is None


def test_a_rerun_writes_no_duplicate(records, tmp_path):
    path = tmp_path / "out.jsonl"
    write_study_records(records[:3], path)
    later = [dict(r, timestamp="2026-02-02T00:00:00") for r in records]  # a rerun, later
    assert write_study_records(later, path) == 2
    assert write_study_records(later, path) == 0
    assert len(path.read_text().splitlines()) == 1 + 5
    # duplicates within one call are written once
    other = tmp_path / "other.jsonl"
    assert write_study_records([records[0], records[0]], other) == 1


def test_a_conflicting_record_is_refused_and_nothing_is_written(records, tmp_path):
    path = tmp_path / "out.jsonl"
    write_study_records(records[:2], path)
    before = path.read_bytes()
    changed = dict(records[1], prob_delta=0.9)
    with pytest.raises(StudyRecordConflictError, match="prob_delta"):
        write_study_records([records[2], changed], path)
    assert path.read_bytes() == before
    with pytest.raises(StudyRecordConflictError):
        write_study_records([records[3], dict(records[3], sentence="x")], tmp_path / "new.jsonl")


def test_records_of_two_traces_of_one_problem_are_not_duplicates(records, tmp_path):
    path = tmp_path / "out.jsonl"
    second = [dict(r, trace_id="t1", sample=1, prob_delta=0.0) for r in records]
    assert write_study_records(records + second, path) == 10
    assert record_key(records[0]) == ("tiny", "gsm8k/test/0", "t0", 0)
    with pytest.raises(ValueError, match="needs model_id"):
        record_key({"sentence_id": 0, "query": "q"})


def test_a_half_written_last_line_is_dropped_on_resume(records, tmp_path):
    path = tmp_path / "out.jsonl"
    write_study_records(records[:2], path)
    full = json.dumps({k: None for k in records[2]})
    with open(path, "a") as handle:  # a crash in the middle of a write
        handle.write(full[: len(full) // 2])
    with pytest.warns(UserWarning, match="incomplete"):
        assert len(read_study_records(path)) == 2
    assert write_study_records(records, path) == 3
    lines = path.read_text().splitlines()
    assert len(lines) == 6 and all(_strict(line) for line in lines)
    assert [_strict(line)["sentence_id"] for line in lines[1:]] == [0, 1, 2, 3, 4]


def test_the_writer_refuses_a_study_file(tmp_path, records):
    path = tmp_path / "study.jsonl"
    path.write_bytes(FIXTURE.read_bytes())
    with pytest.raises(FileFormatError, match="without our header"):
        write_study_records(records, path)


def test_the_study_format_is_read():
    with pytest.warns(UserWarning, match="dropped 3 exact duplicate"):
        frame = read_study_records(FIXTURE)
    assert frame.attrs["format"] == "study"
    assert len(frame) == 7
    assert list(frame["problem"]) == ["0", "0", "1", "1", "2", "2", "2"]
    assert list(frame["sentence_id"]) == [1, 3, 0, 2, 0, 1, 4]
    # NaN and -Infinity tokens: missing values
    assert frame["attention_entropy"].isna().tolist() == [False, True] + [False] * 5
    assert np.isnan(frame["attention_focus_score"].iloc[6])
    assert frame["attention_entropy"].iloc[6] == 0.0  # the study's silent failure value
    # Infinity inside a list: None
    assert frame["arithmetic_errors"].iloc[3] == [
        {"expression": "10 / 0", "stated": 5.0, "correct": None, "operator": "/"}
    ]
    assert frame["prob_delta"].iloc[0] == pytest.approx(0.5)
    assert frame["is_positive"].tolist() == [True, False, True, False, True, False, True]
    # verification ran on three records; it found an error on one
    assert frame["verification_ok"].tolist()[:5] == [True, pd.NA, pd.NA, False, True]
    # every field of the study is a column, in its order
    assert list(frame.columns[: len(STUDY_FIELDS)]) == list(STUDY_FIELDS)


def test_the_study_format_without_dedupe_keeps_its_duplicates():
    assert len(read_study_records(FIXTURE, dedupe=False)) == 10


def test_conflicting_records_under_one_key_keep_the_first(tmp_path):
    lines = FIXTURE.read_text().splitlines()
    changed = json.loads(lines[0], parse_constant=lambda token: None)
    changed["prob_delta"] = 0.25
    path = tmp_path / "appended.jsonl"
    path.write_text("\n".join([*lines, json.dumps(changed)]) + "\n")
    with pytest.warns(UserWarning) as caught:
        frame = read_study_records(path)
    messages = " ".join(str(w.message) for w in caught)
    assert "dropped 3 exact" in messages and "dropped 1 record(s) whose" in messages
    assert len(frame) == 7 and frame["prob_delta"].iloc[0] == pytest.approx(0.5)


def test_a_damaged_middle_line_is_refused(tmp_path):
    lines = FIXTURE.read_text().splitlines()
    path = tmp_path / "damaged.jsonl"
    path.write_text("\n".join([lines[0], lines[1][:40], *lines[2:]]) + "\n")
    with pytest.raises(FileFormatError, match="line 2"):
        read_study_records(path)


def test_end_to_end_with_a_model(gpt2, tmp_path):
    from reasoning_circuits.anchors import thought_anchors
    from reasoning_circuits.receivers import study_sentence_statistics

    trace = Trace.from_parts(
        "Q: 2+3? <think>",
        "\nOkay. 2 + 3 = 6. So the answer is 5.\n",
        " 5",
        gpt2.tokenizer,
        metadata={"id": "q0"},
    )
    result = thought_anchors(gpt2, trace, methods=("removal",), progress=False)
    attention = study_sentence_statistics(gpt2, trace, last_layers=2)
    records = study_records(result, trace, model_id="tiny", attention=attention)
    path = tmp_path / "e2e.jsonl"
    assert write_study_records(records, path) == 3
    frame = read_study_records(path)
    assert list(frame["sentence"]) == ["Okay.", "2 + 3 = 6.", "So the answer is 5."]
    assert list(frame["attention_entropy"]) == pytest.approx(list(attention["entropy"]))
    assert list(frame["attention_sink"]) == pytest.approx(list(attention["sink"]))
    assert frame["verification_ok"].tolist()[1] is False
    assert frame["prob_delta"].isna().all()  # no resampling: no probabilities
    assert list(frame["removal_importance"]) == pytest.approx(
        [r.removal_importance for r in result]
    )
