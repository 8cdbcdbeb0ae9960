"""Trace collection: padding, seeds, records, the resumable JSONL file, the vLLM adapter."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import reasoning_circuits as rc
from reasoning_circuits.collection import (
    RecordSet,
    RecordWriter,
    ResumeMismatchError,
    TraceRecord,
    as_problems,
    collect_traces,
    read_records,
    sample_seed,
    sample_tokens,
)
from reasoning_circuits.collection_vllm import collect_traces_vllm
from reasoning_circuits.errors import (
    ContextLengthError,
    FileFormatError,
    TokenizerMismatchError,
    TraceFormatError,
)
from reasoning_circuits.models import BUILTIN_MODELS
from reasoning_circuits.organism import make_problems

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class DatasetProblem:
    """Stands in for datasets.Problem: anything with .id and .question."""

    id: str
    question: str
    gold: str = ""


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: on a shared 2-core machine two threads made each step ~30x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def reasoner():
    """The tiny reasoner as a plain HF model + tokenizer (no bridge: fast to load)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = BUILTIN_MODELS["tiny-reasoner"]
    return (
        AutoModelForCausalLM.from_pretrained(directory).eval(),
        AutoTokenizer.from_pretrained(directory),
    )


def problems(n: int, seed: int = 0) -> list[DatasetProblem]:
    return [
        DatasetProblem(f"p{i}", p.question, p.gold)
        for i, p in enumerate(make_problems(n, seed=seed, split="heldout"))
    ]


def run(reasoner, items, **kwargs):
    hf, tok = reasoner
    kwargs.setdefault("mode", "finished")  # short completions: " The answer is N.<eos>"
    kwargs.setdefault("max_new_tokens", 24)
    kwargs.setdefault("progress", False)
    return collect_traces(hf, items, tokenizer=tok, **kwargs)


# --------------------------------------------------------------------------- padding
@pytest.mark.parametrize("name", ["gpt2", "qwen"])
def test_left_padded_rows_give_the_unpadded_logits(name, request):
    hf = request.getfixturevalue(name).original_model
    short = torch.tensor([[0, 5, 6, 7, 8]])
    long = torch.tensor([[0, 9, 10, 11, 12, 13, 14, 15]])
    ids = torch.cat([torch.cat([torch.zeros(1, 3, dtype=torch.long), short], 1), long])
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        alone = hf(input_ids=short).logits[0]
        padded = hf(input_ids=ids, attention_mask=mask, position_ids=positions).logits[0, 3:]
        unpositioned = hf(input_ids=ids, attention_mask=mask).logits[0, 3:]
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-5)
    if name == "gpt2":  # why position ids are passed: HF GPT-2 does not derive them
        assert (unpositioned - alone).abs().max() > 1e-2


# --------------------------------------------------------------------------- sampling
def test_sample_tokens_inverse_cdf_by_hand():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]])).repeat(4, 1)
    u = torch.tensor([0.1, 0.49, 0.6, 0.85], dtype=torch.float64)
    assert sample_tokens(logits, u, temperature=1.0).tolist() == [0, 0, 1, 2]
    # top_p=0.6 keeps {0.5, 0.3} (the mass before 0.3 is 0.5 < 0.6), renormalised to 5/8, 3/8
    u = torch.tensor([0.6, 0.62, 0.63, 0.99], dtype=torch.float64)
    assert sample_tokens(logits, u, temperature=1.0, top_p=0.6).tolist() == [0, 0, 1, 1]
    # greedy: the first maximal logit, no uniforms needed
    tied = torch.tensor([[1.0, 3.0, 3.0, 0.0]])
    assert sample_tokens(tied, None, temperature=0.0).tolist() == [1]
    with pytest.raises(ValueError, match="uniform"):
        sample_tokens(tied, None, temperature=1.0)


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.5, 1.0), (2.0, 0.7)])
def test_sample_tokens_follow_the_tempered_nucleus_distribution(temperature, top_p):
    logits = torch.tensor([2.0, 1.0, 0.5, -1.0, 0.0])
    n = 20000
    u = (torch.arange(n, dtype=torch.float64) + 0.5) / n  # evenly spread draws: exact quantiles
    tokens = sample_tokens(logits.repeat(n, 1), u, temperature=temperature, top_p=top_p)
    expected = torch.softmax(logits.double() / temperature, -1)
    order = expected.argsort(descending=True)
    before = expected[order].cumsum(0) - expected[order]
    kept = torch.zeros(5, dtype=torch.bool)
    kept[order[before < top_p]] = True
    expected = torch.where(kept, expected, 0.0)
    expected /= expected.sum()
    freq = torch.bincount(tokens, minlength=5).double() / n
    torch.testing.assert_close(freq, expected, atol=2 / n, rtol=0)


def test_sample_seed_is_a_pinned_hash():
    import hashlib

    # Pinned: changing the derivation would silently change every sample of existing files.
    key = b"reasoning_circuits.collection\x007\x00test/algebra/1.json\x003"
    expected = int.from_bytes(hashlib.sha256(key).digest()[:8], "big") >> 1
    assert sample_seed(7, "test/algebra/1.json", 3) == expected < 2**63
    seeds = {sample_seed(s, i, k) for s in (0, 1) for i in ("a", "b") for k in (0, 1)}
    assert len(seeds) == 8


# --------------------------------------------------------------------------- problems
def test_problem_forms_and_ids():
    q = "a=1. b=a+1. What is b?"
    hashed = as_problems([q])[0][0]
    assert hashed.startswith("q") and as_problems([q]) == [(hashed, q)]
    assert as_problems(make_problems(1, seed=0))[0][0].startswith("q")  # .question, no .id
    assert as_problems([DatasetProblem("x/1", q)]) == [("x/1", q)]
    assert as_problems([(3, q), {"id": "k", "question": q}]) == [("3", q), ("k", q)]
    with pytest.raises(ValueError, match="unique"):
        as_problems([("a", q), ("a", q + " ")])
    with pytest.raises(TypeError, match="pass objects with"):
        as_problems([3.5])
    with pytest.raises(ValueError, match="empty"):
        as_problems([])


# --------------------------------------------------------------------------- generation
def test_greedy_matches_hf_generate_one_prompt_at_a_time(reasoner):
    hf, tok = reasoner
    items = problems(5)
    records = run(reasoner, items, batch_size=8)
    for record in records:
        ids = torch.tensor([record.prompt_ids])
        with torch.no_grad():
            ref = hf.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=24,
                do_sample=False,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
            )[0, ids.shape[1] :].tolist()
        assert list(record.generated_ids) == ref
    assert all(r.finished for r in records)
    by_id = {p.id: p for p in items}
    # the tiny reasoner answers ~20% right without reasoning: at least the format is right
    for r in records:
        assert r.text.startswith(" The answer is ") and r.text.endswith(tok.eos_token)
        assert r.prompt.startswith(by_id[r.id].question)


def test_same_seed_same_samples_whatever_the_batch_and_order(reasoner):
    items = problems(3)
    kwargs = dict(n_samples=3, temperature=1.5, top_p=0.95, seed=11)
    a = run(reasoner, items, batch_size=1, **kwargs)
    b = run(reasoner, items[::-1], batch_size=4, **kwargs)
    assert {r.key: r for r in a} == {r.key: r for r in b}
    assert [r.key for r in a] == [(p.id, s) for p in items for s in range(3)]
    texts = {r.text for r in a}
    assert len(texts) > 1  # at temperature 1.5 the samples are not all the same
    c = run(reasoner, items, batch_size=4, **{**kwargs, "seed": 12})
    assert [r.generated_ids for r in a] != [r.generated_ids for r in c]


@pytest.mark.parametrize("name", ["gpt2", "qwen"])
def test_batching_changes_nothing_on_random_gpt2_and_qwen2(name, request):
    bridge = request.getfixturevalue(name)  # a TransformerBridge is accepted as it is
    items = [("a", "Let me think."), ("b", "The quick brown fox jumps over the lazy dog. A")]
    kwargs = dict(max_new_tokens=12, progress=False, temperature=1.0, n_samples=2, seed=1)
    one = collect_traces(bridge, items, batch_size=1, **kwargs)
    four = collect_traces(bridge, items, batch_size=4, **kwargs)
    assert list(one) == list(four)
    greedy = collect_traces(bridge, items, batch_size=2, max_new_tokens=12, progress=False)
    assert list(greedy) == list(collect_traces(bridge, items, batch_size=1, max_new_tokens=12,
                                               progress=False))  # fmt: skip


def test_length_limit_and_context_limit(reasoner):
    records = run(reasoner, problems(2), mode="reasoning", max_new_tokens=5)
    for r in records:
        assert (r.finished, r.stop_reason, r.n_generated_tokens) == (False, "length", 5)
        with pytest.raises(ValueError, match="unfinished"):
            r.to_trace(reasoner[1])
        assert r.to_trace(reasoner[1], unfinished="skip") is None
    # the tiny reasoner's context is 256: a long budget stops at the context
    padded = DatasetProblem("long", " ".join(["x=1."] * 44) + " What is x?")
    (r,) = run(reasoner, [padded], mode="reasoning", max_new_tokens=1000)
    assert 230 < r.n_prompt_tokens < 250
    total = r.n_prompt_tokens + r.n_generated_tokens
    assert r.finished or (r.stop_reason, total) == ("context", 256)
    with pytest.raises(ContextLengthError, match="context is 256"):
        run(reasoner, [DatasetProblem("huge", "x=1. " * 60)])


def test_training_mode_is_restored_and_dropout_off(reasoner):
    hf, _ = reasoner
    items = problems(2)
    before = run(reasoner, items)
    hf.train()
    try:
        during = run(reasoner, items)
        assert hf.training
    finally:
        hf.eval()
    assert list(before) == list(during)


def test_option_refusals(reasoner):
    with pytest.raises(ValueError, match="identical"):
        run(reasoner, problems(1), n_samples=2)  # greedy
    with pytest.raises(ValueError, match="top_p"):
        run(reasoner, problems(1), temperature=1.0, top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        run(reasoner, problems(1), temperature=float("nan"))
    with pytest.raises(ValueError, match="did you mean 'empty'"):
        run(reasoner, problems(1), mode="emtpy")


# --------------------------------------------------------------------------- records
def test_records_become_traces_from_their_ids(reasoner, tokenizer):
    _, tok = reasoner
    (record,) = run(reasoner, problems(1), mode="reasoning", max_new_tokens=200)
    assert record.finished
    trace = record.to_trace(tok)
    assert trace.ids == record.prompt_ids + record.generated_ids
    assert trace["bos"].stop == 1 and len(trace["eos"]) == 1
    assert trace.text_of("answer").startswith(" The answer is")
    assert trace.metadata["id"] == "p0" and trace.metadata["mode"] == "reasoning"
    assert trace.metadata["prompt"] == record.prompt and record.prompt.endswith(" <think>\n")
    with pytest.raises(TokenizerMismatchError):
        record.to_trace(tokenizer)  # the BPE test tokenizer, not the reasoner's
    assert TraceRecord.from_dict(json.loads(json.dumps(record.to_dict()))) == record


def test_record_consistency_is_checked(reasoner):
    (record,) = run(reasoner, problems(1))
    data = record.to_dict()
    with pytest.raises(FileFormatError, match="n_generated_tokens"):
        TraceRecord.from_dict({**data, "n_generated_tokens": 3})
    with pytest.raises(FileFormatError, match="lacks the fields"):
        TraceRecord.from_dict({k: v for k, v in data.items() if k != "prompt_ids"})
    with pytest.raises(ValueError, match="contradicts"):
        replace(record, finished=False)
    frame = RecordSet((record,)).to_frame()
    assert frame.loc[0, "n_generated_tokens"] == record.n_generated_tokens


# --------------------------------------------------------------------------- files
def lines(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")


def test_file_holds_a_header_and_one_line_per_record(reasoner, tmp_path):
    out = tmp_path / "traces.jsonl"
    records = run(reasoner, problems(3), out=out, seed=4)
    raw = lines(out)
    assert raw[-1] == b"" and len(raw) == 1 + 3 + 1
    header = json.loads(raw[0])
    assert header["kind"] == "TraceRecords" and header["format_version"] == 1
    assert (header["mode"], header["seed"], header["model"]) == ("finished", 4, "tiny-reasoner")
    loaded = read_records(out)
    assert {r.key: r for r in loaded} == {r.key: r for r in records}


def test_read_traces_reads_a_record_file_from_its_ids(reasoner, tokenizer, tmp_path):
    _, tok = reasoner
    out = tmp_path / "traces.jsonl"
    records = run(reasoner, problems(3), out=out, mode="reasoning", max_new_tokens=200)
    cut = run(reasoner, problems(1), out=tmp_path / "cut.jsonl", mode="reasoning", max_new_tokens=3)
    assert all(r.finished for r in records) and not cut[0].finished
    traces = rc.read_traces(out, tok)
    assert [t.ids for t in traces] == [r.prompt_ids + r.generated_ids for r in records]
    assert [t.metadata["id"] for t in traces] == ["p0", "p1", "p2"]
    assert [t.metadata["row"] for t in traces] == [0, 1, 2]
    with pytest.raises(TraceFormatError, match=r"line 2 .*stopped by length"):
        rc.read_traces(tmp_path / "cut.jsonl", tok)
    skipped: list = []
    assert rc.read_traces(tmp_path / "cut.jsonl", tok, on_error=skipped.append) == []
    assert [s.problem for s in skipped] == ["unfinished"]
    with pytest.raises(ValueError, match="text_field would be ignored"):
        rc.read_traces(out, tok, text_field="text")
    with pytest.raises(TokenizerMismatchError):
        rc.read_traces(out, tokenizer)  # the BPE test tokenizer, not the reasoner's


def test_rerun_skips_done_pairs_and_extends(reasoner, tmp_path):
    out = tmp_path / "traces.jsonl"
    kwargs = dict(temperature=1.0, seed=2, out=out)
    first = run(reasoner, problems(2), n_samples=1, **kwargs)
    before = out.read_bytes()
    again = run(reasoner, problems(2), n_samples=1, **kwargs)
    assert out.read_bytes() == before and list(again) == list(first)
    more = run(reasoner, problems(3), n_samples=2, **kwargs)
    keys = [json.loads(line)["id"] + f"/{json.loads(line)['sample']}" for line in lines(out)[1:-1]]
    assert len(keys) == len(set(keys)) == 6
    assert out.read_bytes().startswith(before)  # old lines untouched
    fresh = run(reasoner, problems(3), n_samples=2, temperature=1.0, seed=2)
    assert list(more) == list(fresh)  # resumed == uninterrupted


def test_resume_refuses_other_parameters(reasoner, tmp_path):
    out = tmp_path / "traces.jsonl"
    run(reasoner, problems(1), out=out, temperature=1.0, seed=1)
    for change, key in [
        (dict(seed=2), "seed"),
        (dict(temperature=0.7), "temperature"),
        (dict(mode="empty"), "mode"),
        (dict(model_name="other"), "model"),
    ]:
        args = {"out": out, "temperature": 1.0, "seed": 1, **change}
        with pytest.raises(ResumeMismatchError, match=f"{key}: file"):
            run(reasoner, problems(1), **args)
    changed = [DatasetProblem("p0", "z=3. y=z+1. What is y?")]
    with pytest.raises(ResumeMismatchError, match="another prompt"):
        run(reasoner, changed, out=out, temperature=1.0, seed=1)


def test_a_cut_final_line_is_dropped_on_read_and_removed_on_resume(reasoner, tmp_path):
    out = tmp_path / "traces.jsonl"
    full = run(reasoner, problems(3), out=out)
    data = out.read_bytes()
    last_start = data.rstrip(b"\n").rfind(b"\n") + 1
    out.write_bytes(data[: last_start + 40])  # a run killed while writing the third record
    with pytest.warns(UserWarning, match="partial line"):
        partial = read_records(out)
    assert len(partial) == 2 and partial.skipped_partial == 1
    resumed = run(reasoner, problems(3), out=out)
    assert out.read_bytes() == data and list(resumed) == list(full)


def test_damaged_or_foreign_files_are_refused(reasoner, tmp_path):
    out = tmp_path / "traces.jsonl"
    run(reasoner, problems(2), out=out)
    raw = lines(out)
    damaged = tmp_path / "damaged.jsonl"
    damaged.write_bytes(b"\n".join([raw[0], raw[1][:30], raw[2], b""]))
    with pytest.raises(FileFormatError, match="line 2 is not valid JSON"):
        read_records(damaged)
    with pytest.raises(FileFormatError, match="line 2 is not valid JSON"):
        run(reasoner, problems(2), out=damaged)
    twice = tmp_path / "twice.jsonl"
    twice.write_bytes(b"\n".join([raw[0], raw[1], raw[1], b""]))
    with pytest.raises(FileFormatError, match="twice"):
        read_records(twice)
    foreign = tmp_path / "r2a.jsonl"
    foreign.write_text('{"unique_id": "a", "response": "x"}\n')
    with pytest.raises(FileFormatError, match="not a trace record file"):
        run(reasoner, problems(1), out=foreign)


def test_one_writer_at_a_time_and_no_nan(reasoner, tmp_path):
    out = tmp_path / "traces.jsonl"
    (record,) = run(reasoner, problems(1))
    with RecordWriter(out, record.run_parameters()) as writer:
        with pytest.raises(BlockingIOError, match="another collection"):
            RecordWriter(out, record.run_parameters())
        writer.write(record)
        with pytest.raises(ValueError, match="already in"):
            writer.write(record)
        nan = replace(record, id="nan", temperature=float("nan"))
        with pytest.raises(ResumeMismatchError):
            writer.write(nan)  # another run's record
    from reasoning_circuits.collection import _dumps

    with pytest.raises(ValueError, match="NaN"):
        _dumps({"x": float("inf")})


def test_shards_merge(reasoner, tmp_path):
    items = problems(4)
    for shard in (0, 1):
        run(reasoner, items[shard::2], out=tmp_path / f"s{shard}.jsonl")
    merged = RecordSet.load(tmp_path / "s0.jsonl", tmp_path / "s1.jsonl")
    assert sorted(r.key for r in merged) == sorted((p.id, 0) for p in items)
    assert {r.key: r for r in merged} == {r.key: r for r in run(reasoner, items)}


# --------------------------------------------------------------------------- SIGKILL
_SCRIPT = """
import sys, time
import torch
torch.set_num_threads(1)
from transformers import AutoModelForCausalLM, AutoTokenizer
import reasoning_circuits.collection as collection
from reasoning_circuits.models import BUILTIN_MODELS
from reasoning_circuits.organism import make_problems

out, torn = sys.argv[1], sys.argv[2] == "torn"
directory = BUILTIN_MODELS["tiny-reasoner"]
hf = AutoModelForCausalLM.from_pretrained(directory).eval()
tok = AutoTokenizer.from_pretrained(directory)
items = [(f"p{i}", p.question) for i, p in enumerate(make_problems(30, seed=0, split="heldout"))]
if torn:  # write each line in two halves with a pause, so a kill lands inside a line
    write = collection._write_all
    def slow_write(fd, data):
        write(fd, data[: len(data) // 2]); time.sleep(0.3); write(fd, data[len(data) // 2 :])
    collection._write_all = slow_write
collection.collect_traces(hf, items, tokenizer=tok, mode="finished", n_samples=2,
    temperature=1.0, seed=5, batch_size=4, max_new_tokens=24, out=out, progress=False)
"""


def _kill_when(path: Path, ready, timeout: float = 240.0) -> subprocess.Popen:
    script = path.parent / "collect.py"
    script.write_text(_SCRIPT)
    mode = "torn" if ready is _inside_a_line else "plain"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, str(script), str(path), mode], env=env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and ready(path.read_bytes()):
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return proc
        if proc.poll() is not None:
            raise AssertionError(f"the collection ended (code {proc.returncode}) before the kill")
        time.sleep(0.01)
    proc.kill()
    raise AssertionError("the collection did not write in time")


def _some_records(data: bytes) -> bool:
    return data.count(b"\n") >= 6  # header + 5 records


def _inside_a_line(data: bytes) -> bool:
    return data.count(b"\n") >= 3 and not data.endswith(b"\n")


@pytest.mark.slow
@pytest.mark.parametrize("ready", [_some_records, _inside_a_line], ids=["plain", "torn"])
def test_sigkill_mid_run_loses_at_most_the_record_in_flight(reasoner, tmp_path, ready):
    out = tmp_path / "traces.jsonl"
    proc = _kill_when(out, ready)
    assert proc.returncode == -signal.SIGKILL
    data = out.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    survivors = [json.loads(line) for line in complete.split(b"\n")[1:-1]]  # all parse
    assert 2 <= len(survivors) < 60  # killed mid-run
    if ready is _inside_a_line:
        assert not data.endswith(b"\n")
    with pytest.warns(UserWarning, match="partial") if not data.endswith(b"\n") else _nothing():
        assert len(read_records(out)) == len(survivors)
    kwargs = dict(n_samples=2, temperature=1.0, seed=5, batch_size=4)
    items = [
        (f"p{i}", p.question) for i, p in enumerate(make_problems(30, seed=0, split="heldout"))
    ]
    resumed = run(reasoner, items, out=out, **kwargs)
    keys = [(d["id"], d["sample"]) for d in map(json.loads, lines(out)[1:-1])]
    assert len(keys) == len(set(keys)) == 60
    assert out.read_bytes().startswith(complete)  # what survived is kept as it was
    assert list(resumed) == list(run(reasoner, items, **kwargs))  # == an uninterrupted run


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# --------------------------------------------------------------------------- vLLM adapter
class FakeLLM:
    """Duck-types vllm.LLM: greedy HF generation of each request, EOS kept, seeds recorded."""

    def __init__(self, hf, tok, max_model_len=256):
        self.hf, self.tok, self.calls = hf, tok, []
        self.llm_engine = SimpleNamespace(
            model_config=SimpleNamespace(
                model="fake/tiny-reasoner", max_model_len=max_model_len, hf_config=hf.config
            )
        )

    def get_tokenizer(self):
        return self.tok

    def generate(self, prompts, sampling_params):
        outputs = []
        for prompt, params in zip(prompts, sampling_params):
            self.calls.append((prompt, params))
            ids = torch.tensor([prompt["prompt_token_ids"]])
            with torch.no_grad():
                new = self.hf.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=params.max_tokens,
                    do_sample=False,
                    eos_token_id=params.stop_token_ids,
                    pad_token_id=0,
                )[0, ids.shape[1] :].tolist()
            reason = "stop" if new and new[-1] in params.stop_token_ids else "length"
            completion = SimpleNamespace(token_ids=new, finish_reason=reason, stop_reason=None)
            outputs.append(SimpleNamespace(prompt_token_ids=ids[0].tolist(), outputs=[completion]))
        return outputs


def params(**kwargs):
    return SimpleNamespace(**kwargs)


def test_vllm_adapter_gives_the_hf_records(reasoner, tmp_path):
    hf, tok = reasoner
    items = problems(3)
    llm = FakeLLM(hf, tok)
    out = tmp_path / "vllm.jsonl"
    got = collect_traces_vllm(
        llm, items, mode="finished", max_new_tokens=24, make_params=params, out=out,
        model_name="tiny-reasoner", chunk_size=2, progress=False,
    )  # fmt: skip
    want = run(reasoner, items)
    assert [replace(r, backend="hf") for r in got] == list(want)
    assert json.loads(lines(out)[0])["backend"] == "vllm"
    assert len(llm.calls) == 3 and all(p.skip_special_tokens is False for _, p in llm.calls)
    assert [c[0]["prompt_token_ids"] for c in llm.calls] == [list(r.prompt_ids) for r in want]
    # rerun: nothing left to do; the HF backend may not extend a vLLM file
    collect_traces_vllm(llm, items, mode="finished", max_new_tokens=24, make_params=params,
                        out=out, model_name="tiny-reasoner", progress=False)  # fmt: skip
    assert len(llm.calls) == 3
    with pytest.raises(ResumeMismatchError, match="backend"):
        run(reasoner, items, out=out)


def test_vllm_adapter_seeds_each_request_and_respects_limits(reasoner):
    hf, tok = reasoner
    llm = FakeLLM(hf, tok)
    items = problems(2)
    records = collect_traces_vllm(
        llm, items, mode="reasoning", n_samples=2, temperature=0.6, top_p=0.95,
        max_new_tokens=5, seed=9, make_params=params, progress=False,
    )  # fmt: skip
    seeds = [p.seed for _, p in llm.calls]
    assert seeds == [sample_seed(9, p.id, s) for p in items for s in range(2)]
    assert {(p.temperature, p.top_p, p.max_tokens) for _, p in llm.calls} == {(0.6, 0.95, 5)}
    assert all(r.stop_reason == "length" and r.n_generated_tokens == 5 for r in records)
    assert {r.backend for r in records} == {"vllm"}


def test_vllm_adapter_refuses_a_stop_without_eos(reasoner):
    hf, tok = reasoner
    llm = FakeLLM(hf, tok)
    real = llm.generate

    def strip_eos(prompts, sampling_params):
        outs = real(prompts, sampling_params)
        for o in outs:
            o.outputs[0].token_ids = o.outputs[0].token_ids[:-1]
        return outs

    llm.generate = strip_eos
    with pytest.raises(RuntimeError, match="without an EOS"):
        collect_traces_vllm(llm, problems(1), mode="finished", make_params=params, progress=False)


def test_vllm_adapter_says_how_to_install_vllm(reasoner):
    pytest.importorskip("transformers")
    try:
        import vllm  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("vLLM is installed")
    with pytest.raises(ImportError, match=r"reasoning_circuits\[vllm\]"):
        collect_traces_vllm(FakeLLM(*reasoner), problems(1), progress=False)


def test_bridge_and_its_hf_model_give_the_same_records(gpt2):
    items = [("a", "Let me think.")]
    via_bridge = collect_traces(gpt2, items, max_new_tokens=6, progress=False)
    via_hf = collect_traces(
        gpt2.original_model, items, tokenizer=gpt2.tokenizer, max_new_tokens=6, progress=False,
        model_name=via_bridge[0].model,
    )  # fmt: skip
    assert list(via_bridge) == list(via_hf)
    assert rc.Trace  # the package imports alongside the new modules
