"""Test-case generation shared by the op tests and the benchmarks.

A case is a dict of the dimensions the issue lists; `covering_cases()` returns a small set in
which every value of every dimension appears at least once (not the full product);
`product_cases()` the full product (slow marker).
"""

from __future__ import annotations

import itertools
from typing import Dict, List, Optional

import torch

DIMS: Dict[str, list] = {
    "dtype": [torch.float32, torch.bfloat16, torch.float16],
    "batch": [1, 2, 3],
    "group": [1, 2, 3, 4],
    "tq": [1, 7, 97, 1025],
    "head_dim": [32, 64, 80, 96, 128, 256],
    "causal": [True, False],
    "window": [None, 40],
    "softcap": [None, 30.0],
    "padding": [None, "bool", "float"],
    "span": ["empty", "full", "start", "end", "several", "float"],
    "bias": [0.0, 1.5, 30.0, "per_head", "per_row"],
    "key_scale": [1.0, 3.0, 100.0, "per_head", "per_row"],
    "target": [None, 0.05, 0.3, 0.9],
    "query_mask": [False, True],
}


def covering_cases(n: Optional[int] = None) -> List[dict]:
    """Cycle every dimension independently (co-prime-ish lengths mix the combinations)."""
    n = n or max(len(v) for v in DIMS.values()) * 2
    steps = (1, 7, 11, 13)  # co-prime with every dimension's length, so each cycles fully
    cases = []
    for i in range(n):
        case = {name: values[(i * steps[j % 4] + j) % len(values)] for j, (name, values) in enumerate(DIMS.items())}
        cases.append(case)
    for name, values in DIMS.items():  # assert coverage
        seen = {repr(c[name]) for c in cases}
        assert seen == {repr(v) for v in values}, (name, seen)
    return cases


def product_cases() -> List[dict]:
    """Full product of the shape dimensions (dtype, batch, group, tq, head_dim, causal) — with
    the steering dimensions cycled through it, so each shape meets every steering value."""
    shape_dims = ["dtype", "batch", "group", "tq", "head_dim", "causal"]
    rest = [nm for nm in DIMS if nm not in shape_dims]
    cases = []
    for i, combo in enumerate(itertools.product(*(DIMS[nm] for nm in shape_dims))):
        case = dict(zip(shape_dims, combo))
        for j, nm in enumerate(rest):
            case[nm] = DIMS[nm][(i * (2 * j + 1) + j) % len(DIMS[nm])]
        cases.append(case)
    return cases


def case_id(case: dict) -> str:
    short = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}
    return "-".join(f"{k}={short.get(v, v)}" for k, v in case.items())


def make_span(kind: str, B: int, Tk: int, gen: torch.Generator) -> torch.Tensor:
    span = torch.zeros(B, Tk)
    if kind == "full":
        span[:] = 1
    elif kind == "start":
        span[:, : max(1, Tk // 5)] = 1
    elif kind == "end":
        span[:, Tk - max(1, Tk // 5) :] = 1
    elif kind == "several":
        for b in range(B):  # a different span per row
            for start in range(b, Tk, 13):
                span[b, start : start + 3] = 1
    elif kind == "float":
        levels = torch.tensor([0.0, 0.5, 1.0, 2.0])
        span = levels[torch.randint(0, 4, (B, Tk), generator=gen)]
    return span if kind == "float" else span.bool()


def build_inputs(case: dict, seed: int = 0) -> dict:
    """Random inputs (never zeros) for a case; kwargs for attnsteer.steered_attention."""
    gen = torch.Generator().manual_seed(seed)
    B, G, Tq, D = case["batch"], case["group"], case["tq"], case["head_dim"]
    Hkv = 1 if Tq > 500 else 2
    Hq = Hkv * G
    Tk = Tq + (0 if Tq > 500 else 5 + Tq % 11)
    dtype = case["dtype"]
    q = torch.randn(B, Hq, Tq, D, generator=gen).to(dtype)
    k = torch.randn(B, Hkv, Tk, D, generator=gen).to(dtype)
    v = torch.randn(B, Hkv, Tk, D, generator=gen).to(dtype)
    kw = dict(is_causal=case["causal"], window=case["window"], softcap=case["softcap"], target=case["target"])
    span = make_span(case["span"], B, Tk, gen)
    bias = case["bias"]
    if bias == "per_head":
        bias = torch.linspace(-2.0, 4.0, Hq).tolist()
    elif bias == "per_row":
        bias = torch.rand(B, Hq, generator=gen) * 5
    ks = case["key_scale"]
    if ks == "per_head":
        ks = torch.linspace(0.5, 8.0, Hq).tolist()
    elif ks == "per_row":
        ks = 1 + torch.rand(B, Hq, generator=gen) * 10
    kw["bias"], kw["key_scale"] = bias, ks
    if case["padding"] is not None:  # left padding: row b misses its first b keys
        keep = torch.ones(B, Tk, dtype=torch.bool)
        for b in range(B):
            keep[b, : 2 * b] = False
        mask = keep[:, None, None, :]
        if case["padding"] == "float":
            mask = torch.zeros(B, 1, 1, Tk).masked_fill(~mask, float("-inf"))
            mask = mask + 0.1 * torch.randn(B, 1, Tq, Tk, generator=gen)  # a float mask that also shifts logits
        kw["attn_mask"] = mask
    if case["query_mask"]:
        qm = torch.ones(B, Tq, dtype=torch.bool)
        qm[:, ::2] = False
        kw["query_mask"] = qm
    return dict(q=q, k=k, v=v, span_mask=span, kwargs=kw)


def per_head_tensor(value, B: int, H: int) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=torch.float64)
    return t.expand(B, H) if t.dim() != 1 else t[None].expand(B, H)


def max_scale(value) -> float:
    return float(torch.as_tensor(value, dtype=torch.float64).abs().max())
