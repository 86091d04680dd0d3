"""The one writer of ``python/attnsteer/data/recommended.json`` entries for the ship_* tools."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict

from attnsteer.models import _ALIASES


def write_entry(model, task: str, entry: Dict[str, Any], recommended: Path, cache: str) -> None:
    """Put ``entry`` under ``tasks[task]`` of ``model``'s record (a `attnsteer.models.MODELS` value), with its
    aliases and its config signature (architecture, layers, width: how `recommended` recognises a loaded model)."""
    cfg = json.load(open(os.path.join(cache, "models", model.name, "config.json"), encoding="utf-8"))
    table = json.loads(recommended.read_text(encoding="utf-8"))
    record = table.setdefault(model.tag, {})
    record["aliases"] = sorted({model.name, *[a for a, n in _ALIASES.items() if n == model.name]})
    record["signature"] = [cfg["architectures"][0], cfg["num_hidden_layers"], cfg["hidden_size"]]
    record.setdefault("tasks", {})[task] = entry
    recommended.write_text(json.dumps(table, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
