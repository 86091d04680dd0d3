"""Forwards over DIRECTER's unsteered cache: prefill, single-token steps, and read-only views."""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Iterator, Optional

import torch

from ..methods import ForwardContext, Method
from ..ops import OpArgs

__all__ = ["RowLayers", "forward", "peek", "prefill", "positions"]


@dataclass
class RowLayers(Method):
    """``inner`` steering on a per-row set of layers: row b is steered at layer ℓ iff
    ``row_layers[b, ℓ]`` (a DIRECTER trial; ``row_layers=None`` steers nothing). The layer sets
    become a query mask inside `plan`, so one forward serves rows with different sets."""

    inner: Optional[Method] = None
    row_layers: Optional[torch.Tensor] = None  # (B, L) bool

    def __post_init__(self) -> None:
        super().__post_init__()
        # which layers any row steers, as Python bools (no device sync per layer)
        self._on = [] if self.row_layers is None else self.row_layers.any(0).tolist()

    def plan(self, layer_idx: int, ctx: ForwardContext) -> Optional[OpArgs]:
        if self.inner is None or layer_idx >= len(self._on) or not self._on[layer_idx]:
            return None
        args = self.inner.plan(layer_idx, ctx)
        if args is None:
            return None
        Tq = ctx.q_pos.shape[0]
        rows = ctx.expand_rows(self.row_layers[:, layer_idx], "the DIRECTER layer sets")[:, None].expand(ctx.batch, Tq)
        return args.replace(query_mask=rows if args.query_mask is None else args.query_mask & rows)

    def needs_span_mass(self) -> bool:
        return self.inner is not None and self.inner.needs_span_mass()

    def with_span_mass(self, args: OpArgs, mass: torch.Tensor, ctx: ForwardContext) -> OpArgs:
        return self.inner.with_span_mass(args, mass, ctx)


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids under left padding (as ``generate`` counts them)."""
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.masked_fill(attention_mask == 0, 1)


def forward(
    model,
    steering,
    ids: torch.Tensor,
    attention_mask: torch.Tensor,
    cache,
    row_layers: Optional[torch.Tensor] = None,
    method: Optional[Method] = None,
) -> torch.Tensor:
    """Last-position logits ``(B, V)`` float of one forward of ``ids`` ``(B, n)`` over ``cache``;
    ``row_layers`` ``(B, L)`` steers those rows/layers with ``method`` (default: the block's)."""
    trial = RowLayers(inner=method if method is not None else steering.method, row_layers=row_layers)
    with steering.use(trial):
        out = model(
            input_ids=ids,
            attention_mask=attention_mask,
            position_ids=positions(attention_mask)[:, -ids.shape[1] :],
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
    return out.logits[:, -1].float()


def prefill(model, steering, input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """A fresh cache holding the prompt without its last token (unsteered), so the first
    generated token can be steered."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    if input_ids.shape[1] > 1:
        with steering.prompt_prefix():  # the prompt one token short, on purpose
            forward(model, steering, input_ids[:, :-1], attention_mask[:, :-1], cache)
    return cache


@functools.cache
def _peek_layer_class():
    from transformers.cache_utils import DynamicLayer

    class PeekLayer(DynamicLayer):
        """The first ``length`` tokens of a cache layer; ``update`` returns them with the new
        K/V appended (one concatenation, as a normal append) and stores nothing."""

        def __init__(self, layer, length: int):
            super().__init__()
            self.keys = layer.keys[..., :length, :]
            self.values = layer.values[..., :length, :]
            self.dtype, self.device = layer.keys.dtype, layer.keys.device
            self.is_initialized = True

        def update(self, key_states, value_states, *args, **kwargs):
            return torch.cat([self.keys, key_states], dim=-2), torch.cat([self.values, value_states], dim=-2)

    return PeekLayer


@contextlib.contextmanager
def peek(cache, length: int) -> Iterator:
    """Run forwards over the first ``length`` cached tokens without changing the cache."""
    cls = _peek_layer_class()
    saved = list(cache.layers)
    cache.layers[:] = [cls(layer, length) for layer in saved]
    try:
        yield cache
    finally:
        cache.layers[:] = saved
