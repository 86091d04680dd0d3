"""Record in the package's tuned settings (``python/attnsteer/data/recommended.json``) that a model was
tuned on a task and that no setting beat unsteered on its dev split, with that evidence — so that
`attnsteer.recommended(model, task=...)` answers "tuned; nothing helps" (`attnsteer.config.NoSettingHelps`)
instead of "never tuned".

    .venv/bin/python tools/ship_no_gain.py qwen2.5-coder-0.5b retention eval_results/qwen/retention-sweep

It refuses a sweep whose choice does beat unsteered (``"helps": true`` in sweep.json): ship that one with
``attnsteer eval sweep --save-config`` / tools/ship_priority_config.py instead.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys

from attnsteer.config import RECOMMENDED_FILE
from attnsteer.models import MODELS


def _per_rule(dev: str) -> str:
    """Retention: the unsteered pass rate of each rule on dev (where a floor or ceiling explains a no-gain)."""
    path = os.path.join(dev, "responses.jsonl")
    counts = collections.defaultdict(lambda: [0, 0])
    with open(path, encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            if r.get("method") == "none" and "rule" in r:
                counts[r["rule"]][0] += bool(all(r["loose"]))
                counts[r["rule"]][1] += 1
    return ", ".join(f"{rule} {k} of {n}" for rule, (k, n) in sorted(counts.items()))


def evidence(dev: str) -> dict:
    """The dev sweep's evidence of no gain: every point measured on all dev cases, unsteered's score, the
    choice and its score, and a one-line summary."""
    sweep = json.load(open(os.path.join(dev, "sweep.json"), encoding="utf-8"))
    if sweep.get("helps", True):
        raise SystemExit(
            f"{dev}/sweep.json: the choice {sweep.get('best')} beats unsteered on dev (helps: true) — ship it "
            "with `attnsteer eval sweep --save-config` instead"
        )
    scores = {spec: round(s["score"], 4) for spec, s in sweep["scores"].items()}
    flags = {spec: s["flags"] for spec, s in sweep["scores"].items() if s["flags"]}
    base, best = scores["none"], sweep["best"]
    summary = (
        f"{sweep['task']} dev split ({sweep['dev_cases']} cases, {len(scores) - 1} settings): unsteered {100 * base:.1f} %, "
        f"the best setting {best or '(none unflagged)'} {100 * scores.get(best, base):.1f} %; "
        f"none beats unsteered"
    )
    out = {"split": f"{sweep['task']} dev", "dev_cases": sweep["dev_cases"], "metric": sweep["metric"],
           "unsteered": base, "best": best, "scores": scores, "flags": flags, "command": sweep["command"],
           "summary": summary}  # fmt: skip
    if sweep["task"] == "retention":
        out["unsteered_by_rule"] = _per_rule(dev)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", choices=sorted(MODELS))
    ap.add_argument("task", choices=["ifeval", "retention", "priority"])
    ap.add_argument("dev", help="the dev sweep's folder (sweep.json, responses.jsonl)")
    ap.add_argument("--note", default="", help="what explains it (appended to the record)")
    args = ap.parse_args(argv)
    m = MODELS[args.model]
    ev = evidence(args.dev)
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
