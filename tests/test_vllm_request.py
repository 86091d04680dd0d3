"""The per-request steering format for vLLM (attnsteer.vllm.request): built from highlight's
inputs, read back the same from the nested and the flat (server) form, and every refusal."""

from __future__ import annotations

import pytest
import torch

import attnsteer
from attnsteer.vllm import parse_request, spans_from_mask, steered_prompt

from tiny import tokenizer

PROMPT = "The quick brown fox. <<Answer in French.>> Now <<+use at most twenty words+>>."


def test_prompt_and_spans_equal_highlight():
    tok = tokenizer()
    enc = attnsteer.highlight(tok, PROMPT)
    p = steered_prompt(tok, PROMPT, "guide:delta=2")
    assert p.prompt_token_ids == enc["input_ids"][0].tolist()
    assert p.extra_args["attnsteer"]["method"] == "guide:delta=2"
    for form in (p.extra_args, p.flat()):
        got = parse_request(form, p.prompt_token_ids, tok.all_special_ids)
        assert torch.equal(got.span_weights, enc.span_mask[0].float())
        assert got.method == attnsteer.GUIDE(2.0) and got.spec == "guide:delta=2"
    assert {w for *_, w in p.extra_args["attnsteer"]["spans"]} == {1.0, 2.0}  # the markup levels
    assert p.prompt() == {"prompt_token_ids": p.prompt_token_ids, "cache_salt": p.cache_salt}


def test_cache_salt_is_the_steering_config():
    tok = tokenizer()
    a, b = steered_prompt(tok, PROMPT, "guide:delta=2"), steered_prompt(tok, PROMPT, "guide:delta=2.0")
    assert a.cache_salt == b.cache_salt  # same configuration (canonical spec), same salt: shared cache
    assert steered_prompt(tok, PROMPT, "guide:delta=1").cache_salt != a.cache_salt
    assert steered_prompt(tok, "<<The quick>> brown fox.", "guide:delta=2").cache_salt != a.cache_salt
    chat = [{"role": "system", "content": "<<Answer in French.>>"}, {"role": "user", "content": "Hello"}]
    c = steered_prompt(tok, chat, "spotlight:target=0.3,layers=0-1")
    assert parse_request(c.flat(), c.prompt_token_ids).method == attnsteer.SpotLight(0.3, layers=[0, 1])


def test_spans_from_mask_runs():
    assert spans_from_mask(torch.tensor([0, 1, 1, 2, 0, 0.5])) == [(1, 3, 1.0), (3, 4, 2.0), (5, 6, 0.5)]
    assert spans_from_mask(torch.zeros(4)) == []


def test_unsteered_requests_are_none():
    assert parse_request(None, [1, 2, 3]) is None
    assert parse_request({"other": 1}, [1, 2, 3]) is None


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"attnsteer": {"method": "guid:delta=2", "spans": [[0, 2]]}}, "unknown method"),
        ({"attnsteer": {"method": "guide:alpha=2", "spans": [[0, 2]]}}, "GUIDE has no setting 'alpha'"),
        ({"attnsteer": {"method": "gate+guide:delta=2", "spans": [[0, 2]]}}, "cannot be served per request"),
        ({"attnsteer": {"method": "directer", "spans": [[0, 2]]}}, "cannot be served per request"),
        ({"attnsteer": {"method": "spotlight:target=0.3,pooled=true", "spans": [[0, 2]]}}, "pooled SpotLight"),
        ({"attnsteer": {"method": "none", "spans": [[0, 2]]}}, "unsteered request"),
        ({"attnsteer": {"method": "guide:delta=2", "spans": [[3, 9]]}}, r"outside the 5-token prompt"),
        ({"attnsteer": {"method": "guide:delta=2", "spans": [[2, 2]]}}, r"outside the 5-token prompt"),
        ({"attnsteer": {"method": "guide:delta=2", "spans": [[0, 2, 0]]}}, "weights are finite and > 0"),
        ({"attnsteer": {"method": "guide:delta=2", "spans": [[0, 1]]}}, "special tokens only"),
        ({"attnsteer": {"method": "guide:delta=2"}}, r'must be \{"method"'),
        ({"attnsteer_method": "guide:delta=2"}, "needs both attnsteer_method and attnsteer_spans"),
        ({"attnsteer_method": "guide:delta=2", "attnsteer_spans": "1-3"}, "must be start:end"),
    ],
)
def test_bad_requests_get_a_clear_error(extra, message):
    with pytest.raises(ValueError, match=message):
        parse_request(extra, [1, 10, 11, 12, 13], special_ids=[1])


def test_steered_prompt_refusals():
    tok = tokenizer()
    with pytest.raises(ValueError, match="nothing is highlighted"):
        steered_prompt(tok, "nothing marked here", "guide:delta=2")
    with pytest.raises(TypeError, match="method spec string"):
        steered_prompt(tok, PROMPT, attnsteer.GUIDE(2.0))
    with pytest.raises(ValueError, match="one request"):
        steered_prompt(tok, [PROMPT, PROMPT], "guide:delta=2")
