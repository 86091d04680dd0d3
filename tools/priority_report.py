"""Rebuild the context-priority reports: each model folder's ``results.md`` / ``results.json`` /
``priority.png`` from its responses, and the models side by side (``eval_results/priority/models.md``
and ``priority_models.png``: the effect against the distance between the statements).

    .venv/bin/python tools/priority_report.py            # the folders that exist
"""

from __future__ import annotations

import os
import sys

from attnsteer.eval import priority, runner
from attnsteer.eval.cli import machine

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "eval_results", "priority")
# (folder, label, model tag); test folders only in the side-by-side table
FOLDERS = [
    ("qwen-1.5b", "Qwen2.5-Coder-1.5B", "Qwen2.5-Coder-1.5B-Instruct"),
    ("qwen-1.5b-bf16", "Qwen2.5-Coder-1.5B bf16", "Qwen2.5-Coder-1.5B-Instruct bf16"),
    ("qwen-test", "Qwen2.5-Coder-0.5B", "Qwen2.5-Coder-0.5B-Instruct"),
    # the same model in bfloat16 (512 beside the float32 cells, then 2048 filler tokens: ~4x faster here)
    ("qwen-test-bf16", "Qwen2.5-Coder-0.5B bf16", "Qwen2.5-Coder-0.5B-Instruct bf16"),
    ("gemma3-270m", "Gemma 3 270M (base)", "gemma-3-270m"),
    ("smollm2-135m", "SmolLM2-135M", "SmolLM2-135M-Instruct"),
]
DEV = ("qwen-dev", "Qwen2.5-Coder-0.5B-Instruct")
METHODS = ["guide:delta=2", "instaboost:alpha=10", "pasta:alpha=0.01"]
MAX_NEW_TOKENS = 24
SMOLLM2_SEKA = "seka:gain=0.8,layers=20-29,projection=smollm2-135m"


def main() -> int:
    results = {}
    for folder, label, tag in [(DEV[0], None, DEV[1]), *FOLDERS]:
        path = os.path.join(ROOT, folder)
        store_file = os.path.join(path, "responses.jsonl")
        if not os.path.exists(store_file):
            continue
        store = runner.ResponseStore(store_file)
        cmd = f"attnsteer eval priority --model … --out eval_results/priority/{folder} (eval_results/jobs.sh)"
        print(priority.write_report(store, tag, MAX_NEW_TOKENS, path, cmd, machine()))
        if label:
            results[label] = priority.summarize(store, tag, MAX_NEW_TOKENS)
    chosen = os.path.join(ROOT, DEV[0], "sweep.json")
    methods = list(METHODS)
    if os.path.exists(chosen):
        import json

        best = json.load(open(chosen, encoding="utf-8")).get("best")
        if best and best not in methods:
            methods.insert(0, best)
    if results:
        text = (
            "# Context priority: the models side by side (test split)\n\n"
            "Cell: unsteered → steered % of replies naming the marked statement's value, and the difference "
            "with its paired bootstrap 95 % interval (flags: fluency). `tools/priority_report.py`.\n\n"
            + priority.compare_models(results, methods)
            + "\n"
        )
        new = _new_methods(chosen)
        labels = [x for x in ("Qwen2.5-Coder-0.5B", "SmolLM2-135M") if x in results]
        if new and labels:
            small = [SMOLLM2_SEKA] + [m for m in new.values() if m.startswith("spa:")]
            text += (
                "\n## The 2026 methods (test split)\n\n"
                "Qwen2.5-Coder-0.5B: each method's dev choice (`eval_results/priority/qwen-dev/sweep.md`: "
                + ", ".join(f"{g}: `{m}`" for g, m in new.items())
                + ") beside GUIDE Δ = 2, on the same test cases. SmolLM2-135M: the same choices, not re-tuned "
                f"(SEKA with its own shipped projection, `{SMOLLM2_SEKA}`).\n\n"
                + priority.compare_models(
                    {x: results[x] for x in labels}, list(dict.fromkeys(["guide:delta=2", *new.values(), *small]))
                )
                + "\n"
            )
        with open(os.path.join(ROOT, "models.md"), "w", encoding="utf-8") as f:
            f.write(text)
        import shutil

        assets = os.path.join(ROOT, "..", "..", "docs", "assets")
        for pl in ("user", "system"):
            png = priority.plot_models(results, "guide:delta=2", os.path.join(ROOT, f"priority_models_{pl}.png"), pl)
            shutil.copy(png, os.path.join(assets, os.path.basename(png)))  # the results page shows them
        print(os.path.join(ROOT, "models.md"))
    return 0


def _new_methods(chosen: str) -> dict:
    """The dev choices of the 2026 methods' grids (SEKA, AdaSEKA, PRISM-Δ, SPA) on Qwen2.5-Coder-0.5B."""
    if not os.path.exists(chosen):
        return {}
    import json

    by_grid = json.load(open(chosen, encoding="utf-8")).get("by_grid", {})
    return {g: by_grid[g] for g in ("seka", "adaseka", "prism", "spa") if by_grid.get(g)}


if __name__ == "__main__":
    sys.exit(main())
