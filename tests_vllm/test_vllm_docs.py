"""The documentation's vLLM blocks (tagged ``<!-- docs-test: vllm -->``) run as written against the
exported embedded model (the server client blocks run in test_server.py)."""

from __future__ import annotations

import os
import sys

import pytest

pytest.importorskip("vllm")

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from test_vllm_exact import MODEL_DIR, exported_model  # noqa: E402

from docblocks import ROOT, by_page, run  # noqa: E402


def test_docs_vllm_examples_run():
    exported_model()  # the folder the examples name (attnsteer export build/smollm2)
    pages = by_page("vllm")
    assert pages, "no docs block is tagged vllm"
    env_dir = {"build/smollm2": MODEL_DIR}
    for page, blocks in pages.items():
        res = run(blocks, ROOT, replace=env_dir)
        assert res.returncode == 0, f"{page}\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}"
