"""Tokens/s of vLLM + attnsteer on the embedded model: unsteered vLLM vs each steered method, and
the Hugging Face path (attnsteer.steer + generate), at batch 1, 8 and 32 with ~1k-token prompts.

Run in the vLLM environment (`make test-vllm` creates it):

    .venv-vllm/bin/python benchmarks/bench_vllm.py            # batch 1, 8, 32; 64 new tokens
    .venv-vllm/bin/python benchmarks/bench_vllm.py --quick    # batch 1 and 8, 16 new tokens

Greedy, fp32, min_tokens pinned so every run decodes the same number of tokens, prefix caching
off; the methods run round-robin and each point is the fastest of --repeats rounds. Writes CSV and
markdown to --out.
"""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

HERE = Path(__file__).resolve().parent
METHODS = [None, "guide:delta=2", "instaboost:alpha=5", "pasta:alpha=0.1", "spotlight:target=0.3", "keyscale:alpha=3"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--batches", default=None, help="comma-separated batch sizes (default 1,8,32; --quick 1,8)")
    ap.add_argument("--new-tokens", type=int, default=None, help="tokens per reply (default 64; --quick 16)")
    ap.add_argument("--model", default=str(HERE.parent / "build" / "smollm2"), help="exported model folder")
    ap.add_argument("--repeats", type=int, default=3, help="rounds over all methods; the fastest counts")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args()
    import torch
    from vllm import LLM, SamplingParams

    import attnsteer
    from attnsteer import specs
    from attnsteer._harness import timed, write_csv
    from attnsteer.demo import LONG_TEXT
    from attnsteer.vllm import steered_prompt
    from attnsteer.vllm.plugin import register

    register()
    if not os.path.isdir(args.model):
        m, t = attnsteer.models.load_default(progress=False)
        attnsteer.models.export(m, t, args.model)
    batches = [int(b) for b in args.batches.split(",")] if args.batches else ([1, 8] if args.quick else [1, 8, 32])
    new = args.new_tokens or (16 if args.quick else 64)
    # no prefix caching: every run computes its prompts (the runs repeat the same prompts)
    llm = LLM(
        model=args.model,
        dtype="float32",
        max_model_len=2048,
        enforce_eager=True,
        seed=0,
        max_num_seqs=32,
        enable_prefix_caching=False,
    )
    tok = llm.get_tokenizer()
    body = " ".join([LONG_TEXT] * 8)
    rows = []
    hf_model = None
    for B in batches:
        msgs = [
            [
                {"role": "system", "content": "<<Start your answer with the word YES.>>"},
                {"role": "user", "content": f"{body}\n\nSummarise the text above, variant {i}."},
            ]
            for i in range(B)
        ]
        T = len(attnsteer.highlight(tok, msgs[0])["input_ids"][0])
        jobs = {}
        for spec in METHODS:
            prompts, params = [], []
            for mm in msgs:
                if spec is None:
                    prompts.append({"prompt_token_ids": attnsteer.highlight(tok, mm)["input_ids"][0].tolist()})
                    params.append(SamplingParams(temperature=0, max_tokens=new, min_tokens=new))
                else:
                    p = steered_prompt(tok, mm, spec)
                    prompts.append(p.prompt())
                    params.append(
                        SamplingParams(temperature=0, max_tokens=new, min_tokens=new, extra_args=p.extra_args)
                    )
            jobs[spec] = (prompts, params)
        # round-robin over the methods, fastest of --repeats rounds: on a shared machine, load
        # then hits every method alike
        best = {spec: float("inf") for spec in METHODS}
        llm.generate(*jobs[None], use_tqdm=False)  # warm-up at this batch size (first-touch costs), not timed
        for _ in range(args.repeats):
            for spec, (prompts, params) in jobs.items():
                dt = timed(lambda: llm.generate(prompts, params, use_tqdm=False))[1]
                best[spec] = min(best[spec], dt)
        for spec in METHODS:
            rows.append(
                dict(
                    batch=B,
                    prompt_tokens=T,
                    path="vllm",
                    method=spec or "unsteered",
                    seconds=f"{best[spec]:.2f}",
                    tokens_per_s=f"{B * new / best[spec]:.2f}",
                )
            )
        if B <= 8:  # the Hugging Face path, for reference (batch 32 is slow there)
            if hf_model is None:
                hf_model, hf_tok = attnsteer.models.load(args.model, progress=False)
            enc = attnsteer.highlight(hf_tok, msgs)
            kw = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False)
            with torch.inference_mode(), attnsteer.steer(hf_model, specs.parse("guide:delta=2"), spans=enc):
                _, dt = timed(lambda: hf_model.generate(**enc, **kw))
            rows.append(
                dict(
                    batch=B,
                    prompt_tokens=T,
                    path="hf",
                    method="guide:delta=2",
                    seconds=f"{dt:.2f}",
                    tokens_per_s=f"{B * new / dt:.2f}",
                )
            )
    out = Path(args.out)
    tag = ("_quick" if args.quick else "") + (f"_b{args.batches.replace(',', '-')}" if args.batches else "")
    write_csv(rows, out / f"bench_vllm{tag}.csv")
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, vLLM (CPU); "
        f"SmolLM2-135M-Instruct fp32, greedy, {new} new tokens (min pinned). Ratio = tokens/s ÷ unsteered vLLM "
        "at the same batch.",
        "",
        "| batch | prompt tokens | path | method | seconds | tokens/s | ratio |",
        "|---:|---:|---|---|---:|---:|---:|",
    ]
    for B in batches:
        base = next(float(r["tokens_per_s"]) for r in rows if r["batch"] == B and r["method"] == "unsteered")
        for r in (r for r in rows if r["batch"] == B):
            lines.append(
                f"| {B} | {r['prompt_tokens']} | {r['path']} | {r['method']} | {r['seconds']} | "
                f"{r['tokens_per_s']} | {float(r['tokens_per_s']) / base:.2f} |"
            )
    md = "\n".join(lines) + "\n"
    (out / f"bench_vllm{tag}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
