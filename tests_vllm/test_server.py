"""The OpenAI-compatible server with the plugin loaded from its entry point: a steered request
through `vllm_xargs` (flat strings) and an unsteered one give the Hugging Face path's tokens."""

from __future__ import annotations

import json
import os
import re
import sys
import time
import urllib.request

import pytest
import torch

pytest.importorskip("vllm")

from test_vllm_exact import MODEL_DIR, PROMPTS, _trim, exported_model  # noqa: E402

import attnsteer  # noqa: E402
from attnsteer import specs  # noqa: E402
from attnsteer.vllm import steered_prompt  # noqa: E402
from attnsteer.vllm._server import drop_stream as _drop_stream  # noqa: E402
from attnsteer.vllm._server import local_server  # noqa: E402
from attnsteer.vllm._server import post as _post  # noqa: E402

NEW = 10
LOAD_BLOCKS = 12


OPERATOR_HEADS = {"2": [0, 3], "17": [1, 2, 8]}  # an operator's PASTA profile for SmolLM2 (30 x 9)


@pytest.fixture(scope="module")
def server_files(tmp_path_factory):
    """Files on the server: the operator's head profile, a FIFO, a valid JSON a client must not load."""
    d = tmp_path_factory.mktemp("server")
    (d / "operator.json").write_text(json.dumps({"heads": OPERATOR_HEADS}))
    (d / "heads.json").write_text(json.dumps({"heads": {"1": [0, 2]}}))
    (d / "secret.txt").write_text("not json")
    os.mkfifo(d / "fifo")
    return d


@pytest.fixture(scope="module")
def server(hf_model, server_files):
    # dev mode: POST /collective_rpc reads the plugin's per-request state (attnsteer_state); a
    # 12-block cache (128 tokens a block) that the load test's 8 concurrent 2-3-block requests
    # overflow, so vLLM must preempt and recompute. The operator loads a head profile at start-up.
    args = ["--dtype", "float32", "--max-model-len", "1024", "--enforce-eager"]
    args += ["--num-gpu-blocks-override", str(LOAD_BLOCKS), "--max-num-seqs", "8"]
    env = {
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_SERVER_DEV_MODE": "1",
        "ATTNSTEER_HEAD_PROFILES": f"ops={server_files / 'operator.json'}",
    }
    with local_server(MODEL_DIR, args, env=env, start_timeout=300) as (url, _):
        yield url


@pytest.fixture(scope="module")
def hf_model():
    return exported_model()


def _complete(url, body):
    return _post(url, "/v1/completions", body)["choices"][0]


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


# ---------------------------------------------------------------------------------------------
# Under load (issue 21): 8 client threads, 64 requests mixing unsteered, every servable method,
# streams dropped after a few tokens and bad steering; a cache small enough to force preemption.

LOAD_NEW = 12
LOAD_SPECS = [
    None,
    "guide:delta=2",
    "instaboost:alpha=5",
    "pasta:alpha=0.1",
    "spotlight:target=0.3",
    "keyscale:alpha=3",
    "guide:delta=1,layers=15-29",
    "spotlight:target=0.2,phases=decode",
]
_FILLER = "The river rose in spring and the mill by the bridge turned faster than the year before. "
LOAD_TEXTS = [
    "<<Answer in French.>> " + _FILLER * 14 + "What happened to the mill?",
    _FILLER * 12 + "<<Reply in one short sentence.>> Why did the river rise?",
    [
        {"role": "system", "content": "<<Start your answer with the word YES.>>"},
        {"role": "user", "content": _FILLER * 16 + "Did the mill turn faster?"},
    ],
    "<<Use no commas.>> " + _FILLER * 18 + "Describe the bridge.",
]
# (flat vllm_xargs, what the 400 must name)
BAD = [
    ({"attnsteer_method": "shout:alpha=2", "attnsteer_spans": "0:4:1"}, "unknown method"),
    ({"attnsteer_method": "guide:delta=abc", "attnsteer_spans": "0:4:1"}, "is not a number"),
    ({"attnsteer_method": "guide:delta=nan", "attnsteer_spans": "0:4:1"}, "NaN and infinity"),
    ({"attnsteer_method": "spotlight:target=2", "attnsteer_spans": "0:4:1"}, "allowed range 0.001 to 0.999"),
    ({"attnsteer_method": "guide:delta=1", "attnsteer_spans": "5000:5010:1"}, "lies outside"),
    ({"attnsteer_method": "guide:delta=1", "attnsteer_spans": "zero to four"}, "must be start:end"),
    ({"attnsteer_method": "guide:delta=1", "attnsteer_spans": "0:4:-1"}, "weights are finite and > 0"),
    ({"attnsteer_method": "guide:delta=1"}, "needs both"),
    ({"attnsteer_spans": "0:4:1"}, "needs both"),
    ({"attnsteer_method": "directer", "attnsteer_spans": "0:4:1"}, "cannot be served per request"),
    ({"attnsteer_method": "pasta:alpha=0.1,layers=a-b", "attnsteer_spans": "0:4:1"}, "layer indices"),
    ({"attnsteer_method": "guide:volume=11", "attnsteer_spans": "0:4:1"}, "has no setting"),
]


def _state(url):
    """The plugin's per-request state in the engine's worker (dev-mode collective_rpc)."""
    return _post(url, "/collective_rpc", {"method": "attnsteer_state"}, timeout=60)["results"][0]


def _preemptions(url) -> float:
    text = urllib.request.urlopen(url + "/metrics", timeout=30).read().decode()
    return sum(float(v) for v in re.findall(r"^vllm:num_preemptions(?:_total)?\{[^}]*\} ([0-9.e+]+)$", text, re.M))


def test_server_under_load_keeps_every_promise(server, hf_model):
    """64 requests from 8 threads: every good request's greedy tokens equal the same request sent
    alone, every bad one gets a 400 that names its problem, /health answers throughout, the small
    cache forces preemption, and no per-request state is left in the plugin afterwards."""
    import random
    import threading
    import urllib.error
    from concurrent.futures import ThreadPoolExecutor

    _, tok = hf_model
    base = {"model": MODEL_DIR, "max_tokens": LOAD_NEW, "temperature": 0, "return_token_ids": True}
    filler = tok(" and the mill", add_special_tokens=False)["input_ids"]
    prompts = {}
    for ti, text in enumerate(LOAD_TEXTS):
        for si, spec in enumerate(LOAD_SPECS):
            p = steered_prompt(tok, text, spec or "guide:delta=1")
            # 4 tokens short of a block boundary: every request needs one more block 4 tokens into
            # its reply, which the full 12-block cache does not have, so requests are preempted
            ids = list(p.prompt_token_ids)
            ids += (filler * 64)[: (124 - len(ids)) % 128]
            body = dict(base, prompt=ids)
            if spec is not None:
                body["vllm_xargs"] = p.flat()
            prompts[(ti, si)] = body
    assert all(len(b["prompt"]) % 128 == 124 and len(b["prompt"]) > 128 for b in prompts.values())

    alone = {key: _post(server, "/v1/completions", body)["choices"][0]["token_ids"] for key, body in prompts.items()}

    jobs = [("good", key) for key in prompts]  # 32 distinct, each once
    jobs += [("good", (i % 4, (i * 3) % 8)) for i in range(8)]  # and 8 repeats side by side
    jobs += [("drop", (i % 4, i % 8)) for i in range(8)]
    jobs += [("bad", (i % 4, i)) for i in range(len(BAD))]
    jobs += [("bad", ((i + 1) % 4, i)) for i in range(64 - len(jobs))]
    assert len(jobs) == 64
    random.Random(0).shuffle(jobs)

    health_failures, stop = [], threading.Event()

    def watch_health():
        while not stop.is_set():
            try:
                urllib.request.urlopen(server + "/health", timeout=10)
            except OSError as e:
                health_failures.append(repr(e))
            stop.wait(0.25)

    def run(job):
        kind, key = job
        if kind == "good":
            return kind, key, _post(server, "/v1/completions", prompts[key])["choices"][0]["token_ids"]
        if kind == "drop":
            return kind, key, _drop_stream(server, prompts[key])
        xargs, _ = BAD[key[1]]
        try:
            _post(server, "/v1/completions", dict(prompts[(key[0], 0)], vllm_xargs=xargs))
        except urllib.error.HTTPError as e:
            return kind, key, (e.code, e.read().decode())
        return kind, key, (200, "accepted")

    before = _preemptions(server)
    watcher = threading.Thread(target=watch_health, daemon=True)
    watcher.start()
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(run, jobs, timeout=900))
    finally:
        stop.set()
        watcher.join()

    wrong = [(key, got, alone[key]) for kind, key, got in results if kind == "good" and got != alone[key]]
    assert not wrong, f"{len(wrong)} good requests differ from the same request sent alone: {wrong[:3]}"
    for kind, key, got in results:
        if kind == "bad":
            code, text = got
            assert code == 400 and BAD[key[1]][1] in text, (BAD[key[1]][0], code, text[:300])
        elif kind == "drop":
            assert got, "a streamed request sent nothing before it was dropped"
    assert not health_failures, health_failures[:3]
    assert _preemptions(server) > before, "the load did not force preemption: the cache is not small enough"

    deadline = time.time() + 60  # finished and aborted requests are cleared at the engine's next step
    state = _state(server)
    while (state["parsed_requests"] or state["runner_requests"]) and time.time() < deadline:
        time.sleep(1)
        state = _state(server)
    assert state == {"parsed_requests": 0, "steered_requests": 0, "runner_requests": 0}, state
    # and the server still serves exactly
    again = _post(server, "/v1/completions", prompts[(0, 1)])["choices"][0]["token_ids"]
    assert again == alone[(0, 1)]


# ---------------------------------------------------------------------------------------------
# Hostile clients (issue 28): the parser's table of hostile specs through the OpenAI server. Each
# gets a 400 that names its problem while other clients' steered requests keep their exact tokens.


def _flat_only(extra) -> bool:
    """vllm_xargs carries flat values (str, int, float) only; the nested form is the LLM API's."""
    return set(extra) <= {"attnsteer_method", "attnsteer_spans"} and all(
        isinstance(v, (str, int, float)) for v in extra.values()
    )


def test_hostile_requests_get_a_400_and_the_server_keeps_serving(server, hf_model, server_files):
    import threading
    import urllib.error
    from concurrent.futures import ThreadPoolExecutor

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
    from test_serving_security import PROMPT, _hostile

    _, tok = hf_model
    ids = tok(_FILLER * 4, add_special_tokens=False)["input_ids"][: len(PROMPT)]  # the table's 24 tokens
    assert len(ids) == len(PROMPT)
    table = [(name, extra, words) for name, extra, words in _hostile(server_files) if _flat_only(extra)]
    assert len(table) > 80
    base = {"model": MODEL_DIR, "max_tokens": 6, "temperature": 0, "return_token_ids": True}
    good = dict(base, prompt=ids, vllm_xargs={"attnsteer_method": "guide:delta=2", "attnsteer_spans": "2:9:1"})
    alone = _complete(server, good)["token_ids"]
    stop, good_results, health_failures = threading.Event(), [], []

    def other_client():  # a well-behaved client, served throughout
        while not stop.is_set():
            good_results.append(_complete(server, good)["token_ids"])
            try:
                urllib.request.urlopen(server + "/health", timeout=10)
            except OSError as e:
                health_failures.append(repr(e))

    def hostile(item):
        name, extra, words = item
        try:
            _post(server, "/v1/completions", dict(base, prompt=ids, vllm_xargs=extra), timeout=60)
        except urllib.error.HTTPError as e:
            return name, words, e.code, e.read().decode()
        return name, words, 200, "accepted"

    watcher = threading.Thread(target=other_client, daemon=True)
    watcher.start()
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(hostile, table, timeout=600))
    finally:
        stop.set()
        watcher.join()
    wrong = [(n, c, t[:200]) for n, w, c, t in results if c != 400 or w not in t]
    assert not wrong, wrong
    for name, _, _, text in results:
        for leak in ("Errno", "No such file", "Permission denied", "JSONDecodeError", "Traceback"):
            assert leak not in text, (name, text[:300])
    assert good_results and all(r == alone for r in good_results), (alone, good_results[:3])
    assert not health_failures, health_failures[:3]
    assert _complete(server, good)["token_ids"] == alone


def test_an_operator_head_profile_is_served_by_name(server, hf_model, server_files):
    """ATTNSTEER_HEAD_PROFILES=ops=FILE at start-up; a request names ``heads=ops`` and gets the
    Hugging Face path's tokens with the same profile read locally (parse_local)."""
    model, tok = hf_model
    spec = "pasta:alpha=0.01,heads=ops"
    p = steered_prompt(tok, PROMPTS[0], "pasta:alpha=0.01")
    xargs = dict(p.flat(), attnsteer_method=spec)
    base = {"model": MODEL_DIR, "max_tokens": NEW, "temperature": 0, "return_token_ids": True}
    got = _complete(server, dict(base, prompt=p.prompt_token_ids, vllm_xargs=xargs))["token_ids"]
    enc = attnsteer.highlight(tok, PROMPTS[0])
    T = enc["input_ids"].shape[1]
    local = specs.parse_local(f"pasta:alpha=0.01,heads={server_files / 'operator.json'}")
    assert local.heads == {int(k): v for k, v in OPERATOR_HEADS.items()}
    with torch.no_grad(), attnsteer.steer(model, local, spans=enc):
        want = model.generate(**enc, max_new_tokens=NEW, do_sample=False)[0, T:].tolist()
    assert got == _trim(want, got)
