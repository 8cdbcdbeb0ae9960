"""Wall time and peak memory of AttentionProfile.compute against three references.

Each variant runs in a fresh process, so its peak resident memory (model included) is its
own. Variants, on the same tokens:

* ``profile``   AttentionProfile.compute (all layers, default statistics)
* ``profile+gini`` the same with the Gini coefficient (sorts every attention row)
* ``forward``   (a) a plain forward of the same TransformerBridge
* ``cache``     (b) run_with_cache of every hook_pattern, then slicing the segments
* ``hf_sdpa``   (c) the underlying Hugging Face model's plain forward with SDPA (the floor)

Models (random weights, offline): ``gpt2_small`` at 1024 tokens (its full context) and an
8-layer Qwen2-style model with 12 query heads, 2 KV heads and head dim 64 at 4096 tokens.

    python benchmarks/bench_attention.py [--only gpt2] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

VARIANTS = ("profile", "profile+gini", "forward", "cache", "hf_sdpa")
CASES = {"gpt2": ("gpt2_small", 1024), "qwen2": ("qwen2_8l", 4096)}


def _build(case: str, variant: str):
    import reasoning_circuits as rc
    from reasoning_circuits import testing

    if case == "gpt2_small":
        spec = dict(n_layers=12, n_heads=12, d_model=768, n_ctx=1024, vocab_size=50257, seed=0)
        if variant == "hf_sdpa":
            return testing._hf_gpt2(**spec), rc
        return testing.gpt2_small(seed=0), rc
    spec = dict(
        n_layers=8,
        n_heads=12,
        n_kv_heads=2,
        d_head=64,
        d_mlp=None,
        n_ctx=8192,
        vocab_size=1024,
        seed=0,
    )
    if variant == "hf_sdpa":
        return testing._hf_qwen2(**spec), rc
    return testing.qwen2(**{k: v for k, v in spec.items() if k != "d_mlp"}), rc


def _trace(rc, tokenizer, n_tokens: int):
    """A trace of exactly n_tokens: prompt, reasoning of numbered steps, answer."""
    reasoning = "\n" + "".join(f"Step {i}: 3 + {i} = {i + 3}. " for i in range(2000))
    trace = rc.Trace.from_parts("Q: add the numbers. ", reasoning, " The answer is 7.", tokenizer)
    ids = list(trace.ids)
    close = trace["think_close"].start
    keep_after = len(ids) - close
    cut = n_tokens - keep_after
    return rc.Trace.from_ids(ids[:cut] + ids[close:], tokenizer)


def child(case: str, variant: str, n_tokens: int, repeats: int) -> None:
    import torch

    torch.set_grad_enabled(False)
    model, rc = _build(case, variant)
    if variant == "hf_sdpa":
        model.config._attn_implementation = "sdpa"
        tokenizer = rc.testing.bpe_tokenizer()
    else:
        tokenizer = model.tokenizer
    trace = _trace(rc, tokenizer, n_tokens)
    assert len(trace) == n_tokens, len(trace)
    tokens = trace.tokens

    def run() -> None:
        if variant == "profile":
            rc.AttentionProfile.compute(model, trace)
        elif variant == "profile+gini":
            rc.AttentionProfile.compute(
                model, trace, statistics=("mass", "per_token", "entropy", "gini")
            )
        elif variant == "forward":
            model(tokens, return_type=None)
        elif variant == "cache":
            _, cache = model.run_with_cache(
                tokens, names_filter=lambda n: n.endswith("hook_pattern")
            )
            answer, reasoning = trace["answer"].slice, trace["reasoning"].slice
            for name in cache:
                cache[name][0, :, answer, reasoning].sum(-1).mean(-1)
        elif variant == "hf_sdpa":
            model(tokens)

    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps({"seconds": min(times), "peak_gb": peak_gb}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(CASES), help="run one model only")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per variant (min)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        case, variant, n = args.child
        child(case, variant, int(n), args.repeats)
        return
    for key, (case, n_tokens) in CASES.items():
        if args.only and key != args.only:
            continue
        results = {}
        for variant in VARIANTS:
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--repeats",
                    str(args.repeats),
                    "--child",
                    case,
                    variant,
                    str(n_tokens),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
            r = results[variant]
            print(
                f"{case} {n_tokens:5d} tok  {variant:13s} {r['seconds']:7.2f} s  "
                f"{r['peak_gb']:6.2f} GB peak",
                flush=True,
            )
        p, a, b, c = (results[v] for v in ("profile", "forward", "cache", "hf_sdpa"))
        g = results["profile+gini"]
        print(
            f"{case}: profile/forward time {p['seconds'] / a['seconds']:.2f}x, "
            f"peak {p['peak_gb'] / a['peak_gb']:.2f}x; profile/cache peak "
            f"{p['peak_gb'] / b['peak_gb']:.2f}x, time {p['seconds'] / b['seconds']:.2f}x; "
            f"profile/hf_sdpa time {p['seconds'] / c['seconds']:.2f}x, peak "
            f"{p['peak_gb'] / c['peak_gb']:.2f}x; with gini: time "
            f"{g['seconds'] / a['seconds']:.2f}x forward\n",
            flush=True,
        )


if __name__ == "__main__":
    main()
