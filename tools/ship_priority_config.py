"""Write a model's context-priority choice into the package's tuned settings
(``python/attnsteer/data/recommended.json``, what `attnsteer.recommended(model, task="priority")`
returns): the dev choice (``DEV/sweep.json``, `attnsteer eval sweep --task priority`) with its test-split
evidence (``TEST/results.json``), and per method family the dev choice when it was measured on test.

    .venv/bin/python tools/ship_priority_config.py qwen2.5-coder-0.5b \
        eval_results/priority/qwen-dev eval_results/priority/qwen-test --more-test eval_results/priority/qwen-test-bf16
    .venv/bin/python tools/ship_priority_config.py qwen2.5-coder-1.5b \
        eval_results/priority/qwen-dev eval_results/priority/qwen-1.5b --from-model qwen2.5-coder-0.5b \
        --more-test eval_results/priority/qwen-1.5b-bf16

``--more-test DIR`` (repeatable): another test report of the same model (bfloat16 cells at fillers the float32
report lacks); its cells fill only the cells TEST lacks, labelled with their dtype.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from attnsteer.config import RECOMMENDED_FILE
from attnsteer.eval import priority
from attnsteer.eval.cli import DTYPE_SUFFIX, base_tag
from attnsteer.models import MODELS, cache_dir

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _recommended import per_family, write_entry  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", choices=sorted(MODELS))
    ap.add_argument("dev")
    ap.add_argument("test")
    ap.add_argument("--from-model", default=None, help="the dev sweep was another model's (not re-tuned for this one)")
    ap.add_argument("--more-test", action="append", default=[], metavar="DIR", help="another test report of the model")
    args = ap.parse_args(argv)
    m = MODELS[args.model]
    chosen = json.load(open(os.path.join(args.dev, "sweep.json"), encoding="utf-8"))
    rows = json.load(open(os.path.join(args.test, "results.json"), encoding="utf-8"))["rows"]
    more = []
    for folder in args.more_test:
        report = json.load(open(os.path.join(folder, "results.json"), encoding="utf-8"))
        if base_tag(report["model"]) != m.tag:
            ap.error(f"--more-test {folder} holds {report['model']!r}, not {m.tag}: give a report of the same model")
        dtype = next((d for d, suffix in DTYPE_SUFFIX.items() if report["model"].endswith(suffix)), "float32")
        more.append((dtype, report["rows"]))
    if not chosen.get("best"):
        print("the dev sweep chose nothing (every setting flagged): nothing to ship", file=sys.stderr)
        return 1
    per_method = per_family(chosen["by_grid"], lambda spec: priority.evidence(rows, spec, more=more))
    best = chosen["best"]
    note = (
        (f"{MODELS[args.from_model].tag}'s choice, not re-tuned for this model: " if args.from_model else "")
        + f"Chosen on the priority dev split ({len(chosen['scores']) - 1} settings, no filler) by the marked rate with "
        "no fluency flag, the weaker strength on a tie; reported on the test split (disjoint relations, names, values)."
    )
    entry = {
        "method": best,
        "evidence": priority.evidence(rows, best, more=more),
        "note": note,
        "per_method": per_method,
    }
    write_entry(m, "priority", entry, RECOMMENDED_FILE, cache_dir())
    print(f"{m.tag}: priority -> {best}\n{entry['evidence']['summary']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
