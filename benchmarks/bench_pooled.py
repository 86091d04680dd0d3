"""Pooled SpotLight (the released code's variant) on the embedded model: a full prefill forward at
2k and 4k tokens, against unsteered SDPA — the one-pass closed form (ops/pooled.py) and the two
full passes it replaces, with per-row SpotLight beside them.

    python benchmarks/bench_pooled.py                 # 2k and 4k tokens, 5 rounds
    python benchmarks/bench_pooled.py --lengths 2048 --rounds 3

One run, the settings interleaved round by round, each point the fastest of --rounds (a shared
machine's load comes and goes); fp32, batch 1, the marked rule before a long document. Also checks
that the one-pass route generates the same tokens as the two passes. Writes CSV and markdown to
--out.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="2048,4096")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args()
    import torch

    import attnsteer
    from attnsteer._harness import write_csv
    from attnsteer.demo import LONG_TEXT

    torch.set_num_threads(args.threads)
    model, tok = attnsteer.models.load_default(progress=False)
    pooled = attnsteer.SpotLight(0.3, pooled=True)
    settings = [
        ("sdpa (unsteered)", None, "0"),
        ("pooled SpotLight, one pass", pooled, "0"),
        ("pooled SpotLight, two passes", pooled, "1"),
        ("per-row SpotLight", attnsteer.SpotLight(0.3), "0"),
    ]
    rows = []
    for T in (int(x) for x in args.lengths.split(",")):
        words = " ".join([LONG_TEXT] * (T // 100 + 2)).split()
        lo, hi = 1, len(words)
        while lo < hi:  # the longest document whose prompt fits in T tokens
            mid = (lo + hi + 1) // 2
            enc = attnsteer.highlight(tok, f"<<Answer in French.>> {' '.join(words[:mid])}\n\nSummarise it.")
            lo, hi = (mid, hi) if enc["input_ids"].shape[1] <= T else (lo, mid - 1)
        enc = attnsteer.highlight(tok, f"<<Answer in French.>> {' '.join(words[:lo])}\n\nSummarise it.")
        n = enc["input_ids"].shape[1]
        best = {name: float("inf") for name, _, _ in settings}
        with torch.inference_mode():
            for r in range(args.rounds + 1):  # the first round warms up and is not counted
                for name, method, two in settings:
                    os.environ["ATTNSTEER_POOLED_TWO_PASS"] = two
                    t0 = time.perf_counter()
                    if method is None:
                        model(**enc)
                    else:
                        with attnsteer.steer(model, method, spans=enc):
                            model(**enc)
                    dt = time.perf_counter() - t0
                    if r > 0:
                        best[name] = min(best[name], dt)
            tokens = {}
            for two in ("0", "1"):
                os.environ["ATTNSTEER_POOLED_TWO_PASS"] = two
                with attnsteer.steer(model, pooled, spans=enc):
                    tokens[two] = model.generate(**enc, max_new_tokens=8, do_sample=False)[0, n:].tolist()
        os.environ.pop("ATTNSTEER_POOLED_TWO_PASS", None)
        same = tokens["0"] == tokens["1"]
        for name, _, _ in settings:
            rows.append(
                {
                    "prompt_tokens": n,
                    "setting": name,
                    "seconds": f"{best[name]:.3f}",
                    "ratio": f"{best[name] / best['sdpa (unsteered)']:.2f}",
                    "tokens_unchanged": same,
                }
            )
        print(rows[-4:], flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / "bench_pooled.csv")
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} cores ({args.threads} thread), torch {torch.__version__}; "
        f"SmolLM2-135M-Instruct fp32, batch 1, one prefill forward, fastest of {args.rounds} interleaved rounds; "
        "ratio = time ÷ unsteered SDPA.",
        "",
        "| prompt tokens | setting | seconds | ratio | greedy tokens one pass = two passes |",
        "|---:|---|---:|---:|---|",
        *[
            f"| {r['prompt_tokens']} | {r['setting']} | {r['seconds']} | {r['ratio']} | "
            f"{'yes' if r['tokens_unchanged'] else 'NO'} |"
            for r in rows
        ],
    ]
    (out / "bench_pooled.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
