"""Command line: ``attnsteer demo | generate | eval | bench``.

``demo`` runs a marked rule on the embedded SmolLM2-135M-Instruct, unsteered vs each method
(``--kernel`` runs the kernel demo instead: span mass, accuracy against float64, time vs SDPA).
``generate`` steers one prompt with any method, on the embedded model or ``--model DIR|FILE.gguf``.
``eval`` measures whether steering helps (``ifeval``, ``retention``, ``sweep``, ``report``; see
`attnsteer.eval`).
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
from pathlib import Path

import torch

MODEL_HELP = (
    "a shipped model by name (attnsteer.models.available(): qwen2.5-coder-0.5b, qwen2.5-coder-1.5b, "
    "smollm2-135m, gemma3-270m), a local model folder or a .gguf file (default: the embedded SmolLM2-135M-Instruct)"
)


def _demo(args: argparse.Namespace) -> int:
    import torch.nn.functional as F

    import attnsteer
    from attnsteer import reference
    from attnsteer._harness import median_time

    torch.manual_seed(0)
    Hq, Hkv, D, T = 9, 3, 64, args.tokens
    print(f"attnsteer {attnsteer.__version__} — backend: {attnsteer.backend()} — torch {torch.__version__}")
    print(f"Random attention layer shaped like SmolLM2-135M (Hq={Hq}, Hkv={Hkv}, D={D}), causal prefill of {T} tokens;")
    print(f"the 'instruction' span is tokens {T // 8}..{T // 8 + 31}.\n")
    q, k, v = torch.randn(1, Hq, T, D), torch.randn(1, Hkv, T, D), torch.randn(1, Hkv, T, D)
    span = torch.zeros(1, T, dtype=torch.bool)
    span[0, T // 8 : T // 8 + 32] = True
    modes = [
        ("unsteered", {}),
        ("GUIDE      bias=+2", dict(bias=2.0)),
        ("InstABoost bias=log 10", dict(bias=2.302585)),
        ("PASTA      rest bias=log 0.01 (span kept)", None),
        ("SpotLight  target=0.3", dict(target=0.3)),
        ("DIRECTER   key_scale=100 (decode row)", dict(key_scale=100.0)),
    ]
    sdpa_t = median_time(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True))
    print(f"{'mode':44s} {'span mass (last row, mean over heads)':>38s} {'max err vs fp64':>16s} {'time / SDPA':>12s}")
    with torch.inference_mode():
        for name, kw in modes:
            mask = span
            if kw is None:  # PASTA down-weights everything outside the span
                mask, kw = ~span, dict(bias=-4.60517)
            out, mass = attnsteer.steered_attention(
                q, k, v, mask, is_causal=True, enable_gqa=True, return_span_mass=True, **kw
            )
            if mask is not span:
                mass = 1 - mass
            ref = reference.steered_attention(
                q[:, :, -8:],
                k,
                v,
                mask.double(),
                torch.full((1, Hq), kw.get("bias", 0.0)),
                torch.full((1, Hq), kw.get("key_scale", 1.0)),
                target=kw.get("target"),
                is_causal=True,
            )
            err = (out[:, :, -8:].double() - ref).abs().max().item()
            t = median_time(lambda: attnsteer.steered_attention(q, k, v, mask, is_causal=True, enable_gqa=True, **kw))
            print(f"{name:44s} {mass[0, :, -1].mean().item():38.3f} {err:16.1e} {t / sdpa_t:11.2f}x")
    return 0


def _method_from_args(args: argparse.Namespace):
    import attnsteer

    try:
        layers = [int(x) for x in args.layers.split(",")] if args.layers else None
    except ValueError:
        raise ValueError(
            f"--layers takes comma-separated layer indices, e.g. --layers 0,1,2; got {args.layers!r}"
        ) from None
    common = dict(layers=layers)
    if args.phases:
        common["phases"] = args.phases
    if getattr(args, "config", None):
        from .config import SteeringConfig

        if args.method != "guide" or layers or args.phases:
            raise ValueError("--config FILE gives the whole setting: drop --method / --layers / --phases")
        return SteeringConfig.load(args.config).build()
    name = args.method.lower()
    if name == "none":
        return None
    if name == "guide":
        return attnsteer.GUIDE(args.delta, **common)
    if name == "instaboost":
        return attnsteer.InstABoost(args.alpha if args.alpha is not None else 10.0, **common)
    if name == "pasta":
        return attnsteer.PASTA(args.alpha if args.alpha is not None else 0.01, **common)
    if name == "spotlight":
        return attnsteer.SpotLight(args.target, pooled=args.pooled, exact=args.exact, **common)
    if name in ("keyscale", "key_scale"):
        return attnsteer.KeyScale(args.alpha if args.alpha is not None else 100.0, **common)
    if name == "directer":
        if args.layers or args.phases:
            raise ValueError("directer picks its own layers (ranked per prompt) and steps; drop --layers/--phases")
        return attnsteer.Directer(
            args.alpha if args.alpha is not None else 100.0, beta=args.beta, max_trials=args.max_trials
        )
    raise ValueError(
        f"unknown method {args.method!r}: choose guide, instaboost, pasta, spotlight, keyscale, directer or none"
    )


def _generate(args: argparse.Namespace) -> int:
    import attnsteer
    from attnsteer.spans import MarkupError, parse_markup

    # Everything that can be checked without the model is checked first (loading takes ~45 s).
    method = _method_from_args(args)
    for name in ("delta", "alpha", "beta", "target"):
        v = getattr(args, name, None)
        if v is not None and not math.isfinite(v):
            raise ValueError(f"--{name} must be a finite number; got {v}")
    _, marked = parse_markup(args.prompt)
    if method is not None and not marked:
        raise MarkupError(
            'the prompt marks nothing: put the part to follow in <<...>>, e.g. "<<Answer in French.>> What is a cat?" '
            "(or pass --method none)"
        )
    model, tok = attnsteer.models.load(args.model) if args.model else attnsteer.models.load_default()
    if isinstance(method, attnsteer.Method):
        n = attnsteer.hf.num_layers(model)
        if n:
            method.check_layers(n)
    prompt = [{"role": "user", "content": args.prompt}] if args.chat else args.prompt
    if method is None:
        prompt = (
            [{"role": "user", "content": parse_markup(args.prompt)[0]}] if args.chat else parse_markup(args.prompt)[0]
        )
        enc = tok(
            prompt
            if isinstance(prompt, str)
            else tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True),
            return_tensors="pt",
            add_special_tokens=not args.chat,
        )
        out = model.generate(**enc, max_new_tokens=args.max_new_tokens, do_sample=False)
        print(tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True))
        return 0
    text = attnsteer.generate(model, tok, prompt, method, max_new_tokens=args.max_new_tokens, do_sample=False)
    print(text)
    if isinstance(method, attnsteer.Directer):
        print(method.stats, file=sys.stderr)
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        return _bench(argv[1:])
    parser = argparse.ArgumentParser(prog="attnsteer", description="Attention steering for Hugging Face models.")
    parser.add_argument("--version", action="version", version=f"attnsteer {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="a marked rule on the embedded model: unsteered vs each method")
    demo.add_argument("--kernel", action="store_true", help="run the kernel demo instead (no model)")
    demo.add_argument("--tokens", type=int, default=2048, help="sequence length of the kernel demo")
    demo.add_argument("--task", default=None, help="only this demo task")
    demo.add_argument("--max-new-tokens", type=int, default=60)
    demo.add_argument("--model", default=None, help=MODEL_HELP)
    gen = sub.add_parser("generate", help="generate from a prompt with <<marked>> spans")
    gen.add_argument("prompt", help='text with <<markup>>, e.g. "<<Answer in French.>> What is a cat?"')
    gen.add_argument(
        "--method", default="guide", help="guide | instaboost | pasta | spotlight | keyscale | directer | none"
    )
    gen.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="a tuned SteeringConfig JSON (attnsteer eval sweep --save-config FILE) instead of --method",
    )
    gen.add_argument("--delta", type=float, default=2.0, help="GUIDE's bias")
    gen.add_argument("--alpha", type=float, default=None, help="InstABoost / PASTA / KeyScale / DIRECTER factor")
    gen.add_argument("--beta", type=float, default=0.5, help="DIRECTER's plausibility threshold")
    gen.add_argument("--max-trials", type=int, default=10, help="DIRECTER's steered tries per step")
    gen.add_argument("--target", type=float, default=0.3, help="SpotLight's target span mass")
    gen.add_argument("--pooled", action="store_true", help="SpotLight: pool the span mass per layer")
    gen.add_argument("--exact", action="store_true", help="SpotLight: move the mass to exactly the target")
    gen.add_argument("--layers", default=None, help="comma-separated layer indices to steer (default all)")
    gen.add_argument("--phases", default=None, choices=["prefill", "decode", "both"])
    gen.add_argument("--model", default=None, help=MODEL_HELP)
    gen.add_argument("--chat", action="store_true", help="wrap the prompt as a user message (chat template)")
    gen.add_argument("--max-new-tokens", type=int, default=60)
    exp = sub.add_parser(
        "export", help="write a model (default: the embedded one) as a safetensors folder, e.g. for vLLM"
    )
    exp.add_argument("out", help="folder to write (config, safetensors weights, tokenizer)")
    exp.add_argument("--model", default=None, help=MODEL_HELP)
    lp = sub.add_parser(
        "learn-projection", help="learn SEKA's key projectors for a model (synthetic contrastive prompts, SVD)"
    )
    lp.add_argument("--model", default=None, help=MODEL_HELP)
    lp.add_argument("--out", required=True, help="the projection file to write (.safetensors)")
    lp.add_argument("--prompts", type=int, default=64, help="contrastive triplets (3 prompts each)")
    lp.add_argument("--gamma", type=float, default=0.9, help="share of the singular values each projector keeps")
    lp.add_argument("--layers", default=None, help="layers to learn, e.g. 12-23 (default all)")
    lp.add_argument("--min-diff", type=float, default=0.0, help="zero a head whose key shift is below this")
    lp.add_argument("--kind", default="seka", choices=["seka", "prism"], help="SEKA's projectors or PRISM-Δ's")
    lp.add_argument(
        "--family",
        default="facts",
        choices=["facts", "conflict", "rule"],
        help="the synthetic prompt family (AdaSEKA mixes projections learned on several)",
    )
    lp.add_argument("--batch-size", type=int, default=8)
    lp.add_argument("--threads", type=int, default=None)
    lp.add_argument("--no-progress", action="store_true")
    from .eval import cli as eval_cli

    eval_cli.add_parsers(sub)
    sub.add_parser(
        "bench",
        help="run benchmarks/bench_attention.py (from a source checkout); options pass through "
        "(--quick, --threads, --out; results go to ./attnsteer-bench unless --out is given)",
    )
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            if args.kernel:
                return _demo(args)
            from . import demo as model_demo

            return model_demo.run(args.task, args.max_new_tokens, args.model)
        if args.command == "generate":
            return _generate(args)
        if args.command == "export":
            return _export(args)
        if args.command == "learn-projection":
            return _learn_projection(args, argv)
        return eval_cli.run(args, argv)
    except (
        ValueError,
        TypeError,
        IndexError,
        NotImplementedError,
        FileNotFoundError,
        FileExistsError,
        ImportError,
    ) as err:
        # A bad argument gets one line and exit code 2 (ATTNSTEER_DEBUG=1 shows the traceback).
        if os.environ.get("ATTNSTEER_DEBUG"):
            raise
        print(f"attnsteer {args.command}: error: {err}", file=sys.stderr)
        return 2


def _learn_projection(args: argparse.Namespace, argv) -> int:
    import shlex
    import time

    import torch

    from . import models
    from .keyedit import learn_projection

    if os.path.isdir(args.out):
        raise FileExistsError(
            f"{args.out} is a folder; --out is the projection file to write (e.g. model.seka.safetensors)"
        )
    layers = None
    if args.layers:
        a, _, b = args.layers.partition("-")
        layers = list(range(int(a), int(b or a) + 1))
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = models.load(args.model) if args.model else models.load_default()
    t0 = time.perf_counter()
    proj = learn_projection(
        model,
        tok,
        prompts=args.prompts,
        gamma=args.gamma,
        layers=layers,
        min_diff=args.min_diff,
        batch_size=args.batch_size,
        kind=args.kind,
        family=args.family,
        progress=not args.no_progress,
        command="attnsteer " + " ".join(shlex.quote(x) for x in argv),
    )
    proj.meta["seconds"] = round(time.perf_counter() - t0, 1)
    path = proj.save(args.out)
    m = proj.meta
    print(
        f"wrote {path}: {m['kind']} ({m['family']} prompts), {len(proj.layers())} layers, mean rank {m['mean_rank']:.1f}, "
        f"{m['prompts']} triplets, {m['seconds']} s"
    )
    return 0


def _export(args: argparse.Namespace) -> int:
    from . import models

    if os.path.exists(args.out) and os.listdir(args.out):
        raise FileExistsError(f"{args.out} exists and is not empty; pass a new folder (nothing is overwritten)")
    model, tok = models.load(args.model) if args.model else models.load_default()
    models.export(model, tok, args.out)
    print(
        f"wrote {args.out}: {type(model).__name__}, {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M "
        f"parameters, {model.dtype} (serve it with: python -m vllm.entrypoints.openai.api_server --model {args.out})"
    )
    return 0


def _version() -> str:
    from . import __version__

    return __version__


def _bench(rest) -> int:
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_attention.py"
    if not script.exists():
        print(
            "attnsteer bench: error: needs a source checkout (benchmarks/bench_attention.py not found)", file=sys.stderr
        )
        return 2
    if not any(a == "--out" or a.startswith("--out=") for a in rest) and not any(a in ("-h", "--help") for a in rest):
        # Never write into the checkout's committed benchmarks/results by default.
        rest = [*rest, "--out", os.path.abspath("attnsteer-bench")]
    return subprocess.call([sys.executable, str(script), *rest])


if __name__ == "__main__":
    sys.exit(main())
