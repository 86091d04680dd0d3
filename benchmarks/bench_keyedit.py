"""The cost of the key-editing methods (SEKA, AdaSEKA, PRISM-Δ) and of SPA on Qwen2.5-Coder-0.5B-Instruct,
against unsteered SDPA and against the released SEKA code's approach, in one run.

- Prefill: one forward over a ~1k-token prompt with a marked rule (batch 1 and 4), where every span
  key is edited: unsteered SDPA; SEKA / AdaSEKA / PRISM-Δ through attnsteer (hooks + the
  ``lowrank_edit_`` op, attention unsteered); and the released code's approach — a hook on the key
  projection that loops over heads and prompts in Python and multiplies each span key by a dense
  ``D × D`` projector (written here from the paper's formula, with the same shipped projection).
- Generation (batch 1, greedy, min_new_tokens pinned; the ~1k-token prompt with 32 new tokens, where the
  prefill dominates, and a short prompt with 64, where decoding does): tokens/s of SEKA (keys edited
  once at prefill) and SPA against unsteered — SPA as steer()'s batch of two (one forward over 2B rows
  a step) and as a logits processor (two forwards a step).

    python benchmarks/bench_keyedit.py            # about 5 minutes on 2 cores
    python benchmarks/bench_keyedit.py --quick    # batch 1, prefill only

Ratio = time ÷ unsteered SDPA time (prefill) or tokens/s ÷ unsteered tokens/s (generation).
"""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

import torch

import attnsteer
from attnsteer import specs
from attnsteer._harness import timed, write_table
from attnsteer.demo import LONG_TEXT
from attnsteer.keyedit import _key_module

HERE = Path(__file__).resolve().parent
MODEL = "qwen2.5-coder-0.5b"
LAYERS = "14-23"


def released_style_hooks(model, proj, gain: float, span: torch.Tensor):
    """The released SEKA code's approach: per layer a hook on the key projection that, for every KV
    head and every prompt, multiplies the span keys by the dense projector ``P = UUᵀ``."""
    cfg = model.config
    Hkv, D = cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads
    P = {L: [u @ u.T for u in proj.pos[L]] for L in range(14, 24)}
    handles = []
    for attn in attnsteer.hf.attention_modules(model):
        if attn.layer_idx not in P:
            continue

        def post(module, inputs, out, L=attn.layer_idx):
            B, T, _ = out.shape
            k = out.view(B, T, Hkv, D)
            for h in range(Hkv):
                for b in range(B):
                    m = span[b] != 0
                    if m.any():
                        sel = k[b, m, h, :]
                        k[b, m, h, :] = sel + gain * (P[L][h] @ sel.T).T
            return out

        handles.append(_key_module(attn)[0].register_forward_hook(post))
    return handles


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=3, help="runs per point, the fastest is kept (the VM is noisy)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = attnsteer.models.load(MODEL)
    seka = specs.parse(f"seka:gain=0.8,layers={LAYERS},projection={MODEL}")
    methods = [
        ("sdpa (unsteered)", None),
        ("SEKA (attnsteer)", seka),
        ("AdaSEKA (attnsteer)", specs.parse(f"adaseka:gain=1,experts={MODEL},layers={LAYERS}")),
        ("PRISM-Δ (attnsteer)", specs.parse(f"prism:gain=0.4,gain_value=0.2,layers={LAYERS},projection={MODEL}-prism")),
        ("SEKA (released code's loop)", "released"),
    ]
    body = " ".join([LONG_TEXT] * 8)
    rows = []
    from tqdm.auto import tqdm

    for B in [1] if args.quick else [1, 4]:
        msgs = [
            [{"role": "user", "content": f"<<Answer in French.>> {body}\n\nSummarise the text above, variant {i}."}]
            for i in range(B)
        ]
        enc = attnsteer.highlight(tok, msgs)
        T = enc["input_ids"].shape[1]
        times = {name: [] for name, _ in methods}
        for name, method in tqdm([m for _ in range(args.repeats) for m in methods], desc=f"prefill, batch {B}"):
            with torch.inference_mode():
                if method is None:
                    _, dt = timed(lambda: model(**enc))
                elif method == "released":
                    hs = released_style_hooks(model, seka.projection, 0.8, enc.span_mask)
                    try:
                        _, dt = timed(lambda: model(**enc))
                    finally:
                        for h in hs:
                            h.remove()
                else:
                    with attnsteer.steer(model, method, spans=enc):
                        _, dt = timed(lambda: model(**enc))
            times[name].append(dt)
        base = min(times["sdpa (unsteered)"])
        for name, _ in methods:
            dt = min(times[name])
            rows.append(
                dict(part="prefill", batch=B, tokens=T, method=name, seconds=f"{dt:.3f}", ratio=f"{dt / base:.2f}")
            )
    if not args.quick:
        long_prompt = f"<<Answer in French.>> {body}\n\nSummarise it."
        short_prompt = "<<Answer in French.>> Name three fruits and say what colour each one is."
        gen = [("sdpa (unsteered)", None), ("SEKA (attnsteer)", seka),
               ("SPA(1.5), batch of two (steer)", attnsteer.SPA(1.5)),
               ("SPA(1.5), logits processor (two forwards a step)", "spa-processor")]  # fmt: skip
        for prompt, new in ((long_prompt, 32), (short_prompt, 64)):
            enc = attnsteer.highlight(tok, [[{"role": "user", "content": prompt}]])
            T = enc["input_ids"].shape[1]
            kw = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False)
            times = {name: [] for name, _ in gen}
            for name, method in tqdm([m for _ in range(args.repeats) for m in gen], desc=f"generate {new}, batch 1"):
                with torch.inference_mode():
                    if method is None:
                        _, dt = timed(lambda: model.generate(**enc, **kw))
                    elif method == "spa-processor":
                        proc = attnsteer.SPA(1.5).processor(model, enc)
                        _, dt = timed(lambda: model.generate(**enc, logits_processor=[proc], **kw))
                    else:
                        with attnsteer.steer(model, method, spans=enc):
                            _, dt = timed(lambda: model.generate(**enc, **kw))
                times[name].append(dt)
            base = new / min(times["sdpa (unsteered)"])
            for name, _ in gen:
                tps = new / min(times[name])
                rows.append(dict(part=f"generate {new}", batch=1, tokens=T, method=name,
                                 seconds=f"{min(times[name]):.2f}", ratio=f"{tps / base:.2f}"))  # fmt: skip
    out_dir = Path(args.out)
    tag = "_quick" if args.quick else ""
    intro = (
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s); Qwen2.5-Coder-0.5B-Instruct fp32, layers {LAYERS} edited, fastest of "
        f"{args.repeats}. `python benchmarks/bench_keyedit.py{' --quick' if args.quick else ''}`. Prefill ratio = "
        "time ÷ unsteered SDPA time (lower is better); generation ratio = tokens/s ÷ unsteered tokens/s."
    )
    columns = [("part", "part", "l"), ("batch", "batch", "r"), ("tokens", "prompt tokens", "r"),
               ("method", "method", "l"), ("seconds", "seconds", "r"), ("ratio", "ratio", "r")]  # fmt: skip
    write_table(rows, columns, intro, out_dir / f"bench_keyedit{tag}.md", out_dir / f"bench_keyedit{tag}.csv")


if __name__ == "__main__":
    main()
