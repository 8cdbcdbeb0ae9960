"""One convention for inputs, checked in one place.

Every public function that takes traces accepts one :class:`Trace` or a sequence of them
(:func:`as_traces`), and every function that runs a model checks the model and the traces
first (:func:`check_model`, :func:`check_traces`): the model is a ``TransformerBridge``, each
trace was made by the model's tokenizer, its ids lie in the vocabulary, and it fits the
context. Option strings are checked against their ``Literal`` (:func:`check_option`). Each
failure raises an exception whose message names what was wrong and how to fix it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from tqdm.auto import tqdm

from reasoning_circuits._options import check_option
from reasoning_circuits.errors import ContextLengthError, TokenizerMismatchError, TraceFormatError
from reasoning_circuits.trace import Trace, tokenizer_fingerprint

__all__ = [
    "as_traces",
    "batches",
    "check_batch_size",
    "check_model",
    "check_option",
    "check_traces",
    "describe_trace",
]


def as_traces(traces: Any, *, name: str = "traces") -> list[Trace]:
    """``[trace]`` for one :class:`Trace`, the list for a sequence; refuse anything else."""
    if isinstance(traces, Trace):
        return [traces]
    if hasattr(traces, "cfg") and hasattr(traces, "run_with_hooks"):
        raise TypeError(f"{name} is a model; the model comes first: f(model, traces)")
    if isinstance(traces, str | bytes):
        raise TypeError(
            f"{name} is a string; build traces first: rc.Trace.from_text(text, "
            "model.tokenizer) (or from_ids / from_parts), then pass the Trace or a list of them"
        )
    if not isinstance(traces, Sequence) and not hasattr(traces, "__iter__"):
        raise TypeError(
            f"{name} must be a Trace or a sequence of Traces, got {type(traces).__name__}"
        )
    out = list(traces)
    if not out:
        raise ValueError(f"{name} is empty; pass at least one Trace")
    for index, item in enumerate(out):
        if not isinstance(item, Trace):
            fix = (
                "token ids: wrap them with rc.Trace.from_ids(ids, model.tokenizer)"
                if hasattr(item, "shape") or isinstance(item, list | tuple)
                else "text: use rc.Trace.from_text(text, model.tokenizer)"
                if isinstance(item, str)
                else "build it with rc.Trace.from_text / from_ids / from_parts"
            )
            raise TypeError(f"{name}[{index}] is a {type(item).__name__}, not a Trace; for {fix}")
    return out


def check_model(model: Any) -> None:
    """Refuse anything that is not a TransformerLens ``TransformerBridge``-like model."""
    if hasattr(model, "cfg") and hasattr(model, "run_with_hooks"):
        return
    kind = type(model).__name__
    if isinstance(model, Trace) or (
        isinstance(model, list | tuple) and model and isinstance(model[0], Trace)
    ):
        raise TypeError(
            "got traces where the model belongs; the model comes first: f(model, traces)"
        )
    if hasattr(model, "config") and hasattr(model, "generate"):
        raise TypeError(
            f"got a Hugging Face {kind}; this library runs TransformerLens bridges. Load the "
            "model with rc.load_model(name_or_dir) (or save it with model.save_pretrained(dir) "
            "and tokenizer.save_pretrained(dir), then rc.load_model(dir))"
        )
    raise TypeError(
        f"model must be a TransformerBridge (from rc.load_model), got a {kind}; if you passed "
        "traces first, the model comes first: f(model, traces)"
    )


def describe_trace(trace: Trace, index: int | None = None) -> str:
    """``"trace 3 (id 'test/algebra/1.json', 970 tokens)"`` for messages."""
    where = "the trace" if index is None else f"trace {index}"
    tid = trace.metadata.get("id")
    ident = f"id {tid!r}, " if tid is not None else ""
    return f"{where} ({ident}{len(trace)} tokens)"


def check_traces(
    model: Any, traces: Sequence[Trace], *, extra_tokens: int = 0, what: str = ""
) -> None:
    """Check every trace against ``model`` before it runs.

    Raises :class:`TokenizerMismatchError` when a trace was made by another tokenizer,
    :class:`TraceFormatError` for ids outside the model's vocabulary, and
    :class:`ContextLengthError` when ``len(trace) + extra_tokens`` exceeds the context
    (``extra_tokens``: what a call adds, such as generated tokens).
    """
    check_model(model)
    cfg = model.cfg
    n_ctx = int(getattr(cfg, "n_ctx", 0) or 0)
    d_vocab = int(getattr(cfg, "d_vocab", 0) or 0)
    tokenizer = getattr(model, "tokenizer", None)
    model_print = tokenizer_fingerprint(tokenizer) if tokenizer is not None else None
    action = f" for {what}" if what else ""
    for index, trace in enumerate(traces):
        label = describe_trace(trace, index if len(traces) > 1 else None)
        if (
            model_print is not None
            and trace.tokenizer is not None
            and not trace.tokenizer.matches(model_print)
        ):
            raise TokenizerMismatchError(
                f"{label} was tokenized by {trace.tokenizer} but the model's tokenizer is "
                f"{model_print}; build the traces with the model's tokenizer "
                "(rc.Trace.from_text(text, model.tokenizer), or re-read the raw text with it)"
            )
        if trace.ids and (min(trace.ids) < 0 or (d_vocab and max(trace.ids) >= d_vocab)):
            bad = next(i for i in trace.ids if i < 0 or (d_vocab and i >= d_vocab))
            raise TraceFormatError(
                f"{label} has token id {bad}, outside the model's vocabulary [0, {d_vocab}); "
                "the trace was made by another tokenizer or its ids are corrupted"
            )
        needed = len(trace) + extra_tokens
        if n_ctx and needed > n_ctx:
            extra = f" + {extra_tokens} new" if extra_tokens else ""
            raise ContextLengthError(
                f"{label}{extra} exceeds the model's context of {n_ctx} positions{action}; "
                f"shorten it with rc.fit_to_context(trace, {max(1, n_ctx - extra_tokens)}) "
                "(keeps the prompt, the answer and the last reasoning sentences; records what "
                "was cut) or use a model with a longer context"
            )


def check_batch_size(batch_size: int) -> None:
    """Refuse a batch size below 1 (or not an int)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")


def batches(
    traces: Sequence[Trace],
    batch_size: int,
    *,
    desc: str,
    progress: bool | None = None,
) -> Iterator[tuple[list[int], list[Trace]]]:
    """Yield ``(indices, traces)`` in batches of similar length (less padding), with a progress
    bar when there is more than one batch (or as ``progress`` says). Indices point into
    ``traces`` so results can be put back in the caller's order."""
    check_batch_size(batch_size)
    order = sorted(range(len(traces)), key=lambda i: len(traces[i]))
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    show = progress if progress is not None else len(chunks) > 1
    for chunk in tqdm(chunks, desc=desc, disable=not show):
        yield chunk, [traces[i] for i in chunk]
