"""Tensor parallelism on CPU: the embedded model (9 heads, 3 kv heads) over 3 ranks, one head
block per rank; steered requests, PASTA's shipped head profile among them (heads on every rank),
give the greedy tokens of attnsteer.steer + model.generate on one device.

The engine runs in a child process (this file run as a script): vLLM reads its CPU thread-binding
setting once per process, and the engines of the other test modules have read it already."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("vllm")

from test_vllm_exact import MODEL_DIR, PROMPTS, _hf_tokens, _trim, _vllm_batch, exported_model  # noqa: E402

TP = 3
MARK = "attnsteer-tp-tokens:"
JOBS = [
    (PROMPTS[0], "pasta:alpha=0.01,heads=smollm2-135m"),
    (PROMPTS[1], None),
    (PROMPTS[2], "guide:delta=2"),
    (PROMPTS[0], "spotlight:target=0.3"),
    (PROMPTS[3], "keyscale:alpha=3,phases=both"),
    (PROMPTS[0], None),
]


def _child() -> None:
    from vllm import LLM

    from attnsteer.vllm.plugin import register

    register()
    llm = LLM(
        model=MODEL_DIR,
        dtype="float32",
        max_model_len=512,
        enforce_eager=True,
        seed=0,
        tensor_parallel_size=TP,
        distributed_executor_backend="mp",
    )
    print(MARK, json.dumps(_vllm_batch(llm, (None, llm.get_tokenizer()), JOBS)), flush=True)


@pytest.fixture(scope="module")
def hf():
    return exported_model()


def test_tensor_parallel_steering_equals_one_device(hf):
    # three ranks on a 2-core machine: one OpenMP thread each, two of them sharing core 0
    env = dict(os.environ, VLLM_CPU_OMP_THREADS_BIND="|".join(str(i % 2) for i in range(TP)))
    res = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith(MARK)]
    assert lines, res.stdout[-3000:]
    got = json.loads(lines[-1][len(MARK) :])
    for (prompt, spec), v in zip(JOBS, got):
        assert v == _trim(_hf_tokens(hf, prompt, spec), v), spec
    assert got[0] != got[-1]  # the head profile changes the reply


if __name__ == "__main__":
    _child()
