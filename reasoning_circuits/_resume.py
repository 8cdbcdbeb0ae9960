"""Resume a recorded forward pass at any block, for the positions a patch can change.

A patch at block ``l`` and positions ``>= s`` of a causal model leaves everything before
block ``l``, and every position before ``s`` at every block, exactly as in the unpatched
run. :class:`ResumableRun` records that run once (the input of every block at positions
``>= s``, the keys and values of positions ``< s``, and the arguments each block was called
with) and then recomputes only blocks ``l..L-1`` at positions ``>= s``, for a batch of
patched copies at once. The final norm and unembedding run only on the positions the metric
reads.

This calls the bridge's blocks directly, so it depends on how the bridge calls them. It is
therefore checked when recorded: resuming at the last block must reproduce the recorded
logits, else :meth:`ResumableRun.record` returns ``None`` and callers run full forwards.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

__all__ = ["ResumableRun"]

Hook = tuple[str, Callable[..., Any]]


class _PrefixKeysValues:
    """Stands in for the HF cache inside blocks: prepends the recorded prefix, keeps nothing.

    The bridge's attention calls ``cache.update(k, v, layer_idx)`` and attends to what it
    returns; returning ``cat(prefix, new)`` without storing lets one recording serve every
    resumed pass, at any batch size.
    """

    def __init__(self, keys: dict[int, Tensor], values: dict[int, Tensor]) -> None:
        self.keys, self.values = keys, values

    def update(self, k: Tensor, v: Tensor, layer_idx: int, *args: Any, **kwargs: Any) -> Any:
        layer = layer_idx + int(kwargs.get("cycle_offset", 0) or 0)
        old_k = self.keys[layer].expand(k.shape[0], *self.keys[layer].shape[1:])
        old_v = self.values[layer].expand(v.shape[0], *self.values[layer].shape[1:])
        return torch.cat([old_k, k], dim=-2), torch.cat([old_v, v], dim=-2)


def _is_cache(value: Any) -> bool:
    return hasattr(value, "update") and hasattr(value, "get_seq_length")


class ResumableRun:
    """A recorded run that can be resumed at any block, for the positions ``>= start``."""

    def __init__(
        self,
        model: Any,
        start: int,
        length: int,
        block_calls: list[tuple[tuple[Any, ...], dict[str, Any]]],
        prefix_logits: Tensor,
        prefix: _PrefixKeysValues | None,
    ) -> None:
        self.model = model
        self.start = start
        self.length = length
        self._calls = block_calls
        self._prefix_logits = prefix_logits
        self._prefix = prefix

    @classmethod
    @torch.no_grad()
    def record(
        cls,
        model: Any,
        tokens: Int[Tensor, "1 pos"],
        start: int,
        reference_logits: Float[Tensor, "1 pos vocab"],
        *,
        attention_mask: Int[Tensor, "1 pos"] | None = None,
    ) -> ResumableRun | None:
        """Record ``tokens`` for resuming at positions ``>= start``; ``None`` if unsupported.

        ``reference_logits`` are the logits of a plain forward on ``tokens``; the recording
        is accepted only if resuming reproduces them.
        """
        blocks = getattr(model, "blocks", None)
        if blocks is None or not hasattr(model, "ln_final") or not hasattr(model, "unembed"):
            return None
        length = tokens.shape[1]
        device = model.cfg.device
        tokens = tokens.to(device)
        mask = attention_mask.to(device) if attention_mask is not None else None
        calls: dict[int, tuple[tuple[Any, ...], dict[str, Any]]] = {}
        keys: dict[int, Tensor] = {}
        values: dict[int, Tensor] = {}

        def keeper(layer: int) -> Callable[..., None]:
            def keep_call(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
                calls[layer] = (args, dict(kwargs))

            return keep_call

        handles = []
        try:
            for layer, block in enumerate(blocks):
                handles.append(block.register_forward_pre_hook(keeper(layer), with_kwargs=True))
            if start == 0:
                model(tokens, attention_mask=mask)
                prefix = None
            else:
                prefix_mask = mask[:, :start] if mask is not None else None
                _, cache = model(
                    tokens[:, :start], attention_mask=prefix_mask, return_type="logits_and_cache"
                )
                calls.clear()
                update = cache.update

                def recording_update(k: Tensor, v: Tensor, layer_idx: int, *a: Any, **kw: Any):
                    all_k, all_v = update(k, v, layer_idx, *a, **kw)
                    keys[layer_idx] = all_k[..., :start, :].clone()
                    values[layer_idx] = all_v[..., :start, :].clone()
                    return all_k, all_v

                cache.update = recording_update
                model(tokens[:, start:], attention_mask=mask, past_key_values=cache)
                prefix = _PrefixKeysValues(keys, values)
        except Exception:  # an architecture whose cache or blocks work differently
            return None
        finally:
            for handle in handles:
                handle.remove()
        if len(calls) != len(blocks) or (prefix is not None and len(keys) != len(blocks)):
            return None
        run = cls(
            model, start, length, [calls[i] for i in range(len(blocks))],
            reference_logits[:, :start].to(device), prefix,
        )  # fmt: skip
        try:
            check = run.logits(len(blocks) - 1, 2)
        except Exception:
            return None
        expected = reference_logits[:, start:].to(check)
        scale = 1.0 + float(expected.abs().max()) if expected.numel() else 1.0
        if check.shape[1] != length or (check[:, start:] - expected).abs().max() > 1e-4 * scale:
            return None
        return run

    @torch.no_grad()
    def logits(
        self,
        layer: int,
        batch: int,
        *,
        fwd_hooks: Sequence[Hook] = (),
        last: int | None = None,
    ) -> Float[Tensor, "batch pos vocab"]:
        """Logits of ``batch`` copies resumed at block ``layer`` with ``fwd_hooks`` active.

        Hooks inside blocks see only positions ``>= start`` (position ``p`` is ``p - start``).
        ``last``: return only the last ``last`` positions, unembedding only those when they
        lie at ``>= start``. Default: all ``length`` positions, those before ``start`` copied
        from the recording.
        """
        model = self.model
        args, kwargs = self._calls[layer]
        hidden = (args[0] if args else kwargs["hidden_states"]).detach()
        hidden = hidden.expand(batch, *hidden.shape[1:]).contiguous()
        with model.hooks(fwd_hooks=list(fwd_hooks)):
            for index in range(layer, len(self._calls)):
                args, kwargs = self._calls[index]
                args = tuple(self._prefix if _is_cache(a) else a for a in args[1:])
                kwargs = {k: self._prefix if _is_cache(v) else v for k, v in kwargs.items()}
                kwargs.pop("hidden_states", None)
                out = model.blocks[index](hidden, *args, **kwargs)
                hidden = out[0] if isinstance(out, tuple) else out
            resumed_only = last is not None and last <= hidden.shape[1]
            if last is not None and resumed_only:
                hidden = hidden[:, -last:]
            logits = model.unembed(model.ln_final(hidden))
        if not resumed_only and self.start > 0:
            before = self._prefix_logits.to(logits).expand(batch, -1, -1)
            logits = torch.cat([before, logits], dim=1)
        return logits if last is None else logits[:, -last:]
