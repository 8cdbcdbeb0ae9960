"""Peak memory of ``HeadIntervention.effect`` on many long traces against one batch.

Before batching, ``effect`` and ``metrics.answer_logprob`` ran every trace in one forward pass
(22 traces of up to 1024 tokens on ``gpt2_small()`` peaked at 18.5 GB). Now they run
``batch_size`` traces per pass, so the peak should be that of one batch whatever the number of
traces. Each variant runs in a fresh process and reports its peak resident memory (model
included):

* ``one_batch``  ``HeadIntervention(...).effect`` on ``batch_size`` traces (one batch: two
  forward passes, without and with the intervention)
* ``effect``     the same on ``n_traces`` traces (2 × n / batch passes)

    python benchmarks/bench_effect_memory.py [--model gpt2_small|gpt2_wide] [--n-traces 100]
        [--tokens 1024] [--batch-size 4]

``gpt2_wide`` (default) is a 2-layer GPT-2 with the width, vocabulary and context of GPT-2
small, so the run takes minutes on a CPU; ``gpt2_small`` is the full 12-layer model.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _model(name: str):
    from reasoning_circuits import testing

    if name == "gpt2_small":
        return testing.gpt2_small(seed=0)
    return testing.tiny_gpt2(
        seed=0, n_layers=2, n_heads=12, d_model=768, n_ctx=1024, vocab_size=50257
    )


def _traces(model, n: int, tokens: int):
    import reasoning_circuits as rc

    sentence = " Then 12 + 30 = 42, so we keep 42 and add 7."
    long = rc.Trace.from_parts(
        "Q: what is 42 + 7?", sentence * (tokens // 8), " The answer is 49.", model.tokenizer
    )
    # lengths just under the budget, a little different from trace to trace
    return [rc.fit_to_context(long, tokens - 8 * (i % 3)) for i in range(n)]


def child(variant: str, model_name: str, n: int, tokens: int, batch_size: int) -> None:
    import reasoning_circuits as rc

    model = _model(model_name)
    traces = _traces(model, n if variant == "effect" else batch_size, tokens)
    start = time.perf_counter()
    iv = rc.HeadIntervention(["L0H3", "L1H5"], "zero", positions="answer")
    iv.effect(model, traces, batch_size=batch_size, progress=False)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "variant": variant,
                "peak_mb": peak_mb,
                "seconds": seconds,
                "traces": len(traces),
                "longest": max(map(len, traces)),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="gpt2_wide", choices=["gpt2_wide", "gpt2_small"])
    parser.add_argument("--n-traces", type=int, default=100)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.model, args.n_traces, args.tokens, args.batch_size)
        return
    results = {}
    for variant in ("one_batch", "effect"):
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                variant,
                "--model",
                args.model,
                "--n-traces",
                str(args.n_traces),
                "--tokens",
                str(args.tokens),
                "--batch-size",
                str(args.batch_size),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
        print(results[variant], flush=True)
    ratio = results["effect"]["peak_mb"] / results["one_batch"]["peak_mb"]
    print(
        f"{args.model}, {args.n_traces} traces of <= {args.tokens} tokens, "
        f"batch {args.batch_size}: "
        f"effect peak {results['effect']['peak_mb']:.0f} MB vs one batch "
        f"{results['one_batch']['peak_mb']:.0f} MB = {ratio:.2f}x (goal <= 1.2x)"
    )


if __name__ == "__main__":
    main()
