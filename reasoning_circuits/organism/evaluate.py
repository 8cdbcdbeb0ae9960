"""Command line: measure the tiny reasoner and (optionally) write its model card.

    python -m reasoning_circuits.organism.evaluate --model DIR [--n 500] [--draws 100]
        [--write-card]

``DIR`` is a model directory (``tiny-reasoner`` for the shipped one). The numbers come from
:func:`reasoning_circuits.organism.analysis.measure`; the card from
:mod:`reasoning_circuits.organism.card`. This module holds only the command; import the
functions from ``rc.organism`` (the names below stay importable from here for old code).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from reasoning_circuits.organism.analysis import (
    HELDOUT_SEED,
    Generated,
    answer_accuracy,
    emitting_mass,
    generate,
    judge_answer,
    measure,
)
from reasoning_circuits.organism.card import write_model_card

__all__ = [
    "Generated",
    "answer_accuracy",
    "emitting_mass",
    "generate",
    "judge_answer",
    "main",
    "measure",
    "write_model_card",
]


def main(argv: Sequence[str] | None = None) -> None:
    """Parse ``argv`` (default: the command line), measure, print JSON, write the card."""
    parser = argparse.ArgumentParser(description="Measure the tiny reasoner.")
    parser.add_argument("--model", required=True, help="model directory (or 'tiny-reasoner')")
    parser.add_argument("--n", type=int, default=500, help="held-out problems")
    parser.add_argument("--seed", type=int, default=HELDOUT_SEED, help="held-out problem seed")
    parser.add_argument("--draws", type=int, default=100, help="random head triples")
    parser.add_argument("--draw-seed", type=int, default=0, help="seed of the random triples")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--write-card", action="store_true", help="write MODEL_CARD.md there")
    parser.add_argument(
        "--name",
        help="the model's name in the card (default: --model if built in, else the directory name)",
    )
    args = parser.parse_args(argv)
    from reasoning_circuits.models import BUILTIN_MODELS

    directory = BUILTIN_MODELS.get(args.model, Path(args.model))
    if args.write_card and directory.resolve() == BUILTIN_MODELS["tiny-reasoner-b"].resolve():
        parser.error("tiny-reasoner-b's card is written by hand; drop --write-card")
    torch.set_num_threads(args.threads)
    results = measure(
        directory, n=args.n, seed=args.seed, draws=args.draws, draw_seed=args.draw_seed
    )
    print(json.dumps(results, indent=2))
    if args.write_card:
        name = args.name or (args.model if args.model in BUILTIN_MODELS else directory.name)
        print(f"wrote {write_model_card(directory, results, name=name)}")


if __name__ == "__main__":
    main()
