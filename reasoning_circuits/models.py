"""Load a model as a TransformerLens 4 ``TransformerBridge``.

``load_model`` takes a Hugging Face hub name (``"deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"``),
a local directory in Hugging Face format (``config.json``, weights, tokenizer files), or the
name of a model built into this package. It always returns the bridge in eval mode: the
bridge boots Hugging Face models with eager attention, so ``hook_pattern`` fires.

Caveats
-------
* Offline, a hub name works only if the model is in the local Hugging Face cache; otherwise
  :class:`ModelLoadError` says so and how to pass a directory instead.
* The bridge keeps raw Hugging Face weights (no LayerNorm folding), so logits and attention
  match the model that generated the traces.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from transformer_lens.model_bridge import TransformerBridge

from reasoning_circuits.errors import ContextLengthError, ModelLoadError

__all__ = ["BUILTIN_MODELS", "check_fits", "load_model"]

# name -> directory inside the package
BUILTIN_MODELS: dict[str, Path] = {
    "tiny-reasoner": Path(__file__).parent / "organism" / "tiny_reasoner",
    # the first tiny reasoner (trained on correct reasoning only), kept because its measured
    # numbers are quoted in the docs; "tiny-reasoner" is fine-tuned from it
    "tiny-reasoner-v1": Path(__file__).parent / "organism" / "tiny_reasoner_v1",
    # a second organism for cross-model comparisons: another seed, a smaller size, and trained
    # from scratch on correct reasoning only (no fine-tune with wrong or skipped steps)
    "tiny-reasoner-b": Path(__file__).parent / "organism" / "tiny_reasoner_b",
}

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def _resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in _DTYPES:
        return _DTYPES[dtype]
    raise ValueError(f"unknown dtype {dtype!r}; use a torch.dtype or one of {sorted(_DTYPES)}")


def _check_directory(path: Path) -> None:
    missing = []
    if not (path / "config.json").is_file():
        missing.append("config.json")
    if not any((path / f).is_file() for f in _WEIGHT_FILES):
        missing.append(" or ".join(_WEIGHT_FILES))
    if not any((path / f).is_file() for f in _TOKENIZER_FILES):
        missing.append(" or ".join(_TOKENIZER_FILES))
    if missing:
        raise ModelLoadError(
            f"model directory {str(path)!r} is missing {', '.join(missing)}; a Hugging Face "
            "format directory needs config.json, the weights and the tokenizer files "
            "(model.save_pretrained(dir) and tokenizer.save_pretrained(dir) write them)"
        )


def load_model(
    name_or_path: str | os.PathLike[str],
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    **boot_kwargs: Any,
) -> TransformerBridge:
    """Load a model as a ``TransformerBridge`` in eval mode.

    Args:
        name_or_path: a built-in name (see ``BUILTIN_MODELS``), a local Hugging Face format
            directory, or a hub name (needs the network or the local cache).
        device: ``"cpu"``, ``"cuda"``, ...; default: the bridge's choice.
        dtype: ``torch.float32`` (default), ``torch.bfloat16``, or a name such as ``"bf16"``.
        **boot_kwargs: passed to ``TransformerBridge.boot_transformers``.
    """
    torch_dtype = _resolve_dtype(dtype)
    name = str(name_or_path)
    path = BUILTIN_MODELS.get(name, Path(name).expanduser())
    if path.is_dir():
        _check_directory(path)
        source = str(path)
    elif name in BUILTIN_MODELS:
        raise ModelLoadError(
            f"the built-in model {name!r} is missing from {path}; reinstall the package"
        )
    elif os.sep in name and (name.startswith((".", os.sep, "~")) or Path(name).parent.exists()):
        raise ModelLoadError(
            f"no directory {name!r}; pass an existing Hugging Face format directory"
        )
    else:
        source = name
    try:
        model = TransformerBridge.boot_transformers(
            source, device=device, dtype=torch_dtype, **boot_kwargs
        )
    except OSError as err:
        builtins = ", ".join(sorted(BUILTIN_MODELS)) or "none yet"
        raise ModelLoadError(
            f"could not load {name!r}: it is not a built-in name ({builtins}), not a local "
            "directory, and not in the local Hugging Face cache (the hub may be unreachable). "
            f"Download it where there is network (`huggingface-cli download {name} --local-dir "
            "DIR`) and pass the directory: rc.load_model('DIR')"
        ) from err
    model.eval()
    return model


def check_fits(model: TransformerBridge, length: int, *, what: str = "trace") -> None:
    """Raise :class:`ContextLengthError` if ``length`` tokens exceed the model's context."""
    n_ctx = int(getattr(model.cfg, "n_ctx", 0) or 0)
    if n_ctx and length > n_ctx:
        raise ContextLengthError(
            f"the {what} has {length} tokens but the model's context is {n_ctx}; truncate the "
            "trace or use a model with a longer context"
        )
