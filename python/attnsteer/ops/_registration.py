"""Fake (meta) kernels and the no-backward rule of the registered ops (imported by ``ops`` when
the compiled extension is present)."""

from __future__ import annotations

import torch

from .args import OpArgs


@torch.library.register_fake("attnsteer::steered_attention")
def _steered_attention_fake(*schema_args):
    q, _, _, args = OpArgs.from_attention(*schema_args)
    B, Hq, Tq, D = q.shape
    out = q.new_empty((B, Hq, Tq, D))
    mass = q.new_empty((B, Hq, Tq) if args.return_span_mass else (0,), dtype=torch.float32)
    return out, mass


@torch.library.register_fake("attnsteer::span_bias")
def _span_bias_fake(span_weights, bias, query_mask, num_queries, dtype):
    B, Tk = span_weights.shape
    T = num_queries if query_mask is not None else 1
    return span_weights.new_empty((B, bias.shape[1], T, Tk), dtype=dtype)


@torch.library.register_fake("attnsteer::steered_softmax")
def _steered_softmax_fake(*schema_args):
    logits, _ = OpArgs.from_softmax(*schema_args)
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


@torch.library.register_fake("attnsteer::steered_attention_paged")
def _steered_attention_paged_fake(
    q,
    key_cache,
    value_cache,
    k_transposed,
    block_table,
    seq_lens,
    query_start_loc,
    span_weights,
    bias,
    key_scale,
    target,
    target_exact,
    query_mask,
    window,
    softcap,
    scale,
    return_span_mass,
):
    N, Hq, _ = q.shape
    return q.new_empty(q.shape), q.new_empty((N, Hq) if return_span_mass else (0,), dtype=torch.float32)


@torch.library.register_fake("attnsteer::scale_keys_")
def _scale_keys_fake(keys, span_weights, factor):
    return None


@torch.library.register_fake("attnsteer::lowrank_edit_")
def _lowrank_edit_fake(x, span_weights, a, b):
    return None


def _no_backward(ctx, *grads):
    raise RuntimeError(
        "attnsteer ops are inference-only and have no backward; run them under "
        "torch.no_grad() or torch.inference_mode()."
    )


def _setup_nothing(ctx, inputs, output):
    return None


for _name in ("steered_attention", "span_bias", "steered_softmax", "steered_attention_paged"):
    torch.library.register_autograd(f"attnsteer::{_name}", _no_backward, setup_context=_setup_nothing)
