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
    accuracy = sum(g.correct for g in with_reasoning) / len(problems)
    accuracy_without = sum(g.correct for g in without) / len(problems)
    print(f"{len(problems)} held-out problems, e.g.\n  {problems[0].question}")
    print(f"  model wrote: {with_reasoning[0].completion!r}\n")
    print(f"accuracy with reasoning:                  {accuracy:.1%}")
    print(f"accuracy with 'I have finished thinking': {accuracy_without:.1%}\n")

    traces = [
        rc.Trace.from_ids(g.ids, model.tokenizer, metadata={"question": g.problem.question})
        for g in with_reasoning
        if g.finished
    ]
    print(f"a trace: {traces[0]!r}")
    print(f"  its reasoning sentences: {traces[0].sentence_texts}\n")
    profiles = rc.AttentionProfile.compute(model, traces, batch_size=20)

    ranking = rc.rank_heads(profiles, query="answer", key="reasoning", k=5)
    low, high = profiles.bootstrap_ci("answer", "reasoning", n_resamples=1000)
    print("Top reasoning-focused heads (mean answer→reasoning mass over traces, 95% CI):")
    for row in ranking.to_frame().itertuples():
        ci = f"[{low[row.layer, row.head]:.3f}, {high[row.layer, row.head]:.3f}]"
        print(f"  {row.rank}. L{row.layer}H{row.head}  {row.score:.3f}  {ci}")

    print("\nWhere the answer's attention goes (mean over traces, layers and heads):")
    for part in profiles.parts:
        share = profiles.mean("answer", part).mean()
        print(f"  {part:12s} {share:6.3f}  {'#' * round(share * 50)}")

    try:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / "answer_to_reasoning_heatmap.png"
        rc.plotting.plot_head_heatmap(
            profiles.mean("answer", "reasoning"),
            title="tiny-reasoner: answer → reasoning mass (red: top-5)",
            highlight=ranking,
            path=path,
        )
        print(f"\nheatmap written to {path}")
    except ImportError:
        print("\n(no heatmap: pip install 'reasoning_circuits[plot]' to get matplotlib)")
    print(f"done in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
