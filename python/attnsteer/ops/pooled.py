"""Pooled SpotLight in one full attention pass.

The released SpotLight code measures the span's attention mass ψ pooled over the heads and rows of
a layer, then adds one bias ``b = log(τ/ψ)`` to every span logit of the sequence. Done literally
that is two full attention passes (one to measure, one to steer). A uniform span bias has a closed
form, so the second full pass is not needed: for a row with span sum ``S``, rest sum ``R``,
unsteered output ``o = (O_s + O_r) / (S + R)``, span mass ``p = S / (S + R)`` and span-only output
``o_s = O_s / S``,

    steered = (e^b·O_s + O_r) / (e^b·S + R) = (o + c·p·o_s) / (1 + c·p),   c = e^b − 1.

``o`` and ``p`` come from the measuring pass (the fused op returns the span mass), ``o_s`` from an
attention over the span keys alone — ``Tq × |span|`` work instead of ``Tq × Tk``. This holds
when the bias is the same on every span key of a sequence (equal span weights) and nothing else
changes the logits (no key scaling, no per-row target); otherwise `mixer` returns None and
the caller runs the second full pass.
"""

from __future__ import annotations

import math
import os
from typing import Callable, Optional

import torch

from .args import OpArgs

__all__ = ["mixer", "enabled"]


def enabled() -> bool:
    """The one-pass route is on unless ``ATTNSTEER_POOLED_TWO_PASS=1`` (benchmarks and tests
    compare both)."""
    return os.environ.get("ATTNSTEER_POOLED_TWO_PASS", "0") != "1"


def _padding_keys(attn_mask: Optional[torch.Tensor], B: int, Tk: int) -> Optional[torch.Tensor]:
    """A key-padding mask ``(B, Tk)`` from an ``attn_mask`` that is one (bool, shape
    ``(B or 1, 1, 1, Tk)``); ``False`` when the mask is anything else (the closed form then
    does not know the mask of the span keys)."""
    if attn_mask is None:
        return None
    if attn_mask.dtype != torch.bool or attn_mask.dim() != 4 or attn_mask.shape[1:3] != (1, 1):
        return False  # type: ignore[return-value]
    return attn_mask[:, 0, 0, :].expand(B, Tk)


def mixer(
    layer_attention: Callable, q: torch.Tensor, k: torch.Tensor, base: OpArgs, steered: OpArgs, mass: torch.Tensor
) -> Optional[Callable[..., torch.Tensor]]:
    """The steered attention of ``steered`` (a uniform span bias per sequence and head) as
    ``run(v, out0=None)``, from the unsteered pass ``base`` and its span mass ``mass (B, H, Tq)``.

    Args:
        layer_attention: the fused op entry point (``ops.layer_attention``).
        q: ``(B, Hq, Tq, D)``; k: ``(B, Hkv, Tk, D)``.
        base: the unsteered call's arguments (the measuring pass).
        steered: ``base`` with the pooled bias ``(B, Hq)``, as the second full pass would run it.
        mass: the span mass of the unsteered weights, ``(B, Hq, Tq)``.

    Returns:
        ``run(v, out0=None) -> (B, Hq, Tq, D)``; ``out0`` is the unsteered output for this ``v``
        when the caller has it (else it is computed). None when the closed form does not apply.
    """
    B, Hq, Tq, _ = q.shape
    Tk = k.shape[2]
    w = steered.span_weights
    if steered.target is not None or bool((steered.key_scale != 1).any()) or w.shape != (B, Tk):
        return None
    keys_pad = _padding_keys(steered.attn_mask, B, Tk)
    if keys_pad is False:
        return None
    span = w != 0
    big = torch.where(span, w, torch.full_like(w, math.inf)).amin(1)
    if bool((span.any(1) & (w.amax(1) != big)).any()):
        return None  # span weights differ within a sequence: bias·m is not one constant
    weight = torch.where(span.any(1), w.amax(1), torch.zeros_like(big))  # (B,)
    c = torch.expm1(steered.bias.float() * weight[:, None])  # (B, Hq)
    coef = c[:, :, None] * mass.float()  # (B, Hq, Tq)
    if steered.query_mask is not None:
        coef = coef * steered.query_mask[:, None, :].to(coef.dtype)

    # the span keys of each sequence, gathered (padded to the longest span; pads are masked)
    L = max(int(span.sum(1).max()), 1)
    order = torch.sort((~span).to(torch.int8), dim=1, stable=True).indices[:, :L]  # span positions first
    valid = torch.gather(span, 1, order)
    qpos = torch.arange(Tq, device=q.device) + (Tk - Tq)
    vis = valid[:, None, :].expand(B, Tq, L)
    if steered.is_causal:
        vis = vis & (order[:, None, :] <= qpos[None, :, None])
    if steered.window is not None:
        vis = vis & (qpos[None, :, None] - order[:, None, :] < steered.window)
    if keys_pad is not None:
        vis = vis & torch.gather(keys_pad, 1, order)[:, None, :]
    span_args = OpArgs(
        span_weights=torch.zeros(B, L, device=q.device),
        bias=torch.zeros(B, Hq, device=q.device),
        key_scale=torch.ones(B, Hq, device=q.device),
        attn_mask=vis[:, None],
        softcap=steered.softcap,
        scale=steered.scale,
    )
    idx = order[:, None, :, None].expand(B, k.shape[1], L, k.shape[3])
    k_span = torch.gather(k, 2, idx)

    def run(v: torch.Tensor, out0: Optional[torch.Tensor] = None) -> torch.Tensor:
        if out0 is None:
            out0 = layer_attention(q, k, v, base)[0]
        v_span = torch.gather(v, 2, order[:, None, :, None].expand(B, v.shape[1], L, v.shape[3]))
        out_span = layer_attention(q, k_span, v_span, span_args)[0]
        co = coef[..., None]
        return ((out0.float() + co * out_span.float()) / (1 + co)).to(q.dtype)

    return run
