"""Write a model's IFEval choice into the package's tuned settings
(``python/attnsteer/data/recommended.json``, what `attnsteer.recommended(model, task="ifeval")` returns):
the dev choice (``DEV/sweep.json``, `attnsteer eval sweep --task ifeval`) with its paired test-split
evidence (``DEV/test/results.json``, the sweep's ``--test-only`` stage), and per method family the dev
choice when it was measured on test.

    .venv/bin/python tools/ship_ifeval_config.py qwen2.5-coder-0.5b eval_results/qwen/ifeval-bf16

``--per-method-only`` keeps the shipped choice and adds (or replaces) the per-method entries that DEV's test
stage measured — the 2026 methods' cells on SmolLM2, run after its choice shipped:

    .venv/bin/python tools/ship_ifeval_config.py smollm2-135m eval_results/sweep --per-method-only

A test split still being filled (the queues run it in chunks of 100 prompts) ships only with
``--partial``, and the evidence then names how many of the 441 test prompts it covers. A dev choice
that does not beat unsteered is not shipped: `tools/ship_no_gain.py` records that instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, List, Optional

from attnsteer.config import RECOMMENDED_FILE
from attnsteer.eval.cli import base_tag
from attnsteer.eval.sweep import DEFAULT_GRIDS, GRIDS
from attnsteer.models import MODELS, cache_dir

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _recommended import per_family, write_entry  # noqa: E402

TEST_PROMPTS = 441  # attnsteer.eval.ifeval's fixed test split


def evidence(rows: List[Dict[str, Any]], spec: str, source: str) -> Dict[str, Any]:
    """The test evidence of ``spec`` (prompt-level loose, its paired interval against unsteered on the same
    prompts, instruction-level loose, reply length and NLL beside unsteered's, fluency flags)."""
    row = next((r for r in rows if r["method"] == spec), None)
    base = next((r for r in rows if r["method"] == "none"), None)
    if row is None or base is None or not row.get("vs_unsteered"):
        raise ValueError(f"{spec!r} has no test row with an unsteered twin in {source}")
    n = row["n"]
    split = f"IFEval test ({n} prompts)" if n >= TEST_PROMPTS else f"IFEval test (first {n} of {TEST_PROMPTS} prompts)"
    r3 = lambda x: round(float(x), 4)  # noqa: E731
    return {
        "split": split,
        "prompt_loose": r3(row["prompt_loose"]),
        "unsteered_prompt_loose": r3(base["prompt_loose"]),
        "prompt_loose_diff": row["vs_unsteered"]["prompt_loose"],
        "inst_loose_diff": row["vs_unsteered"]["inst_loose"],
        "reply_tokens": [round(row["n_tokens"]), round(base["n_tokens"])],
        "nll": [round(row["nll"], 2), round(base["nll"], 2)],
        "flags": list(row["flags"]),
        "source": source,
    }


def unmeasured(chosen: Dict[str, Any]) -> List[str]:
    """The IFEval grids (the default ones and any the sweep ran) not measured on every dev prompt at every
    strength: ``["instaboost 1 of 3", ...]`` (points measured of the grid's)."""
    names = [*DEFAULT_GRIDS["ifeval"], *[g for g in chosen["by_grid"] if g not in DEFAULT_GRIDS["ifeval"]]]
    out = []
    for g in (g for g in names if g in GRIDS["ifeval"]):
        have, total = len(chosen.get("measured", {}).get(g, [])), len(GRIDS["ifeval"][g][1])
        if have < total:
            out.append(f"{g} {have} of {total}")
    return out


def _unflagged_score(point: Dict[str, Any]) -> Optional[float]:
    """A dev point's score, or None when it carries a fluency flag (a flagged point cannot tie the choice)."""
    return None if point.get("flags") else point.get("score")


def add_per_method(m, chosen: Dict[str, Any], rows: List[Dict[str, Any]], source: str, partial: bool) -> int:
    """Add the per-method entries measured in ``rows`` to ``m``'s shipped IFEval entry, keeping its choice."""
    table = json.loads(RECOMMENDED_FILE.read_text(encoding="utf-8"))
    entry = table.get(m.tag, {}).get("tasks", {}).get("ifeval")
    if entry is None:
        print(f"{m.tag} ships no IFEval choice yet: run without --per-method-only", file=sys.stderr)
        return 1
    per = per_family(chosen["by_grid"], lambda spec: evidence(rows, spec, source))
    short = [f for f, p in per.items() if p["evidence"]["prompt_loose_diff"]["n"] < TEST_PROMPTS]
    if short and not partial:
        print(
            f"{', '.join(short)}: fewer than {TEST_PROMPTS} test prompts; pass --partial to ship that", file=sys.stderr
        )
        return 1
    if not per:
        print("no grid's dev choice has a test row with an unsteered twin: nothing to add", file=sys.stderr)
        return 1
    entry["per_method"] = {**entry.get("per_method", {}), **per}
    write_entry(m, "ifeval", entry, RECOMMENDED_FILE, cache_dir())
    for family, p in per.items():
        d = p["evidence"]["prompt_loose_diff"]
        print(f"{m.tag}: ifeval, {family} -> {p['method']}: {100 * d['diff']:+.1f} [{100 * d['low']:+.1f}, "
              f"{100 * d['high']:+.1f}] ({d['verdict']})")  # fmt: skip
    return 0


def complete_points(chosen: Dict[str, Any]) -> List[str]:
    """The steered settings of a sweep.json's ``chosen`` measured on every dev case (the ones the rule can choose)."""
    return [k for k, v in chosen["scores"].items() if k != "none" and v.get("n", 0) >= chosen.get("dev_cases", 100)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", choices=sorted(MODELS))
    ap.add_argument("dev", help="the sweep's folder (sweep.json; test/results.json from its --test-only stage)")
    ap.add_argument("--partial", action="store_true", help="ship evidence from fewer than all 441 test prompts")
    ap.add_argument(
        "--per-method-only", action="store_true", help="keep the shipped choice; add DEV's per-method cells"
    )
    args = ap.parse_args(argv)
    m = MODELS[args.model]
    chosen = json.load(open(os.path.join(args.dev, "sweep.json"), encoding="utf-8"))
    test_md = os.path.join(args.dev, "test", "results.md")
    rows = json.load(open(os.path.join(args.dev, "test", "results.json"), encoding="utf-8"))["rows"]
    source = f"{test_md} (attnsteer eval sweep --task ifeval --test-only)"
    if args.per_method_only:
        return add_per_method(m, chosen, rows, source, args.partial)
    best = chosen.get("best")
    if not best:
        print("the dev sweep chose nothing (every setting flagged): nothing to ship", file=sys.stderr)
        return 1
    if not chosen.get("helps"):
        print(
            f"the dev choice {best} does not beat unsteered on dev: record it with tools/ship_no_gain.py",
            file=sys.stderr,
        )
        return 1
    try:
        main_evidence = evidence(rows, best, source)
    except ValueError as e:
        print(f"{e}: run the sweep's --test-only stage first", file=sys.stderr)
        return 1
    if main_evidence["prompt_loose_diff"]["n"] < TEST_PROMPTS and not args.partial:
        print(f"{best}: {main_evidence['split']} only; pass --partial to ship that", file=sys.stderr)
        return 1
    per_method = per_family(chosen["by_grid"], lambda spec: evidence(rows, spec, source))
    d = main_evidence["prompt_loose_diff"]
    complete = complete_points(chosen)
    measured = len(complete)
    note = (
        f"Chosen on the IFEval dev split (100 prompts) among {measured} settings measured on all of it by "
        "prompt-level loose accuracy with no fluency flag, the weaker strength on a tie; reported on the test "
        f"prompts: {100 * d['diff']:+.1f} points [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}] ({d['verdict']}). "
        f"Replies {main_evidence['reply_tokens'][0]} vs {main_evidence['reply_tokens'][1]} tokens, NLL "
        f"{main_evidence['nll'][0]} vs {main_evidence['nll'][1]} under the unsteered model."
        + (
            " Measured in bfloat16 (attnsteer eval --dtype bfloat16)."
            if base_tag(chosen.get("model", "")) != chosen.get("model", "")
            else ""
        )
    )
    top = chosen["scores"].get(best, {}).get("score")
    tied = [k for k in complete if k != best and top is not None and _unflagged_score(chosen["scores"][k]) == top]
    if tied:
        note += (
            f" Tied on dev with {', '.join(tied)}: the tie rule keeps the weaker setting "
            "(attnsteer.eval.sweep.strength); the dev split cannot tell them apart."
        )
    missing = unmeasured(chosen)
    if missing:
        note += (
            " Grids not yet measured at every strength on the dev split when this shipped (points measured): "
            + ", ".join(missing)
            + "; the complete sweep may choose otherwise."
        )
    entry = {"method": best, "evidence": main_evidence, "note": note, "per_method": per_method}
    write_entry(m, "ifeval", entry, RECOMMENDED_FILE, cache_dir())
    print(f"{m.tag}: ifeval -> {best}\n{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
