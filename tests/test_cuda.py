"""CUDA kernels against the float64 reference (skipped without a GPU and a CUDA build)."""
from __future__ import annotations

import pytest
import torch

import attnsteer
from attnsteer import reference
from cases import build_inputs, case_id, covering_cases, max_scale, per_head_tensor

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or attnsteer.backend("cuda") != "cuda",
    reason="needs a GPU and the CUDA kernels (ATTNSTEER_BUILD_CUDA=1)",
)


@pytest.mark.parametrize("case", covering_cases(), ids=case_id)
def test_steered_attention_cuda(case):
    inp = build_inputs(case)
    kw = dict(inp["kwargs"])
    dev = {k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    out = attnsteer.steered_attention(inp["q"].cuda(), inp["k"].cuda(), inp["v"].cuda(), inp["span_mask"].cuda(),
                                      enable_gqa=True, **dev)
    B, Hq = inp["q"].shape[:2]
    bias = per_head_tensor(kw.pop("bias"), B, Hq)
    ks = per_head_tensor(kw.pop("key_scale"), B, Hq)
    ref = reference.steered_attention(inp["q"], inp["k"], inp["v"], inp["span_mask"].double(), bias, ks, **kw)
    amp = max(1.0, max_scale(inp["kwargs"]["key_scale"]) / 4, max_scale(inp["kwargs"]["bias"]) / 10)
    tol = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 5e-3}[inp["q"].dtype] * amp
    assert (out.cpu().double() - ref).abs().max().item() <= tol


def test_eager_ops_cuda():
    logits = torch.randn(2, 4, 9, 12)
    span = torch.rand(2, 12) < 0.4
    for kw in (dict(bias=2.0), dict(key_scale=3.0, target=0.5), dict(softcap=5.0, is_causal=True, window=4)):
        gpu = attnsteer.steered_softmax(logits.cuda(), span.cuda(), **kw).cpu()
        torch.testing.assert_close(gpu, attnsteer.steered_softmax(logits, span, **kw), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(attnsteer.span_bias(span.cuda(), torch.randn(2, 4).cuda() * 0 + 1.5).cpu(),
                               attnsteer.span_bias(span, torch.full((2, 4), 1.5)))
    keys = torch.randn(2, 3, 12, 16)
    gk = keys.cuda()
    attnsteer.scale_keys_(gk, span.cuda(), 4.0)
    torch.testing.assert_close(gk.cpu(), attnsteer.scale_keys_(keys.clone(), span, 4.0))
