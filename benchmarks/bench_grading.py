"""Real-data checks and timing of reasoning_circuits.grading on MATH-500 and GSM8K.

Checks (results recorded in docs/grading.md):

1. MATH-500 self-consistency: each item's ``solution`` is graded as a response (its last
   ``\\boxed{}`` is the prediction) against its ``answer``; every item should be correct.
   Run twice: as the library does by default (equal normalised strings need no math-verify)
   and with ``shortcut=False`` (math-verify on all 500 items). Times include starting the
   math-verify workers.
2. MATH-500 mismatched pairs: solution *i* against the answer of item *i+1*; pairs whose
   answers differ should almost all be wrong (a check that the grader is not lenient). Every
   item goes to math-verify.
3. GSM8K: every gold number of the test set parses (``load_gsm8k``), and every reference
   solution (``... #### n``) graded as a response is correct.

    python benchmarks/bench_grading.py [DATA_DIR] [--timeout 5] [--workers N]

``DATA_DIR`` holds ``math500_test.jsonl`` and ``gsm8k_test.jsonl`` (default:
``../shared/data`` next to the repository).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from reasoning_circuits import datasets, grading


def _math500(data: Path, timeout: float, workers: int | None) -> None:
    problems = datasets.load_math500(data / "math500_test.jsonl")
    solutions = [p.metadata["solution"] for p in problems]
    golds = [p.gold for p in problems]
    print(f"MATH-500: {len(problems)} items")
    for shortcut in (True, False):
        grading.shutdown()  # cold start: worker start-up is part of the time
        start = time.perf_counter()
        grades = grading.grade_many(
            solutions,
            golds,
            kind="math",
            think="optional",
            timeout=timeout,
            workers=workers,
            progress=False,
            shortcut=shortcut,
        )
        elapsed = time.perf_counter() - start
        n_ok = sum(g.correct for g in grades)
        verified = sum(g.seconds > 0 for g in grades)
        distinct = len({(g.gold, g.extracted) for g in grades if g.seconds > 0})
        slowest = max((g.seconds for g in grades), default=0.0)
        label = "default (shortcut)" if shortcut else "math-verify on every item"
        print(
            f"  self-consistency, {label}: {n_ok}/{len(grades)} = {n_ok / len(grades):.1%} "
            f"correct; {verified} items ({distinct} distinct pairs) through math-verify; "
            f"{elapsed:.1f} s total; slowest "
            f"item {slowest:.2f} s (timeout {timeout:g} s); reasons "
            f"{_count(g.reason for g in grades)}"
        )
        for problem, g in zip(problems, grades):
            if not g.correct:
                print(f"    exception {problem.id}: {g.extracted!r} vs {g.gold!r} ({g.detail})")

    shifted = golds[1:] + golds[:1]
    keep = [
        i
        for i in range(len(problems))
        if grading._normalise_math(golds[i]) != grading._normalise_math(shifted[i])
    ]
    start = time.perf_counter()
    grades = grading.grade_many(
        [solutions[i] for i in keep],
        [shifted[i] for i in keep],
        kind="math",
        think="optional",
        timeout=timeout,
        workers=workers,
        progress=False,
    )
    elapsed = time.perf_counter() - start
    accepted = [(i, g) for i, g in zip(keep, grades) if g.correct]
    slowest = max((g.seconds for g in grades), default=0.0)
    print(
        f"  mismatched pairs: {len(accepted)}/{len(keep)} accepted; {elapsed:.1f} s (warm "
        f"workers); slowest item {slowest:.2f} s; reasons {_count(g.reason for g in grades)}"
    )
    for i, g in accepted:
        print(f"    accepted {problems[i].id}: {g.extracted!r} vs {g.gold!r}")


def _gsm8k(data: Path, timeout: float, workers: int | None) -> None:
    path = data / "gsm8k_test.jsonl"
    lines = sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    problems = datasets.load_gsm8k(path)  # raises on the first gold that does not parse
    print(f"GSM8K: {len(problems)}/{lines} gold numbers parse")
    values = [json.loads(line)["answer"] for line in path.read_text().splitlines() if line]
    start = time.perf_counter()
    grades = grading.grade_many(
        values,
        [p.gold for p in problems],
        kind="gsm8k",
        think="optional",
        timeout=timeout,
        workers=workers,
        progress=False,
    )
    elapsed = time.perf_counter() - start
    n_ok = sum(g.correct for g in grades)
    print(
        f"  reference solutions graded as responses: {n_ok}/{len(grades)} correct, "
        f"{elapsed:.2f} s; sources {_count(g.source for g in grades)}"
    )
    for problem, g in zip(problems, grades):
        if not g.correct:
            print(f"    exception {problem.id}: {g.extracted!r} vs {g.gold!r} ({g.detail})")


def _count(values: object) -> dict[str, int]:
    counts: dict[str, int] = {}
    for v in values:  # type: ignore[attr-defined]
        counts[str(v)] = counts.get(str(v), 0) + 1
    return dict(sorted(counts.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    parser.add_argument("data", nargs="?", type=Path, default=default)
    parser.add_argument("--timeout", type=float, default=grading.DEFAULT_TIMEOUT)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    print(f"data: {args.data}; timeout {args.timeout:g} s; workers {args.workers or 'default'}")
    _math500(args.data, args.timeout, args.workers)
    _gsm8k(args.data, args.timeout, args.workers)
    grading.shutdown()


if __name__ == "__main__":
    main()
