"""Pure-PyTorch reference of every attnsteer op.

These functions materialise the full ``(B, H, Tq, Tk)`` logits and compute in float64 by
default: they are the oracle the kernels are tested against, not a fast path (the
no-extension fallback in `attnsteer.ops.fallback` is blocked over queries and runs in
float32). Read them as the specification; comments in ``csrc/`` and elsewhere point here.

Order of operations, per query row i (position ``pos = i + Tk - Tq``) and key j, with ``w_j``
the key's span weight (span iff ``w_j != 0``) and "steered" = the row's ``query_mask`` entry:

1. ``s = scale · q_i · k_j`` (``scale`` default ``1/sqrt(D)``);
2. steered rows, span keys: ``s *= key_scale[b, h]``;
3. soft-capping: ``s = c · tanh(s / c)`` (when ``softcap = c``);
4. steered rows: ``s += bias[b, h] · w_j``;
5. ``attn_mask``: bool False → −inf, float added;
6. visibility: causal (bottom-right) ``j <= pos``; sliding window ``pos − j < window``; else −inf;
7. softmax over the visible keys. With a SpotLight ``target`` τ, span and rest are normalised
   apart (mass p and 1 − p) and mixed with weights ``w`` and ``1 − w``: on a steered row with a
   visible span key and ``p < τ``, ``w = τ / (τ + 1 − p)`` (``target_exact``: ``w = τ``);
   otherwise ``w = p`` (the plain softmax). Rows that see no key give zeros.

Shapes: ``q (B, Hq, Tq, D)``, ``k``/``v`` ``(B, Hkv, Tk, D)``, ``span_weights (B, Tk)`` float
(0 = not in the span), ``bias``/``key_scale`` ``(B, Hq)``, ``query_mask (B, Tq)`` bool.

Guide: ``docs/guides/ops.md`` (with a runnable example).
"""

from __future__ import annotations

import math
from typing import Optional

import torch

__all__ = ["steered_logits", "steered_softmax", "steered_attention", "span_bias", "scale_keys_", "lowrank_edit_"]


def _visible(
    Tq: int,
    Tk: int,
    is_causal: bool,
    window: Optional[int],
    device,
    q_offset: int = 0,
    q_total: Optional[int] = None,
) -> torch.Tensor:
    """Bool (Tq, Tk): key j visible to query i (bottom-right causal, sliding window).

    ``q_offset``/``q_total`` place these Tq rows inside a longer query sequence (blocked paths).
    """
    q_total = Tq if q_total is None else q_total
    pos = torch.arange(Tq, device=device)[:, None] + (q_offset + Tk - q_total)
    j = torch.arange(Tk, device=device)[None, :]
    ok = torch.ones(Tq, Tk, dtype=torch.bool, device=device)
    if is_causal:
        ok &= j <= pos
    if window is not None and window > 0:
        ok &= (pos - j) < window
    return ok


def steered_logits(
    logits: torch.Tensor,
    span_weights: torch.Tensor,
    bias: torch.Tensor,
    key_scale: torch.Tensor,
    *,
    query_mask: Optional[torch.Tensor] = None,
    attn_mask: Optional[torch.Tensor] = None,
    is_causal: bool = False,
    window: Optional[int] = None,
    softcap: Optional[float] = None,
    q_offset: int = 0,
    q_total: Optional[int] = None,
) -> torch.Tensor:
    """Logits ``(B, H, Tq, Tk)`` after key scaling, soft-capping, span bias and masks."""
    B, H, Tq, Tk = logits.shape
    in_span = (span_weights != 0)[:, None, None, :]
    steered = torch.ones(B, 1, Tq, 1, dtype=torch.bool, device=logits.device)
    if query_mask is not None:
        steered = query_mask[:, None, :, None].bool()
    ks = key_scale.to(logits.dtype)[:, :, None, None]
    s = torch.where(in_span & steered, logits * ks, logits)
    if softcap is not None and softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    b = bias.to(logits.dtype)[:, :, None, None] * span_weights.to(logits.dtype)[:, None, None, :]
    s = s + torch.where(steered, b, torch.zeros_like(b))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            s = s.masked_fill(~attn_mask, float("-inf"))
        else:
            s = s + attn_mask.to(s.dtype)
    s = s.masked_fill(~_visible(Tq, Tk, is_causal, window, s.device, q_offset, q_total), float("-inf"))
    return s


def steered_softmax(
    logits: torch.Tensor,
    span_weights: torch.Tensor,
    bias: torch.Tensor,
    key_scale: torch.Tensor,
    *,
    target: Optional[float] = None,
    target_exact: bool = False,
    query_mask: Optional[torch.Tensor] = None,
    attn_mask: Optional[torch.Tensor] = None,
    is_causal: bool = False,
    window: Optional[int] = None,
    softcap: Optional[float] = None,
    q_offset: int = 0,
    q_total: Optional[int] = None,
) -> torch.Tensor:
    """Steered attention weights ``(B, H, Tq, Tk)``; fully masked rows are zeros."""
    s = steered_logits(
        logits,
        span_weights,
        bias,
        key_scale,
        query_mask=query_mask,
        attn_mask=attn_mask,
        is_causal=is_causal,
        window=window,
        softcap=softcap,
        q_offset=q_offset,
        q_total=q_total,
    )
    if target is None:
        row_max = s.amax(-1, keepdim=True)
        dead = torch.isneginf(row_max)
        e = torch.exp(s - torch.where(dead, torch.zeros_like(row_max), row_max))
        a = e / e.sum(-1, keepdim=True).clamp_min(torch.finfo(e.dtype).tiny)
        return torch.where(dead, torch.zeros_like(a), a)
    # Span and rest are normalised separately and mixed with w and 1 - w: the span mass p
    # is known in log space, so a p that underflows is still steered.
    in_span = (span_weights != 0)[:, None, None, :]
    neg_inf = torch.tensor(float("-inf"), dtype=s.dtype, device=s.device)
    s_span = torch.where(in_span, s, neg_inf)
    s_rest = torch.where(in_span, neg_inf, s)
    lse_span = torch.logsumexp(s_span, -1, keepdim=True)
    lse_rest = torch.logsumexp(s_rest, -1, keepdim=True)
    lse = torch.logaddexp(lse_span, lse_rest)
    safe = lambda x: torch.where(torch.isneginf(x), torch.zeros_like(x), x)  # noqa: E731
    p = torch.where(torch.isneginf(lse_span), torch.zeros_like(lse), torch.exp(lse_span - safe(lse)))
    rest = torch.where(torch.isneginf(lse_rest), torch.zeros_like(lse), torch.exp(lse_rest - safe(lse)))
    if target_exact:  # + log(target(1-p) / (p(1-target))) on span logits: mass becomes target
        w = torch.full_like(p, target)
    else:  # + log(target / p) on span logits: mass becomes target / (target + 1 - p)
        w = target / (target + rest)
    move = ~torch.isneginf(lse_span) & (p < target)
    if query_mask is not None:
        move &= query_mask[:, None, :, None].bool()
    w = torch.where(move, w, p)
    a_span = torch.exp(s_span - safe(lse_span)) * w
    a_rest = torch.exp(s_rest - safe(lse_rest)) * (1 - w)
    a = torch.where(in_span, a_span, a_rest)
    return torch.where(torch.isneginf(lse), torch.zeros_like(a), a)


def steered_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    span_weights: torch.Tensor,
    bias: torch.Tensor,
    key_scale: torch.Tensor,
    *,
    target: Optional[float] = None,
    target_exact: bool = False,
    query_mask: Optional[torch.Tensor] = None,
    attn_mask: Optional[torch.Tensor] = None,
    is_causal: bool = False,
    window: Optional[int] = None,
    softcap: Optional[float] = None,
    scale: Optional[float] = None,
    compute_dtype: torch.dtype = torch.float64,
    return_span_mass: bool = False,
):
    """Materialised steered attention. Returns ``out (B, Hq, Tq, D)`` in q's dtype (and the span
    mass of the final weights, ``(B, Hq, Tq)``, when ``return_span_mass``)."""
    B, Hq, Tq, D = q.shape
    Hkv = k.shape[1]
    group = Hq // Hkv
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    qc, kc, vc = (t.to(compute_dtype) for t in (q, k, v))
    kc = kc.repeat_interleave(group, dim=1)
    vc = vc.repeat_interleave(group, dim=1)
    logits = scale * (qc @ kc.transpose(-1, -2))
    a = steered_softmax(
        logits,
        span_weights.to(compute_dtype),
        bias.to(compute_dtype),
        key_scale.to(compute_dtype),
        target=target,
        target_exact=target_exact,
        query_mask=query_mask,
        attn_mask=attn_mask,
        is_causal=is_causal,
        window=window,
        softcap=softcap,
    )
    out = (a @ vc).to(q.dtype)
    if return_span_mass:
        mass = (a * (span_weights != 0)[:, None, None, :]).sum(-1)
        return out, mass
    return out


def span_bias(
    span_weights: torch.Tensor,
    bias: torch.Tensor,
    *,
    query_mask: Optional[torch.Tensor] = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Additive bias ``(B, H, 1, Tk)``, or ``(B, H, Tq, Tk)`` with a query mask."""
    b = bias.double()[:, :, None, None] * span_weights.double()[:, None, None, :]
    if query_mask is not None:
        b = b * query_mask.bool()[:, None, :, None]
    return b.to(dtype)


def scale_keys_(keys: torch.Tensor, span_weights: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """In place: ``keys[b, h, j] *= factor[b, h]`` where ``span_weights[b, j] != 0``."""
    sel = (span_weights != 0)[:, None, :, None]
    scaled = (keys.double() * factor.double()[:, :, None, None]).to(keys.dtype)
    keys.copy_(torch.where(sel, scaled, keys))
    return keys


def lowrank_edit_(x: torch.Tensor, span_weights: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """In place, in float64: ``x[b, h, t] += w · a[h] (b[h]ᵀ x[b, h, t])`` where ``w = span_weights[b, t] != 0``;
    ``x (B, H, T, D)``, ``a, b (H, D, R)``."""
    xd = x.double()
    proj = torch.einsum("hdr,bhtd->bhtr", b.double(), xd)
    edit = torch.einsum("hdr,bhtr->bhtd", a.double(), proj) * span_weights.double()[:, None, :, None]
    x.copy_(torch.where((span_weights != 0)[:, None, :, None], xd + edit, xd).to(x.dtype))
    return x
