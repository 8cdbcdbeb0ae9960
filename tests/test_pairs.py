"""Clean/corrupted pairs of different lengths: masked alignment, probes, patching on them."""

import numpy as np
import pytest
import torch

import reasoning_circuits as rc
from reasoning_circuits.pairs import align_pair, insert_probe, probe_pair
from reasoning_circuits.patching import logit_diff_metric, patch_heads, patch_residual


def traces(tokenizer):
    """A long clean problem and a shorter corrupted one ("13" and "17" are two tokens)."""
    clean = rc.Trace.from_parts("Q: 13 + 4 = ", "\n13 + 4 = 17.\n", " 17", tokenizer)
    corrupted = rc.Trace.from_parts("Q: 3 + 4 = ", "\n3 + 4 = 7.\n", " 7", tokenizer)
    assert len(clean) > len(corrupted)
    return clean, corrupted


def test_alignment_pads_each_segment_at_its_start_and_ends_coincide(lively):
    clean, corrupted = traces(lively.tokenizer)
    pair = align_pair(clean, corrupted, pad_id=0)
    assert len(pair) == sum(max(len(clean[n]), len(corrupted[n])) for n in rc.SEGMENT_NAMES)
    for trace, tokens, mask, index in (
        (clean, pair.clean_tokens, pair.clean_mask, pair.clean_index),
        (corrupted, pair.corrupted_tokens, pair.corrupted_mask, pair.corrupted_index),
    ):
        assert int(mask.sum()) == len(trace)
        real = [p for p, i in enumerate(index) if i >= 0]
        assert [index[p] for p in real] == list(range(len(trace)))  # order kept
        assert tokens[0, real].tolist() == list(trace.ids)
        for name in rc.SEGMENT_NAMES:
            seg = pair.segments[name]
            if len(trace[name]):  # the segment's last token sits at the aligned end
                assert index[seg.stop - 1] == trace[name].stop - 1
            pads = [p for p in seg.positions if index[p] < 0]
            assert pads == list(range(seg.start, seg.start + len(pads)))
    assert pair.padded
    assert pair.both_real[-1] and pair.segment_of(len(pair) - 1) == "answer"


@pytest.mark.parametrize("model_name", ["lively", "qwen"])
def test_masked_padding_leaves_every_real_token_as_unpadded(request, model_name):
    model = request.getfixturevalue(model_name)
    clean, corrupted = traces(model.tokenizer)
    pair = align_pair(clean, corrupted)
    real = [p for p, i in enumerate(pair.corrupted_index) if i >= 0]
    with torch.no_grad():
        plain = model(corrupted.tokens)
        masked = model(pair.corrupted_tokens, attention_mask=pair.corrupted_mask)
        unmasked = model(pair.corrupted_tokens)  # R2A's way: pad tokens the model sees
    torch.testing.assert_close(masked[0, real], plain[0], atol=1e-4, rtol=0)
    assert (unmasked[0, real] - plain[0]).abs().max() > 1e-2


def test_residual_patching_on_an_unequal_pair_equals_unpadded_hand_computation(lively):
    clean, corrupted = traces(lively.tokenizer)
    pair = align_pair(clean, corrupted)
    metric = logit_diff_metric(5, 6, position=-1)
    positions = ["think_close", -1, pair.segments["reasoning"].stop - 2]
    sweep = patch_residual(lively, pair, None, metric)
    chosen = pair.resolve(positions)
    some = patch_residual(lively, pair, None, metric, positions=positions)
    _, clean_cache = lively.run_with_cache(clean.tokens)
    for layer in range(lively.cfg.n_layers):
        for col, p in enumerate(chosen):
            i, j = pair.clean_index[p], pair.corrupted_index[p]
            source = clean_cache[f"blocks.{layer}.hook_resid_pre"][0, i]

            def put(resid, hook, j=j, source=source):
                resid = resid.clone()
                resid[0, j] = source
                return resid

            with torch.no_grad():
                logits = lively.run_with_hooks(
                    corrupted.tokens, fwd_hooks=[(f"blocks.{layer}.hook_resid_pre", put)]
                )
            expected = float(metric(logits)[0])
            assert some.values[layer, col] == pytest.approx(expected, abs=1e-4)
            assert sweep.values[layer, p] == pytest.approx(expected, abs=1e-4)
    # a position that is padding on one side cannot be patched
    pad = next(p for p, i in enumerate(pair.corrupted_index) if i < 0)
    assert np.isnan(sweep.values[:, pad]).all()
    with torch.no_grad():
        plain = float(metric(lively(corrupted.tokens))[0])
    assert sweep.corrupted == pytest.approx(plain, abs=1e-4)


def test_head_patching_on_an_unequal_pair_equals_unpadded_hand_computation(lively):
    clean, corrupted = traces(lively.tokenizer)
    pair = align_pair(clean, corrupted)
    metric = logit_diff_metric(5, 6, position=-1)
    sweep = patch_heads(lively, clean, corrupted, metric)  # aligned automatically
    full = patch_heads(lively, clean, corrupted, metric, resume=False)
    np.testing.assert_allclose(sweep.values, full.values, atol=1e-5)
    both = [p for p in range(len(pair)) if pair.both_real[p]]
    _, clean_cache = lively.run_with_cache(clean.tokens)
    for layer, head in [(0, 1), (1, 3), (2, 0)]:
        name = f"blocks.{layer}.attn.hook_z"
        source = clean_cache[name][0]

        def put(z, hook, head=head, source=source):
            z = z.clone()
            for p in both:
                z[0, pair.corrupted_index[p], head] = source[pair.clean_index[p], head]
            return z

        with torch.no_grad():
            logits = lively.run_with_hooks(corrupted.tokens, fwd_hooks=[(name, put)])
        assert sweep.values[layer, head] == pytest.approx(float(metric(logits)[0]), abs=1e-4)


def test_probe_is_inserted_before_think_close_and_retokenized(lively):
    tok = lively.tokenizer
    clean, _ = traces(tok)
    probed = insert_probe(clean, "Final answer is 17.\n", tok)
    start, stop = probed.metadata["probe_tokens"]
    assert stop == probed["think_close"].start
    assert "".join(tok.decode([i]) for i in probed.ids[start:stop]) == "Final answer is 17.\n"
    assert probed.text_of("reasoning").endswith("Final answer is 17.\n")
    assert probed.ids[: clean["think_close"].start] == clean.ids[: clean["think_close"].start]
    assert probed.ids_of("answer") == clean.ids_of("answer")


def test_probe_pair_aligns_the_probes_and_patches_them_by_name(lively):
    tok = lively.tokenizer
    clean = rc.Trace.from_parts("Q: 3 + 4 = ", "\n3 + 4 = 7.\n", " 7", tok)
    corrupted = rc.Trace.from_parts("Q: 3 + 5 = ", "\n3 + 5 = 8.\n", " 8", tok)
    pair = probe_pair(clean, corrupted, tok, clean_answer="7", corrupted_answer="8")
    probe = pair.segments["probe"]
    assert probe.stop == pair.segments["think_close"].start
    differ = [p for p in probe.positions if pair.clean_tokens[0, p] != pair.corrupted_tokens[0, p]]
    assert [tok.decode([int(pair.clean_tokens[0, p])]) for p in differ] == [" 7"]
    metric = logit_diff_metric(5, 6, position=-1)
    sweep = patch_residual(lively, pair, None, metric, positions=["probe", "think_close", -1])
    assert sweep.values.shape == (lively.cfg.n_layers, len(probe) + 2)
    labels = sweep.labels["position"]
    assert labels[0].split()[1] == "probe" and "think_close" in labels[-2]
    assert "answer" in labels[-1]


def test_probes_of_different_token_counts_are_refused_with_the_tokens(lively):
    tok = lively.tokenizer
    clean = rc.Trace.from_parts("Q: 3 + 4 = ", "\n3 + 4 = 7.\n", " 7", tok)
    corrupted = rc.Trace.from_parts("Q: 13 + 4 = ", "\n13 + 4 = 17.\n", " 17", tok)
    with pytest.raises(rc.errors.PairAlignmentError, match=r"8 tokens .* 9 in the corrupted"):
        probe_pair(clean, corrupted, tok, clean_answer="7", corrupted_answer="17")


def test_a_probe_merged_into_think_close_is_refused():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    # a tokenizer with one merge, "x" + "<": a probe ending in "x" fuses with "</think>"
    vocab = {c: i for i, c in enumerate(sorted(set("Q<think>\nr.</think> 1abx")))}
    vocab["x<"] = len(vocab)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.BPE(vocab=vocab, merges=[("x", "<")]))
    )
    trace = rc.Trace.from_text("Q<think>\nr.\n</think> 1", tok)
    with pytest.raises(rc.errors.PairAlignmentError, match="junction"):
        insert_probe(trace, "abx", tok)
    fine = insert_probe(trace, "ab.", tok)
    assert fine.metadata["probe_tokens"] == [trace["think_close"].start, fine["think_close"].start]
    with pytest.raises(ValueError, match="contains"):
        insert_probe(trace, "a</think>b", tok)


def test_positions_resolve_names_segments_and_negative_indices(lively):
    clean, corrupted = traces(lively.tokenizer)
    pair = align_pair(clean, corrupted)
    close = pair.segments["think_close"]
    assert pair.resolve("think_close") == [close.start]
    assert pair.resolve([close, -1]) == [close.start, len(pair) - 1]
    with pytest.raises(KeyError, match="choose from"):
        pair.resolve("probe")
    with pytest.raises(IndexError, match="aligned positions"):
        pair.resolve([len(pair)])


def test_segment_names_need_traces(lively):
    clean, corrupted = traces(lively.tokenizer)
    metric = logit_diff_metric(5, 6, position=-1)
    short = clean.tokens[:, : len(corrupted)]
    with pytest.raises(KeyError, match="pass two Traces"):
        patch_residual(lively, short, corrupted.tokens, metric, positions="answer")
