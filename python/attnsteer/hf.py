"""Hugging Face integration: ``with attnsteer.steer(model, method, spans=enc): ...``.

One attention function and one mask function are registered under the name ``"attnsteer"``
(``AttentionInterface`` / ``AttentionMaskInterface``). The mask function returns a small
:class:`SteerMask` — the 2-D padding mask plus the absolute positions of the queries and keys
of the forward — never a ``(B, 1, T, T)`` tensor, so memory stays O(T); the attention function
lets the fused op do causal, window and padding masking, and maps the span mask onto the keys
that are actually in the cache (sliding-window layers keep only the last W keys).

The steering state belongs to the model object, so ``generate`` running in another thread (the
``TextIteratorStreamer`` pattern) is steered too.
"""
from __future__ import annotations

import contextlib
import functools
import math
import threading
import warnings
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Union

import torch

from . import ops
from .methods import LayerArgs, Method

__all__ = ["steer", "steer_pipeline", "SteerMask", "ATTN_NAME"]

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


class _State:
    def __init__(self, method: Method, span_mask: torch.Tensor, prompt_length: int):
        self.method = method
        self.span_mask = span_mask  # (B, T_prompt) float weights
        self.prompt_length = prompt_length
        self.first_token: Optional[torch.Tensor] = None  # (B,) first real token under left padding
        self.cache: dict = {}
        # DIRECTER: which rows steer at which layer in this forward ((B, L) bool), None = as the method says
        self.row_layers: Optional[torch.Tensor] = None
        self.layer_on: Optional[list] = None  # row_layers.any(0) as Python bools (no sync per layer)
        self.num_layers = 0
        self.lock = threading.Condition()
        self.owner: Optional[int] = None  # thread running a steered forward / generate
        self.depth = 0
        self.opener = threading.get_ident()  # the thread that opened the steer() block
        self.prompt_ids: Optional[torch.Tensor] = None  # (B, T_prompt) when steer() got an encoding
        self.allow_prefix = False  # DIRECTER prefills the prompt one token short
        self.probe: Any = None  # attnsteer.influence's probe during its forward
        self.generating = 0  # generate calls running (a forward longer than the prompt is legitimate there)


def _one_thread(state: _State, fn, name: str):
    """Wrap ``model.forward`` / ``model.generate`` so two threads cannot run the steered model at
    once (the per-forward span cache and the prompt positions belong to one generation).

    The rule: the block steers calls from the thread that opened it, and ``generate`` from any
    one thread at a time (the ``TextIteratorStreamer`` pattern runs it in a worker); a bare
    forward from another thread is refused rather than silently steered."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        me = threading.get_ident()
        if name == "forward":
            _unprepare_masks(kwargs)
            _check_prompt(state, args, kwargs)
        with state.lock:
            if name == "forward" and me != state.opener and state.owner != me:
                raise RuntimeError(
                    "attnsteer: this model is inside a steer() block opened by another thread, so a forward from "
                    "this thread would be steered without asking. Call the model from the thread that opened the "
                    "block, run model.generate in the worker (the TextIteratorStreamer pattern), or give this "
                    "thread its own copy of the model")
            if state.owner not in (None, me):
                raise RuntimeError(
                    "attnsteer: this steered model is already running forward/generate in another thread; "
                    "steering one model from two threads at once is not supported. Run one generation at a "
                    "time (generate in one worker thread with a TextIteratorStreamer is fine), or give each "
                    "thread its own copy of the model and its own steer() block")
            state.owner = me
            state.depth += 1
            state.generating += name == "generate"
        try:
            return fn(*args, **kwargs)
        finally:
            with state.lock:
                state.depth -= 1
                state.generating -= name == "generate"
                if state.depth == 0:
                    state.owner = None
                    state.lock.notify_all()

    return wrapper


def _check_prompt(state: _State, args, kwargs) -> None:
    """A forward that starts a sequence (empty cache) must run the prompt the span mask was made
    for — or that prompt followed by generated tokens (generation without a cache)."""
    ids = kwargs.get("input_ids", args[0] if args else None)
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
        return  # inputs_embeds: nothing to compare
    pkv = kwargs.get("past_key_values")
    if pkv is not None and hasattr(pkv, "get_seq_length") and pkv.get_seq_length() > 0:
        return  # cached decoding
    T, T0 = ids.shape[1], state.prompt_length
    if T == T0 - 1 and state.allow_prefix:
        return
    # Longer than the prompt: generation without a cache re-runs prompt + generated tokens.
    ok = T == T0 or (T > T0 and state.generating > 0)
    if ok and state.prompt_ids is not None:
        ref = state.prompt_ids.to(ids.device)
        if ids.shape[0] != ref.shape[0]:
            ref = _expand_rows(ref, ids.shape[0], "the prompt")
        ok = torch.equal(ids[:, :T0], ref)
    if not ok:
        what = f"{T} tokens" if T != T0 else "other tokens"
        raise ValueError(
            f"attnsteer: this forward runs {what}, but the span mask given to steer() was made for a {T0}-token "
            "prompt, so the span would land on the wrong tokens. Steer the prompt you run: "
            "steer(model, method, spans=enc) with enc = attnsteer.highlight(tokenizer, that prompt), then "
            "model(**enc) / model.generate(**enc)")


def _mask_function(batch_size: int, q_length: int, kv_length: int, q_offset: Any = 0, kv_offset: Any = 0,
                   mask_function=None, attention_mask: Optional[torch.Tensor] = None, **kwargs) -> SteerMask:
    q_offset, kv_offset, kv_length = int(q_offset), int(kv_offset), int(kv_length)
    if kv_offset == 0 and kv_length > q_offset + q_length:
        # A static cache hands over its whole buffer; only the first q_offset + q_length keys hold tokens.
        kv_length = q_offset + q_length
    padding = None
    source = attention_mask if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2 else None
    if source is not None:
        padding = source[:, :kv_offset + kv_length][:, -kv_length:].bool()
        if padding.shape[1] == kv_length and bool(padding.all()):
            padding = None
    return SteerMask(padding, q_offset, kv_offset, kv_length, source)


def _unprepare_masks(kwargs) -> None:
    """Generation with a static cache builds the masks before calling the model, which then
    builds them again from what it is given: hand it back the 2-D mask a SteerMask came from."""
    am = kwargs.get("attention_mask")
    if isinstance(am, SteerMask):
        kwargs["attention_mask"] = am.source
    elif isinstance(am, dict) and any(isinstance(v, SteerMask) for v in am.values()):
        kwargs["attention_mask"] = next((v.source for v in am.values() if isinstance(v, SteerMask)), None)


def _ensure_registered() -> None:
    global _REGISTERED
    with _LOCK:
        if _REGISTERED:
            return
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface

        AttentionInterface.register(ATTN_NAME, _attention_function)
        AttentionMaskInterface.register(ATTN_NAME, _mask_function)
        _REGISTERED = True


def _expand_rows(t: torch.Tensor, batch: int, name: str) -> torch.Tensor:
    if t.shape[0] == batch:
        return t
    if batch % t.shape[0] == 0:  # beams / num_return_sequences repeat each row in place
        return t.repeat_interleave(batch // t.shape[0], dim=0)
    raise RuntimeError(f"attnsteer: {name} has {t.shape[0]} rows but the model runs a batch of {batch}; "
                       "pass the encoding the model is called with to steer(spans=...)")


def _attention_function(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: Any, dropout: float = 0.0, scaling: Optional[float] = None,
                        sliding_window: Optional[int] = None, softcap: Optional[float] = None, **kwargs):
    state: Optional[_State] = getattr(module, "_attnsteer_state", None)
    B, Hq, Tq, D = query.shape
    Tk = key.shape[2]
    if isinstance(attention_mask, SteerMask):
        padding, q_off, kv_off = attention_mask.padding, attention_mask.q_offset, attention_mask.kv_offset
        if Tk > attention_mask.kv_length:  # a static cache's buffer: keep the keys that hold tokens
            if sliding_window is not None:
                raise NotImplementedError("attnsteer: a static cache on a sliding-window layer is not supported; "
                                          "use the default dynamic cache (drop cache_implementation='static')")
            Tk = attention_mask.kv_length
            key, value = key[:, :, :Tk], value[:, :, :Tk]
    elif attention_mask is None:
        padding, q_off, kv_off = None, Tk - Tq, 0
        if sliding_window is not None:
            raise RuntimeError("attnsteer: a sliding-window layer was called without the attnsteer mask; "
                               "steer() must switch the model with set_attn_implementation")
    else:
        raise RuntimeError(
            f"attnsteer: the model passed a {type(attention_mask).__name__} attention mask "
            f"({tuple(getattr(attention_mask, 'shape', ()))}) instead of the attnsteer mask — this model builds "
            "its own masks (e.g. bidirectional image tokens), which attnsteer does not support yet"
        )
    attn_mask = None
    if padding is not None:
        attn_mask = padding[:, None, None, -Tk:]
    window = int(sliding_window) if sliding_window else None
    layer_idx = getattr(module, "layer_idx", None)
    args: Optional[LayerArgs] = None
    if state is not None and layer_idx is not None:
        args = state.method.layer_args(layer_idx, Hq)
        if args is not None and state.layer_on is not None and not state.layer_on[layer_idx]:
            args = None
    want_weights = bool(kwargs.get("output_attentions", False)) or _collecting_attentions()
    if args is None:
        zeros = torch.zeros(B, Tk, device=query.device)

        def run(v):
            return _op(state, query, key, v, zeros, attn_mask=attn_mask, window=window, softcap=softcap, scale=scaling)[0]

        out = run(value)
        if state is not None and state.probe is not None:  # attnsteer.influence: mix with the same weights
            state.probe.attend(run, key, value)
        weights = _weights(query, key, zeros, dict(attn_mask=attn_mask, is_causal=True, window=window, softcap=softcap),
                           scaling) if want_weights else None
        return out.transpose(1, 2).contiguous(), weights

    span, query_mask = _span_and_rows(state, args.span, B, Tq, Tk, q_off, kv_off, padding, query.device)
    if state.row_layers is not None:  # DIRECTER trial: per-row layer sets
        rows = _expand_rows(state.row_layers[:, layer_idx], B, "the DIRECTER layer sets")[:, None].expand(B, Tq)
        query_mask = rows if query_mask is None else query_mask & rows
    if query_mask is not None and not bool(query_mask.any()):
        args = LayerArgs()  # nothing to steer in this forward
    bias, target = args.bias, args.target
    common = dict(attn_mask=attn_mask, window=window, softcap=softcap, scale=scaling, query_mask=query_mask)
    if target is not None and args.pooled_target:
        # SpotLight's released variant: span mass pooled over heads and steered rows, per sequence.
        _, mass = _op(state, query, key, value, span, return_span_mass=True, **common)
        rows = query_mask if query_mask is not None else torch.ones(B, Tq, dtype=torch.bool, device=query.device)
        if padding is not None:  # padded query rows (left padding) do not count
            rows = rows & padding[:, -Tq:]
        w = rows[:, None, :].float()
        psi = (mass * w).sum((1, 2)) / (w.sum((1, 2)) * Hq).clamp_min(1)
        pooled_bias = torch.where((psi > 0) & (psi < target), torch.log(target / psi.clamp_min(1e-30)), torch.zeros_like(psi))
        bias, target = pooled_bias[:, None].expand(B, Hq).float(), None
    def run(v):
        return _op(state, query, key, v, span, bias=bias, key_scale=args.key_scale, target=target,
                   target_exact=args.target_exact, **common)[0]

    out = run(value)
    if state.probe is not None:  # attnsteer.influence: mix with the same (steered) weights
        state.probe.attend(run, key, value)
    weights = None
    if want_weights:  # materialised on request only (output_attentions=True)
        steer_kw = dict(bias=bias, key_scale=args.key_scale, target=target, target_exact=args.target_exact,
                        query_mask=query_mask, attn_mask=attn_mask, is_causal=True, window=window, softcap=softcap)
        weights = _weights(query, key, span, steer_kw, scaling)
    return out.transpose(1, 2).contiguous(), weights


def _span_and_rows(state: "_State", kind: str, B: int, Tq: int, Tk: int, q_off: int, kv_off: int,
                   padding: Optional[torch.Tensor], device) -> tuple:
    """Span weights (B, Tk) for this forward's keys and the steered query rows (B, Tq) or None.

    The same for every layer of one forward (and mask type), so it is cached per forward: the
    per-step Python work stays one small computation, not one per layer."""
    # PASTA's keys depend on the padding mask, which is one object per forward (and mask type):
    # it is part of the key, and kept in the entry so that its id cannot be reused meanwhile.
    key = (kind, B, Tq, Tk, q_off, kv_off, str(device), id(padding) if kind != "highlight" else None)
    cache = state.cache
    if key in cache:
        return cache[key][:2]
    if len(cache) > 16:
        cache.clear()
    # Absolute positions of this forward's keys and queries; generated keys are never span.
    T0 = state.prompt_length
    key_pos = torch.arange(kv_off, kv_off + Tk, device=device)
    in_prompt = key_pos < T0
    span_prompt = _expand_rows(state.span_mask.to(device), B, "the span mask")
    span = torch.zeros(B, Tk, device=device)
    n_prompt = int(in_prompt.sum())
    if n_prompt:
        span[:, :n_prompt] = span_prompt[:, kv_off:kv_off + n_prompt]
    if kind == "prompt_rest":  # PASTA: prompt tokens outside the highlight
        rest = (span == 0) & in_prompt[None, :]
        if padding is not None:
            rest &= padding[:, -Tk:]
        if getattr(state.method, "keep_sink", False):
            first = _first_tokens(state, B, device)
            rest &= key_pos[None, :] != first[:, None]
        span = rest.float()
    query_mask = None
    q_pos = torch.arange(q_off, q_off + Tq, device=device)
    if state.method.phases == "prefill":
        query_mask = (q_pos < T0)[None, :].expand(B, Tq)
    elif state.method.phases == "decode":
        query_mask = (q_pos >= T0)[None, :].expand(B, Tq)
    cache[key] = (span, query_mask, padding)
    return span, query_mask


def _per_head_tensor(state: Optional["_State"], value, B: int, H: int, device) -> torch.Tensor:
    """(B, H) float32 tensor for a bias / key scale (ops' normalisation), cached for scalars so a
    decode step does not rebuild it in every layer."""
    key = ("per_head", float(value), B, H, str(device)) if isinstance(value, (int, float)) else None
    if state is not None and key is not None and key in state.cache:
        return state.cache[key]
    t = ops._per_head("bias / key_scale", value, B, H, device)
    if state is not None and key is not None:
        state.cache[key] = t
    return t


def _op(state, query, key, value, span, *, bias=0.0, key_scale=1.0, target=None, target_exact=False,
        query_mask=None, attn_mask=None, window=None, softcap=None, scale=None, return_span_mass=False):
    """The fused op from the attention layer: shapes come from the model, so the compiled kernel
    is called directly (the public wrapper's validation costs ~0.1 ms a call, 30 calls a token)."""
    B, Hq, Tq, D = query.shape
    ops._check_grad("steered_attention", query, key, value)
    return ops._run_steered_attention(
        query, key, value, span.float().contiguous(), _per_head_tensor(state, bias, B, Hq, query.device),
        _per_head_tensor(state, key_scale, B, Hq, query.device), target, bool(target_exact),
        None if query_mask is None else query_mask.contiguous(), attn_mask, True, window,
        softcap if softcap else None, float(scale) if scale is not None else 1.0 / math.sqrt(D), bool(return_span_mass))


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


def _weights(query, key, span, steer_kw, scaling) -> torch.Tensor:
    """Steered attention weights (B, Hq, Tq, Tk) for output_attentions."""
    Hq, Hkv, D = query.shape[1], key.shape[1], query.shape[-1]
    scale = scaling if scaling is not None else 1.0 / math.sqrt(D)
    k = key.repeat_interleave(Hq // Hkv, dim=1) if Hq != Hkv else key
    logits = (query.float() @ k.float().transpose(-1, -2)) * scale
    return ops.steered_softmax(logits, span, **steer_kw).to(query.dtype)


def _first_tokens(state: _State, batch: int, device) -> torch.Tensor:
    first = state.first_token
    if first is None:
        return torch.zeros(batch, dtype=torch.long, device=device)
    return _expand_rows(first.to(device), batch, "the prompt")


def _attention_modules(model):
    for m in model.modules():
        if hasattr(m, "layer_idx") and any(hasattr(m, a) for a in ("q_proj", "qkv_proj", "query_key_value", "c_attn")):
            yield m


def _num_layers(model) -> Optional[int]:
    """Decoder layers of ``model`` (its text config's for multimodal models), None if unknown."""
    cfg = model.config
    return getattr(cfg, "num_hidden_layers", None) or getattr(getattr(cfg, "text_config", None), "num_hidden_layers", None)


def _check_supported(model) -> None:
    if not getattr(model, "_supports_attention_backend", False):
        raise NotImplementedError(
            f"{type(model).__name__} does not route attention through transformers' AttentionInterface "
            "(_supports_attention_backend is False), so attnsteer cannot steer it. Supported: models whose "
            "attention uses the interface — Llama, Mistral, Qwen2/Qwen3, Gemma2/Gemma3, Phi3 and most decoders."
        )


@contextlib.contextmanager
def steer(model, method: Method, spans: Union[torch.Tensor, Any]) -> Iterator[Any]:
    """Steer ``model`` with ``method`` toward ``spans`` inside the block; restore on every exit.

    Args:
        model: a Hugging Face causal LM whose attention goes through ``AttentionInterface``.
        method: :class:`GUIDE`, :class:`InstABoost`, :class:`PASTA`, :class:`SpotLight`, :class:`KeyScale`.
        spans: the encoding returned by :func:`attnsteer.highlight` (uses ``.span_mask``), or a
            ``(B, T_prompt)`` bool/float span mask aligned with the prompt the model is given.

    Inside the block, ``model(...)``, ``model.generate(...)`` (cache, beams, sampling, streaming)
    run steered. Prompt positions are counted from the first forward of each generation. Leaving
    the block waits for a steered ``generate`` still running in another thread to finish.
    """
    _check_supported(model)
    if not isinstance(method, Method):
        raise TypeError(f"method must be an attnsteer method (GUIDE, InstABoost, PASTA, SpotLight, KeyScale); got {type(method).__name__}")
    span_mask = getattr(spans, "span_mask", spans)
    if not isinstance(span_mask, torch.Tensor) or span_mask.dim() != 2:
        raise TypeError("spans must be the encoding from attnsteer.highlight(...) or a (B, T) span mask tensor")
    weights = span_mask.float()
    bad = ~torch.isfinite(weights) | (weights < 0)
    if bool(bad.any()):
        b, t = (int(x) for x in bad.nonzero()[0])
        raise ValueError(f"span weights must be finite and >= 0 (0 = not span); row {b}, token {t} is "
                         f"{float(weights[b, t])}. Build the mask with attnsteer.highlight or fix its values")
    fields = getattr(spans, "keys", lambda: [])()  # an encoding's fields; none for a bare tensor
    am = spans["attention_mask"] if "attention_mask" in fields else None
    if am is not None and tuple(am.shape) != tuple(span_mask.shape):
        raise ValueError(f"the span mask {tuple(span_mask.shape)} does not match the encoding's attention_mask "
                         f"{tuple(am.shape)}; re-run attnsteer.highlight on the prompt you pass")
    num_layers = _num_layers(model)
    if num_layers:
        method.check_layers(num_layers)
    if getattr(model, "_attnsteer_state", None) is not None:
        raise RuntimeError("this model is already being steered (nested or concurrent steer() on one model); "
                           "exit the other steer() block first, or steer a second copy of the model")
    _ensure_registered()
    state = _State(method, weights, span_mask.shape[1])
    state.num_layers = num_layers or 0
    if am is not None:
        state.first_token = am.long().argmax(dim=1)  # first real token under left padding
    if "input_ids" in fields:
        state.prompt_ids = spans["input_ids"]
    previous = model.config._attn_implementation
    modules = list(_attention_modules(model))
    patched = {name: model.__dict__.get(name) for name in ("forward", "generate") if hasattr(model, name)}
    model._attnsteer_state = state
    for m in modules:
        m._attnsteer_state = state
    try:
        for name in patched:
            setattr(model, name, _one_thread(state, getattr(model, name), name))
        model.set_attn_implementation(ATTN_NAME)
        yield model
    finally:
        # A generate still running in another thread (TextIteratorStreamer pattern) finishes
        # steered before the model is restored, instead of switching to unsteered mid-sequence.
        with state.lock:
            state.lock.wait_for(lambda: state.owner in (None, threading.get_ident()))
        try:
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
def steer_pipeline(pipe, method: Method) -> Iterator[Any]:
    """Steer a ``pipeline("text-generation")`` whose inputs carry ``<<markup>>``.

    The markup is removed and its span resolved per call, from the very tokens the pipeline
    feeds the model (strings or chat messages)::

        pipe = pipeline("text-generation", model=model, tokenizer=tok)
        with attnsteer.steer_pipeline(pipe, attnsteer.GUIDE(2.0)):
            pipe("<<Answer in French.>> What is a cat?", max_new_tokens=20)

    Batched calls (``batch_size=N``) work: the pipeline pads each prompt's span mask like its
    ``input_ids`` (left), so every row keeps its own span.
    """
    from .spans import _is_chat, highlight, parse_markup

    _check_supported(pipe.model)
    original_preprocess, original_forward = pipe.preprocess, pipe._forward

    def clean(prompt):
        if isinstance(prompt, str):
            return parse_markup(prompt)[0]
        if _is_chat(prompt) and isinstance(prompt[0], dict):
            return [dict(m, content=parse_markup(m["content"])[0]) for m in prompt]
        raise TypeError("steer_pipeline takes a string or a list of chat messages per call")

    def preprocess(prompt_text, *args, **kwargs):
        raw = getattr(prompt_text, "messages", prompt_text)  # the pipeline wraps chats in a Chat object
        inputs = original_preprocess(type(prompt_text)(clean(raw)) if hasattr(prompt_text, "messages") else clean(raw),
                                     *args, **kwargs)
        ids = inputs["input_ids"]
        texts = [raw] if isinstance(raw, str) else [m["content"] for m in raw]
        if not any(parse_markup(t)[1] for t in texts):
            # As highlight() does for a row of a batch: no marks, no steering for this prompt — said aloud.
            warnings.warn("attnsteer.steer_pipeline: a prompt has no <<markup>>, so it runs unsteered",
                          stacklevel=2)
            inputs["_attnsteer_span_mask"] = torch.zeros(ids.shape, dtype=torch.bool)
            return inputs
        for special in (False, True):
            enc = highlight(pipe.tokenizer, raw, add_special_tokens=special)
            if enc["input_ids"].shape == ids.shape and torch.equal(enc["input_ids"].to(ids.device), ids):
                inputs["_attnsteer_span_mask"] = enc.span_mask
                return inputs
        raise RuntimeError("attnsteer: the pipeline tokenised the prompt differently from attnsteer.highlight; "
                           "steer the model directly with attnsteer.highlight + attnsteer.steer")

    def _forward(model_inputs, *args, **kwargs):
        span = model_inputs.pop("_attnsteer_span_mask", None)
        if span is None:
            return original_forward(model_inputs, *args, **kwargs)
        if span.shape != model_inputs["input_ids"].shape:  # the collate function pads both alike
            raise RuntimeError(f"attnsteer: the pipeline batched span masks {tuple(span.shape)} that do not match "
                               f"input_ids {tuple(model_inputs['input_ids'].shape)}; call the pipeline with batch_size=1")
        with steer(pipe.model, method, spans=span):
            return original_forward(model_inputs, *args, **kwargs)

    pipe.preprocess, pipe._forward = preprocess, _forward
    try:
        yield pipe
    finally:
        pipe.preprocess, pipe._forward = original_preprocess, original_forward
