import math

import numpy as np
import pytest
import scipy.stats
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import reasoning_circuits as rc
from reasoning_circuits import AttentionProfile, ProfileSet, Trace

ALL = ("mass", "per_token", "entropy", "gini")
_text = st.text(alphabet=st.sampled_from(list("abc xyz 0123.+=\n")), min_size=1, max_size=40)


def make_trace(tokenizer, prompt="Q: 3+4? ", reasoning="\n3+4=7. Check: 7.\n", answer=" It is 7."):
    return Trace.from_parts(prompt, reasoning, answer, tokenizer, append_eos=True)


def brute_force(model, trace, by="segments"):
    """Every statistic straight from its definition, from full cached patterns."""
    _, cache = model.run_with_cache(trace.tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    names, labels = trace.partition(by)
    n_layers, n_heads, n_parts, n = model.cfg.n_layers, model.cfg.n_heads, len(names), len(trace)
    mass = np.full((n_layers, n_heads, n_parts, n_parts), np.nan)
    per_token = np.full_like(mass, np.nan)
    entropy = np.full((n_layers, n_heads, n_parts), np.nan)
    gini = np.full_like(entropy, np.nan)
    for layer in range(n_layers):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"][0].double().numpy()
        for head in range(n_heads):
            a = pattern[head]
            for qs in range(n_parts):
                rows = np.flatnonzero(labels == qs)
                if len(rows) == 0:
                    continue
                for ks in range(n_parts):
                    mass[layer, head, qs, ks] = np.mean([a[q, labels == ks].sum() for q in rows])
                    vals = []
                    for q in rows:
                        seen = np.flatnonzero((labels == ks) & (np.arange(n) <= q))
                        if len(seen):
                            vals.append(a[q, seen].sum() / len(seen))
                    per_token[layer, head, qs, ks] = np.mean(vals) if vals else np.nan
                ents, ginis = [], []
                for q in rows:
                    if q + 1 < 2:
                        continue
                    row = a[q, : q + 1]
                    ents.append(-(row[row > 0] * np.log(row[row > 0])).sum() / math.log(q + 1))
                    # Gini by the mean absolute difference over the causal support
                    ginis.append(
                        np.abs(row[:, None] - row[None, :]).sum() / (2 * len(row) * row.sum())
                    )
                entropy[layer, head, qs] = np.mean(ents) if ents else np.nan
                gini[layer, head, qs] = np.mean(ginis) if ginis else np.nan
    return mass, per_token, entropy, gini


@pytest.mark.parametrize("model_name", ["gpt2", "qwen"])
@pytest.mark.parametrize("by", ["segments", "sentences"])
@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("slices", [False, True])
def test_matches_brute_force_from_full_patterns(
    request, monkeypatch, model_name, by, chunked, slices
):
    if chunked:  # blocks of 16 rows: exercises the causal truncation of each row chunk
        monkeypatch.setattr(rc.attention, "_CHUNK_ELEMENTS", 16)
    # key masses by slice sums over contiguous parts, or by the one-hot matmul
    monkeypatch.setattr(rc.attention, "_SLICE_PARTS_MAX", 64 if slices else 0)
    model = request.getfixturevalue(model_name)
    trace = make_trace(model.tokenizer)
    profile = AttentionProfile.compute(model, trace, by=by, statistics=ALL)
    mass, per_token, entropy, gini = brute_force(model, trace, by)
    np.testing.assert_allclose(profile.masses, mass, atol=1e-5, equal_nan=True)
    np.testing.assert_allclose(profile.per_token_masses, per_token, atol=1e-5, equal_nan=True)
    np.testing.assert_allclose(profile.entropies, entropy, atol=1e-5, equal_nan=True)
    np.testing.assert_allclose(profile.ginis, gini, atol=1e-5, equal_nan=True)


@pytest.mark.parametrize("model_name", ["gpt2", "qwen"])
@given(prompt=_text, reasoning=_text, answer=_text, eos=st.booleans())
@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_masses_over_key_parts_sum_to_one(request, model_name, prompt, reasoning, answer, eos):
    model = request.getfixturevalue(model_name)
    trace = Trace.from_parts(prompt, reasoning, answer, model.tokenizer, append_eos=eos)
    for by in ("segments", "sentences"):
        profile = AttentionProfile.compute(model, trace, by=by)
        present = profile.token_counts > 0
        totals = np.nansum(profile.masses, axis=-1)[:, :, present]
        np.testing.assert_allclose(totals, 1.0, atol=1e-5)
        assert np.isnan(profile.masses[:, :, ~present]).all()
        assert profile.token_counts.sum() == len(trace)


@pytest.mark.parametrize("model_name", ["gpt2", "qwen"])
@pytest.mark.parametrize("slices", [False, True])
def test_batched_equals_one_at_a_time(request, monkeypatch, model_name, slices):
    monkeypatch.setattr(rc.attention, "_SLICE_PARTS_MAX", 64 if slices else 0)
    model = request.getfixturevalue(model_name)
    tok = model.tokenizer
    traces = [
        make_trace(tok),
        make_trace(tok, reasoning="\nA much longer reasoning. It has three sentences. 1+1=2.\n"),
        make_trace(tok, prompt="Short? ", answer=" 2"),
        make_trace(tok, reasoning="\nx.\n"),
    ]
    batched = AttentionProfile.compute(model, traces, batch_size=3, statistics=ALL)
    for trace, profile in zip(traces, batched):
        alone = AttentionProfile.compute(model, trace, statistics=ALL)
        for name in ("masses", "per_token_masses", "entropies", "ginis"):
            np.testing.assert_allclose(
                getattr(profile, name), getattr(alone, name), atol=1e-5, equal_nan=True
            )


def test_layer_and_head_subsets(gpt2):
    trace = make_trace(gpt2.tokenizer)
    full = AttentionProfile.compute(gpt2, trace)
    part = AttentionProfile.compute(gpt2, trace, layers=[0], heads=[1, 3])
    assert part.layers == (0,) and part.heads == (1, 3)
    np.testing.assert_allclose(part.masses, full.masses[[0]][:, [1, 3]], atol=1e-6)
    with pytest.raises(ValueError, match="layers must be distinct indices"):
        AttentionProfile.compute(gpt2, trace, layers=[5])


def test_gqa_model_has_one_profile_per_query_head(qwen):
    assert qwen.cfg.n_key_value_heads < qwen.cfg.n_heads
    profile = AttentionProfile.compute(qwen, make_trace(qwen.tokenizer))
    assert profile.masses.shape[:2] == (qwen.cfg.n_layers, qwen.cfg.n_heads)


def test_statistic_not_computed_says_how(gpt2):
    profile = AttentionProfile.compute(gpt2, make_trace(gpt2.tokenizer))
    assert profile.ginis is None
    with pytest.raises(ValueError, match=r"statistics=\(\.\.\., 'gini'\)"):
        profile.gini("answer")


def test_split_and_frame(gpt2):
    profile = AttentionProfile.compute(gpt2, make_trace(gpt2.tokenizer))
    split = profile.split("answer")
    np.testing.assert_allclose(sum(split.values()), 1.0, atol=1e-5)
    frame = profile.to_frame()
    assert len(frame) == 2 * 4 * 7 * 7
    row = frame[
        (frame.layer == 1)
        & (frame["head"] == 2)
        & (frame["query"] == "answer")
        & (frame.key == "reasoning")
    ]
    assert row["mass"].item() == pytest.approx(profile.mass("answer", "reasoning")[1, 2])


def test_save_load_round_trip(gpt2, tmp_path):
    traces = [make_trace(gpt2.tokenizer), make_trace(gpt2.tokenizer, answer=" 7")]
    profiles = AttentionProfile.compute(gpt2, traces, statistics=ALL)
    path = profiles.save(tmp_path / "profiles")
    assert path.suffix == ".npz"
    back = ProfileSet.load(path)
    np.testing.assert_array_equal(
        back.values("answer", "reasoning"), profiles.values("answer", "reasoning")
    )
    one = profiles[0].save(tmp_path / "one.npz")
    again = AttentionProfile.load(one)
    np.testing.assert_array_equal(again.ginis, profiles[0].ginis)
    assert again.parts == profiles[0].parts
    with pytest.raises(ValueError, match=r"ProfileSet\.load"):
        AttentionProfile.load(path)


def test_profile_set_statistics(gpt2):
    tok = gpt2.tokenizer
    traces = [make_trace(tok, answer=" " + "7" * i) for i in range(1, 6)]
    profiles = AttentionProfile.compute(gpt2, traces, batch_size=2)
    values = profiles.values("answer", "reasoning")
    assert values.shape == (5, 2, 4)
    np.testing.assert_allclose(profiles.mean("answer", "reasoning"), values.mean(0))
    np.testing.assert_allclose(profiles.std("answer", "reasoning"), values.std(0, ddof=1))
    low, high = profiles.ci("answer", "reasoning")
    # the marginal interval is Student's t over the 5 traces, computed here by hand
    half = scipy.stats.t.ppf(0.975, 4) * values.std(0, ddof=1) / np.sqrt(5)
    np.testing.assert_allclose(low, values.mean(0) - half, rtol=1e-6)
    np.testing.assert_allclose(high, values.mean(0) + half, rtol=1e-6)
    sim_low, sim_high = profiles.ci("answer", "reasoning", simultaneous=True, n_resamples=999)
    assert (sim_low <= low + 1e-12).all() and (high <= sim_high + 1e-12).all()
    assert profiles.values("answer", statistic="entropy").shape == (5, 2, 4)
    assert set(profiles.to_frame()["trace"]) == set(range(5))


def test_sentence_profiles_cannot_be_stacked_across_traces(gpt2):
    tok = gpt2.tokenizer
    traces = [make_trace(tok), make_trace(tok, reasoning="\nOne. Two. Three. Four.\n")]
    profiles = AttentionProfile.compute(gpt2, traces, by="sentences")
    assert profiles[1].parts[3:7] == ("sentence_0", "sentence_1", "sentence_2", "sentence_3")
    with pytest.raises(rc.ProfileMismatchError, match="by='segments'"):
        profiles.values("answer", "prompt")


def test_segment_statistics_hand_computed():
    import torch

    # 3 tokens in parts [0, 1, 1]; one head; a causal pattern written out by hand
    pattern = torch.tensor([[[[1.0, 0.0, 0.0], [0.25, 0.75, 0.0], [0.5, 0.25, 0.25]]]])
    labels = torch.tensor([[0, 1, 1]])
    out = rc.segment_statistics(pattern, labels, 2, statistics=ALL)
    # part-1 rows are q=1 and q=2: mass to part 0 = (0.25 + 0.5), to part 1 = (0.75 + 0.5)
    torch.testing.assert_close(out["mass_sum"][0, 0], torch.tensor([[1.0, 0.0], [0.75, 1.25]]))
    torch.testing.assert_close(out["query_count"][0], torch.tensor([1.0, 2.0]))
    # per token: q=1 sees 1 key of part 1 (0.75/1), q=2 sees 2 (0.5/2)
    assert out["per_token_sum"][0, 0, 1, 1].item() == pytest.approx(0.75 + 0.25)
    # entropy of rows 1 and 2, normalised by ln 2 and ln 3; row 0 (one key) left out
    h1 = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75)) / math.log(2)
    h2 = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)) / math.log(3)
    assert out["entropy_sum"][0, 0, 1].item() == pytest.approx(h1 + h2, abs=1e-6)
    assert out["row_count"][0].tolist() == [0.0, 2.0]
    # Gini: row 1 = |0.25-0.75|*2/(2*2) = 0.25; row 2 = (0.25*2 + 0.25*2 + 0)/(2*3) = 1/6
    assert out["gini_sum"][0, 0, 1].item() == pytest.approx(0.25 + 1 / 6, abs=1e-6)


def test_non_contiguous_labels_use_the_general_path():
    import torch

    pattern = torch.tensor([[[[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5]]]])
    labels = torch.tensor([[1, 0, 1]])  # part 1 is not one run: slice sums would be wrong
    assert rc.attention._contiguous_runs(labels, 2) is None
    out = rc.segment_statistics(pattern, labels, 2, statistics=("mass",))
    # part-1 rows q=0 and q=2: to part 0 = 0 + 0.3; to part 1 = 1 + 0.7
    torch.testing.assert_close(out["mass_sum"][0, 0, 1], torch.tensor([0.3, 1.7]))
