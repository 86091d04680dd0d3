"""Pooled SpotLight (the released code's variant) in one full attention pass: the closed form of
``ops/pooled.py`` equals a second full pass, ψ is measured on the *unsteered* weights (float64
eager reference of the released algorithm), and steered models give the same logits and tokens
with the one-pass route and with two passes."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import attnsteer
from attnsteer import ops
from attnsteer.ops import OpArgs, pooled

from tiny import model as tiny_model
from tiny import tokenizer


def _case(B=3, Hq=6, Hkv=2, Tq=9, Tk=23, D=16, dtype=torch.float32, seed=0, weight=1.0, pad=True):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, Tq, D, generator=g).to(dtype)
    k = torch.randn(B, Hkv, Tk, D, generator=g).to(dtype)
    v = torch.randn(B, Hkv, Tk, D, generator=g).to(dtype)
    w = torch.zeros(B, Tk)
    w[0, 2:6] = weight  # a span early in the prompt
    if B > 1:
        w[1, 15:18] = weight  # a span late: the first rows of a decode block do not see it all
    # row 2 (if any): no span at all
    padding = torch.ones(B, Tk, dtype=torch.bool)
    if pad and B > 1:
        padding[1, :3] = False  # left padding
    return q, k, v, w, padding


def _args(w, B, Hq, padding=None, **kw):
    return OpArgs(
        span_weights=w,
        bias=torch.zeros(B, Hq),
        key_scale=torch.ones(B, Hq),
        attn_mask=None if padding is None else padding[:, None, None, :],
        is_causal=True,
        **kw,
    )


def _steered(base, mass, padding, tau=0.4):
    method = attnsteer.SpotLight(tau, pooled=True)
    return method.with_span_mass(base.replace(target=tau), mass, SimpleNamespace(padding=padding))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize(
    "masking",
    [{}, {"window": 15}, {"softcap": 5.0}, {"query_mask": "decode"}],
    ids=["causal", "window", "softcap", "query-mask"],
)
@pytest.mark.parametrize(
    "shape", [(3, 6, 2, 9, 23, 16), (2, 4, 4, 1, 31, 32), (1, 3, 1, 17, 17, 8)], ids=["gqa-block", "decode", "prefill"]
)
def test_closed_form_equals_the_second_full_pass(dtype, masking, shape):
    B, Hq, Hkv, Tq, Tk, D = shape
    q, k, v, w, padding = _case(B, Hq, Hkv, Tq, Tk, D, dtype=dtype)
    masking = dict(masking)
    if masking.get("query_mask") == "decode":
        masking["query_mask"] = torch.arange(Tq)[None, :].expand(B, Tq) >= Tq // 2
    base = _args(w, B, Hq, padding, **masking)
    out0, mass = ops.layer_attention(q, k, v, base.replace(return_span_mass=True))
    steered = _steered(base, mass, padding)
    assert bool((steered.bias > 0).any()), "the case does not steer"
    run = pooled.mixer(ops.layer_attention, q, k, base, steered, mass)
    assert run is not None
    want = ops.layer_attention(q, k, v, steered)[0].float()
    tol = 2e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(run(v, out0).float(), want, atol=tol, rtol=tol)
    torch.testing.assert_close(run(v).float(), want, atol=tol, rtol=tol)  # out0 recomputed (Influence probes)


def _released_reference(q, k, v, w, padding, tau):
    """The released algorithm, materialised in float64: ψ = mean span mass of the unsteered
    weights over heads and real rows; if 0 < ψ < τ every span logit gets log(τ/ψ)."""
    q, k, v = (t.double() for t in (q, k, v))
    B, Hq, Tq, D = q.shape
    Tk = k.shape[2]
    k = k.repeat_interleave(Hq // k.shape[1], 1)
    v = v.repeat_interleave(Hq // v.shape[1], 1)
    logits = q @ k.transpose(-1, -2) / D**0.5
    qpos = torch.arange(Tq) + Tk - Tq
    visible = (torch.arange(Tk)[None, :] <= qpos[:, None])[None, None] & padding[:, None, None, :]
    logits = logits.masked_fill(~visible, float("-inf"))
    p = torch.softmax(logits, -1).nan_to_num()
    span = (w != 0).double()
    mass = (p * span[:, None, None, :]).sum(-1)  # (B, H, Tq)
    rows = padding[:, -Tq:].double()[:, None, :]
    psi = (mass * rows).sum((1, 2)) / (rows.sum((1, 2)) * Hq)
    b = torch.where((psi > 0) & (psi < tau), torch.log(tau / psi.clamp_min(1e-300)), torch.zeros_like(psi))
    steered = torch.softmax(logits + (b[:, None, None, None] * w.double()[:, None, None, :]), -1).nan_to_num()
    return steered @ v


def test_pooled_mass_is_measured_on_the_unsteered_weights():
    """The released code measures ψ before steering; the first pass must not apply the per-row
    target (a steered first pass would measure a mass already lifted toward τ)."""
    q, k, v, w, padding = _case(B=3, Tq=23, Tk=23)
    base = _args(w, 3, 6, padding)
    out0, mass = ops.layer_attention(q, k, v, base.replace(return_span_mass=True))
    run = pooled.mixer(ops.layer_attention, q, k, base, _steered(base, mass, padding), mass)
    want = _released_reference(q, k, v, w, padding, 0.4)
    rows = padding[:, :, None].expand(-1, -1, 1)[:, None]  # padded query rows are not compared
    torch.testing.assert_close((run(v, out0).double() * rows), want * rows, atol=1e-5, rtol=1e-5)


def test_unequal_span_weights_fall_back_to_the_second_pass():
    q, k, v, w, padding = _case()
    w[0, 2] = 2.0  # <<+...+>> and <<...>> in one sequence: bias·m is not one constant
    base = _args(w, 3, 6, padding)
    _, mass = ops.layer_attention(q, k, v, base.replace(return_span_mass=True))
    assert pooled.mixer(ops.layer_attention, q, k, base, _steered(base, mass, padding), mass) is None
    w[0, 2] = 1.0
    w2 = w * 2.0  # equal weights other than 1: the closed form applies (c = e^{b·m} − 1)
    base2 = _args(w2, 3, 6, padding)
    out0, mass2 = ops.layer_attention(q, k, v, base2.replace(return_span_mass=True))
    steered2 = _steered(base2, mass2, padding)
    run = pooled.mixer(ops.layer_attention, q, k, base2, steered2, mass2)
    torch.testing.assert_close(run(v, out0), ops.layer_attention(q, k, v, steered2)[0], atol=2e-5, rtol=2e-5)


PROMPTS = [
    "<<Answer in French.>> the cat sat on the mat and the dog ran in the park",
    "the dog ran in the park. <<Be brief.>> and the cat sat",
]


@pytest.mark.parametrize("kind", ["llama", "mistral", "gemma2", "qwen2"])
def test_models_give_the_same_logits_and_tokens_with_one_pass_and_two(kind, monkeypatch):
    m = tiny_model(kind, std=0.3)
    tok = tokenizer()
    enc = attnsteer.highlight(tok, PROMPTS)
    method = attnsteer.SpotLight(0.4, pooled=True)
    outs = {}
    for mode in ("0", "1"):
        monkeypatch.setenv("ATTNSTEER_POOLED_TWO_PASS", mode)
        with torch.no_grad(), attnsteer.steer(m, method, spans=enc):
            logits = m(**enc).logits
            tokens = m.generate(**enc, max_new_tokens=6, do_sample=False, pad_token_id=0)
        outs[mode] = (logits, tokens)
    real = enc["attention_mask"].bool()[..., None]
    torch.testing.assert_close(outs["0"][0] * real, outs["1"][0] * real, atol=1e-4, rtol=1e-4)
    assert torch.equal(outs["0"][1], outs["1"][1])
