"""The split-softmax merge shared by the routes that attend over span and rest keys apart.

A route that runs attention over the span keys and over the rest separately (the flash pieces of
`.pieces`, the two FlexAttention passes of `.flex`) gets, per channel and row, the normalised
output ``O`` and the log-sum-exp ``L`` of the logits it saw (with the span bias already in the
span channel's logits). `merge` turns them into the op's result:

* the span mass ``p = σ(L_s − L_r)`` (0 on a row that sees no key);
* without a target the output is ``p·O_s + (1 − p)·O_r`` — exactly softmax over all keys;
* SpotLight (``target`` τ) moves ``p`` to ``τ / (τ + 1 − p)`` (or to ``τ`` with ``exact``) on the
  steered rows where ``0 < p < τ`` — rows that see no span key stay unsteered;
* a row that sees no key at all gives 0 (the op's definition), never NaN.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

__all__ = ["merge"]


def merge(
    L_span: torch.Tensor,
    O_span: torch.Tensor,
    L_rest: torch.Tensor,
    O_rest: torch.Tensor,
    steer_rows: torch.Tensor,
    target: Optional[float] = None,
    exact: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Merge the two channels of a split softmax.

    Args:
        L_span, L_rest: log-sum-exp per row ``(..., Tq)`` float32 (``-inf``: the row saw no key of
            that channel).
        O_span, O_rest: normalised outputs ``(..., Tq, D)`` float32 (any value where ``L`` is -inf).
        steer_rows: bool broadcastable to ``L``: rows that SpotLight may move (the query mask).
        target: SpotLight's τ in (0, 1), or None; ``exact``: move the mass to exactly τ.

    Returns:
        ``(out (..., Tq, D) float32, span mass after steering (..., Tq) float32)``.
    """
    tot = torch.logaddexp(L_span, L_rest)
    seen = ~torch.isneginf(tot)
    safe_tot = torch.where(seen, tot, torch.zeros_like(tot))
    p = torch.where(seen, torch.exp(L_span - safe_tot), torch.zeros_like(tot))
    w_span = p
    if target is not None:
        tau = float(target)
        move = seen & ~torch.isneginf(L_span) & (p < tau) & steer_rows
        moved = torch.full_like(p, tau) if exact else tau / (tau + (1 - p))
        w_span = torch.where(move, moved, p)
    w_rest = torch.where(seen, 1 - w_span, torch.zeros_like(p))
    span_part = torch.where((w_span > 0)[..., None], O_span, torch.zeros_like(O_span))
    rest_part = torch.where((w_rest > 0)[..., None], O_rest, torch.zeros_like(O_rest))
    return w_span[..., None] * span_part + w_rest[..., None] * rest_part, w_span
