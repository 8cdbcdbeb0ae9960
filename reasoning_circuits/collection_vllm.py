"""Collect traces with vLLM: the same records and files as :func:`collect_traces`, faster.

For thousands of long traces (R2A: up to 10,000 new tokens per MATH-500 problem) the
one-process Hugging Face loop of :func:`~reasoning_circuits.collection.collect_traces` is too
slow. :func:`collect_traces_vllm` hands the same prompts (as token ids: vLLM never
re-tokenizes them) to a vLLM ``LLM`` engine and turns its outputs into the same
:class:`~reasoning_circuits.collection.TraceRecord` objects, written to the same resumable
JSONL file. Install the extra: ``pip install 'reasoning_circuits[vllm]'``.

What is the same, what is not
-----------------------------
* Same prompts, prompt ids, record fields, file header and resume rules. The header says
  ``"backend": "vllm"``, so a file is never extended by the other backend.
* Greedy outputs agree with the HF backend up to floating-point differences between kernels
  (in bf16 on long traces they can diverge after a near-tie).
* Sampled outputs differ from the HF backend: vLLM has its own random streams. Each request
  still gets its own seed, :func:`~reasoning_circuits.collection.sample_seed` of
  ``(seed, id, sample)``, so a sample does not depend on the other requests in its call.
* vLLM returns a whole call at once, so records are written per chunk of ``chunk_size``
  requests: a killed run loses at most the chunk in flight (the file stays readable and
  resumable, as with the HF backend).

The adapter is duck-typed: ``llm`` needs ``generate(prompts, sampling_params)`` returning,
in input order, objects with ``prompt_token_ids`` and ``outputs[0]`` carrying ``token_ids``
and ``finish_reason`` (``"stop"`` or ``"length"``), which is what ``vllm.LLM`` returns.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from typing import Any

from reasoning_circuits.collection import (
    RecordSet,
    StopReason,
    TraceRecord,
    _check_sampling,
    _finish,
    _plan,
    _Progress,
    _record,
    sample_seed,
)
from reasoning_circuits.errors import ContextLengthError
from reasoning_circuits.prompts import PromptMode, Template

__all__ = ["collect_traces_vllm"]


def _default_params() -> Callable[..., Any]:
    try:
        from vllm import SamplingParams
    except ImportError as err:
        raise ImportError(
            "collect_traces_vllm needs vLLM: pip install 'reasoning_circuits[vllm]' (a GPU "
            "machine), or use rc.collection.collect_traces"
        ) from err
    return SamplingParams  # type: ignore[no-any-return]


def _engine_attr(llm: Any, *path: str) -> Any:
    value = llm
    for name in path:
        value = getattr(value, name, None)
        if value is None:
            return None
    return value


def _stop_ids(llm: Any, tokenizer: Any) -> list[int]:
    ids: set[int] = set()
    sources = (
        getattr(tokenizer, "eos_token_id", None),
        _engine_attr(llm, "llm_engine", "model_config", "hf_config", "eos_token_id"),
    )
    for source in sources:
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, list | tuple):
            ids.update(int(i) for i in source)
    if not ids:
        raise ValueError("the tokenizer has no EOS token; pass stop_token_ids=[...]")
    return sorted(ids)


def collect_traces_vllm(
    llm: Any,
    problems: Any,
    *,
    tokenizer: Any = None,
    mode: PromptMode = "reasoning",
    n_samples: int = 1,
    temperature: float = 0.0,
    top_p: float = 1.0,
    max_new_tokens: int = 1024,
    seed: int = 0,
    out: str | os.PathLike[str] | None = None,
    template: Template = "auto",
    math_instruction: bool = False,
    instruction: str | None = None,
    model_name: str | None = None,
    stop_token_ids: Sequence[int] | None = None,
    chunk_size: int = 256,
    make_params: Callable[..., Any] | None = None,
    fsync: bool = True,
    progress: bool | None = None,
) -> RecordSet:
    """:func:`~reasoning_circuits.collection.collect_traces` on a vLLM engine.

    Args:
        llm: a ``vllm.LLM`` (or an object with the same ``generate``; see the module
            docstring).
        tokenizer: default ``llm.get_tokenizer()``.
        stop_token_ids: EOS ids that end a sample; default the tokenizer's EOS and the
            model config's ``eos_token_id``.
        chunk_size: requests per ``llm.generate`` call (records are written after each).
        make_params: builds one request's sampling parameters from keyword arguments
            (``n, temperature, top_p, max_tokens, seed, stop_token_ids,
            skip_special_tokens``); default ``vllm.SamplingParams``, imported only here.
        Everything else: as in ``collect_traces`` (``batch_size`` is vLLM's business).
    """
    if tokenizer is None:
        get = getattr(llm, "get_tokenizer", None)
        if get is None:
            raise TypeError("this engine has no get_tokenizer(); pass tokenizer=...")
        tokenizer = get()
    if not hasattr(llm, "generate"):
        raise TypeError(f"llm must be a vllm.LLM-like engine, got {type(llm).__name__}")
    _check_sampling(n_samples, temperature, top_p, max_new_tokens, 1)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
    stops = sorted(int(i) for i in stop_token_ids) if stop_token_ids else _stop_ids(llm, tokenizer)
    name = model_name or str(
        _engine_attr(llm, "llm_engine", "model_config", "model") or type(llm).__name__
    )
    context = _engine_attr(llm, "llm_engine", "model_config", "max_model_len")
    plan = _plan(
        problems,
        tokenizer,
        model_name=name,
        mode=mode,
        n_samples=n_samples,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        seed=seed,
        template=template,
        math_instruction=math_instruction,
        instruction=instruction,
        stop_token_ids=stops,
        backend="vllm",
        out=out,
        fsync=fsync,
    )
    new: list[TraceRecord] = []
    bar = _Progress(len(plan.jobs), progress, len(plan.done))
    stop_set = set(stops)
    try:
        factory = make_params if make_params is not None else _default_params()
        limits = []
        for job in plan.jobs:
            room = max_new_tokens
            if isinstance(context, int):
                room = min(room, context - len(job.prompt_ids))
            if room < 1:
                raise ContextLengthError(
                    f"problem {job.id!r}: the prompt has {len(job.prompt_ids)} tokens, the "
                    f"engine's max_model_len is {context}; shorten the question"
                )
            limits.append(room)
        for start in range(0, len(plan.jobs), chunk_size):
            jobs = plan.jobs[start : start + chunk_size]
            job_limits = limits[start : start + chunk_size]
            prompts = [{"prompt_token_ids": list(job.prompt_ids)} for job in jobs]
            params = [
                factory(
                    n=1,
                    temperature=float(temperature),
                    top_p=float(top_p),
                    max_tokens=limit,
                    seed=sample_seed(seed, job.id, job.sample) if temperature > 0 else None,
                    stop_token_ids=list(stops),
                    skip_special_tokens=False,
                )
                for job, limit in zip(jobs, job_limits)
            ]
            outputs = list(llm.generate(prompts, params))
            if len(outputs) != len(jobs):
                raise RuntimeError(
                    f"the engine returned {len(outputs)} outputs for {len(jobs)} prompts"
                )
            for job, limit, output in zip(jobs, job_limits, outputs):
                if list(output.prompt_token_ids) != list(job.prompt_ids):
                    raise RuntimeError(
                        f"problem {job.id!r}: the engine's prompt ids differ from the ids sent "
                        "(outputs out of order, or the engine re-tokenized the prompt)"
                    )
                completion = output.outputs[0]
                generated = [int(t) for t in completion.token_ids]
                hit_eos = bool(generated) and generated[-1] in stop_set
                if completion.finish_reason == "stop" and not hit_eos:
                    why = getattr(completion, "stop_reason", None)
                    raise RuntimeError(
                        f"problem {job.id!r} sample {job.sample}: the engine stopped "
                        f"(finish_reason='stop', stop_reason={why!r}) without an EOS id as the "
                        "last token; pass no stop strings to the engine"
                    )
                if len(generated) > limit:
                    raise RuntimeError(
                        f"problem {job.id!r}: {len(generated)} tokens generated, max {limit}"
                    )
                reason: StopReason = (
                    "eos" if hit_eos else "length" if limit == max_new_tokens else "context"
                )
                record = _record(plan, job, generated, reason, tokenizer)
                if plan.writer is not None:
                    plan.writer.write(record)
                new.append(record)
                bar.tokens_generated(len(generated))
                bar.record_done()
    finally:
        bar.close()
        if plan.writer is not None:
            with contextlib.suppress(Exception):
                plan.writer.close()
    return _finish(plan, new)
