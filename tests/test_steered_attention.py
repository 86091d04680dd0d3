"""steered_attention (fused kernel) against the float64 reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import attnsteer
from attnsteer.ops import OpArgs, fallback, reference
from conftest import to_device

from cases import build_inputs, case_id, covering_cases, max_scale, per_head_tensor, product_cases


def _reference(inp, **extra):
    q, k, v, span = inp["q"], inp["k"], inp["v"], inp["span_mask"]
    kw = dict(inp["kwargs"])
    B, Hq = q.shape[0], q.shape[1]
    bias = per_head_tensor(kw.pop("bias"), B, Hq)
    ks = per_head_tensor(kw.pop("key_scale"), B, Hq)
    return reference.steered_attention(q, k, v, span.double(), bias, ks, **kw, **extra)


def _tolerance(inp, ref64):
    """fp32: scaled absolute tolerance. bf16/fp16: within 2x (+ eps) of PyTorch's own
    low-precision error against the fp64 reference (flash-attention's rule)."""
    kw = inp["kwargs"]
    amp = max(1.0, max_scale(kw["key_scale"]) / 4, max_scale(kw["bias"]) / 10)
    if inp["q"].dtype == torch.float32:
        return 2e-5 * amp
    lowp = _reference(inp, compute_dtype=torch.float32).to(inp["q"].dtype)
    own_err = (lowp.double() - ref64.double()).abs().max().item()
    # + one unit in the last place of the output dtype: the final rounding of out alone.
    ulp = torch.finfo(inp["q"].dtype).eps * max(1.0, ref64.abs().max().item())
    return 2 * own_err + ulp * amp


def _check(case, seed=0, device="cpu", route=None):
    inp = build_inputs(case, seed)
    d = to_device(inp, device)
    out = attnsteer.steered_attention(
        d["q"], d["k"], d["v"], d["span_mask"], enable_gqa=True, route=route, **d["kwargs"]
    ).cpu()
    ref = _reference(inp)
    assert out.shape == inp["q"].shape and out.dtype == inp["q"].dtype
    assert torch.isfinite(out).all()
    err = (out.double() - ref.double()).abs().max().item()
    tol = _tolerance(inp, ref)
    assert err <= tol, f"max abs error {err:.3g} > {tol:.3g}"
    return inp, out


# None: the route attnsteer chooses (CPU: the C++ kernel; CUDA: pieces / FlexAttention / kernel);
# "flex": FlexAttention forced (ops/flex.py), the same cases and tolerance rule.
@pytest.mark.parametrize("route", [None, "flex"], ids=["auto", "flex"])
@pytest.mark.parametrize("case", covering_cases(), ids=case_id)
def test_covering_set(case, device, route):
    _check(case, device=device, route=route)


@pytest.mark.slow
@pytest.mark.parametrize("case", product_cases(), ids=case_id)
def test_full_product(case):
    _check(case)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window", [None, 1, 16])
@pytest.mark.parametrize("softcap", [None, 5.0])
@pytest.mark.parametrize("target", [None, 0.3])
@pytest.mark.parametrize("route", [None, "flex"], ids=["auto", "flex"])
def test_mask_and_softcap_grid(causal, window, softcap, target, device, route):
    case = dict(
        dtype=torch.float32,
        batch=2,
        group=2,
        tq=33,
        head_dim=64,
        causal=causal,
        window=window,
        softcap=softcap,
        padding="bool",
        span="several",
        bias=2.0,
        key_scale=2.0,
        target=target,
        query_mask=False,
    )
    _check(case, device=device, route=route)


@pytest.mark.parametrize("tk", [255, 256, 257, 2048, 3000])
@pytest.mark.parametrize("target", [None, 0.3])
def test_decode_key_splits(tk, target):
    """Tq=1, B=1, 3 KV heads: the kernel splits keys across threads and merges the states."""
    case = dict(
        dtype=torch.float32,
        batch=1,
        group=3,
        tq=1,
        head_dim=64,
        causal=True,
        window=None,
        softcap=None,
        padding=None,
        span="start",
        bias=1.0,
        key_scale=1.0,
        target=target,
        query_mask=False,
    )
    inp = build_inputs(case)
    k = torch.randn(1, 3, tk, 64)
    v = torch.randn(1, 3, tk, 64)
    q = torch.randn(1, 9, 1, 64)
    span = torch.zeros(1, tk, dtype=torch.bool)
    span[0, 10:300] = True
    inp.update(q=q, k=k, v=v, span_mask=span)
    out, mass = attnsteer.steered_attention(q, k, v, span, enable_gqa=True, return_span_mass=True, **inp["kwargs"])
    ref, ref_mass = _reference(inp, return_span_mass=True)
    assert (out.double() - ref).abs().max() < 2e-5
    assert (mass.double() - ref_mass).abs().max() < 2e-5


@pytest.mark.parametrize("tq", [1, 64, 257])
def test_equals_sdpa_when_neutral(tq):
    """bias=0, key_scale=1, no target: torch's SDPA within float tolerance (Tq = Tk causal,
    and Tq < Tk through an explicit bottom-right mask)."""
    q = torch.randn(2, 6, tq, 64)
    k = torch.randn(2, 2, tq, 64)
    v = torch.randn(2, 2, tq, 64)
    span = torch.rand(2, tq) < 0.3
    ours = attnsteer.steered_attention(q, k, v, span, is_causal=True, enable_gqa=True)
    sdpa = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    torch.testing.assert_close(ours, sdpa, atol=2e-6, rtol=1e-5)
    # decode-shaped: Tq=3 queries against Tk = tq + 3 keys
    kk = torch.randn(2, 2, tq + 3, 64)
    vv = torch.randn(2, 2, tq + 3, 64)
    qq = torch.randn(2, 6, 3, 64)
    span = torch.rand(2, tq + 3) < 0.3
    mask = torch.ones(3, tq + 3, dtype=torch.bool).tril(diagonal=tq)
    ours = attnsteer.steered_attention(qq, kk, vv, span, is_causal=True, enable_gqa=True)
    sdpa = F.scaled_dot_product_attention(qq, kk, vv, attn_mask=mask, enable_gqa=True)
    torch.testing.assert_close(ours, sdpa, atol=2e-6, rtol=1e-5)


def test_bias_equals_sdpa_with_additive_mask():
    q, k, v = torch.randn(1, 4, 50, 32), torch.randn(1, 4, 50, 32), torch.randn(1, 4, 50, 32)
    span = torch.zeros(1, 50, dtype=torch.bool)
    span[0, 5:20] = True
    mask = torch.ones(50, 50, dtype=torch.bool).tril()
    add = torch.zeros(1, 1, 50, 50).masked_fill(~mask, float("-inf")) + 1.7 * span[:, None, None, :]
    ours = attnsteer.steered_attention(q, k, v, span, bias=1.7, is_causal=True)
    torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v, attn_mask=add), atol=2e-6, rtol=1e-5)


def test_target_moves_mass_to_rule():
    """SpotLight's rule: mass p < tau becomes tau / (tau + 1 - p); exact form gives tau."""
    q, k, v = torch.randn(1, 2, 9, 32), torch.randn(1, 2, 40, 32), torch.randn(1, 2, 40, 32)
    span = torch.zeros(1, 40, dtype=torch.bool)
    span[0, :4] = True
    _, p = attnsteer.steered_attention(q, k, v, span, return_span_mass=True)
    _, w = attnsteer.steered_attention(q, k, v, span, target=0.9, return_span_mass=True)
    _, w_exact = attnsteer.steered_attention(q, k, v, span, target=0.9, target_exact=True, return_span_mass=True)
    expect = torch.where((p > 0) & (p < 0.9), 0.9 / (0.9 + 1 - p), p)
    torch.testing.assert_close(w, expect, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(w_exact, torch.full_like(p, 0.9), atol=1e-6, rtol=1e-5)


def test_fully_masked_rows_are_zero_not_nan():
    q, k, v = torch.randn(2, 2, 5, 32), torch.randn(2, 2, 8, 32), torch.randn(2, 2, 8, 32)
    span = torch.ones(2, 8, dtype=torch.bool)
    mask = torch.ones(2, 1, 5, 8, dtype=torch.bool)
    mask[1, :, 2] = False  # row 2 of batch 1 sees nothing
    for target in (None, 0.5):
        out = attnsteer.steered_attention(q, k, v, span, bias=3.0, attn_mask=mask, target=target)
        assert torch.isfinite(out).all()
        assert (out[1, :, 2] == 0).all()
        assert (out[0, :, 2] != 0).any()
    # Tk < Tq with causal alignment: the first rows see no key at all
    out = attnsteer.steered_attention(
        torch.randn(1, 1, 6, 16),
        torch.randn(1, 1, 3, 16),
        torch.randn(1, 1, 3, 16),
        torch.ones(1, 3, dtype=torch.bool),
        is_causal=True,
    )
    assert (out[0, 0, :3] == 0).all() and torch.isfinite(out).all()


def test_query_mask_rows_are_unsteered():
    q, k, v = torch.randn(2, 4, 12, 32), torch.randn(2, 2, 12, 32), torch.randn(2, 2, 12, 32)
    span = torch.rand(2, 12) < 0.5
    qm = torch.zeros(2, 12, dtype=torch.bool)
    qm[:, 6:] = True
    steered = attnsteer.steered_attention(
        q, k, v, span, bias=3.0, key_scale=2.0, target=0.7, query_mask=qm, is_causal=True, enable_gqa=True
    )
    plain = attnsteer.steered_attention(q, k, v, span, is_causal=True, enable_gqa=True)
    full = attnsteer.steered_attention(
        q, k, v, span, bias=3.0, key_scale=2.0, target=0.7, is_causal=True, enable_gqa=True
    )
    torch.testing.assert_close(steered[:, :, :6], plain[:, :, :6])
    torch.testing.assert_close(steered[:, :, 6:], full[:, :, 6:])
    assert (steered[:, :, 6:] - plain[:, :, 6:]).abs().max() > 1e-3


def test_large_bias_and_key_scale_do_not_overflow():
    q, k, v = torch.randn(1, 2, 16, 64) * 4, torch.randn(1, 2, 16, 64) * 4, torch.randn(1, 2, 16, 64)
    span = torch.zeros(1, 16, dtype=torch.bool)
    span[0, 3] = True
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        out = attnsteer.steered_attention(q.to(dtype), k.to(dtype), v.to(dtype), span, bias=30.0, key_scale=100.0)
        assert torch.isfinite(out).all()


def test_noncontiguous_inputs():
    """HF passes q as a transposed view (B, T, H, D) -> (B, H, T, D)."""
    q = torch.randn(2, 20, 6, 32).transpose(1, 2)
    k = torch.randn(2, 20, 2, 32).transpose(1, 2)
    v = torch.randn(2, 20, 2, 32).transpose(1, 2)
    span = torch.rand(2, 20) < 0.4
    out = attnsteer.steered_attention(q, k, v, span, bias=1.0, is_causal=True, enable_gqa=True)
    ref = attnsteer.steered_attention(
        q.contiguous(), k.contiguous(), v.contiguous(), span, bias=1.0, is_causal=True, enable_gqa=True
    )
    torch.testing.assert_close(out, ref)


def test_empty_shapes():
    out = attnsteer.steered_attention(
        torch.randn(1, 2, 0, 16), torch.randn(1, 2, 4, 16), torch.randn(1, 2, 4, 16), torch.ones(1, 4, dtype=torch.bool)
    )
    assert out.shape == (1, 2, 0, 16)
    out = attnsteer.steered_attention(
        torch.randn(1, 2, 3, 16), torch.randn(1, 2, 0, 16), torch.randn(1, 2, 0, 16), torch.ones(1, 0, dtype=torch.bool)
    )
    assert out.shape == (1, 2, 3, 16) and (out == 0).all()


@pytest.mark.parametrize("case", covering_cases()[:6], ids=case_id)
def test_blocked_fallback_matches_reference(case):
    """The no-extension path (query-chunked PyTorch) against the float64 oracle."""
    inp = build_inputs(case)
    q, k, v = inp["q"], inp["k"], inp["v"]
    kw = dict(inp["kwargs"])
    B, Hq, Tq, D = q.shape
    bias = per_head_tensor(kw.pop("bias"), B, Hq).float()
    ks = per_head_tensor(kw.pop("key_scale"), B, Hq).float()
    qm = kw.pop("query_mask", None)
    am = kw.pop("attn_mask", None)
    args = OpArgs(
        span_weights=inp["span_mask"].float(),
        bias=bias,
        key_scale=ks,
        target=kw["target"],
        query_mask=qm,
        attn_mask=am,
        is_causal=kw["is_causal"],
        window=kw["window"],
        softcap=kw["softcap"],
    )
    out, _ = fallback.steered_attention(q, k, v, args)
    ref = _reference(inp)
    assert (out.double() - ref.double()).abs().max().item() <= _tolerance(inp, ref)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    B=st.integers(1, 3),
    Hkv=st.integers(1, 3),
    G=st.integers(1, 4),
    Tq=st.integers(1, 70),
    extra=st.integers(0, 300),
    D=st.sampled_from([8, 16, 40, 64]),
    causal=st.booleans(),
    bias=st.floats(-5, 10),
    ks=st.floats(0.25, 20),
    target=st.sampled_from([None, 0.05, 0.3, 0.9]),
    span_p=st.floats(0, 1),
    seed=st.integers(0, 2**16),
)
def test_property_shapes(B, Hkv, G, Tq, extra, D, causal, bias, ks, target, span_p, seed):
    gen = torch.Generator().manual_seed(seed)
    Tk = Tq + extra
    q = torch.randn(B, Hkv * G, Tq, D, generator=gen)
    k = torch.randn(B, Hkv, Tk, D, generator=gen)
    v = torch.randn(B, Hkv, Tk, D, generator=gen)
    span = torch.rand(B, Tk, generator=gen) < span_p
    out, mass = attnsteer.steered_attention(
        q, k, v, span, bias=bias, key_scale=ks, target=target, is_causal=causal, enable_gqa=True, return_span_mass=True
    )
    ref, ref_mass = reference.steered_attention(
        q,
        k,
        v,
        span.double(),
        torch.full((B, Hkv * G), bias),
        torch.full((B, Hkv * G), ks),
        target=target,
        is_causal=causal,
        return_span_mass=True,
    )
    tol = 2e-5 * max(1.0, ks / 4, abs(bias) / 10)
    assert (out.double() - ref).abs().max().item() <= tol
    assert (mass.double() - ref_mass).abs().max().item() <= tol


_BF16_CHECK = """
import torch, attnsteer
from attnsteer import _C
from cases import build_inputs, covering_cases
worst = 0.0
for case in covering_cases():
    if case["dtype"] != torch.bfloat16:
        continue
    inp = build_inputs(case, 3)
    q, k, v, span = inp["q"], inp["k"], inp["v"], inp["span_mask"]
    got = attnsteer.steered_attention(q, k, v, span, enable_gqa=True, **inp["kwargs"])
    wide = attnsteer.steered_attention(q.float(), k.float(), v.float(), span, enable_gqa=True, **inp["kwargs"])
    ulp = 2.0**-7 * wide.abs().clamp_min(2.0**-6)
    worst = max(worst, ((got.float() - wide) / ulp).abs().max().item())
print(_C.cpu_bf16_gemm(), worst)
"""


@pytest.mark.parametrize("gemm", ["1", "0"], ids=["bf16-gemm", "widened"])
def test_cpu_bfloat16_path_matches_the_float32_one(gemm, tmp_path):
    """bfloat16 q / k / v on the CPU are read as they are (bfloat16 GEMMs, P split into hi + lo parts)
    instead of widened to float32 copies: over every covering case (GQA, causal / decode shapes, padding,
    windows, soft-capping, targets, empty and full spans) the output is within one bfloat16 rounding
    (plus one for the final cast) of the kernel run on the same values in float32. With
    ATTNSTEER_CPU_BF16_GEMM=0 (or a BLAS without a bfloat16 GEMM) each block is widened instead, same rule."""
    import os
    import subprocess
    import sys

    from attnsteer import _C

    if gemm == "1" and not _C.cpu_bf16_gemm():
        pytest.skip("this torch's BLAS has no bfloat16 GEMM")
    env = dict(os.environ, ATTNSTEER_CPU_BF16_GEMM=gemm, PYTHONPATH=os.path.dirname(__file__))
    res = subprocess.run([sys.executable, "-c", _BF16_CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    used, worst = res.stdout.split()
    assert used == ("True" if gemm == "1" else "False")
    assert float(worst) <= 2.0, f"bfloat16 path off the float32 one by {worst} units in the last place"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_broadcast_and_strided_keys_and_values(dtype, device):
    """Keys and values in any layout with a contiguous last dimension: a key broadcast over positions
    (stride 0, which BLAS refuses as a leading dimension: the op copies it), values viewed from a
    (B, T, Hkv, D) tensor, and a one-key cache whose position stride is 1 — against the float64 reference."""
    g = torch.Generator().manual_seed(5)
    B, Hq, Hkv, T, D = 2, 4, 2, 37, 64
    span = torch.zeros(B, T, dtype=torch.bool)
    span[:, 3:9] = True
    q = torch.randn(B, Hq, T, D, generator=g).to(dtype)
    layouts = {
        "broadcast key": (
            torch.randn(B, Hkv, 1, D, generator=g).to(dtype).expand(B, Hkv, T, D),
            torch.randn(B, T, Hkv, D, generator=g).to(dtype).transpose(1, 2),
        ),
        "one key": (
            torch.randn(B, Hkv, D, 1, generator=g).to(dtype).transpose(2, 3),
            torch.randn(B, Hkv, D, 1, generator=g).to(dtype).transpose(2, 3),
        ),
    }
    for name, (k, v) in layouts.items():
        Tk = k.shape[2]
        s = span if Tk == T else torch.ones(B, Tk, dtype=torch.bool)
        qq = q if Tk == T else q[:, :, -1:]
        inp = {"q": qq, "k": k.contiguous(), "v": v.contiguous(), "span_mask": s,
               "kwargs": dict(bias=2.0, key_scale=1.0, is_causal=True, window=None, softcap=None, target=None)}  # fmt: skip
        d = to_device({"q": qq, "k": k, "v": v, "s": s}, device)
        out = attnsteer.steered_attention(d["q"], d["k"], d["v"], d["s"], bias=2.0, is_causal=True, enable_gqa=True)
        ref = _reference(inp)
        err = (out.cpu().double() - ref).abs().max().item()
        assert err <= _tolerance(inp, ref), f"{name}: max abs error {err:.3g}"
