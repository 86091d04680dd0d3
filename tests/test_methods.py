"""Method configs: layer selection, PASTA's heads, phases, and every validation error."""

from __future__ import annotations

import math

import pytest
import torch

import attnsteer
from attnsteer import GUIDE, PASTA, InstABoost, KeyScale, SpotLight
from attnsteer.methods import ForwardContext

from tiny import model as tiny_model
from tiny import tokenizer


@pytest.mark.parametrize(
    "method",
    [
        GUIDE(2.0, layers=[1]),
        InstABoost(5.0, layers=[1]),
        SpotLight(0.5, layers=[1]),
        KeyScale(4.0, layers=[1], phases="both"),
    ],
    ids=repr,
)
def test_layers_steer_only_those_layers(method):
    ctx = ForwardContext.for_prompt(torch.tensor([[0.0, 1.0, 1.0, 0.0]]), num_heads=4)
    assert method.plan(0, ctx) is None and method.plan(1, ctx) is not None
    m, tok = tiny_model("llama", layers=2, std=0.3), tokenizer()
    enc = attnsteer.highlight(tok, "The quick brown fox. <<Answer in French.>> Now")
    seen = []
    hook = m.model.layers[1].self_attn.register_forward_hook(lambda mod, a, out: seen.append(out[0].clone()))
    hook0 = m.model.layers[0].self_attn.register_forward_hook(lambda mod, a, out: seen.append(out[0].clone()))
    with torch.no_grad():
        m(**enc)
        with attnsteer.steer(m, method, spans=enc):
            m(**enc)
    hook.remove()
    hook0.remove()
    plain0, plain1, steered0, steered1 = seen[0], seen[1], seen[2], seen[3]
    torch.testing.assert_close(steered0, plain0)  # layer 0 untouched
    assert (steered1 - plain1).abs().max() > 1e-4


def test_check_layers_names_the_bad_indices():
    m, tok = tiny_model("llama", layers=2), tokenizer()
    enc = attnsteer.highlight(tok, "<<a b>> c")
    with pytest.raises(ValueError, match=r"GUIDE.layers has indices \[5\] outside 0..1"):
        with attnsteer.steer(m, GUIDE(2.0, layers=[0, 5]), spans=enc):
            pass
    assert m.config._attn_implementation == "sdpa"


def test_pasta_heads_bias_only_the_chosen_heads():
    ctx = ForwardContext.for_prompt(torch.tensor([[0.0, 1.0, 1.0, 0.0]]), num_heads=4)
    args = PASTA(0.01, heads={1: [0, 3]}).plan(1, ctx)
    assert torch.equal(args.span_weights, torch.tensor([[1.0, 0.0, 0.0, 1.0]]))  # the rest of the prompt
    assert torch.equal(args.bias, torch.tensor([[math.log(0.01), 0.0, 0.0, math.log(0.01)]]))
    assert PASTA(0.01, heads={1: [0]}).plan(0, ctx) is None
    with pytest.raises(ValueError, match=r"PASTA.heads\[1\] has head 7 outside 0..3"):
        PASTA(0.01, heads={1: [7]}).plan(1, ctx)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: GUIDE(float("nan")), "GUIDE.delta must be finite"),
        (lambda: GUIDE(1.0, phases="always"), "phases must be one of"),
        (lambda: InstABoost(0.0), "InstABoost.alpha must be a finite multiplier > 0"),
        (lambda: InstABoost(float("inf")), "InstABoost.alpha must be a finite multiplier > 0"),
        (lambda: PASTA(-0.1), "PASTA.alpha must be > 0"),
        (lambda: PASTA(0.1, heads=[1, 2]), "PASTA.heads must be 'all' or"),
        (lambda: SpotLight(1.0), r"SpotLight.target is a span mass in \(0, 1\)"),
        (lambda: SpotLight(0.0), r"SpotLight.target is a span mass in \(0, 1\)"),
        (lambda: KeyScale(0.0), "KeyScale.alpha must be a finite factor > 0"),
        (lambda: GUIDE(1.0, layers=[]), r"layers=\[\]\) steers nothing"),
    ],
)
def test_every_validation_error(make, message):
    with pytest.raises((ValueError, TypeError), match=message):
        make()


def test_phases_pick_the_steered_rows():
    m, tok = tiny_model("llama", layers=2, std=0.3), tokenizer()
    enc = attnsteer.highlight(tok, "The quick brown fox. <<Answer in French.>> Now")
    with torch.no_grad():
        plain_logits = m(**enc).logits
        with attnsteer.steer(m, GUIDE(3.0, phases="decode"), spans=enc):
            decode_logits = m(**enc).logits  # prompt rows only: nothing steered
        with attnsteer.steer(m, GUIDE(3.0, phases="prefill"), spans=enc):
            prefill_logits = m(**enc).logits
    torch.testing.assert_close(decode_logits, plain_logits)
    assert (prefill_logits - plain_logits).abs().max() > 1e-3


def test_plan_context_phases_and_pasta_keys():
    """ForwardContext: the phase rows and PASTA's "rest of the prompt" keys (padding and, with
    keep_sink, each row's first real token left out; generated keys never in it)."""
    span = torch.tensor([[0.0, 0.0, 1.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0, 0.0]])
    padding = torch.tensor([[False, True, True, True, True], [True, True, True, True, True]])
    ctx = ForwardContext.for_prompt(span, num_heads=2, padding=padding)
    assert GUIDE(1.0).plan(0, ctx).query_mask is None
    assert not GUIDE(1.0, phases="decode").plan(0, ctx).query_mask.any()
    assert GUIDE(1.0, phases="prefill").plan(0, ctx).query_mask.all()
    rest = PASTA(0.1).plan(0, ctx).span_weights
    assert rest.tolist() == [[0, 1, 0, 0, 1], [1, 0, 1, 1, 1]]
    rest_sink = PASTA(0.1, keep_sink=True).plan(0, ctx).span_weights
    assert rest_sink.tolist() == [[0, 0, 0, 0, 1], [0, 0, 1, 1, 1]]
    # a decode step: keys 0..5 where key 5 was generated, one query at position 5
    dec = ForwardContext(torch.cat([span, torch.zeros(2, 1)], 1), torch.arange(6), torch.tensor([5]), 5, 2)
    assert PASTA(0.1).plan(0, dec).span_weights[:, 5].tolist() == [0.0, 0.0]
    assert GUIDE(1.0, phases="decode").plan(0, dec).query_mask.all()


def test_row_layers_wrapper_steers_rows_per_layer():
    from attnsteer.directer import RowLayers

    ctx = ForwardContext.for_prompt(torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]]), num_heads=2)
    rows = torch.tensor([[True, False], [False, False]])  # row 0 at layer 0 only
    w = RowLayers(inner=GUIDE(2.0), row_layers=rows)
    assert w.plan(1, ctx) is None  # no row steers layer 1
    args = w.plan(0, ctx)
    assert args.query_mask.tolist() == [[True] * 3, [False] * 3]
    assert torch.equal(args.bias, GUIDE(2.0).plan(0, ctx).bias)
    assert RowLayers(inner=GUIDE(2.0)).plan(0, ctx) is None  # no layer sets: unsteered
    pooled = RowLayers(inner=SpotLight(0.5, pooled=True), row_layers=rows)
    assert pooled.needs_span_mass() and not w.needs_span_mass()


def test_steering_handle_swaps_the_method_and_restores_it():
    m, tok = tiny_model("llama", layers=2, std=0.3), tokenizer()
    enc = attnsteer.highlight(tok, "The quick brown fox. <<Answer in French.>> Now")
    with pytest.raises(RuntimeError, match="not inside an attnsteer.steer"):
        attnsteer.hf.active(m)
    with torch.no_grad():
        plain = m(**enc).logits
        with attnsteer.steer(m, GUIDE(3.0), spans=enc):
            steering = attnsteer.hf.active(m)
            guided = m(**enc).logits
            with steering.use(GUIDE(0.0)):
                neutral = m(**enc).logits
            assert steering.method == GUIDE(3.0)
            with pytest.raises(TypeError, match="takes an attnsteer method"):
                with steering.use("guide"):
                    pass
    torch.testing.assert_close(neutral, plain, atol=1e-5, rtol=1e-5)
    assert (guided - plain).abs().max() > 1e-3


def test_guide_length_ref_grows_the_bias_with_the_prompt_length():
    """delta + log(max(1, n / length_ref)) with n the row's real prompt tokens (left padding out)."""
    span = torch.zeros(3, 600)
    span[:, 500:510] = 1
    pad = torch.ones(3, 600, dtype=torch.bool)
    pad[1, :400] = False  # 200 real tokens: under length_ref, the plain delta
    pad[2, :88] = False  # 512 real tokens: delta + log 2
    ctx = ForwardContext.for_prompt(span, num_heads=2, padding=pad)
    bias = GUIDE(1.0, length_ref=256).plan(0, ctx).bias
    want = torch.tensor([1 + math.log(600 / 256), 1.0, 1 + math.log(2.0)])
    torch.testing.assert_close(bias, want[:, None].expand(3, 2))
    assert torch.equal(GUIDE(1.0).plan(0, ctx).bias, torch.ones(3, 2))
    # a decode step keeps the prompt's bias (the same in a forward with or without a cache)
    dec = ForwardContext(torch.cat([span, torch.zeros(3, 1)], 1), torch.arange(601), torch.tensor([600]), 600, 2,
                         torch.cat([pad, torch.ones(3, 1, dtype=torch.bool)], 1), ctx.first_token)  # fmt: skip
    torch.testing.assert_close(GUIDE(1.0, length_ref=256).plan(0, dec).bias, bias)
    with pytest.raises(ValueError, match="length_ref is a key count >= 1"):
        GUIDE(1.0, length_ref=0)


def test_guide_length_ref_equals_guide_at_the_grown_delta_and_caches_alike():
    m, tok = tiny_model("llama", layers=2, std=0.3), tokenizer()
    enc = attnsteer.highlight(tok, "The quick brown fox jumps over the lazy dog. <<Answer in French.>> Now")
    n = enc["input_ids"].shape[1]
    with torch.no_grad():
        with attnsteer.steer(m, GUIDE(1.0, length_ref=n / 4), spans=enc):
            got = m(**enc).logits
        with attnsteer.steer(m, GUIDE(1.0 + math.log(4.0)), spans=enc):
            want = m(**enc).logits
        kw = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)
        with attnsteer.steer(m, GUIDE(1.0, length_ref=n / 4), spans=enc):
            cached = m.generate(**enc, **kw)
            uncached = m.generate(**enc, use_cache=False, **kw)
    torch.testing.assert_close(got, want)
    assert torch.equal(cached, uncached)
