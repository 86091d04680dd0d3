"""The fused steered attention over a paged KV cache (the layout vLLM keeps): one call per layer
for the query tokens of every request of a step.

Shapes: ``q (N, Hq, D)`` packed query tokens (request r owns rows ``query_start_loc[r] …
query_start_loc[r + 1] − 1``); ``key_cache`` / ``value_cache`` ``(num_blocks, Hkv, block_size, D)``
with a contiguous ``(block_size, D)`` region per block and head (``k_transposed``: K is stored
``[D][block_size]`` in it, as vLLM's CPU vector paths do); ``block_table (R, max_blocks)``;
``seq_lens (R,)`` keys per request (this step's included); ``span_weights (R, S)`` per key position
(0 beyond S: generated keys are never span); ``bias`` / ``key_scale (R, Hq)``; ``query_mask (N,)``.
Query i of request r sits at position ``seq_lens[r] − n_r + i`` (causal). Returns
``(out (N, Hq, D), span_mass (N, Hq) or empty)``. CPU only for now.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

__all__ = ["steered_attention_paged"]


def steered_attention_paged(
    q: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
    span_weights: torch.Tensor,
    bias: torch.Tensor,
    key_scale: torch.Tensor,
    *,
    k_transposed: bool = False,
    target: Optional[float] = None,
    target_exact: bool = False,
    query_mask: Optional[torch.Tensor] = None,
    window: Optional[int] = None,
    softcap: Optional[float] = None,
    scale: Optional[float] = None,
    return_span_mass: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """See the module docstring; shape errors come from the C++ host function, by name."""
    from . import _check_grad, _use_kernel

    _check_grad("steered_attention_paged", q, key_cache, value_cache)
    if not _use_kernel(q):
        raise NotImplementedError(
            "steered_attention_paged needs the compiled extension (no PyTorch fallback yet); "
            "rebuild with `pip install --no-build-isolation -e .`"
        )
    if q.device.type != "cpu":
        raise NotImplementedError("steered_attention_paged runs on CPU only for now")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return torch.ops.attnsteer.steered_attention_paged.default(
        q,
        key_cache,
        value_cache,
        bool(k_transposed),
        block_table,
        seq_lens,
        query_start_loc,
        span_weights,
        bias,
        key_scale,
        None if target is None else float(target),
        bool(target_exact),
        query_mask,
        None if window is None else int(window),
        softcap if softcap else None,
        scale,
        bool(return_span_mass),
    )
