"""vLLM + attnsteer on the second real model, Gemma 3 270M (sliding-window layers of 512 keys and
global ones, q/k norms, one kv head of 256 channels): greedy tokens equal attnsteer.steer +
model.generate for every per-row method, on prompts shorter and longer than the window, with
chunked prefill. Run by `make test-vllm`."""

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

MODEL_DIR = os.path.join(os.path.dirname(__file__), "..", "build", "gemma3-270m")
NEW = 6
METHODS = ["guide:delta=1", "instaboost:alpha=3", "pasta:alpha=0.2", "spotlight:target=0.2", "keyscale:alpha=1.5"]
SHORT = "<<Answer in French.>> Question: what is the capital of Italy? Answer:"
LONG = (
    "<<Answer in French.>>\n\n"
    + "The quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat. " * 36
    + "\n\nQuestion: which animal sleeps? Answer:"
)


@pytest.fixture(scope="module")
def hf():
    from test_vllm_exact import exported_model

    return exported_model(MODEL_DIR, attnsteer.models.load_gemma3_270m)


@pytest.fixture(scope="module")
def llm(hf):
    from vllm import LLM

    from attnsteer.vllm.plugin import register

    register()
    return LLM(model=MODEL_DIR, dtype="float32", max_model_len=1024, enforce_eager=True, seed=0,
               enable_chunked_prefill=True, max_num_batched_tokens=128, max_num_seqs=8)  # fmt: skip


def _hf_tokens(hf, prompt, spec):
    model, tok = hf
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


def test_long_prompt_crosses_the_sliding_window(hf):
    assert attnsteer.highlight(hf[1], LONG)["input_ids"].shape[1] > hf[0].config.sliding_window + 32


def test_tokens_equal_the_hf_path_in_one_mixed_batch(llm, hf):
    """Every method and unsteered, on a prompt within the window and one across it, as one batch
    (steered and unsteered requests of different lengths side by side, chunked prefill)."""
    from vllm import SamplingParams

    tok = hf[1]
    jobs = [(text, spec) for spec in [None, *METHODS] for text in (SHORT, LONG)]
    prompts, params = [], []
    for text, spec in jobs:
        if spec is None:
            prompts.append({"prompt_token_ids": attnsteer.highlight(tok, text)["input_ids"][0].tolist()})
            params.append(SamplingParams(temperature=0, max_tokens=NEW))
        else:
            p = steered_prompt(tok, text, spec)
            prompts.append(p.prompt())
            params.append(SamplingParams(temperature=0, max_tokens=NEW, extra_args=p.extra_args))
    got = [list(o.outputs[0].token_ids) for o in llm.generate(prompts, params, use_tqdm=False)]
    for (text, spec), v in zip(jobs, got):
        assert v == _hf_tokens(hf, text, spec)[: len(v)], (spec, text[:30])
    steered = {spec: v for (text, spec), v in zip(jobs, got) if text is LONG}
    assert len({tuple(v) for v in steered.values()}) > 1  # the steering changed some reply
