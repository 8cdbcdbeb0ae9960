"""Quickstart: reasoning-focused heads of a real (tiny) reasoning model, offline, in seconds.

The library ships ``tiny-reasoner``, a small GPT-2 trained here on a multi-hop arithmetic task
whose answer must be read from its own chain of thought. This script generates traces with
and without reasoning, profiles where the answer attends, ranks the heads that read the
reasoning, and draws them. The same calls take a hub model:
``model = rc.load_model("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B")``.

    python examples/quickstart.py [--n 40] [--out out/]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import reasoning_circuits as rc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=40, help="held-out problems to generate")
    parser.add_argument("--out", type=Path, default=Path("out"), help="where to write the heatmap")
    args = parser.parse_args()
    start = time.perf_counter()

    model = rc.load_model("tiny-reasoner")
    problems = rc.organism.make_problems(args.n, seed=7, split="heldout")
    with_reasoning = rc.organism.generate(model, problems, mode="reasoning")
    without = rc.organism.generate(model, problems, mode="finished")
    right = sum(g.correct for g in with_reasoning)
    right_without = sum(g.correct for g in without)
    accuracy = rc.stats.proportion_ci(right, len(problems))  # Wilson 95% interval
    accuracy_without = rc.stats.proportion_ci(right_without, len(problems))
    print(f"{len(problems)} held-out problems, e.g.\n  {problems[0].question}")
    print(f"  model wrote: {with_reasoning[0].completion!r}\n")
    print(f"accuracy with reasoning:                  {accuracy}")
    print(f"accuracy with 'I have finished thinking': {accuracy_without}\n")

    traces = [
        rc.Trace.from_ids(g.ids, model.tokenizer, metadata={"question": g.problem.question})
        for g in with_reasoning
        if g.finished
    ]
    print(f"a trace: {traces[0]!r}")
    print(f"  its reasoning sentences: {traces[0].sentence_texts}\n")
    # the segments, plus the rows that emit the answer's value: most answer rows write the
    # fixed text "The answer is" and need nothing from the reasoning
    emit = {"emit": rc.rows.predicting()}
    profiles = rc.AttentionProfile.compute(model, traces, queries=emit, batch_size=20)

    for query in ("answer", "emit"):
        ranking = rc.rank_heads(profiles, query=query, key="reasoning", k=5)
        # simultaneous intervals: these heads were picked by looking at the data
        low, high = profiles.ci(query, "reasoning", simultaneous=True)
        print(f"Top heads by {query}→reasoning mass (mean over traces, simultaneous 95% CI):")
        for row in ranking.to_frame().itertuples():
            ci = f"[{low[row.layer, row.head]:.3f}, {high[row.layer, row.head]:.3f}]"
            print(f"  {row.rank}. L{row.layer}H{row.head}  {row.score:.3f}  {ci}")
        print()

    print("\nWhere the answer's attention goes (mean over traces, layers and heads):")
    for part in profiles.parts:
        share = profiles.mean("answer", part).mean()
        print(f"  {part:12s} {share:6.3f}  {'#' * round(share * 50)}")

    try:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / "emit_to_reasoning_heatmap.png"
        rc.plotting.plot_head_heatmap(
            profiles.mean("emit", "reasoning"),
            title="tiny-reasoner: answer-emitting row → reasoning mass (red: top-5)",
            highlight=ranking,
            path=path,
        )
        print(f"\nheatmap written to {path}")
    except ImportError:
        print("\n(no heatmap: pip install 'reasoning_circuits[plot]' to get matplotlib)")
    print(f"done in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
