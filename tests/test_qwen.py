"""The capable real models: Qwen2.5-Coder-0.5B-Instruct (``make test`` installs it) and
Qwen2.5-Coder-1.5B-Instruct (``make models``; its tests are marked slow and skipped with the
install command when it is absent), loaded by name through the conversion cache. On their real
weights (GQA 7:1 and 6:1, RoPE θ = 1e6): steer() for every method against the eager materialised
path, left-padded batches against rows run alone, DIRECTER's loop against the deep-copy reference,
Influence against its formula and the span mass."""

from __future__ import annotations

import pytest
import torch

import attnsteer
from attnsteer import GUIDE, PASTA, InstABoost, KeyScale, SpotLight

SHAPES = {"qwen2.5-coder-0.5b": (24, 14, 2), "qwen2.5-coder-1.5b": (28, 12, 2)}
PARAMS = [
    pytest.param("qwen2.5-coder-0.5b", id="0.5b"),
    pytest.param("qwen2.5-coder-1.5b", id="1.5b", marks=pytest.mark.slow),
]
CHAT = [
    {"role": "system", "content": "You are a helpful assistant. <<Answer in French.>>"},
    {"role": "user", "content": "What is bread made of?"},
]
METHODS = [GUIDE(2.0), InstABoost(10.0), PASTA(0.01), SpotLight(0.3), KeyScale(2.0, phases="both")]


@pytest.fixture(scope="module", params=PARAMS)
def qwen(request):
    from attnsteer.models import MODELS, _installed

    m = MODELS[request.param]
    if not _installed(m):
        if request.param == "qwen2.5-coder-0.5b":  # make test installs it: absent is a set-up bug
            pytest.fail(f"{m.title} is not installed: {m.install_command()}")
        pytest.skip(f"{m.title} is not installed (make models, or: {m.install_command()})")
    torch.manual_seed(0)
    model, tok = attnsteer.models.load(request.param, progress=False)
    return request.param, model, tok


def test_architecture_tokenizer_and_chat_template(qwen):
    name, model, tok = qwen
    cfg = model.config
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == SHAPES[name]
    assert cfg.rope_parameters["rope_theta"] == 1e6
    text = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.") and text.endswith(
        "<|im_start|>assistant\n"
    )
    assert tok.eos_token == "<|im_end|>" and model.generation_config.eos_token_id == tok.eos_token_id
    enc = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        top = model(**enc).logits[0, -1].topk(3).indices
    assert any("Paris" in tok.decode([int(t)]) for t in top)  # a model that reads its weights right


@pytest.mark.parametrize("method", METHODS, ids=repr)
def test_steer_equals_the_eager_materialised_path(qwen, method):
    from references import steered_and_eager_logits

    _, model, tok = qwen
    enc = attnsteer.highlight(tok, CHAT)
    got, want, plain = steered_and_eager_logits(model, method, enc)
    torch.testing.assert_close(got, want, atol=2e-3, rtol=1e-3)
    assert (got[0, -1] - plain[0, -1]).abs().max() > 1e-2  # steering changed the reply's first token


def test_left_padded_batch_equals_rows_alone(qwen):
    _, model, tok = qwen
    prompts = [
        CHAT,
        [{"role": "user", "content": "Name a colour. <<Use one word.>>"}],
        [{"role": "system", "content": "<<Reply in capital letters.>>"}, {"role": "user", "content": "Hi there"}],
    ]
    enc = attnsteer.highlight(tok, prompts)
    assert enc["attention_mask"].eq(0).any()  # left padding is there
    with torch.no_grad(), attnsteer.steer(model, GUIDE(2.0), spans=enc):
        batch = model(**enc).logits[:, -1]
    for i, p in enumerate(prompts):
        one = attnsteer.highlight(tok, p)
        with torch.no_grad(), attnsteer.steer(model, GUIDE(2.0), spans=one):
            alone = model(**one).logits[0, -1]
        torch.testing.assert_close(batch[i], alone, atol=2e-3, rtol=1e-3)


def test_directer_equals_the_deep_copy_reference(qwen):
    from references import directer_and_reference

    _, model, tok = qwen
    enc = attnsteer.highlight(tok, [{"role": "user", "content": "<<Answer with the word YES.>> Is the sky blue?"}])
    d, got, ref, stats = directer_and_reference(model, tok, enc, 4)
    assert torch.equal(got, ref)
    assert d.stats.gated == stats["gated"] and d.stats.accepted == stats["accepted"]


def test_influence_equals_its_formula_and_span_mass_runs(qwen):
    from test_influence import _formula

    name, model, tok = qwen
    enc = attnsteer.highlight(tok, "<<Answer in French.>> The quick brown fox jumps over the lazy dog.")
    res = attnsteer.influence(model, enc, GUIDE(2.0), value_norms=True, residual="current")
    I, R = _formula(model, enc, GUIDE(2.0), True, "current")
    torch.testing.assert_close(res.influence[:, -1].double(), I, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(res.rollout[:, -1].double(), R, atol=2e-5, rtol=1e-4)
    assert res.influence.shape[1] == SHAPES[name][0] + 1
    mass = attnsteer.span_mass(model, enc, GUIDE(2.0))
    L, H = SHAPES[name][:2]
    assert mass.unsteered.shape == (1, L, H, enc["input_ids"].shape[1]) == mass.steered.shape
    # layer 0 sees the same input either way, so its steered mass is the split softmax's closed
    # form of the unsteered one: w = e^d p / (e^d p + 1 - p) (DESIGN.md section 2)
    p, w = mass.table()[0].double(), mass.table(steered=True)[0].double()
    e = torch.exp(torch.tensor(2.0, dtype=torch.float64))
    torch.testing.assert_close(w, e * p / (e * p + 1 - p), atol=1e-5, rtol=1e-4)
    assert mass.table(steered=True).mean() > mass.table().mean() + 0.05  # and more mass on the span overall
