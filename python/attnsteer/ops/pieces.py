"""Steered attention from flash-attention pieces: the split softmax over key ranges.

A span that is a union of key ranges splits the keys into pieces (span ranges and the rest's).
Each piece runs through torch's own flash kernel, which also returns the log-sum-exp of every row;
the pieces are merged per row from those LSEs — so the cost is that of unsteered flash attention
(plus the merge), with no ``Tq × Tk`` buffer:

* span and rest are two channels: ``L_s = logsumexp_p(lse_p + β_p)`` over the span pieces (β_p =
  ``bias · w`` of the piece on steered rows, GUIDE's markup levels being ranges of their own
  weight), ``L_r`` likewise over the rest; ``O_s = Σ_p exp(lse_p + β_p − L_s) · O_p``;
* the two channels are merged by `split.merge` (shared with the FlexAttention route): span mass
  ``p = σ(L_s − L_r)``, output ``p·O_s + (1 − p)·O_r`` (the bias is already in ``L_s``), SpotLight
  moving ``p`` to ``τ/(τ + 1 − p)`` (or ``τ``) on steered rows where ``p < τ``;
* key scaling runs the span pieces with the logit scale ``α · scale`` (``q·(αk) = α(q·k)``,
  computed in float32 inside flash, as the fused kernel does).

Causality (bottom-right, query i at position ``pos = i + Tk − Tq``): keys before the first query
position are seen by every row (one full call); a range after it is a causal square block for
the rows inside it (top-left aligned from its first key) and fully visible to the rows after it.

Not covered (the fused kernel serves them): ``attn_mask`` (padding), sliding windows, soft-capping
(flash has none), ``query_mask`` together with a key scale, key scales that differ across heads,
and spans of more than
``MAX_PIECES`` ranges. `applicable` says whether a call qualifies. On CUDA the pieces run
``aten._scaled_dot_product_flash_attention``; on CPU
``aten._scaled_dot_product_flash_attention_for_cpu`` (so the decomposition is tested here).
"""

from __future__ import annotations

import math
from typing import Callable, List, Optional, Tuple

import torch

from .args import OpArgs
from .split import merge

__all__ = ["applicable", "steered_attention", "key_ranges", "MAX_PIECES"]

MAX_PIECES = 8  # key ranges (span and rest together) per batch row

Flash = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, bool, float], Tuple[torch.Tensor, torch.Tensor]]


def key_ranges(weights: torch.Tensor) -> List[Tuple[int, int, float]]:
    """Runs of equal weight of a ``(Tk,)`` span-weight row as ``(start, end, weight)``, the
    rest's runs included (weight 0)."""
    w = weights.tolist()
    out, j = [], 0
    while j < len(w):
        k = j
        while k + 1 < len(w) and w[k + 1] == w[j]:
            k += 1
        out.append((j, k + 1, float(w[j])))
        j = k + 1
    return out


def applicable(q: torch.Tensor, args: OpArgs, max_pieces: int = MAX_PIECES) -> bool:
    """Whether `steered_attention` serves this call (see the module docstring)."""
    if args.attn_mask is not None or args.window is not None or args.softcap is not None:
        return False
    if args.query_mask is not None and not bool((args.key_scale == 1).all()):
        return False
    if not bool((args.key_scale == args.key_scale[:, :1]).all()):
        return False  # one key scale per batch row: it goes into the flash call's logit scale
    if q.dtype not in (torch.float16, torch.bfloat16) and q.is_cuda:
        return False  # flash on CUDA takes half precision only
    changes = (args.span_weights[:, 1:] != args.span_weights[:, :-1]).sum(1)
    return bool((changes + 1 <= max_pieces).all())


def _flash_for(device: torch.device) -> Flash:
    if device.type == "cuda":

        def flash(q, k, v, causal, scale):
            res = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, causal, False, scale=scale)
            return res[0], res[1]

        return flash

    def flash_cpu(q, k, v, causal, scale):
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, causal, scale=scale)

    return flash_cpu


def _calls(a: int, e: int, Tq: int, Tk: int, causal: bool):
    """``(row0, row1, key0, key1, causal)`` flash calls that cover key range [a, e) for the rows
    that see it (bottom-right causal alignment)."""
    if not causal:
        return [(0, Tq, a, e, False)]
    q0 = Tk - Tq  # position of the first query
    out = []
    if a < q0:  # keys before the first query: every row sees them
        out.append((0, Tq, a, min(e, q0), False))
    s = max(a, q0)
    if s < e:
        r0, r1 = s - q0, e - q0  # rows inside [s, e): a causal square block
        out.append((r0, r1, s, e, True))
        if r1 < Tq:  # rows after the range see all of it
            out.append((r1, Tq, s, e, False))
    return out


@torch.no_grad()
def steered_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, args: OpArgs, flash: Optional[Flash] = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(out (B, Hq, Tq, D), span_mass (B, Hq, Tq) or empty)`` like the fused op, from flash
    pieces. Call only where `applicable` is True."""
    flash = flash or _flash_for(q.device)
    B, Hq, Tq, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    G = Hq // Hkv
    scale = args.scale if args.scale is not None else 1.0 / math.sqrt(D)
    neg_inf = float("-inf")
    out = torch.zeros(B, Hq, Tq, D, dtype=torch.float32, device=q.device)
    mass = torch.zeros(B, Hq, Tq if args.return_span_mass else 0, dtype=torch.float32, device=q.device)
    rows_steered = (
        torch.ones(B, Tq, dtype=torch.bool, device=q.device) if args.query_mask is None else args.query_mask.bool()
    )
    for b in range(B):
        kb = k[b : b + 1].repeat_interleave(G, dim=1) if G > 1 else k[b : b + 1]
        vb = v[b : b + 1].repeat_interleave(G, dim=1) if G > 1 else v[b : b + 1]
        alpha = float(args.key_scale[b, 0])  # one per row (applicable() checks)
        bias = args.bias[b].float()[None, :, None]  # (1, Hq, 1)
        steer_rows = rows_steered[b].float()[None, None, :]  # (1, 1, Tq)
        # per channel (0 = span, 1 = rest): running log-sum-exp (1, Hq, Tq) and weighted output
        L = [torch.full((1, Hq, Tq), neg_inf, device=q.device) for _ in range(2)]
        O = [torch.zeros(1, Hq, Tq, D, device=q.device) for _ in range(2)]
        for a, e, w in key_ranges(args.span_weights[b]):
            c = 0 if w != 0 else 1
            piece_scale = scale * alpha if c == 0 else scale
            for r0, r1, k0, k1, causal in _calls(a, e, Tq, Tk, args.is_causal):
                if r0 >= r1 or k0 >= k1:
                    continue
                o, lse = flash(q[b : b + 1, :, r0:r1], kb[:, :, k0:k1], vb[:, :, k0:k1], causal, piece_scale)
                lse = lse.float()
                if c == 0:
                    lse = lse + bias * w * steer_rows[..., r0:r1]
                Lc = L[c][..., r0:r1]
                new = torch.logaddexp(Lc, lse)
                safe = torch.where(torch.isneginf(new), torch.zeros_like(new), new)
                keep = torch.exp(Lc - safe).nan_to_num(0.0)
                add = torch.exp(lse - safe).nan_to_num(0.0)
                O[c][..., r0:r1, :] = O[c][..., r0:r1, :] * keep[..., None] + o.float() * add[..., None]
                L[c][..., r0:r1] = new
        res, w_span = merge(L[0], O[0], L[1], O[1], rows_steered[b][None, None, :], args.target, args.target_exact)
        out[b] = res[0]
        if args.return_span_mass:
            mass[b] = w_span[0]
    return out.to(q.dtype), mass
