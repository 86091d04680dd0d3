"""Shared test fixtures and reference implementations written the obvious (slow) way: the
prompts, the 4-D bias mask of eager attention, and DIRECTER's loop with deep-copied caches."""

from __future__ import annotations

import copy

import torch

import attnsteer
from attnsteer.hf import ATTN_NAME, ensure_registered

PROMPTS = [
    "Answer in French. <<Use at most twenty words.>> The quick brown fox jumps over the lazy dog.",
    "<<Reply in JSON>> with a key. Write a short poem about the sea.",
]


def positions(am):
    return (am.long().cumsum(-1) - 1).masked_fill(am == 0, 1)


def plain(m):
    """The model on attnsteer's op without steering, so both loops share one attention kernel."""
    ensure_registered()
    m.set_attn_implementation(ATTN_NAME)
    return m


def step(m, ids, am, cache):
    out = m(
        input_ids=ids[:, -1:],
        attention_mask=am,
        position_ids=positions(am)[:, -1:],
        past_key_values=cache,
        use_cache=True,
    )
    return out.logits[:, -1].float()


@torch.no_grad()
def reference_directer(m, enc, order, *, alpha, beta, max_trials, max_new_tokens):
    """The paper's loop, written the obvious way: per row, per trial, deep-copy the cache and
    multiply the span keys of the chosen layers in place."""
    from transformers import DynamicCache

    ids, am, span = enc["input_ids"], enc["attention_mask"], enc.span_mask != 0
    B, L = ids.shape[0], order.shape[1]
    counts, n = [], L
    while n >= 2 and len(counts) < max_trials:
        counts.append(n)
        n //= 2
    cache = DynamicCache(config=m.config)
    m(
        input_ids=ids[:, :-1],
        attention_mask=am[:, :-1],
        position_ids=positions(am[:, :-1]),
        past_key_values=cache,
        use_cache=True,
    )
    stats = dict(gated=0, accepted={}, fallbacks=0)
    for _ in range(max_new_tokens):
        before = copy.deepcopy(cache)
        p = step(m, ids, am, cache).softmax(-1)
        chosen = []
        for b in range(B):
            top = p[b].topk(2)
            star, token = int(top.indices[0]), int(top.indices[0])
            if top.values[1] < beta * top.values[0]:
                stats["gated"] += 1
            else:
                for _k, n in enumerate(counts):
                    trial = copy.deepcopy(before)
                    for layer in order[b, :n].tolist():
                        keys = trial.layers[layer].keys
                        rows = torch.zeros(B, keys.shape[2], dtype=torch.bool)
                        n_prompt = min(keys.shape[2], span.shape[1])  # generated keys are never span
                        rows[b, :n_prompt] = span[b, :n_prompt]
                        attnsteer.scale_keys_(keys, rows, float(alpha))
                    cand = int(step(m, ids, am, trial)[b].argmax())
                    if p[b, cand] >= beta * p[b, star]:
                        token = cand
                        stats["accepted"][n] = stats["accepted"].get(n, 0) + 1
                        break
                else:
                    stats["fallbacks"] += 1
            chosen.append(token)
        ids = torch.cat([ids, torch.tensor(chosen)[:, None]], dim=1)
        am = torch.cat([am, am.new_ones(B, 1)], dim=1)
    return ids, stats


def bias_mask_4d(enc, bias: float) -> torch.Tensor:
    """``(B, 1, T, T)`` float mask for eager attention: causal + padding (finite, as HF: no NaN on
    pad rows) plus ``bias`` times the span weights on the keys — GUIDE written as a mask."""
    B, T = enc["input_ids"].shape
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    allowed = causal[None] & enc["attention_mask"].bool()[:, None, :]
    mask4d = torch.zeros(B, 1, T, T).masked_fill(~allowed[:, None], -1e9)
    return mask4d + bias * enc.span_mask.float()[:, None, None, :]
