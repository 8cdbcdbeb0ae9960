"""Sentence-length distribution of split_sentences on real math text.

Splits the 500 MATH-500 ``solution`` texts and the first 500 GSM8K test ``answer`` texts
into sentences and prints, per source and overall, the number of sentences and their
length in characters (median, 90th and 99th percentile, maximum, share longer than 500
characters), then the longest sentences so that their causes can be inspected. Also times
the splitter on all texts.

    python benchmarks/sentence_lengths.py [DATA_DIR] [--longest 5] [--width 300]

``DATA_DIR`` holds ``math500_test.jsonl`` and ``gsm8k_test.jsonl`` (default ``../shared/data``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from reasoning_circuits import split_sentences

SOURCES = {
    "MATH-500 solution": ("math500_test.jsonl", "solution"),
    "GSM8K answer": ("gsm8k_test.jsonl", "answer"),
}
PER_SOURCE = 500


def load(data_dir: Path) -> dict[str, list[str]]:
    texts: dict[str, list[str]] = {}
    for name, (filename, field) in SOURCES.items():
        path = data_dir / filename
        if not path.is_file():
            raise SystemExit(f"{path} not found; pass the directory that holds {filename}")
        with path.open(encoding="utf-8") as f:
            texts[name] = [json.loads(line)[field] for line in f][:PER_SOURCE]
    return texts


def row(name: str, lengths: np.ndarray, n_texts: int) -> str:
    p50, p90, p99 = np.percentile(lengths, [50, 90, 99])
    return (
        f"| {name} | {n_texts} | {len(lengths)} | {p50:.0f} | {p90:.0f} | {p99:.0f} | "
        f"{lengths.max()} | {np.mean(lengths > 500):.2%} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", nargs="?", default="../shared/data", type=Path)
    parser.add_argument("--longest", type=int, default=5, help="how many longest sentences")
    parser.add_argument("--width", type=int, default=300, help="characters shown per sentence")
    args = parser.parse_args()
    texts = load(args.data_dir)

    sentences: dict[str, list[str]] = {}
    start = time.perf_counter()
    for name, docs in texts.items():
        sentences[name] = [t[a:b] for t in docs for a, b in split_sentences(t)]
    seconds = time.perf_counter() - start
    n_chars = sum(len(t) for docs in texts.values() for t in docs)

    print("| source | texts | sentences | median | p90 | p99 | max | share > 500 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, pieces in sentences.items():
        print(row(name, np.array([len(s) for s in pieces]), len(texts[name])))
    every = np.array([len(s) for pieces in sentences.values() for s in pieces])
    print(row("all", every, sum(len(d) for d in texts.values())))
    print(f"\nlengths in characters; split {n_chars:,} characters in {seconds:.2f} s")

    ranked = sorted(
        ((len(s), name, s) for name, pieces in sentences.items() for s in pieces), reverse=True
    )
    print(f"\nlongest {args.longest} sentences:")
    for length, name, s in ranked[: args.longest]:
        shown = s if len(s) <= args.width else s[: args.width] + " ..."
        print(f"\n[{length} chars, {name}]\n{shown!r}")


if __name__ == "__main__":
    main()
