"""The fast path of AttentionProfile.compute (no [T x T] pattern) against the pattern path.

The pattern path is itself checked against statistics written out from their definitions
(tests/test_attention.py), so agreement here within 1e-4 ties the fast path to the definitions.
"""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import reasoning_circuits as rc
from reasoning_circuits import AttentionProfile, Trace
from reasoning_circuits import _fast_attention as fa

ALL = ("mass", "per_token", "entropy", "gini")
ARRAYS = ("masses", "per_token_masses", "entropies", "ginis", "token_counts")
_text = st.text(alphabet=st.sampled_from(list("abc xyz 0123.+=\n")), min_size=1, max_size=40)
_trace_parts = st.tuples(_text, _text, _text, st.booleans())
_SETTINGS = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
}


def assert_same(fast, pattern, atol=1e-4):
    for a, b in zip(fast, pattern, strict=True):
        assert a.query_names == b.query_names
        for name in ARRAYS:
            x, y = getattr(a, name), getattr(b, name)
            assert (x is None) == (y is None), name
            if x is not None:
                np.testing.assert_allclose(x, y, atol=atol, rtol=0, equal_nan=True, err_msg=name)


def both(model, traces, **kwargs):
    fast = AttentionProfile.compute(model, traces, method="fast", **kwargs)
    pattern = AttentionProfile.compute(model, traces, method="pattern", **kwargs)
    return fast, pattern


def random_case(model, data):
    """Traces (a padded batch when more than one), a partition, query rows and parts."""
    parts = data.draw(st.lists(_trace_parts, min_size=1, max_size=3))
    traces = [Trace.from_parts(p, r, a, model.tokenizer, append_eos=eos) for p, r, a, eos in parts]
    by = data.draw(st.sampled_from(["segments", "sentences"]))
    queries = data.draw(
        st.sampled_from(
            [None, {"emit": rc.rows.predicting()}, {"first": [0, 1], "emit": rc.rows.predicting()}]
        )
    )
    common = set(traces[0].partition(by)[0]).intersection(*(t.partition(by)[0] for t in traces))
    query_parts = data.draw(
        st.one_of(st.none(), st.lists(st.sampled_from(sorted(common)), unique=True))
    )
    return traces, {
        "by": by,
        "queries": queries,
        "query_parts": query_parts,
        "batch_size": len(traces),
        "statistics": ALL,
    }


@pytest.mark.parametrize("model_name", ["gpt2", "qwen"])
@given(data=st.data())
@settings(max_examples=6, **_SETTINGS)
def test_fast_equals_pattern_on_random_segmentations(request, model_name, data):
    model = request.getfixturevalue(model_name)
    traces, kwargs = random_case(model, data)
    assert_same(*both(model, traces, **kwargs))


@pytest.mark.slow
@pytest.mark.parametrize("model_name", ["gpt2", "qwen"])
@given(data=st.data())
@settings(max_examples=40, **_SETTINGS)
def test_fast_equals_pattern_on_many_random_segmentations(request, model_name, data):
    model = request.getfixturevalue(model_name)
    traces, kwargs = random_case(model, data)
    assert_same(*both(model, traces, **kwargs))


@pytest.mark.slow
@given(data=st.data())
@settings(max_examples=6, **_SETTINGS)
def test_fast_equals_pattern_on_gpt2_small(gpt2_small, data):
    traces, kwargs = random_case(gpt2_small, data)
    assert_same(*both(gpt2_small, traces, **kwargs))


@pytest.mark.parametrize("model_name", ["gpt2", "qwen"])
def test_small_blocks_and_the_plain_torch_kernel(request, monkeypatch, model_name):
    """Blocks of a few rows and keys (the pass over every row, Gini, restricted rows) and the
    device-independent kernel give the same numbers as one block and the CPU flash kernel."""
    model = request.getfixturevalue(model_name)
    tok = model.tokenizer
    traces = [
        Trace.from_parts("Q: 3+4? ", "\n3+4=7. Check: 7.\n", " It is 7.", tok, append_eos=True),
        Trace.from_parts("Short? ", "\nx.\n", " 2", tok, append_eos=True),
    ]
    kwargs = {"statistics": ALL, "batch_size": 2, "queries": {"emit": rc.rows.predicting()}}
    reference = AttentionProfile.compute(model, traces, method="pattern", **kwargs)
    monkeypatch.setattr(fa, "_GINI_ELEMENTS", 300)
    monkeypatch.setattr(fa, "_MASK_ELEMENTS", 64)
    monkeypatch.setattr(fa, "_KEY_CHUNK", 5)
    monkeypatch.setattr(fa, "_BLOCK_ELEMENTS", 300)
    for query_parts in (None, ("answer", "reasoning")):
        got = AttentionProfile.compute(
            model, traces, method="fast", query_parts=query_parts, **kwargs
        )
        expected = reference
        if query_parts is not None:
            expected = AttentionProfile.compute(
                model, traces, method="pattern", query_parts=query_parts, **kwargs
            )
        assert_same(got, expected)
    calls = []

    def blockwise(q, k, v, scale, mask):
        calls.append(q.shape)
        return fa._attend_blockwise(q, k, v, scale, mask)

    monkeypatch.setattr(fa, "_attend", blockwise)
    assert_same(AttentionProfile.compute(model, traces, method="fast", **kwargs), reference)
    assert calls


def test_heads_and_layers_subsets(qwen):
    trace = Trace.from_parts("Q? ", "\nA. B.\n", " C", qwen.tokenizer, append_eos=True)
    fast, pattern = both(qwen, [trace], layers=[1], heads=[3, 0], statistics=ALL)
    assert fast[0].layers == (1,) and fast[0].heads == (3, 0)
    assert_same(fast, pattern)


def test_only_the_chosen_rows_are_computed(gpt2, monkeypatch):
    trace = Trace.from_parts("Q: 3+4? ", "\n3+4=7.\n", " It is 7.", gpt2.tokenizer)
    answer_rows = trace.partition("segments")[1] == trace.partition("segments")[0].index("answer")
    shapes = []
    real = fa._attend

    def spy(q, k, v, scale, mask):
        shapes.append((q.shape[2], k.shape[2]))
        return real(q, k, v, scale, mask)

    monkeypatch.setattr(fa, "_attend", spy)
    profile = AttentionProfile.compute(gpt2, trace, method="fast", query_parts=["answer"])
    n = len(trace)
    # per layer: the model's own attention over all n rows, then the answer rows alone,
    # whose keys stop at the last answer row
    last = int(np.flatnonzero(answer_rows)[-1]) + 1
    assert shapes == [(n, n), (int(answer_rows.sum()), last)] * gpt2.cfg.n_layers
    answer = profile.query_names.index("answer")
    assert np.isfinite(profile.masses[:, :, answer]).all()
    others = [i for i in range(len(profile.parts)) if i != answer]
    assert np.isnan(profile.masses[:, :, others]).all()
    assert (profile.token_counts[others] == 0).all()
    assert profile.token_counts[answer] == answer_rows.sum()


def test_entropy_identity_on_a_hand_made_layer():
    """H = lse - scale * q . sum_k p k equals -sum p log p for random scores."""
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 1, 2, 5, 8).unbind(0)
    scale = 0.7
    out, lse = fa._attend(q, k, torch.cat([v, k], -1), scale, None)
    scores = (q @ k.transpose(-1, -2) * scale).masked_fill(torch.ones(5, 5).triu(1).bool(), -1e9)
    p = scores.softmax(-1)
    expected = -(p * p.clamp(min=1e-30).log()).sum(-1)
    entropy = lse - scale * (q * out[..., 8:]).sum(-1)
    torch.testing.assert_close(entropy, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(out[..., :8], p @ v, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("chunk", "block"), [(4, 40), (7, 1), (64, 2**19)])
def test_blockwise_pass_equals_the_softmax(monkeypatch, chunk, block):
    """Output, part masses and entropy of the blockwise pass equal the softmax of the full
    score matrix: grouped heads, two batch rows, chunks that end inside blocks of rows, and
    scores whose row maximum keeps rising chunk after chunk (every rescaling is exercised)."""
    monkeypatch.setattr(fa, "_KEY_CHUNK", chunk)
    monkeypatch.setattr(fa, "_BLOCK_ELEMENTS", block)
    gen = torch.Generator().manual_seed(1)
    batch, n_groups, n_rep, n_pos, d, n_parts = 2, 2, 3, 23, 8, 3
    q = torch.randn(batch, n_groups * n_rep, n_pos, d, generator=gen)
    k = torch.randn(batch, n_groups, n_pos, d, generator=gen)
    k = k + torch.linspace(0, 6, n_pos)[:, None] * q.mean((1, 2))[:, None, None, :]
    v = torch.randn(batch, n_groups, n_pos, d + 2, generator=gen)
    labels = torch.randint(0, n_parts, (batch, n_pos), generator=gen)
    onehot = torch.nn.functional.one_hot(labels, n_parts).float()[:, None]
    scale = 0.9
    out, mass, entropy = fa._attend_with_statistics(q, k, v, onehot, scale, entropy=True)
    keys = k.repeat_interleave(n_rep, 1)
    scores = (q @ keys.transpose(-1, -2) * scale).masked_fill(
        torch.ones(n_pos, n_pos).triu(1).bool(), -torch.inf
    )
    p = scores.softmax(-1)
    assert entropy is not None
    torch.testing.assert_close(out, p @ v.repeat_interleave(n_rep, 1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mass, p @ onehot, atol=1e-6, rtol=0)
    expected = -(p * p.clamp(min=1e-30).log()).sum(-1)
    torch.testing.assert_close(entropy, expected, atol=1e-4, rtol=0)
    assert fa._attend_with_statistics(q, k, v, onehot, scale, entropy=False)[2] is None


def test_bridge_is_left_as_it_was(gpt2):
    trace = Trace.from_parts("Q? ", "\nA.\n", " B", gpt2.tokenizer)
    before = AttentionProfile.compute(gpt2, trace, method="pattern")
    AttentionProfile.compute(gpt2, trace, method="fast")
    assert gpt2.original_model.config._attn_implementation == "eager"
    after = AttentionProfile.compute(gpt2, trace, method="pattern")
    np.testing.assert_array_equal(before.masses, after.masses)


def test_shadow_model_matches_the_bridge(qwen):
    tokens = torch.tensor([[0, 5, 9, 200, 31, 7]])
    with torch.no_grad():
        logits = qwen(tokens)
        hidden = fa.hf_shadow(qwen, "sdpa")(input_ids=tokens, use_cache=False).last_hidden_state
        again = qwen.original_model.lm_head._original_component(hidden)
    torch.testing.assert_close(again, logits, atol=1e-5, rtol=0)


def test_options_are_checked(gpt2):
    trace = Trace.from_parts("Q? ", "\nA.\n", " B", gpt2.tokenizer)
    with pytest.raises(ValueError, match="did you mean 'fast'"):
        AttentionProfile.compute(gpt2, trace, method="fats")
    with pytest.raises(KeyError, match="query_parts \\['nope'\\]"):
        AttentionProfile.compute(gpt2, trace, query_parts=["nope"])
    with pytest.raises(TypeError, match="sequence of part names"):
        AttentionProfile.compute(gpt2, trace, query_parts="answer")


def test_hooked_models_take_the_pattern_path(gpt2, monkeypatch):
    tok = gpt2.tokenizer
    trace = Trace.from_parts("Q: 3+4? ", "\n3+4=7.\n", " It is 7.", tok, append_eos=True)
    monkeypatch.setattr(rc.attention, "AUTO_FAST_TOKENS", 1)
    with rc.testing.planted_attention(gpt2, [(1, 2)]):
        with pytest.raises(ValueError, match="active TransformerLens hooks"):
            AttentionProfile.compute(gpt2, trace, method="fast")
        auto = AttentionProfile.compute(gpt2, trace)  # auto: must see the planted head
    np.testing.assert_allclose(auto.mass("answer", "reasoning")[1, 2], 1.0, atol=1e-6)


def test_auto_chooses_by_length(gpt2, monkeypatch):
    trace = Trace.from_parts("Q? ", "\nA.\n", " B", gpt2.tokenizer)
    runs = []
    real = fa.run_row_statistics
    monkeypatch.setattr(fa, "run_row_statistics", lambda *a, **k: runs.append(1) or real(*a, **k))
    AttentionProfile.compute(gpt2, trace)
    assert not runs  # shorter than AUTO_FAST_TOKENS: pattern path
    monkeypatch.setattr(rc.attention, "AUTO_FAST_TOKENS", len(trace))
    AttentionProfile.compute(gpt2, trace)
    assert runs == [1]


@pytest.mark.parametrize("model_name", ["gpt2", "qwen"])
def test_no_tensor_grows_with_t_squared(request, monkeypatch, model_name):
    """Doubling the trace at most doubles the largest tensor any op makes on the fast path
    (without Gini) and none reaches T²; the pattern path, for contrast, makes [head, T, T]
    patterns.
    The blockwise pass holds blocks of a fixed size (2 MB by default, more than these short
    traces need); they are made small here, as they are relative to any long trace."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Largest(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.numel = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, tuple | list) else (out,):
                if isinstance(t, torch.Tensor):
                    self.numel = max(self.numel, t.numel())
            return out

    model = request.getfixturevalue(model_name)
    monkeypatch.setattr(fa, "_KEY_CHUNK", 64)
    monkeypatch.setattr(fa, "_BLOCK_ELEMENTS", 2**12)
    sizes: dict[str, list[int]] = {"fast": [], "pattern": []}
    lengths = []
    for n_steps in (20, 40):
        reasoning = "\n" + " ".join(f"Step {i}: {i} + 1 = {i + 1}." for i in range(n_steps))
        trace = Trace.from_parts("Q: count. ", reasoning + "\n", " It is done.", model.tokenizer)
        lengths.append(len(trace))
        for method in ("fast", "pattern"):
            with Largest() as mode:
                AttentionProfile.compute(model, trace, method=method)
            sizes[method].append(mode.numel)
    assert lengths[0] >= 200
    growth = lengths[1] / lengths[0]
    assert sizes["fast"][1] <= 1.1 * growth * sizes["fast"][0]
    assert sizes["fast"][1] < lengths[1] ** 2 <= sizes["pattern"][1]
