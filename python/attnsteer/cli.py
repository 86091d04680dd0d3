"""Command line: ``attnsteer demo | bench``.

``demo`` currently runs a kernel demo (the model-level demo arrives with the Hugging Face
integration): it shows how each steering mode moves attention mass onto a marked span, checks
the fused kernel against the float64 reference, and times it against unsteered SDPA.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch


def _demo(args: argparse.Namespace) -> int:
    import torch.nn.functional as F

    import attnsteer
    from attnsteer import reference

    torch.manual_seed(0)
    Hq, Hkv, D, T = 9, 3, 64, args.tokens
    print(f"attnsteer {attnsteer.__version__} — backend: {attnsteer.backend()} — torch {torch.__version__}")
    print(f"Random attention layer shaped like SmolLM2-135M (Hq={Hq}, Hkv={Hkv}, D={D}), causal prefill of {T} tokens;")
    print(f"the 'instruction' span is tokens {T // 8}..{T // 8 + 31}.\n")
    q, k, v = torch.randn(1, Hq, T, D), torch.randn(1, Hkv, T, D), torch.randn(1, Hkv, T, D)
    span = torch.zeros(1, T, dtype=torch.bool)
    span[0, T // 8: T // 8 + 32] = True
    modes = [
        ("unsteered", {}),
        ("GUIDE      bias=+2", dict(bias=2.0)),
        ("InstABoost bias=log 10", dict(bias=2.302585)),
        ("PASTA      rest bias=log 0.01 (span kept)", None),
        ("SpotLight  target=0.3", dict(target=0.3)),
        ("DIRECTER   key_scale=100 (decode row)", dict(key_scale=100.0)),
    ]
    sdpa_t = _time(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True))
    print(f"{'mode':44s} {'span mass (last row, mean over heads)':>38s} {'max err vs fp64':>16s} {'time / SDPA':>12s}")
    with torch.inference_mode():
        for name, kw in modes:
            mask = span
            if kw is None:  # PASTA down-weights everything outside the span
                mask, kw = ~span, dict(bias=-4.60517)
            out, mass = attnsteer.steered_attention(q, k, v, mask, is_causal=True, enable_gqa=True,
                                                    return_span_mass=True, **kw)
            if mask is not span:
                mass = 1 - mass
            ref = reference.steered_attention(q[:, :, -8:], k, v, mask.double(), torch.full((1, Hq), kw.get("bias", 0.0)),
                                              torch.full((1, Hq), kw.get("key_scale", 1.0)), target=kw.get("target"),
                                              is_causal=True)
            err = (out[:, :, -8:].double() - ref).abs().max().item()
            t = _time(lambda: attnsteer.steered_attention(q, k, v, mask, is_causal=True, enable_gqa=True, **kw))
            print(f"{name:44s} {mass[0, :, -1].mean().item():38.3f} {err:16.1e} {t / sdpa_t:11.2f}x")
    print("\nThe model-level demo (SmolLM2-135M-Instruct, marked rules) comes with the Hugging Face integration.")
    return 0


def _time(fn, reps: int = 5) -> float:
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[len(ts) // 2]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="attnsteer", description="Attention steering for Hugging Face models.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="kernel demo: steering modes, accuracy and speed")
    demo.add_argument("--tokens", type=int, default=2048)
    bench = sub.add_parser("bench", help="run benchmarks/bench_attention.py (from a source checkout)")
    bench.add_argument("rest", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.command == "demo":
        return _demo(args)
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_attention.py"
    if not script.exists():
        parser.error("bench needs a source checkout (benchmarks/bench_attention.py not found)")
    return subprocess.call([sys.executable, str(script), *args.rest])


if __name__ == "__main__":
    sys.exit(main())
