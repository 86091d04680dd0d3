"""Record in the package's tuned settings (``python/attnsteer/data/recommended.json``) that a model was
tuned on a task and that no setting beat unsteered on its dev split, with that evidence — so that
`attnsteer.recommended(model, task=...)` answers "tuned; nothing helps" (`attnsteer.config.NoSettingHelps`)
instead of "never tuned".

    .venv/bin/python tools/ship_no_gain.py qwen2.5-coder-0.5b retention eval_results/qwen/retention-sweep

It refuses a sweep whose choice does beat unsteered (``"helps": true`` in sweep.json): ship that one with
``attnsteer eval sweep --save-config`` / tools/ship_priority_config.py instead — unless ``--test`` shows that
the dev gain did not carry over: the sweep's test report (``DEV/test/results.json``, its ``--test-only``
stage) holds the choice beside unsteered and no test cell of the choice is better (its paired 95 % interval
clear of 0) without a fluency flag. The record then holds both the dev scores and those test cells.

    .venv/bin/python tools/ship_no_gain.py qwen2.5-coder-0.5b retention eval_results/qwen/retention-sweep \
        --test eval_results/qwen/retention-sweep/test
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
from typing import Any, Dict, Optional

from attnsteer.config import RECOMMENDED_FILE
from attnsteer.eval.runner import ResponseStore
from attnsteer.models import MODELS


def _per_rule(dev: str) -> str:
    """Retention: the unsteered pass rate of each rule on the dev cases (where a floor or ceiling explains a
    no-gain), from every shard of the sweep's store; test replies (``…|testN`` keys) are left out."""
    counts = collections.defaultdict(lambda: [0, 0])
    for r in ResponseStore(os.path.join(dev, "responses.jsonl")).records.values():
        if r.get("method") == "none" and "rule" in r and r["key"].rsplit("|", 1)[-1].startswith("dev"):
            counts[r["rule"]][0] += bool(all(r["loose"]))
            counts[r["rule"]][1] += 1
    return ", ".join(f"{rule} {k} of {n}" for rule, (k, n) in sorted(counts.items()))


def test_cells(test: str, spec: str) -> Dict[str, Dict[str, Dict[str, Any]]]:
    """The test cells (``{placement: {length: cell}}``, all rules together) of ``spec`` beside unsteered in a
    sweep's test report (``TEST/results.json``): accuracy, unsteered's, replies, flags and the paired
    difference with its 95 % interval and verdict."""
    rows = json.load(open(os.path.join(test, "results.json"), encoding="utf-8"))["rows"]
    out: Dict[str, Dict[str, Dict[str, Any]]] = {}
    base = {(r["placement"], r["length"]): r for r in rows if r["method"] == "none" and r.get("rule") == "all"}
    for r in rows:
        if r["method"] != spec or r.get("rule") != "all" or not r.get("vs_unsteered"):
            continue
        d = r["vs_unsteered"]
        out.setdefault(r["placement"], {})[str(r["length"])] = {
            "accuracy": round(r["accuracy"], 4),
            "unsteered_accuracy": round(base[(r["placement"], r["length"])]["accuracy"], 4),
            "n": r["n"],
            "flags": list(r["flags"]),
            "diff": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in d.items()},
        }
    if not out:
        raise SystemExit(
            f"{test}/results.json has no row of {spec} with an unsteered twin: run the sweep's --test-only stage"
        )
    return out


def _cells_line(cells: Dict[str, Dict[str, Dict[str, Any]]]) -> str:
    return "; ".join(
        f"{placement} {length} tok {100 * c['accuracy']:.0f} vs {100 * c['unsteered_accuracy']:.0f} % "
        f"({100 * c['diff']['diff']:+.1f} [{100 * c['diff']['low']:+.1f}, {100 * c['diff']['high']:+.1f}], n={c['n']}"
        + (f", {', '.join(c['flags'])}" if c["flags"] else "")
        + ")"
        for placement, by_len in cells.items()
        for length, c in sorted(by_len.items(), key=lambda kv: int(kv[0]))
    )


def evidence(dev: str, test: Optional[str] = None) -> dict:
    """The evidence of no gain: every point measured on all dev cases, unsteered's score, the choice and its
    score, and a one-line summary. A dev choice that beats unsteered is accepted only with ``test`` (the
    sweep's test report) where none of its test cells is better without a fluency flag; those cells join."""
    sweep = json.load(open(os.path.join(dev, "sweep.json"), encoding="utf-8"))
    cells = None
    if sweep.get("helps", True):
        if test is None:
            raise SystemExit(
                f"{dev}/sweep.json: the choice {sweep.get('best')} beats unsteered on dev (helps: true) — ship it "
                "with `attnsteer eval sweep --save-config` instead, or pass --test DEV/test to record that its "
                "dev gain did not carry over to the test split"
            )
        cells = test_cells(test, sweep["best"])
        better = [f"{p} {n}" for p, by in cells.items() for n, c in by.items()
                  if c["diff"]["verdict"] == "better" and not c["flags"]]  # fmt: skip
        if better:
            raise SystemExit(
                f"{sweep['best']} is better than unsteered on the test split without a fluency flag ({', '.join(better)} "
                "tokens): it helps — ship it as a setting (`attnsteer eval sweep --save-config`), not as no gain"
            )
    scores = {spec: round(s["score"], 4) for spec, s in sweep["scores"].items()}
    flags = {spec: s["flags"] for spec, s in sweep["scores"].items() if s["flags"]}
    base, best = scores["none"], sweep["best"]
    summary = (
        f"{sweep['task']} dev split ({sweep['dev_cases']} cases, {len(scores) - 1} settings): unsteered {100 * base:.1f} %, "
        f"the best setting {best or '(none unflagged)'} {100 * scores.get(best, base):.1f} %; "
        + (
            "its dev gain does not carry over to the test split: " + _cells_line(cells)
            if cells
            else "none beats unsteered"
        )
    )
    out = {"split": f"{sweep['task']} dev", "dev_cases": sweep["dev_cases"], "metric": sweep["metric"],
           "unsteered": base, "best": best, "scores": scores, "flags": flags, "command": sweep["command"],
           "summary": summary}  # fmt: skip
    if cells:
        out["test"] = cells
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository: the same from any cwd
        out["test_source"] = os.path.relpath(os.path.join(os.path.abspath(test), "results.md"), root)
    if sweep["task"] == "retention":
        out["unsteered_by_rule"] = _per_rule(dev)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", choices=sorted(MODELS))
    ap.add_argument("task", choices=["ifeval", "retention", "priority"])
    ap.add_argument("dev", help="the dev sweep's folder (sweep.json, responses.jsonl)")
    ap.add_argument("--note", default="", help="what explains it (appended to the record)")
    ap.add_argument("--test", default=None, metavar="DIR", help="the sweep's test report folder (results.json)")
    args = ap.parse_args(argv)
    m = MODELS[args.model]
    ev = evidence(args.dev, args.test)
    if ev["split"] != f"{args.task} dev":
        raise SystemExit(f"{args.dev}/sweep.json is a {ev['split']} sweep, not {args.task}")
    table = json.loads(RECOMMENDED_FILE.read_text(encoding="utf-8"))
    if m.tag not in table:
        raise SystemExit(f"{m.tag} has no entry in {RECOMMENDED_FILE.name}; ship a tuned task for it first")
    if args.task in table[m.tag]["tasks"]:
        raise SystemExit(f"{m.tag} ships a tuned {args.task!r} setting; remove it before recording no gain")
    note = f"Unsteered passes per rule on dev: {ev['unsteered_by_rule']}. " if "unsteered_by_rule" in ev else ""
    table[m.tag].setdefault("no_gain", {})[args.task] = {"evidence": ev, "note": note + args.note}
    RECOMMENDED_FILE.write_text(json.dumps(table, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"{m.tag}: {args.task} -> no setting helps\n{ev['summary']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
