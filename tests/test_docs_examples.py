"""Every Python code block of the README and the documentation pages runs as written (the blocks
of one page in order, in one interpreter, on the embedded model with the pages' small token
caps), so no example can rot; the README stays short and its links resolve."""

from __future__ import annotations

import re

from docblocks import ROOT, blocks, by_page, pages, run

DEFAULT = by_page("default")


def test_pages_have_examples():
    """The pages the issue names carry runnable examples; a tag typo would hide a block."""
    for page in (
        "README.md",
        "docs/index.md",
        "docs/guides/spans.md",
        "docs/guides/methods.md",
        "docs/guides/directer.md",
        "docs/guides/influence.md",
        "docs/guides/ops.md",
    ):
        assert page in DEFAULT, f"{page} has no Python block that the tests run"
    for p in pages():
        text = p.read_text()
        fences = len(re.findall(r"^```python", text, re.M))
        assert fences == len(blocks(p)), f"{p}: a ```python block is not matched by the block parser"


def test_every_page_example_runs(tmp_path):
    """All pages in one interpreter (the imports are paid once), each in its own namespace."""
    res = run([b for page in sorted(DEFAULT) for b in DEFAULT[page]], tmp_path)
    ran = set(re.findall(r"^--- (\S+):\d+$", res.stdout, re.M))
    assert res.returncode == 0, f"an example failed\n{res.stdout[-3000:]}\n{res.stderr[-8000:]}"
    assert {p.split(":")[0] for p in ran} == set(DEFAULT), "some page's blocks did not run"


def test_readme_is_short_and_its_links_resolve():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200, "the README grew past 200 lines: move detail to docs/"
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" in target:
            continue
        assert (ROOT / target).exists(), f"README links to {target}, which does not exist"


def _public_names():
    import attnsteer
    import attnsteer.models as models
    import attnsteer.vllm as vllm

    out = [(f"attnsteer.{n}", getattr(attnsteer, n)) for n in attnsteer.__all__ if n not in ("__version__", "logger")]
    out += [(f"attnsteer.models.{n}", getattr(models, n)) for n in models.__all__]
    out += [(f"attnsteer.vllm.{n}", getattr(vllm, n)) for n in vllm.__all__]
    return out


def test_public_docstrings_have_an_example_or_a_guide():
    """Every public name's docstring has an example (an ``Example:`` section or a literal code
    block) or points to a guide page that exists (and whose blocks run, above)."""
    import inspect

    missing, broken = [], []
    for name, obj in _public_names():
        doc = inspect.getdoc(obj) or ""
        guides = re.findall(r"Guide: ``(docs/[^`]+\.md)``", doc)
        broken += [f"{name} -> {g}" for g in guides if not (ROOT / g).exists()]
        if not (guides or re.search(r"^Examples?:$|::$", doc, re.M)):
            missing.append(name)
    assert not missing, f"docstrings without an example or a guide pointer: {missing}"
    assert not broken, f"guide pointers to missing pages: {broken}"


def test_the_runner_reports_a_failing_block(tmp_path):
    from docblocks import Block

    page = ROOT / "docs" / "index.md"
    res = run([Block(page, 3, "x = 1\n", "default"), Block(page, 9, "assert x == 2, 'rotted'\n", "default")], tmp_path)
    assert res.returncode == 1 and "docs/index.md" in res.stderr and "line 9" in res.stderr and "rotted" in res.stderr
