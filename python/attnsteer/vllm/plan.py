"""One request's op arguments for one layer in a vLLM step — the same plan the Hugging Face
adapter makes, from the positions a paged step knows: the request's tokens so far (prompt, then
generated) are the keys, and the step's queries are the ``n_query`` tokens starting at
``start`` (a prefill chunk, or one decode token). Chunked prefill and preemption change only
``start`` / ``n_query``; the plan for a token does not depend on how the steps were cut.

Tensor parallelism: vLLM gives rank ``r`` of ``P`` the heads ``r·H/P … (r+1)·H/P − 1`` of every
layer (and the matching kv heads). A plan is made for the layer's ``H`` heads — per-head settings
such as PASTA's ``heads`` name global heads — and its per-head arguments are then cut to the
rank's block (`heads_of_rank`), so every rank steers exactly its share of the heads the
single-device plan steers. No method needs a reduction across ranks: per-row SpotLight works per
head; pooled SpotLight (which would) is refused for serving.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..methods import ForwardContext, Method
from ..ops import OpArgs

__all__ = ["request_context", "plan_request", "heads_of_rank"]


def request_context(span_weights: torch.Tensor, start: int, n_query: int, num_heads: int) -> ForwardContext:
    """The `ForwardContext` of a step over one request: keys ``0 … start + n_query − 1``
    (the prompt's span weights, 0 on generated keys), queries at ``start … start + n_query − 1``,
    no padding (a paged batch packs requests without it).

    Guide: ``docs/guides/vllm.md`` (with a runnable example).
    """
    T0 = int(span_weights.shape[0])
    Tk = start + n_query
    span = torch.zeros(1, Tk, dtype=torch.float32, device=span_weights.device)
    n = min(T0, Tk)
    span[0, :n] = span_weights[:n].float()
    key_pos = torch.arange(Tk, device=span_weights.device)
    return ForwardContext(span, key_pos, key_pos[start:], T0, num_heads)


def plan_request(
    method: Method,
    span_weights: torch.Tensor,
    start: int,
    n_query: int,
    num_heads: int,
    layer_idx: int,
    ctx: Optional[ForwardContext] = None,
    tp_rank: int = 0,
    tp_size: int = 1,
) -> Optional[OpArgs]:
    """``method.plan`` for this request's step at ``layer_idx``; None when nothing is steered
    (an unsteered layer, or no steered row in this step — the adapter's rule); pass a ``ctx`` from
    `request_context` to share it across the layers of one step. ``num_heads`` is the whole
    layer's; with ``tp_size > 1`` the per-head arguments are those of rank ``tp_rank``'s heads.

    Guide: ``docs/guides/vllm.md`` (with a runnable example).
    """
    ctx = ctx or request_context(span_weights, start, n_query, num_heads)
    args = method.plan_steered(layer_idx, ctx)
    return args if args is None or tp_size == 1 else heads_of_rank(args, tp_rank, tp_size)


def heads_of_rank(args: OpArgs, rank: int, size: int) -> OpArgs:
    """``args`` with its per-head ``bias`` / ``key_scale`` ``(B, H)`` cut to the contiguous block of
    heads that tensor-parallel rank ``rank`` of ``size`` holds: ``(B, H / size)``."""
    H = int(args.bias.shape[-1])
    if H % size:
        raise ValueError(f"{H} attention heads cannot be split over {size} tensor-parallel ranks")
    if not 0 <= rank < size:
        raise ValueError(f"tensor-parallel rank {rank} outside 0..{size - 1}")
    h = H // size
    cut = slice(rank * h, (rank + 1) * h)
    return args.replace(bias=args.bias[..., cut].contiguous(), key_scale=args.key_scale[..., cut].contiguous())
