"""Build facts: the compiled backend is active, and a wheel installs and works elsewhere."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import attnsteer

ROOT = Path(__file__).resolve().parents[1]


def test_backend_is_compiled():
    assert attnsteer.backend("cpu") == "cpp", (
        "the C++ extension did not load; rebuild with `pip install --no-build-isolation -e .`"
    )
    from attnsteer import _C

    assert _C.torch_version == torch.__version__


def test_fallback_warns_once(monkeypatch):
    from attnsteer import ops

    monkeypatch.setattr(ops, "_HAS_EXT", False)
    monkeypatch.setattr(ops, "_warned", False)
    q = torch.randn(1, 2, 4, 8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = attnsteer.steered_attention(q, q, q, torch.ones(1, 4, dtype=torch.bool), bias=1.0)
        attnsteer.steered_attention(q, q, q, torch.ones(1, 4, dtype=torch.bool), bias=1.0)
    assert attnsteer.backend() == "torch"
    assert sum("blocked PyTorch path" in str(w.message) for w in caught) == 1
    monkeypatch.undo()
    torch.testing.assert_close(out, attnsteer.steered_attention(q, q, q, torch.ones(1, 4, dtype=torch.bool), bias=1.0))


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs a C++ compiler")
def test_wheel_installs_and_works_in_another_environment(tmp_path):
    """`pip wheel --no-build-isolation .` -> install into a separate target dir -> import there."""
    env = dict(os.environ)
    ccache_bin = Path(sys.executable).parent.parent / "ccache-bin"
    if ccache_bin.is_dir():  # reuse the objects of the editable build (see the Makefile)
        env["PATH"] = f"{ccache_bin}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("MAX_JOBS", "2")
    wheel_dir = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-build-isolation",
            "--no-deps",
            "-q",
            "-w",
            str(wheel_dir),
            str(ROOT),
        ],
        check=True,
        env=env,
        cwd=tmp_path,
    )
    wheels = list(wheel_dir.glob("attnsteer-*.whl"))
    assert len(wheels) == 1
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheels[0])],
        check=True,
        env=env,
    )
    code = (
        "import attnsteer, torch, sys\n"
        f"assert attnsteer.__file__.startswith({str(target)!r}), attnsteer.__file__\n"
        "assert attnsteer.backend() == 'cpp'\n"
        "q = torch.randn(1, 2, 5, 8)\n"
        "out = attnsteer.steered_attention(q, q, q, torch.ones(1, 5, dtype=torch.bool), bias=1.0, is_causal=True)\n"
        "ref = attnsteer.reference.steered_attention(q, q, q, torch.ones(1, 5, dtype=torch.float64), torch.ones(1, 2), torch.ones(1, 2), is_causal=True)\n"
        "assert (out - ref).abs().max() < 1e-5\n"
        "from attnsteer.eval import checkers, ifeval\n"
        f"assert str(checkers.NLTK_DATA).startswith({str(target)!r})\n"
        "assert (checkers.NLTK_DATA / 'tokenizers/punkt_tab/english/ortho_context.tab').is_file()\n"
        "assert len(ifeval.load_prompts()) == 541\n"
        "print('wheel ok')\n"
    )
    run_env = dict(env, PYTHONPATH=str(target))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=run_env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "wheel ok" in res.stdout
