"""``attnsteer eval sweep --task ifeval | retention | priority``: the one sweep and report engine.

For any task of `.tasks` (cases → prompts with spans → replies → verdicts → summary with intervals):

- **Grids** (`GRIDS`): per task, named grids of method settings — a spec template and the strengths
  in the method's own unit. Templates may steer a layer subset: ``{upper}`` (the upper half of the
  layers) or ``{ranked}`` (DIRECTER's top-ranked quarter, ranked once on the first dev prompts and
  kept in ``ranked_layers.json`` so that a resumed sweep uses the same layers). ``--gated`` adds
  each point inside DIRECTER's plausibility gate (``gate+…``).
- **Dev**: unsteered and every grid point on the task's dev split, round-robin over the grids (each
  grid's first point, then each one's second…, so an interrupted sweep has looked at every method).
- **Choice** (`choose`, one rule for every task): among the points measured on every dev case and
  carrying no fluency flag, the best dev score (`tasks.Task.metric`); on a tie the weaker setting
  (`strength`), then the earlier grid. Per grid (``by_grid``) and over all grids (``best``).
- **Report**: ``sweep.md`` (every point with its score, replies, flags; the task's dev table — over the
  grids asked for and every other grid of the task with a point in the store, so ``--methods`` picks
  what runs, not what the report and the choice cover),
  ``sweep.json`` (the choice, the scores, the rows) and ``sweep.png`` (score against strength, one
  panel per grid, flagged points hollow).
- **Test**: ``--report-test`` / ``--test-only``: unsteered and the chosen points (or
  ``--test-method best | grid:NAME | SPEC``) on the test split, reported into ``OUT/test``.
- ``--save-config FILE`` writes the overall choice as an `attnsteer.SteeringConfig` with its
  evidence — only when it beats unsteered on dev (``--allow-no-gain`` saves a tie or a loss anyway;
  the report says "no setting beats unsteered on dev" then); ``--report-only`` generates nothing and rebuilds the reports from the stored replies.

Every reply lands in the resumable store ``OUT/responses.jsonl`` (``--shard NAME`` writes
``responses.NAME.jsonl`` so that two queues can run side by side; reports read every shard).
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .. import specs
from ..config import from_cli
from . import fluency, runner, tasks

__all__ = ["GRIDS", "DEFAULT_GRIDS", "grid_specs", "strength", "choose", "ranked_layers", "report", "plot", "main"]

Grid = Tuple[str, Sequence[float]]

# task -> grid name -> (spec template, strengths)
GRIDS: Dict[str, Dict[str, Grid]] = {
    "ifeval": {
        "guide": ("guide:delta={}", (0.5, 1.0, 2.0)),
        "instaboost": ("instaboost:alpha={}", (2.0, 5.0, 10.0)),
        "spotlight": ("spotlight:target={}", (0.1, 0.2, 0.3)),
        "pasta": ("pasta:alpha={}", (0.5, 0.2, 0.1)),
        "pasta-layers": ("pasta:alpha={},layers={upper}", (0.3, 0.1, 0.01)),
        "keyscale": ("keyscale:alpha={}", (1.5, 2.0, 4.0)),
        # PASTA on the model's shipped head profile (examples/profile_pasta_heads.py; not in the default list)
        "pasta-heads": ("pasta:alpha={},heads={heads}", (0.1, 0.01)),
        "spa": ("spa:omega={}", (1.5, 2.0, 3.0)),  # SPA, the logit-level baseline (not in the default list)
        # The key-editing methods with the model's shipped projections, last 10 layers (not in the default list)
        "seka": ("seka:gain={},layers={last10},projection={projection}", (0.4, 0.8)),
        "prism": ("prism:gain={},gain_value=0.2,layers={last10},projection={prism_projection}", (0.4,)),
        "adaseka": ("adaseka:gain={},experts={experts},layers={last10}", (0.5, 1.0)),
    },
    "retention": {
        "guide": ("guide:delta={}", (0.5, 1.0, 2.0)),
        "guide-length": ("guide:delta={},length_ref=256", (0.5, 1.0)),
        "guide-upper": ("guide:delta={},layers={upper}", (1.0, 2.0)),
        "guide-prefill": ("guide:delta={},phases=prefill", (1.0, 2.0)),
        "instaboost": ("instaboost:alpha={}", (2.0, 5.0)),
        "spotlight": ("spotlight:target={}", (0.05, 0.1, 0.2)),
        "spotlight-decode": ("spotlight:target={},phases=decode", (0.1, 0.2)),
        "pasta-upper": ("pasta:alpha={},layers={upper}", (0.3, 0.1)),
        "keyscale": ("keyscale:alpha={}", (1.5, 2.0)),
        "keyscale-ranked": ("keyscale:alpha={},layers={ranked}", (2.0, 4.0)),
        "spa": ("spa:omega={}", (1.5, 2.0, 3.0)),
    },
    # Strengths around the papers' (GUIDE 2, InstABoost 10, PASTA 0.01, SpotLight 0.3, DIRECTER's
    # key scaling 100) on both sides.
    "priority": {
        "guide": ("guide:delta={}", (0.5, 1.0, 2.0, 4.0)),
        "instaboost": ("instaboost:alpha={}", (2.0, 5.0, 10.0, 30.0)),
        "pasta": ("pasta:alpha={}", (0.3, 0.1, 0.01)),
        "pasta-heads": ("pasta:alpha={},heads={heads}", (0.1, 0.01)),  # the model's shipped head profile
        "spotlight": ("spotlight:target={}", (0.3, 0.5, 0.8)),
        "keyscale": ("keyscale:alpha={}", (100.0,)),
        "keyscale-both": ("keyscale:alpha={},phases=both", (2.0, 4.0)),
        "spa": ("spa:omega={}", (1.5, 2.0, 3.0)),
        # SEKA with the model's shipped projection on its last 10 layers (the released code's layers)
        "seka": ("seka:gain={},layers={last10},projection={projection}", (0.8, 2.0)),
        # PRISM-Δ with the model's shipped PRISM projection (keys at the gain, values at 0.2), same layers
        "prism": ("prism:gain={},gain_value=0.2,layers={last10},projection={prism_projection}", (0.4, 1.0)),
        # AdaSEKA with the model's shipped experts (one per prompt family), same layers
        "adaseka": ("adaseka:gain={},experts={experts},layers={last10}", (0.5, 1.0, 2.0)),
    },
}
DEFAULT_GRIDS: Dict[str, Tuple[str, ...]] = {
    "ifeval": ("guide", "instaboost", "spotlight", "pasta", "pasta-layers", "keyscale"),
    "retention": tuple(g for g in GRIDS["retention"] if g != "spa"),
    "priority": tuple(g for g in GRIDS["priority"] if g not in ("spa", "seka", "prism", "adaseka", "pasta-heads")),
}
RANKED_FILE = "ranked_layers.json"
RULE = (
    "best dev score among the points measured on every dev case with no fluency flag; on a tie the weaker "
    "setting (attnsteer.eval.sweep.strength), then the earlier grid"
)


def grid_specs(
    task: str,
    name: str,
    num_layers: int,
    ranked: Optional[Sequence[int]] = None,
    gated: bool = False,
    projection: Optional[str] = None,
    prism_projection: Optional[str] = None,
    experts: Optional[str] = None,
    heads: Optional[str] = None,
) -> List[Tuple[float, str]]:
    """``[(strength, canonical spec)]`` of grid ``name`` of ``task`` for a model with ``num_layers``
    layers; ``ranked`` fills ``{ranked}``, ``projection`` (a shipped SEKA projection's name)
    ``{projection}``, ``prism_projection`` (a shipped PRISM-Δ one) ``{prism_projection}`` and
    ``experts`` (a model with shipped AdaSEKA experts) ``{experts}`` and ``heads`` (a shipped PASTA head
    profile) ``{heads}`` (required by the grids that use them)."""
    grids = GRIDS[tasks.get(task).name]
    if name not in grids:
        raise ValueError(f"unknown {task} sweep grid {name!r}: choose from {', '.join(grids)}")
    template, values = grids[name]
    if "{ranked}" in template and not ranked:
        raise ValueError(f"grid {name!r} steers DIRECTER's top-ranked layers: rank them first (ranked_layers)")
    given = {"projection": projection, "prism_projection": prism_projection, "experts": experts, "heads": heads}
    if any("{" + k + "}" in template and not v for k, v in given.items()):
        raise ValueError(
            f"grid {name!r} needs a shipped key projection or head profile for this model "
            "(attnsteer.specs.SHIPPED_PROJECTIONS / SHIPPED_HEADS); make one (attnsteer learn-projection, "
            "examples/profile_pasta_heads.py) and pass it with --method instead"
        )
    fill = {
        "upper": f"{num_layers // 2}-{num_layers - 1}",
        "last10": f"{max(0, num_layers - 10)}-{num_layers - 1}",
        "ranked": "+".join(str(x) for x in sorted(ranked or [])),
        "projection": projection or "",
        "prism_projection": prism_projection or "",
        "experts": experts or "",
        "heads": heads or "",
    }
    return [
        (v, specs.canonical(("gate+" if gated else "") + template.replace("{}", f"{v:g}").format(**fill)))
        for v in values
    ]


def strength(spec: str) -> float:
    """How far a setting moves from unsteered, for tie-breaks: GUIDE's |Δ|, SpotLight's target,
    |log α| of a multiplicative factor (InstABoost, PASTA, KeyScale), SPA's |ω − 1|, SEKA's / PRISM's
    |gain|; 0 for unsteered."""
    m = re.search(r"(delta|alpha|target|omega|gain)=([-+0-9.e]+)", spec)
    if not m:
        return 0.0
    v = float(m.group(2))
    if m.group(1) in ("delta", "gain"):
        return abs(v)
    if m.group(1) == "target":
        return v
    if m.group(1) == "omega":
        return abs(v - 1)
    return abs(math.log(v)) if v > 0 else float("inf")


def choose(scores: Dict[str, Dict[str, Any]], candidates: Sequence[str]) -> Optional[Dict[str, Any]]:
    """The candidate with the best ``score`` and no fluency flag (ties: the weaker `strength`, then
    the earlier candidate); None when every measured candidate is flagged or none is measured."""
    ok = [scores[c] for c in candidates if c in scores and not scores[c]["flags"]]
    if not ok:
        return None
    best = max(s["score"] for s in ok)
    return min((s for s in ok if s["score"] == best), key=lambda s: strength(s["method"]))


def ranked_layers(model, tokenizer, prompts: Sequence[Any], out: str, top: Optional[int] = None) -> List[int]:
    """DIRECTER's top-ranked layers for these prompts (`ifeval.Prompt` or anything with ``.text``;
    mean sensitivity over them, key scaling × 100 as in the paper), the ``top`` (default a quarter
    of the layers) most sensitive; read from ``out/ranked_layers.json`` when an earlier run wrote it."""
    stored = _stored_ranking(out)
    if stored is not None:
        return stored
    path = os.path.join(out, RANKED_FILE)
    from ..directer import rank_layers
    from .runner import _encode

    enc = _encode(tokenizer, prompts, True).to(model.device)
    ranking = rank_layers(model, enc, progress=False).mean()
    L = ranking.order.shape[1]
    k = top or max(2, L // 4)
    layers = sorted(int(x) for x in ranking.order[0, :k])
    os.makedirs(out, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"layers": layers, "prompts": [p.key for p in prompts],
                   "sensitivity": ranking.sensitivity[0].tolist()}, f, indent=1)  # fmt: skip
    return layers


def plot(
    scores: Dict[str, Dict[str, Any]], grids: Dict[str, List[Tuple[float, str]]], path: str, title: str, ylabel: str
) -> str:
    """Dev score against strength, one panel per grid (its gated twin dashed in the same panel, at most
    four panels a row); flagged points hollow; unsteered a grey line."""
    from .._plot import finish, pyplot

    plt = pyplot(path)
    panels = list(dict.fromkeys(n.replace("gate+", "") for n in grids))
    cols = min(4, len(panels))
    nrows = -(-len(panels) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.1 * cols, 2.7 * nrows), squeeze=False)
    base = scores.get("none")
    for i, name in enumerate(panels):
        ax = axes[i // cols][i % cols]
        for j, (label, style) in enumerate(((name, "-"), ("gate+" + name, "--"))):
            got = [(v, scores[s]) for v, s in grids.get(label, []) if s in scores]
            if not got:
                continue
            ax.plot([v for v, _ in got], [100 * s["score"] for _, s in got], style, color=f"C{j}",
                    label="gated" if j else "plain")  # fmt: skip
            for v, s in got:
                ax.plot([v], [100 * s["score"]], "o", color=f"C{j}", mfc="white" if s["flags"] else f"C{j}")
        if base is not None:
            ax.axhline(100 * base["score"], color="gray", ls=":", lw=1, label="unsteered")
        ax.set_title(name, fontsize=9)
        unit = re.search(r"(delta|alpha|target|omega|gain)", (grids.get(name) or grids.get("gate+" + name))[0][1])
        ax.set_xlabel(unit.group(1) if unit else "")
        ax.set_ylabel(ylabel, fontsize=8)
        ax.legend(fontsize=6)
    for k in range(len(panels), nrows * cols):
        axes[k // cols][k % cols].axis("off")
    fig.suptitle(title + " (hollow = outside the fluency bounds)", fontsize=9)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    finish(fig, path)
    return path


def report(
    task: tasks.Task,
    store: runner.ResponseStore,
    tag: str,
    max_new_tokens: int,
    out: str,
    grids: Dict[str, List[Tuple[float, str]]],
    dev_cases: Sequence[Any],
    opts: tasks.Options,
    command: str,
    machine: str,
    extra: Optional[Dict[str, List[Tuple[float, str]]]] = None,
) -> Dict[str, Any]:
    """``sweep.md`` / ``sweep.json`` / ``sweep.png`` from the replies stored so far: every point
    measured on every dev case with its score, and the choice (``by_grid``, ``best``). ``grids`` are
    always reported; ``extra`` grids (the task's others) only where a point of theirs is measured, so
    a run with ``--methods X`` still reports and chooses over every grid in the store."""
    keys = task.keys(dev_cases)
    rows = task.summarize(store, tag, max_new_tokens, dev_cases, opts)
    count: Dict[str, int] = {}
    for k in store.records:
        if k[0] == tag and k[3] == max_new_tokens and k[4] in keys and k[2] == task.strategy(k[1], opts):
            count[k[1]] = count.get(k[1], 0) + 1
    scores = {m: s for m, s in task.scores(rows).items() if count.get(m, 0) == len(keys)}
    grids = {**grids, **{n: p for n, p in (extra or {}).items()
                         if n not in grids and any(s in scores for _, s in p)}}  # fmt: skip
    by_grid = {}
    for name, pts in grids.items():
        c = choose(scores, [s for _, s in pts])
        by_grid[name] = c["method"] if c else None
    best = choose(scores, [c for c in by_grid.values() if c])
    base = scores.get("none", {}).get("score")
    helps = best is not None and base is not None and best["score"] > base
    chosen = {"by_grid": by_grid, "best": best["method"] if best else None, "helps": helps, "scores": scores,
              "edge": _edge(rows, best["method"]) if best else {}}  # fmt: skip
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "sweep.json"), "w", encoding="utf-8") as f:
        json.dump({"task": task.name, "model": tag, "max_new_tokens": max_new_tokens, "strategy": opts.strategy,
                   "command": command, "machine": machine, "metric": task.metric, "rule": RULE,
                   "fluency_bounds": fluency.BOUNDS, "dev_cases": len(keys), **chosen,
                   "measured": {n: [s for _, s in pts if s in scores] for n, pts in grids.items()},
                   "rows": rows}, f, indent=1)  # fmt: skip
    lines = [
        f"# {task.name} sweep — {tag} — dev split ({len(keys)} cases)",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine}",
        "",
        f"Score: {task.metric} (%). Choice: {RULE}. `*` = chosen for its grid, `**` = chosen overall. Points not "
        "yet measured on every dev case are left out.",
        "",
        "| grid | setting | dev score % | vs unsteered | replies | flags |",
        "|---|---|---:|---:|---:|---|",
    ]
    for name, pts in grids.items():
        for _, s in pts:
            if s not in scores:
                continue
            sc = scores[s]
            mark = "**" if s == chosen["best"] else ("*" if s == by_grid[name] else "")
            vs = f"{100 * (sc['score'] - base):+.1f}" if base is not None else ""
            lines.append(f"| {name} | {s}{mark} | {100 * sc['score']:.1f} | {vs} | {sc['n']} | "
                         f"{', '.join(sc['flags']) or '—'} |")  # fmt: skip
    if base is not None:
        lines.append(f"| — | unsteered | {100 * base:.1f} | | {scores['none']['n']} | |")
    if best is not None and base is not None and not helps:
        lines += ["", f"**No setting beats unsteered on dev**: the choice, {best['method']}, scores "
                  f"{100 * best['score']:.1f} % against unsteered's {100 * base:.1f} %; nothing to ship "
                  "(`--save-config` refuses without `--allow-no-gain`)."]  # fmt: skip
    if chosen["edge"]:
        near = ", ".join(f"{k} ({100 * v:.0f} % of the bound's width inside it)" for k, v in chosen["edge"].items())
        lines += ["", f"**The choice sits at the edge of the fluency bounds on dev**: {near}. It may be flagged on "
                  "other prompts (the test split); the grid's next weaker point is the safer one to test beside it."]  # fmt: skip
    lines += ["", "## Dev rows", "", task.table(rows), ""]
    with open(os.path.join(out, "sweep.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    if any(s in scores for pts in grids.values() for _, s in pts):
        plot(scores, {n: p for n, p in grids.items() if any(s in scores for _, s in p)},
             os.path.join(out, "sweep.png"), f"{task.name} dev split — {tag}: {task.metric}", "dev score (%)")  # fmt: skip
    return chosen


def _edge(rows: Sequence[Dict[str, Any]], method: str) -> Dict[str, float]:
    """The fluency bounds the dev choice sits within `fluency.EDGE` of (`fluency.margins`), where its row carries
    the unsteered run on the same cases (IFEval); ``{}`` otherwise."""
    row = next((r for r in rows if r["method"] == method and r.get("baseline_on_same")), None)
    if row is None:
        return {}
    m = fluency.margins(row, row["baseline_on_same"])
    return {k: round(v, 3) for k, v in m.items() if 0 <= v < fluency.EDGE}


def test_methods(asked: Optional[Sequence[str]], chosen: Dict[str, Any]) -> List[str]:
    """The specs of ``--test-method`` (``best``, ``grid:NAME`` or a spec); default every grid's choice.
    A choice that does not exist yet (every point flagged, or not measured) is an error."""
    if not asked:
        return [c for c in chosen["by_grid"].values() if c]
    out = []
    for a in asked:
        if a == "best" or a.startswith("grid:"):
            c = chosen["best"] if a == "best" else chosen["by_grid"].get(a[5:], "missing")
            if c == "missing":
                raise ValueError(
                    f"--test-method {a}: no such grid among the swept ones ({', '.join(chosen['by_grid'])})"
                )
            if c is None:
                raise ValueError(
                    f"--test-method {a}: no dev choice yet (no point measured on every dev case, or all flagged)"
                )
            out.append(c)
        else:
            out.append(from_cli(a))
    return out


def _store(out: str, shard: Optional[str]) -> runner.ResponseStore:
    return runner.ResponseStore(os.path.join(out, f"responses.{shard}.jsonl" if shard else "responses.jsonl"))


def main(args, load: Callable, command: str, machine: Callable) -> int:
    """The CLI entry (see the module docstring)."""
    from ..hf import num_layers

    task = tasks.get(args.task)
    names = [n.strip() for n in (args.methods or ",".join(DEFAULT_GRIDS[task.name])).split(",") if n.strip()]
    for n in names:
        if n not in GRIDS[task.name]:
            raise ValueError(f"unknown {task.name} sweep grid {n!r}: choose from {', '.join(GRIDS[task.name])}")
    if args.report_only and not args.test_only and args.report_test:
        raise ValueError("--report-only with --report-test: pass --test-only to rebuild the test report alone")
    M = args.max_new_tokens or task.max_new_tokens
    given_dev, given_test = _options(args, test=False), _options(args, test=True)
    model, tok, tag = load(args)
    L = num_layers(model)
    dev_opts, test_opts = task.options("dev", given_dev), task.options("test", given_test)
    dev = task.cases(tok, model, "dev", dev_opts, M)
    ranked = None
    if any("{ranked}" in GRIDS[task.name][n][0] for n in names):
        prompts = [getattr(c, "prompt", None) for c in dev[:4]]
        if any(p is None for p in prompts):
            raise ValueError(f"the {task.name} task has no prompt objects to rank layers on; drop the ranked grids")
        ranked = ranked_layers(model, tok, prompts, args.out)
    proj = dict(projection=_shipped_projection(tag), prism_projection=_shipped_projection(tag, "prism"),
                experts=_shipped_projection(tag, "experts"), heads=_shipped_projection(tag, "heads"))  # fmt: skip
    grids: Dict[str, List[Tuple[float, str]]] = {}
    for n in names:
        grids[n] = grid_specs(task.name, n, L, ranked, **proj)
        if getattr(args, "gated", False):
            grids["gate+" + n] = grid_specs(task.name, n, L, ranked, gated=True, **proj)
    store = _store(args.out, args.shard)
    run = dict(store=store, model_tag=tag, batch_size=args.batch_size, max_new_tokens=M,
               progress=not args.no_progress)  # fmt: skip
    if not args.test_only and not args.report_only:
        depth = max(len(p) for p in grids.values())
        order = ["none"] + [pts[i][1] for i in range(depth) for pts in grids.values() if i < len(pts)]
        task.run(model, tok, dev, order, opts=dev_opts, **run)
    store = _store(args.out, args.shard)  # the other shards too
    extra = _other_grids(task.name, grids, L, ranked or _stored_ranking(args.out), proj)
    chosen = report(task, store, tag, M, args.out, grids, dev, dev_opts, command, machine(), extra)
    print(open(os.path.join(args.out, "sweep.md"), encoding="utf-8").read())
    best = chosen["scores"].get(chosen["best"]) if chosen["best"] else None
    evidence: Dict[str, Any] = {}
    if best is not None:
        evidence = {"dev_score": best["score"], "dev_unsteered_score": chosen["scores"].get("none", {}).get("score"),
                    "dev_replies": best["n"], "dev_cells": best["cells"], "metric": task.metric}  # fmt: skip
    if args.report_test or args.test_only:
        test = task.cases(tok, model, "test", test_opts, M)
        evidence.update(_test_stage(args, task, model, tok, test, test_opts, chosen, best, run, command, machine()))
    if args.save_config:
        if best is not None and not chosen["helps"] and not getattr(args, "allow_no_gain", False):
            raise ValueError(
                f"the dev choice {best['method']} does not beat unsteered on dev ({100 * best['score']:.1f} % vs "
                f"{100 * (evidence.get('dev_unsteered_score') or 0):.1f} %): nothing worth saving — see "
                f"{os.path.join(args.out, 'sweep.md')}; pass --allow-no-gain to save it anyway"
            )
        _save(args, task, tag, best, evidence, command)
    return 0


def _test_stage(args, task, model, tok, test, opts, chosen, best, run, command, machine) -> Dict[str, Any]:
    """Unsteered and the chosen points on the test cases (unless ``--report-only``), the test report,
    and the overall choice's test evidence when the task gives one (``{"test": …}``)."""
    picked = list(dict.fromkeys(["none", *test_methods(args.test_method, chosen)]))
    if not args.report_only:
        task.run(model, tok, test, picked, opts=opts, **run)
    store = _store(args.out, args.shard)
    M = run["max_new_tokens"]
    title = f"{task.name} — {run['model_tag']} — test split ({len(test)} cases), settings chosen on dev"
    md = task.report(store, run["model_tag"], M, os.path.join(args.out, "test"), test, opts, title=title,
                     command=command, machine=machine)  # fmt: skip
    print(open(md, encoding="utf-8").read())
    if best is None or not hasattr(task, "evidence"):
        return {}
    try:
        return {"test": task.evidence(task.summarize(store, run["model_tag"], M, test, opts), best["method"])}
    except ValueError:
        return {}  # the overall choice was not among the test methods


def _save(args, task, tag: str, best: Optional[Dict[str, Any]], evidence: Dict[str, Any], command: str) -> None:
    if best is None:
        raise ValueError("no grid point is free of fluency flags on dev (or none is measured on every dev case): "
                         f"nothing to save (see {os.path.join(args.out, 'sweep.md')})")  # fmt: skip
    from ..config import SteeringConfig

    SteeringConfig(best["method"], model=tag, task=task.name, evidence={**evidence, "command": command}).save(
        args.save_config
    )
    print(f"wrote {args.save_config}: {best['method']}")


def _stored_ranking(out: str) -> Optional[List[int]]:
    """DIRECTER's ranked layers an earlier run of this sweep wrote (None: none)."""
    path = os.path.join(out, RANKED_FILE)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return list(json.load(f)["layers"])


def _other_grids(task: str, grids, num_layers: int, ranked, proj) -> Dict[str, List[Tuple[float, str]]]:
    """The task's grids (plain and gated) not in ``grids`` that this model can fill (a grid that needs a
    ranking or a shipped file it lacks is left out) — reported where their points were measured."""
    out: Dict[str, List[Tuple[float, str]]] = {}
    for n in GRIDS[task]:
        for gated in (False, True):
            name = ("gate+" if gated else "") + n
            if name in grids:
                continue
            try:
                out[name] = grid_specs(task, n, num_layers, ranked, gated=gated, **proj)
            except ValueError:
                continue
    return out


def _shipped_projection(tag: str, kind: str = "seka") -> Optional[str]:
    """The shipped projection of ``kind`` (``"seka"``, ``"prism"``, ``"experts"``: the model's set of
    AdaSEKA experts, or ``"heads"``: its PASTA head profile) of the model stored under ``tag``, by name
    (None: none ships)."""
    from ..models import MODELS
    from .cli import base_tag

    name = next((n for n, m in MODELS.items() if m.tag == base_tag(tag)), None)
    if kind == "experts":
        return name if name in specs.SHIPPED_EXPERTS else None
    if kind == "heads":
        return name if name in specs.SHIPPED_HEADS else None
    if name is not None and kind != "seka":
        name = f"{name}-{kind}"
    return name if name in specs.SHIPPED_PROJECTIONS else None


def _options(args, test: bool) -> tasks.Options:
    """The task options the command line gave for the dev (or test) split; unset = the task's default."""
    pre = "test_" if test else ""
    lengths = getattr(args, pre + "lengths", None)
    placements = getattr(args, pre + "placements", None)
    rules = getattr(args, "rules", None)
    if placements:
        placements = [p.strip() for p in placements.split(",") if p.strip()]
        allowed = _placements(args.task)
        for p in placements:
            if allowed and p not in allowed:
                raise ValueError(f"--{pre.replace('_', '-')}placements: {p!r} is not one of {', '.join(allowed)}")
    if rules:
        from .retention import RULES

        rules = [r.strip() for r in rules.split(",") if r.strip()]
        for r in rules:
            if r not in RULES:
                raise ValueError(f"--rules: unknown rule {r!r}: choose from {', '.join(RULES)}")
    return tasks.Options(
        lengths=[int(x) for x in lengths.split(",") if x.strip()] if lengths else None,
        placements=placements or None,
        docs=getattr(args, pre + "docs", None),
        rules=rules or None,
        strategy=getattr(args, "strategy", "prompt"),
        k=getattr(args, "k", 2),
        limit=args.limit if (not test or args.task == "ifeval") else None,
    )


def _placements(task: str) -> Tuple[str, ...]:
    if task == "retention":
        from .retention import PLACEMENTS

        return PLACEMENTS
    if task == "priority":
        from .priority import PLACEMENTS

        return PLACEMENTS
    return ()
