"""The Python code blocks of the README and the documentation pages, and a runner that executes
one page's blocks in order in one namespace (a page's later blocks use what its first ones made).

A block runs in the test suite of the environment it needs: untagged blocks in ``make test``
(``tests/test_docs_examples.py``); a block right after ``<!-- docs-test: vllm -->`` needs vLLM and
runs in ``make test-vllm`` (``tests_vllm/test_vllm_docs.py``), and ``<!-- docs-test: vllm-server -->``
marks a client of a running OpenAI server, which that test points at the server it starts.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("default", "vllm", "vllm-server")
_FENCE = re.compile(
    r"^(?:<!-- docs-test: (?P<kind>[\w-]+) -->\n)?```python[^\n]*\n(?P<code>.*?)^```[ \t]*$",
    re.M | re.S,
)


@dataclass
class Block:
    path: Path
    line: int  # line of the first code line, 1-based
    code: str
    kind: str


def pages() -> List[Path]:
    """README.md and every Markdown page under docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def blocks(path: Path) -> List[Block]:
    text = path.read_text()
    out = []
    for m in _FENCE.finditer(text):
        kind = m.group("kind") or "default"
        if kind not in KINDS:
            raise ValueError(f"{path}: unknown docs-test tag {kind!r} (one of {KINDS})")
        line = text.count("\n", 0, m.start("code")) + 1
        out.append(Block(path, line, m.group("code"), kind))
    return out


def by_page(kind: str) -> Dict[str, List[Block]]:
    """Pages (relative paths) that have blocks of ``kind``, with those blocks in order."""
    out: Dict[str, List[Block]] = {}
    for p in pages():
        bs = [b for b in blocks(p) if b.kind == kind]
        if bs:
            out[str(p.relative_to(ROOT))] = bs
    return out


# Executes blocks given as JSON on stdin: each compiled under "<page>:<line>" with the page's line
# numbers, so a traceback points at the line of the page that failed.
_RUNNER = r"""
import json, sys, traceback
import attnsteer.models
_load, _loaded = attnsteer.models.load_default, {}
def _load_once(**kw):  # one load of the embedded model for all pages (each page still calls it)
    if "model" not in _loaded:
        _loaded["model"] = _load(**kw)
    return _loaded["model"]
attnsteer.models.load_default = _load_once
failed = []
namespaces = {}
for b in json.load(sys.stdin):
    ns = namespaces.setdefault(b["path"], {"__name__": "__main__"})  # one namespace a page
    if b["path"] in failed:
        continue
    print(f"--- {b['path']}:{b['line']}", flush=True)
    code = "\n" * (b["line"] - 1) + b["code"]
    try:
        exec(compile(code, b["path"], "exec"), ns)
    except BaseException:
        traceback.print_exc()
        failed.append(b["path"])
    namespaces[b["path"]] = ns
if failed:
    print("FAILED PAGES: " + ", ".join(failed), file=sys.stderr)
    sys.exit(1)
"""


def run(
    blocks_: List[Block],
    cwd: Path,
    python: str = sys.executable,
    replace: Optional[Dict[str, str]] = None,
    timeout: int = 900,
) -> subprocess.CompletedProcess:
    """Run ``blocks_`` in a fresh interpreter (cwd ``cwd``, matplotlib without a display);
    ``replace`` substitutes strings in the code first (e.g. a server's address)."""
    payload = []
    for b in blocks_:
        code = b.code
        for old, new in (replace or {}).items():
            code = code.replace(old, new)
        payload.append({"path": str(b.path.relative_to(ROOT)), "line": b.line, "code": code})
    env = {**os.environ, "MPLBACKEND": "Agg", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [python, "-c", _RUNNER],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
    )
