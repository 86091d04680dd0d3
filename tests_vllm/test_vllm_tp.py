"""Tensor parallelism on CPU: the embedded model (9 heads, 3 kv heads) over 3 ranks, one head
block per rank; steered requests, PASTA's shipped head profile among them (heads on every rank),
give the greedy tokens of attnsteer.steer + model.generate on one device."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("vllm")

from test_vllm_exact import MODEL_DIR, PROMPTS, _hf_tokens, _trim, _vllm_batch  # noqa: E402

TP = 3
JOBS = [
    (PROMPTS[0], "pasta:alpha=0.01,heads=smollm2-135m"),
    (PROMPTS[1], None),
    (PROMPTS[2], "guide:delta=2"),
    (PROMPTS[0], "spotlight:target=0.3"),
    (PROMPTS[3], "keyscale:alpha=3,phases=both"),
]


@pytest.fixture(scope="module")
def hf():
    import attnsteer

    if not os.path.isdir(MODEL_DIR):
        m, t = attnsteer.models.load_default(progress=False)
        attnsteer.models.export(m, t, MODEL_DIR)
    return attnsteer.models.load(MODEL_DIR, progress=False)


@pytest.fixture(scope="module")
def llm(hf):
    from vllm import LLM

    from attnsteer.vllm.plugin import register

    register()
    # three ranks on a 2-core machine: one OpenMP thread each, two of them sharing core 0
    old = os.environ.get("VLLM_CPU_OMP_THREADS_BIND")
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "|".join(str(i % 2) for i in range(TP))
    try:
        engine = LLM(
            model=MODEL_DIR,
            dtype="float32",
            max_model_len=512,
            enforce_eager=True,
            seed=0,
            tensor_parallel_size=TP,
            distributed_executor_backend="mp",
        )
    finally:
        if old is None:
            os.environ.pop("VLLM_CPU_OMP_THREADS_BIND", None)
        else:
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = old
    yield engine
    engine.llm_engine.engine_core.shutdown()


def test_tensor_parallel_steering_equals_one_device(llm, hf):
    got = _vllm_batch(llm, hf, JOBS)
    for (prompt, spec), v in zip(JOBS, got):
        assert v == _trim(_hf_tokens(hf, prompt, spec), v), spec
    assert got[0] != _vllm_batch(llm, hf, [(PROMPTS[0], None)])[0]  # the head profile changes the reply
