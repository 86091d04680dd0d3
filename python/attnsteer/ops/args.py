"""The argument object of the steering ops: the only Python copy of the schemas' order.

The registered schemas (``csrc/ops.cpp``) are::

    steered_attention(q, k, v, <steering>, scale, return_span_mass) -> (out, span_mass)
    steered_softmax(logits, <steering>) -> weights

where ``<steering>`` is the fields of `OpArgs` up to ``softcap``, in that order. Public
wrappers validate their keywords, `OpArgs.normalise` turns them into these tensors, and
`OpArgs.attention` / `OpArgs.softmax` lay them out for the kernel, the fake and the
pure-PyTorch fallback alike.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import torch

__all__ = ["OpArgs", "PerHead", "per_head", "span_weights"]

PerHead = Union[float, Sequence[float], torch.Tensor]


@dataclass(frozen=True)
class OpArgs:
    """Normalised arguments of one steered attention / softmax call.

    Attributes:
        span_weights: ``(B, Tk)`` float32; a key is span where ``!= 0``, its bias is ``bias * w``.
        bias: ``(B, H)`` float32 added to span logits.
        key_scale: ``(B, H)`` float32 multiplying span logits.
        target: SpotLight's τ in (0, 1), or None.
        target_exact: move the span mass to exactly τ (else to τ / (τ + 1 − p)).
        query_mask: ``(B, Tq)`` bool, rows with False unsteered; None = every row.
        attn_mask: bool (True = attend) or float (added), broadcastable to ``(B, H, Tq, Tk)``.
        is_causal: bottom-right aligned causal masking.
        window: sliding window (key j visible iff ``pos - j < window``), or None.
        softcap: ``c · tanh(s / c)`` after key scaling; 0 and None both mean off (stored as None).
        scale: logit scale; None = ``1/sqrt(D)`` (attention only).
        return_span_mass: also return the span mass ``(B, H, Tq)`` (attention only).
    """

    span_weights: torch.Tensor
    bias: torch.Tensor
    key_scale: torch.Tensor
    target: Optional[float] = None
    target_exact: bool = False
    query_mask: Optional[torch.Tensor] = None
    attn_mask: Optional[torch.Tensor] = None
    is_causal: bool = False
    window: Optional[int] = None
    softcap: Optional[float] = None
    scale: Optional[float] = None
    return_span_mass: bool = False

    def __post_init__(self) -> None:
        if not self.softcap:
            object.__setattr__(self, "softcap", None)

    def replace(self, **changes) -> "OpArgs":
        return dataclasses.replace(self, **changes)

    def steering(self) -> tuple:
        """The schema arguments shared by both ops, in order (``span_weights`` … ``softcap``)."""
        return (
            self.span_weights,
            self.bias,
            self.key_scale,
            self.target,
            self.target_exact,
            self.query_mask,
            self.attn_mask,
            self.is_causal,
            self.window,
            self.softcap,
        )

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple:
        """``steered_attention``'s schema arguments."""
        scale = self.scale if self.scale is not None else 1.0 / math.sqrt(q.shape[-1])
        return (q, k, v, *self.steering(), float(scale), bool(self.return_span_mass))

    def softmax(self, logits: torch.Tensor) -> tuple:
        """``steered_softmax``'s schema arguments."""
        return (logits, *self.steering())

    @classmethod
    def from_attention(cls, q, k, v, *rest) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, "OpArgs"]:
        """Inverse of `attention` (for the fake and the fallback)."""
        return q, k, v, cls(*rest)

    @classmethod
    def from_softmax(cls, logits, *rest) -> Tuple[torch.Tensor, "OpArgs"]:
        """Inverse of `softmax`."""
        return logits, cls(*rest)

    @classmethod
    def normalise(
        cls,
        B: int,
        H: int,
        Tq: int,
        Tk: int,
        device,
        *,
        span_mask: torch.Tensor,
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
        return_span_mass: bool = False,
    ) -> "OpArgs":
        """Validate the public keywords for a ``(B, H, Tq, Tk)`` problem on ``device`` and turn
        them into the schemas' tensors; errors name the argument, what it got and what fits."""
        if scale is not None:
            scale = float(scale)
            if not math.isfinite(scale):
                raise ValueError(f"scale must be finite; got {scale}")
        return cls(
            span_weights(span_mask, B, Tk, device),
            per_head("bias", bias, B, H, device),
            per_head("key_scale", key_scale, B, H, device),
            _check_target(target),
            bool(target_exact),
            _check_query_mask(query_mask, B, Tq, device),
            _check_attn_mask(attn_mask, (B, H, Tq, Tk)),
            bool(is_causal),
            _check_window(window),
            _check_softcap(softcap),
            scale,
            bool(return_span_mass),
        )


# ----------------------------------------------------------------------------- normalisation


def per_head(name: str, value: PerHead, B: int, H: int, device, *, positive: bool = False) -> torch.Tensor:
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


def span_weights(span_mask: torch.Tensor, B: int, Tk: int, device, name: str = "span_mask") -> torch.Tensor:
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
        raise ValueError(
            f"attn_mask of shape {tuple(attn_mask.shape)} does not broadcast to (B, Hq, Tq, Tk) = {shape}"
        ) from None
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
