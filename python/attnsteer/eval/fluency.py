"""What steering costs the answer: likelihood under the unsteered model, length, repetition.

Per response: ``nll`` — mean negative log-likelihood per token (nats) of the generated tokens
(the end-of-turn token included when the model emitted it) under the *unsteered* model, given
the same prompt; ``n_tokens``; ``distinct4`` — distinct word 4-grams / all word 4-grams
(1.0 for replies under four words; the 135M model often loops until the token cap, which
drives it toward 0).

A configuration is flagged against the unsteered run on the same prompts (`flags`) when
its replies are much shorter, much less likely or more repetitive — `BOUNDS`.
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import torch

__all__ = ["BOUNDS", "EDGE", "distinct_ngrams", "response_nll", "flags", "margins"]

# A configuration is flagged when, against unsteered on the same prompts:
BOUNDS = {
    "short": 0.5,  # mean length < 0.5 × unsteered's
    "unlikely": 0.5,  # mean NLL > unsteered's + 0.5 nats/token
    "repetitive": 0.1,  # mean distinct-4 < unsteered's − 0.1
}

# A configuration within this share of a bound's width from the bound (`margins` < EDGE) passes on the prompts
# it was measured on, but may well be flagged on others: the sweep says so beside its choice.
EDGE = 0.1


def distinct_ngrams(text: str, n: int = 4) -> float:
    """Share of distinct word ``n``-grams in ``text`` (1.0 when it has fewer than ``n`` words)."""
    words = text.split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


@torch.no_grad()
def response_nll(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, gen_ids: torch.Tensor, gen_mask: torch.Tensor
) -> List[float]:
    """Mean NLL per generated token under ``model`` as it is (call it outside ``steer()``).

    Args:
        input_ids, attention_mask: the left-padded prompts, ``(B, P)``.
        gen_ids: the generated tokens, ``(B, G)`` (anything after the end where ``gen_mask`` is 0).
        gen_mask: ``(B, G)`` 1 on the tokens that belong to the reply.

    Returns:
        per row, the mean NLL in nats (nan for an empty reply).
    """
    B, G = gen_ids.shape
    if G == 0:
        return [float("nan")] * B
    ids = torch.cat([input_ids, gen_ids], dim=1)
    mask = torch.cat([attention_mask, gen_mask.to(attention_mask.dtype)], dim=1)
    pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
    # The reply is the last G positions of every row (left padding), so G + 1 logits suffice.
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=G + 1).logits[:, :-1].float()
    logp = torch.log_softmax(logits, dim=-1).gather(-1, gen_ids.unsqueeze(-1)).squeeze(-1)
    gm = gen_mask.to(logp.dtype)
    total = -(logp * gm).sum(-1)
    count = gm.sum(-1)
    return [float(t / c) if c > 0 else float("nan") for t, c in zip(total, count)]


def flags(stats: Dict[str, float], baseline: Dict[str, float]) -> List[str]:
    """Which fluency bounds ``stats`` (mean ``n_tokens``, ``nll``, ``distinct4``) breaks
    against ``baseline`` (the unsteered run on the same prompts)."""
    return [bound for bound, m in margins(stats, baseline).items() if m < 0]


def margins(stats: Dict[str, float], baseline: Dict[str, float]) -> Dict[str, float]:
    """How far ``stats`` sits from each bound of `flags`, in units of the bound's width: 1 at the unsteered
    value, 0 on the bound, below 0 past it (flagged). E.g. an NLL 0.49 nats above unsteered's is
    ``{"unlikely": 0.02, …}`` — inside the bound by 2 % of it."""
    out = {}
    if baseline.get("n_tokens"):
        out["short"] = (stats["n_tokens"] / baseline["n_tokens"] - BOUNDS["short"]) / (1 - BOUNDS["short"])
    out["unlikely"] = 1 - (stats["nll"] - baseline["nll"]) / BOUNDS["unlikely"]
    out["repetitive"] = 1 + (stats["distinct4"] - baseline["distinct4"]) / BOUNDS["repetitive"]
    return out


def mean(xs: Sequence[float]) -> float:
    xs = [x for x in xs if x == x]
    return sum(xs) / len(xs) if xs else float("nan")
