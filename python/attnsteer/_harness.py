"""Measurement helpers shared by ``benchmarks/`` and the CLI (``attnsteer demo --kernel``): one
timer, one way to run a benchmark point in its own process, one table writer. (It lives in the
package, not in ``benchmarks/``, because the CLI of an installed wheel uses it too.)"""

from __future__ import annotations

import csv
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

__all__ = ["median_time", "timed", "run_point", "write_csv"]


def median_time(fn: Callable[[], Any], reps: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds over ``reps`` calls, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def timed(fn: Callable[[], Any]):
    """``(result, seconds)`` of one call of ``fn()``."""
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def run_point(script: str, spec: Dict[str, Any], flag: str = "--child") -> Dict[str, Any]:
    """Run ``python script --child JSON`` in a fresh process (so peak memory is the point's own)
    and return the JSON object it prints on its last line; ``{"error": last stderr line}`` when
    it fails."""
    res = subprocess.run([sys.executable, script, flag, json.dumps(spec)], capture_output=True, text=True)
    if res.returncode != 0:
        tail = (res.stderr.strip().splitlines() or ["exit status %d" % res.returncode])[-1]
        return {"error": tail[:80]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def write_csv(rows: Sequence[Dict[str, Any]], path: Path, fields: Optional[List[str]] = None) -> Path:
    """Rows as CSV (columns: ``fields``, default the first row's keys)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields or list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def write_table(
    rows: Sequence[Dict[str, Any]], columns: Sequence[tuple], intro: str, path: Path, csv_path: Optional[Path] = None
) -> str:
    """A benchmark's results: ``intro``, then ``rows`` as a markdown table written to ``path`` (and
    printed); ``columns`` are ``(key, header, align)`` with align ``"l"`` or ``"r"``; with ``csv_path``
    the rows go to CSV too. Returns the markdown."""
    if csv_path is not None:
        write_csv(rows, csv_path)
    lines = [intro, "", "| " + " | ".join(h for _, h, _ in columns) + " |",
             "|" + "|".join("---:" if a == "r" else "---" for _, _, a in columns) + "|"]  # fmt: skip
    lines += ["| " + " | ".join(str(r[k]) for k, _, _ in columns) + " |" for r in rows]
    md = "\n".join(lines) + "\n"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(md)
    print(md)
    return md
