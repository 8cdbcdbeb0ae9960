"""Attention statistics without a ``[T × T]`` matrix: the fast path of attention profiles.

The pattern path (:func:`reasoning_circuits.attention.segment_statistics`) reduces each layer's
full ``[batch, head, query, key]`` pattern. Here the model runs its Hugging Face modules with an
attention function of our own (registered with transformers' ``AttentionInterface``), which
receives the queries and keys the model really uses (after rotary embeddings; grouped
key/value heads are expanded to the query heads) and computes, per query row and head:

* **row masses** ``Σ_{k∈part} A[q, k]`` for every part: the attention output with the values
  replaced by one-hot part indicators. Exact, and ``[T × parts]`` memory instead of
  ``[T × T]``.
* **row entropy** ``H = lse − Σ_k A[q, k] s[q, k]`` from the log-sum-exp ``lse`` of the
  scaled scores ``s`` and the attention-weighted scores ``Σ_k A s``.
* **row Gini** needs each row sorted, so it cannot avoid the row: it is recomputed from the
  scores on blocks of query rows, at most ``_GINI_ELEMENTS`` scores (per head) at a time.

When every row and head is wanted, the model's own attention output, the masses and the
entropies come from **one** blockwise pass (:func:`_attend_with_statistics`, an online
softmax as in flash attention): the scores of a block of rows and a chunk of keys are computed
once, at the head width; one matrix product with ``[v | one-hot parts | 1]`` accumulates the
output, the masses and the normaliser, and ``Σ e·s`` is accumulated beside it. Restricted
query rows are computed in blocks of rows with an additive causal mask (the cost follows the
number of chosen rows) by the SDPA kernel, whose row log-sum-exp gives ``lse`` and whose
values ``[one-hot parts | k]`` give ``Σ_k A s = scale · q · Σ_k A k``.

Caveats
-------
* The Hugging Face modules run directly: TransformerLens hooks on the bridge do not fire
  (profiles of a model with active hooks must use the pattern path).
* Right padding only: every real row's causal past holds no padding, so no attention mask is
  needed (the library pads on the right).
* Models with sliding-window attention, logit soft-capping, attention sinks or position
  biases are refused.
* Statistics are computed in float32 whatever the model's dtype; the model's attention output
  is then cast back to its dtype.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

__all__ = ["LayerRows", "fast_path_problem", "hf_shadow", "row_gini", "run_row_statistics"]

IMPLEMENTATION = "reasoning_circuits_profile"
_GINI_ELEMENTS = 2**20  # scores per block for the Gini sort (4 MB of float32, x ~3 for the sort)
_MASK_ELEMENTS = 2**22  # rows x keys per block of restricted query rows
# Blockwise pass over every row: keys per chunk, and scores per block (2 MB of float32, so that
# a block's scores and exponentials stay in the cache between passes; measured best on CPU)
_KEY_CHUNK = 512
_BLOCK_ELEMENTS = 2**19
_REFUSED_KWARGS = ("sliding_window", "softcap", "s_aux", "sinks", "position_bias")


def row_gini(
    ordered: Float[Tensor, "*rows key"], n_visible: Float[Tensor, "*rows"]
) -> Float[Tensor, "*rows"]:
    """Gini coefficient of rows sorted ascending whose first ``key - n`` entries are the masked
    zeros of future keys: the coefficient over the ``n`` visible keys only."""
    width = ordered.shape[-1]
    rank = torch.arange(1, width + 1, dtype=ordered.dtype, device=ordered.device)
    total = ordered.sum(-1)
    n = n_visible.clamp(min=2).to(ordered.dtype)
    weighted = (ordered * rank).sum(-1) - (width - n) * total
    return 2 * weighted / (n * total) - (n + 1) / n


@dataclass(frozen=True)
class LayerRows:
    """Per-row statistics of one layer. Rows that were not asked for hold zeros.

    ``row_mass``: ``[batch, head, pos, part]`` attention mass of each row on each part;
    ``entropy``: ``[batch, head, pos]`` row entropy in nats (not normalised);
    ``gini``: ``[batch, head, pos]`` row Gini over the causal support.
    """

    row_mass: Float[Tensor, "batch head pos part"]
    entropy: Float[Tensor, "batch head pos"] | None
    gini: Float[Tensor, "batch head pos"] | None


def fast_path_problem(model: Any) -> str | None:
    """Why the fast path cannot run ``model`` (a sentence), or ``None`` when it can."""
    hf = getattr(model, "original_model", None)
    if hf is None or not hasattr(hf, "base_model") or not hasattr(hf, "config"):
        return "the model has no Hugging Face original_model to run"
    config = hf.config
    if getattr(config, "use_sliding_window", False) and getattr(config, "sliding_window", None):
        return "the model uses sliding-window attention"
    for name in ("attn_logit_softcapping", "alibi"):
        if getattr(config, name, None):
            return f"the model uses {name}"
    if any(point.fwd_hooks for point in getattr(model, "hook_dict", {}).values()):
        return (
            "the model has active TransformerLens hooks (e.g. planted_pattern), which the fast "
            "path does not run"
        )
    return None


def _is_bridge_component(module: nn.Module) -> bool:
    return "_original_component" in module._modules


def hf_shadow(model: Any, attn_implementation: str) -> nn.Module:
    """The Hugging Face base model (no LM head) behind a ``TransformerBridge``, as a shadow copy
    whose modules are the original Hugging Face classes: it shares every parameter and buffer
    with the bridge (nothing is copied or changed) and runs ``attn_implementation``."""
    hf = model.original_model
    config = copy.deepcopy(hf.config)
    config._attn_implementation = attn_implementation
    own_config = hf.config

    def unwrap(module: nn.Module) -> nn.Module:
        while _is_bridge_component(module):
            module = module._modules["_original_component"]  # type: ignore[assignment]
        clone = copy.copy(module)
        clone._modules = {
            name: None if child is None else unwrap(child)
            for name, child in module._modules.items()
        }
        clone._forward_hooks = type(module._forward_hooks)()
        clone._forward_pre_hooks = type(module._forward_pre_hooks)()
        if getattr(module, "config", None) is own_config:
            clone.config = config
        return clone

    base = unwrap(hf).base_model
    assert isinstance(base, nn.Module)
    return base


class _Stop(Exception):
    """Raised after the last layer that is needed: the rest of the model is not run."""


def _attend(
    q: Float[Tensor, "batch head row d"],
    k: Float[Tensor, "batch head key d"],
    v: Float[Tensor, "batch head key dv"],
    scale: float,
    mask: Float[Tensor, "row key"] | None,
    *,
    causal: bool = True,
) -> tuple[Float[Tensor, "batch head row dv"], Float[Tensor, "batch head row"]]:
    """Softmax attention and the row log-sum-exp of the scaled scores. ``mask`` is additive
    (0 or -inf); ``None`` means causal with query i = key i, or every key visible to every
    query with ``causal=False``. Queries and keys are zero-padded to the values' width when it
    is larger (the scores do not change)."""
    n_out = v.shape[-1]
    width = max(q.shape[-1], n_out)
    if width > min(q.shape[-1], v.shape[-1]):  # padded anyway: to a multiple of 16 (faster GEMMs)
        width = -(-width // 16) * 16
    q, k, v = (F.pad(t, (0, width - t.shape[-1])) if t.shape[-1] < width else t for t in (q, k, v))
    if q.device.type == "cpu":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, 0.0, mask is None and causal, attn_mask=mask, scale=scale
        )
    else:
        out, lse = _attend_blockwise(q, k, v, scale, mask, causal=causal)
    return out[..., :n_out], lse


def _attend_blockwise(
    q: Tensor, k: Tensor, v: Tensor, scale: float, mask: Tensor | None, *, causal: bool = True
) -> tuple[Tensor, Tensor]:
    """The same as :func:`_attend` in plain torch, a block of query rows at a time (devices
    without a fused kernel that returns the log-sum-exp)."""
    batch, heads, n_rows, _ = q.shape
    n_keys = k.shape[2]
    out = q.new_empty(batch, heads, n_rows, v.shape[-1])
    lse = q.new_empty(batch, heads, n_rows)
    step = max(1, _GINI_ELEMENTS // max(1, batch * heads * n_keys))
    for r0 in range(0, n_rows, step):
        r1 = min(n_rows, r0 + step)
        scores = torch.matmul(q[:, :, r0:r1], k.transpose(-1, -2)) * scale
        if mask is None and causal:
            rows = torch.arange(r0, r1, device=q.device)[:, None]
            scores = scores.masked_fill(torch.arange(n_keys, device=q.device) > rows, -torch.inf)
        elif mask is not None:
            scores = scores + mask[r0:r1]
        lse[:, :, r0:r1] = torch.logsumexp(scores, -1)
        out[:, :, r0:r1] = torch.matmul((scores - lse[:, :, r0:r1, None]).exp(), v)
    return out, lse


@dataclass
class _Plan:
    layers: frozenset[int]
    last: int
    heads: Tensor | None  # None: all heads
    onehot: Float[Tensor, "batch 1 pos part"]
    rows: Int[Tensor, " row"] | None  # None: every row
    entropy: bool
    gini: bool
    on_layer: Callable[[int, LayerRows], None]


def _layer_statistics(
    plan: _Plan, layer: int, q: Tensor, k: Tensor, v: Tensor, scale: float
) -> Tensor:
    """Run one layer's attention, hand its per-row statistics to ``plan.on_layer`` and return
    the attention output ``[batch, head, pos, d]``. ``k`` and ``v`` have the model's key/value
    heads (fewer than ``q``'s with grouped-query attention)."""
    n_heads, n_pos = q.shape[1], q.shape[2]
    dtype = q.dtype
    q, k, v = q.float(), k.float(), v.float()
    n_rep = n_heads // k.shape[1]
    if plan.rows is not None or plan.heads is not None:
        k, v = _expand_kv(k, n_rep), _expand_kv(v, n_rep)
        output = _attend(q, k, v, scale, None)[0]
        if plan.heads is not None:
            q, k = q[:, plan.heads], k[:, plan.heads]
        row_mass, entropy, gini = _restricted_rows(plan, q, k, scale)
        plan.on_layer(layer, LayerRows(row_mass=row_mass, entropy=entropy, gini=gini))
        return output.to(dtype)
    # Every row and head: one blockwise pass gives the model's output, the row masses and the
    # entropies of all query heads.
    output, row_mass, entropy = _attend_with_statistics(
        q, k, v, plan.onehot, scale, entropy=plan.entropy
    )
    gini = None
    if plan.gini:
        gini = _gini_rows(q, _expand_kv(k, n_rep), scale, torch.arange(n_pos, device=q.device))
    plan.on_layer(layer, LayerRows(row_mass=row_mass, entropy=entropy, gini=gini))
    return output.to(dtype)


def _attend_with_statistics(
    q: Float[Tensor, "batch head pos d"],
    k: Float[Tensor, "batch kv_head pos d"],
    v: Float[Tensor, "batch kv_head pos dv"],
    onehot: Float[Tensor, "batch 1 pos part"],
    scale: float,
    *,
    entropy: bool,
) -> tuple[
    Float[Tensor, "batch head pos dv"],
    Float[Tensor, "batch head pos part"],
    Float[Tensor, "batch head pos"] | None,
]:
    """Causal attention of every row and head, with each row's mass on every part and its
    entropy (nats), in one blockwise pass (online softmax) that never holds a ``[T × T]``
    matrix.

    The scores ``q·kᵀ`` are computed once, at the head width. For each block of query rows and
    chunk of keys, the exponentiated scores ``e = exp(s − m)`` (``m`` the row's running
    maximum) are multiplied with ``[v | one-hot parts | 1]`` (output, masses and the
    normaliser ``l = Σ e`` in one matrix product), and ``Σ e·(s − m)`` is accumulated for the
    entropy ``H = log l − Σ e·(s − m) / l``. When a later chunk raises the maximum from ``m``
    to ``m'``, the sums so far are rescaled by ``α = exp(m − m')`` (and the entropy sum also
    shifts by ``(m − m')·l``). Query heads that share a key/value head are stacked in one
    matrix product. Future keys are filled with the lowest finite float, not ``-inf``, so that
    ``0 · s`` stays 0.
    """
    batch, n_heads, n_pos, d = q.shape
    n_groups, dv, n_parts = k.shape[1], v.shape[-1], onehot.shape[-1]
    n_rep = n_heads // n_groups
    stacks = batch * n_groups
    # [stack, pos * rep, d]: positions outermost, so that a block of positions is a slice
    queries = (q * scale).reshape(batch, n_groups, n_rep, n_pos, d).transpose(2, 3)
    queries = queries.reshape(stacks, n_pos * n_rep, d)
    keys = k.reshape(stacks, n_pos, d)
    used = dv + n_parts + 1
    width = -(-used // 16) * 16  # a multiple of 16: faster matrix products
    values = torch.cat(
        [
            v,
            onehot.expand(batch, n_groups, n_pos, n_parts),
            q.new_ones(batch, n_groups, n_pos, 1),
            q.new_zeros(batch, n_groups, n_pos, width - used),
        ],
        -1,
    ).reshape(stacks, n_pos, width)
    chunk = min(_KEY_CHUNK, n_pos)
    step = max(1, _BLOCK_ELEMENTS // (chunk * stacks * n_rep))  # positions per block of rows
    scores_buffer = q.new_empty(stacks * min(step, n_pos) * n_rep * chunk)
    weights_buffer = torch.empty_like(scores_buffer)
    sums = q.new_empty(stacks, n_pos * n_rep, width)
    entropy_sums = q.new_empty(stacks, n_pos * n_rep) if entropy else None
    lowest = torch.finfo(q.dtype).min
    positions = torch.arange(n_pos, device=q.device)
    for r0 in range(0, n_pos, step):
        r1 = min(n_pos, r0 + step)
        rows = slice(r0 * n_rep, r1 * n_rep)
        n_rows = (r1 - r0) * n_rep
        block_queries = queries[:, rows]
        acc = e_sum = running_max = block_queries.new_empty(0)  # set by the first chunk
        for c0 in range(0, r1, chunk):
            c1 = min(r1, c0 + chunk)
            size = stacks * n_rows * (c1 - c0)
            scores = scores_buffer[:size].view(stacks, n_rows, c1 - c0)
            torch.bmm(block_queries, keys[:, c0:c1].transpose(1, 2), out=scores)
            if c1 > r0:  # the chunk reaches the block's own positions: hide future keys
                lo = max(r0, c0)
                future = positions[lo:c1][None, :] > positions[r0:r1, None]
                scores.view(stacks, r1 - r0, n_rep, c1 - c0)[..., lo - c0 :].masked_fill_(
                    future[:, None, :], lowest
                )
            chunk_max = scores.amax(-1, keepdim=True)
            # the first chunk holds key 0, which every row sees: its maximum is finite
            new_max = chunk_max if c0 == 0 else torch.maximum(running_max, chunk_max)
            scores.sub_(new_max)
            weights = torch.exp(scores, out=weights_buffer[:size].view_as(scores))
            chunk_values = values[:, c0:c1]
            if c0 == 0:
                acc = torch.bmm(weights, chunk_values)
                if entropy_sums is not None:
                    e_sum = torch.linalg.vecdot(weights, scores)[..., None]
            else:
                alpha = torch.exp(running_max - new_max)
                if entropy_sums is not None:
                    normaliser = acc[..., used - 1 : used]
                    e_sum = alpha * (e_sum + (running_max - new_max) * normaliser)
                    e_sum += torch.linalg.vecdot(weights, scores)[..., None]
                acc.mul_(alpha).baddbmm_(weights, chunk_values)
            running_max = new_max
        sums[:, rows] = acc
        if entropy_sums is not None:
            normaliser = acc[..., used - 1]
            entropy_sums[:, rows] = normaliser.log() - e_sum[..., 0] / normaliser

    def heads_first(t: Tensor) -> Tensor:
        shape = t.shape[2:]
        t = t.reshape(batch, n_groups, n_pos, n_rep, *shape).transpose(2, 3)
        return t.reshape(batch, n_heads, n_pos, *shape)

    result = heads_first(sums)
    normalised = result[..., : dv + n_parts] / result[..., used - 1 : used]
    row_entropy = None if entropy_sums is None else heads_first(entropy_sums)
    return normalised[..., :dv], normalised[..., dv:], row_entropy


def _expand_kv(t: Tensor, n_rep: int) -> Tensor:
    """Grouped-query attention: query head h reads key/value head h // n_rep."""
    return t if n_rep == 1 else t.repeat_interleave(n_rep, dim=1)


def _restricted_rows(
    plan: _Plan, q: Tensor, k: Tensor, scale: float
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Statistics of the chosen rows only, in blocks of rows with an additive causal mask."""
    batch, n_heads, n_pos, d = q.shape
    rows = plan.rows if plan.rows is not None else torch.arange(n_pos, device=q.device)
    n_parts = plan.onehot.shape[-1]
    row_mass = q.new_zeros(batch, n_heads, n_pos, n_parts)
    entropy = q.new_zeros(batch, n_heads, n_pos) if plan.entropy else None
    gini = q.new_zeros(batch, n_heads, n_pos) if plan.gini else None
    if len(rows) == 0:
        return row_mass, entropy, gini
    step = max(1, _MASK_ELEMENTS // n_pos)
    for b0 in range(0, len(rows), step):
        block = rows[b0 : b0 + step]
        width = int(block[-1]) + 1  # rows are sorted: no row sees beyond the last one
        keys = torch.arange(width, device=q.device)
        mask = torch.zeros(len(block), width, device=q.device).masked_fill(
            keys > block[:, None], -torch.inf
        )
        kb = k[:, :, :width]
        onehot = plan.onehot[:, :, :width].expand(batch, n_heads, width, n_parts)
        values = torch.cat([onehot, kb], -1) if plan.entropy else onehot
        qb = q[:, :, block]
        out, lse = _attend(qb, kb, values, scale, mask)
        row_mass[:, :, block] = out[..., :n_parts]
        if entropy is not None:
            entropy[:, :, block] = lse - scale * (qb * out[..., n_parts : n_parts + d]).sum(-1)
    if gini is not None:
        gini[:, :, rows] = _gini_rows(q, k, scale, rows)[:, :, rows]
    return row_mass, entropy, gini


def _gini_rows(q: Tensor, k: Tensor, scale: float, rows: Tensor) -> Tensor:
    """Row Gini of the chosen (sorted) rows, rebuilt from the scores one head and one block of
    rows at a time: at most ``_GINI_ELEMENTS`` scores are held (plus the sort's copies)."""
    batch, n_heads, n_pos, _ = q.shape
    gini = q.new_zeros(batch, n_heads, n_pos)
    step = max(1, _GINI_ELEMENTS // max(1, batch * n_pos))
    for h in range(n_heads):
        for b0 in range(0, len(rows), step):
            block = rows[b0 : b0 + step]
            width = int(block[-1]) + 1
            scores = torch.matmul(q[:, h, block], k[:, h, :width].transpose(-1, -2)) * scale
            future = torch.arange(width, device=q.device) > block[:, None]
            pattern = scores.masked_fill(future, -torch.inf).softmax(-1)
            gini[:, h, block] = row_gini(pattern.sort(-1).values, block.to(q.dtype) + 1)
    return gini


def _attention_function(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    plan: _Plan | None = module.__dict__.get("_rc_plan")
    if plan is None:
        raise RuntimeError(
            f"attention implementation {IMPLEMENTATION!r} is internal to reasoning_circuits; "
            "it runs only inside AttentionProfile.compute(..., method='fast')"
        )
    refused = [name for name in _REFUSED_KWARGS if kwargs.get(name) is not None]
    if refused:
        raise ValueError(
            f"the fast attention path does not support {refused}; use method='pattern'"
        )
    scale = float(scaling) if scaling is not None else query.shape[-1] ** -0.5
    layer = int(module.layer_idx)  # type: ignore[arg-type]
    if layer in plan.layers:
        output = _layer_statistics(plan, layer, query, key, value, scale)
    else:
        n_rep = query.shape[1] // key.shape[1]
        key, value = _expand_kv(key.float(), n_rep), _expand_kv(value.float(), n_rep)
        output = _attend(query.float(), key, value, scale, None)[0].to(query.dtype)
    if layer == plan.last:
        raise _Stop
    return output.transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(IMPLEMENTATION, _attention_function)


@torch.no_grad()
def run_row_statistics(
    model: Any,
    tokens: Int[Tensor, "batch pos"],
    labels: Int[Tensor, "batch pos"],
    n_parts: int,
    *,
    layers: Sequence[int],
    heads: Sequence[int] | None,
    rows: Bool[Tensor, "batch pos"] | None,
    entropy: bool,
    gini: bool,
    on_layer: Callable[[int, LayerRows], None],
) -> None:
    """Run ``model`` on right-padded ``tokens`` up to the last of ``layers`` and call
    ``on_layer(layer, rows)`` with the per-row statistics of each chosen layer.

    ``labels``: part of every position (-1 = padding). ``heads``: the model heads to report
    (``None`` = all). ``rows``: the query rows to compute (``None`` = all); a position chosen in
    any batch row is computed in every batch row.
    """
    problem = fast_path_problem(model)
    if problem is not None:
        raise ValueError(f"method='fast' cannot run this model: {problem}; use method='pattern'")
    _register()
    device = torch.device(model.cfg.device)
    shadow = hf_shadow(model, IMPLEMENTATION)
    valid = (labels >= 0).to(device)
    onehot = F.one_hot(labels.clamp(min=0).to(device), n_parts).to(torch.float32)
    onehot = (onehot * valid[..., None])[:, None]
    chosen_rows = None
    if rows is not None and not bool(rows.all()):
        chosen_rows = torch.nonzero(rows.any(0)).flatten().to(device)
    head_index = None
    if heads is not None and list(heads) != list(range(int(model.cfg.n_heads))):
        head_index = torch.tensor(list(heads), device=device)
    plan = _Plan(
        layers=frozenset(layers),
        last=max(layers),
        heads=head_index,
        onehot=onehot,
        rows=chosen_rows,
        entropy=entropy,
        gini=gini,
        on_layer=on_layer,
    )
    for module in shadow.modules():
        if hasattr(module, "layer_idx") and hasattr(module, "config"):
            module.__dict__["_rc_plan"] = plan
    with contextlib.suppress(_Stop):
        shadow(input_ids=tokens.to(device), use_cache=False)
