"""SPA (attnsteer/spa.py): the logits processor against a naive loop that recomputes both passes
from scratch every step; sampling; the mix; errors; the spec grammar and the entry points."""

from __future__ import annotations

import functools

import pytest
import torch

import attnsteer
from attnsteer import SPA, specs
from references import PROMPTS

from tiny import model as tiny_model
from tiny import tokenizer


def _naive(model, enc, spa: SPA, steps: int, eos_first: bool = True) -> torch.Tensor:
    """Greedy SPA without caches: both passes over the whole sequence each step, EOS ruled out (as
    ``min_new_tokens`` does in generate) before the mix (the processor) or after it (steer's batch of two)."""
    ids, attn, span = enc["input_ids"], enc["attention_mask"], enc.span_mask
    hidden = attn * (span == 0).long()
    eos = model.config.eos_token_id
    for _ in range(steps):
        pos = (attn.cumsum(-1) - 1).clamp_min(0)
        main = model(input_ids=ids, attention_mask=attn, position_ids=pos).logits[:, -1]
        if eos_first:
            main[:, eos] = float("-inf")
        aux = model(input_ids=ids, attention_mask=hidden, position_ids=pos).logits[:, -1]
        mixed = spa.mix(main, aux)
        mixed[:, eos] = float("-inf")
        nxt = mixed.argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], 1)
        one = torch.ones_like(nxt)
        attn, hidden = torch.cat([attn, one], 1), torch.cat([hidden, one], 1)
    return ids


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gemma3"])
@pytest.mark.parametrize("spa", [SPA(2.0), SPA(0.5), SPA(-1.0), SPA(3.0, modulated=True)], ids=repr)
def test_processor_equals_the_naive_two_pass_loop(kind, spa):
    m = tiny_model(kind, std=0.3)
    enc = attnsteer.highlight(tokenizer(), PROMPTS)  # left-padded batch, a span per row
    with torch.no_grad():
        ref = _naive(m, enc, spa, 6)
        got = m.generate(
            input_ids=enc["input_ids"],
            attention_mask=enc["attention_mask"],
            logits_processor=[spa.processor(m, enc)],
            max_new_tokens=6,
            min_new_tokens=6,
            do_sample=False,
            pad_token_id=0,
        )
    assert torch.equal(got, ref)


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gemma3"])
@pytest.mark.parametrize("spa", [SPA(2.0), SPA(-1.0), SPA(3.0, modulated=True)], ids=repr)
def test_steer_runs_the_batch_of_two_and_equals_the_naive_loop(kind, spa):
    """steer(model, SPA): the prompt's two halves written apart into one 2B-row cache, then one forward over the
    doubled batch a step; the greedy tokens equal the naive two-pass loop (the mix before generate's processors); plain forwards inside the block return
    the mixed logits; the model is restored after the block."""
    m = tiny_model(kind, std=0.3)
    enc = attnsteer.highlight(tokenizer(), PROMPTS)
    B, T = enc["input_ids"].shape
    rows = []
    real = m.forward

    @functools.wraps(real)
    def spy(**kw):
        rows.append((kw["input_ids"].shape[0], kw.get("logits_to_keep")))
        return real(**kw)

    m.forward = spy
    with torch.no_grad():
        ref = _naive(m, enc, spa, 6, eos_first=False)
        rows.clear()
        with attnsteer.steer(m, spa, spans=enc):
            got = m.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], max_new_tokens=6,
                             min_new_tokens=6, do_sample=False, pad_token_id=0)  # fmt: skip
            steps = len(rows)
            pos = (enc["attention_mask"].cumsum(-1) - 1).clamp_min(0)
            mixed = m(**enc, position_ids=pos).logits
        main = real(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], position_ids=pos).logits
        aux = real(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"] * (enc.span_mask == 0),
                   position_ids=pos).logits  # fmt: skip
    assert torch.equal(got, ref)
    # the prompt: its two halves apart (their caches stacked); then one forward of both halves a step
    # (generate sees the model's own signature through the wrapper, so it asks for the last logits only)
    assert rows[:steps] == [(B, 1), (B, 1)] + [(2 * B, 1)] * 5
    real_attn = enc["attention_mask"].bool()
    torch.testing.assert_close(mixed[real_attn], spa.mix(main, aux)[real_attn], rtol=1e-5, atol=1e-5)
    assert m.forward is spy and getattr(m, "_attnsteer_state", None) is None


def test_steer_route_samples_streams_and_refuses_what_it_cannot_do():
    m = tiny_model("llama", std=0.3)
    tok = tokenizer()
    enc = attnsteer.highlight(tok, PROMPTS)
    kw = dict(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], pad_token_id=0)
    with torch.no_grad(), attnsteer.steer(m, SPA(2.0), spans=enc):
        torch.manual_seed(0)
        out = m.generate(**kw, max_new_tokens=5, do_sample=True, top_k=20, num_return_sequences=2)
        assert out.shape[0] == 2 * len(PROMPTS)
        with pytest.raises(ValueError, match="not beam search"):
            m.generate(**kw, max_new_tokens=3, num_beams=2)
        with pytest.raises(ValueError, match="drop cache_implementation='static'"):
            m.generate(**kw, max_new_tokens=3, cache_implementation="static")
        with pytest.raises(ValueError, match="2-D attention mask"):
            m(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"][:, None, None, :])
        with pytest.raises(ValueError, match="covers 3 tokens but the span mask"):
            m(input_ids=enc["input_ids"][:, :3])
        with pytest.raises(RuntimeError, match="already being steered"):
            with attnsteer.steer(m, SPA(2.0), spans=enc):
                pass
    # a configuration naming SPA goes the same way
    with torch.no_grad(), attnsteer.steer(m, attnsteer.SteeringConfig("spa:omega=2"), spans=enc):
        same = m.generate(**kw, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    with torch.no_grad():
        assert torch.equal(same, _naive(m, enc, SPA(2.0), 4, eos_first=False))


def test_prompt_pass_projects_only_the_last_position():
    """The anchored-out prompt pass asks for the last position's logits only (logits_to_keep=1), and a
    model whose forward has no such argument still gets the same tokens (the argument is left out)."""
    m = tiny_model("qwen2", std=0.3)
    enc = attnsteer.highlight(tokenizer(), PROMPTS)
    seen = []
    orig = m.forward

    class Aux:  # the model as the processor sees it, recording what each of its passes asked for
        def __init__(self, forward):
            self.forward = forward

        def __call__(self, **kw):
            out = self.forward(**kw)
            seen.append((kw["input_ids"].shape[1], kw.get("logits_to_keep"), out.logits.shape[1]))
            return out

    @functools.wraps(orig)  # forward's signature, which the processor inspects
    def keeps(**kw):
        return orig(**kw)

    def without(input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=None):
        return orig(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                    past_key_values=past_key_values, use_cache=use_cache)  # fmt: skip

    def run(aux):
        return m.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                          logits_processor=[SPA(2.0).processor(aux, enc)], max_new_tokens=4, min_new_tokens=4,
                          do_sample=False, pad_token_id=0)  # fmt: skip

    T = enc["input_ids"].shape[1]
    with torch.no_grad():
        kept = run(Aux(keeps))
        assert seen[0] == (T, 1, 1) and all(s == (1, None, 1) for s in seen[1:]), seen
        seen.clear()
        plain = run(Aux(without))
        assert seen[0] == (T, None, T), seen  # not asked for: all positions, as before
    assert torch.equal(kept, plain)


def test_omega_one_is_the_plain_model_and_steering_changes_tokens():
    m = tiny_model("llama", std=0.3)
    tok = tokenizer()
    kw = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False)
    plain = attnsteer.generate(m, tok, PROMPTS, None, **kw)
    assert attnsteer.generate(m, tok, PROMPTS, SPA(1.0), **kw) == plain
    assert attnsteer.generate(m, tok, PROMPTS, SPA(4.0), **kw) != plain


def test_sampling_and_several_sequences_per_prompt():
    m = tiny_model("llama", std=0.3)
    torch.manual_seed(0)
    out = attnsteer.generate(
        m, tokenizer(), PROMPTS, SPA(2.0), max_new_tokens=5, do_sample=True, top_k=20, num_return_sequences=2
    )
    assert len(out) == len(PROMPTS) and all(len(x) == 2 for x in out)
    with pytest.raises(ValueError, match="not beam search"):
        attnsteer.generate(m, tokenizer(), PROMPTS, SPA(2.0), max_new_tokens=3, num_beams=2)


def test_mix_formula_and_clamp():
    main = torch.tensor([[2.0, 0.0, -1.0]])
    aux = torch.tensor([[1.0, 1.0, -1.0]])
    torch.testing.assert_close(SPA(3.0).mix(main, aux), 3.0 * main + (1 - 3.0) * aux)
    assert SPA(1e6, clamp=10.0).mix(main, aux).abs().max() <= 2.0 + 10.0
    with pytest.raises(ValueError, match="finite"):
        SPA(float("nan"))


def test_spec_grammar_entry_points_and_clear_errors():
    assert specs.canonical("SPA:omega=2") == "spa:omega=2"
    assert specs.parse("spa:omega=1.5,modulated=true") == SPA(1.5, modulated=True)
    with pytest.raises(ValueError, match="cannot run inside DIRECTER's gate"):
        specs.parse("gate+spa:omega=2")
    with pytest.raises(ValueError, match="not served by the vLLM plugin"):
        specs.parse_request_spec("spa:omega=2")
    m = tiny_model("llama")
    with pytest.raises(ValueError, match="needs the anchor as a span mask"):
        SPA(2.0).processor(m, tokenizer()(PROMPTS, return_tensors="pt", padding=True))
