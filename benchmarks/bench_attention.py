"""Speed and memory of steered attention on CPU, in one run.

Providers:
  attnsteer  the route attnsteer chooses (CPU: the fused C++ kernel; CUDA: flash pieces where they
             apply, else FlexAttention, else the fused kernel) (modes: bias, key_scale, target)
  route:pieces, route:flex, route:kernel
             one route forced (``steered_attention(..., route=…)``): torch's flash kernel per key
             range; FlexAttention (compiled on CUDA; eager on CPU, where it materialises the scores:
             numbers for the record, the route is for GPUs); the fused kernel
  sdpa       unsteered torch SDPA with enable_gqa=True: the floor (the profiler confirms that
             the CPU flash kernel ran, not the math fallback)
  sdpa+bias  SDPA with an additive float mask (B, 1, Tq, Tk) carrying the bias (bias mode only)
  eager      what the published reference code does: scores materialised, steering applied,
             softmax, matmul (all modes)

Each (shape, T, provider) point runs in its own subprocess so that peak memory (ru_maxrss,
above the inputs) is its own. Outputs are verified against the float64 reference (on the last
rows for long sequences) before timing. Writes CSV, a markdown table and a PNG plot.

    python benchmarks/bench_attention.py              # full run (about 10 minutes, 2 cores)
    python benchmarks/bench_attention.py --quick      # a few points
    python benchmarks/bench_attention.py --device cuda   # the GPU table (bf16; SDPA = flash)
    python benchmarks/bench_attention.py --dtype bfloat16 --quick   # CPU, bfloat16 inputs (_bf16 files)

On CUDA the inputs are bf16, times are taken after a device synchronise, memory is the peak
allocated above the inputs, and decode also runs at batch 16.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
from pathlib import Path

import torch

from attnsteer._harness import median_time, run_point, write_csv

HERE = Path(__file__).resolve().parent
SHAPES = {"smollm2-135m": (9, 3, 64), "llama-8b": (32, 8, 128)}
MODES = ["bias", "key_scale", "target"]
MODE_ARGS = {"bias": dict(bias=2.0), "key_scale": dict(key_scale=100.0), "target": dict(target=0.3)}
EAGER_LIMIT_BYTES = (
    6e9  # skip materialised providers whose (B, Hq, Tq, Tk) fp32 buffer exceeds this (CPU; 40e9 on CUDA)
)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _inputs(shape: str, T: int, phase: str, device: str = "cpu", batch: int = 1, dtype: str = ""):
    Hq, Hkv, D = SHAPES[shape]
    Tq = T if phase == "prefill" else 1
    dtype = getattr(torch, dtype) if dtype else (torch.bfloat16 if device == "cuda" else torch.float32)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(batch, Hq, Tq, D, generator=g).to(device, dtype)
    k = torch.randn(batch, Hkv, T, D, generator=g).to(device, dtype)
    v = torch.randn(batch, Hkv, T, D, generator=g).to(device, dtype)
    span = torch.zeros(batch, T, dtype=torch.bool)
    span[:, T // 8 : T // 8 + max(8, T // 16)] = True  # an instruction span inside the prompt
    return q, k, v, span.to(device)


def _eager(q, k, v, span, mode, causal):
    """The reference code's way: repeat K/V, materialise scores, steer, softmax, matmul."""
    Hq, Hkv, D = q.shape[1], k.shape[1], q.shape[-1]
    k = k.repeat_interleave(Hq // Hkv, 1)
    v = v.repeat_interleave(Hq // Hkv, 1)
    s = (q @ k.transpose(-1, -2)).float() / math.sqrt(D)  # float32 scores: x100 key scaling in bf16 is off by ~1
    sp = span[:, None, None, :]
    if mode == "key_scale":
        s = torch.where(sp, s * 100.0, s)
    elif mode == "bias":
        s = s + 2.0 * sp
    if causal:
        Tq, Tk = s.shape[-2:]
        s = s.masked_fill(torch.ones(Tq, Tk, dtype=torch.bool).triu(Tk - Tq + 1), float("-inf"))
    a = torch.softmax(s, -1, dtype=torch.float32)  # as transformers' eager attention does
    if mode == "target":
        p = (a * sp).sum(-1, keepdim=True)
        w = torch.where((p > 0) & (p < 0.3), 0.3 / (0.3 + 1 - p), p)
        a = torch.where(sp, a * (w / p.clamp_min(1e-30)), a * ((1 - w) / (1 - p).clamp_min(1e-30)))
    return a.to(v.dtype) @ v


def _run_fn(provider, mode, q, k, v, span, causal):
    import torch.nn.functional as F

    import attnsteer

    if provider == "attnsteer":
        return lambda: attnsteer.steered_attention(q, k, v, span, is_causal=causal, enable_gqa=True, **MODE_ARGS[mode])
    if provider.startswith("route:"):
        name = provider.split(":", 1)[1]
        return lambda: attnsteer.steered_attention(
            q, k, v, span, is_causal=causal, enable_gqa=True, route=name, **MODE_ARGS[mode]
        )
    if provider == "sdpa":
        return lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
    if provider == "sdpa+bias":

        def run():
            Tq, Tk = q.shape[2], k.shape[2]
            mask = (2.0 * span.float())[:, None, None, :].expand(1, 1, Tq, Tk).clone()
            if causal:
                mask.masked_fill_(torch.ones(Tq, Tk, dtype=torch.bool).triu(Tk - Tq + 1), float("-inf"))
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)

        return run
    return lambda: _eager(q, k, v, span, mode, causal)


def _verify(provider, mode, out, q, k, v, span, causal):
    """Against the float64 reference on the last rows (bottom-right causal alignment)."""
    from attnsteer import reference

    if provider in ("sdpa",) or (provider == "sdpa+bias" and mode != "bias"):
        mode = None
    rows = min(16, q.shape[2])
    B, Hq = q.shape[:2]
    args = MODE_ARGS.get(mode, {}) if mode else {}
    q, k, v, span, out = (t[:1].cpu() for t in (q, k, v, span, out))  # the first batch row
    B = 1
    ref = reference.steered_attention(
        q[:, :, -rows:],
        k,
        v,
        span.double(),
        torch.full((B, Hq), args.get("bias", 0.0)),
        torch.full((B, Hq), args.get("key_scale", 1.0)),
        target=args.get("target"),
        is_causal=causal,
    )
    err = (out[:, :, -rows:].double() - ref).abs().max().item()
    if err > (3e-2 if q.dtype == torch.bfloat16 else 2e-3):
        raise AssertionError(f"{provider}/{mode}: output differs from the reference by {err:.3g}")
    return err


def child(spec: dict) -> dict:
    """One point: memory of the first call, then median times of every mode."""
    torch.set_num_threads(spec["threads"])
    import attnsteer  # noqa: F401  (load the extension before measuring the baseline)

    device = spec.get("device", "cpu")
    q, k, v, span = _inputs(
        spec["shape"], spec["T"], spec["phase"], device, spec.get("batch", 1), spec.get("dtype", "")
    )
    causal = spec["phase"] == "prefill"
    provider = spec["provider"]
    modes = MODES if provider in ("attnsteer", "eager") or provider.startswith("route:") else None
    modes = modes or {"sdpa": ["none"], "sdpa+bias": ["bias"]}[provider]
    result = {"modes": {}}
    cuda = device == "cuda"
    with torch.inference_mode():
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated() / 2**20
        else:
            base = _rss_mb()
        out = _run_fn(provider, modes[0], q, k, v, span, causal)()
        if cuda:
            torch.cuda.synchronize()
            result["extra_mb"] = max(0.0, torch.cuda.max_memory_allocated() / 2**20 - base)
        else:
            result["extra_mb"] = max(0.0, _rss_mb() - base)
        for mode in modes:
            fn = _run_fn(provider, mode, q, k, v, span, causal)
            out = fn()
            err = _verify(provider, mode, out, q, k, v, span, causal)
            timed_fn = (lambda fn=fn: (fn(), torch.cuda.synchronize())) if cuda else fn
            t = median_time(timed_fn, reps=spec["reps"], warmup=1 if cuda else 0)
            result["modes"][mode] = {"median_ms": 1e3 * t, "max_err": err}
    if provider == "sdpa" and spec["phase"] == "prefill" and not cuda:
        from torch.profiler import ProfilerActivity, profile

        with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
            _run_fn("sdpa", "none", q, k, v, span, causal)()
        names = {e.key for e in prof.key_averages()}
        result["sdpa_kernel"] = "flash" if any("flash_attention" in n for n in names) else "math"
    return result


def _points(args) -> list:
    """The (shape, phase, T, batch, provider) points of a run."""
    points = []
    batches = {"prefill": [1], "decode": [1]}
    if args.device == "cuda":  # the GPU targets (issue 13)
        prefill = {"smollm2-135m": [4096, 16384, 32768], "llama-8b": [4096, 16384, 32768]}
        decode = {"smollm2-135m": [8192, 32768, 131072], "llama-8b": [8192, 32768, 131072]}
        batches["decode"] = [1, 16]
        if args.quick:
            prefill, decode = {"smollm2-135m": [4096]}, {"smollm2-135m": [8192]}
    elif args.quick:
        prefill = {"smollm2-135m": [512, 2048]}
        decode = {"smollm2-135m": [2048, 8192]}
    else:
        prefill = {"smollm2-135m": [512, 1024, 2048, 4096, 8192, 16384], "llama-8b": [512, 1024, 2048, 4096]}
        decode = {"smollm2-135m": [1024, 4096, 8192, 16384], "llama-8b": [1024, 4096, 8192, 16384]}
    for phase, table in (("prefill", prefill), ("decode", decode)):
        for shape, Ts in table.items():
            for T in Ts:
                for batch in batches[phase]:
                    for provider in _providers(args.device):
                        points.append(
                            dict(
                                shape=shape,
                                phase=phase,
                                T=T,
                                batch=batch,
                                provider=provider,
                                device=args.device,
                                dtype=args.dtype or "",
                                threads=args.threads,
                                reps=5 if (phase == "prefill" and T >= 4096) else (9 if phase == "prefill" else 51),
                            )
                        )
    return points


def _providers(device: str) -> tuple:
    routes = ("route:pieces", "route:flex") + (("route:kernel",) if device == "cuda" else ())
    return ("sdpa", "attnsteer", *routes, "sdpa+bias", "eager")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a few small points")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "bfloat16"],
        help="inputs (default: float32 on CPU, bfloat16 on CUDA)",
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return

    points = _points(args)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = lambda x, **_: x  # noqa: E731
    for spec in tqdm(points, desc="benchmark points"):
        Hq = SHAPES[spec["shape"]][0]
        Tq = spec["T"] if spec["phase"] == "prefill" else 1
        buf_bytes = spec["batch"] * Hq * Tq * spec["T"] * 4
        base = dict(
            shape=spec["shape"], phase=spec["phase"], T=spec["T"], batch=spec["batch"], provider=spec["provider"]
        )
        limit = 40e9 if args.device == "cuda" else EAGER_LIMIT_BYTES
        materialised = ("eager", "sdpa+bias") + (("route:flex",) if args.device == "cpu" else ())
        if spec["provider"] in materialised and buf_bytes > limit:
            for mode in ["bias"] if spec["provider"] == "sdpa+bias" else MODES:
                rows.append(
                    dict(
                        base,
                        mode=mode,
                        median_ms="",
                        extra_mb=f"{buf_bytes / 2**20:.0f} (analytic, per buffer)",
                        note="does not fit",
                    )
                )
            continue
        r = run_point(__file__, spec)
        if "error" in r:
            for mode in ["bias"] if spec["provider"] == "sdpa+bias" else MODES:
                rows.append(
                    dict(
                        base,
                        mode=mode,
                        median_ms="",
                        extra_mb="",
                        note=f"failed: {r['error']}",
                    )
                )
            continue
        for mode, m in r["modes"].items():
            rows.append(
                dict(
                    base,
                    mode=mode,
                    median_ms=f"{m['median_ms']:.3f}",
                    extra_mb=f"{r['extra_mb']:.1f}",
                    note=r.get("sdpa_kernel", ""),
                )
            )
        _write(rows, args, out_dir)

    md = _write(rows, args, out_dir)
    print(md)
    try:
        name = _name(args)
        _plot([r for r in rows if r["batch"] == 1], out_dir / f"{name}.png")
    except ImportError:
        print("matplotlib not installed: no plot")


def _write(rows, args, out_dir) -> str:
    """The CSV and the markdown table of the rows so far (after every point: a run stopped by a
    time limit keeps what it measured)."""
    name = _name(args)
    write_csv(
        rows,
        out_dir / f"{name}.csv",
        ["shape", "phase", "T", "batch", "provider", "mode", "median_ms", "extra_mb", "note"],
    )
    md = _markdown(rows, args.threads, args.device, args.dtype)
    (out_dir / f"{name}.md").write_text(md)
    return md


def _name(args) -> str:
    """bench_attention[_cuda][_bf16]: the default dtype of the device gets no suffix."""
    default = "bfloat16" if args.device == "cuda" else "float32"
    suffix = "" if args.dtype in (None, default) else {"float32": "_fp32", "bfloat16": "_bf16"}[args.dtype]
    return "bench_attention" + ("_cuda" if args.device == "cuda" else "") + suffix


def _markdown(rows, threads, device="cpu", dtype=None) -> str:
    def get(shape, phase, T, B, provider, mode):
        for r in rows:
            if (r["shape"], r["phase"], r["T"], r["batch"], r["provider"], r["mode"]) == (
                shape,
                phase,
                T,
                B,
                provider,
                mode,
            ):
                return r
        return None

    if device == "cuda":
        machine = f"{torch.cuda.get_device_name()}, bf16, torch {torch.__version__} (CUDA {torch.version.cuda})"
        memory = "memory is peak allocated above the inputs (MB)"
    else:
        machine = (
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {threads} threads, "
            f"{dtype or 'float32'}; torch {torch.__version__}"
        )
        memory = "memory is peak RSS above the inputs (MB)"
    lines = [
        f"Machine: {machine}. Times are medians (ms); ratios are time / unsteered SDPA; {memory}.",
        "",
        "Columns: the route attnsteer chooses (bias, key_scale, target modes); each route forced, bias mode "
        "(target mode after the slash); the reference code's approach (eager); memory.",
        "",
        "| shape | phase | T | B | SDPA ms | bias × | key_scale × | target × | pieces × | flex × | kernel × "
        "| SDPA+bias × | eager bias × | attnsteer MB | flex MB | SDPA MB | eager MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    keys = sorted(
        {(r["shape"], r["phase"], r["T"], r["batch"]) for r in rows},
        key=lambda x: (x[1] != "prefill", x[0], x[3], x[2]),
    )
    for shape, phase, T, B in keys:
        sd = get(shape, phase, T, B, "sdpa", "none")
        if sd is None or not sd["median_ms"]:
            continue
        base = float(sd["median_ms"])

        def ratio(provider, mode):
            r = get(shape, phase, T, B, provider, mode)
            return f"{float(r['median_ms']) / base:.2f}" if r and r["median_ms"] else "—"

        def mem(provider, mode):
            r = get(shape, phase, T, B, provider, mode)
            return r["extra_mb"] if r else "—"

        def both(provider):
            return f"{ratio(provider, 'bias')} / {ratio(provider, 'target')}"

        lines.append(
            f"| {shape} | {phase} | {T} | {B} | {base:.2f} | {ratio('attnsteer', 'bias')} | {ratio('attnsteer', 'key_scale')} | "
            f"{ratio('attnsteer', 'target')} | {both('route:pieces')} | {both('route:flex')} | {both('route:kernel')} | "
            f"{ratio('sdpa+bias', 'bias')} | {ratio('eager', 'bias')} | "
            f"{mem('attnsteer', 'bias')} | {mem('route:flex', 'bias')} | {mem('sdpa', 'none')} | {mem('eager', 'bias')} |"
        )
    return "\n".join(lines) + "\n"


def _plot(rows, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, what in zip(axes, ("median_ms", "extra_mb")):
        for provider, mode, style in (
            ("sdpa", "none", "k-"),
            ("attnsteer", "bias", "C0-o"),
            ("attnsteer", "target", "C0--"),
            ("sdpa+bias", "bias", "C1-s"),
            ("eager", "bias", "C3-^"),
        ):
            sel = [
                r
                for r in rows
                if r["shape"] == "smollm2-135m"
                and r["phase"] == "prefill"
                and r["provider"] == provider
                and r["mode"] == mode
                and r[what]
                and "analytic" not in str(r[what])
            ]
            if sel:
                ax.plot([r["T"] for r in sel], [float(r[what]) for r in sel], style, label=f"{provider} ({mode})")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length T (prefill, SmolLM2-135M heads 9/3, D=64)")
        ax.set_ylabel("median time (ms)" if what == "median_ms" else "peak extra memory (MB)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
