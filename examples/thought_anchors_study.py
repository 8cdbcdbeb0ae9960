"""Thought anchors end to end: which reasoning sentences matter, are they right, two models.

The pipeline of the PTS study, done soundly, on two small organisms that run offline:

1. each model solves the same held-out problems (greedy, its own traces);
2. every reasoning sentence gets its importance by removal, attention suppression and
   resampling (k rollouts kept vs replaced, Wilson intervals, an exact test);
3. its arithmetic is checked exactly (the task is mod 10), it gets a category and, where a
   claim is wrong, a failure mode;
4. its own attention rows give an entropy and a sink share per layer × head;
5. the two models are compared on problem means (the same problems: paired), with the
   confounds (sentence length, sink share) beside the entropy, and plots with intervals.

    python examples/thought_anchors_study.py --out runs/anchors [--n 8] [--rollouts 8]
    python examples/thought_anchors_study.py --model-b DIR   # any organism-style HF directory

Model B defaults to the shipped ``tiny-reasoner-b`` (another seed and a smaller size, trained
from scratch on correct reasoning only, while model A was fine-tuned with wrong and skipped
steps: the two differ in training too; see its
model card); train another with ``python -m reasoning_circuits.organism.train --out DIR
--steps 1500 --seed 1 --n-layer 3 --n-head 4 --n-embd 96 --n-inner 384``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

import reasoning_circuits as rc
from reasoning_circuits.anchors import thought_anchors
from reasoning_circuits.categories import diagnose
from reasoning_circuits.comparison import compare_models
from reasoning_circuits.receivers import sentence_attention


def sentence_frame(model, name: str, problems, args) -> pd.DataFrame:
    """One row per reasoning sentence of the model's own traces of ``problems``."""
    tok = model.tokenizer
    generated = rc.organism.generate(model, problems)
    rows = []
    for index, (problem, g) in enumerate(zip(problems, generated)):
        if not g.finished:
            print(f"  {name}: problem {index} did not finish its reasoning; left out")
            continue
        trace = rc.Trace.from_ids(g.ids, tok, metadata={"id": f"p{index}"})
        anchors = thought_anchors(
            model,
            trace,
            gold=str(problem.value),
            kind="gsm8k",
            n_rollouts=args.rollouts,
            temperature=1.0,
            max_new_tokens=48,
            batch_size=args.batch_size,
            seed=args.seed,
            progress=False,
        ).to_frame()
        diagnosis = diagnose(trace, modulus=10).to_frame()
        (attention,) = sentence_attention(model, trace)
        # one number per sentence: the mean over layers and heads of the sentence's rows
        entropy = attention.entropy.mean(axis=(0, 1))
        sink = attention.sink.mean(axis=(0, 1))
        for s in range(len(trace.sentences)):
            rows.append(
                {
                    "model": name,
                    "problem_id": f"p{index}",
                    "correct": bool(g.value_correct),
                    "sentence": s,
                    "text": trace.sentence_texts[s].strip(),
                    "category": diagnosis.loc[s, "category"],
                    "failure_mode": diagnosis.loc[s, "failure_mode"],
                    "removal_importance": anchors.loc[s, "removal_importance"],
                    "suppression_importance": anchors.loc[s, "suppression_importance"],
                    "delta": anchors.loc[s, "delta"],
                    "delta_low": anchors.loc[s, "delta_low"],
                    "delta_high": anchors.loc[s, "delta_high"],
                    "entropy": entropy[s],
                    "sink": sink[s],
                    "n_tokens": int(attention.n_tokens[s]),
                }
            )
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8, help="held-out problems per model")
    parser.add_argument("--rollouts", type=int, default=8, help="rollouts per condition (k)")
    parser.add_argument("--model-a", default="tiny-reasoner")
    parser.add_argument("--model-b", default="tiny-reasoner-b")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="directory for tables and plots")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="thought_anchors_"))
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    start = time.perf_counter()

    problems = rc.organism.make_problems(args.n, seed=args.seed, split="heldout")
    frames = {}
    for name in (args.model_a, args.model_b):
        print(f"== {name}")
        model = rc.load_model(name)
        frames[name] = sentence_frame(model, name, problems, args)
        frames[name].to_csv(out / f"sentences_{Path(name).name}.csv", index=False)
    both = pd.concat(frames.values(), ignore_index=True)

    print("\nSentences of the first problem (model A):")
    first = both[(both.model == args.model_a) & (both.problem_id == both.problem_id.iloc[0])]
    print(
        first[
            [
                "text",
                "category",
                "removal_importance",
                "delta",
                "delta_low",
                "delta_high",
                "failure_mode",
            ]
        ].to_string(index=False)
    )

    print("\nWhich sentence matters most (removal), per model:")
    for name, frame in frames.items():
        top = frame.loc[frame.groupby("problem_id")["removal_importance"].idxmax()]
        last = frame.groupby("problem_id")["sentence"].max()
        hits = int((top.set_index("problem_id")["sentence"] == last).sum())
        ci = rc.stats.proportion_ci(hits, len(last))
        print(
            f"  {name}: the last step in {hits} of {len(last)} problems "
            f"({ci.estimate:.0%}, 95% Wilson [{ci.low:.0%}, {ci.high:.0%}])"
        )

    print("\nFailure modes found by exact arithmetic (mod 10):")
    print(both.groupby("model")["failure_mode"].value_counts(dropna=False).to_string())

    result = compare_models(
        frames[args.model_a],
        frames[args.model_b],
        metrics=["removal_importance", "entropy"],
        confounds=["n_tokens", "sink"],
        names=(args.model_a, args.model_b),
        problem="problem_id",
    )
    print(f"\n{result}")
    result.to_frame().to_csv(out / "comparison.csv", index=False)
    figure = result.plot(title="tiny reasoners A vs B: problem means, mean ± 95% t interval")
    figure.savefig(out / "comparison.png", dpi=110)
    print(f"\nwrote {out / 'comparison.png'} and the tables in {out}")
    print(f"done in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
