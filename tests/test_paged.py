"""The paged fused op (ops/paged.py) equals the dense fused op on each request's gathered keys
— and the float64 reference — for a packed step of mixed requests: a whole prefill, a prefill
chunk after cached tokens, decode tokens; K stored transposed per block (vLLM's CPU vector
layout) or row-major; fp32 and bf16 caches; every steering mode."""

from __future__ import annotations

import math

import pytest
import torch

import attnsteer
from attnsteer.ops import reference
from attnsteer.ops.paged import steered_attention_paged

pytestmark = pytest.mark.skipif(attnsteer.backend() == "torch", reason="compiled extension not built")

BS = 16


def _step(dtype, k_transposed, seed=0, Hq=6, Hkv=2, D=32, BS=BS, reqs=((37, 37), (50, 30), (23, 1), (64, 1))):
    """Requests (keys L, query tokens n): by default a prefill, a chunk after 20 cached tokens, two
    decodes."""
    g = torch.Generator().manual_seed(seed)
    reqs = list(reqs)
    R = len(reqs)
    nblocks = [math.ceil(L / BS) for L, _ in reqs]
    total = sum(nblocks) + 3
    perm = torch.randperm(total, generator=g).tolist()
    kc = torch.zeros(total, Hkv, BS, D, dtype=dtype)
    vc = torch.zeros(total, Hkv, BS, D, dtype=dtype)
    table = torch.zeros(R, max(nblocks), dtype=torch.int32)
    ks, vs, qs, spans = [], [], [], []
    used = 0
    for r, (L, n) in enumerate(reqs):
        k = torch.randn(Hkv, L, D, generator=g).to(dtype)
        v = torch.randn(Hkv, L, D, generator=g).to(dtype)
        for jb in range(nblocks[r]):
            phys = perm[used]
            used += 1
            table[r, jb] = phys
            t = min(BS, L - jb * BS)
            kb = k[:, jb * BS : jb * BS + t]  # (Hkv, t, D)
            if k_transposed:
                region = kc[phys].view(Hkv, D, BS)  # the same memory read as [D][BS]
                region[:, :, :t] = kb.transpose(1, 2)
            else:
                kc[phys, :, :t] = kb
            vc[phys, :, :t] = v[:, jb * BS : jb * BS + t]
        ks.append(k)
        vs.append(v)
        qs.append(torch.randn(n, Hq, D, generator=g).to(dtype))
        span = torch.zeros(L)
        span[3:9] = 1.0
        span[L // 2 : L // 2 + 4] = 2.0
        spans.append(span)
    S = max(L for L, _ in reqs)
    span_w = torch.zeros(R, S)
    for r, (L, _) in enumerate(reqs):
        span_w[r, :L] = spans[r]
    qsl = torch.tensor([0] + [sum(n for _, n in reqs[: r + 1]) for r in range(R)], dtype=torch.int32)
    lens = torch.tensor([L for L, _ in reqs], dtype=torch.int32)
    return dict(
        reqs=reqs, kc=kc, vc=vc, table=table, lens=lens, qsl=qsl, span_w=span_w, ks=ks, vs=vs, qs=qs, spans=spans, Hq=Hq
    )


MODES = {
    "bias": dict(bias=1.5),
    "key_scale": dict(key_scale=4.0),
    "target": dict(target=0.4),
    "query_mask": dict(bias=2.0, query_mask=True),
    "window": dict(bias=1.0, window=9),
    "softcap": dict(bias=1.0, softcap=5.0),
    "per_request": dict(bias="per_request"),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("k_transposed", [True, False], ids=["kT", "k"])
@pytest.mark.parametrize("mode", list(MODES))
def test_paged_equals_dense_per_request(dtype, k_transposed, mode):
    _check_against_dense(_step(dtype, k_transposed), dtype, k_transposed, mode)


# Shapes that reach every path of the CPU micro-kernels: head dims of 4 x 16 lanes, of one
# vector plus a scalar tail and below one vector; blocks of 128 (vLLM's CPU default), 48 and
# 5 keys (vector and scalar column tails); 1 to 5 query rows per kv head (row remainders).
SHAPES = {
    "D64_bs128_G3": dict(Hq=9, Hkv=3, D=64, BS=128, reqs=((300, 300), (1012, 1), (130, 2))),
    "D40_bs48_G5": dict(Hq=10, Hkv=2, D=40, BS=48, reqs=((97, 97), (200, 1), (61, 13))),
    "D8_bs5_G1": dict(Hq=2, Hkv=2, D=8, BS=5, reqs=((23, 23), (11, 1))),
    "D80_bs64_G2": dict(Hq=4, Hkv=2, D=80, BS=64, reqs=((150, 150), (70, 1))),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("mode", ["bias", "target"])
def test_paged_kernel_shapes(dtype, shape, mode):
    _check_against_dense(_step(dtype, True, seed=3, **SHAPES[shape]), dtype, True, mode)


def _check_against_dense(st, dtype, k_transposed, mode):
    R, Hq = len(st["reqs"]), st["Hq"]
    kw = dict(MODES[mode])
    g = torch.Generator().manual_seed(1)
    bias = torch.full((R, Hq), float(kw.pop("bias", 0.0))) if kw.get("bias") != "per_request" else None
    if bias is None:
        kw.pop("bias")
        bias = torch.randn(R, Hq, generator=g)
    key_scale = torch.full((R, Hq), float(kw.pop("key_scale", 1.0)))
    qmask = None
    if kw.pop("query_mask", False):
        qmask = torch.rand(int(st["qsl"][-1]), generator=g) < 0.5
    q = torch.cat(st["qs"])
    out, mass = steered_attention_paged(
        q,
        st["kc"],
        st["vc"],
        st["table"],
        st["lens"],
        st["qsl"],
        st["span_w"],
        bias,
        key_scale,
        k_transposed=k_transposed,
        query_mask=qmask,
        return_span_mass=True,
        **kw,
    )
    assert out.shape == q.shape and out.dtype == dtype
    for r, (L, n) in enumerate(st["reqs"]):
        rows = slice(int(st["qsl"][r]), int(st["qsl"][r + 1]))
        qr = st["qs"][r].transpose(0, 1)[None]  # (1, Hq, n, D)
        kr, vr = st["ks"][r][None], st["vs"][r][None]
        qm = None if qmask is None else qmask[rows][None]
        dense, dmass = attnsteer.steered_attention(
            qr,
            kr,
            vr,
            st["spans"][r],
            bias=bias[r],
            key_scale=key_scale[r],
            query_mask=qm,
            is_causal=True,
            enable_gqa=True,
            return_span_mass=True,
            **kw,
        )
        ref = reference.steered_attention(
            qr,
            kr,
            vr,
            st["spans"][r][None].double(),
            bias[r : r + 1].double(),
            key_scale[r : r + 1].double(),
            query_mask=qm,
            is_causal=True,
            **kw,
        )
        got = out[rows].transpose(0, 1)[None]
        tol = 2e-5 if dtype == torch.float32 else 2e-2
        assert (got.double() - dense.double()).abs().max().item() <= tol, f"request {r} (L={L}, n={n})"
        assert (got.double() - ref.double()).abs().max().item() <= 2 * tol + 1e-6
        assert (mass[rows].T[None].double() - dmass.double()).abs().max().item() <= max(tol, 1e-5)


def test_paged_errors_name_the_argument():
    st = _step(torch.float32, True)
    q = torch.cat(st["qs"])
    R, Hq = len(st["reqs"]), st["Hq"]
    args = (
        q,
        st["kc"],
        st["vc"],
        st["table"],
        st["lens"],
        st["qsl"],
        st["span_w"],
        torch.zeros(R, Hq),
        torch.ones(R, Hq),
    )
    with pytest.raises(RuntimeError, match=r"bias must be \(R, Hq\)"):
        steered_attention_paged(*args[:7], torch.zeros(R, Hq + 1), args[8])
    with pytest.raises(RuntimeError, match=r"request 0 needs 3 blocks but block_table has 2"):
        steered_attention_paged(*args[:3], st["table"][:, :2], *args[4:])
    with pytest.raises(RuntimeError, match="query_start_loc must run from 0 to N"):
        steered_attention_paged(q[:-1], *args[1:])
    with pytest.raises(RuntimeError, match=r"query heads \(6\) must be a multiple"):
        steered_attention_paged(
            q,
            st["kc"][:, :1].expand(-1, 4, -1, -1).contiguous(),
            st["vc"][:, :1].expand(-1, 4, -1, -1).contiguous(),
            *args[3:],
        )
