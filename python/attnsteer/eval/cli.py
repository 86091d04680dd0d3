"""``attnsteer eval ifeval | retention | priority | sweep | report | curves``."""

from __future__ import annotations

import os
import platform
import shlex
import sys
from typing import List, Optional

DEFAULT_OUT = "eval_results"
MODEL_HELP = (
    "a shipped model by name (qwen2.5-coder-0.5b, qwen2.5-coder-1.5b, smollm2-135m, gemma3-270m), a local "
    "model folder or a .gguf file (default: the embedded SmolLM2-135M-Instruct)"
)


def add_parsers(sub) -> None:
    ev = sub.add_parser(
        "eval", help="evaluate steering: IFEval, long-context rule retention, context priority, strength sweeps"
    )
    esub = ev.add_subparsers(dest="eval_command", required=True)

    def common(p, default_out):
        p.add_argument("--model", default=None, help=MODEL_HELP)
        p.add_argument("--batch-size", type=int, default=8)
        p.add_argument("--max-new-tokens", type=int, default=256)
        p.add_argument("--limit", type=int, default=None, help="only the first N prompts (after the split)")
        p.add_argument(
            "--threads", type=int, default=None, help="torch.set_num_threads (1 can beat 2 on a loaded 2-core machine)"
        )
        p.add_argument("--out", default=default_out, help="results folder (responses.jsonl, results.json, results.md)")
        p.add_argument(
            "--dtype",
            default="float32",
            choices=["float32", "bfloat16"],
            help="the weights' dtype; bfloat16 runs ~2x faster on a CPU with AMX (replies are stored under the model "
            "name + ' bf16', apart from float32 ones)",
        )
        p.add_argument("--no-progress", action="store_true")

    p = esub.add_parser("ifeval", help="IFEval (541 prompts) unsteered and with each --method")
    common(p, os.path.join(DEFAULT_OUT, "ifeval"))
    p.add_argument(
        "--method",
        action="append",
        default=None,
        help="method spec, repeatable: none, guide:delta=2, instaboost:alpha=10, pasta:alpha=0.1, "
        "spotlight:target=0.3, keyscale:alpha=2, directer, gate+guide:delta=2, or @FILE (a saved "
        "SteeringConfig) (default: none)",
    )
    p.add_argument(
        "--strategy",
        default="prompt",
        choices=["prompt", "constraints", "system"],
        help="what is highlighted: the whole prompt, its constraint sentences, or a system message restating them",
    )
    p.add_argument(
        "--split", default="all", choices=["all", "dev", "test"], help="the fixed 100/441 split (sweeps tune on dev)"
    )

    p = esub.add_parser(
        "priority", help="two conflicting statements, one marked: does the reply follow the marked one?"
    )
    common(p, os.path.join(DEFAULT_OUT, "priority"))
    p.set_defaults(max_new_tokens=24, batch_size=8)
    p.add_argument("--method", action="append", default=None, help="method spec or @FILE, repeatable (default: none)")
    p.add_argument("--fillers", default="0,512,2048", help="filler tokens between the statements")
    p.add_argument(
        "--placements", default="user,system", help="user (all in the user message), system (marked one there)"
    )
    p.add_argument("--split", default="dev", choices=["dev", "test"], help="disjoint relations, entities and values")
    p.add_argument("--entities", type=int, default=8, help="entities per relation")
    p.add_argument("-k", type=int, default=2, dest="k", help="conflicting statements per case")

    p = esub.add_parser("retention", help="a checkable rule before/after a long document, accuracy against length")
    common(p, os.path.join(DEFAULT_OUT, "retention"))
    p.set_defaults(max_new_tokens=96)
    p.add_argument(
        "--method",
        action="append",
        default=None,
        help="method spec or @FILE (a SteeringConfig), repeatable (default: none)",
    )
    p.add_argument("--lengths", default="512,1024,2048,4096,8192", help="document lengths in tokens")
    p.add_argument("--placements", default="system,before,after", help="where the rule sits")
    p.add_argument("--docs", type=int, default=4, help="documents per length")
    p.add_argument("--rules", default=None, help="comma-separated rule names (default: all)")

    p = esub.add_parser(
        "sweep",
        help="strength grids per method, tuned on a task's dev split and reported on its test split: IFEval "
        "prompts (--task ifeval), long-context rule retention (--task retention) or context priority (--task priority)",
    )
    common(p, None)
    p.set_defaults(max_new_tokens=None)  # per task: 256 for IFEval, 64 for retention, 24 for priority
    p.add_argument("--task", default="ifeval", choices=["ifeval", "retention", "priority"])
    p.add_argument(
        "--methods",
        default=None,
        help="which grids, comma-separated (attnsteer.eval.sweep.GRIDS[task]; default "
        "attnsteer.eval.sweep.DEFAULT_GRIDS[task])",
    )
    p.add_argument("--gated", action="store_true", help="also each grid point inside DIRECTER's gate")
    p.add_argument("--strategy", default="prompt", choices=["prompt", "constraints", "system"], help="ifeval")
    p.add_argument("--report-test", action="store_true", help="then run the chosen settings on the test split")
    p.add_argument(
        "--save-config", default=None, metavar="FILE", help="write the chosen setting as a SteeringConfig JSON"
    )
    p.add_argument(
        "--allow-no-gain",
        action="store_true",
        help="--save-config even when the choice does not beat unsteered on dev (refused otherwise)",
    )
    g = p.add_argument_group("retention and priority tasks (unset: the task's defaults, attnsteer.eval.tasks.TASKS)")
    g.add_argument(
        "--lengths", default=None, help="dev document lengths in tokens (retention; 1024) / filler tokens (priority; 0)"
    )
    g.add_argument("--placements", default=None, help="dev placements (retention: before; priority: user,system)")
    g.add_argument("--docs", type=int, default=None, help="dev documents per length (6) / entities per relation (4)")
    g.add_argument("--rules", default=None, help="retention rules (default french,lowercase,no-comma)")
    g.add_argument("-k", type=int, default=2, dest="k", help="priority: conflicting statements per case")
    g.add_argument("--test-lengths", default=None, help="retention: 512,1024,2048,4096; priority: 0,512,2048")
    g.add_argument("--test-placements", default=None, help="retention: before,after,system; priority: user,system")
    g.add_argument("--test-docs", type=int, default=None, help="test documents per length (11) / entities (8)")
    g = p.add_argument_group("stages")
    g.add_argument("--test-only", action="store_true", help="skip the dev grid; run the test cells")
    g.add_argument(
        "--report-only",
        action="store_true",
        help="generate nothing: rebuild the dev report (and with --test-only the test report) from the stored replies",
    )
    g.add_argument(
        "--test-method",
        action="append",
        default=None,
        help="repeatable: a spec, 'best' (the dev choice over every grid in --methods) or 'grid:NAME' (that "
        "grid's dev choice), instead of every grid's choice",
    )
    g.add_argument("--shard", default=None, help="write responses.SHARD.jsonl (queues side by side); reports read all")

    p = esub.add_parser("report", help="rebuild results.json / results.md from a responses.jsonl")
    p.add_argument("--out", default=os.path.join(DEFAULT_OUT, "ifeval"))
    p.add_argument("--model-tag", default=None)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--split", default="all", choices=["all", "dev", "test"])
    p.add_argument("--retention", action="store_true", help="the folder holds a retention run (tables + retention.png)")

    p = esub.add_parser(
        "curves", help="retention test cells of several models side by side: one plot and one markdown table"
    )
    p.add_argument(
        "results", nargs="+", metavar="LABEL=RESULTS.json", help="a model's label and its retention results.json"
    )
    p.add_argument("--placement", default="before", choices=["system", "before", "after"])
    p.add_argument(
        "--method", action="append", default=None, help="repeatable spec (default: every method in the files)"
    )
    p.add_argument("--out", required=True, help="the plot (.png); the table goes beside it (.md)")
    p.add_argument("--title", default="")


def _load(args):
    import torch

    from .. import models

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, getattr(args, "dtype", None) or "float32")
    if args.model and models.shipped_name(args.model):
        name = models.shipped_name(args.model)
        model, tok = models.load(name, dtype=dtype)
        tag = models.MODELS[name].tag  # the name its results are stored under
    elif args.model:
        model, tok = models.load(args.model, dtype=dtype)
        tag = os.path.basename(os.path.normpath(args.model))
    else:
        model, tok = models.load_default(dtype=dtype)
        tag = "SmolLM2-135M-Instruct"
    return model, tok, dtype_tag(tag, dtype)


DTYPE_SUFFIX = {"bfloat16": " bf16"}  # float32 (the default) adds nothing


def dtype_tag(tag: str, dtype) -> str:
    """The name replies are stored under: the model's, plus `` bf16`` for bfloat16 weights (float32, the
    default, adds nothing), so that a store never mixes the replies of two dtypes."""
    return tag + DTYPE_SUFFIX.get(str(dtype).replace("torch.", ""), "")


def base_tag(tag: str) -> str:
    """The model's name of a stored tag (without a dtype suffix)."""
    for suffix in DTYPE_SUFFIX.values():
        if tag.endswith(suffix):
            return tag[: -len(suffix)]
    return tag


def machine() -> str:
    import torch

    return f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def _command(argv: Optional[List[str]]) -> str:
    return "attnsteer " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))


def _curves(args, argv) -> int:
    from .. import specs
    from . import retention

    results = {}
    for item in args.results:
        label, sep, path = item.rpartition("=")
        if not sep or not label:
            raise ValueError(
                f"{item!r}: give each results file as LABEL=PATH, e.g. SmolLM2=eval_results/.../results.json"
            )
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such results.json (run attnsteer eval sweep --task retention first)")
        results[label] = path
    methods = [specs.canonical(m) for m in args.method] if args.method else None
    rows, table = retention.compare_models(results, args.placement, methods)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    retention.plot_models(rows, args.out, args.title)
    md = os.path.splitext(args.out)[0] + ".md"
    text = (f"Rule {args.placement} the document" if args.placement != "system" else "Rule in the system message") + (
        ": share of replies that follow it (%, bootstrap 95 % interval, n replies) and, for a steered row, the "
        "difference to unsteered on the same prompts with its paired 95 % interval.\n\n"
        f"Command: `{_command(argv)}`\n\n{table}\n"
    )
    with open(md, "w", encoding="utf-8") as f:
        f.write(text)
    print(text)
    print(f"wrote {args.out} and {md}", file=sys.stderr)
    return 0


def run(args, argv=None) -> int:
    from . import ifeval, runner

    cmd = args.eval_command
    if cmd == "curves":
        return _curves(args, argv)
    if cmd == "report":
        store = runner.ResponseStore(os.path.join(args.out, "responses.jsonl"))
        tags = sorted({k[0] for k in store.records})
        tag = args.model_tag or (tags[0] if len(tags) == 1 else None)
        if tag is None:
            raise ValueError(f"{args.out} holds several models ({tags}): pass --model-tag")
        if args.retention:
            from . import retention

            print(retention.write_report(store, tag, args.max_new_tokens, args.out, _command(argv), machine()))
            return 0
        records = ifeval.split(ifeval.load_prompts(), args.split)
        rows = runner.summarize_ifeval(store, records, tag, args.max_new_tokens)
        _, md = runner.write_report(
            rows, args.out, title=f"IFEval — {tag} — {args.split} split", command=_command(argv), machine=machine()
        )
        print(open(md, encoding="utf-8").read())
        return 0
    if cmd == "ifeval":
        from ..config import from_cli

        methods = [from_cli(m) for m in args.method or ["none"]]  # fails before the model loads
        model, tok, tag = _load(args)
        records = ifeval.split(ifeval.load_prompts(), args.split)
        if args.limit:
            records = records[: args.limit]
        if args.strategy == "constraints":
            rep = ifeval.locate_report(records)
            print(
                f"constraints strategy: located at least one constraint in {rep['prompts_some_located']} of "
                f"{rep['prompts']} prompts (all in {rep['prompts_all_located']}); {rep['instructions_located']} of "
                f"{rep['instructions']} instructions",
                file=sys.stderr,
            )
        _, md = runner.ifeval_and_report(
            model,
            tok,
            records,
            methods,
            args.out,
            title=f"IFEval — {tag} — {args.split} split" + (f", first {args.limit}" if args.limit else ""),
            strategy=args.strategy,
            model_tag=tag,
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            progress=not args.no_progress,
            command=_command(argv),
            machine=machine(),
        )
        print(open(md, encoding="utf-8").read())
        return 0
    if cmd == "priority":
        from . import priority

        return priority.main(args, _load, _command(argv), machine)
    if cmd == "retention":
        from . import retention

        return retention.main(args, _load, _command(argv), machine)
    if cmd == "sweep":
        from . import sweep

        args.out = args.out or os.path.join(DEFAULT_OUT, "sweep" if args.task == "ifeval" else f"{args.task}-sweep")
        return sweep.main(args, _load, _command(argv), machine)
    raise ValueError(f"unknown eval command {cmd!r}")
