"""Planted heads: the ranking recovers heads whose attention we set ourselves.

A GPT-2-small-shaped model with random weights, in which three heads are *planted* to attend
from every answer token to the reasoning. Profiling and ranking must return exactly those
three: a check of the method with a known answer.

    python examples/planted_heads.py [--out out/]
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np

import reasoning_circuits as rc

PROBLEMS = [
    ("Tom has 3 apples and buys 4 more. How many apples does he have?", "3 + 4 = 7.", "7"),
    ("A box holds 6 eggs. How many eggs are in 5 boxes?", "6 * 5 = 30.", "30"),
    ("Sara had 20 dollars and spent 8. How much is left?", "20 - 8 = 12.", "12"),
    ("A train travels 60 km per hour for 2 hours. How far does it go?", "60 * 2 = 120.", "120"),
    ("There are 15 birds and 9 fly away. How many remain?", "15 - 9 = 6.", "6"),
    ("Each of 4 friends has 5 pencils. How many pencils in total?", "4 * 5 = 20.", "20"),
]
PLANTED = [rc.Head(3, 7), rc.Head(6, 2), rc.Head(9, 10)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out"), help="where to write the heatmap")
    args = parser.parse_args()
    start = time.perf_counter()

    model = rc.testing.gpt2_small(seed=0)
    tok = model.tokenizer
    traces = [
        rc.Trace.from_parts(
            question + " ",
            f"\nLet me think step by step. {step} Let me check: yes, {step}\n",
            f" The answer is {answer}.",
            tok,
            append_eos=True,
            metadata={"problem": i},
        )
        for i, (question, step, answer) in enumerate(PROBLEMS)
    ]
    print(f"{len(traces)} traces; the first one:\n  {traces[0]!r}")
    print(f"  reasoning sentences: {traces[0].sentence_texts}\n")

    with rc.testing.planted_attention(model, PLANTED):
        profiles = rc.AttentionProfile.compute(model, traces, batch_size=3)

    ranking = rc.rank_heads(profiles, query="answer", key="reasoning", k=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # planted heads are exactly constant
        low, high = profiles.ci("answer", "reasoning", simultaneous=True)
    print("Top reasoning-focused heads (mean answer→reasoning mass, simultaneous 95% CI):")
    for row in ranking.to_frame().itertuples():
        ci = f"[{low[row.layer, row.head]:.3f}, {high[row.layer, row.head]:.3f}]"
        if np.isnan(low[row.layer, row.head]):
            ci = "(the same in every trace: planted)"
        print(f"  {row.rank}. L{row.layer}H{row.head}  {row.score:.3f}  {ci}")
    found = set(ranking[:3]) == set(PLANTED)
    print(f"  planted heads {[str(h) for h in PLANTED]} recovered as the top 3: {found}\n")

    print("Where the answer's attention goes (mean over traces, layers and heads):")
    for part in profiles.parts:
        share = profiles.mean("answer", part).mean()
        print(f"  {part:12s} {share:6.3f}  {'#' * round(share * 50)}")

    try:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / "planted_heads_heatmap.png"
        rc.plotting.plot_head_heatmap(
            profiles.mean("answer", "reasoning"),
            title="answer → reasoning mass (red: top-5 heads)",
            highlight=ranking,
            path=path,
        )
        print(f"\nheatmap written to {path}")
    except ImportError:
        print("\n(no heatmap: pip install 'reasoning_circuits[plot]' to get matplotlib)")
    print(f"done in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
