"""PASTA's head profiling (arXiv 2311.02262) on a few marked examples: which heads to steer.

PASTA steers a subset of heads chosen per task by steering one head at a time and keeping the
heads that help most. Here "help" is measured without generation, on examples that pair a
marked prompt with a reply that follows the marked instruction: the score of head (ℓ, h) is
the mean gain in log-likelihood per token of that reply when PASTA(α) steers that head alone,
over the unsteered model. One forward per layer and example scores all heads of the layer at
once (a batch with one row per head, each row steering its own head through a per-row bias).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Union

import torch

from ._plot import finish, pyplot
from .methods import ForwardContext, Method, prompt_rest
from .ops import OpArgs

__all__ = ["profile_heads", "HeadProfile"]


@dataclass
class _OneHeadPerRow(Method):
    """Row b < H steers head b of one layer with PASTA's down-weighting of the rest of the prompt; row H
    (the baseline) goes through the same op with a zero bias, so that every row is computed alike."""

    layer: int = 0
    num_heads: int = 1
    log_alpha: float = math.log(0.01)
    keep_sink: bool = False

    def plan(self, layer_idx: int, ctx: ForwardContext) -> Optional[OpArgs]:
        if layer_idx != self.layer:
            return None
        bias = ctx.memo(
            "one_head_per_row",
            lambda: torch.cat(
                [
                    torch.eye(ctx.num_heads, device=ctx.device) * self.log_alpha,
                    torch.zeros(1, ctx.num_heads, device=ctx.device),
                ]
            ),
        )
        return ctx.args(prompt_rest(ctx, self.keep_sink), bias=bias, phases=self.phases)


@dataclass
class HeadProfile:
    """``scores (L, Hq)``: mean log-likelihood gain per reply token when steering that head alone.

    Guide: ``docs/guides/influence.md`` (with a runnable example).
    """

    scores: torch.Tensor
    alpha: float

    def select(self, k: Optional[int] = None) -> Dict[int, List[int]]:
        """The ``k`` best heads with a positive score (default: as many as there are layers), as
        ``{layer: [heads]}`` for ``PASTA(heads=...)``."""
        L, H = self.scores.shape
        k = L if k is None else int(k)
        flat = self.scores.flatten()
        order = torch.argsort(flat, descending=True)[:k]
        out: Dict[int, List[int]] = {}
        for i in order.tolist():
            if flat[i] > 0:
                out.setdefault(i // H, []).append(i % H)
        return {l: sorted(h) for l, h in sorted(out.items())}

    def save(
        self, path: str, k: Optional[int] = None, provenance: Optional[Dict[str, Any]] = None
    ) -> Dict[int, List[int]]:
        """Write ``{"heads": {layer: [heads]}, "alpha", "scores"}`` (and ``"provenance"``, e.g. the model,
        its dtype and the command, when given) as JSON; returns the heads."""
        heads = self.select(k)
        data: Dict[str, Any] = {"heads": {str(l): h for l, h in heads.items()}, "alpha": self.alpha}
        if provenance:
            data["provenance"] = provenance
        data["scores"] = self.scores.tolist()
        with open(path, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
        return heads

    def plot(self, path: Optional[str] = None):
        plt = pyplot(path)

        fig, ax = plt.subplots(figsize=(4.2, 4.2), constrained_layout=True)
        v = float(self.scores.abs().max()) or 1.0
        im = ax.imshow(self.scores.numpy(), aspect="auto", origin="lower", cmap="RdBu", vmin=-v, vmax=v)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_title(f"PASTA(α={self.alpha:g}) one head at a time: Δ log p per token", fontsize=8)
        fig.colorbar(im, ax=ax, shrink=0.8)
        return finish(fig, path, tight=False)


def _reply_logp(model, enc, target_ids: torch.Tensor, rows: int) -> torch.Tensor:
    """Mean log p of ``target_ids`` after the prompt, per row (prompt forward, then the reply over the cache)."""
    from transformers import DynamicCache

    ids = enc["input_ids"].expand(rows, -1)
    am = enc["attention_mask"].expand(rows, -1)
    cache = DynamicCache(config=model.config)
    first = model(input_ids=ids, attention_mask=am, past_key_values=cache, use_cache=True).logits[:, -1:]
    tgt = target_ids.to(ids.device).expand(rows, -1)
    am2 = torch.cat([am, torch.ones_like(tgt)], 1)
    rest = (
        model(input_ids=tgt[:, :-1], attention_mask=am2[:, :-1], past_key_values=cache, use_cache=True).logits
        if tgt.shape[1] > 1
        else first[:, :0]
    )
    logits = torch.cat([first, rest], 1).float()
    return torch.log_softmax(logits, -1).gather(-1, tgt[..., None])[..., 0].mean(-1)


@torch.no_grad()
def profile_heads(
    model,
    tokenizer,
    examples: Sequence[Union[Dict[str, Any], Sequence[Any]]],
    *,
    alpha: float = 0.01,
    keep_sink: bool = False,
    progress: bool = True,
) -> HeadProfile:
    """Score every head for PASTA on ``examples``.

    Args:
        examples: ``{"prompt": marked prompt or chat messages, "target": a reply that follows
            the marked instruction}`` (or ``(prompt, target)`` pairs).
        alpha: PASTA's factor on the rest of the prompt (0.01 in the paper).

    Returns:
        `HeadProfile`; ``.select(k)`` gives ``{layer: [heads]}`` for ``PASTA(heads=...)``,
        ``.save(path)`` writes it as JSON.

    Guide: ``docs/guides/influence.md`` (with a runnable example).
    """
    from ._progress import tqdm
    from .hf import num_layers, steer
    from .spans import highlight

    if not examples:
        raise ValueError("profile_heads needs at least one (prompt, target) example")
    if not (0 < alpha < 1):
        raise ValueError(f"alpha is PASTA's down-weighting factor in (0, 1); got {alpha}")
    L = num_layers(model)
    H = model.config.num_attention_heads
    scores = torch.zeros(L, H)
    bar = tqdm(total=len(examples) * L, desc="profiling heads", unit="layer", disable=not progress)
    for ex in examples:
        prompt, target = (ex["prompt"], ex["target"]) if isinstance(ex, dict) else ex
        enc = highlight(tokenizer, prompt)
        target_ids = tokenizer(target, add_special_tokens=False, return_tensors="pt")["input_ids"]
        if target_ids.shape[1] == 0:
            raise ValueError("an example's target reply is empty")
        for layer in range(L):
            # The baseline is row H of the same batch (see _OneHeadPerRow): a separate batch-1 SDPA forward
            # rounds apart in bfloat16 by about a head's effect (0.006–0.02 nats/token).
            method = _OneHeadPerRow(layer=layer, num_heads=H, log_alpha=math.log(alpha), keep_sink=keep_sink)
            spans = enc.span_mask.expand(H + 1, -1)
            with steer(model, method, spans=spans):
                lp = _reply_logp(model, enc, target_ids, H + 1).cpu()
            scores[layer] += lp[:H] - lp[H]
            bar.update(1)
    bar.close()
    return HeadProfile(scores / len(examples), alpha)
