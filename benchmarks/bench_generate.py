"""Tokens/s of steered vs unsteered (SDPA) generation on the embedded SmolLM2-135M-Instruct.

Batch 1 and 8, a ~1k-token prompt with a marked rule, 256 new tokens (min_new_tokens pinned so
every run decodes the same number of tokens), greedy, every method. Writes CSV and markdown.

    python benchmarks/bench_generate.py            # full (about 10 minutes on 2 cores)
    python benchmarks/bench_generate.py --quick    # batch 1, 32 new tokens
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import time
from pathlib import Path

import torch

import attnsteer
from attnsteer.demo import LONG_TEXT

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    args = ap.parse_args()
    new_tokens = 32 if args.quick else 256
    batches = [1] if args.quick else [int(b) for b in args.batches.split(",")]
    tag = "" if batches == [1, 8] else "_b" + "_".join(map(str, batches))
    model, tok = attnsteer.models.load_default()
    body = " ".join([LONG_TEXT] * 8)  # ~1k tokens
    methods = [("sdpa (unsteered)", None), ("GUIDE(2)", attnsteer.GUIDE(2.0)), ("InstABoost(10)", attnsteer.InstABoost(10.0)),
               ("PASTA(0.01)", attnsteer.PASTA(0.01)), ("SpotLight(0.3)", attnsteer.SpotLight(0.3)),
               ("KeyScale(100, decode)", attnsteer.KeyScale(100.0))]
    rows = []
    from tqdm.auto import tqdm

    for B in batches:
        msgs = [[{"role": "system", "content": "<<Start your answer with the word YES.>>"},
                 {"role": "user", "content": f"{body}\n\nSummarise the text above, variant {i}."}] for i in range(B)]
        enc = attnsteer.highlight(tok, msgs)
        T = enc["input_ids"].shape[1]
        kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        for name, method in tqdm(methods, desc=f"batch {B}, prompt {T} tokens"):
            with torch.inference_mode():
                model.generate(**{k: v[:, :64] for k, v in enc.items()}, max_new_tokens=2)  # warm-up
                t0 = time.perf_counter()
                if method is None:
                    out = model.generate(**enc, **kw)
                else:
                    with attnsteer.steer(model, method, spans=enc):
                        out = model.generate(**enc, **kw)
                dt = time.perf_counter() - t0
            generated = (out.shape[1] - T) * B
            rows.append(dict(batch=B, prompt_tokens=T, method=name, seconds=f"{dt:.2f}", tokens_per_s=f"{generated / dt:.2f}"))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / f"bench_generate{tag}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    lines = [f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; SmolLM2-135M-Instruct fp32, "
             f"greedy, {new_tokens} new tokens (min_new_tokens pinned). Ratio = tokens/s ÷ unsteered SDPA tokens/s.", "",
             "| batch | prompt tokens | method | seconds | tokens/s | ratio |", "|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        base = next(float(x["tokens_per_s"]) for x in rows if x["batch"] == r["batch"] and x["method"].startswith("sdpa"))
        lines.append(f"| {r['batch']} | {r['prompt_tokens']} | {r['method']} | {r['seconds']} | {r['tokens_per_s']} | "
                     f"{float(r['tokens_per_s']) / base:.2f} |")
    md = "\n".join(lines) + "\n"
    (out_dir / f"bench_generate{tag}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
