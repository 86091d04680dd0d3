"""The flash-pieces route (ops/pieces.py: split softmax over key ranges merged from flash's
log-sum-exp) against the float64 reference, on CPU's flash kernel; the same tolerance rule as
the fused kernels. On CUDA the same code runs on torch's CUDA flash kernel."""

from __future__ import annotations

import pytest
import torch

from attnsteer.ops import OpArgs, pieces
from conftest import to_device
from test_steered_attention import _reference, _tolerance

from cases import build_inputs, case_id, covering_cases


def _args(inp):
    q, k = inp["q"], inp["k"]
    B, Hq, Tq, _ = q.shape
    kw = dict(inp["kwargs"])
    return OpArgs.normalise(B, Hq, Tq, k.shape[2], q.device, span_mask=inp["span_mask"], return_span_mass=True, **kw)


def _route_case(c):
    """A covering case without what the route leaves to the fused kernel (padding, windows,
    softcap, per-head key scales, a query mask with key scaling)."""
    c = dict(c, window=None, softcap=None, padding=None)
    if c["key_scale"] in ("per_head", "per_row"):
        c["key_scale"] = 3.0
    if c["key_scale"] != 1.0:
        c["query_mask"] = False
    return c


CASES = [_route_case(c) for c in covering_cases()]
PIECES = 4096  # the tests lift the performance cap on ranges (random float weights: a range per key)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_pieces_equal_the_reference(case, device):
    if device == "cuda" and case["dtype"] == torch.float32:
        pytest.skip("torch's CUDA flash kernel takes fp16/bf16 only")
    inp = build_inputs(case)
    d = to_device(inp, device)
    args = _args(d)
    assert pieces.applicable(d["q"], args, max_pieces=PIECES)
    out, mass = pieces.steered_attention(d["q"], d["k"], d["v"], args)
    out, mass = out.cpu(), mass.cpu()
    ref, ref_mass = _reference(inp, return_span_mass=True)
    assert out.dtype == inp["q"].dtype and torch.isfinite(out).all()
    err, tol = (out.double() - ref.double()).abs().max().item(), _tolerance(inp, ref)
    assert err <= tol, f"max abs error {err:.3g} > {tol:.3g}"
    assert (mass.double() - ref_mass.double()).abs().max().item() <= max(tol, 1e-4)


@pytest.mark.parametrize("Tq, Tk", [(1, 40), (6, 40), (40, 40), (17, 40)])
@pytest.mark.parametrize("mode", ["bias", "key_scale", "target", "levels"])
def test_cache_offsets_and_markup_levels(Tq, Tk, mode):
    """Queries after a cache (bottom-right causality): ranges before the first query, straddling
    it and after it; GUIDE's levels as ranges with their own weight."""
    torch.manual_seed(0)
    B, Hq, Hkv, D = 2, 6, 2, 32
    q, k, v = torch.randn(B, Hq, Tq, D), torch.randn(B, Hkv, Tk, D), torch.randn(B, Hkv, Tk, D)
    span = torch.zeros(B, Tk)
    span[0, 3:9], span[0, 20:30], span[1, 30:40] = 1, 1, 1
    if mode == "levels":
        span[0, 20:25], span[1, 35:38] = 2, 0.5
    bias = torch.full((B, Hq), 1.5) if mode in ("bias", "levels") else torch.zeros(B, Hq)
    ks = torch.full((B, Hq), 3.0) if mode == "key_scale" else torch.ones(B, Hq)
    target = 0.4 if mode == "target" else None
    args = OpArgs(span, bias, ks, target=target, is_causal=True, return_span_mass=True)
    assert pieces.applicable(q, args)
    out, mass = pieces.steered_attention(q, k, v, args)
    ref, ref_mass = _reference_plain(q, k, v, span, bias, ks, target)
    assert (out.double() - ref).abs().max().item() < 2e-5
    assert (mass.double() - ref_mass).abs().max().item() < 2e-5


def _reference_plain(q, k, v, span, bias, ks, target):
    from attnsteer.ops import reference

    return reference.steered_attention(
        q, k, v, span.double(), bias.double(), ks.double(), target=target, is_causal=True, return_span_mass=True
    )


def test_what_the_route_leaves_to_the_kernel():
    q = torch.randn(1, 2, 4, 8)
    base = OpArgs(torch.tensor([[0.0, 1, 1, 0]]), torch.zeros(1, 2), torch.ones(1, 2), is_causal=True)
    assert pieces.applicable(q, base)
    assert not pieces.applicable(q, base.replace(attn_mask=torch.ones(1, 1, 1, 4, dtype=torch.bool)))
    assert not pieces.applicable(q, base.replace(window=2))
    assert not pieces.applicable(q, base.replace(softcap=5.0))
    assert not pieces.applicable(q, base.replace(key_scale=torch.tensor([[1.0, 2.0]])))  # per-head scales
    assert not pieces.applicable(
        q, base.replace(key_scale=torch.full((1, 2), 2.0), query_mask=torch.ones(1, 4, dtype=torch.bool))
    )
    many = OpArgs(torch.tensor([[0.0, 1] * 5]), torch.zeros(1, 2), torch.ones(1, 2))
    assert not pieces.applicable(q, many) and pieces.applicable(q, many, max_pieces=10)
    assert pieces.key_ranges(torch.tensor([0.0, 1, 1, 2, 0])) == [(0, 1, 0.0), (1, 3, 1.0), (3, 4, 2.0), (4, 5, 0.0)]
