"""AdaSEKA (attnsteer/keyedit.py): several SEKA projections mixed per prompt, layer and KV head by the
last prompt token's query. The hooks' edit equals a direct, slow float64 implementation of the formula
(loops over rows, heads, experts and span tokens); keys are edited once; a chunked prefill raises;
the spec, the prompt families and the errors."""

from __future__ import annotations

import pytest
import torch

import attnsteer
from attnsteer import AdaSEKA, KeyProjection, learn_projection
from attnsteer.keyedit import FAMILIES, _key_module, _keys_view, _triplets
from references import PROMPTS

from tiny import model as tiny_model
from tiny import tokenizer


def _experts(m, tok, n=2):
    return [learn_projection(m, tok, prompts=8, gamma=0.9, progress=False, family=f, seed=i) for i, f in
            enumerate(FAMILIES[:n])]  # fmt: skip


def _slow_logits(m, enc, experts, gain, top_k, signed=False):
    """AdaSEKA by hand, in float64: per layer, the last prompt token's query per query head
    (q_proj / qkv_proj, then q_norm), averaged over each KV head's group and normalised; per expert
    cₑ = Σᵢ |q̂·uₑᵢ|σₑᵢ (signed: q̂·uₑᵢ) over its top_k directions; αₑ = cₑ / maxₑ|cₑ|; then every span key
    k ← k + w·g·Σₑ αₑ Uₑ Uₑᵀ k, one row, head and token at a time. One forward without a cache."""
    cfg = m.config
    Hq, Hkv = cfg.num_attention_heads, cfg.num_key_value_heads
    D = getattr(cfg, "head_dim", None) or cfg.hidden_size // Hq
    G = Hq // Hkv
    span = enc.span_mask.double()
    T = enc["input_ids"].shape[1]
    handles, P = [], {}
    for attn in attnsteer.hf.attention_modules(m):
        L = attn.layer_idx

        def pre(module, args, kwargs, L=L):
            h = kwargs.get("hidden_states", args[0] if args else None)[:, -1]
            lin = module.q_proj if hasattr(module, "q_proj") else module.qkv_proj
            q = (h.double() @ lin.weight.double().T)[..., : Hq * D]
            if lin.bias is not None:
                q = q + lin.bias.double()[: Hq * D]
            q = q.to(h.dtype)
            q = q.view(-1, Hq, D)
            if hasattr(module, "q_norm"):
                q = module.q_norm(q)
            q = q.double()
            for b in range(q.shape[0]):
                for g in range(Hkv):
                    qk = sum(q[b, g * G + j] for j in range(G)) / G
                    qk = qk / (qk.norm() + 1e-8)
                    cs = []
                    for e in experts:
                        u, s = e.pos[L][g].double(), e.pos_sv[L][g].double()
                        al = [float(qk @ u[:, i]) for i in range(min(top_k, u.shape[1]))]
                        cs.append(sum((a if signed else abs(a)) * float(s[i]) for i, a in enumerate(al)))
                    top = max(abs(c) for c in cs) + 1e-8
                    Pm = torch.zeros(D, D, dtype=torch.float64)
                    for c, e in zip(cs, experts):
                        u = e.pos[L][g].double()[:, :top_k]
                        Pm += (c / top) * (u @ u.T)
                    P[(L, b, g)] = Pm

        def post(module, inputs, out, L=L, attn=attn):
            kind = _key_module(attn)[1]
            x = _keys_view(out, inputs[0], kind, T, Hkv, D, Hq)
            for b in range(x.shape[0]):
                for g in range(Hkv):
                    for t in range(T):
                        w = float(span[b, t])
                        if w:
                            k = x[b, g, t].double()
                            x[b, g, t] = (k + w * gain * (P[(L, b, g)] @ k)).to(x.dtype)
            return out

        handles.append(attn.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(_key_module(attn)[0].register_forward_hook(post))
    try:
        return m(**enc).logits
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("kind,signed", [("llama", False), ("qwen3", False), ("gemma3", False), ("phi3", False),
                                         ("llama", True)])  # fmt: skip
def test_adaseka_equals_the_slow_formula_and_edits_once(kind, signed):
    """Llama (k_proj, GQA), Qwen 3 (q_norm / k_norm), Gemma 3 (norms on the transposed view), Phi-3
    (fused qkv_proj); a left-padded batch whose rows get their own mix of experts: the same logits as
    the slow formula; cached greedy decoding equals recomputing everything each step (a key edited
    twice, or a mix recomputed from a decode step's query, would differ); the hooks leave with the block."""
    m = tiny_model(kind, std=0.3)
    tok = tokenizer()
    enc = attnsteer.highlight(tok, PROMPTS)
    experts = _experts(m, tok, 3)
    ada = AdaSEKA(experts, gain=2.0, top_k=2, signed=signed)
    rows = enc["attention_mask"].bool()
    kw = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        plain = m(**enc).logits
        with attnsteer.steer(m, ada, spans=enc):
            got = m(**enc).logits
            cached = m.generate(**enc, **kw)
            uncached = m.generate(**enc, use_cache=False, **kw)
        ref = _slow_logits(m, enc, experts, 2.0, 2, signed)
        after = m(**enc).logits
    torch.testing.assert_close(got[rows], ref[rows], atol=2e-4, rtol=1e-4)
    assert (got[rows] - plain[rows]).abs().max() > 1e-3  # it changed something
    assert torch.equal(cached, uncached)
    torch.testing.assert_close(after, plain)


def test_coefficients_route_each_prompt_and_head():
    """α per (row, expert, head): the best-aligned expert gets ±1, the others their share; an expert
    that lacks a head (rank 0) gets 0; rows are routed apart."""
    D, H = 4, 2
    eye = torch.eye(D)

    def proj(cols, sv):
        return KeyProjection({0: [eye[:, cols], eye[:, cols]]}, {0: [eye[:, :0]] * H}, {},
                             pos_sv={0: [torch.tensor(sv), torch.tensor(sv)]})  # fmt: skip

    a = proj([0], [2.0])
    b = proj([1, 2], [1.0, 1.0])
    empty = KeyProjection({0: [eye[:, :0]] * H}, {0: [eye[:, :0]] * H}, {}, pos_sv={0: [torch.zeros(0)] * H})
    ada = AdaSEKA([a, b, empty], gain=1.0, top_k=3)
    q = torch.tensor([[[1.0, 0, 0, 0], [0, 1.0, 1.0, 0]], [[0, -1.0, 0, 0], [1.0, 0, 0, 0]]])  # (B=2, H, D)
    alpha = ada.coefficients(0, q)  # (B, E, H)
    # row 0: head 0 is expert a's direction; head 1 lies in expert b's plane. Row 1: head 0 points
    # against b's first direction — |q̂·u| routes it to b as +1 (a singular vector's sign is
    # arbitrary); the released code's signed rule gives −1 —, head 1 along a's.
    want = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], [[0.0, 1.0], [1.0, 0.0], [0.0, 0.0]]])
    torch.testing.assert_close(alpha, want, atol=1e-6, rtol=0)
    signed = AdaSEKA([a, b, empty], gain=1.0, top_k=3, signed=True).coefficients(0, q)
    want[1, 1, 0] = -1.0
    torch.testing.assert_close(signed, want, atol=1e-6, rtol=0)
    a_f, b_f = ada.route(0, q)
    assert a_f.shape == (2, H, D, 9) and b_f.shape == (H, D, 9)


def test_chunked_prefill_errors_and_spec(tmp_path):
    m = tiny_model("llama", std=0.3)
    tok = tokenizer()
    enc = attnsteer.highlight(tok, PROMPTS[:1])
    experts = _experts(m, tok, 2)
    ids = enc["input_ids"]
    with torch.no_grad(), attnsteer.steer(m, AdaSEKA(experts, gain=1.0), spans=enc):
        # the prompt without its last token (DIRECTER's prefill): no query to route on
        with attnsteer.hf.active(m).prompt_prefix(), pytest.raises(RuntimeError, match="one forward"):
            m(input_ids=ids[:, : ids.shape[1] - 1])
    paths = [e.save(tmp_path / f"{i}.safetensors") for i, e in enumerate(experts)]
    ada = attnsteer.specs.parse_local(f"adaseka:gain=1.5,top_k=2,experts={paths[0]}+{paths[1]}")
    assert isinstance(ada, AdaSEKA) and ada.gain == 1.5 and ada.top_k == 2 and len(ada.experts) == 2
    text = attnsteer.generate(m, tok, PROMPTS[0], ada, max_new_tokens=3, do_sample=False)
    assert isinstance(text, str)
    with pytest.raises(ValueError, match="drop 'gate\\+'"):
        attnsteer.specs.parse_local(f"gate+adaseka:experts={paths[0]}")
    with pytest.raises(ValueError, match="adaseka is not served by the vLLM plugin"):
        attnsteer.specs.parse_request_spec("adaseka:experts=qwen2.5-coder-0.5b")
    with pytest.raises(ValueError, match="projection"):
        attnsteer.specs.parse(f"adaseka:experts={paths[0]}")  # values only: no file is opened


def test_errors_name_the_fix(tmp_path):
    m = tiny_model("llama", std=0.3)
    old = learn_projection(m, tokenizer(), prompts=4, gamma=0.9, progress=False)
    old.pos_sv = {}  # as written by an attnsteer without singular values
    with pytest.raises(ValueError, match="needs experts"):
        AdaSEKA()
    with pytest.raises(ValueError, match="re-learn it"):
        AdaSEKA([old])
    with pytest.raises(ValueError, match="top_k"):
        AdaSEKA([old], top_k=0)
    prism = learn_projection(m, tokenizer(), prompts=4, gamma=0.9, progress=False, kind="prism")
    with pytest.raises(ValueError, match="mixes SEKA ones"):
        AdaSEKA([prism])
    with pytest.raises(ValueError, match="family must be one of"):
        learn_projection(m, tokenizer(), prompts=4, family="nope")


def test_key_editing_methods_share_their_checks():
    """SEKA, PRISM-Δ and AdaSEKA (one base, KeyEditing): no attention plan, every phase steered (another
    phases value is refused, naming the method), non-finite gains refused, edits_layer = steered layers
    the projections cover."""
    from attnsteer.keyedit import PRISM, SEKA, KeyEditing

    D, H = 4, 2
    eye = torch.eye(D)
    seka = KeyProjection({1: [eye[:, :1]] * H}, {1: [eye[:, :0]] * H}, {}, pos_sv={1: [torch.ones(1)] * H})
    prism = KeyProjection({3: [eye[:, :1]] * H}, {}, {"kind": "prism"}, weights={3: [1.0] * H})
    makers = {"SEKA": lambda **kw: SEKA(seka, **kw), "PRISM": lambda **kw: PRISM(prism, **kw),
              "AdaSEKA": lambda **kw: AdaSEKA([seka], **kw)}  # fmt: skip
    for name, make in makers.items():
        method = make()
        assert isinstance(method, KeyEditing) and method.plan(0, None) is None and method.plan_steered(0, None) is None
        with pytest.raises(ValueError, match=f"{name} edits keys when they are written.*phases does not apply"):
            make(phases="prefill")
        with pytest.raises(ValueError, match=f"{name} gain must be finite"):
            make(gain=float("nan"))
    with pytest.raises(ValueError, match="PRISM gain_value must be finite"):
        PRISM(prism, gain_value=float("inf"))
    assert [SEKA(seka).edits_layer(i) for i in range(4)] == [False, True, False, False]
    assert [SEKA(seka, layers=[0]).edits_layer(i) for i in range(4)] == [False] * 4
    assert [PRISM(prism).edits_layer(i) for i in range(4)] == [False, False, False, True]
    assert [AdaSEKA([seka]).edits_layer(i) for i in range(4)] == [False, True, False, False]


def test_prompt_families_and_singular_values(tmp_path):
    """Each family's answer is in its context; learning stores the singular values (descending, one per
    direction) and the family, and the file keeps them."""
    for fam in FAMILIES:
        for ctx, rel, ans, irr in _triplets(5, 3, fam):
            assert ans in ctx and rel != irr
    m = tiny_model("qwen2", std=0.3)
    proj = learn_projection(m, tokenizer(), prompts=6, gamma=0.9, progress=False, family="conflict")
    assert proj.meta["family"] == "conflict"
    for L in proj.layers():
        for u, s in zip(proj.pos[L], proj.pos_sv[L]):
            assert s.shape == (u.shape[1],) and bool((s[:-1] >= s[1:]).all()) and bool((s > 0).all())
    back = KeyProjection.load(proj.save(tmp_path / "c.safetensors"))
    assert all(torch.equal(a, b) for L in proj.pos_sv for a, b in zip(proj.pos_sv[L], back.pos_sv[L]))
