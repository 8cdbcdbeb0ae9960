"""Chosen query rows: profiles and rankings at the rows that emit the answer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import reasoning_circuits as rc
from reasoning_circuits.rows import boxed_span, positions, predicting, select_rows, tokens_where


@pytest.fixture(scope="module")
def reasoner():
    return rc.load_model("tiny-reasoner")


@pytest.fixture(scope="module")
def organism_traces(reasoner):
    problems = rc.organism.make_problems(12, seed=5, split="heldout")
    return [
        rc.Trace.from_parts(
            p.question + " ",
            "\n" + p.reasoning + "\n",
            " " + p.gold,
            reasoner.tokenizer,
            append_eos=True,
            metadata={"id": i},
        )
        for i, p in enumerate(problems)
    ]


def test_boxed_span_handles_any_depth_of_braces():
    text = r"so \boxed{1} then \boxed{\frac{\sqrt{3}}{2}} done"
    start, stop = boxed_span(text)
    assert text[start:stop] == r"\frac{\sqrt{3}}{2}"
    assert boxed_span(r"\fbox{x^{2}}") == (6, 11)
    assert boxed_span(r"\boxed{never closed") is None
    assert boxed_span("no box") is None


def test_predicting_picks_the_rows_before_the_target_tokens(tokenizer):
    trace = rc.Trace.from_parts("Q", "\n2+2=4.\n", r" So \boxed{12} it is.", tokenizer)
    rows = predicting()(trace)
    targets = [r + 1 for r in rows]
    assert "".join(trace.text[slice(*trace.offsets[t])] for t in targets).strip() == "12"
    last = rc.Trace.from_parts("Q", "\n2+2=4.\n", " It is 7, not 70 apples.", tokenizer)
    target = [r + 1 for r in predicting("last_number")(last)]
    assert "".join(last.text[slice(*last.offsets[t])] for t in target).strip() == "70"
    assert predicting()(rc.Trace.from_parts("Q", "r", " no digits", tokenizer)) == []


def test_emitting_row_of_the_tiny_reasoner_is_the_one_before_the_value(organism_traces):
    for trace in organism_traces:
        # "The answer is N." with one character per token: the row before N is 3 from the end
        assert predicting()(trace) == [trace["answer"].stop - 3]
        assert trace.text[slice(*trace.offsets[trace["answer"].stop - 2])].isdigit()


def test_chosen_rows_equal_brute_force_from_full_patterns(reasoner, organism_traces):
    traces = organism_traces[:4]
    digits = tokens_where(str.isdigit, segment="reasoning")
    profiles = rc.AttentionProfile.compute(
        reasoner,
        traces,
        queries={"emit": "final_answer", "digits": digits, "fixed": [3, 5]},
        batch_size=3,
    )
    for trace, profile in zip(traces, profiles):
        _, cache = reasoner.run_with_cache(trace.tokens)
        for name, selector in (("emit", predicting()), ("digits", digits), ("fixed", [3, 5])):
            rows = select_rows(trace, selector)
            for layer in range(4):
                pattern = cache[f"blocks.{layer}.attn.hook_pattern"][0]  # [head, q, k]
                expected = pattern[:, rows][:, :, trace["reasoning"].slice].sum(-1).mean(-1)
                assert np.allclose(
                    profile.mass(name, "reasoning")[layer], expected.numpy(), atol=1e-5
                )
        # every query's masses over the key parts sum to 1
        for name in ("emit", "digits", "fixed"):
            assert np.allclose(sum(profile.split(name).values()), 1.0, atol=1e-5)
        assert profile.token_counts[profile.query_names.index("fixed")] == 2


def test_rank_heads_by_the_emitting_row_finds_the_copy_head(reasoner, organism_traces):
    # the model card: L0H5 puts ~0.97 of the emitting row's attention on the reasoning
    profiles = rc.AttentionProfile.compute(
        reasoner, organism_traces, queries={"emit": predicting()}, batch_size=6
    )
    assert list(rc.rank_heads(profiles, query="emit", k=1)) == [rc.Head(0, 5)]
    by_answer = rc.rank_heads(profiles, query="answer", k=3)
    assert rc.Head(0, 5) not in list(by_answer)


def test_query_names_may_not_clash_and_missing_rows_are_nan(gpt2, tokenizer):
    trace = rc.Trace.from_parts("Q", "\n2+2=4.\n", " no digits here", tokenizer)
    with pytest.raises(ValueError, match="clash"):
        rc.AttentionProfile.compute(gpt2, trace, queries={"answer": [1]})
    profile = rc.AttentionProfile.compute(gpt2, trace, queries={"emit": predicting()})
    assert np.isnan(profile.mass("emit", "reasoning")).all()
    with pytest.raises(ValueError, match="query rows must be one of"):
        rc.AttentionProfile.compute(gpt2, trace, queries={"emit": "final_anwser"})
    with pytest.raises(IndexError):
        positions(99)(trace)


def test_profiles_with_queries_round_trip(tmp_path, gpt2, tokenizer):
    trace = rc.Trace.from_parts("Q", "\n2+2=4.\n", " It is 4.", tokenizer)
    profile = rc.AttentionProfile.compute(gpt2, trace, queries={"emit": predicting()})
    again = rc.AttentionProfile.load(profile.save(tmp_path / "p"))
    assert again.queries == ("emit",)
    assert np.array_equal(again.mass("emit", "reasoning"), profile.mass("emit", "reasoning"))
    assert "emit" in set(again.to_frame()["query"])


def test_low_precision_patterns_are_reduced_in_float32(tokenizer):
    model = rc.testing.tiny_gpt2(seed=0)
    trace = rc.Trace.from_parts("Q: 2+2?", "\n2+2=4. So 4.\n" * 8, " The answer is 4.", tokenizer)
    full = rc.AttentionProfile.compute(model, trace)
    model.to(torch.bfloat16)
    half = rc.AttentionProfile.compute(model, trace)
    sums = sum(half.split("answer").values())
    assert np.abs(sums - 1).max() < 1e-5  # a bf16 pattern's rows are only 1 ± 1e-3
    assert np.abs(half.mass("answer", "reasoning") - full.mass("answer", "reasoning")).max() < 0.05
