"""A paged step's plan for one request equals the plan the Hugging Face adapter makes for the
same tokens — for a whole prefill, a chunk of it (chunked prefill) and a decode step."""

from __future__ import annotations

import pytest
import torch

import attnsteer
from attnsteer.vllm.plan import plan_request, request_context

from tiny import model as tiny_model
from tiny import tokenizer

METHODS = [
    attnsteer.GUIDE(2.0),
    attnsteer.PASTA(0.1),
    attnsteer.SpotLight(0.3),
    attnsteer.KeyScale(3.0),
    attnsteer.GUIDE(1.0, phases="prefill", layers=[1]),
]


def _hf_plans(m, enc, method, ids, am, cache):
    """The OpArgs the HF adapter hands to the op, per layer, for one forward."""
    seen = {}
    real = attnsteer.ops.layer_attention

    def spy(q, k, v, args):
        seen.setdefault(len(seen), args)
        return real(q, k, v, args)

    attnsteer.ops.layer_attention = spy
    try:
        m(input_ids=ids, attention_mask=am, past_key_values=cache, use_cache=True)
    finally:
        attnsteer.ops.layer_attention = real
    return seen


@pytest.mark.parametrize("method", METHODS, ids=repr)
def test_chunks_and_decode_plan_like_the_hf_adapter(method):
    from transformers import DynamicCache

    m, tok = tiny_model("llama", layers=2), tokenizer()
    enc = attnsteer.highlight(tok, "The quick brown fox. <<Answer in French.>> Now write")
    ids, am = enc["input_ids"], enc["attention_mask"]
    T = ids.shape[1]
    H = m.config.num_attention_heads
    w = enc.span_mask[0].float()
    with torch.no_grad(), attnsteer.steer(m, method, spans=enc):
        cache = DynamicCache(config=m.config)
        whole = _hf_plans(m, enc, method, ids, am, cache)  # the whole prompt
        nxt = torch.tensor([[5]])
        decode = _hf_plans(m, enc, method, nxt, torch.cat([am, am.new_ones(1, 1)], 1), cache)  # a decode step
        cache = DynamicCache(config=m.config)
        with attnsteer.hf.active(m).prompt_prefix():  # a prefill cut in two chunks: T - 1, then 1
            _hf_plans(m, enc, method, ids[:, :-1], am[:, :-1], cache)
        chunk = _hf_plans(m, enc, method, ids[:, -1:], am, cache)
    steered_layers = [i for i in range(2) if method.plan(i, request_context(w, 0, T, H)) is not None]
    for (start, n), want in [((0, T), whole), ((T - 1, 1), chunk), ((T, 1), decode)]:
        ctx = request_context(w, start, n, H)
        got = [plan_request(method, w, start, n, H, i, ctx) for i in range(2)]
        for layer in range(2):
            a = got[layer]
            b = want[layer]
            if a is None:  # unsteered layer: the adapter ran the op with nothing steered
                assert b.target is None and not bool(b.bias.any()) and bool((b.key_scale == 1).all())
                continue
            assert torch.equal(a.span_weights, b.span_weights) and torch.equal(a.bias, b.bias)
            assert torch.equal(a.key_scale, b.key_scale) and a.target == b.target
            qa, qb = a.query_mask, b.query_mask
            assert (qa is None and (qb is None or bool(qb.all()))) or torch.equal(qa, qb)
    assert steered_layers  # every method here steers some layer


def test_a_chunk_sees_the_whole_span_so_far():
    w = torch.tensor([0.0, 1, 1, 0, 2, 0])
    ctx = request_context(w, 3, 2, 2)  # queries 3, 4 of a 6-token prompt; keys 0..4
    assert ctx.span.tolist() == [[0.0, 1, 1, 0, 2]] and ctx.q_pos.tolist() == [3, 4]
    dec = request_context(w, 7, 1, 2)  # a decode token after two generated ones
    assert dec.span.tolist() == [[0.0, 1, 1, 0, 2, 0, 0, 0]]
    assert attnsteer.GUIDE(1.0, phases="prefill").plan(0, dec).query_mask.tolist() == [[False]]


@pytest.mark.parametrize("tp_size", [2, 4])
def test_tensor_parallel_ranks_steer_their_share_of_the_heads(tp_size):
    """Rank r's plan holds the per-head settings of heads r·H/P … (r+1)·H/P − 1, and attention
    run per rank on its heads, put back together, equals the single-device steered attention."""
    from attnsteer.vllm.plan import heads_of_rank

    H, Hkv, T, D = 8, 4, 12, 16
    w = torch.zeros(T)
    w[3:6] = 1.0
    method = attnsteer.PASTA(0.1, heads={0: [1, 6]})
    whole = plan_request(method, w, 0, T, H, 0)
    ranks = [plan_request(method, w, 0, T, H, 0, tp_rank=r, tp_size=tp_size) for r in range(tp_size)]
    assert torch.equal(torch.cat([a.bias for a in ranks], -1), whole.bias)
    assert torch.equal(torch.cat([a.key_scale for a in ranks], -1), whole.key_scale)
    steered = whole.bias[0].nonzero().flatten().tolist()
    assert steered == [1, 6]
    h = H // tp_size
    assert [r for r, a in enumerate(ranks) if a.bias.abs().sum() > 0] == sorted({1 // h, 6 // h})
    g = torch.Generator().manual_seed(0)
    q, k, v = (
        torch.randn(1, H, T, D, generator=g),
        torch.randn(1, Hkv, T, D, generator=g),
        torch.randn(1, Hkv, T, D, generator=g),
    )
    full, _ = attnsteer.ops.layer_attention(q, k, v, whole.replace(is_causal=True))
    kv_h = Hkv // tp_size
    parts = [
        attnsteer.ops.layer_attention(
            q[:, r * h : (r + 1) * h],
            k[:, r * kv_h : (r + 1) * kv_h],
            v[:, r * kv_h : (r + 1) * kv_h],
            a.replace(is_causal=True),
        )[0]
        for r, a in enumerate(ranks)
    ]
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-6)
    with pytest.raises(ValueError, match="cannot be split over 3"):
        heads_of_rank(whole, 0, 3)


@pytest.mark.parametrize("method", METHODS, ids=repr)
def test_preemption_recompute_steers_like_the_original_steps(method):
    """vLLM recomputes a preempted request as one prefill of its prompt and the tokens generated
    so far: every row of that step must get the attention it got in the prefill / decode step
    that first computed it (rows past the prompt are decode rows by position)."""
    T, g, H, D = 9, 4, 4, 8
    w = torch.zeros(T)
    w[2:5] = 1.0
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, H, T + g, D, generator=gen) for _ in range(3))

    def run(start, n, layer):
        args = plan_request(method, w, start, n, H, layer)
        if args is None:  # nothing steered: plain causal attention
            args = attnsteer.ops.OpArgs(torch.zeros(1, start + n), torch.zeros(1, H), torch.ones(1, H))
        out, _ = attnsteer.ops.layer_attention(
            q[:, :, start : start + n], k[:, :, : start + n], v[:, :, : start + n], args.replace(is_causal=True)
        )
        return out

    for layer in range(2):
        again = run(0, T + g, layer)  # the recompute
        first = torch.cat([run(0, T, layer)] + [run(T + i, 1, layer) for i in range(g)], 2)
        assert torch.allclose(again, first, atol=1e-6), layer
