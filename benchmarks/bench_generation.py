"""Batched, KV-cached trace collection against one-at-a-time generation (tiny reasoner).

Greedy decoding of ``n`` held-out problems of the tiny reasoner in the ``"reasoning"`` mode
(prompt, reasoning, ``</think>``, answer, EOS), three ways:

* ``collect b=8``    :func:`rc.collection.collect_traces` with ``batch_size=8``
* ``collect b=1``    the same with ``batch_size=1`` (KV cache, no batching)
* ``hf generate``    ``model.generate`` on one unpadded prompt at a time (what R2A did)

For each: generated tokens per second of wall time, and whether its outputs equal those of
``collect b=8`` token for token. Goal: ``collect b=8`` ≥ 3× ``collect b=1``, outputs identical.

    python benchmarks/bench_generation.py [--n 64] [--batch-size 8] [--threads 1] [--hf]

``--threads 1`` (default): on a shared 2-core machine two torch threads made every step of this
small model ~30× slower (spinning threads fighting other processes). ``--hf`` loads the model
with plain ``transformers`` instead of through the ``TransformerBridge``.
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--hf", action="store_true", help="plain HF model, no bridge")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    import reasoning_circuits as rc
    from reasoning_circuits.collection import collect_traces
    from reasoning_circuits.models import BUILTIN_MODELS
    from reasoning_circuits.prompts import build_prompt, prompt_ids

    if args.hf:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        directory = BUILTIN_MODELS["tiny-reasoner"]
        model = AutoModelForCausalLM.from_pretrained(directory).eval()
        tokenizer = AutoTokenizer.from_pretrained(directory)
        hf = model
    else:
        model = rc.load_model("tiny-reasoner")
        tokenizer = model.tokenizer
        hf = model.original_model
    problems = [
        (f"p{i}", p.question)
        for i, p in enumerate(rc.organism.make_problems(args.n, seed=0, split="heldout"))
    ]
    results: dict[str, tuple[float, list[tuple[int, ...]]]] = {}

    def timed(name: str, batch_size: int) -> None:
        start = time.perf_counter()
        records = collect_traces(
            model,
            problems,
            tokenizer=tokenizer,
            batch_size=batch_size,
            max_new_tokens=args.max_new_tokens,
            progress=False,
        )
        seconds = time.perf_counter() - start
        results[name] = (seconds, [r.generated_ids for r in records])

    timed(f"collect b={args.batch_size}", args.batch_size)
    timed("collect b=1", 1)
    start = time.perf_counter()
    outputs = []
    eos = tokenizer.eos_token_id
    with torch.no_grad():
        for _, question in problems:
            prompt = build_prompt(question, template="raw")
            ids = torch.tensor([prompt_ids(prompt, tokenizer)])
            new = hf.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=args.max_new_tokens,
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=eos,
            )[0, ids.shape[1] :]
            outputs.append(tuple(new.tolist()))
    results["hf generate"] = (time.perf_counter() - start, outputs)

    reference = results[f"collect b={args.batch_size}"][1]
    tokens = sum(map(len, reference))
    print(
        f"tiny reasoner, {args.n} problems, greedy, mode 'reasoning', {tokens} generated "
        f"tokens, {args.threads} thread(s), {'plain HF' if args.hf else 'bridge'} model"
    )
    print(f"{'method':<14} {'seconds':>8} {'tokens/s':>9} {'identical':>10}")
    for name, (seconds, out) in results.items():
        same = out == reference
        print(f"{name:<14} {seconds:8.2f} {sum(map(len, out)) / seconds:9.1f} {same!s:>10}")
    batched = results[f"collect b={args.batch_size}"][0]
    for other in ("collect b=1", "hf generate"):
        ratio = results[other][0] / batched
        print(f"speed-up of batch {args.batch_size} over {other}: {ratio:.2f}x")


if __name__ == "__main__":
    main()
