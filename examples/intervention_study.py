"""The R2A intervention study (§4), on the tiny reasoner: where is the answer carried?

1. Clean and corrupted problems that differ in one number (the chain's starting value).
2. A probe "Final answer is X." is inserted before </think> (R2A's v0 probe) with
   ``rc.probe_pair``, the clean answer in the clean trace and the corrupted answer in the
   corrupted one; it re-tokenizes, re-checks that the probes align and lines the two traces
   up segment by segment (masked padding where lengths differ).
3. Patching the clean residual stream into the corrupted run at each layer and at positions
   chosen by segment (the probe, </think>, the last position) and measuring how much of the
   clean answer's logit difference comes back (R2A Fig. 7).
4. Ablating the reasoning-focused heads (answer positions) against random heads: the change
   in the answer's log-probability, and in the accuracy of answers the model *generates*
   with the heads ablated, with bootstrap CIs over problems. Heads are ranked two ways: by
   R2A's mean over all answer rows, and by the row that emits the answer's value; only the
   second finds the heads the answer needs (see the model card).

    python examples/intervention_study.py [--out out/]
"""

from __future__ import annotations

import argparse
import random
import re
from pathlib import Path

import reasoning_circuits as rc
from reasoning_circuits.generation import answers_correct
from reasoning_circuits.organism.task import Problem, format_prompt
from reasoning_circuits.patching import logit_diff_metric, patch_residual


def as_trace(problem: Problem, tokenizer, *, answer: str | None = None) -> rc.Trace:
    """Prompt, reference reasoning and answer as a trace (default answer: the gold one)."""
    return rc.Trace.from_parts(
        format_prompt(problem)[: -len(" <think>\n")] + " ",
        "\n" + problem.reasoning + " ",
        " " + problem.gold if answer is None else answer,
        tokenizer,
        metadata={"gold": str(problem.value)},
    )


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
    # the answer stops before its digit, so the last position predicts it
    pair = rc.probe_pair(
        as_trace(problem, tok, answer=" The answer is "),
        as_trace(other, tok, answer=" The answer is "),
        tok,
        clean_answer=str(problem.value),
        corrupted_answer=str(other.value),
        template="Final answer is {answer}.\n",
    )
    digit = {d: tok.encode(str(d), add_special_tokens=False)[0] for d in range(10)}
    metric = logit_diff_metric(digit[problem.value], digit[other.value], position=-1)
    print(f"clean:     {tok.decode(pair.clean_tokens[0])!r}")
    print(f"corrupted: {tok.decode(pair.corrupted_tokens[0])!r}\n")
    changed = [
        p for p in range(len(pair)) if pair.clean_tokens[0, p] != pair.corrupted_tokens[0, p]
    ]
    sweep = patch_residual(
        model, pair, None, metric, positions=[changed[0], "probe", "think_close", -1]
    )
    print(f"logit difference clean {sweep.clean:.2f}, corrupted {sweep.corrupted:.2f}")
    print("normalised recovery by position (rows) and layer (columns):")
    print(
        sweep.to_frame()
        .pivot(index="position", columns="layer", values="normalized")
        .reindex(index=sweep.labels["position"])
        .round(3)
        .to_string()
    )
    try:
        sweep.plot(
            args.out / "residual_patching.png",
            title="clean residual stream patched into the corrupted run "
            f"(logit {problem.value} − logit {other.value} at the last position)",
        )
        print(f"heatmap: {args.out / 'residual_patching.png'}\n")
    except ImportError:
        print("(no heatmap: pip install 'reasoning_circuits[plot]')\n")

    # ---- 4: ablate the reasoning-focused heads at the answer, against random heads
    problems = rc.organism.make_problems(args.n, seed=4, split="heldout")
    traces = [as_trace(p, tok) for p in problems]
    profiles = rc.AttentionProfile.compute(model, traces, batch_size=30)
    heads = [
        rc.Head(layer, head)
        for layer in range(model.cfg.n_layers)
        for head in range(model.cfg.n_heads)
    ]
    # one mean per answer offset; an ablated model may write past the 17 tokens of
    # " The answer is N." while generating, and those positions get the pooled mean
    means = rc.mean_head_outputs(
        model, traces, heads, positions="answer", by="segment_offset", fallback="pooled"
    )
    # two rankings: R2A's mean over all answer rows, and the row that emits the value
    by_answer = list(rc.rank_heads(profiles, k=3))
    by_emitting_row = list(rc.rank_heads(rc.organism.emitting_mass(model, traces)[None], k=3))
    others = [h for h in heads if h not in by_emitting_row]
    studied = [("top-3 by whole answer", by_answer), ("top-3 by emitting row", by_emitting_row)]
    studied += [("random", rng.sample(others, 3)) for _ in range(3)]
    for name, chosen in studied:
        iv = rc.HeadIntervention(chosen, "mean", positions="answer", means=means)
        print(f"{name} {[str(h) for h in chosen]} mean-ablated at the answer:")
        print(f"  {iv.effect(model, traces)}")
        print(f"  {iv.effect(model, traces, answers_correct)}")


if __name__ == "__main__":
    main()
