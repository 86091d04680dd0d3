"""The paged op against vLLM's own CPU cache writer and kernel (run inside a vLLM environment,
e.g. `.venv-vllm`, with this checkout on PYTHONPATH):

    PYTHONPATH=python .venv-vllm/bin/python tools/check_vllm_layout.py

Writes K/V with ``cpu_attn_reshape_and_cache`` (the ISA vLLM picks: K transposed per block on the
vector paths), then checks (1) attnsteer's paged op unsteered equals ``cpu_attention_with_kv_cache``
on a packed step of a prefill, a chunk and a decode, (2) steered, it equals the dense fused op on the
request's keys. Exits 1 on a mismatch. (Not part of `make test`: it needs vLLM.)"""

from __future__ import annotations

import math
import sys

import torch
from vllm import _custom_ops as ops
from vllm.v1.attention.backends.cpu_attn import _get_attn_isa

import attnsteer
from attnsteer.ops.paged import steered_attention_paged


def main() -> int:
    torch.manual_seed(0)
    ok = True
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
        bs, Hq, Hkv, D = 16, 6, 2, 64
        isa = _get_attn_isa(dtype, bs, D, "auto")
        reqs = [(37, 37), (50, 30), (23, 1)]
        nb = sum(math.ceil(L / bs) for L, _ in reqs) + 2
        kv = torch.zeros(nb, Hkv, 2 * bs, D, dtype=dtype)
        key_cache, value_cache = kv.chunk(2, dim=2)
        table = torch.zeros(len(reqs), 4, dtype=torch.int32)
        nxt, ks, vs = 1, [], []
        for r, (L, _) in enumerate(reqs):
            k, v = torch.randn(L, Hkv, D).to(dtype), torch.randn(L, Hkv, D).to(dtype)
            blocks = list(range(nxt, nxt + math.ceil(L / bs)))
            nxt += len(blocks)
            table[r, : len(blocks)] = torch.tensor(blocks, dtype=torch.int32)
            slots = torch.tensor([blocks[j // bs] * bs + j % bs for j in range(L)])
            ops.cpu_attn_reshape_and_cache(k, v, key_cache, value_cache, slots, isa)
            ks.append(k)
            vs.append(v)
        N = sum(n for _, n in reqs)
        q = torch.randn(N, Hq, D).to(dtype)
        qsl = torch.tensor([0, 37, 67, 68], dtype=torch.int32)
        lens = torch.tensor([L for L, _ in reqs], dtype=torch.int32)
        out_v = torch.zeros(N, Hq, D, dtype=dtype)
        sched = ops.cpu_attn_get_scheduler_metadata(
            num_reqs=3,
            num_heads=Hq,
            num_kv_heads=Hkv,
            head_dim=D,
            seq_lens=lens,
            dtype=dtype,
            query_start_loc=qsl,
            causal=True,
            sliding_window_size=-1,
            isa=isa,
            enable_kv_split=False,
        )
        ops.cpu_attention_with_kv_cache(
            query=q,
            key_cache=key_cache,
            value_cache=value_cache,
            output=out_v,
            query_start_loc=qsl,
            seq_lens=lens,
            scale=1 / math.sqrt(D),
            causal=True,
            alibi_slopes=None,
            sliding_window=-1,
            block_table=table,
            softcap=0.0,
            scheduler_metadata=sched,
            s_aux=None,
        )
        transposed = isa != "amx"  # the vector paths store K as [D][block_size] per block and head
        span = torch.zeros(3, 50)
        zeros, ones = torch.zeros(3, Hq), torch.ones(3, Hq)
        out_a, _ = steered_attention_paged(
            q, key_cache, value_cache, table, lens, qsl, span, zeros, ones, k_transposed=transposed
        )
        e1 = (out_a.float() - out_v.float()).abs().max().item()
        span[1, 5:12] = 1.0
        out_s, _ = steered_attention_paged(
            q, key_cache, value_cache, table, lens, qsl, span, zeros + 2.0, ones, k_transposed=transposed
        )
        dense = attnsteer.steered_attention(
            q[37:67].transpose(0, 1)[None],
            ks[1].transpose(0, 1)[None],
            vs[1].transpose(0, 1)[None],
            span[1],
            bias=2.0,
            is_causal=True,
            enable_gqa=True,
        )
        e2 = (out_s[37:67].transpose(0, 1)[None].float() - dense.float()).abs().max().item()
        print(f"{dtype} isa={isa}: unsteered vs vLLM's kernel {e1:.2e}; steered vs dense {e2:.2e}")
        ok &= e1 <= tol and e2 <= tol
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
