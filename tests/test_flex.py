"""The FlexAttention route (ops/flex.py) and the routing (ops.route): the op's covering set through
the route against the float64 reference with the op tests' tolerance rule (the covering test of
test_steered_attention runs it too, the route a parameter), the compiled path, the version shim,
the routing decisions, and tiny models of each family steered through the route equal to the fused
kernel — prefill and cached decode, batched with left padding."""

from __future__ import annotations

import os

import pytest
import torch

import attnsteer
from attnsteer import GUIDE, PASTA, InstABoost, KeyScale, SpotLight
from attnsteer.ops import OpArgs, flex, route, use_route
from conftest import to_device
from references import PROMPTS
from test_steered_attention import _reference, _tolerance

from cases import build_inputs, case_id, covering_cases
from tiny import model as tiny_model
from tiny import tokenizer

pytestmark = pytest.mark.skipif(not flex.available(), reason="this torch has no FlexAttention")
# tools/gpu_session.sh runs the tiny models on the GPU (the route compiled there) with ATTNSTEER_TEST_DEVICE=cuda
MODEL_DEVICE = "cuda" if os.environ.get("ATTNSTEER_TEST_DEVICE") == "cuda" and torch.cuda.is_available() else "cpu"


def _args(inp, **extra):
    q, k = inp["q"], inp["k"]
    B, Hq, Tq, _ = q.shape
    return OpArgs.normalise(B, Hq, Tq, k.shape[2], q.device, span_mask=inp["span_mask"], **inp["kwargs"], **extra)


@pytest.mark.parametrize("case", covering_cases(), ids=case_id)
def test_span_mass_through_flex(case, device):
    """The two-pass split (span keys / rest, merged from their log-sum-exp): output and span mass."""
    inp = build_inputs(case)
    d = to_device(inp, device)
    out, mass = flex.steered_attention(d["q"], d["k"], d["v"], _args(d, return_span_mass=True))
    ref, ref_mass = _reference(inp, return_span_mass=True)
    tol = _tolerance(inp, ref)
    assert out.dtype == inp["q"].dtype and torch.isfinite(out.cpu()).all()
    assert (out.cpu().double() - ref.double()).abs().max().item() <= tol
    assert (mass.cpu().double() - ref_mass.double()).abs().max().item() <= max(tol, 1e-4)


# A few shapes compiled on CPU (static shapes: each one compiles once, ~5 s).
COMPILED = [
    dict(covering_cases()[i], dtype=torch.float32, tq=7)
    for i in (0, 3, 5)  # padding, window, softcap, GQA mixed
]


@pytest.mark.parametrize("case", COMPILED, ids=case_id)
def test_compiled_flex_equals_the_reference(case):
    """torch.compile(flex_attention) generates the kernel from the same score_mod / mask_mod (on CPU:
    one pass only — the CPU template returns no log-sum-exp, so SpotLight's passes run eagerly)."""
    inp = build_inputs(dict(case, target=None))
    out, _ = flex.steered_attention(inp["q"], inp["k"], inp["v"], _args(inp), compiled=True)
    ref = _reference(inp)
    assert (out.double() - ref.double()).abs().max().item() <= _tolerance(inp, ref)


def test_version_shim_returns_the_same_lse_both_ways():
    """torch >= 2.9 returns the log-sum-exp through return_aux=AuxRequest(lse=True), older ones
    through return_lse=True (the GPU machine's 2.11 and this 2.13 take both; 2.13 warns on the old)."""
    case = dict(covering_cases()[2], target=0.3)
    inp = build_inputs(case)
    args = _args(inp, return_span_mass=True)
    with pytest.warns(Warning) if flex._lse_style() == "aux" else _nothing():
        old = flex.steered_attention(inp["q"], inp["k"], inp["v"], args, lse_style="lse")
    new = flex.steered_attention(inp["q"], inp["k"], inp["v"], args, lse_style="aux")
    assert torch.equal(old[0], new[0]) and torch.equal(old[1], new[1])


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _small(**kw):
    inp = build_inputs(dict(covering_cases()[1], **kw))
    return inp, _args(inp)


def test_routing_decisions_and_reasons(monkeypatch):
    inp, args = _small(padding=None, window=None, softcap=None, key_scale=1.0, query_mask=False)
    q = inp["q"]
    assert route(q, args)[0] == "kernel" and "C++" in route(q, args)[1]  # CPU default
    assert route(q, args, "flex") == ("flex", "forced")
    with use_route("pieces"):
        assert route(q, args)[0] == "pieces"
    assert route(q, args)[0] == "kernel"  # the block restored it
    padded, pargs = _small(padding="bool")
    with pytest.raises(ValueError, match="takes no attn_mask"):
        route(padded["q"], pargs, "pieces")
    with pytest.raises(ValueError, match="unknown route 'nope'"):
        route(q, args, "nope")
    with pytest.raises(ValueError, match="choose from kernel, pieces, flex, torch"):
        with use_route("nope"):
            pass
    # CUDA's decision, on CPU tensors that claim to be on CUDA: pieces where they apply, else flex
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda t: True))
    half = q.to(torch.float16)
    assert route(half, args)[0] == "pieces"
    assert route(padded["q"].to(torch.float16), pargs)[0] == "flex"
    monkeypatch.setenv("ATTNSTEER_CUDA_FLEX", "0")
    assert route(padded["q"].to(torch.float16), pargs)[0] == "kernel"


def test_forced_route_through_the_public_op_and_the_context():
    inp, _ = _small(padding="float", target=0.3, dtype=torch.float32)
    kw = dict(inp["kwargs"])
    base = attnsteer.steered_attention(inp["q"], inp["k"], inp["v"], inp["span_mask"], enable_gqa=True, **kw)
    got = attnsteer.steered_attention(
        inp["q"], inp["k"], inp["v"], inp["span_mask"], enable_gqa=True, route="flex", **kw
    )
    with use_route("flex"):
        ctx = attnsteer.steered_attention(inp["q"], inp["k"], inp["v"], inp["span_mask"], enable_gqa=True, **kw)
    torch.testing.assert_close(got, base, atol=2e-5, rtol=1e-5)
    assert torch.equal(got, ctx)
    with pytest.raises(ValueError, match="route 'pieces' cannot serve this call"):
        attnsteer.steered_attention(
            inp["q"], inp["k"], inp["v"], inp["span_mask"], enable_gqa=True, route="pieces", **kw
        )


FAMILIES = [
    ("llama", {}),
    ("qwen2", {}),
    ("mistral", {}),  # sliding window 8
    ("gemma2", {}),  # sliding windows and attention soft-capping (5.0)
    ("gemma3", {}),  # sliding windows (transformers' Gemma 3 attention takes no soft-capping)
    ("phi3", {}),
]
METHODS = [
    GUIDE(2.0),
    InstABoost(5.0),
    PASTA(0.01),
    SpotLight(0.4),
    SpotLight(0.4, pooled=True),
    KeyScale(4.0, phases="both"),
]


@pytest.mark.parametrize("kind, overrides", FAMILIES, ids=[f[0] for f in FAMILIES])
@pytest.mark.parametrize("method", METHODS, ids=repr)
def test_tiny_models_through_flex_equal_the_fused_kernel(kind, overrides, method, monkeypatch):
    """Batched, left-padded prompts with a different span per row: prefill logits and greedy cached
    decoding through the FlexAttention route equal the fused kernel's."""
    seen = []
    real = flex.steered_attention

    def spy(q, k, v, args, **kw):
        seen.append((q.shape[2], k.shape[2], args.window, args.softcap, args.attn_mask is not None))
        return real(q, k, v, args, **kw)

    monkeypatch.setattr(flex, "steered_attention", spy)
    m = tiny_model(kind, std=0.3, **overrides).to(MODEL_DEVICE)
    enc = attnsteer.highlight(tokenizer(), PROMPTS).to(MODEL_DEVICE)
    kw = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0)
    rows = enc["attention_mask"].bool()
    with torch.no_grad(), attnsteer.steer(m, method, spans=enc):
        ref_logits = m(**enc).logits
        ref_tokens = m.generate(**enc, **kw)
        with use_route("flex"):
            logits = m(**enc).logits
            tokens = m.generate(**enc, **kw)
    torch.testing.assert_close(logits[rows], ref_logits[rows], atol=2e-4, rtol=1e-4)
    assert torch.equal(tokens, ref_tokens)
    assert any(tq == 1 for tq, *_ in seen) and any(tq > 1 for tq, *_ in seen)  # prefill and cached decode
    assert all(padded for tq, *_, padded in seen if tq > 1)  # the left-padded prefill reached it as a mask
    if kind in ("mistral", "gemma2", "gemma3"):
        assert any(w is not None for _, _, w, _, _ in seen)
    if kind == "gemma2":
        assert all(c == 5.0 for _, _, _, c, _ in seen)


def test_compiled_route_does_not_recompile_when_only_values_change():
    """Strengths and spans are read from captured tensors: a new bias, key scale or span on the same
    shapes reuses the compiled kernel."""
    from torch._dynamo.utils import counters

    case = dict(covering_cases()[0], dtype=torch.float32, tq=7, target=None, bias=1.5, key_scale=3.0)
    inp = build_inputs(case)
    flex.steered_attention(inp["q"], inp["k"], inp["v"], _args(inp), compiled=True)
    before = counters["stats"]["unique_graphs"]
    for bias, ks, seed in ((2.5, 2.0, 1), (-1.0, 7.0, 2)):
        other = build_inputs(dict(case, bias=bias, key_scale=ks), seed=seed)
        out, _ = flex.steered_attention(other["q"], other["k"], other["v"], _args(other), compiled=True)
        ref = _reference(other)
        assert (out.double() - ref.double()).abs().max().item() <= _tolerance(other, ref)
    assert counters["stats"]["unique_graphs"] == before
