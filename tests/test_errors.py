"""Bad input gets an error that names the tensor, what it got and what was expected."""

from __future__ import annotations

import pytest
import torch

import attnsteer


def _qkv(B=2, Hq=4, Hkv=2, Tq=5, Tk=7, D=16, dtype=torch.float32):
    return (
        torch.randn(B, Hq, Tq, D, dtype=dtype),
        torch.randn(B, Hkv, Tk, D, dtype=dtype),
        torch.randn(B, Hkv, Tk, D, dtype=dtype),
    )


def test_wrong_rank():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=r"q must be 4-D \(B, Hq, Tq, D\); got shape \(4, 5, 16\)"):
        attnsteer.steered_attention(q[0], k, v, torch.ones(2, 7, dtype=torch.bool), enable_gqa=True)


def test_span_length_mismatch():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=r"span_mask must be \(B, Tk\) = \(2, 7\).*got shape \(2, 5\)"):
        attnsteer.steered_attention(q, k, v, torch.ones(2, 5, dtype=torch.bool), enable_gqa=True)


def test_heads_not_multiple():
    q, k, v = _qkv(Hq=5, Hkv=2)
    with pytest.raises(ValueError, match=r"Hq=5 must be a multiple of key/value heads Hkv=2"):
        attnsteer.steered_attention(q, k, v, torch.ones(2, 7, dtype=torch.bool), enable_gqa=True)


def test_gqa_needs_flag():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="enable_gqa=True"):
        attnsteer.steered_attention(q, k, v, torch.ones(2, 7, dtype=torch.bool))


def test_dtype_errors():
    q, k, v = _qkv()
    with pytest.raises(TypeError, match=r"q, k, v must share a dtype"):
        attnsteer.steered_attention(q.half(), k, v, torch.ones(2, 7, dtype=torch.bool), enable_gqa=True)
    with pytest.raises(TypeError, match=r"q must be float32, bfloat16 or float16; got torch.int64"):
        attnsteer.steered_attention(q.long(), k.long(), v.long(), torch.ones(2, 7, dtype=torch.bool), enable_gqa=True)
    with pytest.raises(TypeError, match="span_mask must be bool or float"):
        attnsteer.steered_attention(q, k, v, torch.ones(2, 7, dtype=torch.complex64), enable_gqa=True)


def test_kv_shape_mismatch():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=r"k and v must be \(B, Hkv, Tk, D\)"):
        attnsteer.steered_attention(q, k, v[:, :, :3], torch.ones(2, 7, dtype=torch.bool), enable_gqa=True)


@pytest.mark.parametrize("target", [0.0, 1.0, -0.2, 1.5])
def test_target_outside_unit_interval(target):
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=rf"target .* must lie in \(0, 1\); got {target}"):
        attnsteer.steered_attention(q, k, v, torch.ones(2, 7, dtype=torch.bool), target=target, enable_gqa=True)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_bias_and_key_scale(bad):
    q, k, v = _qkv()
    span = torch.ones(2, 7, dtype=torch.bool)
    with pytest.raises(ValueError, match="bias must be finite"):
        attnsteer.steered_attention(q, k, v, span, bias=bad, enable_gqa=True)
    with pytest.raises(ValueError, match="key_scale must be finite"):
        attnsteer.steered_attention(q, k, v, span, key_scale=[1.0, bad, 1.0, 1.0], enable_gqa=True)


def test_per_head_length():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=r"bias per head must have 4 entries \(one per query head\); got 3"):
        attnsteer.steered_attention(q, k, v, torch.ones(2, 7, dtype=torch.bool), bias=[1.0, 2.0, 3.0], enable_gqa=True)


def test_negative_float_span_weights():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="float weights must be finite and >= 0"):
        attnsteer.steered_attention(q, k, v, -torch.ones(2, 7), enable_gqa=True)


def test_bad_masks_and_window():
    q, k, v = _qkv()
    span = torch.ones(2, 7, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"attn_mask of shape \(3, 7\) does not broadcast"):
        attnsteer.steered_attention(q, k, v, span, attn_mask=torch.ones(3, 7, dtype=torch.bool), enable_gqa=True)
    with pytest.raises(ValueError, match=r"query_mask must be bool \(B, Tq\) = \(2, 5\)"):
        attnsteer.steered_attention(q, k, v, span, query_mask=torch.ones(2, 7, dtype=torch.bool), enable_gqa=True)
    with pytest.raises(ValueError, match="window must be a positive int"):
        attnsteer.steered_attention(q, k, v, span, window=0, enable_gqa=True)


def test_scale_keys_errors():
    with pytest.raises(ValueError, match=r"keys must be 4-D \(B, Hkv, T, D\)"):
        attnsteer.scale_keys_(torch.randn(3, 4, 5), torch.ones(3, 4, dtype=torch.bool), 2.0)
    with pytest.raises(ValueError, match=r"span_mask must be \(B, Tk\) = \(1, 5\)"):
        attnsteer.scale_keys_(torch.randn(1, 2, 5, 8), torch.ones(1, 4, dtype=torch.bool), 2.0)


@pytest.mark.skipif(attnsteer.backend() == "torch", reason="compiled extension not built")
@pytest.mark.parametrize(
    "field, value, message",
    [
        ("span_weights", torch.ones(2, 6), r"span_weights must be \(B, Tk\) = \[2, 7\]; got \[2, 6\]"),
        ("bias", torch.zeros(2, 3), r"bias must be \(B, H\) = \[2, 4\]; got \[2, 3\]"),
        ("key_scale", torch.ones(1, 4), r"key_scale must be \(B, H\) = \[2, 4\]; got \[1, 4\]"),
        ("query_mask", torch.ones(2, 4, dtype=torch.bool), r"query_mask must be \(B, Tq\) = \[2, 5\]; got \[2, 4\]"),
        ("attn_mask", torch.ones(2, 1, 5, 6, dtype=torch.bool), r"attn_mask \[2, 1, 5, 6\] does not broadcast"),
        ("target", 1.5, r"target must lie in \(0, 1\)"),
    ],
)
def test_the_kernels_check_their_arguments(field, value, message):
    """The attention layers call the op through ops.layer_attention without the Python
    validation; the C++ host function (shared by CPU and CUDA) is the guard there."""
    from attnsteer.ops import OpArgs, layer_attention

    q, k, v = _qkv()
    good = OpArgs(torch.ones(2, 7), torch.zeros(2, 4), torch.ones(2, 4))
    layer_attention(q, k, v, good)
    with pytest.raises(RuntimeError, match=message):
        layer_attention(q, k, v, good.replace(**{field: value}))
    with pytest.raises(RuntimeError, match=r"v must be \(B, Hkv, Tk, D\)"):
        layer_attention(q, k, v[:, :, :6], good)
