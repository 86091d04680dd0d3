"""Copy the evaluation's generated tables into the pages that show them, or check that they match.

A page marks a copied table with an HTML comment on the line before it (invisible on the site)::

    <!-- table: eval_results/gemma/ifeval/results.md#2 -->
    | method | ... |

``#N`` is the N-th markdown table of that file (1-based), as the report command wrote it. Run
after a report is rebuilt (`eval_results/jobs.sh retention-report` does):

    .venv/bin/python tools/sync_result_tables.py            # rewrite the marked tables
    .venv/bin/python tools/sync_result_tables.py --check    # exit 1 naming every stale table

Paths are relative to the repository root; pages default to docs/results/evaluation.md.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARKER = re.compile(r"^<!-- table: (?P<path>\S+)#(?P<n>\d+) -->\s*$")
PAGES = ("docs/results/evaluation.md",)


def tables(text: str) -> List[str]:
    """The markdown tables of ``text`` (runs of lines starting with ``|``), in order."""
    out, cur = [], []
    for line in text.splitlines():
        if line.startswith("|"):
            cur.append(line)
        elif cur:
            out.append("\n".join(cur))
            cur = []
    if cur:
        out.append("\n".join(cur))
    return out


def _source_table(root: str, path: str, n: int) -> Tuple[Optional[str], Optional[str]]:
    """The ``n``-th table of ``path`` (1-based), or None and what is wrong."""
    src = os.path.join(root, path)
    if not os.path.exists(src):
        return None, f"{path} does not exist; rebuild it with the command in the page, or fix the path"
    found = tables(open(src, encoding="utf-8").read())
    if not 1 <= n <= len(found):
        return None, f"{path} has {len(found)} tables, not a #{n}"
    return found[n - 1], None


def sync(page: str, root: str = ROOT, check: bool = False) -> Tuple[str, List[str]]:
    """The page's text with every marked table replaced by its source's, and the problems found:
    a stale table (``check``), a missing source file or table, a marker with no table under it."""
    lines = open(os.path.join(root, page), encoding="utf-8").read().split("\n")
    out: List[str] = []
    problems: List[str] = []
    i = 0
    while i < len(lines):
        out.append(lines[i])
        m = MARKER.match(lines[i])
        i += 1
        if not m:
            continue
        where = f"{page}:{i}"
        j = i
        while j < len(lines) and lines[j].startswith("|"):
            j += 1
        old = "\n".join(lines[i:j])
        if not old:
            problems.append(
                f"{where}: no table under the marker for {m['path']}#{m['n']}; put the table right below it"
            )
            continue
        new, problem = _source_table(root, m["path"], int(m["n"]))
        if problem is None and check and new != old:
            problem = f"the table differs from {m['path']}#{m['n']}; run tools/sync_result_tables.py"
        if problem:
            problems.append(f"{where}: {problem}")
        out += (new or old).split("\n")
        i = j
    return "\n".join(out), problems


def main(argv: List[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pages", nargs="*", default=list(PAGES))
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 when a table is stale")
    args = ap.parse_args(argv)
    bad = 0
    for page in args.pages:
        text, problems = sync(page, check=args.check)
        for p in problems:
            print(p, file=sys.stderr)
        bad += len(problems)
        if not args.check and not problems:
            with open(os.path.join(ROOT, page), "w", encoding="utf-8") as f:
                f.write(text)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
