"""Resampling rollouts: shared prefix cache + batching vs independent rollouts from scratch.

The resampling importance of one sentence needs k rollouts from the same token prefix. The
fast path (``sample_rollouts``, default) runs the prefix once and decodes the rollouts in
batches from copies of its KV cache; the slow path (``share_prefix=False``) recomputes the
prefix for every rollout and decodes one rollout at a time, as a plain ``generate`` loop would.
Both give the same rollouts for the same seeds (asserted here, token for token).

    python benchmarks/bench_anchors.py [--rollouts 64] [--batch-size 32]

Prints rollouts per second of each path and the speed-up, on the shipped tiny reasoner, from
the prefix of the last reasoning sentence of a held-out problem (the "kept" condition) and from
the prefix before it (the "replaced" condition's draws, stopped at no boundary here).
"""

from __future__ import annotations

import argparse
import os
import time

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import reasoning_circuits as rc
from reasoning_circuits.anchors import rollout_seed
from reasoning_circuits.organism import generate, make_problems
from reasoning_circuits.rollouts import sample_rollouts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rollouts", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=1.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = rc.load_model("tiny-reasoner")
    problem = make_problems(1, seed=77, split="heldout")[0]
    trace = rc.Trace.from_ids(generate(model, [problem])[0].ids, model.tokenizer)
    kw = {"temperature": args.temperature, "top_p": 1.0, "max_new_tokens": 120}
    rows = []
    for name, prefix in (
        ("kept (prefix through the first sentence)", trace.ids[: trace.sentences[0].stop]),
        ("replaced (prefix before the first sentence)", trace.ids[: trace.sentences[0].start]),
    ):
        seeds = [rollout_seed(0, "bench", 0, name[:4], r) for r in range(args.rollouts)]
        sample_rollouts(model, prefix, seeds[:2], **kw)  # warm-up
        start = time.perf_counter()
        fast = sample_rollouts(model, prefix, seeds, batch_size=args.batch_size, **kw)
        t_fast = time.perf_counter() - start
        start = time.perf_counter()
        slow = sample_rollouts(model, prefix, seeds, share_prefix=False, **kw)
        t_slow = time.perf_counter() - start
        assert fast == slow, "the two paths gave different rollouts for the same seeds"
        tokens = sum(len(r.ids) for r in fast)
        rows.append((name, len(prefix), tokens / len(fast), t_slow, t_fast))
    print(
        f"tiny reasoner, {args.rollouts} rollouts per prefix, batch {args.batch_size}, "
        f"temperature {args.temperature}, 1 thread; outcomes identical (asserted)"
    )
    print("| prefix | prefix tokens | mean new tokens | independent rollouts/s | "
          "shared+batched rollouts/s | speed-up |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for name, n_prefix, mean_new, t_slow, t_fast in rows:
        print(
            f"| {name} | {n_prefix} | {mean_new:.1f} | {args.rollouts / t_slow:.1f} | "
            f"{args.rollouts / t_fast:.1f} | {t_slow / t_fast:.1f}× |"
        )


if __name__ == "__main__":
    main()
