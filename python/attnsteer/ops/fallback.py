"""Blocked pure-PyTorch steered attention: the path used when the compiled extension is absent.

Queries are processed in chunks, so the logits buffer is ``(B, Hq, chunk, Tk)`` in float32
(never ``Tq x Tk``), and K/V heads are shared across their query group without being repeated.
"""

from __future__ import annotations

import math

import torch

from . import reference
from .args import OpArgs

QUERY_CHUNK = 256


def steered_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, args: OpArgs):
    """``(out, span_mass)`` of the fused op, blocked over queries (see `OpArgs`)."""
    B, Hq, Tq, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    G = Hq // Hkv
    kf, vf = k.float(), v.float()
    span_f = args.span_weights.float()
    scale = args.scale if args.scale is not None else 1.0 / math.sqrt(D)
    attn_mask, query_mask, target = args.attn_mask, args.query_mask, args.target
    out = torch.empty(B, Hq, Tq, D, dtype=torch.float32, device=q.device)
    mass = torch.empty(B, Hq, Tq if args.return_span_mass else 0, dtype=torch.float32, device=q.device)
    full_mask = None
    if attn_mask is not None:
        full_mask = attn_mask.reshape((1,) * (4 - attn_mask.dim()) + tuple(attn_mask.shape))
        full_mask = full_mask.expand(B, Hq, Tq, Tk)
    for r0 in range(0, Tq, QUERY_CHUNK):
        r1 = min(Tq, r0 + QUERY_CHUNK)
        c = r1 - r0
        qc = q[:, :, r0:r1].float().reshape(B, Hkv, G * c, D)
        logits = (scale * (qc @ kf.transpose(-1, -2))).reshape(B, Hq, c, Tk)
        a = reference.steered_softmax(
            logits,
            span_f,
            args.bias.float(),
            args.key_scale.float(),
            target=target,
            target_exact=args.target_exact,
            query_mask=None if query_mask is None else query_mask[:, r0:r1],
            attn_mask=None if full_mask is None else full_mask[:, :, r0:r1],
            is_causal=args.is_causal,
            window=args.window,
            softcap=args.softcap,
            q_offset=r0,
            q_total=Tq,
        )
        out[:, :, r0:r1] = (a.reshape(B, Hkv, G * c, Tk) @ vf).reshape(B, Hq, c, D)
        if args.return_span_mass:
            mass[:, :, r0:r1] = (a * (span_f != 0)[:, None, None, :]).sum(-1)
    return out.to(q.dtype), mass


def span_bias(span_weights, bias, query_mask, num_queries, dtype):
    return reference.span_bias(span_weights, bias, query_mask=query_mask, dtype=dtype)


def steered_softmax(logits: torch.Tensor, args: OpArgs) -> torch.Tensor:
    a = reference.steered_softmax(
        logits.float(),
        args.span_weights.float(),
        args.bias.float(),
        args.key_scale.float(),
        target=args.target,
        target_exact=args.target_exact,
        query_mask=args.query_mask,
        attn_mask=args.attn_mask,
        is_causal=args.is_causal,
        window=args.window,
        softcap=args.softcap,
    )
    return a.to(logits.dtype)


def scale_keys_(keys, span_weights, factor):
    reference.scale_keys_(keys, span_weights, factor)


def lowrank_edit_(x, span_weights, a, b):
    reference.lowrank_edit_(x, span_weights, a, b)
