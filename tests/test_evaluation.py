"""evaluate(): the funnel, ITT vs valid set, exact McNemar by hand, cluster-aware intervals,
breakdowns, refusals, save/load and the plot."""

from __future__ import annotations

import math
from math import comb

import numpy as np
import pytest

from reasoning_circuits import stats
from reasoning_circuits.collection import RecordSet, TraceRecord
from reasoning_circuits.datasets import Problem
from reasoning_circuits.errors import FileFormatError
from reasoning_circuits.evaluation import (
    Evaluation,
    EvaluationInputError,
    answer_text,
    evaluate,
)
from reasoning_circuits.trace import TokenizerFingerprint

FP = TokenizerFingerprint("fake", 100, "0" * 16)
EOS = "<|endoftext|>"


def record(pid, text, *, sample=0, mode="reasoning", finished=True, model="m", temperature=0.0):
    prompt = "Q <think>\n" if mode == "reasoning" else "Q <think>\n\n</think>"
    return TraceRecord(
        id=pid,
        sample=sample,
        question="Q",
        prompt=prompt,
        prompt_ids=(1, 2),
        generated_ids=(3, 4),
        text=text,
        finished=finished,
        stop_reason="eos" if finished else "length",
        model=model,
        tokenizer=FP,
        mode=mode,
        template="raw",
        instruction="",
        temperature=temperature,
        top_p=1.0,
        seed=0,
        max_new_tokens=10,
        stop_token_ids=(0,),
    )


def problems(n, *, subject=None, level=None):
    return [
        Problem(
            f"p{i}",
            f"question {i}",
            "7",
            "gsm8k",
            {} if subject is None else {"subject": subject[i], "level": level[i]},
        )
        for i in range(n)
    ]


def with_answer(pid, value, sample=0):
    return record(pid, f"reasoning\n</think> The answer is {value}.{EOS}", sample=sample)


def without_answer(pid, value, sample=0):
    return record(pid, f" The answer is {value}.{EOS}", sample=sample, mode="finished")


def arms_from_table(both, lost, gained, neither):
    """Records whose with/without correctness make the 2×2 table (with = "after")."""
    w, wo = [], []
    i = 0
    for n, (right_with, right_without) in (
        (both, (1, 1)),
        (gained, (1, 0)),
        (lost, (0, 1)),
        (neither, (0, 0)),
    ):
        for _ in range(n):
            w.append(with_answer(f"p{i}", 7 if right_with else 3))
            wo.append(without_answer(f"p{i}", 7 if right_without else 3))
            i += 1
    return w, wo, problems(i)


# ------------------------------------------------------------------------------ answer segment
@pytest.mark.parametrize(
    ("text", "mode", "answer"),
    [
        ("a\n</think> The answer is 7.<|endoftext|>", "reasoning", "The answer is 7."),
        ("a</think> 7 <｜end▁of▁sentence｜>", "reasoning", "7"),
        ("a</think> 7</s>", "reasoning", "7"),
        ("never closed", "reasoning", None),
        ("a</think> b</think> 7", "reasoning", None),
        ("a<think>b</think> 7", "reasoning", None),
        ("a</think>  <|endoftext|>", "reasoning", None),
        (" The answer is 7.<|endoftext|>", "finished", "The answer is 7."),
        (" 7 </think> 8", "empty", None),
    ],
)
def test_answer_text(text, mode, answer):
    assert answer_text(text, mode)[0] == answer


# ------------------------------------------------------------------------------ funnel
def test_funnel_counts_on_hand_made_records():
    w = [
        with_answer("p0", 7),  # correct
        with_answer("p1", 3),  # wrong
        record("p2", "reasoning that ran out", finished=False),  # unfinished
        record("p3", "reasoning and no close" + EOS),  # finished, never closed: malformed
        record("p4", "r</think> r</think> 7" + EOS),  # two closes: malformed
        record("p5", "r</think> no digits here" + EOS),  # no answer
        record("p6", "r</think> $\\boxed{7" + EOS),  # unclosed box: malformed (grader)
        record("p7", "r</think>" + EOS),  # empty answer: malformed
    ]
    wo = [without_answer(f"p{i}", 7) for i in range(8)]
    wo[1] = record("p1", " </think> 7" + EOS, mode="finished")  # a tag: malformed
    result = evaluate(w, wo, problems(8), kind="gsm8k", n_resamples=200)
    f = result.funnel().set_index("arm")
    assert f.loc["with", ["total", "finished", "well_formed", "extracted", "correct"]].tolist() == [
        8,
        7,
        4,
        2,
        1,
    ]
    assert f.loc["with", ["unfinished", "malformed", "no_answer", "wrong"]].tolist() == [1, 4, 1, 1]
    assert f.loc[
        "without", ["total", "finished", "well_formed", "extracted", "correct"]
    ].tolist() == [
        8,
        8,
        7,
        7,
        7,
    ]
    # valid in both: p0 and p1 are extracted with reasoning; p1 is malformed without
    assert f.loc["with", "valid_both"] == 1
    frame = result.to_frame().set_index(["set", "arm"])
    assert frame.loc[("itt", "with"), "correct"] == 1
    assert frame.loc[("itt", "with"), "estimate"] == pytest.approx(1 / 8)
    assert frame.loc[("itt", "without"), "estimate"] == pytest.approx(7 / 8)
    # one valid problem < min_group: a note, no interval
    assert math.isnan(frame.loc[("valid", "difference"), "estimate"])
    assert "fewer than min_group" in frame.loc[("valid", "difference"), "note"]


# ------------------------------------------------------------------------------ statistics
def exact_mcnemar_by_hand(b, c):
    """Two-sided exact McNemar: 2·P(X ≤ min(b, c)) for X ~ Binomial(b + c, 1/2), capped at 1."""
    n = b + c
    tail = sum(comb(n, k) for k in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


@pytest.mark.parametrize(
    ("both", "lost", "gained", "neither"),
    [(10, 1, 6, 3), (5, 2, 2, 1), (20, 0, 5, 5), (3, 4, 0, 3)],
)
def test_itt_difference_is_exact_mcnemar_and_wilson(both, lost, gained, neither):
    w, wo, ps = arms_from_table(both, lost, gained, neither)
    result = evaluate(w, wo, ps, kind="gsm8k", n_resamples=1000)
    itt = result.sets["itt"]
    n = both + lost + gained + neither
    assert itt.n_problems == n
    assert itt.p_value == pytest.approx(exact_mcnemar_by_hand(lost, gained), rel=1e-9)
    # (10, 1, 6, 3): p = 2·(1 + 7)/2^7 = 0.125, by hand
    if (both, lost, gained) == (10, 1, 6):
        assert itt.p_value == pytest.approx(0.125)
    assert itt.difference.difference.estimate == pytest.approx((gained - lost) / n)
    assert itt.accuracy_with.estimate == pytest.approx((both + gained) / n)
    # Wilson by its formula
    k, z = both + gained, 1.959963984540054
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert itt.accuracy_with.low == pytest.approx(centre - half, abs=1e-9)
    assert itt.accuracy_with.high == pytest.approx(centre + half, abs=1e-9)
    # every problem is valid here: the valid set equals ITT
    assert result.sets["valid"].p_value == pytest.approx(itt.p_value)


def test_bootstrap_interval_brackets_the_difference_and_is_reproducible():
    w, wo, ps = arms_from_table(30, 3, 12, 5)
    a = evaluate(w, wo, ps, kind="gsm8k", n_resamples=2000, seed=1)
    b = evaluate(w, wo, ps, kind="gsm8k", n_resamples=2000, seed=1)
    boot = a.sets["itt"].bootstrap
    assert boot == b.sets["itt"].bootstrap
    assert boot.low < 9 / 50 < boot.high
    # d takes values in {-1, 0, 1} with shares 3/50, 35/50, 12/50: sd of the mean by formula
    d = np.array([-1] * 3 + [0] * 35 + [1] * 12)
    se = d.std() / math.sqrt(d.size)
    assert boot.width == pytest.approx(2 * 1.96 * se, rel=0.15)


def test_itt_and_valid_set_differ_when_reasoning_runs_out_on_hard_problems():
    # 10 problems: reasoning right on the 6 it finishes, out of tokens on 4 (hard ones);
    # without reasoning right on 5 (the easy ones), wrong on the hard ones.
    w = [with_answer(f"p{i}", 7) for i in range(6)]
    w += [record(f"p{i}", "long", finished=False) for i in range(6, 10)]
    wo = [without_answer(f"p{i}", 7 if i < 5 else 3) for i in range(10)]
    result = evaluate(w, wo, problems(10), kind="gsm8k", n_resamples=500, min_group=2)
    assert result.sets["itt"].accuracy_with.estimate == pytest.approx(0.6)
    assert result.sets["valid"].n_problems == 6
    assert result.sets["valid"].accuracy_with.estimate == pytest.approx(1.0)
    assert result.sets["valid"].accuracy_without.estimate == pytest.approx(5 / 6)


def test_several_samples_give_cluster_intervals_wider_than_naive():
    # 40 problems × 4 samples; samples of a problem agree (an easy problem is right in all),
    # so the effective sample size is 40, not 160.
    rng = np.random.default_rng(0)
    easy_with = rng.random(40) < 0.6
    easy_without = rng.random(40) < 0.4
    w, wo = [], []
    for i in range(40):
        for s in range(4):
            flip = rng.random() < 0.1
            w.append(with_answer(f"p{i}", 7 if easy_with[i] != flip else 3, sample=s))
            wo.append(without_answer(f"p{i}", 7 if easy_without[i] else 3, sample=s))
    w = [r.__class__(**{**r.__dict__, "temperature": 0.6}) for r in w]
    result = evaluate(w, wo, problems(40), kind="gsm8k", n_resamples=2000)
    assert result.n_samples == {"with": 4, "without": 4}
    itt = result.sets["itt"]
    k = sum(r.text.count("is 7.") for r in w)
    naive = stats.proportion_ci(k, 160)
    assert itt.accuracy_with.estimate == pytest.approx(k / 160)
    assert itt.accuracy_with.width > 1.5 * naive.width
    # the same interval as resampling whole problems
    correct = np.array([r.text.count("is 7.") for r in w], dtype=float)
    cluster = stats.cluster_bootstrap_ci(
        correct, [r.id for r in w], statistic="cluster_mean", n_resamples=2000
    )
    assert itt.accuracy_with.low == pytest.approx(cluster.low, abs=1e-9)
    assert itt.accuracy_with.high == pytest.approx(cluster.high, abs=1e-9)
    # the difference: paired t on per-problem pass rates, n = 40 problems
    assert itt.difference.tests[0].name == "paired t"
    assert itt.difference.tests[0].n == 40
    naive_diff = stats.paired_binary(
        [r.text.count("is 7.") for r in wo], [r.text.count("is 7.") for r in w]
    )
    assert itt.difference.difference.width > 1.5 * naive_diff.difference.width
    table = result.per_problem()
    assert len(table) == 40 and set(table["n_with"]) == {4}
    assert table["pass_with"].mean() == pytest.approx(k / 160)


def test_breakdown_by_subject_and_level_with_holm_and_small_groups():
    subjects = ["Algebra"] * 12 + ["Geometry"] * 12 + ["Tiny"] * 2
    levels = [1, 2] * 13
    w, wo = [], []
    for i in range(26):
        w.append(with_answer(f"p{i}", 7 if i % 3 else 3))
        wo.append(without_answer(f"p{i}", 7 if i % 2 else 3))
    ps = problems(26, subject=subjects, level=levels)
    result = evaluate(w, wo, ps, kind="gsm8k", n_resamples=500)
    assert result.fields == ("subject", "level")
    table = result.breakdown("subject")
    itt = table[table["set"] == "itt"].set_index("group")
    assert list(itt.index) == ["Algebra", "Geometry", "Tiny"]
    assert itt.loc["Tiny", "n_problems"] == 2
    assert math.isnan(itt.loc["Tiny", "difference"])
    assert "fewer than min_group" in itt.loc["Tiny", "note"]
    # each group's numbers are the overall statistics on its problems alone
    alone = evaluate(w[:12], wo[:12], ps[:12], kind="gsm8k", n_resamples=500)
    assert itt.loc["Algebra", "p_value"] == pytest.approx(alone.sets["itt"].p_value)
    assert itt.loc["Algebra", "acc_with"] == pytest.approx(alone.sets["itt"].accuracy_with.estimate)
    # Holm over the two tested groups: min(1, 2·p_min), then the step-down maximum
    p = sorted(itt["p_value"].dropna())
    expected = [min(1, 2 * p[0]), min(1, max(2 * p[0], p[1]))]
    assert sorted(itt["p_holm"].dropna()) == pytest.approx(expected)
    assert set(result.breakdown("level")["group"]) == {1, 2}
    with pytest.raises(KeyError, match="no breakdown by 'hops'"):
        result.breakdown("hops")


# ------------------------------------------------------------------------------ refusals
def test_refuses_different_problem_sets_naming_counts_and_examples():
    w, wo, ps = arms_from_table(5, 1, 1, 1)
    with pytest.raises(EvaluationInputError) as err:
        evaluate(w, wo[:-2], ps, kind="gsm8k")
    message = str(err.value)
    assert "2 only with reasoning" in message and "'p6'" in message and "shared" in message


def test_refuses_records_without_gold():
    w, wo, ps = arms_from_table(5, 1, 1, 1)
    with pytest.raises(EvaluationInputError, match=r"not in problems.*'p7'"):
        evaluate(w, wo, ps[:7], kind="gsm8k")
    open_ended = [Problem(p.id, p.question, None, None) for p in ps]
    with pytest.raises(EvaluationInputError, match=r"no gold answer.*judging"):
        evaluate(w, wo, open_ended)


def test_refuses_duplicates_mixed_arms_empty_input_and_typos():
    w, wo, ps = arms_from_table(5, 1, 1, 1)
    with pytest.raises(EvaluationInputError, match=r"\(id, sample\) pairs more than once.*'p0'"):
        evaluate([*w, w[0]], wo, ps, kind="gsm8k")
    mixed = [*wo[:4], *(record(r.id, r.text, mode="empty") for r in wo[4:])]
    with pytest.raises(EvaluationInputError, match="different mode"):
        evaluate(w, mixed, ps, kind="gsm8k")
    other_model = [*w[:4], *(record(r.id, r.text, model="other") for r in w[4:])]
    with pytest.raises(EvaluationInputError, match=r"different model.*'other'"):
        evaluate(other_model, wo, ps, kind="gsm8k")
    with pytest.raises(EvaluationInputError, match="swap"):
        evaluate(wo, w, ps, kind="gsm8k")
    with pytest.raises(EvaluationInputError, match="with_runs is empty"):
        evaluate([], wo, ps, kind="gsm8k")
    with pytest.raises(ValueError, match="did you mean 'gsm8k'"):
        evaluate(w, wo, ps, kind="gsm8")
    with pytest.raises(EvaluationInputError, match="kind='math' but the problems"):
        evaluate(w, wo, ps, kind="math")
    with pytest.raises(ValueError, match="no metadata field 'subjekt'"):
        evaluate(w, wo, ps, kind="gsm8k", by=("subjekt",))
    uneven = [*w, with_answer("p0", 7, sample=1)]
    with pytest.raises(EvaluationInputError, match=r"unequal number of samples.*same out="):
        evaluate(uneven, wo, ps, kind="gsm8k")


# ------------------------------------------------------------------------------ files and views
def test_save_load_round_trip_and_paths(tmp_path):
    w, wo, ps = arms_from_table(8, 2, 5, 3)
    RecordSet(tuple(w)).save(tmp_path / "with.jsonl")
    RecordSet(tuple(wo)).save(tmp_path / "without.jsonl")
    result = evaluate(tmp_path / "with.jsonl", str(tmp_path / "without.jsonl"), ps, kind="gsm8k")
    path = result.save(tmp_path / "eval")
    back = Evaluation.load(path)
    assert back.sets == result.sets and back.outcomes == result.outcomes
    assert back.to_frame().equals(result.to_frame())
    assert repr(back) == repr(result)
    assert "itt n=18" in repr(result) and "p=" in repr(result)
    with pytest.raises(FileFormatError):
        stats_file = tmp_path / "other.npz"
        from reasoning_circuits._store import save_npz

        save_npz(stats_file, "PatchSweep", {}, {})
        Evaluation.load(stats_file)


def test_plot_has_bars_with_intervals(tmp_path):
    w, wo, ps = arms_from_table(8, 2, 5, 3)
    result = evaluate(w, wo, ps, kind="gsm8k", n_resamples=200)
    fig = result.plot(path=tmp_path / "bars.png", title="a " * 80)
    ax = fig.axes[0]
    assert len(ax.patches) == 4  # two arms × two sets
    heights = sorted(p.get_height() for p in ax.patches)
    assert heights == pytest.approx(sorted([13 / 18, 10 / 18] * 2))
    assert (tmp_path / "bars.png").stat().st_size > 1000
    assert "\n" in fig._suptitle.get_text()  # a long title wraps
