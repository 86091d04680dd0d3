"""vLLM + attnsteer against attnsteer.steer + model.generate on the embedded model: greedy tokens
equal, for every per-row method, in one batch of steered and unsteered requests of different
lengths; with chunked prefill. Run by `make test-vllm` (its own environment, `.venv-vllm`)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

vllm = pytest.importorskip("vllm")

import attnsteer  # noqa: E402
from attnsteer import specs  # noqa: E402
from attnsteer.vllm import steered_prompt  # noqa: E402

MODEL_DIR = os.environ.get("ATTNSTEER_VLLM_MODEL", os.path.join(os.path.dirname(__file__), "..", "build", "smollm2"))
NEW = 12
METHODS = [
    "guide:delta=2",
    "instaboost:alpha=5",
    "pasta:alpha=0.1",
    "spotlight:target=0.3",
    "keyscale:alpha=3",
    "guide:delta=1,phases=prefill",
    "spotlight:target=0.2,layers=10-20",
]
PROMPTS = [
    [
        {"role": "system", "content": "<<Start your answer with the word YES.>>"},
        {"role": "user", "content": "Is the sky blue?"},
    ],
    "<<Answer in French.>> What is the capital of Italy? Explain briefly why it became the capital.",
    [{"role": "user", "content": "Write one sentence about cats. <<Use no commas.>>"}],
    "The quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat. " * 6
    + "<<Reply with one word.>> Which animal sleeps?",
]
# the span first, then more than one KV block of text: the KV of every later token depends on the
# steering, so reusing unsteered blocks for a steered request (or back) changes its tokens
SALTED = [
    {"role": "system", "content": "<<Start your answer with the word YES.>>"},
    {
        "role": "user",
        "content": "The quick brown fox jumps over the lazy dog while the cat sleeps. " * 20 + "Describe it.",
    },
]
CHUNK = 32  # token budget per step: every prompt but the shortest is prefilled in chunks


def exported_model(model_dir: str = MODEL_DIR, load=None):
    """A real model as the folder vLLM serves (exported on first use; default the embedded one),
    loaded from that folder for the HF path."""
    if not os.path.isdir(model_dir):
        m, t = (load or attnsteer.models.load_default)(progress=False)
        attnsteer.models.export(m, t, model_dir)
    return attnsteer.models.load(model_dir, progress=False)


@pytest.fixture(scope="module")
def hf():
    return exported_model()


def _engine(**kw):
    from vllm import LLM

    from attnsteer.vllm.plugin import register

    register()  # what the vllm.general_plugins entry point does when attnsteer is pip-installed
    return LLM(model=MODEL_DIR, dtype="float32", max_model_len=1024, enforce_eager=True, seed=0, **kw)


@pytest.fixture(scope="module")
def llm(hf):
    # chunked prefill with a small budget, prefix caching on (vLLM's default)
    return _engine(enable_chunked_prefill=True, max_num_batched_tokens=CHUNK, max_num_seqs=8)


def _hf_tokens(hf, prompt, spec):
    model, tok = hf
    enc = attnsteer.highlight(tok, prompt)
    T = enc["input_ids"].shape[1]
    with torch.no_grad():
        if spec is None:
            out = model.generate(**enc, max_new_tokens=NEW, do_sample=False)
        else:
            with attnsteer.steer(model, specs.parse(spec), spans=enc):
                out = model.generate(**enc, max_new_tokens=NEW, do_sample=False)
    return out[0, T:].tolist()


def _vllm_batch(llm, hf, jobs):
    from vllm import SamplingParams

    tok = hf[1]
    prompts, params = [], []
    for prompt, spec in jobs:
        if spec is None:
            ids = attnsteer.highlight(tok, prompt)["input_ids"][0].tolist()
            prompts.append({"prompt_token_ids": ids})
            params.append(SamplingParams(temperature=0, max_tokens=NEW))
        else:
            p = steered_prompt(tok, prompt, spec)
            prompts.append(p.prompt())
            params.append(SamplingParams(temperature=0, max_tokens=NEW, extra_args=p.extra_args))
    return [list(o.outputs[0].token_ids) for o in llm.generate(prompts, params, use_tqdm=False)]


def _trim(hf_ids, v_ids):
    return hf_ids[: len(v_ids)]  # vLLM stops at EOS; HF pads after it


@pytest.mark.parametrize("spec", METHODS)
def test_each_method_in_a_mixed_batch(llm, hf, spec):
    jobs = [(PROMPTS[0], spec), (PROMPTS[1], None), (PROMPTS[2], spec), (PROMPTS[1], spec), (PROMPTS[3], spec)]
    got = _vllm_batch(llm, hf, jobs)
    for (prompt, s), v in zip(jobs, got):
        assert v == _trim(_hf_tokens(hf, prompt, s), v), (s, prompt)


def test_prefix_cache_is_salted_by_the_steering(llm, hf):
    """The same prompt steered, unsteered, and steered again (a prefix-cache hit for the second
    steered run only: the salt is the steering configuration)."""
    spec = "keyscale:alpha=3,phases=both"  # prompt rows steered too (their KV depends on it); changes this reply
    first = _vllm_batch(llm, hf, [(SALTED, spec)])
    jobs = [(SALTED, None), (SALTED, spec), (SALTED, "keyscale:alpha=2,phases=both")]
    mixed = _vllm_batch(llm, hf, jobs)
    assert mixed[1] == first[0] and mixed[0] != mixed[1]
    for (prompt, s), v in zip(jobs, mixed):
        assert v == _trim(_hf_tokens(hf, prompt, s), v), s
    tok = hf[1]
    assert steered_prompt(tok, SALTED, spec).cache_salt == steered_prompt(tok, SALTED, spec).cache_salt


def test_steering_changes_the_reply(llm, hf):
    plain, steered = _vllm_batch(llm, hf, [(PROMPTS[0], None), (PROMPTS[0], "guide:delta=2")])
    assert plain != steered


def test_bad_spec_is_refused_before_it_reaches_the_engine(hf):
    with pytest.raises(ValueError, match="cannot be served per request"):
        steered_prompt(hf[1], PROMPTS[0], "gate+guide:delta=2")


def test_bad_steering_is_refused_at_admission_and_the_engine_keeps_serving(llm, hf):
    from vllm import SamplingParams
    from vllm.exceptions import VLLMValidationError

    tok = hf[1]
    p = steered_prompt(tok, PROMPTS[0], "guide:delta=2")
    T = len(p.prompt_token_ids)
    bad = {
        "outside": ({"attnsteer": {"method": "guide:delta=2", "spans": [[T - 2, T + 5, 1]]}}, "lies outside"),
        "unknown method": ({"attnsteer": {"method": "guied:delta=2", "spans": [[1, 3, 1]]}}, "guied"),
        "unknown setting": ({"attnsteer": {"method": "guide:dleta=2", "spans": [[1, 3, 1]]}}, "dleta"),
        "special only": ({"attnsteer": {"method": "guide:delta=2", "spans": [[0, 1, 1]]}}, "special tokens only"),
        "flat half": ({"attnsteer_method": "guide:delta=2"}, "needs both"),
    }
    for extra, message in bad.values():
        with pytest.raises(VLLMValidationError, match=message):
            llm.generate([p.prompt()], SamplingParams(temperature=0, max_tokens=NEW, extra_args=extra), use_tqdm=False)
    # the engine still serves, steered and unsteered, exactly
    jobs = [(PROMPTS[0], "guide:delta=2"), (PROMPTS[2], None)]
    for (prompt, s), v in zip(jobs, _vllm_batch(llm, hf, jobs)):
        assert v == _trim(_hf_tokens(hf, prompt, s), v), s


def test_steered_request_without_a_salt_gets_its_steerings(llm, hf):
    """A steered request sent without cache_salt right after the same prompt unsteered: without
    the salt added at admission it would reuse the unsteered prompt's KV blocks."""
    from vllm import SamplingParams

    from attnsteer.vllm.request import parse_request, request_salt

    tok = hf[1]
    spec = "keyscale:alpha=3,phases=both"
    p = steered_prompt(tok, SALTED, spec)
    assert request_salt(parse_request(p.extra_args, p.prompt_token_ids)) == p.cache_salt
    assert len(p.prompt_token_ids) > 2 * llm.llm_engine.vllm_config.cache_config.block_size
    (plain,) = _vllm_batch(llm, hf, [(SALTED, None)])  # fills the prefix cache, unsalted
    out = llm.generate(
        [{"prompt_token_ids": p.prompt_token_ids}],  # no cache_salt
        SamplingParams(temperature=0, max_tokens=NEW, extra_args=p.extra_args),
        use_tqdm=False,
    )
    got = list(out[0].outputs[0].token_ids)
    assert got == _trim(_hf_tokens(hf, SALTED, spec), got) and got != plain


def test_unsteerable_models_and_platforms_are_refused_per_request(hf, monkeypatch):
    """admit() on a model config whose attention the CPU_ATTN override does not run (MLA, …)."""
    from types import SimpleNamespace

    from vllm import SamplingParams
    from vllm.exceptions import VLLMValidationError

    from attnsteer.vllm.plugin import admit, unsteerable

    p = steered_prompt(hf[1], PROMPTS[0], "guide:delta=2")
    req = SimpleNamespace(
        sampling_params=SamplingParams(extra_args=p.extra_args), prompt_token_ids=p.prompt_token_ids, cache_salt=None
    )
    with pytest.raises(VLLMValidationError, match="latent attention"):
        admit(req, hf[1], SimpleNamespace(use_mla=True))
    assert unsteerable(SimpleNamespace(is_hybrid=True)) and unsteerable(SimpleNamespace()) is None
    admit(req, hf[1], SimpleNamespace())
    assert req.cache_salt == p.cache_salt
    plain = SimpleNamespace(sampling_params=SamplingParams(), prompt_token_ids=[1, 2], cache_salt=None)
    admit(plain, hf[1], SimpleNamespace(use_mla=True))  # unsteered requests pass untouched
    assert plain.cache_salt is None
    from vllm.platforms import current_platform

    monkeypatch.setattr(current_platform, "is_cpu", lambda: False)  # a GPU engine: no paged CUDA op yet
    with pytest.raises(VLLMValidationError, match="CPU backend only"):
        admit(req, hf[1], SimpleNamespace())


def test_preempted_requests_are_recomputed_with_their_steering(hf, monkeypatch):
    """Nine 128-token prompts (one KV block each) in a 9-block cache: their first decode tokens need
    blocks the cache does not have, so vLLM preempts requests and later recomputes them (prompt +
    tokens so far as one prefill). Their tokens still equal the HF path's."""
    from vllm.v1.core.sched.scheduler import Scheduler

    preempted = []
    original = Scheduler._preempt_request

    def counting(self, request, *args, **kwargs):
        preempted.append(request.request_id)
        return original(self, request, *args, **kwargs)

    monkeypatch.setattr(Scheduler, "_preempt_request", counting)
    tok = hf[1]

    def prompt(i):  # a prompt of exactly one block (128 tokens)
        for n in range(1, 80):
            p = [
                {"role": "system", "content": "<<Start your answer with the word YES.>>"},
                {"role": "user", "content": f"Request {i}: " + "the cat sleeps on the mat " * n + "Describe it."},
            ]
            if attnsteer.highlight(tok, p)["input_ids"].shape[1] >= 128:
                return p

    specs_ = ["guide:delta=2", "keyscale:alpha=3,phases=both", "spotlight:target=0.3", None]
    jobs = [(prompt(i), specs_[i % 4]) for i in range(9)]
    assert all(attnsteer.highlight(tok, p)["input_ids"].shape[1] == 128 for p, _ in jobs)
    llm = _engine(num_gpu_blocks_override=9, max_num_seqs=9, enable_prefix_caching=False)
    try:
        got = _vllm_batch(llm, hf, jobs)
    finally:
        llm.llm_engine.engine_core.shutdown()
    assert preempted, "no request was preempted: the test did not test preemption"
    for (prompt_, s), v in zip(jobs, got):
        assert v == _trim(_hf_tokens(hf, prompt_, s), v), s
