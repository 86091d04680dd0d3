"""The documentation site as a reader sees it: the built pages (``make docs``, mkdocs --strict)
rendered by headless Chromium (Debian's ``chromium``; ``make browser`` installs it). The home page
and the API page of ``steer`` must show their title, the navigation and a rendered code block;
screenshots land in ``build/test-artifacts/``. The notebooks were executed by the build: their
pages carry the plots and no error."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from docblocks import ROOT

SITE = ROOT / "build" / "site"
ARTIFACTS = ROOT / "build" / "test-artifacts"


@pytest.fixture(scope="module")
def site():
    """The built site; built here (strict) when ``make docs`` has not run."""
    if not (SITE / "index.html").exists():
        mkdocs = shutil.which("mkdocs") or str(ROOT / ".venv" / "bin" / "mkdocs")
        res = subprocess.run([mkdocs, "build", "--strict", "--quiet"], cwd=ROOT, capture_output=True, text=True)
        assert res.returncode == 0, f"mkdocs build --strict failed:\n{res.stderr[-4000:]}"
    return SITE


@pytest.fixture(scope="module")
def chromium():
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("headless Chromium is needed for the site check: run `make browser` (apt-get install chromium)")
    return exe


def _chromium(exe, *args, timeout=120):
    cmd = [
        exe,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--window-size=1280,1000",
        "--virtual-time-budget=3000",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    "page, heading, code",
    [("index.html", "Quick start", "attnsteer.steer"), ("api/steering.html", "attnsteer.steer", "steer(")],
    ids=["home", "api-steer"],
)
def test_page_renders_in_chromium(site, chromium, page, heading, code):
    url = (site / page).as_uri()
    dom = _chromium(chromium, "--dump-dom", url).stdout
    assert re.search(r"<title>[^<]*attnsteer[^<]*</title>", dom), f"{page}: no title"
    nav = re.findall(r'class="md-nav__link[^"]*"', dom)
    assert len(nav) >= 20, f"{page}: the navigation did not render ({len(nav)} links)"
    for section in ("Guides", "API reference", "Results", "Notebooks"):
        assert section in dom, f"{page}: navigation lacks {section!r}"
    assert heading in dom
    blocks = re.findall(r'<div class="[^"]*(?:highlight|doc-signature)[^"]*">(.*?)</div>', dom, re.S)
    code_text = [re.sub(r"<[^>]+>", "", b) for b in blocks]
    assert any(code in t for t in code_text), f"{page}: no rendered code block with {code!r}"

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / f"docs-{page.replace('/', '-').replace('.html', '')}.png"
    shot.unlink(missing_ok=True)
    _chromium(chromium, f"--screenshot={shot}", url)
    assert shot.exists(), f"Chromium wrote no screenshot of {page}"
    import matplotlib.image as mpimg

    img = mpimg.imread(str(shot))
    assert img.shape[0] >= 900 and img.shape[1] >= 1200
    assert img[..., :3].std() > 0.05, f"{page}: the screenshot is blank"


@pytest.mark.parametrize("name, images", [("quickstart", 3), ("evaluate", 2)])
def test_notebook_pages_carry_their_outputs(site, name, images):
    html = (site / "notebooks" / f"{name}.html").read_text()
    assert len(re.findall(r"data:image/png;base64", html)) >= images, f"{name}: the executed plots are missing"
    assert "Traceback" not in html and "jp-RenderedText" in html, f"{name}: an error output, or no printed output"
    # nothing on stderr that the reader did not ask for: no GGUF dequantisation bars, no tqdm
    # "IProgress not found", no tokenizer warnings (models.load(progress=False) is quiet)
    stderr = re.findall(r'<[a-z]+ [^>]*data-mime-type="application/vnd\.jupyter\.stderr"[^>]*>(.{0,300})', html, re.S)
    assert not stderr, f"{name}: {len(stderr)} stderr outputs, the first: {re.sub(r'<[^>]+>', '', stderr[0])[:300]}"


def test_api_pages_document_every_public_name(site):
    import attnsteer

    text = "".join(p.read_text() for p in (site / "api").glob("*.html"))
    missing = [n for n in attnsteer.__all__ if n not in ("__version__", "logger") and f"attnsteer.{n}" not in text]
    assert not missing, f"public names without an API entry: {missing}"
