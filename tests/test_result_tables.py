"""The evaluation tables shown on the results page are the ones the report commands wrote: each
copied table carries a marker naming its source (``<!-- table: PATH#N -->``) and
tools/sync_result_tables.py copies or checks them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("sync_result_tables", ROOT / "tools" / "sync_result_tables.py")
sync_tables = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sync_tables)


def test_the_results_page_shows_the_committed_tables():
    page = "docs/results/evaluation.md"
    assert (ROOT / page).read_text().count("<!-- table: ") >= 6, "the results page lost its table markers"
    _, problems = sync_tables.sync(page, check=True)
    assert problems == []


def _files(tmp_path, page_text):
    (tmp_path / "res").mkdir()
    (tmp_path / "res" / "r.md").write_text("# r\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\ntext\n\n| c |\n|---|\n| 3 |\n")
    (tmp_path / "page.md").write_text(page_text)


def test_a_stale_table_is_named_then_rewritten(tmp_path):
    _files(tmp_path, "intro\n\n<!-- table: res/r.md#2 -->\n| c |\n|---|\n| 9 |\n| 8 |\n\nafter\n")
    text, problems = sync_tables.sync("page.md", root=str(tmp_path), check=True)
    assert len(problems) == 1 and "page.md:3" in problems[0] and "res/r.md#2" in problems[0]
    assert text == "intro\n\n<!-- table: res/r.md#2 -->\n| c |\n|---|\n| 3 |\n\nafter\n"
    assert sync_tables.sync("page.md", root=str(tmp_path))[1] == []  # rewriting is not a problem
    (tmp_path / "page.md").write_text(text)
    assert sync_tables.sync("page.md", root=str(tmp_path), check=True) == (text, [])


def test_bad_markers_say_what_to_fix(tmp_path):
    page = "<!-- table: res/r.md#3 -->\n| x |\n\n<!-- table: res/gone.md#1 -->\n| y |\n\n<!-- table: res/r.md#1 -->\nno table\n"
    _files(tmp_path, page)
    text, problems = sync_tables.sync("page.md", root=str(tmp_path))
    assert "has 2 tables, not a #3" in problems[0]
    assert "res/gone.md does not exist" in problems[1]
    assert "no table under the marker" in problems[2]
    assert text == page  # nothing it could not resolve is changed
