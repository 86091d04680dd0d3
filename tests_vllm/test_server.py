"""The OpenAI-compatible server with the plugin loaded from its entry point: a steered request
through `vllm_xargs` (flat strings) and an unsteered one give the Hugging Face path's tokens."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import torch

pytest.importorskip("vllm")

from test_vllm_exact import MODEL_DIR, PROMPTS, _trim, exported_model  # noqa: E402

import attnsteer  # noqa: E402
from attnsteer.eval import specs  # noqa: E402
from attnsteer.vllm import steered_prompt  # noqa: E402

NEW = 10


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(hf_model):
    port = _free_port()
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            MODEL_DIR,
            "--dtype",
            "float32",
            "--max-model-len",
            "1024",
            "--enforce-eager",
            "--port",
            str(port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(url + "/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError("the vLLM server exited during start-up") from None
                time.sleep(1)
        else:
            raise RuntimeError("the vLLM server did not start in 300 s")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=60)


@pytest.fixture(scope="module")
def hf_model():
    return exported_model()


def _complete(url, body):
    req = urllib.request.Request(
        url + "/v1/completions", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=300) as r:
        out = json.loads(r.read())
    return out["choices"][0]


def test_steered_and_unsteered_requests_through_the_server(server, hf_model):
    model, tok = hf_model
    spec = "guide:delta=2"
    p = steered_prompt(tok, PROMPTS[0], spec)
    base = {"model": MODEL_DIR, "max_tokens": NEW, "temperature": 0, "return_token_ids": True}
    steered = _complete(server, dict(base, prompt=p.prompt_token_ids, vllm_xargs=p.flat(), cache_salt=p.cache_salt))
    plain = _complete(server, dict(base, prompt=p.prompt_token_ids))
    enc = attnsteer.highlight(tok, PROMPTS[0])
    T = enc["input_ids"].shape[1]
    with torch.no_grad():
        hf_plain = model.generate(**enc, max_new_tokens=NEW, do_sample=False)[0, T:].tolist()
        with attnsteer.steer(model, specs.parse(spec), spans=enc):
            hf_steer = model.generate(**enc, max_new_tokens=NEW, do_sample=False)[0, T:].tolist()
    got_s, got_p = steered["token_ids"], plain["token_ids"]
    assert got_s == _trim(hf_steer, got_s) and got_p == _trim(hf_plain, got_p) and got_s != got_p


def test_a_bad_steered_request_gets_a_400_and_the_server_keeps_serving(server, hf_model):
    import urllib.error

    model, tok = hf_model
    p = steered_prompt(tok, PROMPTS[0], "guide:delta=2")
    base = {"model": MODEL_DIR, "max_tokens": NEW, "temperature": 0, "return_token_ids": True}
    bad = dict(p.flat(), attnsteer_spans=f"{len(p.prompt_token_ids) + 3}:{len(p.prompt_token_ids) + 9}:1")
    with pytest.raises(urllib.error.HTTPError) as err:
        _complete(server, dict(base, prompt=p.prompt_token_ids, vllm_xargs=bad))
    assert err.value.code == 400
    assert "lies outside" in err.value.read().decode()
    good = _complete(server, dict(base, prompt=p.prompt_token_ids, vllm_xargs=p.flat()))  # no cache_salt: added
    enc = attnsteer.highlight(tok, PROMPTS[0])
    T = enc["input_ids"].shape[1]
    with torch.no_grad(), attnsteer.steer(model, specs.parse("guide:delta=2"), spans=enc):
        hf_steer = model.generate(**enc, max_new_tokens=NEW, do_sample=False)[0, T:].tolist()
    assert good["token_ids"] == _trim(hf_steer, good["token_ids"])


def test_the_docs_server_client_example_runs_against_the_server(server, hf_model):
    """The guide's OpenAI-client block (docs/guides/vllm.md, tagged vllm-server), pointed at this
    server and the exported model folder."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
    from docblocks import ROOT, by_page, run

    pages = by_page("vllm-server")
    assert pages, "no docs block is tagged vllm-server"
    for page, blocks in pages.items():
        res = run(blocks, ROOT, replace={"http://localhost:8000": server, "build/smollm2": MODEL_DIR})
        assert res.returncode == 0, f"{page}\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}"
        assert res.stdout.strip().splitlines()[-1].strip(), "the example printed no reply"
