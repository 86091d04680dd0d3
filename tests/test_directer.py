"""DIRECTER: tokens equal a naive loop that deep-copies the cache and scales keys in place."""

from __future__ import annotations

import copy
import threading

import pytest
import torch

import attnsteer
from attnsteer import GUIDE, Directer, SpotLight
from references import PROMPTS, plain, reference_directer
from references import positions as _positions
from references import step as _step

from tiny import model as tiny_model
from tiny import tokenizer


def _enc(prompts=PROMPTS):
    return attnsteer.highlight(tokenizer(), prompts)


@pytest.mark.parametrize("kind,seed,std", [("llama", 0, 0.5), ("qwen2", 1, 0.4), ("llama", 2, 0.6)])
def test_tokens_equal_the_deep_copy_reference(kind, seed, std):
    m = plain(tiny_model(kind, layers=8, seed=seed, std=std))
    enc = _enc()
    d = Directer(alpha=128.0, beta=0.5, max_trials=10)
    n_new = 12
    with torch.no_grad():
        got = m.generate(
            **enc,
            custom_generate=d,
            spans=enc,
            max_new_tokens=n_new,
            min_new_tokens=n_new,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=None,
        )
    ref, stats = reference_directer(
        m, enc, d.last_ranking.order, alpha=128.0, beta=0.5, max_trials=10, max_new_tokens=n_new
    )
    assert torch.equal(got, ref)
    assert d.stats.gated == stats["gated"] and d.stats.accepted == stats["accepted"]
    assert d.stats.fallbacks == stats["fallbacks"] and d.stats.steps == 2 * n_new


def test_the_cases_the_reference_covers_do_occur():
    """The exactness tests mean something only if the gate closes, trials are accepted at more
    than one layer count and some steps fall back: count them over the parametrised models."""
    totals = dict(gated=0, fallbacks=0, counts=set())
    for kind, seed, std in [("llama", 0, 0.5), ("qwen2", 1, 0.4), ("llama", 2, 0.6)]:
        m = tiny_model(kind, layers=8, seed=seed, std=std)
        d = Directer(alpha=128.0)
        enc = _enc()
        with torch.no_grad():
            m.generate(
                **enc,
                custom_generate=d,
                spans=enc,
                max_new_tokens=12,
                min_new_tokens=12,
                do_sample=False,
                pad_token_id=0,
                eos_token_id=None,
            )
        totals["gated"] += d.stats.gated
        totals["fallbacks"] += d.stats.fallbacks
        totals["counts"] |= set(d.stats.accepted)
    assert totals["gated"] > 0 and totals["fallbacks"] > 0 and len(totals["counts"]) >= 2, totals


def test_batch_rows_equal_single_prompts_and_stop_independently():
    m = plain(tiny_model("llama", layers=8, seed=0, std=0.5))
    tok = tokenizer()
    enc = _enc()
    kw = dict(max_new_tokens=10, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        batch = m.generate(**enc, custom_generate=Directer(alpha=128.0), spans=enc, eos_token_id=None, **kw)
        for i, p in enumerate(PROMPTS):
            one = attnsteer.highlight(tok, p)
            single = m.generate(**one, custom_generate=Directer(alpha=128.0), spans=one, eos_token_id=None, **kw)
            n_pad = int((enc["attention_mask"][i] == 0).sum())
            assert batch[i, n_pad:].tolist() == single[0].tolist()
        # a row that emits EOS stops (pad after it) while the other goes on
        eos = int(batch[0, enc["input_ids"].shape[1] + 2])
        stopped = m.generate(**enc, custom_generate=Directer(alpha=128.0), spans=enc, eos_token_id=eos, **kw)
    T = enc["input_ids"].shape[1]
    assert stopped[0, T + 2] == eos and (stopped[0, T + 3 :] == 0).all()
    assert torch.equal(stopped[:, : T + 3], batch[:, : T + 3])


def _naive_sensitivity(m, enc, alpha, variant):
    """rank_layers' definition evaluated with deep copies and in-place key scaling."""
    from transformers import DynamicCache

    from attnsteer.hf import attention_modules

    ids, am, span = enc["input_ids"], enc["attention_mask"], enc.span_mask != 0
    L = m.config.num_hidden_layers
    cache = DynamicCache(config=m.config)
    m(
        input_ids=ids[:, :-1],
        attention_mask=am[:, :-1],
        position_ids=_positions(am[:, :-1]),
        past_key_values=cache,
        use_cache=True,
    )
    got = {}
    hooks = [
        mod.register_forward_hook(
            lambda mod, a, kw, out: got.__setitem__(
                mod.layer_idx, (kw["hidden_states"][:, -1].double(), out[0][:, -1].double())
            ),
            with_kwargs=True,
        )
        for mod in attention_modules(m)
    ]

    def run(layer):
        c = copy.deepcopy(cache)
        if layer is not None:
            attnsteer.scale_keys_(c.layers[layer].keys, span[:, : c.layers[layer].keys.shape[2]], alpha)
        _step(m, ids, am, c)
        return [got[j] for j in range(L)]

    def dist(a, b):
        return 1 - torch.nn.functional.cosine_similarity(a, b, dim=-1)

    base = run(None)
    D = torch.zeros(ids.shape[0], L, L)  # [b, perturbed l, measured j]
    for layer in range(L):
        pert = run(layer)
        for j in range(L):
            (pre0, post0), (pre, post) = base[j], pert[j]
            b0 = dist(pre0, post0)
            if variant == "paper":
                D[:, layer, j] = (dist(pre0, post) - b0) + (dist(pre, post0) - b0)
            else:
                D[:, layer, j] = (dist(pre0, post) + dist(pre, post0)).clamp_min(0)
    for h in hooks:
        h.remove()
    return D.mean(2) if variant == "paper" else D.mean(1)


@pytest.mark.parametrize("variant", ["paper", "released"])
def test_rank_layers_matches_the_definition(variant):
    m = plain(tiny_model("qwen2", layers=8, seed=3, std=0.4))
    enc = _enc()
    with torch.no_grad():
        rk = attnsteer.rank_layers(m, enc, alpha=128.0, variant=variant, progress=False)
        naive = _naive_sensitivity(m, enc, 128.0, variant)
    assert rk.sensitivity.shape == (2, 8) and rk.variant == variant
    torch.testing.assert_close(rk.sensitivity, naive.float(), atol=1e-5, rtol=1e-4)
    assert torch.equal(rk.order, rk.sensitivity.argsort(dim=1, descending=True, stable=True))
    assert rk.sensitivity.std() > 0  # the layers really differ


def test_given_ranking_is_used_and_plotted(tmp_path):
    m = tiny_model("llama", layers=8, seed=0, std=0.5)
    enc = _enc()
    order = list(range(7, -1, -1))
    d = Directer(alpha=128.0, ranking=order)
    with torch.no_grad():
        m.generate(**enc, custom_generate=d, spans=enc, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert d.last_ranking.order.tolist() == [order, order] and d.stats.forwards <= 4 * 5  # no ranking passes
    rk = attnsteer.rank_layers(m, enc, progress=False)
    shared = rk.mean()  # computed on 2 prompts, reused for a batch of 1
    assert shared.order.shape == (1, 8)
    one = attnsteer.highlight(tokenizer(), PROMPTS[0])
    d1 = Directer(alpha=128.0, ranking=shared)
    with torch.no_grad():
        m.generate(**one, custom_generate=d1, spans=one, max_new_tokens=2, do_sample=False, pad_token_id=0)
    assert torch.equal(d1.last_ranking.order, shared.order)
    rk.plot(path=str(tmp_path / "ranking.png"))
    assert (tmp_path / "ranking.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="permutation"):
        attnsteer.LayerRanking.from_order([0, 0, 1])


@pytest.mark.parametrize("method", [GUIDE(4.0), SpotLight(0.6)], ids=repr)
def test_gate_wraps_any_method(method):
    """Directer(method=M) runs M's steering in the trials: the trials change the outcome relative
    to never steering (max_trials=1 and an impossible gate are the controls)."""
    m = tiny_model("llama", layers=8, seed=0, std=0.5)
    enc = _enc()
    kw = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=None)
    with torch.no_grad():
        d = Directer(method=method, beta=0.05)
        steered = m.generate(**enc, custom_generate=d, spans=enc, **kw)
        plain = m.generate(**enc, **kw)
    assert d.stats.steered > 0 and sum(d.stats.accepted.values()) > 0
    assert not torch.equal(steered, plain)


def test_attnsteer_generate_and_streaming():
    from transformers import TextIteratorStreamer

    m = tiny_model("llama", layers=8, seed=0, std=0.5)
    tok = tokenizer()
    d = Directer(alpha=128.0)
    text = attnsteer.generate(m, tok, PROMPTS[0], method=d, max_new_tokens=6, min_new_tokens=6)
    assert isinstance(text, str) and d.stats.steps == 6
    enc = attnsteer.highlight(tok, PROMPTS[0])
    streamer = TextIteratorStreamer(tok, skip_prompt=True)
    out = {}
    th = threading.Thread(
        target=lambda: out.setdefault(
            "ids",
            m.generate(
                **enc,
                custom_generate=Directer(alpha=128.0),
                spans=enc,
                streamer=streamer,
                max_new_tokens=6,
                min_new_tokens=6,
                do_sample=False,
                pad_token_id=0,
            ),
        )
    )
    th.start()
    streamed = "".join(streamer)
    th.join()
    assert streamed == tok.decode(out["ids"][0, enc["input_ids"].shape[1] :])
    assert m.config._attn_implementation == "sdpa"


def test_errors_name_the_fix():
    m = tiny_model("llama", layers=8, std=0.5)
    tok = tokenizer()
    enc = _enc()
    kw = dict(max_new_tokens=3, pad_token_id=0)
    with pytest.raises(ValueError, match="spans=enc"):
        m.generate(**enc, custom_generate=Directer(), **kw)
    plain = attnsteer.highlight(tok, ["no markup here", "<<marked>> text"])
    with pytest.raises(ValueError, match=r"rows \[0\] have no highlighted tokens"):
        m.generate(**plain, custom_generate=Directer(), spans=plain, **kw)
    with pytest.raises(NotImplementedError, match="num_beams=1"):
        m.generate(**enc, custom_generate=Directer(), spans=enc, num_beams=2, **kw)
    with pytest.raises(ValueError, match="same prompts"):
        m.generate(**enc, custom_generate=Directer(), spans=enc.span_mask[:, 1:], **kw)
    with pytest.raises(ValueError, match="beta"):
        Directer(beta=0.0)
    with pytest.raises(ValueError, match="at least 2 layers"):
        tiny_model("llama", layers=1).generate(**enc, custom_generate=Directer(), spans=enc, **kw)
    assert m.config._attn_implementation == "sdpa"


def test_sliding_window_models_fit_or_raise():
    m = tiny_model("mistral", layers=8, std=0.5, sliding_window=16)
    enc = _enc()
    with pytest.raises(NotImplementedError, match="sliding-window"):
        m.generate(**enc, custom_generate=Directer(), spans=enc, max_new_tokens=4, pad_token_id=0)
    short = attnsteer.highlight(tokenizer(), "<<Hi>> you")
    assert short["input_ids"].shape[1] + 2 <= 16 < enc["input_ids"].shape[1]
    with torch.no_grad():
        ids = m.generate(**short, custom_generate=Directer(), spans=short, max_new_tokens=2, pad_token_id=0)
    assert ids.shape[1] == short["input_ids"].shape[1] + 2


def test_sampling_behind_the_gate():
    """With beta = 1 the gate only opens on exact ties, so DIRECTER samples from the raw
    distribution exactly as transformers' sampling does (same seed, same tokens); with a low beta
    trials run, and a seed reproduces the run."""
    m = plain(tiny_model("llama", layers=8, seed=0, std=0.5))
    enc = _enc()
    kw = dict(
        max_new_tokens=10,
        min_new_tokens=10,
        do_sample=True,
        top_k=20,
        temperature=0.8,
        pad_token_id=0,
        eos_token_id=None,
    )
    with torch.no_grad():
        torch.manual_seed(7)
        hf = m.generate(**enc, **kw)
        torch.manual_seed(7)
        d = Directer(beta=1.0)
        ours = m.generate(**enc, custom_generate=d, spans=enc, **kw)
        assert d.stats.steered == 0 and torch.equal(ours, hf)
        runs = []
        for _ in range(2):
            torch.manual_seed(3)
            d = Directer(alpha=128.0, beta=0.05)
            runs.append(m.generate(**enc, custom_generate=d, spans=enc, **kw))
    assert torch.equal(runs[0], runs[1]) and d.stats.steered > 0


def test_exactly_the_marked_tokens_are_scaled(monkeypatch):
    """The released code scales one token past the span's end; here the op receives exactly the
    marked keys (and never generated ones), with alpha on the steered rows only."""
    from attnsteer import ops

    m = tiny_model("llama", layers=8, seed=0, std=0.5)
    enc = _enc()
    seen = []
    real = ops.layer_attention

    def spy(query, key, value, args):
        if not bool((args.key_scale == 1.0).all()):
            seen.append((args.span_weights.clone(), args.query_mask))
        return real(query, key, value, args)

    monkeypatch.setattr(ops, "layer_attention", spy)
    d = Directer(alpha=128.0, beta=0.05)
    with torch.no_grad():
        m.generate(
            **enc,
            custom_generate=d,
            spans=enc,
            max_new_tokens=6,
            min_new_tokens=6,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=None,
        )
    assert seen and d.stats.trials > 0
    T = enc["input_ids"].shape[1]
    for span, query_mask in seen:
        Tk = span.shape[1]
        expected = torch.zeros_like(span)
        expected[:, : min(T, Tk)] = enc.span_mask[:, : min(T, Tk)].float()
        assert torch.equal(span != 0, expected != 0)
        assert query_mask is not None and query_mask.shape[1] == 1
