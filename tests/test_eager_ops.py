"""span_bias, steered_softmax and scale_keys_ against the reference; op registration."""

from __future__ import annotations

import pytest
import torch

import attnsteer
from attnsteer.ops import OpArgs, reference
from conftest import to_device

from cases import build_inputs, case_id, covering_cases, max_scale, per_head_tensor

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.mark.parametrize("case", covering_cases(), ids=case_id)
def test_steered_softmax_covering(case, device):
    if case["tq"] > 100:
        case = dict(case, tq=97)
    inp = build_inputs(case)
    q, k = inp["q"], inp["k"]
    B, Hq, Tq, D = q.shape
    G = Hq // k.shape[1]
    logits = (q.double() @ k.double().repeat_interleave(G, 1).transpose(-1, -2) / D**0.5).to(q.dtype)
    kw = dict(inp["kwargs"])
    out = attnsteer.steered_softmax(logits.to(device), inp["span_mask"].to(device), **to_device(kw, device)).cpu()
    bias = per_head_tensor(kw.pop("bias"), B, Hq)
    ks = per_head_tensor(kw.pop("key_scale"), B, Hq)
    ref = reference.steered_softmax(logits.double(), inp["span_mask"].double(), bias, ks, **kw)
    assert out.dtype == logits.dtype and out.shape == logits.shape
    tol = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}[q.dtype]
    tol *= max(1.0, max_scale(inp["kwargs"]["key_scale"]) / 4, max_scale(inp["kwargs"]["bias"]) / 10)
    assert (out.double() - ref).abs().max().item() <= tol
    # rows sum to one (or zero when fully masked)
    sums = out.double().sum(-1)
    assert torch.all(((sums - 1).abs() < 5e-2) | (sums == 0))


def test_steered_softmax_matches_fused_attention():
    q, k, v = torch.randn(2, 4, 30, 32), torch.randn(2, 2, 30, 32), torch.randn(2, 2, 30, 32)
    span = torch.rand(2, 30) < 0.3
    for kw in (dict(bias=2.0), dict(key_scale=4.0), dict(target=0.6), dict(bias=1.0, softcap=3.0, window=9)):
        logits = q @ k.repeat_interleave(2, 1).transpose(-1, -2) / 32**0.5
        a = attnsteer.steered_softmax(logits, span, is_causal=True, **kw)
        fused = attnsteer.steered_attention(q, k, v, span, is_causal=True, enable_gqa=True, **kw)
        torch.testing.assert_close(a @ v.repeat_interleave(2, 1), fused, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("with_query_mask", [False, True])
@pytest.mark.parametrize("span_kind", ["bool", "float", "empty", "full"])
def test_span_bias(with_query_mask, span_kind, device):
    B, H, Tq, Tk = 3, 5, 4, 11
    if span_kind == "bool":
        span = torch.rand(B, Tk) < 0.4
    elif span_kind == "float":
        span = torch.tensor([0.0, 0.5, 1.0, 2.0])[torch.randint(0, 4, (B, Tk))]
    else:
        span = torch.full((B, Tk), span_kind == "full")
    bias = torch.randn(B, H)
    qm = torch.rand(B, Tq) < 0.5 if with_query_mask else None
    for dtype in DTYPES:
        out = attnsteer.span_bias(span.to(device), bias.to(device), query_mask=to_device(qm, device), dtype=dtype).cpu()
        ref = reference.span_bias(span, bias, query_mask=qm, dtype=dtype)
        assert out.shape == ((B, H, Tq, Tk) if with_query_mask else (B, H, 1, Tk)) and out.dtype == dtype
        torch.testing.assert_close(out, ref)
    # scalar and per-head bias broadcast to (B, H)
    assert attnsteer.span_bias(span, 2.0, num_heads=H).shape == (B, H, 1, Tk)
    assert attnsteer.span_bias(span, torch.arange(H).float()).shape == (B, H, 1, Tk)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("factor", [2.0, 100.0, "per_row"])
def test_scale_keys_(dtype, factor, device):
    B, H, T, D = 2, 3, 37, 80
    keys = torch.randn(B, H, T, D).to(dtype)
    span = torch.zeros(B, T, dtype=torch.bool)
    span[0, 3:9] = True
    span[1, 30:] = True
    fac = torch.rand(B, H) * 10 if factor == "per_row" else factor
    expected = reference.scale_keys_(keys.clone(), span, per_head_tensor(fac, B, H))
    keys, span_d, fac_d = keys.to(device), span.to(device), to_device(fac, device)
    out = attnsteer.scale_keys_(keys, span_d, fac_d)
    assert out is keys
    torch.testing.assert_close(keys.cpu(), expected, atol=0, rtol=0)
    # non-contiguous cache view
    big = torch.randn(B, H, T + 5, D).to(dtype)
    expected = reference.scale_keys_(big[:, :, 2 : T + 2].clone(), span, per_head_tensor(fac, B, H))
    big = big.to(device)
    view = big[:, :, 2 : T + 2]
    attnsteer.scale_keys_(view, span_d, fac_d)
    torch.testing.assert_close(view.cpu(), expected, atol=0, rtol=0)


def test_scale_keys_then_attention_equals_key_scale():
    """Scaling cached keys by alpha = key_scale alpha inside the op (power of two: exact)."""
    q, k, v = torch.randn(1, 4, 1, 64), torch.randn(1, 2, 50, 64), torch.randn(1, 2, 50, 64)
    span = torch.zeros(1, 50, dtype=torch.bool)
    span[0, 10:20] = True
    ops_path = attnsteer.steered_attention(q, k, v, span, key_scale=128.0, enable_gqa=True)
    k2 = attnsteer.scale_keys_(k.clone(), span, 128.0)
    cache_path = attnsteer.steered_attention(q, k2, v, span, enable_gqa=True)
    torch.testing.assert_close(ops_path, cache_path, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ registration, compile, autograd


def _sample_args():
    q, k, v = torch.randn(2, 4, 9, 16), torch.randn(2, 2, 12, 16), torch.randn(2, 2, 12, 16)
    span = (torch.rand(2, 12) < 0.5).float()
    bias, ks = torch.full((2, 4), 1.5), torch.full((2, 4), 2.0)
    return q, k, v, span, bias, ks


@pytest.mark.skipif(attnsteer.backend() == "torch", reason="compiled extension not built")
def test_opcheck():
    q, k, v, span, bias, ks = _sample_args()
    for target, causal in ((None, True), (0.5, False)):
        args = OpArgs(span, bias, ks, target=target, is_causal=causal, scale=0.25, return_span_mass=True)
        torch.library.opcheck(torch.ops.attnsteer.steered_attention.default, args.attention(q, k, v))
    logits = torch.randn(2, 4, 9, 12)
    args = OpArgs(span, bias, ks, target=0.5, is_causal=True, window=4)
    torch.library.opcheck(torch.ops.attnsteer.steered_softmax.default, args.softmax(logits))
    torch.library.opcheck(torch.ops.attnsteer.span_bias.default, (span, bias, None, 9, torch.float32))
    torch.library.opcheck(torch.ops.attnsteer.scale_keys_.default, (k.clone(), span, torch.full((2, 2), 3.0)))


@pytest.mark.skipif(attnsteer.backend() == "torch", reason="compiled extension not built")
def test_torch_compile():
    q, k, v, span, _, _ = _sample_args()

    def layer(q, k, v, span):
        return attnsteer.steered_attention(q * 2, k, v, span, bias=1.5, is_causal=True, enable_gqa=True) + 1

    compiled = torch.compile(layer, backend="eager", fullgraph=False)
    torch.testing.assert_close(compiled(q, k, v, span), layer(q, k, v, span))


def test_autograd_raises_inference_only():
    q, k, v, span, _, _ = _sample_args()
    q.requires_grad_(True)
    with pytest.raises(RuntimeError, match="inference-only"):
        attnsteer.steered_attention(q, k, v, span, enable_gqa=True)
    with torch.no_grad():
        attnsteer.steered_attention(q, k, v, span, enable_gqa=True)
    with pytest.raises(RuntimeError, match="inference-only"):
        attnsteer.steered_softmax(torch.randn(1, 1, 2, 2, requires_grad=True), torch.ones(1, 2, dtype=torch.bool))
