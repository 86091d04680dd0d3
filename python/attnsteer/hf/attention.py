"""The attention adapter and mask function registered with transformers under ``"attnsteer"``.

The mask function returns a small `SteerMask` — the 2-D padding mask plus the absolute
positions of the forward's queries and keys — never a ``(B, 1, T, T)`` tensor, so memory stays
O(T). The attention function is an adapter in the manner of transformers' own
``sdpa_attention_forward``: gather the layer's inputs, ask the method for its op arguments
(`Method.plan`), call the fused op, shape the output. The op does causal, window and
padding masking itself.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Optional

import torch

from .. import ops
from ..methods import ForwardContext, expand_rows
from ..ops import OpArgs, pooled

__all__ = ["ATTN_NAME", "SteerMask", "ensure_registered"]

ATTN_NAME = "attnsteer"
_REGISTERED = False
_LOCK = threading.Lock()


@dataclass
class SteerMask:
    """What the ``attnsteer`` mask function hands to the attention layers."""

    padding: Optional[torch.Tensor]  # (B, kv_length) bool, True = attend; None = no padding
    q_offset: int  # absolute (cache) position of the first query
    kv_offset: int  # absolute position of the first key in this layer type's cache
    kv_length: int  # keys that hold tokens (a static cache's buffer can be longer)
    source: Optional[torch.Tensor] = None  # the 2-D attention mask it was made from


def mask_function(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: Any = 0,
    kv_offset: Any = 0,
    mask_function=None,
    attention_mask: Optional[torch.Tensor] = None,
    **kwargs,
) -> SteerMask:
    q_offset, kv_offset, kv_length = int(q_offset), int(kv_offset), int(kv_length)
    if kv_offset == 0 and kv_length > q_offset + q_length:
        # A static cache hands over its whole buffer; only the first q_offset + q_length keys hold tokens.
        kv_length = q_offset + q_length
    padding = None
    source = attention_mask if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2 else None
    if source is not None:
        padding = source[:, : kv_offset + kv_length][:, -kv_length:].bool()
        if padding.shape[1] == kv_length and bool(padding.all()):
            padding = None
    return SteerMask(padding, q_offset, kv_offset, kv_length, source)


def unprepare_masks(kwargs) -> None:
    """Generation with a static cache builds the masks before calling the model, which then
    builds them again from what it is given: hand it back the 2-D mask a SteerMask came from."""
    am = kwargs.get("attention_mask")
    if isinstance(am, SteerMask):
        kwargs["attention_mask"] = am.source
    elif isinstance(am, dict) and any(isinstance(v, SteerMask) for v in am.values()):
        kwargs["attention_mask"] = next((v.source for v in am.values() if isinstance(v, SteerMask)), None)


def ensure_registered() -> None:
    global _REGISTERED
    with _LOCK:
        if _REGISTERED:
            return
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface

        AttentionInterface.register(ATTN_NAME, attention_function)
        AttentionMaskInterface.register(ATTN_NAME, mask_function)
        _REGISTERED = True


def _layer_keys(attention_mask: Any, key, value, Tq: int, sliding_window):
    """(key, value, padding, q_offset, kv_offset) of this layer: a static cache's buffer is cut
    to the keys that hold tokens; anything but the attnsteer mask is refused."""
    Tk = key.shape[2]
    if isinstance(attention_mask, SteerMask):
        if Tk > attention_mask.kv_length:  # a static cache's buffer: keep the keys that hold tokens
            if sliding_window is not None:
                raise NotImplementedError(
                    "attnsteer: a static cache on a sliding-window layer is not supported; "
                    "use the default dynamic cache (drop cache_implementation='static')"
                )
            Tk = attention_mask.kv_length
            key, value = key[:, :, :Tk], value[:, :, :Tk]
        return key, value, attention_mask.padding, attention_mask.q_offset, attention_mask.kv_offset
    if attention_mask is None:
        if sliding_window is not None:
            raise RuntimeError(
                "attnsteer: a sliding-window layer was called without the attnsteer mask; "
                "steer() must switch the model with set_attn_implementation"
            )
        return key, value, None, Tk - Tq, 0
    raise RuntimeError(
        f"attnsteer: the model passed a {type(attention_mask).__name__} attention mask "
        f"({tuple(getattr(attention_mask, 'shape', ()))}) instead of the attnsteer mask — this model builds "
        "its own masks (e.g. bidirectional image tokens), which attnsteer does not support yet"
    )


def _context(state, B: int, Hq: int, Tq: int, Tk: int, q_off: int, kv_off: int, padding, device) -> ForwardContext:
    """The forward's `ForwardContext`, built once per forward and mask type (cached in the
    state: the per-step Python work stays one small computation, not one per layer)."""
    # The padding mask is one object per forward (and mask type): it is part of the key, and kept
    # in the entry so that its id cannot be reused meanwhile.
    key = (B, Hq, Tq, Tk, q_off, kv_off, str(device), id(padding))
    cache = state.cache
    hit = cache.get(key)
    if hit is not None:
        return hit[0]
    if len(cache) > 16:
        cache.clear()
    # Absolute positions of this forward's keys and queries; generated keys are never span.
    key_pos = torch.arange(kv_off, kv_off + Tk, device=device)
    span = torch.zeros(B, Tk, device=device)
    n_prompt = max(0, min(Tk, state.prompt_length - kv_off))
    if n_prompt:
        span_prompt = expand_rows(state.span_mask.to(device), B, "the span mask")
        span[:, :n_prompt] = span_prompt[:, kv_off : kv_off + n_prompt]
    first = state.first_token
    ctx = ForwardContext(
        span,
        key_pos,
        torch.arange(q_off, q_off + Tq, device=device),
        state.prompt_length,
        Hq,
        None if padding is None else padding[:, -Tk:],
        None if first is None else expand_rows(first.to(device), B, "the prompt"),
    )
    cache[key] = (ctx, padding)
    return ctx


def _unsteered(ctx: Optional[ForwardContext], B: int, Hq: int, Tk: int, device) -> OpArgs:
    def make():
        return OpArgs(
            torch.zeros(B, Tk, device=device), torch.zeros(B, Hq, device=device), torch.ones(B, Hq, device=device)
        )

    return make() if ctx is None else ctx.memo("unsteered", make)


def attention_function(
    module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: Optional[float] = None,
    sliding_window: Optional[int] = None,
    softcap: Optional[float] = None,
    **kwargs,
):
    """``(out (B, Tq, Hq, D), weights or None)`` for transformers' attention modules."""
    state = getattr(module, "_attnsteer_state", None)
    B, Hq, Tq, D = query.shape
    key, value, padding, q_off, kv_off = _layer_keys(attention_mask, key, value, Tq, sliding_window)
    Tk = key.shape[2]
    layer_idx = getattr(module, "layer_idx", None)
    ctx = _context(state, B, Hq, Tq, Tk, q_off, kv_off, padding, query.device) if state is not None else None
    method = state.method if state is not None else None
    args = method.plan_steered(layer_idx, ctx) if method is not None and layer_idx is not None else None
    masking = dict(
        attn_mask=None if padding is None else padding[:, None, None, -Tk:],
        is_causal=True,
        window=int(sliding_window) if sliding_window else None,
        softcap=softcap,
        scale=scaling,
    )
    out = closed_form = None
    if args is None:
        args = _unsteered(ctx, B, Hq, Tk, query.device).replace(**masking)
    else:
        args = args.replace(**masking)
        if method.needs_span_mass():  # pooled SpotLight: the unsteered pass measures the span mass
            base = args.replace(target=None, target_exact=False)
            out, mass = ops.layer_attention(query, key, value, base.replace(return_span_mass=True))
            args = method.with_span_mass(args, mass, ctx)
            if pooled.enabled():  # the steered output in closed form: no second full pass (ops/pooled.py)
                closed_form = pooled.mixer(ops.layer_attention, query, key, base, args, mass)

    def run(v, out0=None):
        if closed_form is not None:
            return closed_form(v, out0)
        return ops.layer_attention(query, key, v, args)[0]

    out = run(value, out)  # the closed form reuses the unsteered pass's output; else one steered pass
    if state is not None and state.probe is not None:  # attnsteer.influence: mix with the same weights
        state.probe.attend(run, key, value)
    weights = None
    if kwargs.get("output_attentions", False) or _collecting_attentions():  # materialised on request only
        weights = ops.layer_weights(query, key, args)
    return out.transpose(1, 2).contiguous(), weights


def _collecting_attentions() -> bool:
    """True when transformers' output recorder collects attention weights (output_attentions=True)."""
    try:
        from transformers.utils.output_capturing import _active_collector
    except ImportError:  # pragma: no cover - other transformers layouts
        return False
    try:
        collected = _active_collector.get()
    except LookupError:
        return False
    return isinstance(collected, dict) and "attentions" in collected
