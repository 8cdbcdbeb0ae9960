import numpy as np
import pytest
import torch
from transformer_lens import patching as tl_patching

import reasoning_circuits as rc
from reasoning_circuits.patching import (
    attribution_patch_heads,
    logit_diff_metric,
    patch_heads,
    patch_residual,
)


@pytest.fixture(scope="module")
def pair(lively):
    """Clean and corrupted problems that differ in one number, same length."""
    tokenizer = lively.tokenizer
    clean = rc.Trace.from_parts("Q: 3 + 4 = ", "\n3 + 4 = 7.\n", " 7", tokenizer)
    corrupted = rc.Trace.from_parts("Q: 3 + 5 = ", "\n3 + 5 = 8.\n", " 8", tokenizer)
    assert len(clean) == len(corrupted)
    a = tokenizer.encode("7", add_special_tokens=False)[0]
    b = tokenizer.encode("8", add_special_tokens=False)[0]
    return clean, corrupted, logit_diff_metric(a, b, position=-2)


@pytest.mark.parametrize("model_name", ["gpt2", "qwen"])
def test_batched_head_sweep_equals_one_at_a_time_and_transformer_lens(
    request, model_name, tokenizer
):
    model = request.getfixturevalue(model_name)
    tok = model.tokenizer
    clean = rc.Trace.from_parts("Q: 3 + 4 = ", "\n3 + 4 = 7.\n", " 7", tok)
    corrupted = rc.Trace.from_parts("Q: 3 + 5 = ", "\n3 + 5 = 8.\n", " 8", tok)
    metric = logit_diff_metric(
        tok.encode("7", add_special_tokens=False)[0],
        tok.encode("8", add_special_tokens=False)[0],
        position=-2,
    )
    batched = patch_heads(model, clean, corrupted, metric, batch_size=5)
    single = patch_heads(model, clean, corrupted, metric, batch_size=1)
    np.testing.assert_allclose(batched.values, single.values, atol=1e-5)
    _, cache = model.run_with_cache(clean.tokens)
    theirs = tl_patching.get_act_patch_attn_head_out_all_pos(
        model, corrupted.tokens, cache, lambda logits: metric(logits).sum()
    )
    np.testing.assert_allclose(batched.values, theirs.detach().numpy(), atol=1e-4)
    assert batched.clean == pytest.approx(float(metric(model(clean.tokens).detach())[0]), abs=1e-5)


def test_residual_sweep_equals_transformer_lens(lively, pair):
    clean, corrupted, metric = pair
    ours = patch_residual(lively, clean, corrupted, metric, batch_size=8)
    _, cache = lively.run_with_cache(clean.tokens)
    theirs = tl_patching.get_act_patch_resid_pre(
        lively, corrupted.tokens, cache, lambda logits: metric(logits).sum()
    )
    np.testing.assert_allclose(ours.values, theirs.detach().numpy(), atol=1e-4)
    # patching the whole residual at layer 0 at every position restores the clean run
    first = patch_residual(lively, clean, corrupted, metric, layers=[0], positions=[2, 3])
    assert first.values.shape == (1, 2)


def test_patching_all_positions_of_layer_zero_residual_is_the_clean_run(lively, pair):
    clean, corrupted, metric = pair
    _, cache = lively.run_with_cache(clean.tokens)

    def replace(resid, hook):
        return cache["blocks.0.hook_resid_pre"]

    restored = lively.run_with_hooks(
        corrupted.tokens, fwd_hooks=[("blocks.0.hook_resid_pre", replace)]
    )
    torch.testing.assert_close(metric(restored), metric(lively(clean.tokens)))


def test_sweep_result_frame_normalisation_and_plot(lively, pair, tmp_path):
    clean, corrupted, metric = pair
    sweep = patch_heads(lively, clean, corrupted, metric)
    frame = sweep.to_frame()
    assert list(frame.columns) == ["layer", "head", "value", "normalized"]
    assert len(frame) == lively.cfg.n_layers * lively.cfg.n_heads
    expected = (sweep.values - sweep.corrupted) / (sweep.clean - sweep.corrupted)
    np.testing.assert_allclose(sweep.normalized(), expected)
    sweep.plot(tmp_path / "sweep.png")
    assert (tmp_path / "sweep.png").stat().st_size > 0


def test_attribution_tracks_exact_patching(lively, pair):
    clean, corrupted, metric = pair
    exact = patch_heads(lively, clean, corrupted, metric)
    approx = attribution_patch_heads(lively, clean, corrupted, metric)
    assert approx.values.shape == exact.values.shape
    assert approx.corrupted == pytest.approx(exact.corrupted, abs=1e-5)
    assert approx.rank_correlation(exact) > 0.5


def test_unequal_token_tensors_are_refused_with_the_fix(gpt2, tokenizer):
    a = rc.Trace.from_parts("Q", "\nr.\n", " 1", tokenizer)
    b = rc.Trace.from_parts("Q longer", "\nr.\n", " 1", tokenizer)
    with pytest.raises(rc.errors.PairAlignmentError, match="two Traces"):
        patch_heads(gpt2, a.tokens, b.tokens, logit_diff_metric(1, 2))


@pytest.mark.parametrize("model_name", ["gpt2", "qwen"])
def test_resumed_sweeps_equal_full_forward_sweeps(request, model_name):
    model = request.getfixturevalue(model_name)
    tok = model.tokenizer
    clean = rc.Trace.from_parts("Q: 3 + 4 = ", "\n3 + 4 = 7.\n", " 7", tok)
    corrupted = rc.Trace.from_parts("Q: 3 + 5 = ", "\n3 + 5 = 8.\n", " 8", tok)
    a, b = (tok.encode(x, add_special_tokens=False)[0] for x in ("7", "8"))
    for metric in (logit_diff_metric(a, b, position=-2), logit_diff_metric(a, b, position=5)):
        fast = patch_heads(model, clean, corrupted, metric, batch_size=3)
        slow = patch_heads(model, clean, corrupted, metric, batch_size=3, resume=False)
        np.testing.assert_allclose(fast.values, slow.values, atol=1e-5)
        fast = patch_residual(model, clean, corrupted, metric, batch_size=4)
        slow = patch_residual(model, clean, corrupted, metric, batch_size=4, resume=False)
        np.testing.assert_allclose(fast.values, slow.values, atol=1e-5)


@pytest.mark.parametrize("model_name", ["gpt2", "qwen"])
def test_a_resumed_run_reproduces_the_plain_forward(request, model_name):
    from reasoning_circuits._resume import ResumableRun

    model = request.getfixturevalue(model_name)
    tokens = torch.randint(3, 500, (1, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model(tokens)
    for start in (0, 1, 9, 16):
        run = ResumableRun.record(model, tokens, start, reference)
        assert run is not None
        for layer in range(model.cfg.n_layers):
            logits = run.logits(layer, 3)
            assert logits.shape == (3, 17, reference.shape[-1])
            torch.testing.assert_close(logits, reference.expand(3, -1, -1), atol=1e-4, rtol=0)
            torch.testing.assert_close(
                run.logits(layer, 2, last=2), reference[:, -2:].expand(2, -1, -1), atol=1e-4, rtol=0
            )


def test_unresumable_models_fall_back_to_full_forwards(lively, pair, monkeypatch):
    from reasoning_circuits import _resume

    clean, corrupted, metric = pair
    expected = patch_heads(lively, clean, corrupted, metric)
    monkeypatch.setattr(_resume.ResumableRun, "record", classmethod(lambda cls, *a, **k: None))
    with pytest.warns(UserWarning, match="full forward"):
        fallback = patch_heads(lively, clean, corrupted, metric)
    np.testing.assert_allclose(fallback.values, expected.values, atol=1e-5)


def test_patches_before_the_first_difference_change_nothing(lively, pair):
    clean, corrupted, metric = pair
    first = next(i for i, (a, b) in enumerate(zip(clean.ids, corrupted.ids)) if a != b)
    early = patch_residual(lively, clean, corrupted, metric, positions=list(range(first)))
    assert (early.values == early.corrupted).all()
    heads = patch_heads(lively, clean, corrupted, metric, positions=list(range(first)))
    assert (heads.values == heads.corrupted).all()
    # the first differing position does matter at layer 0
    at_first = patch_residual(lively, clean, corrupted, metric, positions=[first], layers=[0])
    assert at_first.values[0, 0] != pytest.approx(at_first.corrupted, abs=1e-4)


def test_sweeps_and_effects_round_trip_through_npz(lively, pair, tmp_path):
    clean, corrupted, metric = pair
    sweep = patch_residual(lively, clean, corrupted, metric, positions=["think_close", -1])
    path = sweep.save(tmp_path / "sweep")
    assert path.suffix == ".npz"
    back = rc.patching.PatchSweep.load(path)
    np.testing.assert_array_equal(back.values, sweep.values)
    assert back.labels == sweep.labels and back.axes == sweep.axes
    assert (back.clean, back.corrupted, back.metric) == (sweep.clean, sweep.corrupted, sweep.metric)
    effect = rc.HeadIntervention([(0, 1)], "zero").effect(lively, [clean, corrupted])
    again = type(effect).load(effect.save(tmp_path / "effect.npz"))
    np.testing.assert_array_equal(again.after, effect.after)
    assert (again.mean_diff, again.ci, again.metric) == (effect.mean_diff, effect.ci, effect.metric)
    with pytest.raises(ValueError, match="not a PatchSweep"):
        rc.patching.PatchSweep.load(tmp_path / "effect.npz")
