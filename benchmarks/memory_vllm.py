"""Where the vLLM engine's memory goes under steered traffic: resident memory against the C heap.

Run in the vLLM environment (`make test-vllm` creates it):

    .venv-vllm/bin/python benchmarks/memory_vllm.py --rounds 12            # steered traffic
    .venv-vllm/bin/python benchmarks/memory_vllm.py --rounds 12 --only unsteered

The soak (``soak_vllm.py``) sees the engine process's RSS grow under steered traffic. This runs the
engine in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) and sends rounds of requests whose
prompt lengths change every round (fresh batch shapes, as a server sees), and after each round reads
three numbers: the process RSS, the C heap's bytes in use (glibc ``mallinfo2().uordblks``: what
the program holds, over every malloc arena) and the heap's free bytes kept by malloc
(``fordblks``). A leak raises the bytes in use; fragmentation raises RSS and the free bytes while
the bytes in use stay flat. At the end it calls ``malloc_trim(0)`` and reads RSS again: memory
that malloc gives back was free, not leaked. With ``--arenas N`` it sets ``MALLOC_ARENA_MAX`` for a
re-run of itself (glibc reads it at start-up). Writes markdown and CSV to --out.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import platform
import random
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SPECS = ["guide:delta=2", "instaboost:alpha=5", "pasta:alpha=0.1", "spotlight:target=0.3", "keyscale:alpha=3"]
FILLER = "The river rose in spring and the mill by the bridge turned faster than the year before. "


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


_LIBC = ctypes.CDLL("libc.so.6")
_LIBC.mallinfo2.restype = _Mallinfo2


def heap_mb() -> tuple:
    """``(in use, free kept by malloc)`` of the C heap in MB, over every arena (mmapped chunks are
    counted as in use)."""
    m = _LIBC.mallinfo2()
    return (m.uordblks + m.hblkhd) / 2**20, m.fordblks / 2**20


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _object_growth(before):
    """Count live Python objects by type (and tensor bytes); print the types that grew since
    ``before``. Returns the new counts."""
    import collections
    import gc

    import torch

    gc.collect()
    now = collections.Counter()
    tensor_bytes = 0
    for o in gc.get_objects():
        now[type(o).__qualname__] += 1
        if isinstance(o, torch.Tensor) and not o.is_meta:
            tensor_bytes += o.untyped_storage().nbytes()
    now["<tensor storage MB>"] = int(tensor_bytes / 2**20)
    if before is not None:
        grew = sorted(((now[k] - before.get(k, 0), k) for k in now), reverse=True)[:8]
        print("  grew:", ", ".join(f"{k} {d:+d}" for d, k in grew if d > 0), flush=True)
    return now


def _requests(tok, rng: random.Random, n: int, only: str):
    from vllm import SamplingParams

    from attnsteer.vllm import steered_prompt

    out = []
    for i in range(n):
        text = "<<Answer in French.>> " + FILLER * rng.randint(4, 18) + f"Question {i}: what happened to the mill?"
        p = steered_prompt(tok, text, rng.choice(SPECS))
        steered = only == "steered" or (only == "mixed" and i % 2 == 0)
        extra = p.extra_args if steered else None
        out.append((p.prompt(), SamplingParams(max_tokens=32, temperature=0, extra_args=extra)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--per-round", type=int, default=16)
    ap.add_argument("--only", choices=["steered", "unsteered", "mixed"], default="steered")
    ap.add_argument("--arenas", type=int, help="MALLOC_ARENA_MAX for this run (re-runs itself with it set)")
    ap.add_argument("--model", default=str(HERE.parent / "build" / "smollm2"), help="exported model folder")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--same", action="store_true", help="the same requests every round (no new batch shapes)")
    ap.add_argument(
        "--objects", action="store_true", help="also print which Python object types grew each round (slow: gc walk)"
    )
    args = ap.parse_args()
    if args.arenas and os.environ.get("MALLOC_ARENA_MAX") != str(args.arenas):
        os.execve(sys.executable, [sys.executable, *sys.argv], dict(os.environ, MALLOC_ARENA_MAX=str(args.arenas)))
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    import torch
    from transformers import AutoTokenizer
    from vllm import LLM

    import attnsteer
    from attnsteer._harness import write_csv

    if not os.path.isdir(args.model):
        m, t = attnsteer.models.load_default(progress=False)
        attnsteer.models.export(m, t, args.model)
    tok = AutoTokenizer.from_pretrained(args.model)
    llm = LLM(
        args.model,
        dtype="float32",
        max_model_len=1024,
        enforce_eager=True,
        max_num_seqs=8,
        num_gpu_blocks_override=16,
        seed=0,
    )
    rng = random.Random(0)
    rows = []
    counts = None
    t0 = time.time()
    for r in range(args.rounds + 1):
        if args.same:
            rng = random.Random(0)
        llm.generate(*zip(*_requests(tok, rng, args.per_round, args.only)), use_tqdm=False)
        used, free = heap_mb()
        rows.append(
            {
                "round": r,
                "seconds": round(time.time() - t0, 1),
                "rss_mb": round(rss_mb(), 1),
                "heap_in_use_mb": round(used, 1),
                "heap_free_mb": round(free, 1),
            }
        )
        print(rows[-1], flush=True)
        if args.objects:
            counts = _object_growth(counts)
    _LIBC.malloc_trim(0)
    trimmed = rss_mb()
    used, free = heap_mb()
    tag = f"_{args.only}" + ("_same" if args.same else "") + (f"_arenas{args.arenas}" if args.arenas else "")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / f"memory_vllm{tag}.csv")
    first, last = rows[1], rows[-1]  # round 0 is warm-up
    n = len(rows) - 2
    grow = lambda k: (last[k] - first[k]) / max(n, 1)  # noqa: E731
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, vLLM (CPU), engine in "
        f"process; SmolLM2-135M-Instruct fp32; {args.rounds} rounds of {args.per_round} {args.only} requests ("
        + ("the same prompts every round" if args.same else "new prompt lengths of 100-400 tokens every round")
        + f", 32 new tokens), MALLOC_ARENA_MAX="
        f"{os.environ.get('MALLOC_ARENA_MAX', 'unset')}.",
        "",
        "| after round | RSS MB | C heap in use MB | C heap free (kept by malloc) MB |",
        "|---:|---:|---:|---:|",
        *(f"| {x['round']} | {x['rss_mb']:.0f} | {x['heap_in_use_mb']:.0f} | {x['heap_free_mb']:.0f} |" for x in rows),
        f"| after malloc_trim(0) | {trimmed:.0f} | {used:.0f} | {free:.0f} |",
        "",
        f"Per round after the first: RSS {grow('rss_mb'):+.1f} MB, heap in use {grow('heap_in_use_mb'):+.1f} MB, "
        f"heap free {grow('heap_free_mb'):+.1f} MB; malloc_trim gave back {last['rss_mb'] - trimmed:.0f} MB.",
        "",
        f"Command: `{' '.join(['python', 'benchmarks/memory_vllm.py', *sys.argv[1:]])}`",
    ]
    (out / f"memory_vllm{tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
