"""The steered attention backend for vLLM's CPU path (``CPU_ATTN`` overridden by the plugin).

Per step, the runner hook (`attnsteer.vllm.plugin.register`) attaches to the step's
attention metadata which requests of the batch are steered (`Step`). A layer then runs
vLLM's own kernel for the unsteered requests and `attnsteer.ops.steered_attention_paged` —
one call per group of requests that share a SpotLight target — for the steered ones, over the same paged cache: no steered row is computed
twice. A batch without steered requests is vLLM's kernel alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, List

import torch

from ..ops.paged import steered_attention_paged
from .plan import plan_request, request_context

__all__ = ["Step"]

_LAYER = re.compile(r"layers\.(\d+)\.")


@dataclass
class Step:
    """The steered requests of one scheduled batch: row index in the batch → (steering, start,
    number of query tokens), and what every layer of the step shares (built on first use)."""

    steered: Dict[int, tuple] = field(default_factory=dict)  # row -> (request.RequestSteering, start, n_query)
    contexts: Dict[int, object] = field(default_factory=dict)  # row -> its ForwardContext
    packed: Dict[tuple, tuple] = field(default_factory=dict)  # rows -> (token indices, query_start_loc)


def _layer_index(layer) -> int:
    m = _LAYER.search(getattr(layer, "layer_name", ""))
    if m is None:
        raise RuntimeError(f"attnsteer: cannot tell the layer index of attention layer {layer.layer_name!r}")
    return int(m.group(1))


def _build():
    from vllm import _custom_ops as ops
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend, CPUAttentionBackendImpl

    class AttnsteerCPUAttentionImpl(CPUAttentionBackendImpl):
        def forward(
            self, layer, query, key, value, kv_cache, attn_metadata, output, output_scale=None, output_block_scale=None
        ):
            step = getattr(attn_metadata, "attnsteer_step", None)
            if attn_metadata is None or step is None or not step.steered or self.attn_type != "decoder":
                return super().forward(
                    layer, query, key, value, kv_cache, attn_metadata, output, output_scale, output_block_scale
                )
            return _steered_forward(self, ops, layer, query, kv_cache, attn_metadata, output, step)

    class AttnsteerCPUBackend(CPUAttentionBackend):
        @staticmethod
        def get_name() -> str:
            return "CPU_ATTN"

        @staticmethod
        def get_impl_cls():
            return AttnsteerCPUAttentionImpl

    return AttnsteerCPUBackend


def _packed(step: Step, qsl, rows, dtype=torch.int64) -> tuple:
    """``(token index, query_start_loc)`` of ``rows`` packed together — the same in every layer
    of the step, so built once. The index is a slice (views, no copies) when the rows are
    consecutive in the batch, else a tensor of token indices."""
    key = tuple(rows)
    if key not in step.packed:
        if rows == list(range(rows[0], rows[-1] + 1)):
            idx = slice(qsl[rows[0]], qsl[rows[-1] + 1])
        else:
            idx = torch.cat([torch.arange(qsl[r], qsl[r + 1]) for r in rows])
        starts = torch.tensor([0] + [qsl[r + 1] - qsl[r] for r in rows]).cumsum(0).to(dtype)
        step.packed[key] = (idx, starts)
    return step.packed[key]


def _num_tokens(idx) -> int:
    return idx.stop - idx.start if isinstance(idx, slice) else len(idx)


def _tensor_parallel() -> tuple:
    """(rank, world size) of this worker's tensor-parallel group; (0, 1) without one."""
    from vllm.distributed import parallel_state

    if not parallel_state.model_parallel_is_initialized():
        return 0, 1
    return parallel_state.get_tensor_model_parallel_rank(), parallel_state.get_tensor_model_parallel_world_size()


def _steered_forward(impl, ops, layer, query, kv_cache, md, output, step: Step):
    num_blocks, num_kv_heads, block_size, _ = kv_cache.size()
    kv = kv_cache.view((num_blocks, num_kv_heads, block_size * 2, -1))
    key_cache, value_cache = kv.chunk(2, dim=2)
    qsl = md.query_start_loc.tolist()
    R = len(qsl) - 1
    lens = md.seq_lens[:R]
    layer_idx = _layer_index(layer)
    H, D = impl.num_heads, impl.head_size
    q = query[: md.num_actual_tokens].view(-1, H, D)
    out = output[: md.num_actual_tokens].view(-1, H, D)
    tp_rank, tp_size = _tensor_parallel()
    steered_rows = sorted(r for r in step.steered if r < R)
    plain = [r for r in range(R) if r not in step.steered]
    if plain:  # vLLM's own kernel on the unsteered requests
        idx, sub_qsl = _packed(step, qsl, plain, md.query_start_loc.dtype)
        sub_lens = lens[plain].contiguous()
        sched = ops.cpu_attn_get_scheduler_metadata(
            num_reqs=len(plain),
            num_heads=H,
            num_kv_heads=num_kv_heads,
            head_dim=D,
            seq_lens=sub_lens,
            dtype=q.dtype,
            query_start_loc=sub_qsl,
            causal=md.causal,
            sliding_window_size=impl.sliding_window,
            isa=layer.isa,
            enable_kv_split=False,
        )
        # consecutive rows: vLLM's kernel writes straight into the output's rows
        sub_out = out[idx] if isinstance(idx, slice) else torch.empty(len(idx), H, D, dtype=out.dtype)
        ops.cpu_attention_with_kv_cache(
            query=q[idx].contiguous(),
            key_cache=key_cache,
            value_cache=value_cache,
            output=sub_out,
            query_start_loc=sub_qsl,
            seq_lens=sub_lens,
            scale=impl.scale,
            causal=md.causal,
            alibi_slopes=impl.alibi_slopes,
            sliding_window=impl.sliding_window,
            block_table=md.block_table[plain].contiguous(),
            softcap=impl.logits_soft_cap,
            scheduler_metadata=sched,
            s_aux=impl.sinks,
            k_scale=layer._k_scale_float,
            v_scale=layer._v_scale_float,
            kv_cache_dtype=impl.kv_cache_dtype,
        )
        if not isinstance(idx, slice):
            out[idx] = sub_out
    groups: Dict[tuple, List[tuple]] = {}  # (target, target_exact) -> members: one paged call each
    for r in steered_rows:
        steering, start, n = step.steered[r]
        ctx = step.contexts.get(r)
        if ctx is None:  # planned for the layer's heads on all ranks, cut to this rank's (plan.py)
            ctx = step.contexts[r] = request_context(steering.span_weights, start, n, H * tp_size)
        args = plan_request(
            steering.method, steering.span_weights, start, n, H * tp_size, layer_idx, ctx, tp_rank, tp_size
        )
        key = (None, False) if args is None else (args.target, args.target_exact)
        groups.setdefault(key, []).append((r, args))
    window = impl.sliding_window if impl.sliding_window and impl.sliding_window > 0 else None
    for (target, exact), members in groups.items():
        rows = [r for r, _ in members]
        idx, sub_qsl = _packed(step, qsl, rows)
        S = max(int(lens[r]) for r in rows)
        span = torch.zeros(len(rows), S)
        bias = torch.zeros(len(rows), H)
        ks = torch.ones(len(rows), H)
        qmask = torch.ones(_num_tokens(idx), dtype=torch.bool)
        pos = 0
        for i, (r, args) in enumerate(members):
            n = qsl[r + 1] - qsl[r]
            if args is not None:
                w = args.span_weights[0]
                span[i, : w.shape[0]] = w
                bias[i], ks[i] = args.bias[0], args.key_scale[0]
                if args.query_mask is not None:
                    qmask[pos : pos + n] = args.query_mask[0]
            pos += n
        res, _ = steered_attention_paged(
            q[idx].contiguous(),
            key_cache,
            value_cache,
            md.block_table[rows].contiguous(),
            lens[rows].contiguous(),
            sub_qsl,
            span,
            bias,
            ks,
            k_transposed=layer.isa != "amx",
            target=target,
            target_exact=exact,
            query_mask=qmask,
            window=window,
            softcap=impl.logits_soft_cap or None,
            scale=impl.scale,
        )
        out[idx] = res.to(out.dtype)
    return output


_BACKEND = None


def backend_class():
    global _BACKEND
    if _BACKEND is None:
        _BACKEND = _build()
    return _BACKEND


def __getattr__(name):  # "attnsteer.vllm.backend.AttnsteerCPUBackend" for vLLM's registry
    if name == "AttnsteerCPUBackend":
        return backend_class()
    raise AttributeError(name)
