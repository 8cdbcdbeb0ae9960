"""Per-head activation patching on gpt2_small(), 256 tokens, all 144 heads.

Side by side in one run, same clean/corrupted pair and metric:

* TransformerLens' ``patching.get_act_patch_attn_head_out_all_pos`` (one forward per head);
* ``rc.patching.patch_heads(resume=False)``: full forwards, ``batch_size`` heads per pass;
* ``rc.patching.patch_heads`` (default ``resume=True``): the corrupted run recorded once and
  resumed from the patched layer, at the positions the patch changes;
* the resumed sweep again with the corrupted token at position 1 instead of the middle
  (less to skip: only the layers below each patch);
* ``rc.patching.attribution_patch_heads`` (one forward + one backward);
* residual patching as in R2A Fig. 7: every layer at the last 12 positions (where the probe,
  ``</think>`` and the answer sit), one forward per (layer, position) as R2A's code does,
  against ``rc.patching.patch_residual``.

It checks that the sweeps agree and prints the speed ratios.

    python benchmarks/bench_patching.py [--tokens 256]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from transformer_lens import patching as tl_patching

import reasoning_circuits as rc
from reasoning_circuits.patching import (
    attribution_patch_heads,
    logit_diff_metric,
    patch_heads,
    patch_residual,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=256)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    model = rc.testing.gpt2_small(seed=0)
    generator = torch.Generator().manual_seed(0)
    vocab = len(model.tokenizer)
    clean = torch.randint(100, vocab, (1, args.tokens), generator=generator)
    corrupted = clean.clone()
    corrupted[0, args.tokens // 2] = (clean[0, args.tokens // 2] + 1) % vocab
    metric = logit_diff_metric(5, 6, position=-1)

    def timed(label: str, fn):
        start = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - start
        print(f"{label:42s} {seconds:8.2f} s", flush=True)
        return result, seconds

    _, cache = model.run_with_cache(clean)
    theirs, t_tl = timed(
        "TransformerLens per-head sweep",
        lambda: tl_patching.get_act_patch_attn_head_out_all_pos(
            model, corrupted, cache, lambda logits: metric(logits).sum()
        ),
    )
    full = timed(
        "rc patch_heads resume=False batch_size=8",
        lambda: patch_heads(model, clean, corrupted, metric, batch_size=8, resume=False),
    )
    results = {}
    for batch_size in (1, 4, 12):
        results[batch_size] = timed(
            f"rc patch_heads batch_size={batch_size}",
            lambda b=batch_size: patch_heads(model, clean, corrupted, metric, batch_size=b),
        )
    early = corrupted.clone()
    early[0, args.tokens // 2] = clean[0, args.tokens // 2]
    early[0, 1] = (clean[0, 1] + 1) % vocab
    _, t_early = timed(
        "rc patch_heads batch_size=12, diff at pos 1",
        lambda: patch_heads(model, clean, early, metric, batch_size=12),
    )
    torch.set_grad_enabled(True)
    approx, t_attr = timed(
        "rc.patching.attribution_patch_heads",
        lambda: attribution_patch_heads(model, clean, corrupted, metric),
    )
    torch.set_grad_enabled(False)
    late = list(range(args.tokens - 12, args.tokens))
    _, clean_cache = model.run_with_cache(clean)

    def one_forward_per_patch() -> np.ndarray:
        out = np.empty((model.cfg.n_layers, len(late)))
        for layer in range(model.cfg.n_layers):
            name = f"blocks.{layer}.hook_resid_pre"
            for col, pos in enumerate(late):

                def put(resid, hook, pos=pos, name=name):
                    resid[:, pos] = clean_cache[name][:, pos]
                    return resid

                logits = model.run_with_hooks(corrupted, fwd_hooks=[(name, put)])
                out[layer, col] = float(metric(logits)[0])
        return out

    loop, t_loop = timed("R2A-style residual loop, last 12 positions", one_forward_per_patch)
    resid, t_resid = timed(
        "rc patch_residual, last 12 positions",
        lambda: patch_residual(model, clean, corrupted, metric, positions=late),
    )
    best_b = min(results, key=lambda b: results[b][1])
    sweep, t_best = results[best_b]
    gap = np.abs(sweep.values - theirs.detach().numpy()).max()
    gap_full = np.abs(full[0].values - theirs.detach().numpy()).max()
    print(f"\nmax |ours - TransformerLens| = {gap:.2e} (resumed), {gap_full:.2e} (full forwards)")
    print(f"resumed sweep (batch_size={best_b}) vs TransformerLens: {t_tl / t_best:.2f}x faster")
    print(
        f"resumed sweep, first difference at position 1 instead of {args.tokens // 2}: "
        f"{t_tl / t_early:.2f}x faster than TransformerLens"
    )
    print(f"full-forward batched sweep vs TransformerLens: {t_tl / full[1]:.2f}x faster")
    print(
        f"residual patching at the last 12 positions: {t_loop / t_resid:.1f}x faster than one "
        f"forward per patch (max |difference| {np.abs(resid.values - loop).max():.2e})"
    )
    print(
        f"attribution: {t_tl / t_attr:.1f}x faster than TransformerLens' exact sweep, "
        f"{t_best / t_attr:.1f}x faster than the resumed exact sweep, "
        f"Spearman rank correlation {approx.rank_correlation(sweep):.3f}"
    )


if __name__ == "__main__":
    main()
