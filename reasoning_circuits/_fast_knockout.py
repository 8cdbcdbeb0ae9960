"""Attention knockout without a ``[T × T]`` matrix: the fast path of knockouts and suppression.

The hook path of a knockout (``HeadIntervention(heads, "knockout", query=..., key=...)``) and
of thought-anchor suppression (:func:`reasoning_circuits.anchors.suppression_effects`) edits
the eager ``[batch, head, T, T]`` scores (``hook_attn_scores``): the blocked keys get the
dtype's minimum, and each row renormalises over the keys it still sees. Here the model runs its
Hugging Face modules (:func:`reasoning_circuits._fast_attention.hf_shadow`) with an attention
function of our own that gets the same numbers from flash-attention calls that never hold more
than ``[rows × d_head]`` per head:

* every row and head first gets the model's normal causal attention (one call);
* for each **edited** batch row and the edited heads, the chosen query rows are recomputed
  over the keys they may still see. Those keys are a few ranges (the complement of the
  blocked keys, cut by causality): each range is one flash call returning the partial output
  ``o_j`` and its row log-sum-exp ``l_j``, and the ranges are merged exactly by their
  log-sum-exps, ``o = Σ_j exp(l_j − L) o_j`` with ``L = logsumexp_j l_j`` (every weight is
  at most 1: no overflow). A range of keys the row sees in full is an unmasked call; the
  keys a row reaches only up to itself form a square causal call.

The blocked mass is never subtracted from the full softmax ("full minus blocked" loses every
digit when the blocked keys hold nearly all the mass); the visible keys are summed directly.

A row that can see **no** key (every key up to itself is blocked) has nothing to read: as in
the hook path, the head writes zero there (its pattern row is zero).

Logits are made only where a metric reads them: the final hidden states (the base model
already applies its final norm) go through the LM head at the chosen rows, or in blocks of
rows for the per-sentence KL of suppression, so no ``[T × vocab]`` tensor is built.

Caveats: those of the fast profile path (no TransformerLens hooks run, right padding only,
sliding windows and the like refused), plus models that scale or soft-cap their final logits
(refused). Attention is computed in float32 whatever the model's dtype and cast back.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from reasoning_circuits import _fast_attention as fa

__all__ = [
    "Edit",
    "block_logits",
    "edits_from_masks",
    "intervention_problem",
    "knockout_problem",
    "lm_head",
    "row_blocks",
    "run_hidden",
    "use_fast",
]

IMPLEMENTATION = "reasoning_circuits_knockout"
_LOGIT_ELEMENTS = 2**22  # rows x vocab per block of logits (16 MB of float32)


@dataclass(frozen=True)
class Edit:
    """One batch row's edit in one layer: ``heads`` (query heads) of batch row ``row`` read,
    at the query rows of ``runs`` (``[start, stop)`` ranges), only the keys of ``allowed``
    (``[start, stop)`` ranges, before causality)."""

    row: int
    heads: tuple[int, ...]
    runs: tuple[tuple[int, int], ...]
    allowed: tuple[tuple[int, int], ...]


def _ranges(mask: Bool[Tensor, " pos"]) -> tuple[tuple[int, int], ...]:
    """The maximal runs of True in ``mask`` as ``[start, stop)`` pairs."""
    padded = F.pad(mask.to(torch.int8).cpu(), (1, 1))
    change = padded.diff()
    starts = torch.nonzero(change == 1).flatten().tolist()
    stops = torch.nonzero(change == -1).flatten().tolist()
    return tuple(zip(starts, stops, strict=True))


def edits_from_masks(
    rows: Bool[Tensor, "batch pos"],
    keys: Bool[Tensor, "batch pos"],
    heads_by_layer: Mapping[int, Sequence[int]],
) -> dict[int, list[Edit]]:
    """Per layer, the edits that hide ``keys[b]`` from the query rows ``rows[b]`` of batch row
    ``b`` in the heads ``heads_by_layer[layer]``."""
    per_row: list[Edit] = []
    width = rows.shape[1]
    for b in range(rows.shape[0]):
        runs = _ranges(rows[b])
        if not runs:
            continue
        allowed = _ranges(~keys[b, :width].cpu())
        per_row.append(Edit(b, (), runs, allowed))
    return {
        layer: [Edit(e.row, tuple(heads), e.runs, e.allowed) for e in per_row]
        for layer, heads in heads_by_layer.items()
        if heads and per_row
    }


def knockout_problem(model: Any) -> str | None:
    """Why the fast knockout cannot run ``model`` (a sentence), or ``None`` when it can."""
    problem = fa.fast_path_problem(model)
    if problem is not None:
        return problem
    config = model.original_model.config
    for name in ("final_logit_softcapping", "logit_scale"):
        if getattr(config, name, None) not in (None, 1, 1.0):
            return f"the model's logits use {name}"
    return None


def use_fast(model: Any, method: str, longest: int, intervention: Any = None) -> bool:
    """Whether ``method`` (``"pattern"``, ``"fast"`` or ``"auto"``, already checked) runs the
    fast path for ``intervention`` (``None``: the plain model) on traces of up to ``longest``
    tokens. ``"fast"`` refuses what it cannot run; ``"auto"`` takes it from
    ``rc.attention.AUTO_FAST_TOKENS`` tokens when it can."""
    from reasoning_circuits import attention

    if method == "pattern":
        return False
    problem = knockout_problem(model) or intervention_problem(intervention)
    if method == "fast":
        if problem is not None:
            raise ValueError(f"method='fast' cannot run this: {problem}; use method='pattern'")
        return True
    return problem is None and longest >= attention.AUTO_FAST_TOKENS


def intervention_problem(intervention: Any) -> str | None:
    """Why the fast path cannot run ``intervention`` (a sentence), or ``None``."""
    if intervention is None:
        return None
    action = getattr(intervention, "action", None)
    if action == "knockout" and hasattr(intervention, "_fast_edits"):
        return None
    what = f"action={action!r}" if action is not None else type(intervention).__name__
    return (
        f"the fast path runs only attention knockouts (HeadIntervention(heads, 'knockout', "
        f"query=..., key=...)); {what} edits activations through TransformerLens hooks, "
        "which only the hook path runs"
    )


def _merge(out: Tensor, lse: Tensor, rows: slice, part_out: Tensor, part_lse: Tensor) -> None:
    """Fold one key range's output and log-sum-exp into the running ``out``/``lse`` of
    ``rows`` (in place): a two-term log-sum-exp, each weight at most 1."""
    old = lse[..., rows]
    new = torch.logaddexp(old, part_lse)
    out[..., rows, :] = (
        out[..., rows, :] * (old - new).exp()[..., None]
        + part_out * (part_lse - new).exp()[..., None]
    )
    lse[..., rows] = new


def _pieces(q0: int, q1: int, a: int, c: int) -> Iterator[tuple[int, int, int, int, bool]]:
    """Flash calls that give query rows ``[q0, q1)`` the keys ``[a, c)`` they may see (key
    ``k`` visible from row ``r`` iff ``k <= r``): ``(r0, r1, k0, k1, causal)`` with
    ``causal`` only for square blocks (``r0 == k0``, ``r1 == k1``)."""
    s = max(q0, a)
    if s >= q1:
        return
    if a < min(s, c):  # keys before the first row: every row sees them all
        yield s, q1, a, min(s, c), False
    if s < c:
        e = min(q1, c)
        yield s, e, s, e, True  # keys among the rows: causal
        if e < q1:  # rows after the range see all of [s, e)
            yield e, q1, s, e, False


def _blocked_rows(
    q: Float[Tensor, "head pos d"],
    k: Float[Tensor, "head pos d"],
    v: Float[Tensor, "head pos dv"],
    scale: float,
    q0: int,
    q1: int,
    allowed: Sequence[tuple[int, int]],
) -> Float[Tensor, "head row dv"]:
    """Attention output of rows ``[q0, q1)`` over the allowed key ranges only (zero for a row
    that sees no key)."""
    n_heads = q.shape[0]
    out = q.new_zeros(1, n_heads, q1 - q0, v.shape[-1])
    lse = q.new_full((1, n_heads, q1 - q0), -torch.inf)
    for a, c in allowed:
        for r0, r1, k0, k1, causal in _pieces(q0, q1, a, c):
            part_out, part_lse = fa._attend(
                q[None, :, r0:r1], k[None, :, k0:k1], v[None, :, k0:k1], scale, None,
                causal=causal,
            )  # fmt: skip
            _merge(out, lse, slice(r0 - q0, r1 - q0), part_out, part_lse)
    return out[0]


def _knockout_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    edits: Mapping[int, list[Edit]] | None = module.__dict__.get("_rc_knockout")
    if edits is None:
        raise RuntimeError(
            f"attention implementation {IMPLEMENTATION!r} is internal to reasoning_circuits; "
            "it runs only inside metrics and suppression with method='fast'"
        )
    refused = [name for name in fa._REFUSED_KWARGS if kwargs.get(name) is not None]
    if refused:
        raise ValueError(f"the fast knockout does not support {refused}; use method='pattern'")
    scale = float(scaling) if scaling is not None else query.shape[-1] ** -0.5
    layer = int(module.layer_idx)  # type: ignore[arg-type]
    dtype = query.dtype
    n_rep = query.shape[1] // key.shape[1]
    q = query.float()
    k, v = fa._expand_kv(key.float(), n_rep), fa._expand_kv(value.float(), n_rep)
    output = fa._attend(q, k, v, scale, None)[0]
    for edit in edits.get(layer, ()):
        heads = torch.tensor(edit.heads, device=q.device)
        qb, kb, vb = q[edit.row, heads], k[edit.row, heads], v[edit.row, heads]
        for q0, q1 in edit.runs:
            new = _blocked_rows(qb, kb, vb, scale, q0, q1, edit.allowed)
            output[edit.row, heads, q0:q1] = new[..., : output.shape[-1]]
    return output.to(dtype).transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(IMPLEMENTATION, _knockout_attention)


@torch.no_grad()
def run_hidden(
    model: Any, tokens: Int[Tensor, "batch pos"], edits: Mapping[int, list[Edit]]
) -> Float[Tensor, "batch pos d_model"]:
    """Final hidden states (after the final norm) of right-padded ``tokens`` with ``edits``
    (``{}``: the plain model), on the model's device and in its dtype."""
    problem = knockout_problem(model)
    if problem is not None:
        raise ValueError(f"method='fast' cannot run this model: {problem}; use method='pattern'")
    _register()
    device = torch.device(model.cfg.device)
    shadow = fa.hf_shadow(model, IMPLEMENTATION)
    for module in shadow.modules():
        if hasattr(module, "layer_idx") and hasattr(module, "config"):
            module.__dict__["_rc_knockout"] = edits
    out = shadow(input_ids=tokens.to(device), use_cache=False)
    hidden: Tensor = out.last_hidden_state
    return hidden


def lm_head(model: Any) -> tuple[Tensor, Tensor | None]:
    """The (weight, bias) of the model's LM head (the Hugging Face module behind the bridge)."""
    head = model.original_model.get_output_embeddings()
    while fa._is_bridge_component(head):
        head = head._modules["_original_component"]
    weight: Tensor = head.weight
    bias: Tensor | None = getattr(head, "bias", None)
    return weight, bias


@torch.no_grad()
def block_logits(
    model: Any, hidden: Float[Tensor, "*batch row d_model"]
) -> Float[Tensor, "*batch row vocab"]:
    """Float32 logits of the given final hidden states (call it on a block of rows)."""
    weight, bias = lm_head(model)
    return F.linear(hidden, weight, bias).float()


def row_blocks(n_rows: int, n_batch: int, vocab: int) -> Iterator[slice]:
    """Blocks of rows whose ``[n_batch, rows, vocab]`` logits hold at most
    ``_LOGIT_ELEMENTS`` entries."""
    step = max(1, _LOGIT_ELEMENTS // max(1, n_batch * vocab))
    for r0 in range(0, n_rows, step):
        yield slice(r0, min(n_rows, r0 + step))
