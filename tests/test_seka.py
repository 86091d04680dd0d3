"""SEKA (attnsteer/keyedit.py): learning projectors on tiny models, the file, and steering — the
hooks' edit equals a naive float64 edit of the pre-rotary keys, keys are edited once (cached decoding
equals recomputing everything), gain 0 is unsteered, every family's key layout is found."""

from __future__ import annotations

import pytest
import torch

import attnsteer
from attnsteer import SEKA, KeyProjection, learn_projection
from attnsteer.keyedit import _key_module, _keys_view
from attnsteer.ops import reference
from references import PROMPTS

from tiny import model as tiny_model
from tiny import tokenizer


@pytest.fixture(scope="module")
def learned():
    m = tiny_model("llama", std=0.3)
    return m, learn_projection(m, tokenizer(), prompts=12, gamma=0.8, progress=False, command="test")


def test_learned_projection_shapes_ranks_and_file(learned, tmp_path):
    m, proj = learned
    cfg = m.config
    D = cfg.hidden_size // cfg.num_attention_heads
    assert proj.layers() == list(range(cfg.num_hidden_layers))
    for L in proj.layers():
        assert len(proj.pos[L]) == cfg.num_key_value_heads
        for u in proj.pos[L] + proj.neg[L]:
            assert u.shape[0] == D and 1 <= u.shape[1] <= D
            torch.testing.assert_close(u.T @ u, torch.eye(u.shape[1]), atol=1e-4, rtol=0)  # orthonormal
    assert proj.meta["prompts"] == 12 and proj.meta["gamma"] == 0.8 and proj.meta["command"] == "test"
    path = proj.save(tmp_path / "p.safetensors")
    back = KeyProjection.load(path)
    assert back.meta == proj.meta
    assert all(torch.equal(a, b) for L in proj.pos for a, b in zip(proj.pos[L], back.pos[L]))
    # a larger share of the singular values keeps at least as many directions
    more = learn_projection(m, tokenizer(), prompts=12, gamma=0.99, progress=False)
    assert all(b.shape[1] >= a.shape[1] for L in proj.pos for a, b in zip(proj.pos[L], more.pos[L]))


def test_errors_name_the_fix(tmp_path, learned):
    with pytest.raises(FileNotFoundError, match="attnsteer learn-projection"):
        SEKA(str(tmp_path / "missing.safetensors"))
    with pytest.raises(ValueError, match="needs a projection"):
        SEKA()
    with pytest.raises(ValueError, match="gamma"):
        learn_projection(learned[0], tokenizer(), gamma=1.5)
    bad = tmp_path / "bad.safetensors"
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(bad))
    with pytest.raises(ValueError, match="not an attnsteer key projection"):
        KeyProjection.load(bad)


def _naive_logits(m, enc, edits):
    """The edit done by hand: ``edits(attn)`` lists ``(module, kind, (a, b))`` for each attention module;
    hooks edit the span rows of those outputs in float64 (the reference), one forward without a cache."""
    cfg = m.config
    Hq, Hkv = cfg.num_attention_heads, cfg.num_key_value_heads
    D = getattr(cfg, "head_dim", None) or cfg.hidden_size // Hq
    span = enc.span_mask.float()
    T = enc["input_ids"].shape[1]
    handles = []
    for attn in attnsteer.hf.attention_modules(m):
        for mod, kind, f in edits(attn):

            def post(module, inputs, out, kind=kind, f=f):
                reference.lowrank_edit_(_keys_view(out, inputs[0], kind, T, Hkv, D, Hq), span, *f)
                return out

            handles.append(mod.register_forward_hook(post))
    try:
        return m(**enc).logits
    finally:
        for h in handles:
            h.remove()


def _runs(m, enc, method):
    """``(unsteered logits, steered logits, cached greedy tokens, uncached greedy tokens)``."""
    kw = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        plain = m(**enc).logits
        with attnsteer.steer(m, method, spans=enc):
            return plain, m(**enc).logits, m.generate(**enc, **kw), m.generate(**enc, use_cache=False, **kw)


def _seka_edits(proj, gain, gain_neg):
    return lambda attn: [(*_key_module(attn), proj.factors(attn.layer_idx, gain, gain_neg, "cpu"))]


def _prism_edits(proj, gain, gain_value):
    from attnsteer.keyedit import _value_module

    def edits(attn):
        out = []
        for (mod, kind), values, g in ((_key_module(attn), False, gain), (_value_module(attn), True, gain_value)):
            f = proj.prism_factors(attn.layer_idx, g, "cpu", values=values)
            if f is not None:
                out.append((mod, kind, f))
        return out

    return edits


@pytest.mark.parametrize("kind", ["llama", "qwen3", "gemma3", "phi3"])
def test_steering_equals_the_naive_edit_and_edits_once(kind):
    """Llama (k_proj), Qwen 3 (k_norm on (B, T, H, D)), Gemma 3 (k_norm on (B, H, T, D)), Phi-3
    (fused qkv_proj): the same logits as the naive edit; cached greedy decoding equals recomputing
    everything each step (a key edited twice would differ); gain 0 leaves the logits alone."""
    m = tiny_model(kind, std=0.3)
    tok = tokenizer()
    enc = attnsteer.highlight(tok, PROMPTS)
    proj = learn_projection(m, tok, prompts=8, gamma=0.8, progress=False)
    seka = SEKA(proj, gain=2.0, gain_neg=0.5)
    rows = enc["attention_mask"].bool()
    plain, got, cached, uncached = _runs(m, enc, seka)
    with torch.no_grad():
        with attnsteer.steer(m, SEKA(proj, gain=0.0), spans=enc):
            zero = m(**enc).logits
        with attnsteer.steer(m, attnsteer.GUIDE(0.0), spans=enc):  # the same attention route, nothing steered
            route = m(**enc).logits
        ref = _naive_logits(m, enc, _seka_edits(proj, 2.0, 0.5))
        after = m(**enc).logits
    torch.testing.assert_close(got[rows], ref[rows], atol=2e-4, rtol=1e-4)
    assert (got[rows] - plain[rows]).abs().max() > 1e-3  # it changed something
    assert torch.equal(cached, uncached)
    # gain 0 edits nothing: exactly the steered route's logits, and unsteered's up to that route's float32 noise
    # (another summation order than HF's SDPA: 2.3e-5 on logits of |10| on one CPU, the 2e-4 bound of the edit above)
    assert torch.equal(zero, route)
    torch.testing.assert_close(zero[rows], plain[rows], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(after, plain)  # the hooks are gone after the block


def test_spec_and_generate(learned, tmp_path):
    m, proj = learned
    path = proj.save(tmp_path / "p.safetensors")
    seka = attnsteer.specs.parse_local(f"seka:gain=1.5,projection={path}")
    assert isinstance(seka, SEKA) and seka.gain == 1.5
    text = attnsteer.generate(m, tokenizer(), PROMPTS[0], seka, max_new_tokens=4, do_sample=False)
    assert isinstance(text, str)
    with pytest.raises(ValueError, match="projection"):
        attnsteer.specs.parse(f"seka:gain=1.5,projection={path}")  # values only: no file is opened
    with pytest.raises(ValueError, match="drop 'gate\\+'"):
        attnsteer.specs.parse("gate+seka:gain=1,projection=qwen2.5-coder-0.5b")


def test_cli_learns_a_projection_and_requests_refuse_seka(tmp_path, monkeypatch, capsys):
    from attnsteer import cli, models

    monkeypatch.setattr(models, "load_default", lambda **_: (tiny_model("qwen2", std=0.3), tokenizer()))
    out = tmp_path / "tiny.seka.safetensors"
    argv = ["learn-projection", "--out", str(out), "--prompts", "6", "--layers", "1-1", "--no-progress"]
    assert cli.main(argv) == 0
    proj = KeyProjection.load(out)
    assert proj.layers() == [1] and "learn-projection" in proj.meta["command"]
    assert "wrote" in capsys.readouterr().out
    assert cli.main(["learn-projection", "--out", str(tmp_path), "--no-progress"]) == 2
    assert "is a folder" in capsys.readouterr().err
    with pytest.raises(ValueError, match="seka is not served by the vLLM plugin"):
        attnsteer.specs.parse_request_spec(f"seka:projection={out}")


def test_shipped_projections_load_and_match_their_models():
    """The projections that ship: one per shipped model, loadable by name, shaped for that model."""
    from attnsteer import specs

    shapes = {"qwen2.5-coder-0.5b": (24, 2, 64), "qwen2.5-coder-1.5b": (28, 2, 128), "smollm2-135m": (30, 3, 64)}
    capable = ("qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b")
    experts = {e for m in capable for e in specs.SHIPPED_EXPERTS[m]}
    assert set(specs.SHIPPED_PROJECTIONS) == set(shapes) | {f"{m}-prism" for m in capable} | experts
    for m in capable:
        layers, kv, d = shapes[m]
        ada = specs.parse(f"adaseka:gain=1,experts={m}")  # the model's shipped expert set
        assert [e.meta["family"] for e in ada.experts] == ["facts", "conflict", "rule"]
        for e in ada.experts:
            assert e.layers() == list(range(layers)) and set(e.pos_sv) == set(e.pos)
            assert "--family" in e.meta["command"] and e.meta["signature"][1] == layers
            assert all(len(e.pos[L]) == kv and e.pos[L][0].shape[0] == d for L in e.layers())
        prism = specs.parse(f"prism:gain=0.4,gain_value=0.2,projection={m}-prism")
        assert prism.projection.meta["kind"] == "prism" and prism.projection.values and prism.projection.weights
        assert prism.projection.meta["signature"][1] == layers
    for name, (layers, kv, d) in shapes.items():
        seka = specs.parse(f"seka:gain=1,projection={name}")
        proj = seka.projection
        assert proj.layers() == list(range(layers)) and proj.meta["gamma"] == 0.9
        assert all(len(proj.pos[L]) == kv and proj.pos[L][0].shape[0] == d for L in proj.layers())
        assert proj.meta["signature"][1] == layers and "learn-projection" in proj.meta["command"]


@pytest.mark.parametrize("kind", ["llama", "qwen3", "phi3"])
def test_prism_keys_and_values(kind, tmp_path):
    """PRISM-Δ: the differential projection with per-head weights (keys and values) equals the naive
    edit; cached decoding equals no cache; it refuses a SEKA projection; file round trip keeps the
    weights and value bases."""
    from attnsteer import PRISM

    m = tiny_model(kind, std=0.3)
    tok = tokenizer()
    enc = attnsteer.highlight(tok, PROMPTS)
    proj = learn_projection(m, tok, prompts=8, gamma=0.8, progress=False, kind="prism")
    assert proj.meta["kind"] == "prism" and proj.values and all(w > 0 for ws in proj.weights.values() for w in ws)
    back = KeyProjection.load(proj.save(tmp_path / "prism.safetensors"))
    assert back.weights == proj.weights and back.value_weights == proj.value_weights
    assert all(torch.equal(a, b) for L in proj.values for a, b in zip(proj.values[L], back.values[L]))
    prism = PRISM(back, gain=2.0, gain_value=0.5)
    rows = enc["attention_mask"].bool()
    plain, got, cached, uncached = _runs(m, enc, prism)
    with torch.no_grad():
        ref = _naive_logits(m, enc, _prism_edits(proj, 2.0, 0.5))
    torch.testing.assert_close(got[rows], ref[rows], atol=2e-4, rtol=1e-4)
    assert (got[rows] - plain[rows]).abs().max() > 1e-3
    assert torch.equal(cached, uncached)
    seka_proj = learn_projection(m, tok, prompts=4, gamma=0.8, progress=False)
    with pytest.raises(ValueError, match="--kind prism"):
        PRISM(seka_proj)
    with pytest.raises(ValueError, match="prism is not served by the vLLM plugin"):
        attnsteer.specs.parse_request_spec("prism:gain=1")


def test_swapping_to_or_from_a_key_editing_method_is_an_error(learned):
    from attnsteer.hf import active

    m, proj = learned
    enc = attnsteer.highlight(tokenizer(), PROMPTS)
    with attnsteer.steer(m, attnsteer.GUIDE(1.0), spans=enc):
        with pytest.raises(TypeError, match="open a separate attnsteer.steer"):
            with active(m).use(SEKA(proj)):
                pass
    with attnsteer.steer(m, SEKA(proj), spans=enc):
        with pytest.raises(TypeError, match="open a separate attnsteer.steer"):
            with active(m).use(attnsteer.GUIDE(1.0)):
                pass
