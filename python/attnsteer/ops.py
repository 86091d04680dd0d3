"""Typed wrappers over the ``torch.ops.attnsteer`` kernels.

Every op validates its inputs (errors name the tensor, what it got and what was expected),
normalises Python scalars into the tensors the registered schemas take, and dispatches to the
compiled kernel — or, without the compiled extension, to a blocked pure-PyTorch path (one
warning). :func:`backend` says which is active. The ops are inference-only.
"""
from __future__ import annotations

import math
import warnings
from typing import Optional, Sequence, Tuple, Union

import torch

from . import _fallback

__all__ = [
    "backend",
    "steered_attention",
    "span_bias",
    "steered_softmax",
    "scale_keys_",
]

PerHead = Union[float, Sequence[float], torch.Tensor]

try:  # importing _C registers torch.ops.attnsteer.*
    from . import _C  # type: ignore[attr-defined]

    _HAS_EXT = True
    _EXT_ERROR: Optional[BaseException] = None
except ImportError as err:  # pragma: no cover - exercised only without a build
    _C = None
    _HAS_EXT = False
    _EXT_ERROR = err

_warned = False


def backend(device: Union[str, torch.device] = "cpu") -> str:
    """Which implementation serves ``device``: ``"cpp"``, ``"cuda"`` or ``"torch"`` (fallback)."""
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


def _per_head(name: str, value: PerHead, B: int, H: int, device, *, positive: bool = False) -> torch.Tensor:
    """float | (H,) | (B, H) -> float32 (B, H) tensor on device."""
    if isinstance(value, (int, float)):  # the common case, without a device sync
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite; got {value}")
        if positive and value <= 0:
            raise ValueError(f"{name} must be > 0; got {value}")
        return torch.full((B, H), float(value), dtype=torch.float32, device=device)
    t = torch.as_tensor(value, dtype=torch.float32, device=device)
    if t.dim() == 0:
        t = t.expand(B, H)
    elif t.dim() == 1:
        if t.shape[0] != H:
            raise ValueError(f"{name} per head must have {H} entries (one per query head); got {t.shape[0]}")
        t = t[None, :].expand(B, H)
    elif t.dim() == 2:
        if t.shape[1] != H or t.shape[0] not in (1, B):
            raise ValueError(f"{name} per row must be (B, H) = ({B}, {H}); got {tuple(t.shape)}")
        t = t.expand(B, H)
    else:
        raise ValueError(f"{name} must be a float, (H,) or (B, H); got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite; got {t.flatten()[~torch.isfinite(t.flatten())][:4].tolist()}")
    if positive and bool((t <= 0).any()):
        raise ValueError(f"{name} must be > 0; got min {t.min().item()}")
    return t.contiguous()


def _span_weights(span_mask: torch.Tensor, B: int, Tk: int, device, name: str = "span_mask") -> torch.Tensor:
    """bool / float (B, Tk) or (Tk,) -> float32 (B, Tk) weights (True = 1)."""
    if not isinstance(span_mask, torch.Tensor):
        raise TypeError(f"{name} must be a bool or float tensor (B, Tk); got {type(span_mask).__name__}")
    if span_mask.dim() == 1:
        span_mask = span_mask[None]
    if span_mask.dim() != 2 or span_mask.shape[1] != Tk or span_mask.shape[0] not in (1, B):
        raise ValueError(
            f"{name} must be (B, Tk) = ({B}, {Tk}) — one entry per key, including cached keys; "
            f"got shape {tuple(span_mask.shape)}"
        )
    if span_mask.device.type != torch.device(device).type:
        raise ValueError(f"{name} is on {span_mask.device} but the keys are on {device}; move it with .to(k.device)")
    if span_mask.dtype == torch.bool:
        w = span_mask.float()
    elif span_mask.is_floating_point():
        w = span_mask.float()
        if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
            raise ValueError(f"{name} float weights must be finite and >= 0 (0 = not in the span)")
    elif span_mask.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8):
        w = span_mask.float()
    else:
        raise TypeError(f"{name} must be bool or float; got {span_mask.dtype}")
    return w.to(device).expand(B, Tk).contiguous()


def _check_target(target: Optional[float]) -> Optional[float]:
    if target is None:
        return None
    target = float(target)
    if not (0.0 < target < 1.0):
        raise ValueError(f"target is a span mass and must lie in (0, 1); got {target}")
    return target


def _check_query_mask(query_mask: Optional[torch.Tensor], B: int, Tq: int, device) -> Optional[torch.Tensor]:
    if query_mask is None:
        return None
    if query_mask.dim() == 1:
        query_mask = query_mask[None]
    if query_mask.dim() != 2 or query_mask.shape[1] != Tq or query_mask.shape[0] not in (1, B):
        raise ValueError(f"query_mask must be bool (B, Tq) = ({B}, {Tq}); got shape {tuple(query_mask.shape)}")
    return query_mask.to(device=device, dtype=torch.bool).expand(B, Tq).contiguous()


def _check_attn_mask(attn_mask: Optional[torch.Tensor], shape: Tuple[int, int, int, int]) -> Optional[torch.Tensor]:
    if attn_mask is None:
        return None
    if attn_mask.dim() > 4:
        raise ValueError(f"attn_mask must have at most 4 dims, broadcastable to {shape}; got {tuple(attn_mask.shape)}")
    try:
        torch.broadcast_shapes(tuple(attn_mask.shape), shape)
    except RuntimeError:
        raise ValueError(f"attn_mask of shape {tuple(attn_mask.shape)} does not broadcast to (B, Hq, Tq, Tk) = {shape}") from None
    if attn_mask.dtype != torch.bool and not attn_mask.is_floating_point():
        raise TypeError(f"attn_mask must be bool (True = attend) or float (added); got {attn_mask.dtype}")
    return attn_mask


def _check_window(window: Optional[int]) -> Optional[int]:
    if window is None:
        return None
    if int(window) != window or window < 1:
        raise ValueError(f"window must be a positive int (keys with pos - j < window are visible); got {window}")
    return int(window)


def _check_softcap(softcap: Optional[float]) -> Optional[float]:
    if softcap is None or softcap == 0:
        return None
    if not math.isfinite(softcap) or softcap < 0:
        raise ValueError(f"softcap must be a positive float or None; got {softcap}")
    return float(softcap)


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

    Returns:
        ``out (B, Hq, Tq, D)`` in q's dtype; with ``return_span_mass`` a tuple ``(out, mass)``.
        Rows that see no key give zeros.

    Memory is O(T): no ``Tq x Tk`` buffer is materialised. Inference only.
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
    span_w = _span_weights(span_mask, B, Tk, q.device)
    bias_t = _per_head("bias", bias, B, Hq, q.device)
    ks_t = _per_head("key_scale", key_scale, B, Hq, q.device)
    target = _check_target(target)
    qmask = _check_query_mask(query_mask, B, Tq, q.device)
    amask = _check_attn_mask(attn_mask, (B, Hq, Tq, Tk))
    window = _check_window(window)
    softcap = _check_softcap(softcap)
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite; got {scale}")
    out, mass = _run_steered_attention(q, k, v, span_w, bias_t, ks_t, target, bool(target_exact), qmask, amask,
                                       bool(is_causal), window, softcap, scale, bool(return_span_mass))
    return (out, mass) if return_span_mass else out


def _run_steered_attention(*args) -> Tuple[torch.Tensor, torch.Tensor]:
    """The registered schema's arguments, already validated and normalised -> (out, span_mass).

    Callers whose shapes are known (the Hugging Face attention layer) use this directly."""
    if _use_kernel(args[0]):
        return torch.ops.attnsteer.steered_attention.default(*args)
    return _fallback.steered_attention(*args)


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
    """
    if span_mask.dim() not in (1, 2):
        raise ValueError(f"span_mask must be (B, Tk); got shape {tuple(span_mask.shape)}")
    B = span_mask.shape[0] if span_mask.dim() == 2 else 1
    Tk = span_mask.shape[-1]
    bt = torch.as_tensor(bias, dtype=torch.float32)
    H = num_heads if num_heads is not None else (bt.shape[-1] if bt.dim() > 0 else 1)
    span_w = _span_weights(span_mask, B, Tk, span_mask.device)
    bias_t = _per_head("bias", bias, B, H, span_mask.device)
    Tq = 1
    if query_mask is not None:
        Tq = query_mask.shape[-1]
        query_mask = _check_query_mask(query_mask, B, Tq, span_mask.device)
    if _use_kernel(span_w):
        return torch.ops.attnsteer.span_bias.default(span_w, bias_t, query_mask, Tq, dtype)
    return _fallback.span_bias(span_w, bias_t, query_mask, Tq, dtype)


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

    Same arguments and order of operations as :func:`steered_attention`; returns weights of the
    logits' dtype, for ``output_attentions``, Influence and plots. Fully masked rows are zeros.
    """
    _check_4d("logits", logits, "(B, H, Tq, Tk)")
    _check_grad("steered_softmax", logits)
    if logits.dtype not in _FLOAT_DTYPES and logits.dtype != torch.float64:
        raise TypeError(f"logits must be a float tensor; got {logits.dtype}")
    B, H, Tq, Tk = logits.shape
    span_w = _span_weights(span_mask, B, Tk, logits.device)
    bias_t = _per_head("bias", bias, B, H, logits.device)
    ks_t = _per_head("key_scale", key_scale, B, H, logits.device)
    args = (logits, span_w, bias_t, ks_t, _check_target(target), bool(target_exact),
            _check_query_mask(query_mask, B, Tq, logits.device),
            _check_attn_mask(attn_mask, (B, H, Tq, Tk)), bool(is_causal), _check_window(window),
            _check_softcap(softcap))
    if logits.dtype != torch.float64 and _use_kernel(logits):
        return torch.ops.attnsteer.steered_softmax.default(*args)
    return _fallback.steered_softmax(*args)


def scale_keys_(keys: torch.Tensor, span_mask: torch.Tensor, factor: PerHead) -> torch.Tensor:
    """In place: multiply the span keys of a cache tensor by ``factor``.

    Args:
        keys: ``(B, Hkv, T, D)`` cache keys (modified in place).
        span_mask: ``(B, T)`` bool or float; keys with ``m != 0`` are scaled (by ``factor``,
            not by ``m``).
        factor: float, ``(Hkv,)`` or ``(B, Hkv)``.
    Returns:
        ``keys``.
    """
    _check_4d("keys", keys, "(B, Hkv, T, D)")
    _check_grad("scale_keys_", keys)
    if keys.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"keys must be float32, bfloat16 or float16; got {keys.dtype}")
    B, H, T, _ = keys.shape
    span_w = _span_weights(span_mask, B, T, keys.device)
    fac = _per_head("factor", factor, B, H, keys.device)
    if _use_kernel(keys):
        torch.ops.attnsteer.scale_keys_.default(keys, span_w, fac)
    else:
        _fallback.scale_keys_(keys, span_w, fac)
    return keys


# ----------------------------------------------------------------------------- registration

if _HAS_EXT:

    @torch.library.register_fake("attnsteer::steered_attention")
    def _steered_attention_fake(q, k, v, span_weights, bias, key_scale, target, target_exact,
                                query_mask, attn_mask, is_causal, window, softcap, scale,
                                return_span_mass):
        B, Hq, Tq, D = q.shape
        out = q.new_empty((B, Hq, Tq, D))
        mass = q.new_empty((B, Hq, Tq) if return_span_mass else (0,), dtype=torch.float32)
        return out, mass

    @torch.library.register_fake("attnsteer::span_bias")
    def _span_bias_fake(span_weights, bias, query_mask, num_queries, dtype):
        B, Tk = span_weights.shape
        T = num_queries if query_mask is not None else 1
        return span_weights.new_empty((B, bias.shape[1], T, Tk), dtype=dtype)

    @torch.library.register_fake("attnsteer::steered_softmax")
    def _steered_softmax_fake(logits, *args):
        return torch.empty_like(logits, memory_format=torch.contiguous_format)

    @torch.library.register_fake("attnsteer::scale_keys_")
    def _scale_keys_fake(keys, span_weights, factor):
        return None

    def _no_backward(ctx, *grads):
        raise RuntimeError(
            "attnsteer ops are inference-only and have no backward; run them under "
            "torch.no_grad() or torch.inference_mode()."
        )

    def _setup_nothing(ctx, inputs, output):
        return None

    for _name in ("steered_attention", "span_bias", "steered_softmax"):
        torch.library.register_autograd(f"attnsteer::{_name}", _no_backward, setup_context=_setup_nothing)
