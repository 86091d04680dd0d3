"""Load times of the shipped models (`attnsteer.models.load(NAME)`): the first load (assemble the
GGUF parts, dequantise, write the cache folder) and a cached load, each in a fresh Python process
with an empty / a filled ``ATTNSTEER_CACHE``, timed around ``load()`` alone (imports excluded).

    python benchmarks/bench_load.py                       # every installed model
    python benchmarks/bench_load.py --models qwen2.5-coder-0.5b

Writes ``benchmarks/results/model_load.md``. The cache of the run lives in a temporary folder
(several GB for the 1.5B model) and is removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

CHILD = r"""
import json, sys, time
import attnsteer.models as m
t0 = time.perf_counter()
model, tok = m.load(sys.argv[1], progress=False)
dt = time.perf_counter() - t0
print(json.dumps({"seconds": dt, "params": sum(p.numel() for p in model.parameters())}))
"""


def _timed_load(name: str, cache: str) -> dict:
    env = dict(os.environ, ATTNSTEER_CACHE=cache)
    out = subprocess.run([sys.executable, "-c", CHILD, name], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _folder_bytes(path: str) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def main() -> None:
    import torch

    import attnsteer.models as m

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=None, help="comma-separated names (default: every installed model)")
    ap.add_argument("--cached-repeats", type=int, default=3, help="cached loads; the median is reported")
    ap.add_argument("--out", default=str(HERE / "results" / "model_load.md"))
    args = ap.parse_args()
    rows = [r for r in m.available() if r["installed"]]
    if args.models:
        rows = [r for r in rows if r["name"] in args.models.split(",")]
    lines = [
        "# Model load times",
        "",
        f"`python benchmarks/bench_load.py` — {platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, Python {platform.python_version()}. Each load in a fresh process, "
        "timed around `attnsteer.models.load(NAME, progress=False)`; cached: the median of "
        f"{args.cached_repeats}.",
        "",
        "| model | parameters | first load s (assemble + dequantise + write cache) | cached load s | cache size GB |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        cache = tempfile.mkdtemp(prefix="attnsteer-load-")
        try:
            first = _timed_load(r["name"], cache)
            cached = sorted(_timed_load(r["name"], cache)["seconds"] for _ in range(args.cached_repeats))
            size = _folder_bytes(cache) / 1e9
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        med = cached[len(cached) // 2]
        line = f"| {r['name']} | {first['params'] / 1e6:.0f} M | {first['seconds']:.1f} | {med:.1f} | {size:.2f} |"
        print(line, flush=True)
        lines.append(line)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
