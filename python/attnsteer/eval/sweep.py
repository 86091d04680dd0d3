"""Strength sweeps: a grid per method on the IFEval development split, the best point chosen by
prompt-level loose accuracy among the points within the fluency bounds, then reported on the
test split (never tuned on it).

Grids (`GRIDS`; strengths in each method's own unit). ``pasta-layers`` is PASTA on a head
subset — every head of the upper half of the layers; ``pasta-heads`` uses the profiled heads that
ship for the embedded model (``attnsteer.profile_heads``; not in the default list).
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from . import fluency, ifeval, runner, specs

__all__ = ["GRIDS", "grid_specs", "choose", "plot"]

# name -> (spec template, strengths, strength label)
GRIDS: Dict[str, Tuple[str, Sequence[float], str]] = {
    "guide": ("guide:delta={}", (0.5, 1.0, 2.0), "delta"),
    "instaboost": ("instaboost:alpha={}", (2.0, 5.0, 10.0), "alpha"),
    "spotlight": ("spotlight:target={}", (0.1, 0.2, 0.3), "target"),
    "pasta": ("pasta:alpha={}", (0.5, 0.2, 0.1), "alpha"),
    "pasta-layers": ("pasta:alpha={},layers={layers}", (0.3, 0.1, 0.01), "alpha"),
    "keyscale": ("keyscale:alpha={}", (1.5, 2.0, 4.0), "alpha"),
    # The embedded model only: the head profile that ships for it (not in the default list).
    "pasta-heads": ("pasta:alpha={},heads=smollm2-135m", (0.1, 0.01), "alpha"),
}


def grid_specs(name: str, num_layers: int, gated: bool = False) -> List[Tuple[float, str]]:
    """``[(strength, canonical spec)]`` of grid ``name`` for a model with ``num_layers`` layers."""
    if name not in GRIDS:
        raise ValueError(f"unknown sweep grid {name!r}: choose from {', '.join(GRIDS)}")
    template, values, _ = GRIDS[name]
    layers = f"{num_layers // 2}-{num_layers - 1}"
    out = []
    for v in values:
        spec = template.format(v, layers=layers)
        out.append((v, specs.canonical(("gate+" if gated else "") + spec)))
    return out


def choose(rows: Sequence[Dict[str, Any]], candidates: Sequence[str]) -> Optional[Dict[str, Any]]:
    """The row among ``candidates`` with the best prompt-level loose accuracy and no fluency
    flag (ties: the weaker setting, i.e. the earlier candidate); None when every point is flagged."""
    by_method = {r["method"]: r for r in rows}
    ok = [by_method[c] for c in candidates if c in by_method and not by_method[c]["flags"]]
    if not ok:
        return None
    best = max(r["prompt_loose"] for r in ok)
    return next(r for r in ok if r["prompt_loose"] == best)


def plot(
    rows: Sequence[Dict[str, Any]],
    grids: Dict[str, List[Tuple[float, str]]],
    baseline: Optional[Dict[str, Any]],
    path: str,
) -> str:
    """Prompt-level loose accuracy against strength, one panel per grid; flagged points hollow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_method = {r["method"]: r for r in rows}
    n = len(grids)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.0), squeeze=False)
    for ax, (name, pts) in zip(axes[0], grids.items()):
        xs = [v for v, s in pts if s in by_method]
        ys = [100 * by_method[s]["prompt_loose"] for v, s in pts if s in by_method]
        ax.plot(xs, ys, "-", color="C0")
        for v, s in pts:
            if s in by_method:
                r = by_method[s]
                ax.plot([v], [100 * r["prompt_loose"]], "o", color="C0", mfc="white" if r["flags"] else "C0")
        if baseline is not None:
            ax.axhline(100 * baseline["prompt_loose"], color="gray", ls="--", lw=1, label="unsteered")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(GRIDS[name.replace("gate+", "")][2])
        ax.set_ylabel("prompt loose acc (%)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("IFEval dev split: accuracy against strength (hollow = outside the fluency bounds)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def report(
    rows: Sequence[Dict[str, Any]],
    out: str,
    model_tag: str,
    num_layers: int,
    max_new_tokens: int,
    strategy: str = "prompt",
    n_prompts: Optional[int] = None,
) -> Dict[str, Optional[str]]:
    """``sweep.png`` and ``chosen.json`` from the summary rows of the points measured so far
    (gated grids included when present). Only points measured on all ``n_prompts`` prompts
    count (default: the most any point has); a grid with none is left out."""
    n_full = n_prompts if n_prompts is not None else max((r["n"] for r in rows), default=0)
    rows = [r for r in rows if r["n"] == n_full]
    have = {r["method"] for r in rows}
    grids: Dict[str, List[Tuple[float, str]]] = {}
    for name in GRIDS:
        for gated in (False, True):
            pts = [p for p in grid_specs(name, num_layers, gated) if p[1] in have]
            if pts:
                grids[("gate+" if gated else "") + name] = pts
    baseline = next((r for r in rows if r["method"] == "none"), None)
    chosen = {}
    for name, pts in grids.items():
        c = choose(rows, [s for _, s in pts])
        chosen[name] = c["method"] if c else None
    if grids:
        plot(rows, grids, baseline, os.path.join(out, "sweep.png"))
    with open(os.path.join(out, "chosen.json"), "w", encoding="utf-8") as f:
        json.dump(
            {
                "model": model_tag,
                "strategy": strategy,
                "max_new_tokens": max_new_tokens,
                "chosen": chosen,
                "measured": {n: [s for _, s in pts] for n, pts in grids.items()},
                "rule": "best dev prompt-level loose accuracy among points without a fluency flag",
                "fluency_bounds": fluency.BOUNDS,
            },
            f,
            indent=1,
        )
    return chosen


def main(args, load: Callable, command: str, machine: Callable) -> int:
    from ..hf import num_layers

    names = [n.strip() for n in args.methods.split(",") if n.strip()]
    for n in names:
        if n not in GRIDS:
            raise ValueError(f"unknown sweep grid {n!r}: choose from {', '.join(GRIDS)}")
    model, tok, tag = load(args)
    L = num_layers(model)
    grids: Dict[str, List[Tuple[float, str]]] = {}
    for n in names:
        grids[n] = grid_specs(n, L)
        if args.gated:
            grids["gate+" + n] = grid_specs(n, L, gated=True)
    dev = ifeval.split(ifeval.load_prompts(), "dev")
    if args.limit:
        dev = dev[: args.limit]
    # Round-robin over the grids (each method's first point, then each one's second…), so an
    # interrupted sweep has looked at every method.
    depth = max(len(p) for p in grids.values())
    all_specs = ["none"] + [pts[i][1] for i in range(depth) for pts in grids.values() if i < len(pts)]
    run = dict(
        strategy=args.strategy,
        model_tag=tag,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        progress=not args.no_progress,
        command=command,
        machine=machine(),
    )
    title = f"IFEval strength sweep — {tag} — dev split ({len(dev)} prompts), strategy {args.strategy}"
    rows, md = runner.ifeval_and_report(model, tok, dev, all_specs, args.out, title=title, **run)
    chosen = {
        k: v
        for k, v in report(rows, args.out, tag, L, args.max_new_tokens, args.strategy, len(dev)).items()
        if k.replace("gate+", "") in names
    }
    print(open(md, encoding="utf-8").read())
    print("chosen on dev:", json.dumps(chosen, indent=1))
    best = choose(rows, [s for s in chosen.values() if s])
    evidence: Dict[str, Any] = {}
    if best is not None:
        evidence = {
            "dev_prompt_loose": best["prompt_loose"],
            "dev_prompt_loose_diff": best.get("vs_unsteered", {}).get("prompt_loose"),
        }
    if args.report_test:
        test = ifeval.split(ifeval.load_prompts(), "test")
        if args.limit:
            test = test[: args.limit]
        picked = ["none"] + [s for s in chosen.values() if s]
        test_out = os.path.join(args.out, "test")
        title = f"IFEval — {tag} — test split ({len(test)} prompts), settings chosen on dev"
        trows, tmd = runner.ifeval_and_report(model, tok, test, picked, test_out, title=title, **run)
        print(open(tmd, encoding="utf-8").read())
        test_row = next((r for r in trows if best is not None and r["method"] == best["method"]), None)
        if test_row is not None:
            evidence["prompt_loose_diff"] = test_row.get("vs_unsteered", {}).get("prompt_loose")
            evidence["inst_loose_diff"] = test_row.get("vs_unsteered", {}).get("inst_loose")
    if args.save_config:
        if best is None:
            raise ValueError("no grid point is free of fluency flags on dev: nothing to save (see sweep.png)")
        from ..config import SteeringConfig

        path = SteeringConfig(best["method"], model=tag, task="ifeval", evidence={**evidence, "command": command}).save(
            args.save_config
        )
        print(f"wrote {path}: {best['method']}")
    return 0
