"""Issue 9: what a user passes is steered right or refused with a clear error — one test per item,
named after what it proves."""

from __future__ import annotations

import threading
import warnings

import pytest
import torch

import attnsteer
from attnsteer.spans import MarkupError

from tiny import model as tiny_model
from tiny import tokenizer


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama", std=0.3)


def _enc(text="Answer in French. <<Use at most twenty words.>> The fox"):
    return attnsteer.highlight(tokenizer(), text)


# 2. a forward whose prompt does not match the span mask raises
@pytest.mark.parametrize(
    "other", ["The fox", "The quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat."]
)
def test_forward_on_another_prompt_inside_steer_raises(llama, other):
    enc = _enc()
    wrong = tokenizer()(other, return_tensors="pt")
    with attnsteer.steer(llama, attnsteer.GUIDE(2.0), spans=enc):
        with pytest.raises(ValueError, match="span mask given to steer\\(\\) was made for a"):
            llama(**wrong)
        llama(**enc)  # the prompt itself is fine


def test_span_mask_of_the_wrong_length_for_its_encoding_raises(llama):
    enc = _enc()
    enc.span_mask = enc.span_mask[:, :-3]
    with pytest.raises(ValueError, match="does not match the encoding's attention_mask"):
        with attnsteer.steer(llama, attnsteer.GUIDE(2.0), spans=enc):
            pass


def test_a_raw_span_tensor_shorter_than_the_prompt_raises_at_the_forward(llama):
    enc = _enc()
    with attnsteer.steer(llama, attnsteer.GUIDE(2.0), spans=enc.span_mask[:, :-3]):
        with pytest.raises(ValueError, match="runs other tokens|runs .* tokens"):
            llama(input_ids=enc["input_ids"][:, :-5])


def test_legitimate_forwards_still_run_cached_uncached_beams_and_num_return_sequences(llama):
    enc = _enc()
    with attnsteer.steer(llama, attnsteer.GUIDE(2.0), spans=enc):
        a = llama.generate(**enc, max_new_tokens=4, do_sample=False)
        b = llama.generate(**enc, max_new_tokens=4, do_sample=False, use_cache=False)
        llama.generate(**enc, max_new_tokens=3, num_beams=2, num_return_sequences=2, do_sample=False)
    assert torch.equal(a, b)


# 3. generate returns a list per prompt with num_return_sequences
def test_generate_num_return_sequences_gives_a_list_per_prompt(llama):
    tok = tokenizer()
    one = attnsteer.generate(
        llama,
        tok,
        "<<Be brief.>> hello",
        attnsteer.GUIDE(1.0),
        max_new_tokens=2,
        num_return_sequences=3,
        do_sample=True,
    )
    assert isinstance(one, list) and len(one) == 3 and all(isinstance(t, str) for t in one)
    two = attnsteer.generate(
        llama,
        tok,
        ["<<Be brief.>> hello", "<<Reply in JSON>> the fox"],
        attnsteer.GUIDE(1.0),
        max_new_tokens=2,
        num_return_sequences=2,
        do_sample=True,
    )
    assert len(two) == 2 and all(isinstance(t, list) and len(t) == 2 for t in two)
    assert isinstance(attnsteer.generate(llama, tok, "<<Be brief.>> hello", None, max_new_tokens=2), str)


# 4. NaN / negative / infinite span weights are refused where the span enters
@pytest.mark.parametrize("bad", [float("nan"), -1.0, float("inf")])
def test_bad_span_weights_are_refused_by_steer(llama, bad):
    enc = _enc()
    w = enc.span_mask.float().clone()
    w[0, 3] = bad
    with pytest.raises(ValueError, match="span weights must be finite and >= 0.*row 0, token 3"):
        with attnsteer.steer(llama, attnsteer.GUIDE(2.0), spans=w):
            pass
    assert llama.config._attn_implementation == "sdpa"


# 5. chat char_spans are per message content; special tokens are never span
def test_chat_char_spans_count_in_the_message_content_not_the_template():
    tok = tokenizer()
    msgs = [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "hello world"}]
    enc = attnsteer.highlight(tok, msgs, char_spans=[[(0, 0, 6)]])
    assert tok.decode(enc["input_ids"][0][enc.span_mask[0]]).strip() == "Answer"
    with pytest.raises(TypeError, match="per message content: \\(message_index, start, end\\)"):
        attnsteer.highlight(tok, msgs, char_spans=[[(0, 6)]])
    with pytest.raises(MarkupError, match="outside message 1 of 11 characters"):
        attnsteer.highlight(tok, msgs, char_spans=[[(1, 0, 40)]])


def test_special_tokens_written_by_the_template_are_never_span():
    tok = tokenizer()
    rendered = tok.apply_chat_template([{"role": "user", "content": "hello world"}], tokenize=False)
    enc = attnsteer.highlight(tok, rendered, char_spans=[[(0, len(rendered))]], add_special_tokens=False)
    specials = torch.isin(enc["input_ids"][0], torch.tensor(tok.all_special_ids))
    assert specials.any() and not (enc.span_mask[0] & specials).any() and enc.span_mask[0].any()


# 6. the thread rule: a bare forward from another thread is refused
def test_forward_from_another_thread_inside_steer_is_refused(llama):
    enc = _enc()
    errors = []

    def other():
        try:
            llama(**enc)
        except RuntimeError as e:
            errors.append(str(e))

    with attnsteer.steer(llama, attnsteer.GUIDE(2.0), spans=enc):
        t = threading.Thread(target=other)
        t.start()
        t.join()
        llama(**enc)  # the opening thread is steered as before
    assert errors and "opened by another thread" in errors[0]
    t = threading.Thread(target=other)  # outside the block, other threads run the model as usual
    errors.clear()
    t.start()
    t.join()
    assert not errors


# 7. verbatim text: markers=None; a warning when markup meets char_spans
def test_markers_none_takes_dataset_text_verbatim():
    tok = tokenizer()
    text = "Write a poem with a title in <<double angular brackets>>. Answer in French."
    enc = attnsteer.highlight(tok, text, char_spans=[[(text.index("Answer"), len(text))]], markers=None)
    assert "<<double angular brackets>>" in tok.decode(enc["input_ids"][0], skip_special_tokens=True)
    with pytest.warns(UserWarning, match="markers=None"):
        attnsteer.highlight(tok, text, char_spans=[[(0, 5)]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        attnsteer.highlight(tok, "no markup here", char_spans=[[(0, 5)]])


# 10. messages that say what is wrong
def test_highlight_messages_index_out_of_range_says_so():
    tok = tokenizer()
    msgs = [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "hello world"}]
    with pytest.raises(IndexError, match="index 5 is out of range for a conversation of 2 messages"):
        attnsteer.highlight(tok, msgs, highlight_messages=[5])
    enc = attnsteer.highlight(tok, msgs, highlight_messages=[-1])  # Python's negative index: the last message
    assert tok.decode(enc["input_ids"][0][enc.span_mask[0]]).strip() == "hello world"


def test_flat_and_reversed_char_spans_name_the_fix():
    tok = tokenizer()
    with pytest.raises(TypeError, match="one list of \\(start, end\\) spans per prompt.*\\[\\[\\(0, 19\\)\\]\\]"):
        attnsteer.highlight(tok, "The quick brown fox jumps", char_spans=[(0, 19)])
    with pytest.raises(MarkupError, match="reversed or empty"):
        attnsteer.highlight(tok, "The quick brown fox jumps", char_spans=[[(10, 2)]])


@pytest.mark.parametrize("rt", [None, "np"])
def test_return_tensors_other_than_pt_is_refused(rt):
    with pytest.raises(ValueError, match="return_tensors='pt'"):
        attnsteer.highlight(tokenizer(), "<<a>> b", return_tensors=rt)


# 11. methods and show_spans
@pytest.mark.parametrize("alpha", [0.0, -1.0, float("nan")])
def test_keyscale_factor_must_be_positive(alpha):
    with pytest.raises(ValueError, match="KeyScale.alpha must be a finite factor > 0"):
        attnsteer.KeyScale(alpha)


def test_empty_layer_list_is_an_error_not_a_no_op():
    with pytest.raises(ValueError, match="layers=\\[\\]\\) steers nothing"):
        attnsteer.GUIDE(2.0, layers=[])


def test_show_spans_row_out_of_range_and_multibyte_characters():
    tok = tokenizer()
    enc = attnsteer.highlight(tok, "Réponds en <<français, s'il te plaît>> — merci")
    with pytest.raises(IndexError, match="row 1 is out of range for an encoding of 1 prompt"):
        attnsteer.format_spans(tok, enc, row=1)
    text = attnsteer.format_spans(tok, enc)
    assert "\ufffd" not in text and "[[français, s'il te plaît]]" in text and "—" in text


def test_pipeline_batch_with_one_unmarked_prompt_agrees_with_highlight():
    from transformers import pipeline

    m, tok = tiny_model("llama", std=0.3), tokenizer()
    pipe = pipeline("text-generation", model=m, tokenizer=tok)
    prompts = ["<<Answer in French.>> The quick brown fox", "The lazy dog"]
    kw = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False, return_tensors=True)
    with attnsteer.steer_pipeline(pipe, attnsteer.GUIDE(8.0)), pytest.warns(UserWarning, match="runs unsteered"):
        got = [r[0]["generated_token_ids"] for r in pipe(prompts, batch_size=2, **kw)]
    enc = attnsteer.highlight(tok, prompts)  # highlight accepts the unmarked row too
    assert not enc.span_mask[1].any()
    with attnsteer.steer(m, attnsteer.GUIDE(8.0), spans=enc):
        ids = m.generate(**enc, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert [list(g) for g in got] == ids.tolist()


# 9. the CLI validates before loading the model: one line, exit code 2; --version
@pytest.mark.parametrize(
    "argv, message",
    [
        (["--method", "spotlight", "--target", "1.5", "<<a>> b"], "SpotLight.target is a span mass in \\(0, 1\\)"),
        (["--method", "guide", "--delta", "nan", "<<a>> b"], "GUIDE.delta must be finite"),
        (["--method", "guide", "<<a b"], "never closed"),
        (["--method", "guide", "nothing marked"], "the prompt marks nothing"),
        (["--method", "guide", "--layers", "1,x", "<<a>> b"], "--layers takes comma-separated layer indices"),
        (["--method", "steerit", "<<a>> b"], "unknown method"),
    ],
)
def test_cli_generate_bad_arguments_fail_fast_with_one_line(argv, message, capsys, monkeypatch):
    from attnsteer import cli, models

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(models, "load_default", no_load)
    monkeypatch.setattr(models, "load", no_load)
    assert cli.main(["generate", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("attnsteer generate: error: ") and len(err.strip().splitlines()) == 1
    import re

    assert re.search(message, err)


def test_cli_generate_layers_out_of_range_is_one_line(tmp_path, capsys):
    from attnsteer import cli

    m, tok = tiny_model("qwen2", std=0.3), tokenizer()
    m.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    assert cli.main(["generate", "--model", str(tmp_path), "--layers", "99", "<<a>> b"]) == 2
    assert "indices [99] outside 0..1" in capsys.readouterr().err


def test_cli_version(capsys):
    from attnsteer import cli

    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"attnsteer {attnsteer.__version__}"


# 8. bench passes its options through and writes outside the checkout by default
def test_cli_bench_passes_options_and_defaults_out_of_tree(monkeypatch, tmp_path):
    import subprocess

    from attnsteer import cli

    calls = []
    monkeypatch.setattr(subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["bench", "--quick", "--threads", "1"]) == 0
    assert calls[0][-5:] == ["--quick", "--threads", "1", "--out", str(tmp_path / "attnsteer-bench")]
    assert cli.main(["bench", "--quick", "--out", "x"]) == 0
    assert calls[1][-3:] == ["--quick", "--out", "x"]


# 12. package hygiene
def test_namespace_has_no_future_import_and_ships_type_information():
    import importlib.resources
    import logging

    assert not hasattr(attnsteer, "annotations")
    assert importlib.resources.files("attnsteer").joinpath("py.typed").is_file()
    assert attnsteer.logger is logging.getLogger("attnsteer")
    for mod in (attnsteer.methods, attnsteer.directer, attnsteer.reference):
        assert "DESIGN" not in (mod.__doc__ or "")
    assert "Greedy only" not in attnsteer.Directer.__doc__


def test_escaped_closing_marker_is_literal_too():
    from attnsteer.spans import parse_markup

    assert parse_markup("a \\<<b\\>> c <<d>>") == ("a <<b>> c d", [(10, 11, 1.0)])


# 1. the static cache (what compiled generation uses)
@pytest.mark.parametrize("method", [attnsteer.GUIDE(2.0), attnsteer.SpotLight(0.5), attnsteer.PASTA(0.1)])
def test_static_cache_generation_equals_the_dynamic_cache(method):
    m, tok = tiny_model("llama", std=0.3), tokenizer()
    enc = attnsteer.highlight(tok, ["<<Answer in French.>> The quick brown fox", "The lazy <<dog>>"])
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    with attnsteer.steer(m, method, spans=enc):
        dynamic = m.generate(**enc, **kw)
        static = m.generate(**enc, cache_implementation="static", **kw)
    plain = m.generate(**enc, **kw)
    assert torch.equal(static, dynamic) and not torch.equal(dynamic, plain)


def test_user_made_static_cache_in_a_forward_equals_the_dynamic_cache():
    from transformers import DynamicCache, StaticCache

    m, tok = tiny_model("qwen2", std=0.3), tokenizer()
    enc = attnsteer.highlight(tok, "Answer in French. <<Use at most twenty words.>> The fox")
    T = enc["input_ids"].shape[1]
    with attnsteer.steer(m, attnsteer.GUIDE(2.0), spans=enc):
        a = m(**enc, past_key_values=StaticCache(config=m.config, max_cache_len=T + 24)).logits
        b = m(**enc, past_key_values=DynamicCache(config=m.config)).logits
    torch.testing.assert_close(a, b)


def test_static_cache_on_sliding_window_layers_is_refused_or_exact():
    m, tok = tiny_model("mistral", std=0.3), tokenizer()
    enc = attnsteer.highlight(tok, "Answer in French. <<Use at most twenty words.>> The fox")
    kw = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    with attnsteer.steer(m, attnsteer.GUIDE(2.0), spans=enc):
        dynamic = m.generate(**enc, **kw)
        try:
            static = m.generate(**enc, cache_implementation="static", **kw)
        except NotImplementedError as e:
            assert "static cache on a sliding-window layer" in str(e)
        else:
            assert torch.equal(static, dynamic)


def test_a_raw_span_tensor_shorter_than_a_bare_forward_raises(llama):
    enc = _enc()
    T = enc["input_ids"].shape[1]
    with attnsteer.steer(llama, attnsteer.GUIDE(2.0), spans=enc.span_mask[:, :-3]):
        with pytest.raises(ValueError, match=f"runs {T} tokens, but the span mask .* for a {T - 3}-token prompt"):
            llama(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
