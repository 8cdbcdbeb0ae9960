"""The R2A intervention study (§4), on the tiny reasoner: where is the answer carried?

1. Clean and corrupted problems that differ in one number (the chain's starting value). With a
   character-level tokenizer the two sequences align position by position.
2. A probe "Final answer is X." is inserted before </think> (R2A's v0 probe), with the clean
   answer in the clean input and the corrupted answer in the corrupted one.
3. Patching the clean residual stream into the corrupted run at each (layer, position) and
   measuring how much of the clean answer's logit difference comes back (R2A Fig. 7).
4. Ablating the reasoning-focused heads (answer positions) against random heads: the change
   in the answer's log-probability, with bootstrap CIs over problems. Heads are ranked two
   ways: by R2A's mean over all answer rows, and by the row that emits the answer's value;
   only the second finds the heads the answer needs (see the model card).

    python examples/intervention_study.py [--out out/]
"""

from __future__ import annotations

import argparse
import random
import re
from pathlib import Path

import numpy as np

import reasoning_circuits as rc
from reasoning_circuits.organism.evaluate import emitting_mass
from reasoning_circuits.organism.task import Problem, format_prompt
from reasoning_circuits.patching import logit_diff_metric, patch_residual


def with_probe(problem: Problem, answer: int) -> str:
    """Prompt + reference reasoning + probe + </think> + the answer's stem (no digit)."""
    probe = f"Final answer is {answer}."
    return f"{format_prompt(problem)}{problem.reasoning} {probe}\n</think> The answer is "


def corrupt(problem: Problem, rng: random.Random) -> Problem | None:
    """The same problem with the chain's starting value changed (None if the answer stays)."""
    first_rule = re.search(r"\b[a-z]=([a-z])[+*-]\d\.", problem.question)
    assert first_rule is not None
    name = first_rule[1]
    value = re.search(rf"\b{name}=(\d)\.", problem.question)[1]  # type: ignore[index]
    for new in rng.sample(range(10), 10):
        question = problem.question.replace(f"{name}={value}.", f"{name}={new}.", 1)
        other = rc.organism.solve(question)
        if other.value != problem.value:
            return other
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out"))
    parser.add_argument("--n", type=int, default=60, help="problems for the ablation study")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    model = rc.load_model("tiny-reasoner")
    tok = model.tokenizer

    # ---- 1-3: one clean/corrupted pair, residual patching over layers × positions
    for sampled in rc.organism.make_problems(50, seed=3, split="heldout"):
        problem = rc.organism.solve(sampled.question)  # no filler: both sides align
        other = corrupt(problem, rng)
        if other is not None:
            break
    clean_text = with_probe(problem, problem.value)
    corrupt_text = with_probe(other, other.value)
    clean = [tok.bos_token_id, *tok.encode(clean_text, add_special_tokens=False)]
    corrupted = [tok.bos_token_id, *tok.encode(corrupt_text, add_special_tokens=False)]
    assert len(clean) == len(corrupted), "one-digit changes keep the positions aligned"
    digit = {d: tok.encode(str(d), add_special_tokens=False)[0] for d in range(10)}
    metric = logit_diff_metric(digit[problem.value], digit[other.value], position=-1)
    print(f"clean:     {clean_text!r}\ncorrupted: {corrupt_text!r}\n")

    changed = [i for i, (a, b) in enumerate(zip(clean, corrupted)) if a != b]
    close = clean.index(tok.convert_tokens_to_ids("</think>"))
    probe_digit = close - 3  # "... is X.\n</think>": X, ".", "\n", then </think>
    assert clean[probe_digit] != corrupted[probe_digit], "the probe digits must differ"
    positions = [changed[0], probe_digit, close, len(clean) - 1]
    labels = ["changed fact", "probe answer", "</think>", "last (predicts X)"]
    sweep = patch_residual(
        model,
        np.array(clean),
        np.array(corrupted),
        metric,
        positions=positions,
        position_labels=labels,
    )
    print(f"logit difference clean {sweep.clean:.2f}, corrupted {sweep.corrupted:.2f}")
    print("normalised recovery by layer (rows) and position (columns):")
    print(
        sweep.to_frame()
        .pivot(index="layer", columns="position", values="normalized")
        .reindex(columns=labels)
        .round(3)
        .to_string()
    )
    try:
        sweep.plot(args.out / "residual_patching.png")
        print(f"heatmap: {args.out / 'residual_patching.png'}\n")
    except ImportError:
        print("(no heatmap: pip install 'reasoning_circuits[plot]')\n")

    # ---- 4: ablate the reasoning-focused heads at the answer, against random heads
    problems = rc.organism.make_problems(args.n, seed=4, split="heldout")
    traces = [
        rc.Trace.from_parts(
            format_prompt(p)[: -len(" <think>\n")] + " ",
            "\n" + p.reasoning + "\n",
            " " + p.gold,
            tok,
            append_eos=True,
        )
        for p in problems
    ]
    profiles = rc.AttentionProfile.compute(model, traces, batch_size=30)
    heads = [
        rc.Head(layer, head)
        for layer in range(model.cfg.n_layers)
        for head in range(model.cfg.n_heads)
    ]
    means = rc.mean_head_outputs(model, traces, heads, positions="answer")
    # two rankings: R2A's mean over all answer rows, and the row that emits the value
    by_answer = list(rc.rank_heads(profiles, k=3))
    by_emitting_row = list(rc.rank_heads(emitting_mass(model, traces)[None], k=3))
    for name, top in (("whole answer", by_answer), ("emitting row", by_emitting_row)):
        iv = rc.HeadIntervention(top, "mean", positions="answer", means=means)
        print(f"top-3 by {name} {[str(h) for h in top]} mean-ablated:")
        print(f"  {iv.effect(model, traces)}")
    others = [h for h in heads if h not in by_emitting_row]
    for _ in range(3):
        chosen = rng.sample(others, 3)
        iv = rc.HeadIntervention(chosen, "mean", positions="answer", means=means)
        print(f"random {[str(h) for h in chosen]}:\n  {iv.effect(model, traces)}")


if __name__ == "__main__":
    main()
