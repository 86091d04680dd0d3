"""One request's op arguments for one layer in a vLLM step — the same plan the Hugging Face
adapter makes, from the positions a paged step knows: the request's tokens so far (prompt, then
generated) are the keys, and the step's queries are the ``n_query`` tokens starting at
``start`` (a prefill chunk, or one decode token). Chunked prefill and preemption change only
``start`` / ``n_query``; the plan for a token does not depend on how the steps were cut.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..methods import ForwardContext, Method
from ..ops import OpArgs

__all__ = ["request_context", "plan_request"]


def request_context(span_weights: torch.Tensor, start: int, n_query: int, num_heads: int) -> ForwardContext:
    """The :class:`ForwardContext` of a step over one request: keys ``0 … start + n_query − 1``
    (the prompt's span weights, 0 on generated keys), queries at ``start … start + n_query − 1``,
    no padding (a paged batch packs requests without it)."""
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
) -> Optional[OpArgs]:
    """``method.plan`` for this request's step at ``layer_idx``; None when nothing is steered
    (an unsteered layer, or no steered row in this step — the adapter's rule); pass a ``ctx`` from
    :func:`request_context` to share it across the layers of one step."""
    ctx = ctx or request_context(span_weights, start, n_query, num_heads)
    return method.plan_steered(layer_idx, ctx)
