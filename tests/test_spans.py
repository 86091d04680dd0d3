"""Markup, char spans and chat messages -> token span masks."""

from __future__ import annotations

import pytest
import torch

import attnsteer
from attnsteer.spans import MarkupError, parse_markup

from tiny import tokenizer


def test_parse_markup_levels_and_escape():
    clean, spans = parse_markup("a <<b>> c <<+d+>> e <<-f->> \\<<g")
    assert clean == "a b c d e f <<g"
    assert [(clean[s:e], w) for s, e, w in spans] == [("b", 1.0), ("d", 2.0), ("f", 0.5)]


@pytest.mark.parametrize(
    "text, message",
    [
        ("a <<b", "never closed"),
        ("a <<b <<c>> d>>", "nested highlight"),
        ("a <<  >> b", "empty highlight"),
        ("a b>> c", "has no opening marker"),
    ],
)
def test_markup_errors_name_the_fix(text, message):
    with pytest.raises(MarkupError, match=message):
        parse_markup(text)


def test_highlight_tokens_cover_exactly_the_marked_text():
    tok = tokenizer()
    enc = attnsteer.highlight(tok, "Answer in French. <<Use at most twenty words.>> The fox")
    ids = enc["input_ids"][0]
    marked = tok.decode(ids[enc.span_mask[0]])
    assert marked.strip() == "Use at most twenty words."
    assert not enc.span_mask[0, 0]  # BOS (special) is never span
    assert "span_mask" not in enc  # not a model keyword


def test_highlight_batch_left_padding_and_float_levels():
    tok = tokenizer()
    enc = attnsteer.highlight(tok, ["<<+Reply in JSON+>> please.", "Write a poem. <<-the sea->> and <<the wind>>"])
    assert enc["input_ids"].shape == enc.span_mask.shape
    assert enc.span_mask.dtype == torch.float32
    assert set(enc.span_mask[0].unique().tolist()) == {0.0, 2.0}
    assert set(enc.span_mask[1].unique().tolist()) == {0.0, 0.5, 1.0}
    assert (enc.span_mask[enc["attention_mask"] == 0] == 0).all()
    assert enc["attention_mask"][0, 0] == 0  # left padded


def test_char_spans_and_truncation_error():
    tok = tokenizer()
    text = "The quick brown fox jumps over the lazy dog. Answer in French."
    enc = attnsteer.highlight(tok, text, char_spans=[[(45, len(text))]])
    assert tok.decode(enc["input_ids"][0][enc.span_mask[0]]).strip() == "Answer in French."
    with pytest.raises(MarkupError, match="cut off by truncation"):
        attnsteer.highlight(tok, text, char_spans=[[(45, len(text))]], truncation=True, max_length=6)
    with pytest.raises(MarkupError, match="nothing is highlighted"):
        attnsteer.highlight(tok, text)


def test_chat_messages_marked_parts_and_whole_messages():
    tok = tokenizer()
    msgs = [{"role": "system", "content": "Rules: <<Reply in JSON.>>"}, {"role": "user", "content": "hello world"}]
    enc = attnsteer.highlight(tok, msgs)
    assert tok.decode(enc["input_ids"][0][enc.span_mask[0]]).strip() == "Reply in JSON."
    enc = attnsteer.highlight(
        tok,
        [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "hello world"}],
        highlight_messages=[0],
    )
    assert tok.decode(enc["input_ids"][0][enc.span_mask[0]]).strip() == "Answer in French."
    specials = torch.isin(enc["input_ids"][0], torch.tensor(tok.all_special_ids))
    assert not (enc.span_mask[0] & specials).any()


def test_show_spans(capsys):
    tok = tokenizer()
    enc = attnsteer.highlight(tok, "Answer in French. <<Use at most twenty words.>>")
    text = attnsteer.format_spans(tok, enc)
    assert "[[" in text and "twenty words.]]" in text.replace(" ", " ")
    assert attnsteer.show_spans(tok, enc) is None  # prints once; a notebook cell does not echo it again
    assert capsys.readouterr().out == text + "\n"


def test_slow_tokenizer_error_names_the_fix():
    class SlowTokenizer:
        is_fast = False

    with pytest.raises(TypeError, match="no offset mapping.*use_fast=True"):
        attnsteer.highlight(SlowTokenizer(), "<<a>> b")


def test_highlight_messages_needs_chat():
    with pytest.raises(ValueError, match="highlight_messages needs chat messages"):
        attnsteer.highlight(tokenizer(), "plain text", highlight_messages=[0])
