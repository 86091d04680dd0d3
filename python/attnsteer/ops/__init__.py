"""Typed wrappers over the ``torch.ops.attnsteer`` kernels.

Every op validates its inputs (errors name the tensor, what it got and what was expected),
normalises Python scalars into the tensors the registered schemas take, and dispatches to the
compiled kernel — or, without the compiled extension, to a blocked pure-PyTorch path (one
warning). `backend` says which is active. The ops are inference-only.

Layout: this module holds the public wrappers (validate → normalise → dispatch) and
`layer_attention`, the entry point of the model adapters; `.args` the argument object
(the only Python copy of the schemas' order); `.reference` the float64 specification;
`.fallback` the blocked PyTorch path; `._registration` the fake (meta) kernels.

Guide: ``docs/guides/ops.md`` (with a runnable example).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
import warnings
from typing import Iterator, Optional, Tuple, Union

import torch

from . import fallback, flex, pieces
from .args import OpArgs, PerHead, per_head, span_weights

__all__ = [
    "OpArgs",
    "ROUTES",
    "backend",
    "route",
    "use_route",
    "layer_attention",
    "layer_weights",
    "steered_attention",
    "span_bias",
    "steered_softmax",
    "scale_keys_",
    "lowrank_edit_",
]

try:  # importing _C registers torch.ops.attnsteer.*
    from .. import _C  # type: ignore[attr-defined]

    _HAS_EXT = True
    _EXT_ERROR: Optional[BaseException] = None
except ImportError as err:  # pragma: no cover - exercised only without a build
    _C = None
    _HAS_EXT = False
    _EXT_ERROR = err

_warned = False


def backend(device: Union[str, torch.device] = "cpu") -> str:
    """Which implementation serves ``device``: ``"cpp"``, ``"cuda"`` or ``"torch"`` (fallback).

    Guide: ``docs/guides/ops.md`` (with a runnable example).
    """
    dev = torch.device(device)
    if not _HAS_EXT:
        return "torch"
    if dev.type == "cuda":
        return "cuda" if _C.built_with_cuda() else "torch"
    return "cpp" if dev.type == "cpu" else "torch"


def _use_kernel(t: torch.Tensor) -> bool:
    global _warned
    if backend(t.device) != "torch":
        return True
    if not _warned:
        _warned = True
        why = f" ({_EXT_ERROR})" if _EXT_ERROR is not None else f" (no kernel for {t.device.type})"
        warnings.warn(
            "attnsteer: compiled kernels unavailable" + why + "; using the blocked PyTorch path. "
            "Rebuild with `pip install --no-build-isolation -e .` for the fused kernels.",
            RuntimeWarning,
            stacklevel=3,
        )
    return False


# ----------------------------------------------------------------------------- validation

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _check_grad(op: str, *tensors: Optional[torch.Tensor]) -> None:
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        raise RuntimeError(
            f"attnsteer.{op} is inference-only and has no backward: call it under "
            "torch.no_grad() or torch.inference_mode(), or detach the inputs."
        )


def _check_4d(name: str, t: torch.Tensor, expect: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {expect}; got {type(t).__name__}")
    if t.dim() != 4:
        raise ValueError(f"{name} must be 4-D {expect}; got shape {tuple(t.shape)}")


# ----------------------------------------------------------------------------- ops


def steered_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    span_mask: torch.Tensor,
    *,
    bias: PerHead = 0.0,
    key_scale: PerHead = 1.0,
    target: Optional[float] = None,
    target_exact: bool = False,
    query_mask: Optional[torch.Tensor] = None,
    attn_mask: Optional[torch.Tensor] = None,
    is_causal: bool = False,
    window: Optional[int] = None,
    softcap: Optional[float] = None,
    scale: Optional[float] = None,
    enable_gqa: bool = False,
    return_span_mass: bool = False,
    route: Optional[str] = None,
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """Fused steered attention (split softmax), shaped like ``F.scaled_dot_product_attention``.

    Args:
        q: ``(B, Hq, Tq, D)`` float32 / bfloat16 / float16.
        k, v: ``(B, Hkv, Tk, D)``, same dtype and device as ``q``; ``Hq % Hkv == 0``.
        span_mask: ``(B, Tk)`` (or ``(Tk,)``) bool, or float weights ``m >= 0``; a key is in the
            span when ``m != 0``. Bias is applied as ``bias * m`` (GUIDE's levels 0.5/1/2).
        bias: added to span logits; float, ``(Hq,)`` or ``(B, Hq)`` (0 on a head = unsteered).
        key_scale: multiplies span logits (DIRECTER's key scaling); float, ``(Hq,)`` or ``(B, Hq)``.
        target: SpotLight's τ in (0, 1): when the span mass p of a row is in (0, τ), add
            ``log(τ/p)`` to its span logits (mass becomes τ/(τ+1-p)); ``target_exact=True``
            adds ``log(τ(1-p)/(p(1-τ)))`` instead (mass becomes exactly τ).
        query_mask: ``(B, Tq)`` bool; rows with False are computed unsteered.
        attn_mask: bool (True = attend) or float (added), broadcastable to ``(B, Hq, Tq, Tk)``.
        is_causal: bottom-right aligned: query i sees keys ``j <= i + Tk - Tq`` (decoding with a
            cache). Note SDPA's ``is_causal`` is top-left aligned when ``Tq != Tk``.
        window: sliding window W: key j visible iff ``(i + Tk - Tq) - j < W`` (transformers' rule).
        softcap: Gemma-2 style ``c * tanh(s / c)``, applied after key scaling, before the bias.
        scale: logit scale, default ``1/sqrt(D)``.
        enable_gqa: must be True when ``Hq != Hkv`` (as in SDPA). K/V heads are never repeated.
        return_span_mass: also return the span mass of the final (steered) weights ``(B, Hq, Tq)``.
        route: force an implementation (`ROUTES`: ``"kernel"``, ``"pieces"``, ``"flex"``,
            ``"torch"``); default: `route` decides (see ``docs/guides/ops.md``).

    Returns:
        ``out (B, Hq, Tq, D)`` in q's dtype; with ``return_span_mass`` a tuple ``(out, mass)``.
        Rows that see no key give zeros.

    Memory is O(T): no ``Tq x Tk`` buffer is materialised. Inference only.

    Example:
        ```python
        out = attnsteer.steered_attention(q, k, v, span_mask, bias=2.0, is_causal=True, enable_gqa=True)
        ```

    Guide: ``docs/guides/ops.md``.
    """
    _check_4d("q", q, "(B, Hq, Tq, D)")
    _check_4d("k", k, "(B, Hkv, Tk, D)")
    _check_4d("v", v, "(B, Hkv, Tk, D)")
    _check_grad("steered_attention", q, k, v)
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"{name} must be float32, bfloat16 or float16; got {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share a dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device; got {q.device}, {k.device}, {v.device}")
    B, Hq, Tq, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    if k.shape[0] != B or k.shape[3] != D or tuple(v.shape) != tuple(k.shape):
        raise ValueError(
            f"k and v must be (B, Hkv, Tk, D) = ({B}, Hkv, Tk, {D}) with equal shapes; "
            f"got k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if Hkv == 0 or Hq % Hkv != 0:
        raise ValueError(f"query heads Hq={Hq} must be a multiple of key/value heads Hkv={Hkv}")
    if Hq != Hkv and not enable_gqa:
        raise ValueError(f"Hq={Hq} != Hkv={Hkv}: pass enable_gqa=True for grouped-query attention")
    args = OpArgs.normalise(
        B,
        Hq,
        Tq,
        Tk,
        q.device,
        span_mask=span_mask,
        bias=bias,
        key_scale=key_scale,
        target=target,
        target_exact=target_exact,
        query_mask=query_mask,
        attn_mask=attn_mask,
        is_causal=is_causal,
        window=window,
        softcap=softcap,
        scale=scale,
        return_span_mass=return_span_mass,
    )
    out, mass = _dispatch_attention(q, k, v, args, route)
    return (out, mass) if return_span_mass else out


def layer_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, args: OpArgs
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The fused op for callers whose shapes are right by construction (the attention layers of
    a model): ``args`` already normalised (`OpArgs`), no validation beyond the
    inference-only rule — the public wrapper's checks cost ~0.1 ms a call, 30 calls a token.
    The C++ host function still checks shapes. Returns ``(out (B, Hq, Tq, D), span_mass)``."""
    _check_grad("steered_attention", q, k, v)
    return _dispatch_attention(q, k, v, args)


def layer_weights(q: torch.Tensor, k: torch.Tensor, args: OpArgs) -> torch.Tensor:
    """Steered attention weights ``(B, Hq, Tq, Tk)`` in q's dtype for the same ``args`` as
    `layer_attention` (materialised: for ``output_attentions`` only)."""
    Hq, Hkv, D = q.shape[1], k.shape[1], q.shape[-1]
    scale = args.scale if args.scale is not None else 1.0 / math.sqrt(D)
    kk = k.repeat_interleave(Hq // Hkv, dim=1) if Hq != Hkv else k
    logits = (q.float() @ kk.float().transpose(-1, -2)) * scale
    if _use_kernel(logits):
        return torch.ops.attnsteer.steered_softmax.default(*args.softmax(logits)).to(q.dtype)
    return fallback.steered_softmax(logits, args).to(q.dtype)


ROUTES = ("kernel", "pieces", "flex", "torch")
_FORCED: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("attnsteer_route", default=None)


@contextlib.contextmanager
def use_route(name: Optional[str]) -> Iterator[None]:
    """Force the route of every `steered_attention` / `layer_attention` call in this block (this
    thread; ``None`` = decide per call). A call the route cannot serve raises, naming why.

    Example::

        with attnsteer.ops.use_route("flex"):
            model.generate(**enc)
    """
    if name is not None and name not in ROUTES:
        raise ValueError(f"unknown route {name!r}: choose from {', '.join(ROUTES)}")
    token = _FORCED.set(name)
    try:
        yield
    finally:
        _FORCED.reset(token)


def _why_not(name: str, q: torch.Tensor, args: OpArgs) -> Optional[str]:
    if name == "kernel":
        return None if backend(q.device) != "torch" else f"no compiled kernel for {q.device.type} in this build"
    if name == "pieces":
        if not pieces.applicable(q, args):
            return (
                "the flash-pieces route takes no attn_mask (padding), window, softcap, per-head key scales, "
                f"query mask with key scaling, fp32 on CUDA or more than {pieces.MAX_PIECES} key ranges"
            )
        return None
    if name == "flex":
        return flex.why_not(q, args)
    return None  # "torch": the blocked PyTorch path serves everything


def route(q: torch.Tensor, args: OpArgs, forced: Optional[str] = None) -> Tuple[str, str]:
    """Which route serves a call, and why: ``(name, reason)``. The one place that decides.

    - forced (the ``route=`` argument, else `use_route`): that route, or a ValueError saying why it
      cannot serve this call;
    - CUDA: ``pieces`` (torch's flash kernel per key range) when it applies — unpadded, no window or
      soft-capping, half precision, few key ranges; else ``flex`` (FlexAttention: tensor cores, masked
      blocks skipped) when this torch has it; else ``kernel`` (the warp-per-row CUDA kernel).
      ``ATTNSTEER_CUDA_PIECES=0`` / ``ATTNSTEER_CUDA_FLEX=0`` turn a route off;
    - CPU: ``kernel`` (the compiled C++ kernel); without the extension ``torch`` (blocked PyTorch).
    """
    forced = forced if forced is not None else _FORCED.get()
    if forced is not None:
        if forced not in ROUTES:
            raise ValueError(f"unknown route {forced!r}: choose from {', '.join(ROUTES)}")
        why = _why_not(forced, q, args)
        if why is not None:
            raise ValueError(
                f"route {forced!r} cannot serve this call: {why}; drop the forced route to let attnsteer choose"
            )
        return forced, "forced"
    if q.is_cuda:
        if os.environ.get("ATTNSTEER_CUDA_PIECES", "1") != "0" and pieces.applicable(q, args):
            return "pieces", "CUDA, no padding/window/softcap, few key ranges: torch's flash kernel per key range"
        if os.environ.get("ATTNSTEER_CUDA_FLEX", "1") != "0" and flex.why_not(q, args) is None:
            return "flex", "CUDA, what the pieces route cannot take: FlexAttention (tensor cores, block-sparse masks)"
        return (
            ("kernel", "CUDA without FlexAttention: the fused warp-per-row kernel")
            if _use_kernel(q)
            else ("torch", "no CUDA kernel in this build: blocked PyTorch path")
        )
    if _use_kernel(q):
        return "kernel", f"{q.device.type}: the compiled C++ kernel"
    return "torch", "no compiled extension: blocked PyTorch path"


def _dispatch_attention(q, k, v, args: OpArgs, forced: Optional[str] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    name, _ = route(q, args, forced)
    if name == "pieces":
        return pieces.steered_attention(q, k, v, args)  # torch's flash kernel per key range (ops/pieces.py)
    if name == "flex":
        return flex.steered_attention(q, k, v, args)  # FlexAttention (ops/flex.py)
    if name == "kernel":
        return torch.ops.attnsteer.steered_attention.default(*args.attention(q, k, v))
    return fallback.steered_attention(q, k, v, args)


def span_bias(
    span_mask: torch.Tensor,
    bias: PerHead,
    *,
    num_heads: Optional[int] = None,
    query_mask: Optional[torch.Tensor] = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Additive attention bias for eager paths: ``bias[b, h] * m[b, j]``.

    Args:
        span_mask: ``(B, Tk)`` bool or float weights.
        bias: float, ``(H,)`` or ``(B, H)``; a float needs ``num_heads`` (default 1).
        query_mask: ``(B, Tq)`` bool; rows with False get no bias.
    Returns:
        ``(B, H, 1, Tk)``, or ``(B, H, Tq, Tk)`` with a query mask, in ``dtype`` — add it to
        the attention logits (e.g. a 4-D float ``attention_mask``).

    Guide: ``docs/guides/ops.md`` (with a runnable example).
    """
    if span_mask.dim() not in (1, 2):
        raise ValueError(f"span_mask must be (B, Tk); got shape {tuple(span_mask.shape)}")
    B = span_mask.shape[0] if span_mask.dim() == 2 else 1
    Tk = span_mask.shape[-1]
    bt = torch.as_tensor(bias, dtype=torch.float32)
    H = num_heads if num_heads is not None else (bt.shape[-1] if bt.dim() > 0 else 1)
    Tq = 1 if query_mask is None else query_mask.shape[-1]
    args = OpArgs.normalise(B, H, Tq, Tk, span_mask.device, span_mask=span_mask, bias=bias, query_mask=query_mask)
    if _use_kernel(args.span_weights):
        return torch.ops.attnsteer.span_bias.default(args.span_weights, args.bias, args.query_mask, Tq, dtype)
    return fallback.span_bias(args.span_weights, args.bias, args.query_mask, Tq, dtype)


def steered_softmax(
    logits: torch.Tensor,
    span_mask: torch.Tensor,
    *,
    bias: PerHead = 0.0,
    key_scale: PerHead = 1.0,
    target: Optional[float] = None,
    target_exact: bool = False,
    query_mask: Optional[torch.Tensor] = None,
    attn_mask: Optional[torch.Tensor] = None,
    is_causal: bool = False,
    window: Optional[int] = None,
    softcap: Optional[float] = None,
) -> torch.Tensor:
    """Steered attention weights from logits ``(B, H, Tq, Tk)`` (already ``scale * q.k``).

    Same arguments and order of operations as `steered_attention`; returns weights of the
    logits' dtype, for ``output_attentions``, Influence and plots. Fully masked rows are zeros.

    Guide: ``docs/guides/ops.md`` (with a runnable example).
    """
    _check_4d("logits", logits, "(B, H, Tq, Tk)")
    _check_grad("steered_softmax", logits)
    if logits.dtype not in _FLOAT_DTYPES and logits.dtype != torch.float64:
        raise TypeError(f"logits must be a float tensor; got {logits.dtype}")
    B, H, Tq, Tk = logits.shape
    args = OpArgs.normalise(
        B,
        H,
        Tq,
        Tk,
        logits.device,
        span_mask=span_mask,
        bias=bias,
        key_scale=key_scale,
        target=target,
        target_exact=target_exact,
        query_mask=query_mask,
        attn_mask=attn_mask,
        is_causal=is_causal,
        window=window,
        softcap=softcap,
    )
    if logits.dtype != torch.float64 and _use_kernel(logits):
        return torch.ops.attnsteer.steered_softmax.default(*args.softmax(logits))
    return fallback.steered_softmax(logits, args)


def scale_keys_(keys: torch.Tensor, span_mask: torch.Tensor, factor: PerHead) -> torch.Tensor:
    """In place: multiply the span keys of a cache tensor by ``factor``.

    Args:
        keys: ``(B, Hkv, T, D)`` cache keys (modified in place).
        span_mask: ``(B, T)`` bool or float; keys with ``m != 0`` are scaled (by ``factor``,
            not by ``m``).
        factor: float, ``(Hkv,)`` or ``(B, Hkv)``.
    Returns:
        ``keys``.

    Guide: ``docs/guides/ops.md`` (with a runnable example).
    """
    _check_4d("keys", keys, "(B, Hkv, T, D)")
    _check_grad("scale_keys_", keys)
    if keys.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"keys must be float32, bfloat16 or float16; got {keys.dtype}")
    B, H, T, _ = keys.shape
    span_w = span_weights(span_mask, B, T, keys.device)
    fac = per_head("factor", factor, B, H, keys.device)
    if _use_kernel(keys):
        torch.ops.attnsteer.scale_keys_.default(keys, span_w, fac)
    else:
        fallback.scale_keys_(keys, span_w, fac)
    return keys


def lowrank_edit_(x: torch.Tensor, span_mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """In place: a low-rank edit of the span rows of a key (or value) tensor — SEKA's and PRISM-Δ's
    key editing: ``x[b, h, t] += m[b, t] · a[h] (b[h]ᵀ x[b, h, t])`` where ``m[b, t] != 0``.

    Args:
        x: ``(B, H, T, D)`` keys or values (modified in place; a view of a cache works).
        span_mask: ``(B, T)`` bool or float weights ``m``; rows with ``m == 0`` are untouched.
        a, b: ``(H, D, R)`` float factors per (KV) head; SEKA's ``k + g⁺P⁺k − g⁻P⁻k`` with projectors
            ``P = U Uᵀ`` is ``a = [g⁺U⁺, −g⁻U⁻]``, ``b = [U⁺, U⁻]`` (rank R = r⁺ + r⁻).
    Returns:
        ``x``. O(T·D·R); accumulated in float32, rounded once into x's dtype.

    Guide: ``docs/guides/ops.md``.
    """
    _check_4d("x", x, "(B, H, T, D)")
    _check_grad("lowrank_edit_", x, a, b)
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"x must be float32, bfloat16 or float16; got {x.dtype}")
    B, H, T, D = x.shape
    for name, f in (("a", a), ("b", b)):
        if not isinstance(f, torch.Tensor) or f.dim() != 3 or f.shape[0] != H or f.shape[1] != D:
            got = tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
            raise ValueError(f"{name} must be (H, D, R) = ({H}, {D}, R), one factor per head of x; got {got}")
        if f.device != x.device:
            raise ValueError(f"{name} is on {f.device} but x is on {x.device}; move it with .to(x.device)")
        if not bool(torch.isfinite(f).all()):
            raise ValueError(f"{name} must be finite")
    if a.shape[2] != b.shape[2]:
        raise ValueError(f"a and b must share the rank R; got {a.shape[2]} and {b.shape[2]}")
    span_w = span_weights(span_mask, B, T, x.device)
    af, bf = a.float().contiguous(), b.float().contiguous()
    if _use_kernel(x):
        torch.ops.attnsteer.lowrank_edit_.default(x, span_w, af, bf)
    else:
        fallback.lowrank_edit_(x, span_w, af, bf)
    return x


# ----------------------------------------------------------------------------- registration

if _HAS_EXT:
    from . import _registration  # noqa: F401  (fakes and the no-backward rule)
