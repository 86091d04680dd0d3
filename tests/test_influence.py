"""GUIDE's Influence, rollout and span mass: the GUIDE package's own values, an independent
materialised formula, batches, O(T) memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import attnsteer
from attnsteer.influence import influence, span_mass

from tiny import model as tiny_model
from tiny import tokenizer

REF = Path(__file__).resolve().parents[2] / "shared" / "data" / "influence" / "reference.json"


def _formula(m, enc, method, value_norms, residual):
    """Influence and rollout written out with the T×T steered attention weights (output_attentions)."""
    xs, os_, vals = [], [], []

    def keep(mod, a, k, out):
        xs.append(k["hidden_states"])
        os_.append(out[0])

    def keep_v(mod, a, out):
        vals.append(out)

    hooks = [mod.register_forward_hook(keep, with_kwargs=True) for mod in attnsteer.hf.attention_modules(m)]
    vhooks = [mod.v_proj.register_forward_hook(keep_v) for mod in attnsteer.hf.attention_modules(m)]
    am = enc["attention_mask"]
    pos = (am.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad(), attnsteer.steer(m, method or attnsteer.GUIDE(0.0), spans=enc):
        att = m(input_ids=enc["input_ids"], attention_mask=am, position_ids=pos, output_attentions=True).attentions
    for h in hooks + vhooks:
        h.remove()
    I = (enc.span_mask > 0).double()
    R = I.clone()
    Hq, Hkv = att[0].shape[1], m.config.num_key_value_heads
    D = getattr(m.config, "head_dim", None) or m.config.hidden_size // m.config.num_attention_heads  # Gemma: 256
    prev = None
    for l, A in enumerate(att):
        A = A.double()
        B, _, T, _ = A.shape
        w = (
            vals[l].double().view(B, T, Hkv, D).abs().sum(-1).transpose(1, 2)
            if value_norms
            else torch.ones(B, Hkv, T, dtype=torch.float64)
        )
        w = w.repeat_interleave(Hq // Hkv, dim=1)  # (B, Hq, T)
        den = torch.einsum("bhij,bhj->bi", A, w)
        u = torch.einsum("bhij,bhj,bj->bi", A, w, I) / den.clamp_min(1e-300)  # padded rows see nothing: 0
        R = 0.5 * (R + torch.einsum("bhij,bj->bi", A, R) / Hq) * am
        xn, on = xs[l].double().abs().sum(-1), os_[l].double().abs().sum(-1)
        ne = xn if residual == "current" or prev is None else prev
        I = ((ne * I + on * u) / (ne + on).clamp_min(1e-300)) * am  # padding stays 0
        prev = xn
    return I, R


@pytest.mark.parametrize(
    "method", [None, attnsteer.GUIDE(2.0), attnsteer.SpotLight(0.5), attnsteer.PASTA(0.1)], ids=repr
)
@pytest.mark.parametrize("value_norms, residual", [(True, "current"), (False, "previous")])
def test_influence_equals_the_formula_with_materialised_weights(method, value_norms, residual):
    m, tok = tiny_model("llama", layers=3, std=0.3), tokenizer()
    enc = attnsteer.highlight(tok, ["<<Answer in French.>> The quick brown fox", "The lazy dog <<sleeps on the mat>>"])
    res = influence(m, enc, method, value_norms=value_norms, residual=residual)
    I, R = _formula(m, enc, method, value_norms, residual)
    rows = enc["attention_mask"].bool()
    torch.testing.assert_close(res.influence[:, -1][rows].double(), I[rows], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(res.rollout[:, -1][rows].double(), R[rows], atol=2e-5, rtol=1e-4)
    assert res.influence.shape == (2, 4, enc["input_ids"].shape[1]) and res.span_mass.shape[:3] == (2, 3, 4)


def test_batch_rows_equal_single_prompts():
    m, tok = tiny_model("qwen2", std=0.3), tokenizer()
    prompts = ["<<Answer in French.>> The quick brown fox jumps", "The lazy <<dog>>"]
    both = influence(m, attnsteer.highlight(tok, prompts), attnsteer.GUIDE(1.0))
    for b, p in enumerate(prompts):
        one = influence(m, attnsteer.highlight(tok, p), attnsteer.GUIDE(1.0))
        n = one.influence.shape[-1]
        torch.testing.assert_close(both.influence[b, :, -n:], one.influence[0], atol=1e-5, rtol=1e-4)


@pytest.mark.skipif(not REF.exists(), reason="needs ../shared/data/influence")
def test_influence_matches_the_guide_package_on_the_embedded_model():
    d = json.loads(REF.read_text())
    model, tok = attnsteer.models.load_default(progress=False)
    enc = attnsteer.highlight(tok, d["attnsteer_markup"])
    assert enc["input_ids"][0].tolist() == d["input_ids"]
    assert enc.span_mask[0].nonzero().flatten().tolist() == d["span"]["positions"]
    ours = {
        0.0: influence(model, enc, None, value_norms=False, residual="previous"),
        2.0: influence(model, enc, attnsteer.GUIDE(2.0), value_norms=False, residual="previous"),
    }
    for run in d["runs"]:
        ref = torch.tensor([run["values"][str(l)] for l in range(-1, 30)])
        kind = "rollout" if run["metric"] == "attention_rollout" else "influence"
        got = getattr(ours[run["delta_influence"]], kind)[0]
        torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-4)
    # Steering raises the span's Influence at the last token (what GUIDE's Δ is for).
    assert ours[2.0].last()[-1] > ours[0.0].last()[-1]


def test_span_mass_is_the_attention_on_the_highlight_and_shows_spotlights_target(tmp_path):
    m, tok = tiny_model("llama", layers=2, std=0.3), tokenizer()
    enc = attnsteer.highlight(tok, "The quick brown fox jumps over the lazy dog. <<Answer in French.>> Now")
    sm = span_mass(m, enc, attnsteer.SpotLight(0.6, exact=True))
    with torch.no_grad(), attnsteer.steer(m, attnsteer.GUIDE(0.0), spans=enc):
        att = m(**enc, output_attentions=True).attentions
    span = enc.span_mask[0]
    want = torch.stack([a[0][..., span].sum(-1) for a in att])  # (L, Hq, T)
    torch.testing.assert_close(sm.unsteered[0], want, atol=1e-5, rtol=1e-4)
    last = sm.table(0, "last", steered=True)
    natural = sm.table(0, "last")
    # Exact SpotLight: every head ends with at least the target; layer 0 (same inputs in both
    # forwards) keeps heads that already had more and lifts the others to exactly 0.6.
    assert (last >= 0.6 - 1e-4).all() and (natural < 0.6).any()
    torch.testing.assert_close(
        last[0], torch.where(natural[0] >= 0.6, natural[0], torch.full_like(natural[0], 0.6)), atol=1e-4, rtol=0
    )
    assert os.path.getsize(sm.heatmap(str(tmp_path / "h.png")) and tmp_path / "h.png") > 1000
    res = influence(m, enc)
    res.plot(str(tmp_path / "i.png"), others={"GUIDE 2": influence(m, enc, attnsteer.GUIDE(2.0))})
    assert (tmp_path / "i.png").stat().st_size > 1000
    recs = res.to_records()
    assert len(recs) == 3 * enc["input_ids"].shape[1] and {"row", "layer", "token", "influence", "rollout"} <= set(
        recs[0]
    )


def test_influence_at_4k_tokens_allocates_no_t_by_t_buffer(tmp_path):
    """Peak RSS growth of an Influence pass over 4096 tokens stays below one 4096×4096 fp32 buffer."""
    code = textwrap.dedent("""
        import resource, sys, torch
        sys.path.insert(0, %r)
        import attnsteer
        from attnsteer.influence import influence
        from tiny import model
        torch.set_num_threads(1)
        m = model("llama", layers=2, std=0.3, max_position_embeddings=8192)
        T = 4096
        ids = torch.randint(5, 300, (1, T))
        class Enc(dict):
            pass
        enc = Enc(input_ids=ids, attention_mask=torch.ones(1, T, dtype=torch.long))
        enc.span_mask = torch.zeros(1, T, dtype=torch.bool); enc.span_mask[0, 100:140] = True
        influence(m, enc)  # warm up: allocator pools, op set-up
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        r = influence(m, enc, attnsteer.GUIDE(2.0))
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print("grew_kb", after - before, float(r.last()[-1]))
    """) % str(Path(__file__).resolve().parent)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    grew_kb = int(res.stdout.split()[1])
    assert grew_kb < 4096 * 4096 * 4 // 1024, f"peak RSS grew by {grew_kb} kB"


def test_calibration_rule_and_upper_case_rewrite(tmp_path):
    from attnsteer.influence import _choose_delta, _upper_markup, aggregate_influence

    assert (
        _upper_markup("Rules: <<Answer in French.>> then <<+be brief+>>")
        == "Rules: <<ANSWER IN FRENCH.>> then <<+BE BRIEF+>>"
    )
    assert _upper_markup([{"role": "system", "content": "<<Reply in JSON.>>"}])[0]["content"] == "<<REPLY IN JSON.>>"
    deltas, gains = [0.0, 1.0, 2.0], [1.0, 1.5, 2.5]
    assert _choose_delta(deltas, gains, 0.8) == 0.0 and _choose_delta(deltas, gains, 1.0) == 0.0
    assert _choose_delta(deltas, gains, 2.0) == pytest.approx(1.5)
    assert _choose_delta(deltas, gains, 9.0) == 2.0
    m, tok = tiny_model("llama", layers=2, std=0.3), tokenizer()
    c = attnsteer.calibrate_delta(m, tok, "The quick brown fox. <<Answer in French.>> Now", deltas=(0.5, 1.0, 2.0))
    assert c.deltas == [0.0, 0.5, 1.0, 2.0] and c.gains[0] == 1.0 and len(c.gains) == 4
    enc = attnsteer.highlight(tok, "The quick brown fox. <<Answer in French.>> Now")
    assert c.base == pytest.approx(aggregate_influence(influence(m, enc)))
    assert c.gains[2] == pytest.approx(aggregate_influence(influence(m, enc, attnsteer.GUIDE(1.0))) / c.base)
    assert c.delta == _choose_delta(c.deltas, c.gains, c.target_gain)
    assert (c.plot(str(tmp_path / "c.png")) is not None) and (tmp_path / "c.png").stat().st_size > 1000
