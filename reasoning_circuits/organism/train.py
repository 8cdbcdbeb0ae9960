"""Train the tiny reasoner from a seed and save it as a Hugging Face format directory.

    python -m reasoning_circuits.organism.train --out DIR [--steps N] [--seed S]

A small GPT-2 (character-level tokenizer with ``<think>``/``</think>`` as single tokens) is
trained from scratch (or fine-tuned from a model with ``--init``) on fresh problems from
:mod:`reasoning_circuits.organism.task`. The loss
covers only the completion (what the model writes after the prompt). Most examples use the
``"reasoning"`` prompt; a few use ``"finished"``, so the model also learns to answer at once
when it is given no reasoning, and how well it can do that is measured rather than assumed.
Held-out accuracy (greedy) is printed periodically. Training is deterministic for a given
seed, step count and thread count.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from reasoning_circuits.organism.analysis import accuracy
from reasoning_circuits.organism.task import (
    Problem,
    PromptMode,
    format_completion,
    format_prompt,
    make_problems,
    solve,
)

__all__ = ["ARCHITECTURE", "build_tokenizer", "main", "parse_args", "train"]

ARCHITECTURE: dict[str, Any] = {
    "n_layer": 4,
    "n_head": 8,
    "n_embd": 128,
    "n_inner": 512,
    "n_positions": 256,
}
EOS = "<|endoftext|>"


def build_tokenizer() -> Any:
    """Character-level byte tokenizer: one token per byte, ``<think>``/``</think>`` single.

    It adds BOS itself (``tokenizer(text)["input_ids"]`` starts with ``<|endoftext|>``), as
    the model was trained, so plain ``transformers`` use (``AutoTokenizer`` +
    ``model.generate``) feeds the model what it saw in training. The rule is the
    ``TemplateProcessing`` post-processor saved in ``tokenizer.json``, which both
    ``transformers`` and ``tokenizers`` apply (transformers 5 ignores an ``add_bos_token``
    flag in ``tokenizer_config.json`` when ``tokenizer.json`` exists). This package's own code
    always tokenizes with ``add_special_tokens=False`` and places BOS explicitly.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {EOS: 0, **{ch: i + 1 for i, ch in enumerate(alphabet)}}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.post_processor = processors.TemplateProcessing(
        single=f"{EOS}:0 $A:0", pair=f"{EOS}:0 $A:0 {EOS}:1 $B:1", special_tokens=[(EOS, 0)]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=EOS, eos_token=EOS, unk_token=EOS, pad_token=EOS
    )
    tok.add_tokens(["<think>", "</think>"])
    return tok


def _encode_batch(
    tokenizer: Any, problems: list[Problem], modes: list[PromptMode]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids ``[batch, pos]``, attention mask, and a loss mask on the completion.

    The loss mask leaves out the prompt and the ``read_only`` spans of the reasoning (a token
    counts as inside a span when all its characters are: exact for this character-level
    tokenizer)."""
    rows, masks = [], []
    for problem, mode in zip(problems, modes):
        prompt = [
            tokenizer.bos_token_id,
            *tokenizer.encode(format_prompt(problem, mode), add_special_tokens=False),
        ]  # type: ignore[arg-type]
        encoded = tokenizer(
            format_completion(problem, mode), add_special_tokens=False, return_offsets_mapping=True
        )
        completion = [*encoded["input_ids"], tokenizer.eos_token_id]
        learned = [1] * len(completion)
        if mode == "reasoning":  # the reasoning starts the completion: spans index it directly
            for j, (start, end) in enumerate(encoded["offset_mapping"]):
                if any(a <= start and end <= b for a, b in problem.read_only):
                    learned[j] = 0
        rows.append(prompt + completion)
        masks.append([0] * len(prompt) + learned)
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    loss_mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (row, mask) in enumerate(zip(rows, masks)):
        ids[i, : len(row)] = torch.tensor(row)
        attention[i, : len(row)] = 1
        loss_mask[i, : len(row)] = torch.tensor(mask, dtype=torch.bool)
    return ids, attention, loss_mask


def train(
    out: Path,
    *,
    steps: int,
    seed: int,
    batch_size: int = 64,
    lr: float = 2e-3,
    finished_share: float = 0.1,
    eval_every: int = 500,
    threads: int = 2,
    n_eval: int = 200,
    architecture: dict[str, int] | None = None,
    filler_rate: float = 0.1,
    error_rate: float = 0.0,
    first_filler: bool = False,
    skip_rate: float = 0.0,
    init_from: str | None = None,
) -> dict[str, Any]:
    """Train and save the model to ``out``; return the training record for the model card.

    ``architecture`` overrides entries of :data:`ARCHITECTURE` (e.g. ``{"n_layer": 3}``) to
    train an organism of another size. ``filler_rate``, ``error_rate``, ``first_filler`` and
    ``skip_rate`` set the training reasoning
    (:func:`~reasoning_circuits.organism.task.make_problems`); examples with the "finished"
    prompt always answer with the true value. ``init_from`` (a built-in name such as
    ``"tiny-reasoner"`` or a directory) starts from that model's weights
    instead of random ones (fine-tuning; its architecture is kept)."""
    shape = {**ARCHITECTURE, **(architecture or {})}
    unknown = sorted(set(shape) - set(ARCHITECTURE))
    if unknown:
        raise ValueError(f"unknown architecture keys {unknown}; use {sorted(ARCHITECTURE)}")
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    tokenizer = build_tokenizer()
    config = GPT2Config(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        **shape,
    )
    if init_from is not None:
        from reasoning_circuits.models import BUILTIN_MODELS

        if architecture:
            raise ValueError("init_from keeps the model's architecture; drop architecture=")
        source = BUILTIN_MODELS.get(init_from, Path(init_from))
        model = GPT2LMHeadModel.from_pretrained(source)
        shape = {key: getattr(model.config, key) for key in ARCHITECTURE}
    else:
        model = GPT2LMHeadModel(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(1, steps // 50)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    heldout = make_problems(n_eval, seed=seed + 1, split="heldout")
    history = []
    start = time.time()
    bar = tqdm(range(steps), desc="training tiny reasoner")
    for step in bar:
        model.train()
        problems = make_problems(
            batch_size,
            seed=seed * 1_000_003 + step,
            filler_rate=filler_rate,
            error_rate=error_rate,
            first_filler=first_filler,
            skip_rate=skip_rate,
        )
        modes: list[PromptMode] = [
            "finished" if rng.random() < finished_share else "reasoning" for _ in problems
        ]
        # without reasoning the answer is the true value, not a wrong step's
        problems = [
            solve(p.question) if mode == "finished" else p
            for p, mode in zip(problems, modes, strict=True)
        ]
        ids, attention, loss_mask = _encode_batch(tokenizer, problems, modes)
        logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1]
        targets = ids[:, 1:].masked_fill(~loss_mask[:, 1:], -100)
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            acc = accuracy(model, heldout, tokenizer=tokenizer)
            history.append(
                {"step": step + 1, "loss": round(loss.item(), 5), "heldout_accuracy": acc}
            )
            tqdm.write(f"step {step + 1}: loss {loss.item():.4f}, held-out accuracy {acc:.3f}")
            _save(model, tokenizer, out / "checkpoint")  # inspect a long run while it goes
    model.eval()
    _save(model, tokenizer, out)
    shutil.rmtree(out / "checkpoint", ignore_errors=True)
    record = {
        "seed": seed,
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "finished_share": finished_share,
        "filler_rate": filler_rate,
        "error_rate": error_rate,
        "first_filler": first_filler,
        "skip_rate": skip_rate,
        "init_from": init_from,
        "threads": threads,
        "eval_every": eval_every,
        "architecture": shape,
        "parameters": sum(p.numel() for p in model.parameters()),
        "minutes": round((time.time() - start) / 60, 1),
        "history": history,
        "commit": _commit(),
    }
    (out / "training.json").write_text(json.dumps(record, indent=2))
    return record


def _save(model: Any, tokenizer: Any, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line's options (``argv`` default: ``sys.argv[1:]``)."""
    parser = argparse.ArgumentParser(description="Train the tiny reasoner.")
    parser.add_argument("--out", type=Path, required=True, help="output directory (HF format)")
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--filler-rate", type=float, default=0.1)
    parser.add_argument("--error-rate", type=float, default=0.0)
    parser.add_argument("--first-filler", action="store_true")
    parser.add_argument("--skip-rate", type=float, default=0.0)
    parser.add_argument("--init", default=None, help="start from this model (name or directory)")
    for key, value in ARCHITECTURE.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=int, default=value)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Train from the command line (see :func:`parse_args`)."""
    args = parse_args(argv)
    train(
        args.out,
        steps=args.steps,
        seed=args.seed,
        batch_size=args.batch_size,
        lr=args.lr,
        eval_every=args.eval_every,
        threads=args.threads,
        architecture=None if args.init else {key: getattr(args, key) for key in ARCHITECTURE},
        filler_rate=args.filler_rate,
        error_rate=args.error_rate,
        first_filler=args.first_filler,
        skip_rate=args.skip_rate,
        init_from=args.init,
    )


if __name__ == "__main__":
    main()
