"""The one writer of ``python/attnsteer/data/recommended.json`` entries for the ship_* tools."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from attnsteer.models import _ALIASES


def write_entry(model, task: str, entry: Dict[str, Any], recommended: Path, cache: str) -> None:
    """Put ``entry`` under ``tasks[task]`` of ``model``'s record (a `attnsteer.models.MODELS` value), with its
    aliases and its config signature (architecture, layers, width: how `recommended` recognises a loaded model)."""
    cfg = json.load(open(os.path.join(cache, "models", model.name, "config.json"), encoding="utf-8"))
    table = json.loads(recommended.read_text(encoding="utf-8"))
    record = table.setdefault(model.tag, {})
    # the names it answers to: the package's aliases, and any the record already has (e.g. a hub id) — never fewer
    known = {model.name, *[a for a, n in _ALIASES.items() if n == model.name], *record.get("aliases", [])}
    record["aliases"] = sorted(known, key=str.lower)
    record["signature"] = [cfg["architectures"][0], cfg["num_hidden_layers"], cfg["hidden_size"]]
    if "per_method" in entry:  # sorted by family, so that re-shipping leaves the keys of recommended.json in place
        entry = {**entry, "per_method": dict(sorted(entry["per_method"].items()))}
    record.setdefault("tasks", {})[task] = entry
    recommended.write_text(json.dumps(table, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def per_family(by_grid: Dict[str, Optional[str]], evidence: Callable[[str], Dict[str, Any]]) -> Dict[str, Any]:
    """Each method family's dev choice with its test ``evidence(spec)``, from a sweep's ``by_grid``: the first
    grid of a family is its plain one (``pasta`` before ``pasta-upper``); gated grids (``gate+…``) and families
    whose choice was not run on the test split (``evidence`` raises ValueError) are left out."""
    out: Dict[str, Any] = {}
    for grid, spec in by_grid.items():
        family = grid.split("-")[0]
        if not spec or family in out or family.startswith("gate+"):
            continue
        try:
            out[family] = {"method": spec, "evidence": evidence(spec)}
        except ValueError:
            continue
    return out
