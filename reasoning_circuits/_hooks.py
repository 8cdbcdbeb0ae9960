"""Hook plumbing in one place: hook names, the layer of a hook, the intervention protocol.

Every module that reads or edits activations goes through these helpers, which lean on
TransformerLens' own (``utilities.get_act_name`` for names, ``HookPoint.layer()`` for the layer
a hook fires in, ``model.hooks(...)`` for hooks attached only for one block), so a change of
hook naming in TransformerLens is mended here once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from transformer_lens.utilities import get_act_name

if TYPE_CHECKING:
    from reasoning_circuits.trace import Trace

__all__ = ["Hook", "Intervention", "act_name", "hook_layer"]

Hook = tuple[str, Callable[..., Any]]
"""``(hook_name, fn)``, as ``model.run_with_hooks(fwd_hooks=[...])`` takes them."""


def act_name(kind: str, layer: int) -> str:
    """The hook name of activation ``kind`` at ``layer``: ``act_name("z", 3)`` is
    ``"blocks.3.attn.hook_z"`` (TransformerLens' naming; ``"pattern"``, ``"attn_scores"``,
    ``"resid_pre"``, ``"q"``, ``"k"``, ``"v"`` work too)."""
    return str(get_act_name(kind, layer))


def hook_layer(hook: Any) -> int:
    """The layer a ``HookPoint`` fires in (``blocks.{layer}.…``)."""
    return int(hook.layer())


class Intervention(Protocol):
    """Anything that edits a forward pass through hooks, such as
    :class:`~reasoning_circuits.interventions.HeadIntervention`.

    ``hooks(model, traces, width=..., offset=..., left_pad=...)`` returns the forward hooks for
    a batch of ``traces`` (row i = ``traces[i]``) of ``width`` columns; ``offset`` is the first
    column the hooked run covers (a KV-cached generation step); ``left_pad[i]`` is the number
    of pad columns before row i's trace (``None``: right-padded, column = position).
    """

    def hooks(
        self,
        model: Any,
        traces: Trace | Sequence[Trace],
        *,
        width: int | None = None,
        offset: int = 0,
        left_pad: Sequence[int] | None = None,
    ) -> list[Hook]: ...
