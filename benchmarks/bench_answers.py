"""Batched ``generate_answers`` against one trace at a time (tiny reasoner).

The tiny reasoner first writes ``n`` held-out traces (prompt, reasoning, ``</think>``,
answer); then :func:`rc.generation.generate_answers` regenerates every answer greedily after
``</think>``, with ``batch_size=8`` and with ``batch_size=1``, twice: without an
intervention and with L0H5 mean-ablated at the answer (``by="segment_offset"``, the model
card's head). For each: generated tokens per second of wall time, the ratio, and an
assertion that both batch sizes return the same strings.

    python benchmarks/bench_answers.py [--n 64] [--batch-size 8] [--max-new-tokens 24]

``--threads 1`` (default), as in ``bench_generation.py``: on a shared 2-core machine extra
torch threads slow this small model down.
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    import reasoning_circuits as rc
    from reasoning_circuits.generation import generate_answers
    from reasoning_circuits.organism import generate

    model = rc.load_model("tiny-reasoner")
    tokenizer = model.tokenizer
    problems = rc.organism.make_problems(args.n, seed=0, split="heldout")
    finished = [g for g in generate(model, problems, max_new_tokens=200) if g.finished]
    traces = [rc.Trace.from_ids(g.ids, tokenizer) for g in finished]
    head = rc.Head(0, 5)
    means = rc.mean_head_outputs(
        model, traces, [head], positions="answer", by="segment_offset", fallback="pooled"
    )
    ablate = rc.HeadIntervention([head], "mean", positions="answer", means=means)
    print(
        f"tiny reasoner, {len(traces)} traces (prefixes of "
        f"{min(t['answer'].start for t in traces)}-{max(t['answer'].start for t in traces)} "
        f"tokens), greedy answers of at most {args.max_new_tokens} tokens, "
        f"{args.threads} thread(s)"
    )
    print(f"{'intervention':<16} {'batch':>5} {'seconds':>8} {'tokens':>7} {'tokens/s':>9}")
    for label, intervention in (("none", None), ("mean-ablate L0H5", ablate)):
        seconds: dict[int, float] = {}
        outputs: dict[int, list[str]] = {}
        for batch_size in (args.batch_size, 1):
            start = time.perf_counter()
            outputs[batch_size] = generate_answers(
                model,
                traces,
                intervention,
                max_new_tokens=args.max_new_tokens,
                batch_size=batch_size,
                progress=False,
            )
            seconds[batch_size] = time.perf_counter() - start
        assert outputs[args.batch_size] == outputs[1], "batch sizes disagree"
        # each answer's tokens, plus the EOS step of every answer that ended before the cap
        tokens = sum(
            min(args.max_new_tokens, len(tokenizer.encode(a, add_special_tokens=False)) + 1)
            for a in outputs[1]
        )
        for batch_size in (args.batch_size, 1):
            rate = tokens / seconds[batch_size]
            print(f"{label:<16} {batch_size:>5} {seconds[batch_size]:8.2f} {tokens:>7} {rate:9.1f}")
        ratio = seconds[1] / seconds[args.batch_size]
        correct = sum(
            rc.grading.grade(a, str(p.value), kind="math", think="optional").correct
            for a, p in zip(outputs[1], (g.problem for g in finished))
        )
        print(
            f"{label:<16} speed-up of batch {args.batch_size} over batch 1: {ratio:.2f}x; "
            f"identical outputs; {correct}/{len(traces)} answers right"
        )


if __name__ == "__main__":
    main()
