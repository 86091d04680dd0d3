"""lowrank_edit_ (SEKA / PRISM-Δ key and value editing) against the float64 reference: dtypes,
ranks, float span weights, empty and full spans, cache views, odd sizes; errors."""

from __future__ import annotations

import pytest
import torch

import attnsteer
from attnsteer.ops import lowrank_edit_, reference

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _inputs(B, H, T, D, R, span_kind, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, H, T, D, generator=g)
    a = torch.randn(H, D, R, generator=g) * 0.3
    b = torch.randn(H, D, R, generator=g) * 0.3
    span = torch.zeros(B, T)
    if span_kind == "full":
        span[:] = 1
    elif span_kind == "some":
        for i in range(B):
            span[i, i : i + max(1, T // 3)] = 1
    elif span_kind == "levels":
        span = torch.tensor([0.0, 0.5, 1.0, 2.0])[torch.randint(0, 4, (B, T), generator=g)]
    return x, span if span_kind == "levels" else span.bool(), a, b


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "B, H, T, D, R, span_kind",
    [
        (2, 3, 37, 80, 4, "some"),
        (1, 2, 1, 64, 1, "full"),
        (3, 1, 129, 128, 24, "levels"),
        (2, 2, 9, 33, 7, "empty"),
        (1, 4, 5, 16, 0, "full"),
    ],  # fmt: skip
)
def test_lowrank_edit_equals_the_reference(dtype, B, H, T, D, R, span_kind, device):
    x, span, a, b = _inputs(B, H, T, D, R, span_kind)
    x = x.to(dtype)
    expected = reference.lowrank_edit_(x.clone(), span, a, b)
    xd = x.to(device)
    out = lowrank_edit_(xd, span.to(device), a.to(device), b.to(device))
    assert out is xd
    got = xd.cpu()
    if dtype == torch.float32:
        torch.testing.assert_close(got, expected, atol=2e-5 * max(1, R**0.5), rtol=1e-5)
    else:  # one rounding of the same float value: at most one unit in the last place apart
        ulp = torch.finfo(dtype).eps * expected.double().abs().clamp_min(1.0)
        assert ((got.double() - expected.double()).abs() <= ulp).all()
    rest = (span == 0)[:, None, :, None].expand_as(x)
    assert torch.equal(got[rest], x[rest])  # rows outside the span are untouched, bit for bit


def test_lowrank_edit_on_a_cache_view_and_projector_identity():
    """A view of a cache (non-contiguous) is edited in place; with an orthonormal U and a = g·U,
    b = U the edit is k + g·P k, P = U Uᵀ."""
    x, span, _, _ = _inputs(2, 2, 20, 32, 3, "some")
    big = torch.randn(2, 2, 25, 32)
    big[:, :, 3:23] = x
    U = torch.linalg.qr(torch.randn(2, 32, 3)).Q
    lowrank_edit_(big[:, :, 3:23], span, 2.0 * U, U)
    P = U @ U.transpose(-1, -2)
    want = torch.where(span[:, None, :, None], x + 2.0 * torch.einsum("hde,bhte->bhtd", P, x), x)
    torch.testing.assert_close(big[:, :, 3:23], want, atol=1e-5, rtol=1e-5)


def test_lowrank_edit_errors_name_the_fix():
    x = torch.randn(1, 2, 5, 8)
    span = torch.ones(1, 5, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"a must be \(H, D, R\) = \(2, 8, R\)"):
        lowrank_edit_(x, span, torch.randn(3, 8, 2), torch.randn(3, 8, 2))
    with pytest.raises(ValueError, match="share the rank"):
        lowrank_edit_(x, span, torch.randn(2, 8, 2), torch.randn(2, 8, 3))
    with pytest.raises(ValueError, match="finite"):
        lowrank_edit_(x, span, torch.full((2, 8, 1), float("nan")), torch.randn(2, 8, 1))
    with pytest.raises(ValueError, match="span_mask must be"):
        lowrank_edit_(x, torch.ones(1, 4, dtype=torch.bool), torch.randn(2, 8, 1), torch.randn(2, 8, 1))
    with pytest.raises(RuntimeError, match="inference-only"):
        lowrank_edit_(x, span, torch.randn(2, 8, 1, requires_grad=True), torch.randn(2, 8, 1))


@pytest.mark.skipif(attnsteer.backend() == "torch", reason="compiled extension not built")
def test_lowrank_edit_opcheck():
    x, span, a, b = _inputs(2, 2, 7, 16, 3, "levels")
    torch.library.opcheck(torch.ops.attnsteer.lowrank_edit_.default, (x, span.float(), a, b))
