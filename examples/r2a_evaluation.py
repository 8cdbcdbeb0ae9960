"""R2A §2: accuracy with and without reasoning, paired by problem, on a real model.

Collects answers in the three prompt modes (with reasoning, and with the reasoning skipped by
an empty or a "finished" think block), grades them, and compares reasoning against each
no-reasoning mode: the funnel, intention-to-treat and valid-set accuracy, the exact McNemar
test, a paired bootstrap interval, and a breakdown. By default it runs offline in seconds on
the shipped tiny reasoner (held-out problems, broken down by number of hops); with
``--model`` and ``--data`` it runs the same on a Hugging Face model and a MATH-500 or GSM8K
file (R2A: ``template="raw"``, the MATH instruction, sampling at temperature 0.6).

    python examples/r2a_evaluation.py [--n 100] [--out DIR]
    python examples/r2a_evaluation.py --model deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B \\
        --data math500_test.jsonl --n 500 --temperature 0.6 --top-p 0.95 \\
        --max-new-tokens 10000 --batch-size 16 --out r2a_out
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from reasoning_circuits.collection import collect_traces
from reasoning_circuits.datasets import Problem, load_gsm8k, load_math500
from reasoning_circuits.evaluation import evaluate
from reasoning_circuits.models import BUILTIN_MODELS
from reasoning_circuits.organism import make_problems
from reasoning_circuits.organism.analysis import gold_value


def tiny_problems(n: int) -> list[Problem]:
    """Held-out organism problems as dataset problems (gold = the number; level = hops)."""
    return [
        Problem(f"heldout/{i}", p.question, gold_value(p.gold), "gsm8k", {"hops": p.hops})
        for i, p in enumerate(make_problems(n, seed=11, split="heldout"))
    ]


def load_data(path: Path, n: int) -> list[Problem]:
    """MATH-500 or GSM8K from a local file, told apart by its fields."""
    first = path.read_text().lstrip()[:2000]
    if '"unique_id"' in first or '"solution"' in first:
        return load_math500(path, limit=n)
    return load_gsm8k(path, limit=n)


def load(model_name: str | None) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = model_name or str(BUILTIN_MODELS["tiny-reasoner"])
    model = AutoModelForCausalLM.from_pretrained(source, torch_dtype="auto").eval()
    if torch.cuda.is_available():
        model = model.to("cuda")
    return model, AutoTokenizer.from_pretrained(source)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="problems to evaluate")
    parser.add_argument("--model", help="HF hub name or local directory (default: tiny reasoner)")
    parser.add_argument("--data", type=Path, help="MATH-500 or GSM8K JSONL file (with --model)")
    parser.add_argument("--samples", type=int, default=1, help="samples per problem and mode")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, help="default 160 (tiny) / 4096")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--out", type=Path, help="directory for records, results and plots")
    args = parser.parse_args()
    if (args.model is None) != (args.data is None):
        parser.error("--model and --data go together (the tiny reasoner has its own problems)")
    out = args.out or Path(tempfile.mkdtemp(prefix="r2a_evaluation_"))
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # a small model on a shared CPU: one thread is fastest
    start = time.perf_counter()

    model, tokenizer = load(args.model)
    if args.model is None:
        problems, by, options = tiny_problems(args.n), ("hops",), {}
        budget = {"reasoning": args.max_new_tokens or 160, "empty": 24, "finished": 24}
    else:
        problems = load_data(args.data, args.n)
        by = ("subject", "level") if problems[0].kind == "math" else ()
        # R2A: the raw prompt (no chat template); the MATH instruction for MATH-500 only
        options = {"template": "raw", "math_instruction": problems[0].kind == "math"}
        budget = dict.fromkeys(("reasoning", "empty", "finished"), args.max_new_tokens or 4096)

    records = {}
    for mode in ("reasoning", "finished", "empty"):
        records[mode] = collect_traces(
            model,
            problems,
            tokenizer=tokenizer,
            mode=mode,
            n_samples=args.samples,
            temperature=args.temperature,
            top_p=args.top_p,
            max_new_tokens=budget[mode],
            batch_size=args.batch_size,
            out=out / f"records_{mode}.jsonl",
            progress=False,
            **options,
        )
    print(f"{len(problems)} problems × {args.samples} sample(s), e.g. {problems[0].question!r}")
    print(f"  with reasoning the model wrote {records['reasoning'][0].text!r}\n")

    pd.set_option("display.width", 160, "display.max_columns", 30)
    pd.set_option("display.float_format", "{:.3f}".format)
    for skipped in ("finished", "empty"):
        result = evaluate(records["reasoning"], records[skipped], problems, by=by)
        print(f"=== reasoning vs {skipped!r} ===")
        print(repr(result), "\n")
        print(result.funnel().to_string(index=False), "\n")
        columns = ["set", "arm", "n_problems", "correct", "estimate", "low", "high", "test"]
        p_format = {"p_value": "{:.2g}".format, "p_holm": "{:.2g}".format}
        frame = result.to_frame()[[*columns, "p_value", "boot_low", "boot_high"]]
        print(frame.to_string(formatters=p_format))
        for field in result.fields:
            table = result.breakdown(field)
            table = table[table["set"] == "itt"]
            keep = ["group", "n_problems", "acc_with", "acc_without", "difference", "low"]
            print(f"\nby {field} (ITT):")
            keep += ["high", "p_value", "p_holm", "note"]
            print(table[keep].to_string(index=False, formatters=p_format))
        plot = out / f"r2a_reasoning_vs_{skipped}.png"
        result.plot(path=plot)
        result.save(out / f"evaluation_{skipped}")
        print(f"\nplot: {plot}\n")
    print(f"done in {time.perf_counter() - start:.1f} s; records and results in {out}")


if __name__ == "__main__":
    main()
