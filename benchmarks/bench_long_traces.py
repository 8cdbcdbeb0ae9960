"""Long traces: time and peak memory of the fast and pattern attention profiles vs plain SDPA.

Model: Qwen2-1.5B's widths (d_model 1536, 12 query heads, 2 key/value heads, head dim 128,
MLP 8960) with 2 layers instead of 28 (``--layers 28`` for the real depth) and a 1,024-token
vocabulary instead of 151,936 (random weights, float32, CPU), so that it runs on a 2-core
machine; attention and MLP cost per layer are those of the real model. Variants, each in its
own process on the same tokens:

* ``sdpa``     the model's Hugging Face modules with transformers' SDPA attention up to the
  last layer's attention (the floor: the forward a profile of every layer needs; the fast
  path also stops there, so neither runs the last MLP nor the LM head)
* ``fast``     ``AttentionProfile.compute(method="fast")`` (mass, per-token mass, entropy)
* ``fast_answer``  the same restricted to the answer's rows (``query_parts=("answer",)``)
* ``pattern``  ``AttentionProfile.compute(method="pattern")`` (eager [head, T, T] patterns)
* ``knockout_fast`` / ``knockout_pattern``  ``rc.metrics.answer_logprob`` under an attention
  knockout (answer → reasoning, every head of every layer) with ``method="fast"`` /
  ``"pattern"``; these run the whole model (last MLP and LM head at the answer rows
  included), so they cost slightly more than the floor even without the knockout

Peak memory is the process's peak resident set (``ru_maxrss``), model included; ``base`` is
the resident set after building the model, before the timed run. One thread
(``torch.set_num_threads(1)``) for comparability on a shared machine; besides wall time the
process CPU time is reported, which other jobs on the machine disturb much less.

    python benchmarks/bench_long_traces.py [--tokens 2048 4096 8192] [--pattern-max 8192]
        [--layers 2] [--variants sdpa fast ...]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the checkout's package, not an installed one

VARIANTS = ("sdpa", "fast", "fast_answer", "pattern", "knockout_fast", "knockout_pattern")
PATTERN_VARIANTS = ("pattern", "knockout_pattern")
SPEC = {
    "n_layers": 2,
    "n_heads": 12,
    "n_kv_heads": 2,
    "d_head": 128,
    "d_mlp": 8960,
    "n_ctx": 16384,
    "vocab_size": 1024,
    "seed": 0,
}


def _rss_gb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**30


def _trace(rc, tokenizer, n_tokens: int):
    """A trace of exactly n_tokens: prompt, reasoning of numbered steps, a short answer."""
    reasoning = "\n" + "".join(f"Step {i}: 3 + {i} = {i + 3}. " for i in range(n_tokens // 6))
    trace = rc.Trace.from_parts("Q: add the numbers. ", reasoning, " The answer is 7.", tokenizer)
    ids = list(trace.ids)
    close = trace["think_close"].start
    cut = n_tokens - (len(ids) - close)
    return rc.Trace.from_ids(ids[:cut] + ids[close:], tokenizer)


def child(variant: str, n_tokens: int, repeats: int, n_layers: int) -> None:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    import reasoning_circuits as rc
    from reasoning_circuits import _fast_attention

    torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    spec = {**SPEC, "n_layers": n_layers}
    model = rc.testing.qwen2(**spec)
    trace = _trace(rc, model.tokenizer, n_tokens)
    assert len(trace) == n_tokens, len(trace)
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    last = n_layers - 1

    def floor(module, *args, **kwargs):
        out = sdpa_attention_forward(module, *args, **kwargs)
        if module.layer_idx == last:
            raise _fast_attention._Stop
        return out

    AttentionInterface.register("bench_sdpa_floor", floor)
    shadow = _fast_attention.hf_shadow(model, "bench_sdpa_floor")
    cells = [(layer, head) for layer in range(n_layers) for head in range(SPEC["n_heads"])]
    knockout = rc.HeadIntervention(cells, "knockout", query="answer", key="reasoning")
    base = _rss_gb()

    def run() -> None:
        if variant == "sdpa":
            with contextlib.suppress(_fast_attention._Stop):
                shadow(input_ids=trace.tokens, use_cache=False)
        elif variant == "fast":
            rc.AttentionProfile.compute(model, trace, method="fast")
        elif variant == "fast_answer":
            rc.AttentionProfile.compute(model, trace, method="fast", query_parts=("answer",))
        elif variant.startswith("knockout_"):
            method = variant.removeprefix("knockout_")
            rc.metrics.answer_logprob(model, trace, knockout, method=method)
        else:
            rc.AttentionProfile.compute(model, trace, method="pattern")

    times, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        run()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps({"seconds": min(times), "cpu": min(cpu), "peak_gb": peak, "base_gb": base}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[2048, 4096, 8192])
    parser.add_argument(
        "--pattern-max", type=int, default=8192, help="longest trace for the pattern path"
    )
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per variant (min)")
    parser.add_argument(
        "--layers", type=int, default=SPEC["n_layers"], help="model depth (Qwen2-1.5B: 28)"
    )
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), args.repeats, args.layers)
        return
    rows = []
    for n_tokens in args.tokens:
        results = {}
        for variant in args.variants:
            if variant in PATTERN_VARIANTS and n_tokens > args.pattern_max:
                continue
            command = [sys.executable, __file__, "--repeats", str(args.repeats)]
            command += ["--layers", str(args.layers), "--child"]
            out = subprocess.run(
                [*command, variant, str(n_tokens)], capture_output=True, text=True, check=True
            )
            r = results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
            print(
                f"{n_tokens:6d} tok  {variant:11s} {r['seconds']:8.2f} s  cpu {r['cpu']:8.2f} s  "
                f"peak {r['peak_gb']:6.2f} GB  (base {r['base_gb']:.2f} GB)",
                flush=True,
            )
        rows.append((n_tokens, results))
    print(
        "\n| T | variant | wall | CPU | peak (run's own) | CPU / sdpa | peak / sdpa "
        "| own / sdpa own | pattern peak / peak |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for n_tokens, results in rows:
        floor = results.get("sdpa")
        for variant, r in results.items():
            own = r["peak_gb"] - r["base_gb"]
            t_ratio = m_ratio = o_ratio = vs_pattern = "–"
            if floor:
                t_ratio = f"{r['cpu'] / floor['cpu']:.2f}×"
                m_ratio = f"{r['peak_gb'] / floor['peak_gb']:.2f}×"
                o_ratio = f"{own / (floor['peak_gb'] - floor['base_gb']):.2f}×"
            pattern = results.get("pattern")
            if pattern:
                vs_pattern = f"{pattern['peak_gb'] / r['peak_gb']:.1f}×"
            print(
                f"| {n_tokens} | {variant} | {r['seconds']:.1f} s | {r['cpu']:.1f} s | "
                f"{r['peak_gb']:.2f} GB ({own:.2f}) | {t_ratio} | {m_ratio} | {o_ratio} | "
                f"{vs_pattern} |"
            )


if __name__ == "__main__":
    main()
