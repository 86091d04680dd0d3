"""Real-model-shaped checks: random-initialised 2-layer models with the attention shapes of Llama-3-8B (GQA
32 / 8 heads, head_dim 128, rope θ 500k), Qwen2.5-0.5B (14 / 2, head_dim 64, q/k/v biases) and Gemma-3-1B
(4 / 1, head_dim 256, sliding window, q/k norms). For every attention method, `steer()` on a left-padded
batch equals the eager float64 oracle (`references.eager_steered_attention`: the whole logit matrix
materialised, the papers' formulas written on it) run on each prompt alone, in float32 and bfloat16,
for the prompt forward and for each cached decode step of `generate`.

On the CPU (CI) the models are narrowed — fewer heads at the same head_dim and GQA ratio, a small MLP —
so the run stays short; ``ATTNSTEER_TEST_DEVICE=cuda`` (tools/gpu_session.sh) runs the full shapes on the
GPU, where the fused kernel, not the CPU one, does the work."""

from __future__ import annotations

import functools
import os

import pytest
import torch

import attnsteer
from attnsteer import GUIDE, PASTA, InstABoost, KeyScale, SpotLight
from references import eager_steered_attention

DEVICE = "cuda" if os.environ.get("ATTNSTEER_TEST_DEVICE") == "cuda" and torch.cuda.is_available() else "cpu"
FULL = DEVICE == "cuda"
VOCAB = 512

# (kind, config class, full-shape kwargs, narrowed kwargs for the CPU)
SHAPES = {
    "llama3-8b": ("LlamaConfig", dict(hidden_size=4096, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                                      intermediate_size=14336, rope_theta=500000.0),
                  dict(hidden_size=512, num_attention_heads=4, num_key_value_heads=1, head_dim=128,
                       intermediate_size=256, rope_theta=500000.0)),
    "qwen2.5-0.5b": ("Qwen2Config", dict(hidden_size=896, num_attention_heads=14, num_key_value_heads=2,
                                         intermediate_size=4864, rope_theta=1000000.0),
                     dict(hidden_size=448, num_attention_heads=7, num_key_value_heads=1, intermediate_size=256,
                          rope_theta=1000000.0)),
    "gemma3-1b": ("Gemma3TextConfig", dict(hidden_size=1152, num_attention_heads=4, num_key_value_heads=1, head_dim=256,
                                           intermediate_size=6912, sliding_window=8, query_pre_attn_scalar=256),
                  dict(hidden_size=256, num_attention_heads=2, num_key_value_heads=1, head_dim=256,
                       intermediate_size=256, sliding_window=8, query_pre_attn_scalar=256)),
}  # fmt: skip

METHODS = [GUIDE(1.0, phases="both"), InstABoost(5.0, phases="both"), PASTA(0.1, phases="both"),
           SpotLight(0.3, phases="both"), KeyScale(2.0, phases="both")]  # fmt: skip
DTYPES = [torch.float32, torch.bfloat16]


@functools.lru_cache(maxsize=None)
def _model(shape: str, dtype: torch.dtype):
    """The model of ``shape`` in ``dtype``, built on the test device (steer() and the oracle restore it)."""
    import transformers as tf

    cls, full, narrow = SHAPES[shape]
    cfg = getattr(tf, cls)(vocab_size=VOCAB, num_hidden_layers=2, max_position_embeddings=256, pad_token_id=0,
                           bos_token_id=1, eos_token_id=2, initializer_range=0.05, **(full if FULL else narrow))  # fmt: skip
    torch.manual_seed(0)
    with torch.device(DEVICE):  # initialised where it runs (the 8B-shaped layers take seconds on a CPU)
        return tf.AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa", dtype=dtype).eval()


def _batch():
    """Two prompts of 12 and 7 tokens, left-padded; spans at tokens 2-5 and 1-3 of each prompt."""
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, VOCAB, (n,), generator=g) for n in (12, 7)]
    spans = [(2, 6), (1, 4)]
    T = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), T, dtype=torch.long)
    am = torch.zeros_like(ids)
    span = torch.zeros(len(prompts), T, dtype=torch.bool)
    for b, (p, (s, e)) in enumerate(zip(prompts, spans)):
        ids[b, T - len(p) :], am[b, T - len(p) :] = p, 1
        span[b, T - len(p) + s : T - len(p) + e] = True
    return prompts, spans, ids.to(DEVICE), am.to(DEVICE), span.to(DEVICE)


def _oracle_logits(model, method, seq: torch.Tensor, span: tuple, prompt_length: int) -> torch.Tensor:
    """``(len(seq), V)`` logits of one unpadded sequence under the eager float64 oracle (every row steered;
    the span within the prompt)."""
    from transformers import AttentionInterface

    w = torch.zeros(1, len(seq), dtype=torch.float64, device=DEVICE)
    w[0, span[0] : span[1]] = 1.0
    AttentionInterface.register("attnsteer_shape_oracle", eager_steered_attention(method, w, prompt_length))
    previous = model.config._attn_implementation
    model.set_attn_implementation("attnsteer_shape_oracle")
    try:
        with torch.no_grad():
            return model(input_ids=seq[None].to(DEVICE)).logits[0].float()
    finally:
        model.set_attn_implementation(previous)


def _tol(want: torch.Tensor, dtype: torch.dtype) -> float:
    """The largest error the comparison allows: 0.2 % (float32) or 2 % (bfloat16) of the logits' scale. On
    the CPU the measured errors stay under a fifth of it; the methods' effects are 6-500 times it."""
    return (2e-3 if dtype == torch.float32 else 2e-2) * max(want.abs().max().item(), 1.0)


def _close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    scale, tol = want.abs().max().item(), _tol(want, dtype)
    err = (got.float() - want).abs().max().item()
    assert err <= tol, f"{what}: max |steer - oracle| = {err:.3g} > {tol:.3g} (logit scale {scale:.3g})"


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("method", METHODS, ids=lambda m: type(m).__name__)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_steer_equals_the_eager_oracle_prefill_and_cached_decode(shape, method, dtype):
    model = _model(shape, dtype)
    prompts, spans, ids, am, span = _batch()
    T, steps = ids.shape[1], 3
    with torch.no_grad(), attnsteer.steer(model, method, spans=span.float() * am):
        pos = (am.cumsum(-1) - 1).clamp_min(0)
        prefill = model(input_ids=ids, attention_mask=am, position_ids=pos).logits.float()
        out = model.generate(input_ids=ids, attention_mask=am, max_new_tokens=steps, min_new_tokens=steps,
                             do_sample=False, output_logits=True, return_dict_in_generate=True, pad_token_id=0)  # fmt: skip
    for b, (p, s) in enumerate(zip(prompts, spans)):
        n = len(p)
        seq = out.sequences[b, T - n :].cpu()  # the prompt and the generated tokens, unpadded
        want = _oracle_logits(model, method, seq, s, n)
        with torch.no_grad():  # the comparison can tell steered from unsteered
            plain = model(input_ids=seq[None].to(DEVICE)).logits[0].float()
        assert (want - plain).abs().max().item() > 2 * _tol(want, dtype), f"{method} barely changes {shape}'s logits"
        _close(prefill[b, T - n :], want[:n], dtype, f"{shape} {method} prompt row {b}")
        for i in range(steps):  # the logits that chose generated token i (cached decode after the first)
            _close(out.logits[i][b], want[n - 1 + i], dtype, f"{shape} {method} decode step {i} row {b}")
