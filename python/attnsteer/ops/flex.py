"""Steered attention on PyTorch's FlexAttention: every argument of the op, flash-style kernels.

FlexAttention (``torch.nn.attention.flex_attention``) generates a fused attention kernel from a
``score_mod`` (what happens to a logit) and a ``mask_mod`` (which logits exist); masked blocks of a
`BlockMask` are skipped. This route maps the op onto it, in the op's documented order:

* ``score_mod`` (values, read from captured tensors, so that a new strength or span does not
  recompile): on steered rows (``query_mask``) span keys ``s ← key_scale·s``; soft-capping
  ``s ← c·tanh(s/c)`` on every logit; span keys ``s += bias·w`` (GUIDE's markup levels are the
  weights ``w``); a float ``attn_mask`` is added.
* ``mask_mod`` (which keys exist, into the `BlockMask`): bottom-right causality with the cache
  offset (query ``i`` at position ``i + Tk − Tq``), sliding windows (``pos − j < W``), a bool
  ``attn_mask`` (padding); K/V heads are shared through ``enable_gqa`` (never repeated).
* SpotLight's ``target`` and ``return_span_mass`` need the span mass of each row: two passes, over
  the span keys and over the rest (the channel is one more ``mask_mod`` term, so each pass skips
  the other's blocks), each returning its log-sum-exp, merged per row by `split.merge` — the merge
  the flash-pieces route uses. Without them: one pass.

Captured tensors are 4-D and indexed ``[b, h, q, kv]`` (with 0 on broadcast dims): the form
inductor's CPU and GPU templates lower reliably.

Compilation: on CUDA the calls go through ``torch.compile(flex_attention)`` (Triton kernels,
shapes dynamic after the first recompile) and the block masks are built compiled. On CPU the
route runs FlexAttention eagerly by default (its math path: correct, ``Tq × Tk`` memory) — torch
2.13's inductor CPU template cannot return the log-sum-exp and fails to compile some score
modifications with dynamic shapes — and ``compiled=True`` compiles it with static shapes (tests
check both). The route is for GPUs; on CPU the C++ kernel stays the default.

The API differs across torch versions: 2.11+ return the log-sum-exp through
``return_aux=AuxRequest(lse=True)``, older ones through ``return_lse=True``; `_call` handles both.
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Callable, Optional, Tuple

import torch

from .args import OpArgs
from .split import merge

__all__ = ["available", "steered_attention", "why_not"]


@functools.lru_cache(maxsize=None)
def available() -> bool:
    """Whether this torch has FlexAttention (checked once: `ops.route` asks on every CUDA call)."""
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def why_not(q: torch.Tensor, args: OpArgs) -> Optional[str]:
    """Why the route cannot serve this call, or None when it can."""
    if not available():
        return f"this torch ({torch.__version__}) has no torch.nn.attention.flex_attention"
    if q.device.type not in ("cuda", "cpu"):
        return f"FlexAttention runs on CUDA and CPU; got {q.device.type}"
    return None


@functools.lru_cache(maxsize=None)
def _lse_style() -> str:
    """``"aux"`` (torch >= 2.9: ``return_aux=AuxRequest(lse=True)``) or ``"lse"`` (``return_lse=True``)."""
    from torch.nn.attention import flex_attention as fa

    params = inspect.signature(fa.flex_attention).parameters
    return "aux" if "return_aux" in params and hasattr(fa, "AuxRequest") else "lse"


@functools.lru_cache(maxsize=None)
def _compiled_flex() -> Callable:
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention)


@functools.lru_cache(maxsize=None)
def _compiled_flex_static() -> Callable:
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def _eager_flex(*a, **kw):
    """FlexAttention uncompiled, without its "use torch.compile" warning (deliberate here: see the
    module docstring)."""
    import warnings

    from torch.nn.attention.flex_attention import flex_attention

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        return flex_attention(*a, **kw)


def _flex(compiled: bool, device: torch.device) -> Callable:
    if not compiled:
        return _eager_flex
    return _compiled_flex() if device.type == "cuda" else _compiled_flex_static()


def _call(fn, q, k, v, score_mod, block_mask, scale, gqa, want_lse: bool, style: Optional[str] = None):
    """``(out, lse or None)`` from a FlexAttention call, whichever way this torch returns the LSE."""
    kw = dict(score_mod=score_mod, block_mask=block_mask, scale=scale, enable_gqa=gqa)
    if not want_lse:
        return fn(q, k, v, **kw), None
    if (style or _lse_style()) == "aux":
        from torch.nn.attention.flex_attention import AuxRequest

        out, aux = fn(q, k, v, **kw, return_aux=AuxRequest(lse=True))
        return out, aux.lse
    out, lse = fn(q, k, v, **kw, return_lse=True)
    return out, lse


def _at(t: torch.Tensor) -> Callable:
    """An indexer ``(b, h, i, j) -> t[...]`` of a tensor broadcastable to ``(B, H, Tq, Tk)``: 4-D,
    size-1 dims indexed by 0 (so the captured tensor keeps its small shape)."""
    while t.dim() < 4:
        t = t[None]
    ones = [s == 1 for s in t.shape]

    def at(b, h, i, j):
        return t[0 if ones[0] else b, 0 if ones[1] else h, 0 if ones[2] else i, 0 if ones[3] else j]

    return at


def _captures(args: OpArgs, B: int, Tq: int, device: torch.device) -> dict:
    """The captured tensors of both modifications (4-D, see the module docstring)."""
    steer = (
        torch.ones(B, 1, Tq, 1, device=device)
        if args.query_mask is None
        else args.query_mask[:, None, :, None].float().contiguous()
    )
    cap = dict(w4=args.span_weights[:, None, None, :].contiguous(), steer=steer, keep=None, add=None)
    if args.attn_mask is not None:
        if args.attn_mask.dtype == torch.bool:
            cap["keep"] = _at(args.attn_mask.to(device))
        else:
            cap["add"] = _at(args.attn_mask.to(device=device, dtype=torch.float32))
    return cap


def _score_mod(args: OpArgs, cap: dict) -> Callable:
    """The op's value changes, in its order: key scale, soft-cap, bias (steered rows, span keys),
    then a float mask added."""
    w4, steer, add = cap["w4"], cap["steer"], cap["add"]
    bias4 = args.bias[:, :, None, None].contiguous()  # (B, H, 1, 1)
    ks4 = args.key_scale[:, :, None, None].contiguous()
    with_scale = not bool((args.key_scale == 1).all())
    with_bias = bool((args.bias != 0).any())
    softcap = args.softcap

    def score_mod(s, b, h, i, j):
        w = w4[b, 0, 0, j]
        st = (w != 0) & (steer[b, 0, i, 0] != 0)
        if with_scale:
            s = torch.where(st, s * ks4[b, h, 0, 0], s)
        if softcap is not None:
            s = softcap * torch.tanh(s / softcap)
        if with_bias:
            s = torch.where(st, s + bias4[b, h, 0, 0] * w, s)
        if add is not None:
            s = s + add(b, h, i, j)
        return s

    return score_mod


def _mask_mod(args: OpArgs, cap: dict, Tq: int, Tk: int, device, channel: Optional[str]) -> Callable:
    """Which keys a row sees: causality with the cache offset, the window, the masks; ``channel``
    ``"span"`` / ``"rest"`` keeps only the span keys / only the others (None: every key)."""
    w4, keep, add = cap["w4"], cap["keep"], cap["add"]
    offset = torch.tensor(Tk - Tq, device=device)  # a tensor: a new cache length does not recompile
    window = torch.tensor(args.window or 0, device=device)
    causal, windowed = args.is_causal, args.window is not None

    def mask_mod(b, h, i, j):
        ok = j >= 0
        if causal:
            ok = ok & (j <= i + offset)
        if windowed:
            ok = ok & (i + offset - j < window)
        if keep is not None:
            ok = ok & keep(b, h, i, j)
        if add is not None:
            ok = ok & ~torch.isneginf(add(b, h, i, j))
        if channel is not None:
            ok = ok & ((w4[b, 0, 0, j] != 0) if channel == "span" else (w4[b, 0, 0, j] == 0))
        return ok

    return mask_mod


def _block_mask(mask_mod, B: int, H: Optional[int], Tq: int, Tk: int, device, compiled: bool):
    from torch.nn.attention.flex_attention import create_block_mask

    return create_block_mask(mask_mod, B, H, Tq, Tk, device=device, _compile=compiled and device.type == "cuda")


@torch.no_grad()
def steered_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    args: OpArgs,
    compiled: Optional[bool] = None,
    lse_style: Optional[str] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(out (B, Hq, Tq, D), span_mass (B, Hq, Tq) or empty)`` like the fused op, on FlexAttention.

    Args:
        q, k, v, args: as `attnsteer.ops.layer_attention` (``args`` normalised, `OpArgs`).
        compiled: run ``torch.compile``-d FlexAttention (default: on CUDA). On CPU the two-pass
            calls (SpotLight's target, ``return_span_mass``) run eagerly even then: torch's CPU
            template does not return the log-sum-exp.
        lse_style: force the version shim's branch (``"aux"`` / ``"lse"``; tests).
    """
    B, Hq, Tq, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    device = q.device
    compiled = device.type == "cuda" if compiled is None else compiled
    scale = args.scale if args.scale is not None else 1.0 / math.sqrt(D)
    gqa = Hq != Hkv
    mass = torch.zeros(B, Hq, Tq if args.return_span_mass else 0, dtype=torch.float32, device=device)
    if Tq == 0 or Tk == 0:
        return torch.zeros_like(q), mass
    cap = _captures(args, B, Tq, device)
    score_mod = _score_mod(args, cap)
    H = Hq if args.attn_mask is not None and args.attn_mask.dim() >= 3 and args.attn_mask.shape[-3] > 1 else None
    split = args.target is not None or args.return_span_mass
    if not split:
        fn = _flex(compiled, device)
        bm = _block_mask(_mask_mod(args, cap, Tq, Tk, device, None), B, H, Tq, Tk, device, compiled)
        out, _ = _call(fn, q, k, v, score_mod, bm, scale, gqa, False)
        return out.to(q.dtype), mass
    fn = _flex(compiled and device.type == "cuda", device)  # CPU's compiled template has no LSE
    chans = []
    for channel in ("span", "rest"):
        bm = _block_mask(_mask_mod(args, cap, Tq, Tk, device, channel), B, H, Tq, Tk, device, compiled)
        o, lse = _call(fn, q, k, v, score_mod, bm, scale, gqa, True, lse_style)
        chans.append((lse.float(), o.float()))
    steer_rows = torch.ones(B, 1, Tq, dtype=torch.bool, device=device)
    if args.query_mask is not None:
        steer_rows = args.query_mask[:, None, :].bool()
    (Ls, Os), (Lr, Or) = chans
    out, w_span = merge(Ls, Os, Lr, Or, steer_rows, args.target, args.target_exact)
    if args.return_span_mass:
        mass = w_span
    return out.to(q.dtype), mass
