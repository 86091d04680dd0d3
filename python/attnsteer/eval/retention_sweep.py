"""``attnsteer eval sweep --task retention``: strength grids for long-context rule retention, tuned
on dev documents, reported on separate test documents.

- Grids (`GRIDS`): per method, strengths × layer subsets (all layers; ``{upper}`` the upper
  half; ``{ranked}`` DIRECTER's top-ranked quarter, ranked once on the first dev prompts and kept
  in ``ranked_layers.json`` so a resumed sweep uses the same layers) × phases, and the
  length-aware options (``guide:…,length_ref=N``; SpotLight, whose target is a mass, not a bias).
- Dev: every grid point on the dev documents (`retention.documents` with ``split="dev"``,
  the first half of the paragraphs) at the dev lengths and placements. A point is eligible when no
  dev cell carries a fluency flag; the best eligible point of each grid, and the best of all, are
  chosen by mean accuracy over the dev cells (ties: the earlier, weaker point).
- Test: unsteered and the chosen points on the test documents (the other half) at the test
  lengths and placements; the report gives every cell with its paired bootstrap interval.
- ``--save-config FILE`` writes the overall choice as a `attnsteer.SteeringConfig`.

Every response lands in the resumable store (``responses.jsonl``; ``--shard NAME`` writes
``responses.NAME.jsonl`` so two queues can run side by side; reports read every shard).
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from . import fluency, retention, runner, specs

__all__ = ["GRIDS", "grid_specs", "ranked_layers", "choose", "main"]

# name -> (spec template, values)
GRIDS: Dict[str, Tuple[str, Sequence[float]]] = {
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
}
RANKED_FILE = "ranked_layers.json"


def _layer_list(layers: Sequence[int]) -> str:
    return "+".join(str(x) for x in sorted(layers))


def grid_specs(name: str, num_layers: int, ranked: Optional[Sequence[int]] = None) -> List[Tuple[float, str]]:
    """``[(value, canonical spec)]`` of grid ``name``; ``ranked`` fills ``{ranked}`` (required
    by the grids that use it)."""
    if name not in GRIDS:
        raise ValueError(f"unknown retention grid {name!r}: choose from {', '.join(GRIDS)}")
    template, values = GRIDS[name]
    if "{ranked}" in template and not ranked:
        raise ValueError(f"grid {name!r} steers DIRECTER's top-ranked layers: rank them first (ranked_layers)")
    upper = f"{num_layers // 2}-{num_layers - 1}"
    fill = {"upper": upper, "ranked": _layer_list(ranked or [])}
    return [(v, specs.canonical(template.replace("{}", f"{v:g}").format(**fill))) for v in values]


def ranked_layers(model, tokenizer, cases: Sequence[retention.Case], out: str, top: Optional[int] = None) -> List[int]:
    """DIRECTER's top-ranked layers for these prompts (mean sensitivity over them, key scaling
    × 100 as in the paper), the ``top`` (default a quarter of the layers) most sensitive; read from
    ``out/ranked_layers.json`` when an earlier run wrote it."""
    path = os.path.join(out, RANKED_FILE)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            return list(json.load(f)["layers"])
    from ..directer import rank_layers
    from .runner import _encode

    enc = _encode(tokenizer, [c.prompt for c in cases], True).to(model.device)
    ranking = rank_layers(model, enc, progress=False).mean()
    L = ranking.order.shape[1]
    k = top or max(2, L // 4)
    layers = sorted(int(x) for x in ranking.order[0, :k])
    os.makedirs(out, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(
            {"layers": layers, "prompts": [c.key for c in cases], "sensitivity": ranking.sensitivity[0].tolist()},
            f,
            indent=1,
        )
    return layers


def cell_scores(rows: Sequence[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """Per method over the cells of ``rows`` (`retention.summarize`): mean accuracy, cells,
    replies and the fluency flags of any cell."""
    out: Dict[str, Dict[str, Any]] = {}
    for r in rows:
        s = out.setdefault(r["method"], {"method": r["method"], "cells": 0, "n": 0, "acc_sum": 0.0, "flags": set()})
        s["cells"] += 1
        s["n"] += r["n"]
        s["acc_sum"] += r["accuracy"]
        s["flags"].update(r.get("flags", []))
    for s in out.values():
        s["accuracy"] = s.pop("acc_sum") / s["cells"]
        s["flags"] = sorted(s["flags"])
    return out


def choose(scores: Dict[str, Dict[str, Any]], candidates: Sequence[str]) -> Optional[Dict[str, Any]]:
    """The candidate with the best mean dev accuracy and no fluency flag in any cell (ties: the
    earlier candidate); None when every measured candidate is flagged or none is measured."""
    ok = [scores[c] for c in candidates if c in scores and not scores[c]["flags"]]
    if not ok:
        return None
    best = max(s["accuracy"] for s in ok)
    return next(s for s in ok if s["accuracy"] == best)


def main(args, load: Callable, command: str, machine: Callable) -> int:
    """The CLI entry (see the module docstring)."""
    from ..hf import num_layers

    names = [n.strip() for n in args.methods.split(",") if n.strip()]
    for n in names:
        if n not in GRIDS:
            raise ValueError(f"unknown retention grid {n!r}: choose from {', '.join(GRIDS)}")
    dev_lengths, dev_pl, rules = retention.parse_lists(args.lengths, args.placements, args.rules)
    test_lengths, test_pl, _ = retention.parse_lists(args.test_lengths, args.test_placements, args.rules)
    model, tok, tag = load(args)
    L = num_layers(model)
    max_ctx = getattr(model.config, "max_position_embeddings", None)
    M = args.max_new_tokens
    dev = retention.cases(tok, dev_lengths, dev_pl, rules, args.docs, max_ctx, M, split="dev")
    if args.limit:
        dev = dev[: args.limit]
    ranked = None
    if any("{ranked}" in GRIDS[n][0] for n in names):
        ranked = ranked_layers(model, tok, dev[: min(4, len(dev))], args.out)
    grids = {n: grid_specs(n, L, ranked) for n in names}
    store = runner.ResponseStore(os.path.join(args.out, _store_name(args.shard)))
    progress = not args.no_progress
    run = dict(store=store, model_tag=tag, batch_size=args.batch_size, max_new_tokens=M, progress=progress)
    if args.report_only and not args.test_only:
        raise ValueError("--report-only rebuilds the test cells' report: use it with --test-only")
    if not args.test_only:
        # Round-robin over the grids (each one's first point, then each one's second…), so an
        # interrupted sweep has looked at every method.
        depth = max(len(p) for p in grids.values())
        order = ["none"] + [pts[i][1] for i in range(depth) for pts in grids.values() if i < len(pts)]
        retention.run(model, tok, dev, order, **run)
    store = runner.ResponseStore(os.path.join(args.out, _store_name(args.shard)))  # the other shards too
    chosen = report(store, tag, M, args.out, grids, {c.key for c in dev}, command, machine())
    print(open(os.path.join(args.out, "sweep.md"), encoding="utf-8").read())
    if args.report_test or args.test_only:
        picked = _test_methods(args.test_method, chosen)
        test = retention.cases(tok, test_lengths, test_pl, rules, args.test_docs, max_ctx, M, split="test")
        if not args.report_only:
            retention.run(model, tok, test, list(dict.fromkeys(["none", *picked])), **{**run, "store": store})
        store = runner.ResponseStore(os.path.join(args.out, _store_name(args.shard)))
        print(
            retention.write_report(
                store, tag, M, os.path.join(args.out, "test"), command, machine(), keys={c.key for c in test}
            )
        )
    if args.save_config and chosen["best"]:
        from ..config import SteeringConfig

        best = chosen["scores"][chosen["best"]]
        SteeringConfig(
            method=chosen["best"],
            model=tag,
            task="retention",
            evidence={
                "dev_accuracy": best["accuracy"],
                "dev_unsteered_accuracy": chosen["scores"].get("none", {}).get("accuracy"),
                "dev_replies": best["n"],
                "dev_cells": best["cells"],
                "command": command,
            },
        ).save(args.save_config)
        print(f"wrote {args.save_config}: {chosen['best']}")
    return 0


def _test_methods(asked: Optional[Sequence[str]], chosen: Dict[str, Any]) -> List[str]:
    """The specs of ``--test-method`` (``best``, ``grid:NAME`` or a spec); default every grid's choice.
    A choice that does not exist yet (every point flagged, or not measured) is an error."""
    if not asked:
        return [c for c in chosen["by_grid"].values() if c]
    out = []
    for a in asked:
        if a == "best" or a.startswith("grid:"):
            c = chosen["best"] if a == "best" else chosen["by_grid"].get(a[5:], "missing")
            if c == "missing":
                raise ValueError(f"--test-method {a}: no such grid in --methods ({', '.join(chosen['by_grid'])})")
            if c is None:
                raise ValueError(
                    f"--test-method {a}: no dev choice yet (no point measured on every dev case, or all flagged)"
                )
            out.append(c)
        else:
            out.append(specs.from_cli(a))
    return out


def _store_name(shard: Optional[str]) -> str:
    return f"responses.{shard}.jsonl" if shard else "responses.jsonl"


def report(
    store: runner.ResponseStore,
    tag: str,
    max_new_tokens: int,
    out: str,
    grids: Dict[str, List[Tuple[float, str]]],
    keys: set,
    command: str,
    machine: str,
) -> Dict[str, Any]:
    """``sweep.md`` / ``sweep.json``: every dev cell with its interval, the per-method means and the
    choice (``by_grid``, ``best``). Only points measured on every dev case count."""
    rows = retention.summarize(store, tag, max_new_tokens, keys=keys)
    full = {
        m
        for m in {r["method"] for r in rows}
        if sum(1 for k in store.records if k[0] == tag and k[1] == m and k[3] == max_new_tokens and k[4] in keys)
        == len(keys)
    }
    scores = {m: s for m, s in cell_scores(rows).items() if m in full}
    by_grid = {}
    for name, pts in grids.items():
        c = choose(scores, [s for _, s in pts])
        by_grid[name] = c["method"] if c else None
    best = choose(scores, [c for c in by_grid.values() if c])
    chosen = {"by_grid": by_grid, "best": best["method"] if best else None, "scores": scores}
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "sweep.json"), "w", encoding="utf-8") as f:
        json.dump(
            {
                "model": tag,
                "max_new_tokens": max_new_tokens,
                "command": command,
                "machine": machine,
                "rule": "best mean dev accuracy over the dev cells among points with no fluency flag in any cell",
                "fluency_bounds": fluency.BOUNDS,
                **chosen,
                "rows": rows,
            },
            f,
            indent=1,
        )
    base = scores.get("none", {}).get("accuracy")
    lines = [
        f"# Retention sweep — {tag} — dev documents",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine}",
        "",
        "Mean rule-following accuracy over the dev cells (lengths × placements), replies, fluency flags; "
        "`*` = chosen for its grid, `**` = chosen overall. Points not yet measured on every dev case are left out.",
        "",
        "| grid | setting | dev accuracy % | vs unsteered | replies | flags |",
        "|---|---|---:|---:|---:|---|",
    ]
    for name, pts in grids.items():
        for _, s in pts:
            if s not in scores:
                continue
            sc = scores[s]
            mark = "**" if s == chosen["best"] else ("*" if s == by_grid[name] else "")
            vs = f"{100 * (sc['accuracy'] - base):+.1f}" if base is not None else ""
            lines.append(
                f"| {name} | {s}{mark} | {100 * sc['accuracy']:.1f} | {vs} | {sc['n']} | {', '.join(sc['flags']) or '—'} |"
            )
    if base is not None:
        lines.append(f"| — | unsteered | {100 * base:.1f} | | {scores['none']['n']} | |")
    lines += ["", "## Dev cells", "", retention.table(rows), ""]
    with open(os.path.join(out, "sweep.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    return chosen
