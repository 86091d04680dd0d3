"""SPA — Selective Prompt Anchoring (arXiv 2408.09121, ICML 2025): the logit-level baseline of the
prompt-highlighting methods.

At every step the model runs twice: on the prompt as it is (logits ``f(x)``) and on the prompt with
the anchor (the highlighted span) made invisible (``f(x∖a)``); the next-token logits are

    ω·f(x) + (1 − ω)·f(x∖a)  =  f(x) + (ω − 1)·(f(x) − f(x∖a))

so ω = 1 is the plain model, ω > 1 amplifies what the anchor contributes, 0 < ω < 1 damps it and
ω < 0 reverses it.

What the paper and its released code specify, and what is chosen here:

- *Masking the anchor.* The released code replaces the anchor text by a mask token and also sets
  the attention mask of those tokens to 0. Here the second pass sees the *same tokens* with the span's
  keys invisible (its attention mask is 0 on the span): no re-tokenisation, the same positions, and
  one span mask for every method of the library. Generated tokens are never hidden.
- *Probability modulation.* The released code (``modulated_by_prob``, on by default there) scales the
  adjustment of each token by its probability under ``f(x)`` divided by the largest one, for
  |ω| > 1. Offered as ``modulated=True``; off by default (the paper's formula).
- *Clamping.* The released code clamps the adjustment to ±1e3 (±1e2 modulated); kept (``clamp``).
- *How it runs: as a batch of two.* ``with attnsteer.steer(model, SPA(ω), spans=enc):`` replaces the
  model's forward by one over the batch doubled — rows ``0…B−1`` as they are, rows ``B…2B−1`` with the
  anchor hidden — in one KV cache of 2B rows, and returns the mixed logits of the B rows. So
  ``model.generate`` (greedy, sampling, streaming, pipelines), `attnsteer.generate` and the evaluation
  harness run SPA unchanged, and every logits processor and sampler sees SPA's logits as the model's.
  The prompt's two halves are forwarded apart and their caches stacked (a 2B-row prefill with a mask
  ran slower than two B-row ones on the CPU); after it, a decode step reads the weights once for both
  passes: on a CPU, where a step costs about what reading the weights costs, SPA decodes at close to
  the unsteered speed instead of half of it (``benchmarks/bench_keyedit.py``). Beam search raises (the
  beams would reorder the doubled cache).
- *Or as a logits processor.* `SPA.processor` is a `transformers.LogitsProcessor` for a
  ``logits_processor=[...]`` list: ``model.generate`` runs the main pass and the processor the
  anchored-out pass with its own cache — two forwards a step. It mixes after generate's own processors
  (e.g. ``min_new_tokens``'s end-of-sequence ban) rather than before them; greedy replies are the same
  as the batch of two except with ``modulated=True`` (whose token probabilities see that ban).
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["SPA", "SPAProcessor", "paired_forward"]


@dataclass(frozen=True)
class SPA:
    """Selective Prompt Anchoring.

    Args:
        omega: the anchoring strength ω (1 = unsteered; the released code's default is 1.5).
        modulated: scale each token's adjustment by its probability (relative to the most likely
            token), as the released code does by default for |ω| > 1.
        clamp: bound of the adjustment added to the logits (the released code's 1e3).

    Example:
        ```python
        enc = attnsteer.highlight(tok, "<<Answer in French.>> Name a fruit.")
        with attnsteer.steer(model, SPA(1.5), spans=enc):  # both passes as one batch of two
            out = model.generate(**enc, max_new_tokens=20)
        # or as a logits processor (two forwards a step):
        out = model.generate(**enc, logits_processor=[SPA(1.5).processor(model, enc)], max_new_tokens=20)
        ```

    Guide: ``docs/guides/methods.md`` (SPA).
    """

    omega: float = 1.5
    modulated: bool = False
    clamp: float = 1e3

    def __post_init__(self) -> None:
        import math

        if not math.isfinite(self.omega):
            raise ValueError(f"SPA omega must be finite; got {self.omega}")
        if not (self.clamp > 0):
            raise ValueError(f"SPA clamp must be > 0; got {self.clamp}")

    def mix(self, main: torch.Tensor, aux: torch.Tensor) -> torch.Tensor:
        """The anchored logits from the main logits ``(B, V)`` and the anchor-hidden ones ``(B, V)``.
        A token another processor ruled out (``-inf`` in ``main``, e.g. EOS under ``min_new_tokens``)
        stays ruled out."""
        m, a = main.float(), aux.float()
        ok = torch.isfinite(m) & torch.isfinite(a)
        diff = torch.where(ok, m - a, torch.zeros_like(m))
        w = self.omega - 1.0
        if self.modulated and abs(self.omega) > 1:
            p = torch.softmax(m, dim=-1).clamp(1e-6, 1.0)
            adj = (w / p.max(dim=-1, keepdim=True).values) * p * diff
            adj = adj.clamp(-min(self.clamp, 1e2), min(self.clamp, 1e2))
        else:
            adj = (w * diff).clamp(-self.clamp, self.clamp)
        return torch.where(torch.isfinite(m), m + adj, m).to(main.dtype)

    def processor(self, model, spans: Any) -> "SPAProcessor":
        """A logits processor for ``model.generate(**enc, logits_processor=[...])``: ``spans`` is the
        `attnsteer.highlight` encoding of the same batch (``input_ids``, ``attention_mask`` and its
        ``span_mask`` attribute)."""
        return SPAProcessor(self, model, spans)


class SPAProcessor:
    """The anchored-out pass of `SPA` as a ``transformers`` logits processor (see the module docstring).

    One processor serves one ``generate`` call: it keeps the second pass's cache."""

    def __init__(self, spa: SPA, model, spans: Any):
        ids, am = spans["input_ids"], spans.get("attention_mask")
        span = getattr(spans, "span_mask", None)
        if span is None:
            raise ValueError(
                "SPA needs the anchor as a span mask: pass the attnsteer.highlight(...) encoding "
                "(markup <<...>> or char_spans), not a plain tokenizer output"
            )
        if span.shape != ids.shape:
            raise ValueError(f"span_mask {tuple(span.shape)} must match input_ids {tuple(ids.shape)}")
        self.spa, self.model = spa, model
        self.prompt_len = ids.shape[1]
        self.ids = ids
        self.attn = torch.ones_like(ids) if am is None else am.to(ids.dtype)
        self.hidden = self.attn * (span == 0).to(ids.dtype)  # the anchor's keys invisible
        self.cache = None
        self.seen = 0  # tokens of the sequences the aux pass has consumed

    def _positions(self, attn: torch.Tensor) -> torch.Tensor:
        return (attn.long().cumsum(-1) - 1).clamp_min(0)

    @torch.no_grad()
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        B = input_ids.shape[0]
        if self.cache is None:
            if B != self.ids.shape[0]:
                if B % self.ids.shape[0]:
                    raise ValueError(f"SPA: the batch grew from {self.ids.shape[0]} to {B} rows, not a multiple")
                n = B // self.ids.shape[0]  # num_return_sequences: each prompt's rows side by side
                self.ids, self.attn, self.hidden = (
                    t.repeat_interleave(n, 0) for t in (self.ids, self.attn, self.hidden)
                )
            if not torch.equal(input_ids[:, : self.prompt_len], self.ids):
                raise ValueError(
                    "SPA: generate's sequences do not start with the prompt the processor was built for "
                    "(beam search and re-tokenised inputs are not supported)"
                )
            out = self.model(
                input_ids=input_ids,
                attention_mask=self._extend(self.hidden, input_ids.shape[1]),
                position_ids=self._positions(self._extend(self.attn, input_ids.shape[1])),
                use_cache=True,
                **self._last_logits_only(),
            )
        else:
            if B != self.ids.shape[0] or input_ids.shape[1] != self.seen + 1:
                raise ValueError(
                    "SPA: the sequences changed between steps (beam search reorders them): use greedy or sampling"
                )
            full = self._extend(self.attn, input_ids.shape[1])
            out = self.model(
                input_ids=input_ids[:, -1:],
                attention_mask=self._extend(self.hidden, input_ids.shape[1]),
                position_ids=self._positions(full)[:, -1:],
                past_key_values=self.cache,
                use_cache=True,
            )
        self.cache = out.past_key_values
        self.seen = input_ids.shape[1]
        aux = out.logits[:, -1, :].to(scores.device)
        return self.spa.mix(scores, aux)

    def _last_logits_only(self) -> dict:
        """``logits_to_keep=1`` where the model's forward takes it: the prompt pass then projects only its
        last position onto the vocabulary (all T of them cost T·d·V multiply-adds and a (B, T, V) tensor —
        about a quarter of Qwen2.5-0.5B's prefill, whose vocabulary has 152k tokens)."""
        import inspect

        try:
            params = inspect.signature(self.model.forward).parameters
        except (TypeError, ValueError):
            return {}
        return {"logits_to_keep": 1} if "logits_to_keep" in params else {}

    def _extend(self, mask: torch.Tensor, length: int) -> torch.Tensor:
        """The prompt's mask followed by ones for the generated tokens (never hidden)."""
        extra = length - mask.shape[1]
        if extra <= 0:
            return mask[:, :length]
        return torch.cat([mask, torch.ones(mask.shape[0], extra, dtype=mask.dtype, device=mask.device)], dim=1)


def paired_forward(spa: SPA, forward, span_mask: torch.Tensor):
    """``model.forward`` inside ``steer(model, spa, spans=enc)``: the batch of two (module docstring).

    Args:
        forward: the model's own forward.
        span_mask: ``(B, T)`` the anchor of each prompt row (nonzero = anchored).

    Returns a forward taking the model's keyword arguments for ``B`` rows (``input_ids (B, L)``, the
    attention mask ``(B, past + L)``, position ids, the cache); it runs ``2B`` rows and returns the
    mixed logits ``(B, L', V)``. The prompt forward (an empty cache) must cover the T prompt tokens; a
    batch ``k·B`` (``num_return_sequences``) repeats each row's anchor ``k`` times. The cache it returns
    holds 2B rows and remembers the anchor, so later steps hide it again."""
    T = span_mask.shape[1]

    @functools.wraps(forward)  # the model's signature: generate reads it (logits_to_keep, position_ids)
    def run(*args, **kw):
        if args:
            if len(args) > 1 or "input_ids" in kw:
                raise TypeError("steer(model, SPA): call the model with keyword arguments (input_ids=..., ...)")
            kw["input_ids"] = args[0]
        ids = kw.get("input_ids")
        if ids is None:
            raise ValueError("steer(model, SPA) needs input_ids (it doubles the batch); inputs_embeds is not supported")
        B, L = ids.shape
        cache = kw.get("past_key_values")
        past = _cache_length(cache)
        span = _anchor_rows(span_mask, cache, past, B, L, ids.device)
        am = _mask_2d(kw.get("attention_mask"), B, past + L, ids.device)
        hidden = am.clone()
        hidden[:, :T] = hidden[:, :T] * (span == 0).to(am.dtype)  # the anchor's keys invisible; never generated ones
        if past == 0 and _stackable(cache):
            # The prompt: two forwards of B rows, their caches then stacked into one of 2B rows. (One forward of
            # 2B rows costs more here: a 2B-row prefill with a mask is slower than two B-row ones on the CPU.)
            aux_cache = copy.deepcopy(cache)  # empty: the same layer types (sliding windows included)
            out = forward(**{**kw, "attention_mask": am})
            aux = forward(**{**kw, "attention_mask": hidden, "past_key_values": aux_cache})
            for a, b in zip(cache.layers, aux_cache.layers):
                a.keys, a.values = torch.cat([a.keys, b.keys]), torch.cat([a.values, b.values])
            logits = (out.logits, aux.logits)
        else:
            kw["input_ids"] = torch.cat([ids, ids])
            kw["attention_mask"] = torch.cat([am, hidden])
            if kw.get("position_ids") is not None:
                kw["position_ids"] = torch.cat([kw["position_ids"], kw["position_ids"]])
            out = forward(**kw)
            logits = (out.logits[:B], out.logits[B:])
        if getattr(out, "past_key_values", None) is not None:
            out.past_key_values._attnsteer_spa_anchor = span
        out.logits = spa.mix(*logits)
        return out

    return run


def _cache_length(cache) -> int:
    """Tokens already in ``cache`` (0: the prompt forward); a static cache is refused."""
    if any("Static" in type(x).__name__ for x in getattr(cache, "layers", None) or []):
        raise ValueError(
            "steer(model, SPA) doubles the batch in the KV cache, which a static cache sized for B rows cannot "
            "hold: drop cache_implementation='static' (the default dynamic cache works)"
        )
    return cache.get_seq_length() if cache is not None else 0


def _anchor_rows(span_mask: torch.Tensor, cache, past: int, B: int, L: int, device) -> torch.Tensor:
    """``(B, T)`` the anchor of each row: the span mask at the prompt forward (repeated for
    ``num_return_sequences``), the one the prompt forward left on the cache afterwards."""
    T = span_mask.shape[1]
    if past:
        span = getattr(cache, "_attnsteer_spa_anchor", None)
        if span is None or span.shape[0] != B:
            raise ValueError(
                "steer(model, SPA): this cache was not filled by SPA's prompt forward (or holds other rows); "
                "start from the prompt (model.generate does)"
            )
        return span
    if L != T:
        raise ValueError(
            f"steer(model, SPA): the prompt forward covers {L} tokens but the span mask {T}; pass the "
            "same encoding to steer(spans=enc) and to the model"
        )
    span = span_mask.to(device)
    if B != span.shape[0]:
        if B % span.shape[0]:
            raise ValueError(f"steer(model, SPA): {B} rows for {span.shape[0]} prompts (not a multiple)")
        span = span.repeat_interleave(B // span.shape[0], 0)
    return span


def _mask_2d(am, B: int, length: int, device) -> torch.Tensor:
    if am is None:
        return torch.ones(B, length, dtype=torch.long, device=device)
    if am.dim() != 2:
        raise ValueError(
            f"steer(model, SPA) hides the anchor through the 2-D attention mask (B, length); got {am.dim()}-D: "
            "pass the tokenizer's attention_mask"
        )
    return am


def _stackable(cache) -> bool:
    """An empty cache whose layers keep plain key / value tensors (full or sliding-window), so that the
    prompt's two halves can be written apart and stacked along the batch."""
    try:
        from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer
    except ImportError:  # a transformers without per-layer caches: one forward of 2B rows instead
        return False

    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(x) in (DynamicLayer, DynamicSlidingWindowLayer) for x in layers)
