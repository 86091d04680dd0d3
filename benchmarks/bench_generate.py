"""Tokens/s of steered vs unsteered (SDPA) generation on the embedded SmolLM2-135M-Instruct.

Batch 1 and 8, a ~1k-token prompt with a marked rule, 256 new tokens (min_new_tokens pinned so
every run decodes the same number of tokens), greedy, every method. Writes CSV and markdown.

    python benchmarks/bench_generate.py            # full (about 10 minutes on 2 cores)
    python benchmarks/bench_generate.py --quick    # batch 1, 32 new tokens
    python benchmarks/bench_generate.py --only directer   # the DIRECTER part alone
    python benchmarks/bench_generate.py --only methods --batches 8 --model qwen2.5-coder-0.5b --dtype bfloat16 \
        --new-tokens 64   # another model / dtype (files named after them)

DIRECTER (batch 1, the same prompt): the cost of one steered trial (a single-token forward over
the cache with the span keys scaled on all layers inside the op) against one unsteered SDPA
single-token forward, the fraction of gated steps, and tokens/s against unsteered greedy decoding.
"""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

import torch

import attnsteer
from attnsteer._harness import timed, write_csv
from attnsteer.demo import LONG_TEXT

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    ap.add_argument("--only", choices=["methods", "directer"], help="run one part only")
    ap.add_argument("--repeats", type=int, default=1, help="runs per method, the fastest is kept (the VM is noisy)")
    ap.add_argument("--model", default=None, help="a shipped model's name (default: the embedded SmolLM2-135M)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="the weights' dtype")
    ap.add_argument("--new-tokens", type=int, default=None, help="new tokens a reply (default 256; --quick 32)")
    args = ap.parse_args()
    new_tokens = args.new_tokens or (32 if args.quick else 256)
    batches = [1] if args.quick else [int(b) for b in args.batches.split(",")]
    tag = "" if batches == [1, 8] else "_b" + "_".join(map(str, batches))
    dtype = getattr(torch, args.dtype)
    if args.model:
        model, tok = attnsteer.models.load(args.model, dtype=dtype, progress=False)
        tag += "_" + args.model.replace(".", "")
    else:
        model, tok = attnsteer.models.load_default(dtype=dtype)
    tag += "" if args.dtype == "float32" else "_bf16"
    models = attnsteer.models.MODELS
    name = (models[args.model].tag if args.model in models else args.model) if args.model else "SmolLM2-135M-Instruct"
    what = f"{name} {args.dtype}"
    body = " ".join([LONG_TEXT] * 8)  # ~1k tokens
    methods = [
        ("sdpa (unsteered)", None),
        ("GUIDE(2)", attnsteer.GUIDE(2.0)),
        ("InstABoost(10)", attnsteer.InstABoost(10.0)),
        ("PASTA(0.01)", attnsteer.PASTA(0.01)),
        ("SpotLight(0.3)", attnsteer.SpotLight(0.3)),
        ("KeyScale(100, decode)", attnsteer.KeyScale(100.0)),
    ]
    rows = []
    from tqdm.auto import tqdm

    if args.only != "methods":
        bench_directer(model, tok, body, new_tokens, Path(args.out), "_quick" if args.quick else "")
    if args.only == "directer":
        return
    for B in batches:
        msgs = [
            [
                {"role": "system", "content": "<<Start your answer with the word YES.>>"},
                {"role": "user", "content": f"{body}\n\nSummarise the text above, variant {i}."},
            ]
            for i in range(B)
        ]
        enc = attnsteer.highlight(tok, msgs)
        T = enc["input_ids"].shape[1]
        kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        times = {name: [] for name, _ in methods}
        n_new = {}
        # round-robin over the methods, so slow drift of the VM hits every method alike
        for name, method in tqdm(
            [m for _ in range(args.repeats) for m in methods], desc=f"batch {B}, prompt {T} tokens"
        ):
            with torch.inference_mode():
                model.generate(**{k: v[:, :64] for k, v in enc.items()}, max_new_tokens=2)  # warm-up
                if method is None:
                    out, dt = timed(lambda: model.generate(**enc, **kw))
                else:
                    with attnsteer.steer(model, method, spans=enc):
                        out, dt = timed(lambda: model.generate(**enc, **kw))
                times[name].append(dt)
            n_new[name] = (out.shape[1] - T) * B
        for name, _ in methods:
            dt = min(times[name])
            rows.append(
                dict(batch=B, prompt_tokens=T, method=name, seconds=f"{dt:.2f}", tokens_per_s=f"{n_new[name] / dt:.2f}")
            )
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out_dir / f"bench_generate{tag}.csv")
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; {what}, "
        f"greedy, {new_tokens} new tokens (min_new_tokens pinned), fastest of {args.repeats} run(s). "
        "Ratio = tokens/s ÷ unsteered SDPA tokens/s.",
        "",
        "| batch | prompt tokens | method | seconds | tokens/s | ratio |",
        "|---:|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        base = next(
            float(x["tokens_per_s"]) for x in rows if x["batch"] == r["batch"] and x["method"].startswith("sdpa")
        )
        lines.append(
            f"| {r['batch']} | {r['prompt_tokens']} | {r['method']} | {r['seconds']} | {r['tokens_per_s']} | "
            f"{float(r['tokens_per_s']) / base:.2f} |"
        )
    md = "\n".join(lines) + "\n"
    (out_dir / f"bench_generate{tag}.md").write_text(md)
    print(md)


def bench_directer(model, tok, body: str, new_tokens: int, out_dir: Path, tag: str) -> None:
    from attnsteer._harness import median_time
    from attnsteer.directer.cache import forward, peek

    msgs = [
        {"role": "system", "content": "<<Start your answer with the word YES.>>"},
        {"role": "user", "content": f"{body}\n\nSummarise the text above."},
    ]
    enc = attnsteer.highlight(tok, msgs)
    ids, am = enc["input_ids"], enc["attention_mask"]
    T, L = ids.shape[1], model.config.num_hidden_layers
    d = attnsteer.Directer()
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; SmolLM2-135M-Instruct fp32, "
        f"batch 1, prompt {T} tokens.",
        "",
    ]
    with torch.inference_mode():
        # one single-token forward over a T-1 token cache: SDPA, attnsteer unsteered, a trial on all / half the layers
        from transformers import DynamicCache

        cache = DynamicCache(config=model.config)
        model(input_ids=ids[:, :-1], attention_mask=am[:, :-1], past_key_values=cache, use_cache=True)

        def sdpa_step():
            with peek(cache, T - 1):
                model(input_ids=ids[:, -1:], attention_mask=am, past_key_values=cache, use_cache=True, logits_to_keep=1)

        t_sdpa = median_time(sdpa_step, reps=15)
        with attnsteer.steer(model, d.trial_method(), spans=enc):
            steering = attnsteer.hf.active(model)
            half = torch.zeros(1, L, dtype=torch.bool)
            half[:, : L // 2] = True
            times = {}
            for name, rows in [
                ("attnsteer unsteered", None),
                ("trial, all layers", torch.ones(1, L, dtype=torch.bool)),
                ("trial, half the layers", half),
            ]:

                def step(rows=rows):
                    with peek(cache, T - 1):
                        forward(model, steering, ids[:, -1:], am, cache, rows)

                times[name] = median_time(step, reps=15)
        lines += [
            "| single-token forward over the prompt cache | ms | ÷ SDPA forward |",
            "|---|---:|---:|",
            f"| SDPA (unsteered) | {1e3 * t_sdpa:.2f} | 1.00 |",
        ]
        lines += [f"| {k} | {1e3 * v:.2f} | {v / t_sdpa:.2f} |" for k, v in times.items()]
        # whole generations
        kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        base, t_base = timed(lambda: model.generate(**enc, **kw))
        runs = []
        for beta in (0.5, 0.1):  # the paper's beta, and a lower one so that the gate opens more often
            d = attnsteer.Directer(beta=beta)
            out, dt = timed(lambda d=d: model.generate(**enc, custom_generate=d, spans=enc, **kw))
            runs.append((d, dt, out.shape[1] - T))
    n_base = base.shape[1] - T
    lines += [
        "",
        f"Greedy, {new_tokens} new tokens (min_new_tokens pinned), Directer(alpha=100, max_trials=10), "
        "layer ranking computed per prompt (included: L + 1 = 31 single-token forwards):",
        "",
        "| decoding | seconds | tokens/s | ratio | gated steps | steered steps | trials | accepted (layers: steps) | fallbacks |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|",
        f"| greedy, SDPA | {t_base:.2f} | {n_base / t_base:.2f} | 1.00 | | | | | |",
    ]
    for d, t_dir, n_dir in runs:
        st = d.stats
        lines.append(
            f"| DIRECTER beta={d.beta} | {t_dir:.2f} | {n_dir / t_dir:.2f} | {(n_dir / t_dir) / (n_base / t_base):.2f} | "
            f"{st.gated}/{st.steps} ({100 * st.gated_fraction:.0f}%) | {st.steered} | {st.trials} | "
            f"{', '.join(f'{k}: {v}' for k, v in sorted(st.accepted.items(), reverse=True)) or '-'} | {st.fallbacks} |"
        )
    md = "\n".join(lines) + "\n"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"bench_directer{tag}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
