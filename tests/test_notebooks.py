"""The notebooks' outputs are stripped in git. They run top to bottom during the documentation
build (`make docs`: mkdocs-jupyter executes them on the embedded model, with their small limits,
and fails on an error); tests/test_docs_site.py checks the executed pages carry their plots."""

from __future__ import annotations

from pathlib import Path

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_notebooks_exist_and_are_stripped():
    import nbformat

    assert {p.name for p in NOTEBOOKS} == {"quickstart.ipynb", "evaluate.ipynb"}
    for p in NOTEBOOKS:
        nb = nbformat.read(p, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{p.name}: outputs are not stripped"
