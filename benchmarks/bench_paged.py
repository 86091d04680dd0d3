"""The paged op (``attnsteer.ops.steered_attention_paged``) against vLLM's own CPU kernel
(``cpu_attention_with_kv_cache``, unsteered) and against the eager, materialised approach of
the reference code (gather each request's K/V out of the blocks, full ``softmax(QKᵀ)V`` with the
steering added to the logits), on one paged step of R requests: all decoding (one query token
each) or all prefilling (every token of the prompt). K/V are written by vLLM's cache writer in
the layout its vector ISA uses. Run in the vLLM environment:

    .venv-vllm/bin/python benchmarks/bench_paged.py             # R = 8, 1k keys, SmolLM2's heads
    .venv-vllm/bin/python benchmarks/bench_paged.py --quick

One thread (``--threads``); the kernels run round-robin and each point is the fastest of
--reps calls (load on a shared machine then hits every kernel alike). Writes CSV and markdown to --out.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _gather(kc, vc, blocks, L, transposed):
    """One request's K and V ``(Hkv, L, D)`` copied out of its cache blocks."""
    nb, Hkv, bs, D = len(blocks), kc.shape[1], kc.shape[2], kc.shape[3]
    kb = kc[blocks]  # (nb, Hkv, bs, D) holding each block's raw memory
    kb = kb.reshape(nb, Hkv, D, bs).permute(1, 0, 3, 2) if transposed else kb.permute(1, 0, 2, 3)
    vb = vc[blocks].permute(1, 0, 2, 3)
    return kb.reshape(Hkv, nb * bs, D)[:, :L], vb.reshape(Hkv, nb * bs, D)[:, :L]


def _eager(q, kc, vc, table, qsl, lens, span, bias, scale, G, transposed):
    """The reference code's way: per request, gather K/V, dense (Hq, n, L) logits, bias on span
    keys, causal mask, softmax, weights @ V."""
    import torch

    outs = []
    for r in range(len(lens)):
        a, b, L = int(qsl[r]), int(qsl[r + 1]), int(lens[r])
        kr, vr = _gather(kc, vc, table[r, : -(-L // kc.shape[2])].long(), L, transposed)
        qr = q[a:b].transpose(0, 1)  # (Hq, n, D)
        kr, vr = kr.repeat_interleave(G, 0), vr.repeat_interleave(G, 0)  # (Hq, L, D)
        s = (qr @ kr.transpose(1, 2)) * scale + bias[r][:, None, None] * span[r, :L]
        n = b - a
        pos = torch.arange(L - n, L)[:, None]
        s = s.masked_fill(torch.arange(L)[None, :] > pos, float("-inf"))
        outs.append((s.softmax(-1) @ vr).transpose(0, 1))
    return torch.cat(outs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--keys", type=int, default=1012, help="keys per request (the prompt length)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # vLLM's kernel sizes its OpenMP team from this
    import torch
    from vllm import _custom_ops as ops
    from vllm.v1.attention.backends.cpu_attn import _get_attn_isa

    from attnsteer._harness import timed, write_table
    from attnsteer.ops.paged import steered_attention_paged

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtype, bs, Hq, Hkv, D = torch.float32, 128, 9, 3, 64  # SmolLM2-135M's attention, vLLM's CPU block size
    G, R, L, scale = Hq // Hkv, args.requests, args.keys, 1 / math.sqrt(D)
    isa = _get_attn_isa(dtype, bs, D, "auto")
    nbr = math.ceil(L / bs)
    kv = torch.zeros(R * nbr + 1, Hkv, 2 * bs, D, dtype=dtype)
    kc, vc = kv.chunk(2, dim=2)
    table = torch.arange(1, 1 + R * nbr, dtype=torch.int32).view(R, nbr)
    lens = torch.full((R,), L, dtype=torch.int32)
    k = torch.randn(R, Hkv, L, D)
    v = torch.randn(R, Hkv, L, D)
    for r in range(R):
        slots = torch.tensor([int(table[r, j // bs]) * bs + j % bs for j in range(L)])
        ops.cpu_attn_reshape_and_cache(k[r].transpose(0, 1), v[r].transpose(0, 1), kc, vc, slots, isa)
    span = torch.zeros(R, L)
    span[:, 10:40] = 1.0  # a 30-token instruction near the start
    bias = torch.full((R, Hq), 2.0)
    ones = torch.ones(R, Hq)
    rows = []
    for phase, nq in (("decode", 1), ("prefill", L)):
        N = R * nq
        q = torch.randn(N, Hq, D, dtype=dtype)
        qsl = torch.arange(0, N + 1, nq, dtype=torch.int32)
        out = torch.empty_like(q)

        def vllm_kernel():
            sched = ops.cpu_attn_get_scheduler_metadata(
                num_reqs=R,
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
                key_cache=kc,
                value_cache=vc,
                output=out,
                query_start_loc=qsl,
                seq_lens=lens,
                scale=scale,
                causal=True,
                alibi_slopes=None,
                sliding_window=-1,
                block_table=table,
                softcap=0.0,
                scheduler_metadata=sched,
                s_aux=None,
            )

        def paged(**kw):
            b = kw.pop("bias", bias)
            return lambda: steered_attention_paged(
                q, kc, vc, table, lens, qsl, span, b, ones, k_transposed=isa != "amx", scale=scale, **kw
            )

        def eager():
            return _eager(q, kc, vc, table, qsl, lens, span, bias, scale, G, isa != "amx")

        got, _ = paged()()  # the paged op and the eager path agree before either is timed
        err = (got - eager()).abs().max().item()
        if err > 1e-4:
            raise SystemExit(f"{phase}: paged op and eager attention differ by {err:.2e}")

        reps = args.reps or (50 if phase == "decode" else 12) // (3 if args.quick else 1)
        points = [
            ("vLLM kernel (unsteered)", vllm_kernel),
            ("paged, unsteered", paged(bias=torch.zeros(R, Hq))),
            ("paged, bias (GUIDE)", paged()),
            ("paged, target (SpotLight)", paged(bias=torch.zeros(R, Hq), target=0.3)),
            ("eager, materialised (bias)", eager),
        ]
        # round-robin, fastest of reps: on a shared machine, load hits every kernel alike
        times = {name: [] for name, _ in points}
        for _, fn in points:  # warm-up
            fn()
        for i in range(reps):
            for name, fn in points:
                if name.startswith("eager") and i >= max(2, reps // 4):
                    continue  # 15-25x slower; a few runs suffice
                times[name].append(timed(fn)[1])
        base = min(times[points[0][0]])
        for name, _ in points:
            t = min(times[name])
            rows.append(
                dict(phase=phase, requests=R, keys=L, kernel=name, ms=f"{t * 1e3:.3f}", ratio=f"{t / base:.2f}")
            )
    out_dir = Path(args.out)
    tag = "_quick" if args.quick else ""
    intro = (
        f"Machine: {platform.machine()}, {os.cpu_count()} cores ({args.threads} thread), torch {torch.__version__}, "
        f"vLLM CPU ISA {isa}; fp32, Hq={Hq}, Hkv={Hkv}, D={D}, block {bs}; ratio = time ÷ vLLM's kernel."
    )
    columns = [("phase", "step", "l"), ("requests", "requests", "r"), ("keys", "keys each", "r"),
               ("kernel", "kernel", "l"), ("ms", "ms", "r"), ("ratio", "ratio", "r")]  # fmt: skip
    write_table(rows, columns, intro, out_dir / f"bench_paged{tag}.md", out_dir / f"bench_paged{tag}.csv")


if __name__ == "__main__":
    main()
