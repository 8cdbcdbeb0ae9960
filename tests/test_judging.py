"""judging: the judge prompt (answer segment only), score parsing, judge_runs with a fake judge."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.stats

from reasoning_circuits.datasets import Problem, load_wildbench
from reasoning_circuits.errors import FileFormatError
from reasoning_circuits.evaluation import EvaluationInputError
from reasoning_circuits.judging import (
    JUDGE_TEMPLATE,
    Judgement,
    UnjudgeableResponseError,
    judge_prompt,
    judge_runs,
    parse_score,
    read_score,
)
from tests.test_evaluation import EOS, record

FIXTURES = Path(__file__).parent / "fixtures"
CASES = [json.loads(line) for line in (FIXTURES / "judging_replies.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------ parsing
@pytest.mark.parametrize("case", CASES, ids=[c["reply"][:40] for c in CASES])
def test_read_score_on_hand_checked_replies(case):
    reading = read_score(case["reply"])
    assert reading.score == case["score"]
    assert reading.reason == case["reason"]
    assert parse_score(case["reply"]) == case["score"]
    if case["score"] is None:
        assert reading.detail  # says why


def test_parse_score_refuses_non_text():
    with pytest.raises(TypeError, match="must be a str"):
        parse_score(7)


# ------------------------------------------------------------------------------ the prompt
def test_prompt_holds_question_history_checklist_and_the_answer_only():
    problems = load_wildbench(FIXTURES / "datasets_wildbench.jsonl")
    multi = problems[1]  # three turns: the last user turn is the question
    response = "I recall that SECRET-REASONING matters.\n</think> Canberra was a compromise {x}."
    prompt = judge_prompt(multi, response + EOS)
    assert "Why was it chosen over Sydney?" in prompt
    assert "The capital of Australia is Canberra." in prompt  # history
    assert "1. Does it mention the Sydney-Melbourne rivalry?" in prompt
    assert "Canberra was a compromise {x}." in prompt  # braces of the response kept
    assert "SECRET-REASONING" not in prompt and "</think>" not in prompt and EOS not in prompt
    assert '{"strengths": "...", "weaknesses": "...", "score"' in prompt
    # without reasoning, the whole response is the answer
    plain = judge_prompt(problems[0], "Cold rain on red leaves", think="optional")
    assert "Cold rain on red leaves" in plain and "(none: this is the first turn)" in plain


def test_prompt_refuses_unfinished_and_malformed_responses():
    problem = load_wildbench(FIXTURES / "datasets_wildbench.jsonl")[0]
    with pytest.raises(UnjudgeableResponseError, match="never closed") as err:
        judge_prompt(problem, "still thinking about haiku")
    assert err.value.reason == "unfinished"
    with pytest.raises(UnjudgeableResponseError) as err:
        judge_prompt(problem, "r</think> answer </think> again")
    assert err.value.reason == "malformed"
    with pytest.raises(UnjudgeableResponseError) as err:
        judge_prompt(problem, "r</think>  " + EOS)
    assert err.value.reason == "empty"
    with pytest.raises(ValueError, match="no \\{response\\} field"):
        judge_prompt(problem, "r</think> a", template="Question: {question}")
    with pytest.raises(ValueError, match="did you mean 'optional'"):
        judge_prompt(problem, "a", think="optinal")


def test_custom_template_fields_and_literal_braces():
    problem = Problem("t", "Say hi.", None, None, {"checklist": ["Is it short?"]})
    prompt = judge_prompt(
        problem, "hi", think="optional", template="{question}|{response}|{checklist}|{{x}}"
    )
    assert prompt == "Say hi.|hi|1. Is it short?|{x}"
    assert "{history}" in JUDGE_TEMPLATE


# ------------------------------------------------------------------------------ judge_runs
TAGS = ["Creative Writing"] * 8 + ["Coding & Debugging"] * 8 + ["Math"] * 2


def tasks():
    return [
        Problem(f"t{i}", f"task {i}", None, None, {"primary_tag": tag, "checklist": ["ok?"]})
        for i, tag in enumerate(TAGS)
    ]


def quality(i, arm):
    """The planted quality: creative tasks gain 2 with reasoning (± noise), coding gains 0."""
    base = 5 + (i % 3)
    if arm == "without":
        return base
    return base + (2 + i % 2 if TAGS[i] == "Creative Writing" else (-1) ** (i // 2))


def runs():
    w = [record(f"t{i}", f"r</think> QUALITY={quality(i, 'with')}" + EOS) for i in range(18)]
    wo = [
        record(f"t{i}", f" QUALITY={quality(i, 'without')}" + EOS, mode="finished")
        for i in range(18)
    ]
    return w, wo


class FakeJudge:
    """Scores the QUALITY written in the response; answers some prompts with junk first."""

    def __init__(self, junk_first=()):
        self.calls = []
        self.junk_first = set(junk_first)

    def __call__(self, prompt):
        self.calls.append(prompt)
        value = int(re.search(r"QUALITY=(\d+)", prompt).group(1))
        if value in self.junk_first:
            self.junk_first.discard(value)
            return "I cannot decide."
        return f'```json\n{{"strengths": "s", "weaknesses": "w", "score": {value}}}\n```'


def test_judge_runs_scores_compares_per_area_and_matches_a_paired_t_test():
    w, wo = runs()
    judge = FakeJudge()
    result = judge_runs(tasks(), w, wo, judge, n_resamples=500, min_group=3)
    assert len(judge.calls) == 36
    assert all("</think>" not in call for call in judge.calls)
    frame = result.to_frame().set_index("area")
    assert list(frame.index) == ["all", "Coding & Analysis", "Creative"]  # Math → Coding & ...
    with_scores = np.array([quality(i, "with") for i in range(18)], dtype=float)
    without_scores = np.array([quality(i, "without") for i in range(18)], dtype=float)
    t = scipy.stats.ttest_rel(with_scores, without_scores)
    assert frame.loc["all", "p_value"] == pytest.approx(t.pvalue)
    assert frame.loc["all", "difference"] == pytest.approx((with_scores - without_scores).mean())
    assert frame.loc["all", "mean_with"] == pytest.approx(with_scores.mean())
    creative = [i for i, tag in enumerate(TAGS) if tag == "Creative Writing"]
    t_creative = scipy.stats.ttest_rel(with_scores[creative], without_scores[creative])
    assert frame.loc["Creative", "p_value"] == pytest.approx(t_creative.pvalue)
    p = frame.loc[["Coding & Analysis", "Creative"], "p_value"].to_numpy()
    holm = [min(1, 2 * p.min()), min(1, max(2 * p.min(), p.max()))]
    assert sorted(frame.loc[["Coding & Analysis", "Creative"], "p_holm"]) == pytest.approx(holm)
    assert frame.loc["Creative", "p_holm"] < 0.05 < frame.loc["Coding & Analysis", "p_holm"]


def test_unparseable_replies_are_retried_then_counted():
    w, wo = runs()
    # quality 5 appears in several responses: the first call for it returns junk, once
    judge = FakeJudge(junk_first={5})
    result = judge_runs(tasks(), w, wo, judge, retries=1, n_resamples=500)
    scores = result.scores()
    assert (scores["status"] == "scored").all()
    assert scores["attempts"].max() == 2 and (scores["attempts"] == 2).sum() == 1
    never = judge_runs(tasks(), w, wo, lambda prompt: "no idea", retries=2, n_resamples=500)
    s = never.scores()
    assert (s["status"] == "unparseable").all() and (s["attempts"] == 3).all()
    assert "none" in s["detail"].iloc[0]
    assert never.overall.difference is None and "only 0 tasks" in never.overall.note


def test_unfinished_malformed_empty_and_missing_policies():
    w, wo = runs()
    w[0] = record("t0", "thinking forever", finished=False)
    w[1] = record("t1", "r</think> a </think> b" + EOS)
    w[2] = record("t2", "r</think>" + EOS)
    judge = FakeJudge()
    result = judge_runs(tasks(), w, wo, judge, n_resamples=500)
    s = result.scores().set_index(["arm", "id"])
    assert s.loc[("with", "t0"), "status"] == "unfinished"
    assert s.loc[("with", "t1"), "status"] == "malformed"
    assert s.loc[("with", "t2"), "status"] == "empty" and s.loc[("with", "t2"), "score"] == 1.0
    assert len(judge.calls) == 36 - 3
    assert result.overall.n_tasks == 16  # t0 and t1 dropped; the empty t2 scored 1
    lowest = judge_runs(tasks(), w, wo, FakeJudge(), missing="lowest", n_resamples=500)
    assert lowest.overall.n_tasks == 18
    assert lowest.overall.mean_with.estimate < result.overall.mean_with.estimate
    excluded = judge_runs(tasks(), w, wo, FakeJudge(), exclude_tags=["math"], n_resamples=500)
    assert {r.id for r in excluded.responses} == {f"t{i}" for i in range(16)}


def test_refusals_and_round_trip(tmp_path):
    w, wo = runs()
    with pytest.raises(EvaluationInputError, match="2 only with reasoning"):
        judge_runs(tasks(), w, wo[:-2], FakeJudge())
    with pytest.raises(EvaluationInputError, match="not in problems"):
        judge_runs(tasks()[:10], w, wo, FakeJudge())
    with pytest.raises(ValueError, match="did you mean 'drop'"):
        judge_runs(tasks(), w, wo, FakeJudge(), missing="dorp")
    with pytest.raises(TypeError, match="callable"):
        judge_runs(tasks(), w, wo, "gpt-4o")
    with pytest.raises(RuntimeError, match="the judge raised on task 't0'"):
        judge_runs(tasks(), w, wo, lambda prompt: 1 / 0)
    result = judge_runs(tasks(), w, wo, FakeJudge(), n_resamples=500)
    back = Judgement.load(result.save(tmp_path / "judged"))
    assert back.to_frame().equals(result.to_frame())
    assert back.scores().equals(result.scores())
    assert repr(back) == repr(result) and "18 tasks" in repr(result)
    assert not math.isnan(back.overall.p_value)


def test_bad_statistics_options_are_refused_before_any_judge_call_and_one_tag_is_a_tag():
    w, wo = runs()
    judge = FakeJudge()
    for bad in ({"confidence": 95}, {"n_resamples": 0}, {"min_group": 0}):
        with pytest.raises(ValueError):
            judge_runs(tasks(), w, wo, judge, **bad)
    assert judge.calls == []  # nothing was spent
    one = judge_runs(tasks(), w, wo, judge, n_resamples=500, min_group=3, exclude_tags="Math")
    listed = judge_runs(
        tasks(), w, wo, FakeJudge(), n_resamples=500, min_group=3, exclude_tags=["Math"]
    )
    assert one.to_frame().equals(listed.to_frame())


def test_a_judge_that_fails_half_way_is_resumed_from_the_reply_cache(tmp_path):
    w, wo = runs()
    cache = tmp_path / "replies.jsonl"

    class Flaky(FakeJudge):
        def __call__(self, prompt):
            if len(self.calls) == 10:
                raise ConnectionError("rate limited")
            return super().__call__(prompt)

    with pytest.raises(RuntimeError, match="rate limited"):
        judge_runs(tasks(), w, wo, Flaky(), n_resamples=500, min_group=3, cache=cache)
    with open(cache, "ab") as handle:  # a run killed mid-write leaves a cut line
        handle.write(b'{"key": "abc')
    second = FakeJudge()
    resumed = judge_runs(tasks(), w, wo, second, n_resamples=500, min_group=3, cache=cache)
    assert len(second.calls) == 36 - 10  # only the prompts the first run did not get back
    clean = judge_runs(tasks(), w, wo, FakeJudge(), n_resamples=500, min_group=3)
    assert resumed.to_frame().equals(clean.to_frame())
    again = FakeJudge()
    judge_runs(tasks(), w, wo, again, n_resamples=500, min_group=3, cache=cache)
    assert again.calls == []  # everything is in the cache now
    (tmp_path / "other.jsonl").write_text('{"kind": "TraceRecords"}\n')
    with pytest.raises(FileFormatError, match="judge reply cache"):
        judge_runs(tasks(), w, wo, FakeJudge(), cache=tmp_path / "other.jsonl")
