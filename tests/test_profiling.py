"""PASTA head profiling: each head's score equals steering that head alone with PASTA(heads=...)."""

from __future__ import annotations

import json

import pytest
import torch

import attnsteer
from attnsteer.profiling import _reply_logp

from tiny import model as tiny_model
from tiny import tokenizer

EXAMPLES = [
    {"prompt": "The quick brown fox. <<Answer in French.>> hello", "target": " the cat sleeps"},
    ("Write a short poem. <<Reply in JSON with a key named answer.>>", " answer world"),
]


def test_scores_equal_one_head_pasta_runs(tmp_path):
    m, tok = tiny_model("llama", layers=2, std=0.3), tokenizer()
    prof = attnsteer.profile_heads(m, tok, EXAMPLES, alpha=0.05, progress=False)
    assert prof.scores.shape == (2, 4)
    for layer, head in [(0, 0), (1, 3), (0, 2)]:
        gains = []
        for ex in EXAMPLES:
            prompt, target = (ex["prompt"], ex["target"]) if isinstance(ex, dict) else ex
            enc = attnsteer.highlight(tok, prompt)
            t = tok(target, add_special_tokens=False, return_tensors="pt")["input_ids"]
            with torch.no_grad():
                base = _reply_logp(m, enc, t, 1)[0]
                with attnsteer.steer(m, attnsteer.PASTA(0.05, heads={layer: [head]}), spans=enc):
                    steered = _reply_logp(m, enc, t, 1)[0]
            gains.append(float(steered - base))
        assert prof.scores[layer, head].item() == pytest.approx(sum(gains) / len(gains), abs=1e-5)
    assert prof.scores.abs().max() > 1e-4  # steering a head moves the reply's likelihood
    heads = prof.save(str(tmp_path / "heads.json"), k=3)
    assert sum(len(h) for h in heads.values()) <= 3
    assert all(prof.scores[l, h] > 0 for l, hs in heads.items() for h in hs)
    saved = json.loads((tmp_path / "heads.json").read_text())
    assert {int(k): v for k, v in saved["heads"].items()} == heads
    attnsteer.PASTA(0.05, heads=heads)  # usable as is
    assert (prof.plot(str(tmp_path / "p.png")) is not None) and (tmp_path / "p.png").stat().st_size > 1000


def test_profile_heads_errors():
    m, tok = tiny_model("llama", layers=2, std=0.3), tokenizer()
    with pytest.raises(ValueError, match="at least one"):
        attnsteer.profile_heads(m, tok, [])
    with pytest.raises(ValueError, match="in \\(0, 1\\)"):
        attnsteer.profile_heads(m, tok, EXAMPLES, alpha=2.0)


def test_the_shipped_profile_of_the_embedded_model_loads_as_a_spec():
    from attnsteer import specs

    p = specs.parse("pasta:alpha=0.01,heads=smollm2-135m")
    assert p.heads and all(0 <= l < 30 and all(0 <= h < 9 for h in hs) for l, hs in p.heads.items())
    assert sum(len(h) for h in p.heads.values()) == 30


def test_bfloat16_profile_of_a_no_op_steering_is_zero():
    """The baseline row goes through the same op at the same batch shape as the steered rows: steering that
    changes nothing scores ~0 in bfloat16 too (a separate SDPA baseline scored up to 0.018 here)."""
    m, tok = tiny_model("llama", layers=2, std=0.3), tokenizer()
    prof = attnsteer.profile_heads(m.to(torch.bfloat16), tok, EXAMPLES[:1], alpha=1 - 1e-7, progress=False)
    assert prof.scores.abs().max().item() < 1e-3
