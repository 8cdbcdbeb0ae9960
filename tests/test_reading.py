"""read_traces on hand-written R1-style records (problems from MATH-500, see fixtures)."""

import datetime
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

import reasoning_circuits as rc
from reasoning_circuits import Trace, TraceFormatError
from reasoning_circuits.models import BUILTIN_MODELS
from reasoning_circuits.reading import SkippedRow, SkippedRowsWarning, join_prompt, read_traces

FIXTURES = Path(__file__).parent / "fixtures"
R1 = FIXTURES / "reading_r1_rows.jsonl"
PROMPTS = FIXTURES / "reading_prompt_rows.jsonl"
EOS = "<|endoftext|>"  # BOS = EOS in the offline tokenizers; the fixtures use it for both
# Hand-labelled from the fixture (see fixtures/reading_fixtures.md).
GOOD = [0, 1, 3, 5]
PROBLEMS = {2: "unfinished", 4: "repeated_delimiters"}


def rows(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


@pytest.fixture(scope="module", params=["single", "split", "tiny-reasoner"])
def any_tokenizer(request):
    if request.param == "tiny-reasoner":
        return AutoTokenizer.from_pretrained(BUILTIN_MODELS["tiny-reasoner"])
    return rc.testing.bpe_tokenizer(think_tokens=request.param)


@pytest.fixture(scope="module")
def tok():
    return rc.testing.bpe_tokenizer()


def parts(response):
    """Prompt, reasoning and answer of a fixture response by plain string splitting."""
    head, rest = response.split("<think>")
    reasoning, answer = rest.split("</think>")
    return head.removeprefix(EOS), reasoning, answer.removesuffix(EOS)


def test_segments_match_the_text_of_each_record(any_tokenizer):
    skipped = []
    traces = read_traces(R1, any_tokenizer, on_error=skipped.append)
    records = rows(R1)
    assert [t.metadata["row"] for t in traces] == GOOD
    for trace in traces:
        record = records[trace.metadata["row"]]
        prompt, reasoning, answer = parts(record["response"])
        assert trace.text == record["response"]
        assert trace.text_of("prompt") == prompt
        assert trace.text_of("reasoning") == reasoning
        assert trace.text_of("answer") == answer
        assert len(trace["bos"]) == 1
        assert len(trace["eos"]) == int(record["response"].endswith(EOS))
    assert {s.index: s.problem for s in skipped} == PROBLEMS


def test_ids_and_metadata_are_kept(tok):
    traces = read_traces(R1, tok, on_error=[].append)
    records = rows(R1)
    for trace in traces:
        record = records[trace.metadata["row"]]
        expected = {k: v for k, v in record.items() if k != "response"}
        expected |= {"id": record["unique_id"], "row": trace.metadata["row"]}
        assert dict(trace.metadata) == expected
        again = Trace.from_dict(json.loads(json.dumps(trace.to_dict())))
        assert again.ids == trace.ids and dict(again.metadata) == expected


def test_skip_warns_with_counts_and_raise_names_the_row(tok):
    with pytest.warns(SkippedRowsWarning, match=r"skipped 2 of 6 records \(1 unfinished, 1 rep"):
        traces = read_traces(R1, tok, on_error="skip")
    assert len(traces) == len(GOOD)
    with pytest.raises(TraceFormatError, match=r"row 2 \(line 3 of reading_r1_rows.jsonl, id "):
        read_traces(R1, tok)


def test_callable_on_error_gets_every_bad_record_and_no_warning(tok, recwarn):
    skipped: list[SkippedRow] = []
    read_traces(R1, tok, on_error=skipped.append, require_eos=True)
    assert not recwarn.list
    assert {s.index: s.problem for s in skipped} == {**PROBLEMS, 5: "no_eos"}
    records = rows(R1)
    for s in skipped:
        assert s.line == s.index + 1 and s.record == records[s.index]
        assert s.id == records[s.index]["unique_id"]


def test_invalid_json_line_is_a_bad_record(tok, tmp_path):
    path = tmp_path / "traces.jsonl"
    path.write_text(R1.read_text(encoding="utf-8") + "\n{not json\n[1, 2]\n", encoding="utf-8")
    skipped = []
    traces = read_traces(path, tok, on_error=skipped.append)
    assert len(traces) == len(GOOD)
    bad = [s for s in skipped if s.problem == "invalid_row"]
    assert [(s.index, s.line, s.record) for s in bad] == [(6, 8, None), (7, 9, None)]
    assert "not valid JSON" in bad[0].message and "not an object" in bad[1].message


def test_lists_json_files_and_datasets_give_the_same_traces(tok, tmp_path):
    datasets = pytest.importorskip("datasets")
    records = rows(R1)
    path = tmp_path / "traces.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    reference = read_traces(R1, tok, on_error=[].append)
    for source in (records, path, datasets.Dataset.from_list(records)):
        traces = read_traces(source, tok, on_error=[].append)
        assert [t.ids for t in traces] == [t.ids for t in reference]
        assert [dict(t.metadata) for t in traces] == [dict(t.metadata) for t in reference]


def test_token_ids_are_used_as_given_never_retokenized(tok, tmp_path):
    """Ids that tokenizing the decoded text would not give (prompt spelled one character per
    token) must come back unchanged."""
    records = []
    for record in rows(R1):
        prompt = record["response"].removeprefix(EOS).split("<think>")[0]
        rest = record["response"].removeprefix(EOS)[len(prompt) :]
        spelled = [i for ch in prompt for i in tok(ch, add_special_tokens=False)["input_ids"]]
        output = tok(rest, add_special_tokens=False)["input_ids"]
        records.append(
            {
                "unique_id": record["unique_id"],
                "prompt_ids": [tok.bos_token_id, *spelled],
                "output_ids": np.array(output),
                "level": np.int64(record["level"]),
            }
        )
    traces = read_traces(records, tok, ids_field=("prompt_ids", "output_ids"), on_error=[].append)
    assert [t.metadata["row"] for t in traces] == GOOD
    for trace in traces:
        record = records[trace.metadata["row"]]
        ids = [*record["prompt_ids"], *record["output_ids"].tolist()]
        assert list(trace.ids) == ids
        assert list(trace.ids) != tok(trace.text, add_special_tokens=False)["input_ids"]
        assert trace.metadata["level"] == record["level"] and type(trace.metadata["level"]) is int
        assert "prompt_ids" not in trace.metadata and "output_ids" not in trace.metadata


def test_prompt_field_rule(tok):
    """A response without the prompt is joined to it; one that holds it is used alone."""
    records = rows(PROMPTS)
    traces = read_traces(PROMPTS, tok, prompt_field="prompt")
    assert len(traces) == len(records)
    for trace, record in zip(traces, records):
        problem = record["prompt"].split(" Please")[0]
        assert trace.text.count(problem) == 1
        assert trace.text_of("prompt").startswith(problem)
        assert trace.text.startswith(EOS)  # BOS prepended only where missing
        assert trace.text_of("answer").startswith("\n\n$\\boxed")
        assert trace.metadata["prompt"] == record["prompt"]


def test_without_prompt_field_a_response_lacking_think_says_so(tok):
    skipped = []
    traces = read_traces(PROMPTS, tok, on_error=skipped.append)
    assert len(traces) == 2
    assert [(s.index, s.problem) for s in skipped] == [(0, "no_think_open")]
    assert "prompt_field" in skipped[0].message


def test_join_prompt():
    assert join_prompt("Q? ", "<think>a</think>b") == "Q? <think>a</think>b"
    assert join_prompt("Q?", "<s>Q? <think>a</think>b") == "<s>Q? <think>a</think>b"
    assert join_prompt("Q? <think>\n", "a</think>b") == "Q? <think>\na</think>b"
    # a prompt quoted inside the reasoning does not count as present
    assert join_prompt("Q?", " <think>Q? again</think>b") == "Q? <think>Q? again</think>b"


def test_id_field_choice_and_conflicts(tok):
    records = rows(R1)[:2]
    traces = read_traces(records, tok, id_field="problem")
    assert [t.metadata["id"] for t in traces] == [r["problem"] for r in records]
    without = [{k: v for k, v in r.items() if k != "unique_id"} for r in records]
    assert all("id" not in t.metadata for t in read_traces(without, tok))
    with pytest.raises(ValueError, match="no id field 'name'"):
        read_traces(records, tok, id_field="name")
    clash = [{**r, "id": 7} for r in records]
    with pytest.raises(ValueError, match="ambiguous"):
        read_traces(clash, tok, id_field="unique_id")
    assert read_traces(clash, tok)[0].metadata["id"] == 7  # "id" is the first default
    with pytest.raises(ValueError, match="'row'"):
        read_traces([{**r, "row": 1} for r in records], tok)


def test_metadata_must_be_json_plain(tok):
    records = [{**r, "when": datetime.date(2025, 1, 1)} for r in rows(R1)[:2]]
    with pytest.raises(TypeError, match=r"'when'.*metadata_fields"):
        read_traces(records, tok)
    traces = read_traces(records, tok, metadata_fields=["unique_id", "level"])
    assert dict(traces[0].metadata) == {
        "unique_id": records[0]["unique_id"],
        "level": 1,
        "id": records[0]["unique_id"],
        "row": 0,
    }


def test_wrong_text_field_fails_every_record_loudly(tok):
    with pytest.raises(ValueError, match=r"no text field 'output'; the record has fields \["):
        read_traces(R1, tok, text_field="output")
    with pytest.raises(TraceFormatError, match="no record is a trace: skipped 6 of 6"):
        read_traces(R1, tok, text_field="output", on_error="skip")


def test_r2a_convention_and_options_pass_through(tok):
    traces = read_traces(R1, tok, convention="r2a", on_error=[].append)
    assert all(t.convention == "r2a" and len(t["eos"]) == 1 for t in traces)
    # strict=False reads the record with a repeated </think> (the first one closes)
    loose = read_traces(R1, tok, strict=False, on_error=[].append)
    assert [t.metadata["row"] for t in loose] == sorted([*GOOD, 4])
    assert loose[3].text_of("answer").startswith("\n\nHmm, let me check again.")


def test_bad_sources_are_refused_with_the_fix(tok, tmp_path):
    datasets = pytest.importorskip("datasets")
    pd = pytest.importorskip("pandas")
    records = rows(R1)
    with pytest.raises(TypeError, match="one split"):
        read_traces(datasets.DatasetDict({"test": datasets.Dataset.from_list(records)}), tok)
    with pytest.raises(TypeError, match="to_dict\\('records'\\)"):
        read_traces(pd.DataFrame(records), tok)
    with pytest.raises(FileNotFoundError, match="no file"):
        read_traces(tmp_path / "missing.jsonl", tok)
    shutil.copy(R1, tmp_path / "traces.txt")
    with pytest.raises(ValueError, match=r"\.jsonl"):
        read_traces(tmp_path / "traces.txt", tok)
    with pytest.raises(ValueError, match="on_error"):
        read_traces(R1, tok, on_error="keep")  # type: ignore[arg-type]
