"""The fast knockout (no [T x T] matrix) against the hook path, and its refusals.

The hook path edits the eager scores (tests/test_interventions.py and tests/test_anchors.py
check it against hand-built cases), so agreement within 1e-4 here ties the fast path to it.
The models are "lively" (weights of standard deviation ~0.3), so a knockout moves the
log-probabilities by far more than the tolerance and a fast path that ignored it would fail.
"""

import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import reasoning_circuits as rc
from reasoning_circuits import AttentionProfile, HeadIntervention, Trace
from reasoning_circuits import _fast_attention as fa
from reasoning_circuits import _fast_knockout as fk
from reasoning_circuits.anchors import suppression_effects
from reasoning_circuits.metrics import _logits_one_batch
from reasoning_circuits.trace import SEGMENT_NAMES

_text = st.text(alphabet=st.sampled_from(list("abc xyz 0123.+=\n")), min_size=1, max_size=30)
_SETTINGS = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
}


@pytest.fixture(scope="module")
def lively_qwen():
    """tiny_qwen2 (rotary, 4 query heads on 2 key/value heads) with every matrix scaled to a
    standard deviation of ~0.3, so attention is sharp and knockouts change the output."""
    model = rc.testing.tiny_qwen2(seed=1)
    with torch.no_grad():
        for p in model.original_model.parameters():
            if p.ndim == 2:
                p.mul_(15.0)
    return model


def all_rows(traces):
    return [list(range(len(t))) for t in traces]


def log_probs(model, traces, intervention, *, fast):
    """Next-token log-probs at every real row of every trace, ``[batch, pos, vocab]``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        logits = _logits_one_batch(model, traces, intervention, all_rows(traces), fast=fast)
    return logits.log_softmax(-1), [str(w.message) for w in caught]


def assert_same_rows(model, traces, intervention):
    fast, fast_warnings = log_probs(model, traces, intervention, fast=True)
    hooked, hook_warnings = log_probs(model, traces, intervention, fast=False)
    assert fast_warnings == hook_warnings  # the same "no key left" rows are reported
    for i, trace in enumerate(traces):
        n = len(trace)
        torch.testing.assert_close(fast[i, :n], hooked[i, :n], atol=1e-4, rtol=0)
    return hooked


def random_knockout(model, data):
    n = data.draw(st.integers(1, 3))
    traces = [
        Trace.from_parts(*data.draw(st.tuples(_text, _text, _text)), model.tokenizer)
        for _ in range(n)
    ]
    query = data.draw(st.sampled_from(SEGMENT_NAMES))
    key = data.draw(st.sampled_from(SEGMENT_NAMES))
    n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
    cells = [(layer, head) for layer in range(n_layers) for head in range(n_heads)]
    heads = data.draw(st.lists(st.sampled_from(cells), min_size=1, max_size=6, unique=True))
    return traces, HeadIntervention(heads, "knockout", query=query, key=key)


@pytest.mark.parametrize("model_name", ["lively", "lively_qwen"])
@given(data=st.data())
@settings(max_examples=8, **_SETTINGS)
def test_fast_knockout_equals_hooks(request, model_name, data):
    """Random segments (any query/key pair, empty rows included), heads and right-padded
    batches: every row's log-probs agree with the hook path's."""
    model = request.getfixturevalue(model_name)
    traces, knockout = random_knockout(model, data)
    assert_same_rows(model, traces, knockout)


@pytest.mark.slow
@pytest.mark.parametrize("model_name", ["lively", "lively_qwen", "gpt2", "qwen"])
@given(data=st.data())
@settings(max_examples=40, **_SETTINGS)
def test_fast_knockout_equals_hooks_many(request, model_name, data):
    model = request.getfixturevalue(model_name)
    traces, knockout = random_knockout(model, data)
    assert_same_rows(model, traces, knockout)


@pytest.mark.parametrize("model_name", ["lively", "lively_qwen"])
def test_knockout_changes_the_output_and_metrics_agree(request, model_name):
    """The knockout moves log-probs by far more than 1e-4 (the comparison can fail), and the
    metrics agree on both paths."""
    model = request.getfixturevalue(model_name)
    tok = model.tokenizer
    traces = [
        Trace.from_parts("Q: 3+4? ", "\n3+4=7. Check: 7.\n", " It is 7.", tok, append_eos=True),
        Trace.from_parts("Short? ", "\nx.\n", " 2 2", tok, append_eos=True),
    ]
    heads = [(layer, h) for layer in range(int(model.cfg.n_layers)) for h in (0, 1, 3)]
    knockout = HeadIntervention(heads, "knockout", query="answer", key="reasoning")
    hooked = assert_same_rows(model, traces, knockout)
    plain, _ = log_probs(model, traces, None, fast=False)
    n = len(traces[0])
    assert (hooked[0, :n] - plain[0, :n]).abs().max() > 0.1
    for metric in (rc.metrics.answer_logprob, rc.metrics.answer_kl):
        fast = metric(model, traces, knockout, method="fast")
        pattern = metric(model, traces, knockout, method="pattern")
        np.testing.assert_allclose(fast, pattern, atol=1e-4, rtol=0)
    effect = knockout.effect(model, traces, method="fast")
    reference = knockout.effect(model, traces, method="pattern")
    np.testing.assert_allclose(effect.after, reference.after, atol=1e-4, rtol=0)
    assert abs(effect.mean_diff) > 0.01


def test_rows_with_no_key_left_write_zero(lively):
    """query = key = bos: the BOS row sees only itself, so the heads read nothing there; both
    paths warn and write zero (checked through every row's log-probs)."""
    trace = Trace.from_parts("Q: 3+4? ", "\nx.\n", " 7", lively.tokenizer)
    assert len(trace["bos"]) == 1
    knockout = HeadIntervention([(0, 1), (1, 2)], "knockout", query="bos", key="bos")
    with pytest.warns(UserWarning, match="1 query rows have every key"):
        rc.metrics.answer_logprob(lively, trace, knockout, method="fast")
    hooked = assert_same_rows(lively, [trace], knockout)
    plain, _ = log_probs(lively, [trace], None, fast=False)
    assert (hooked[0, 0] - plain[0, 0]).abs().max() > 1e-2


def test_merge_by_log_sum_exp_is_exact_when_the_blocked_mass_is_nearly_one():
    """Visible keys hold ~e-40 of the mass: the ranges are summed directly, so the output is
    the visible keys' softmax to float precision (full minus blocked would be all noise)."""
    torch.manual_seed(0)
    n, d = 12, 8
    q = torch.randn(2, n, d, dtype=torch.float64)
    k = torch.randn(2, n, d, dtype=torch.float64)
    v = torch.randn(2, n, d, dtype=torch.float64)
    q[..., 0] = 3.0
    k[:, 3:7, 0] = 40.0  # keys 3..6 dominate every row's scores by ~e^100
    allowed = ((0, 3), (7, n))
    out = fk._blocked_rows(q.float(), k.float(), v.float(), 1.0, 7, n, allowed)
    for r in range(7, n):
        visible = [j for j in range(r + 1) if not 3 <= j < 7]
        scores = torch.einsum("hd,hkd->hk", q[:, r], k[:, visible])
        expected = torch.einsum("hk,hkd->hd", scores.softmax(-1), v[:, visible])
        torch.testing.assert_close(out[:, r - 7].double(), expected, atol=1e-5, rtol=0)
    full = torch.einsum("hd,hkd->hk", q[:, 8], k[:, :9])
    visible_share = full.softmax(-1)[:, [0, 1, 2, 7, 8]].sum(-1)
    assert (visible_share < 1e-30).all()  # the case where subtraction would fail


@pytest.mark.parametrize(("q0", "q1"), [(0, 12), (4, 9), (9, 12), (2, 3)])
def test_pieces_cover_exactly_the_causal_keys(q0, q1):
    """Every (row, key) with key <= row in [a, c) is covered once, and nothing else."""
    for a, c in [(0, 12), (0, 3), (3, 7), (7, 12), (5, 6), (10, 12)]:
        covered = torch.zeros(12, 12, dtype=torch.long)
        for r0, r1, k0, k1, causal in fk._pieces(q0, q1, a, c):
            block = torch.ones(r1 - r0, k1 - k0, dtype=torch.long)
            if causal:
                assert (r0, r1) == (k0, k1)
                block = block.tril()
            covered[r0:r1, k0:k1] += block
        rows = torch.arange(12)[:, None]
        keys = torch.arange(12)[None, :]
        expected = (rows >= q0) & (rows < q1) & (keys >= a) & (keys < c) & (keys <= rows)
        assert torch.equal(covered, expected.long())


@pytest.mark.parametrize("model_name", ["lively", "lively_qwen"])
@pytest.mark.parametrize("heads", [None, [(0, 1), (1, 3)]])
def test_suppression_fast_equals_pattern(request, monkeypatch, model_name, heads):
    model = request.getfixturevalue(model_name)
    trace = Trace.from_parts(
        "Q: 3+4? ",
        "\nFirst 3+4=7. Then check it. So 7 it is.\nDone.",
        " It is 7.",
        model.tokenizer,
        append_eos=True,
    )
    assert len(trace.sentences) >= 3
    monkeypatch.setattr(fk, "_LOGIT_ELEMENTS", 5000)  # logits in blocks of a few rows
    fast = suppression_effects(model, trace, heads=heads, method="fast", batch_size=2)
    pattern = suppression_effects(model, trace, heads=heads, method="pattern", batch_size=2)
    assert abs(fast[0] - pattern[0]) < 1e-4
    for a, b in zip(fast[1:], pattern[1:], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=0, equal_nan=True)
        assert np.array_equal(np.isnan(a), np.isnan(b))
    assert np.nanmax(pattern[2]) > 1e-3  # suppression changes later sentences


def test_the_plain_torch_kernel_gives_the_same_knockout(lively_qwen, monkeypatch):
    """Devices without the fused CPU kernel take the blockwise fallback."""
    tok = lively_qwen.tokenizer
    trace = Trace.from_parts("Q: 3+4? ", "\n3+4=7. Check: 7.\n", " It is 7.", tok)
    knockout = HeadIntervention([(0, 1), (1, 2)], "knockout", query="answer", key="reasoning")
    reference, _ = log_probs(lively_qwen, [trace], knockout, fast=False)
    calls = []

    def blockwise(q, k, v, scale, mask, *, causal=True):
        calls.append(causal)
        return fa._attend_blockwise(q, k, v, scale, mask, causal=causal)

    monkeypatch.setattr(fa, "_attend", blockwise)
    monkeypatch.setattr(fa, "_GINI_ELEMENTS", 50)  # blocks of a few rows
    got, _ = log_probs(lively_qwen, [trace], knockout, fast=True)
    torch.testing.assert_close(got, reference, atol=1e-4, rtol=0)
    assert False in calls and True in calls


def test_refusals(lively):
    tok = lively.tokenizer
    trace = Trace.from_parts("Q: 3+4? ", "\n3+4=7.\n", " It is 7.", tok)
    knockout = HeadIntervention([(0, 1)], "knockout", query="answer", key="reasoning")
    zero = HeadIntervention([(0, 1)], "zero", positions="answer")
    with pytest.raises(ValueError, match="did you mean 'fast'"):
        rc.metrics.answer_logprob(lively, trace, knockout, method="fats")
    with pytest.raises(ValueError, match=r"only attention knockouts.*'zero'.*method='pattern'"):
        rc.metrics.answer_logprob(lively, trace, zero, method="fast")
    with pytest.raises(ValueError, match="only attention knockouts"):
        rc.metrics.answer_kl(lively, trace, zero, method="fast")
    with pytest.raises(ValueError, match="takes no method= argument"):
        rc.measure_effect(lively, [trace, trace], knockout, lambda m, t, i: np.zeros(len(t)),
                          method="fast")  # fmt: skip
    with pytest.raises(ValueError, match="method must be one of"):
        suppression_effects(lively, trace, method="hooks")
    with pytest.raises(ValueError, match="suppression_method must be one of"):
        rc.anchors.thought_anchors(lively, trace, methods=("suppression",), suppression_method="x")
    with rc.testing.planted_attention(lively, [(1, 2)]):
        with pytest.raises(ValueError, match=r"active TransformerLens hooks.*method='pattern'"):
            rc.metrics.answer_logprob(lively, trace, knockout, method="fast")
        with pytest.raises(ValueError, match="active TransformerLens hooks"):
            suppression_effects(lively, trace, method="fast")


def test_auto_chooses_by_length_and_falls_back(lively, monkeypatch):
    tok = lively.tokenizer
    trace = Trace.from_parts("Q: 3+4? ", "\n3+4=7.\n", " It is 7.", tok)
    knockout = HeadIntervention([(0, 1)], "knockout", query="answer", key="reasoning")
    zero = HeadIntervention([(0, 1)], "zero", positions="answer")
    runs = []
    real = fk.run_hidden
    monkeypatch.setattr(fk, "run_hidden", lambda *a, **k: runs.append(1) or real(*a, **k))
    short = rc.metrics.answer_logprob(lively, trace, knockout)
    suppression_effects(lively, trace)
    assert not runs  # shorter than AUTO_FAST_TOKENS: the hook path, unchanged
    monkeypatch.setattr(rc.attention, "AUTO_FAST_TOKENS", len(trace))
    long = rc.metrics.answer_logprob(lively, trace, knockout)
    assert runs == [1]
    np.testing.assert_allclose(long, short, atol=1e-4, rtol=0)
    rc.metrics.answer_logprob(lively, trace, zero)  # auto: a zero ablation takes the hooks
    assert runs == [1]
    suppression_effects(lively, trace, batch_size=8)
    assert len(runs) == 3  # intact + one batch of suppressed sentences


def test_no_tensor_grows_with_t_squared(lively, monkeypatch):
    """Every tensor an op makes on the fast knockout and suppression paths has fewer than
    T*T entries; the hook path, for contrast, makes [head, T, T] scores."""
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

    reasoning = "\n" + " ".join(f"Step {i}: {i} + 1 = {i + 1}." for i in range(32)) + "\n"
    trace = Trace.from_parts("Q: count. ", reasoning, " It is 33.", lively.tokenizer)
    n = len(trace)
    assert n >= 300
    monkeypatch.setattr(fk, "_LOGIT_ELEMENTS", 2**14)
    knockout = HeadIntervention([(0, 1), (2, 3)], "knockout", query="answer", key="reasoning")
    sizes = {}
    for method in ("fast", "pattern"):
        with Largest() as mode:
            rc.metrics.answer_logprob(lively, trace, knockout, method=method)
        sizes[method] = mode.numel
    assert sizes["fast"] < n * n <= sizes["pattern"]
    with Largest() as mode:
        suppression_effects(lively, trace, sentences=[0, 20], method="fast", batch_size=1)
    assert mode.numel < n * n


@pytest.mark.parametrize("make", [rc.testing.tiny_gpt2, rc.testing.tiny_qwen2])
def test_bfloat16_models_run_the_fast_paths(make):
    """Profiles and knockouts in bfloat16 agree with float32 on the same weights.

    Tolerances: bfloat16 keeps 8 significant bits, so every weight and activation carries a
    relative rounding error of up to 2^-9 (0.2%), compounded over a few layers. Attention
    itself is computed in float32 on the rounded q/k/v. Answer log-probs (about -7 nats per
    token here) may then move by ~1% of a nat per token: we allow 0.02 nats per answer token
    (observed: < 1e-3). Attention masses are probabilities from scores of O(1) whose
    rounding (0.2% of a score) moves a softmax weight by at most ~0.2% relative: we allow
    2e-3 absolute (observed: < 1e-4); entropies (nats, <= log T) likewise 2e-3.
    """
    model32, model16 = make(seed=0), make(seed=0, dtype=torch.bfloat16)
    assert next(model16.original_model.parameters()).dtype == torch.bfloat16
    reasoning = "\n" + " ".join(f"Step {i}: {i} + 1 = {i + 1}." for i in range(8)) + "\n"
    trace = Trace.from_parts("Q: count. ", reasoning, " It is 9.", model32.tokenizer)
    n_answer = len(trace["answer"])
    knockout = HeadIntervention([(0, 1), (1, 0)], "knockout", query="answer", key="reasoning")
    got = {}
    for name, model in (("float32", model32), ("bfloat16", model16)):
        got[name] = (
            rc.metrics.answer_logprob(model, trace, knockout, method="fast"),
            rc.metrics.answer_kl(model, trace, knockout, method="fast"),
            AttentionProfile.compute(model, trace, method="fast"),
        )
    (lp32, kl32, prof32), (lp16, kl16, prof16) = got["float32"], got["bfloat16"]
    np.testing.assert_allclose(lp16, lp32, atol=0.02 * n_answer, rtol=0)
    np.testing.assert_allclose(kl16, kl32, atol=0.02, rtol=0)
    np.testing.assert_allclose(prof16.masses, prof32.masses, atol=2e-3, rtol=0)
    np.testing.assert_allclose(prof16.entropies, prof32.entropies, atol=2e-3, equal_nan=True)


def test_batch_logits_takes_the_fast_path_for_a_knockout_and_pads_with_nan(lively_qwen):
    """``batch_logits(method="fast")`` gives the hook path's logits (every position, or chosen
    rows, a knockout or none), and both paths put NaN at the padding of shorter traces."""
    tok = lively_qwen.tokenizer
    traces = [
        Trace.from_parts("What is 2+3? ", "\nWe add. 2+3=5. Done.\n", " The answer is 5.", tok),
        Trace.from_parts("Sum 2 and 30? ", "\nAdd them up now. 2+30=32.\n", " It is 32.", tok),
    ]
    knockout = HeadIntervention([(0, 1), (1, 3)], "knockout", query="answer", key="reasoning")
    short = min(len(t) for t in traces)
    for intervention in (None, knockout):
        fast = rc.metrics.batch_logits(lively_qwen, traces, intervention, method="fast")
        hooked = rc.metrics.batch_logits(lively_qwen, traces, intervention, method="pattern")
        for logits in (fast, hooked):
            assert torch.isnan(logits[0, short:]).all() and not torch.isnan(logits[0, :short]).any()
        real = ~torch.isnan(hooked)
        assert torch.equal(real, ~torch.isnan(fast))
        torch.testing.assert_close(fast[real], hooked[real], atol=1e-4, rtol=0)
        rows = [[3, len(t) - 1] for t in traces]
        chosen = rc.metrics.batch_logits(
            lively_qwen, traces, intervention, rows=rows, method="fast"
        )
        for i, r in enumerate(rows):
            torch.testing.assert_close(chosen[i], hooked[i, r], atol=1e-4, rtol=0)
    plain = rc.metrics.batch_logits(lively_qwen, traces, method="fast")
    ablated = rc.metrics.batch_logits(lively_qwen, traces, knockout, method="fast")
    answer = traces[0]["answer"].slice
    assert (plain[0, answer] - ablated[0, answer]).abs().max() > 1e-2  # the knockout acts
    with pytest.raises(ValueError, match="did you mean 'fast'"):
        rc.metrics.batch_logits(lively_qwen, traces, method="fsat")  # type: ignore[arg-type]
    zero = HeadIntervention([(0, 1)], "zero", positions="answer")
    with pytest.raises(ValueError, match="only attention knockouts"):
        rc.metrics.batch_logits(lively_qwen, traces, zero, method="fast")
