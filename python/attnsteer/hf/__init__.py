"""Hugging Face integration: ``with attnsteer.steer(model, method, spans=enc): ...``.

Layout: `.attention` — the attention adapter and mask function registered with
transformers under ``"attnsteer"``; `.state` — the steering state of a block and its public
face `Steering`; `.pipeline` — `steer_pipeline`; this module — `steer`
and the model introspection it needs.

The steering state belongs to the model object, so ``generate`` running in another thread (the
``TextIteratorStreamer`` pattern) is steered too.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from typing import Any, Iterator, Optional, Union

import torch

from ..config import SteeringConfig
from ..methods import Method
from ..spa import SPA, paired_forward
from .attention import ATTN_NAME, SteerMask, ensure_registered, unprepare_masks
from .state import Steering, _one_thread, active

__all__ = [
    "steer",
    "steer_pipeline",
    "active",
    "Steering",
    "SteerMask",
    "ATTN_NAME",
    "attention_modules",
    "num_layers",
    "check_supported",
    "ensure_registered",
]


def attention_modules(model):
    """The attention modules of ``model`` (those with a ``layer_idx`` and a query projection)."""
    for m in model.modules():
        if hasattr(m, "layer_idx") and any(hasattr(m, a) for a in ("q_proj", "qkv_proj", "query_key_value", "c_attn")):
            yield m


def num_layers(model) -> Optional[int]:
    """Decoder layers of ``model`` (its text config's for multimodal models), None if unknown."""
    cfg = model.config
    return getattr(cfg, "num_hidden_layers", None) or getattr(
        getattr(cfg, "text_config", None), "num_hidden_layers", None
    )


def check_supported(model) -> None:
    if not getattr(model, "_supports_attention_backend", False):
        raise NotImplementedError(
            f"{type(model).__name__} does not route attention through transformers' AttentionInterface "
            "(_supports_attention_backend is False), so attnsteer cannot steer it. Supported: models whose "
            "attention uses the interface — Llama, Mistral, Qwen2/Qwen3, Gemma2/Gemma3, Phi3 and most decoders."
        )


def _as_method(method: Any) -> Method:
    """``method``, or the method of a `SteeringConfig`; a clear error for anything else."""
    if isinstance(method, SteeringConfig):
        built = method.build()
        if not isinstance(built, Method):
            raise TypeError(
                f"the configuration {method.method!r} is not a steering method steer() can apply "
                + (
                    "(it is unsteered: run the model without steer())"
                    if built is None
                    else "(DIRECTER decodes with its own loop: use attnsteer.generate(model, tok, prompt, config))"
                )
            )
        method = built
    if not isinstance(method, Method):
        raise TypeError(
            f"method must be an attnsteer method (GUIDE, InstABoost, PASTA, SpotLight, KeyScale); got {type(method).__name__}"
        )
    return method


def _span_inputs(spans):
    """``(span_mask, float weights, the encoding's fields, its attention_mask or None)``, checked."""
    span_mask = getattr(spans, "span_mask", spans)
    if not isinstance(span_mask, torch.Tensor) or span_mask.dim() != 2:
        raise TypeError("spans must be the encoding from attnsteer.highlight(...) or a (B, T) span mask tensor")
    weights = span_mask.float()
    bad = ~torch.isfinite(weights) | (weights < 0)
    if bool(bad.any()):
        b, t = (int(x) for x in bad.nonzero()[0])
        raise ValueError(
            f"span weights must be finite and >= 0 (0 = not span); row {b}, token {t} is "
            f"{float(weights[b, t])}. Build the mask with attnsteer.highlight or fix its values"
        )
    fields = getattr(spans, "keys", lambda: [])()  # an encoding's fields; none for a bare tensor
    am = spans["attention_mask"] if "attention_mask" in fields else None
    if am is not None and tuple(am.shape) != tuple(span_mask.shape):
        raise ValueError(
            f"the span mask {tuple(span_mask.shape)} does not match the encoding's attention_mask "
            f"{tuple(am.shape)}; re-run attnsteer.highlight on the prompt you pass"
        )
    return span_mask, weights, fields, am


def _refuse_nested(model) -> None:
    if getattr(model, "_attnsteer_state", None) is not None:
        raise RuntimeError(
            "this model is already being steered (nested or concurrent steer() on one model); "
            "exit the other steer() block first, or steer a second copy of the model"
        )


@contextlib.contextmanager
def steer(model, method: Method, spans: Union[torch.Tensor, Any]) -> Iterator[Any]:
    """Steer ``model`` with ``method`` toward ``spans`` inside the block; restore on every exit.

    Args:
        model: a Hugging Face causal LM whose attention goes through ``AttentionInterface``.
        method: `GUIDE`, `InstABoost`, `PASTA`, `SpotLight`, `KeyScale`, `SEKA`, `AdaSEKA`, `PRISM`,
            `SPA` (its forward then runs the prompt twice as one batch, the anchor hidden in the second
            half, and returns the mixed logits), or a `attnsteer.SteeringConfig` (e.g.
            ``attnsteer.recommended(model)``).
        spans: the encoding returned by `attnsteer.highlight` (uses ``.span_mask``), or a
            ``(B, T_prompt)`` bool/float span mask aligned with the prompt the model is given.

    Inside the block, ``model(...)``, ``model.generate(...)`` (cache, beams, sampling, streaming)
    run steered; `active` gives the block's `Steering` (e.g. to swap the method). Prompt positions are counted from the first forward of each generation. Leaving
    the block waits for a steered ``generate`` still running in another thread to finish.

    Example:
        ```python
        with attnsteer.steer(model, attnsteer.GUIDE(1.0), spans=enc):
            out = model.generate(**enc, max_new_tokens=30, do_sample=False)
        ```

    Guide: ``docs/guides/spans.md``.
    """
    spa = method.build() if isinstance(method, SteeringConfig) else method
    if isinstance(spa, SPA):
        with _steer_spa(model, spa, spans):
            yield model
        return
    check_supported(model)
    method = _as_method(method)
    span_mask, weights, fields, am = _span_inputs(spans)
    n_layers = num_layers(model)
    if n_layers:
        method.check_layers(n_layers)
    _refuse_nested(model)
    ensure_registered()
    state = Steering(method, weights, span_mask.shape[1], n_layers or 0)
    if am is not None:
        state.first_token = am.long().argmax(dim=1)  # first real token under left padding
    if "input_ids" in fields:
        state.prompt_ids = spans["input_ids"]
    previous = model.config._attn_implementation
    modules = list(attention_modules(model))
    patched = {name: model.__dict__.get(name) for name in ("forward", "generate") if hasattr(model, name)}
    model._attnsteer_state = state
    for m in modules:
        m._attnsteer_state = state
    hooks: list = []
    try:
        for name in patched:
            setattr(model, name, _one_thread(state, getattr(model, name), name, unprepare_masks))
        model.set_attn_implementation(ATTN_NAME)
        if hasattr(method, "edits_layer"):  # key editing (SEKA): hooks on the key projections
            from ..keyedit import install_key_edits

            hooks = install_key_edits(model, state)
        yield model
    finally:
        # A generate still running in another thread (TextIteratorStreamer pattern) finishes
        # steered before the model is restored, instead of switching to unsteered mid-sequence.
        with state.lock:
            state.lock.wait_for(lambda: state.owner in (None, threading.get_ident()))
        try:
            for h in hooks:
                h.remove()
            for m in modules:
                m.__dict__.pop("_attnsteer_positions", None)
            model.set_attn_implementation(previous)
        finally:
            for name, before in patched.items():
                if before is None:
                    model.__dict__.pop(name, None)
                else:
                    setattr(model, name, before)
            for m in modules:
                if hasattr(m, "_attnsteer_state"):
                    del m._attnsteer_state
            model._attnsteer_state = None


@contextlib.contextmanager
def _steer_spa(model, spa: SPA, spans) -> Iterator[Any]:
    """steer() for `SPA`: the model's forward runs the batch of two (`attnsteer.spa.paired_forward`);
    attention is not touched. The same thread rules and restoring as for the other methods."""
    span_mask, weights, _, _ = _span_inputs(spans)
    _refuse_nested(model)
    state = Steering(spa, weights, span_mask.shape[1], num_layers(model) or 0)
    patched = {name: model.__dict__.get(name) for name in ("forward", "generate")}
    forward = paired_forward(spa, model.forward, span_mask != 0)
    generate = model.generate

    @functools.wraps(generate)
    def no_beams(*args, **kwargs):
        cfg = kwargs.get("generation_config") or model.generation_config
        if int(kwargs.get("num_beams") or getattr(cfg, "num_beams", 1) or 1) > 1:
            raise ValueError("SPA supports greedy decoding and sampling, not beam search: drop num_beams")
        return generate(*args, **kwargs)

    model._attnsteer_state = state
    try:
        model.forward = _one_thread(state, forward, "forward")
        model.generate = _one_thread(state, no_beams, "generate")
        yield model
    finally:
        with state.lock:
            state.lock.wait_for(lambda: state.owner in (None, threading.get_ident()))
        for name, before in patched.items():
            if before is None:
                model.__dict__.pop(name, None)
            else:
                setattr(model, name, before)
        model._attnsteer_state = None


from .pipeline import steer_pipeline  # noqa: E402  (uses steer)
