"""DIRECTER's plausibility-guided decoding (arXiv 2603.06745); the per-step algorithm is in the
package docstring (`attnsteer.directer`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch

from ..methods import KeyScale, Method
from .cache import forward, peek, prefill
from .ranking import LayerRanking, rank_after_prefill

__all__ = ["Directer", "DirecterStats"]


@dataclass
class DirecterStats:
    """What DIRECTER did in one generation, summed over rows.

    Attributes:
        steps: tokens decided (rows × steps, finished rows excluded).
        gated: steps where the top-2 gate emitted the raw argmax without a trial.
        steered: steps that ran at least one steered trial.
        accepted: ``{number of layers: steps accepted with that many layers}``.
        fallbacks: steps where every trial was rejected (raw argmax emitted).
        trials: steered forwards run (a forward covers the whole batch; counted per row here).
        forwards: model forwards run after the prefill (raw + trial + ranking), for the batch.

    Guide: ``docs/guides/directer.md`` (with a runnable example).
    """

    steps: int = 0
    gated: int = 0
    steered: int = 0
    accepted: Dict[int, int] = field(default_factory=dict)
    fallbacks: int = 0
    trials: int = 0
    forwards: int = 0

    @property
    def gated_fraction(self) -> float:
        return self.gated / self.steps if self.steps else 0.0

    def __str__(self) -> str:
        acc = ", ".join(f"{n} layers: {c}" for n, c in sorted(self.accepted.items(), reverse=True)) or "none"
        return (
            f"DIRECTER: {self.steps} steps, {self.gated} gated ({100 * self.gated_fraction:.0f}%), "
            f"{self.steered} steered (accepted — {acc}; {self.fallbacks} fell back), {self.trials} trials"
        )


def _layer_counts(L: int, max_trials: int) -> List[int]:
    """Layers kept at trial k: L, ⌊L/2⌋, ⌊L/4⌋, … — never one layer, at most max_trials tries."""
    counts, k = [], 0
    while len(counts) < max_trials:
        n = L // (2**k)
        if n < 2:
            break
        counts.append(n)
        k += 1
    return counts


@dataclass
class Directer:
    """DIRECTER decoding (arXiv 2603.06745).

    Args:
        alpha: key scale of the span on the candidate layers (paper: 100).
        beta: plausibility threshold on the raw distribution (paper: 0.5).
        max_trials: steered tries per step before falling back to the raw argmax (paper: 10).
        method: the steering applied in a trial; None = key scaling by ``alpha`` (the paper).
            Any method works: ``Directer(method=GUIDE(2.0))``. Its ``layers``/``phases`` are
            replaced by DIRECTER's layer schedule and the current token.
        ranking: a `LayerRanking` (or a layer order) to reuse; None ranks every prompt
            once after the prefill with `rank_layers`.
        ranking_variant: ``"paper"`` or ``"released"`` (see `rank_layers`).

    Use it as ``model.generate(**enc, custom_generate=Directer(), spans=enc)`` or through
    `attnsteer.generate`. Greedy by default; ``do_sample=True`` samples behind the same gate.

    Results of the last call (not configuration: not constructor arguments, not compared, not in
    the repr): ``stats`` — its `DirecterStats`; ``last_ranking`` — its `LayerRanking`.

    Example:
        ```python
        d = attnsteer.Directer(alpha=100, beta=0.5)
        ids = model.generate(**enc, custom_generate=d, spans=enc, max_new_tokens=64)
        print(d.stats)
        ```

    Guide: ``docs/guides/directer.md``.
    """

    alpha: float = 100.0
    beta: float = 0.5
    max_trials: int = 10
    method: Optional[Method] = None
    ranking: Optional[Any] = None
    ranking_variant: str = "paper"
    stats: Optional[DirecterStats] = field(default=None, init=False, repr=False, compare=False)
    last_ranking: Optional[LayerRanking] = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not (self.alpha > 0 and float(self.alpha) < float("inf")):
            raise ValueError(f"Directer.alpha must be a positive finite number; got {self.alpha}")
        if not 0.0 < self.beta <= 1.0:
            raise ValueError(f"Directer.beta must be in (0, 1]; got {self.beta}")
        if int(self.max_trials) < 1:
            raise ValueError(f"Directer.max_trials must be >= 1; got {self.max_trials}")
        if self.method is not None and not isinstance(self.method, Method):
            raise TypeError(
                f"Directer.method must be an attnsteer method (GUIDE, SpotLight, …); got {type(self.method).__name__}"
            )
        if self.ranking_variant not in ("paper", "released"):
            raise ValueError(f"ranking_variant must be 'paper' or 'released'; got {self.ranking_variant!r}")

    def trial_method(self) -> Method:
        """The method a trial applies (on DIRECTER's layers, to the current token only)."""
        base = self.method if self.method is not None else KeyScale(self.alpha)
        return dataclasses.replace(base, layers=None, phases="both")

    # transformers calls this as ``decoding_method(model, input_ids, logits_processor=..., ...)``
    def __call__(
        self,
        model,
        input_ids: torch.LongTensor,
        logits_processor=None,
        stopping_criteria=None,
        generation_config=None,
        synced_gpus: bool = False,
        streamer=None,
        spans: Any = None,
        ranking: Any = None,
        **model_kwargs,
    ) -> torch.LongTensor:
        """DIRECTER decoding; ``spans`` is the encoding from `attnsteer.highlight`
        (or a ``(B, T)`` span mask) aligned with ``input_ids``. Returns ``(B, T + new)`` ids."""
        if generation_config is not None:
            if getattr(generation_config, "num_beams", 1) not in (1, None):
                raise NotImplementedError("DIRECTER decodes one token per step (greedy or sampling); pass num_beams=1")
            if getattr(generation_config, "return_dict_in_generate", False):
                raise NotImplementedError(
                    "DIRECTER returns token ids; statistics are in Directer.stats (pass return_dict_in_generate=False)"
                )
        pkv = model_kwargs.get("past_key_values")
        if pkv is not None and pkv.get_seq_length() > 0:
            raise NotImplementedError("DIRECTER prefills the prompt itself; do not pass past_key_values")
        if streamer is None:
            streamer = _streamer_from_generate()
        attention_mask = model_kwargs.get("attention_mask")
        return _decode(
            self,
            model,
            input_ids,
            attention_mask,
            spans,
            ranking if ranking is not None else self.ranking,
            logits_processor,
            stopping_criteria,
            generation_config,
            streamer,
        )


def _streamer_from_generate():
    """transformers 5.x drops ``streamer`` (and ``synced_gpus``) when ``custom_generate`` is a
    callable (``_extract_generation_mode_kwargs`` keeps only the callable's new keywords), so
    ``model.generate(..., custom_generate=Directer(), streamer=s)`` would silently not stream.
    Recover it from the calling ``generate`` frame; tests check that streaming works."""
    import sys

    frame = sys._getframe(2)
    for _ in range(4):
        if frame is None:
            break
        if frame.f_code.co_name == "generate" and "custom_generate" in frame.f_locals:
            return frame.f_locals.get("streamer")
        frame = frame.f_back
    return None


def span_mask_for(spans: Any, input_ids: torch.Tensor) -> torch.Tensor:
    if spans is None:
        raise ValueError(
            "DIRECTER needs the highlighted span: pass spans=enc (the encoding from attnsteer.highlight) "
            "to model.generate(..., custom_generate=Directer(), spans=enc)"
        )
    span = getattr(spans, "span_mask", spans)
    if not isinstance(span, torch.Tensor) or span.dim() != 2:
        raise TypeError("spans must be the encoding from attnsteer.highlight(...) or a (B, T) span mask")
    if span.shape != input_ids.shape:
        raise ValueError(
            f"the span mask is {tuple(span.shape)} but input_ids are {tuple(input_ids.shape)}; "
            "pass the encoding the model is given (same prompts, same padding)"
        )
    empty = [i for i in range(span.shape[0]) if not bool((span[i] != 0).any())]
    if empty:
        raise ValueError(
            f"rows {empty} have no highlighted tokens, so DIRECTER has nothing to steer; "
            "mark the instruction with <<...>> (or highlight_messages=...) in every prompt"
        )
    return span.to(input_ids.device).float()


def check_model(model, total_length: int) -> None:
    """Sliding-window limit; whether the model is supported at all is checked by steer()."""
    cfg = getattr(model.config, "text_config", None) or model.config
    window = getattr(cfg, "sliding_window", None)
    types = getattr(cfg, "layer_types", None) or []
    sliding = window is not None and (not types or any("sliding" in t for t in types))
    if sliding and total_length > int(window):
        raise NotImplementedError(
            f"DIRECTER on a sliding-window model (window {window}) is only supported while prompt + new tokens "
            f"({total_length}) fit in the window: a trial re-runs the newest token over the cache as it was before "
            "that token, which a sliding cache has already shifted. Shorten the prompt or max_new_tokens"
        )


class _Decoder:
    """One DIRECTER generation: set-up (prefill, ranking, layer schedule), then per step the
    raw pass, the top-2 gate, trial rounds for the pending rows, and the emitted token."""

    def __init__(
        self,
        d: Directer,
        model,
        steering,
        input_ids,
        attention_mask,
        ranking,
        logits_processor,
        stopping_criteria,
        generation_config,
        streamer,
    ):
        from ..hf import num_layers

        B, T = input_ids.shape
        self.model, self.steering, self.streamer = model, steering, streamer
        self.logits_processor, self.stopping_criteria = logits_processor, stopping_criteria
        self.max_length = getattr(generation_config, "max_length", None) or T + 20
        self.L = num_layers(model) or 0
        self.counts = _layer_counts(self.L, int(d.max_trials))
        if not self.counts:
            raise ValueError(
                f"DIRECTER needs a model with at least 2 layers (never steers a single layer); got {self.L}"
            )
        pad = getattr(generation_config, "_pad_token_tensor", None)
        self.pad_id = int(pad) if pad is not None else (getattr(generation_config, "pad_token_id", None) or 0)
        self.sample = bool(getattr(generation_config, "do_sample", False))
        self.beta = float(d.beta)
        self.stats = DirecterStats()
        self.ids, self.am = input_ids, attention_mask
        self.cache = prefill(model, steering, input_ids, attention_mask)
        self.ranking = self._ranking(d, ranking, B)
        order = self.ranking._rows(B).to(input_ids.device)
        if order.shape[1] != self.L:
            raise ValueError(f"the layer ranking covers {order.shape[1]} layers but the model has {self.L}")
        self.ranks = torch.empty_like(order)  # ranks[b, layer] = position of layer in row b's ranking
        self.ranks.scatter_(1, order, torch.arange(self.L, device=input_ids.device).expand(B, self.L).contiguous())
        self.layer_counts = torch.tensor(self.counts, device=input_ids.device)
        self.unfinished = torch.ones(B, dtype=torch.bool, device=input_ids.device)

    def _ranking(self, d: Directer, ranking, B: int) -> LayerRanking:
        if ranking is None:
            rk = rank_after_prefill(
                self.model, self.steering, self.cache, self.ids[:, -1:], self.am, d.ranking_variant, False
            )
            self.stats.forwards += self.L + 1
            return rk
        if isinstance(ranking, LayerRanking):
            return ranking
        return LayerRanking.from_order(ranking, B)

    def _scores(self, logits: torch.Tensor) -> torch.Tensor:
        return self.logits_processor(self.ids, logits) if self.logits_processor is not None else logits

    def raw_step(self) -> torch.Tensor:
        """The newest token, unsteered; its K/V stay in the cache. Returns the processed scores."""
        logits = forward(self.model, self.steering, self.ids[:, -1:], self.am, self.cache)
        self.stats.forwards += 1
        return self._scores(logits)

    def gate(self, raw_scores: torch.Tensor):
        """The raw choice and the rows whose second token is plausible (``p2 >= beta * p1``)."""
        p = raw_scores.softmax(-1)
        top = p.topk(2, dim=-1)
        choice = torch.multinomial(p, 1)[:, 0] if self.sample else top.indices[:, 0].clone()
        pending = self.unfinished & (top.values[:, 1] >= self.beta * top.values[:, 0])
        s = self.stats
        s.steps += int(self.unfinished.sum())
        s.gated += int((self.unfinished & ~pending).sum())
        s.steered += int(pending.sum())
        return p, top.values[:, 0], choice, pending

    def trial_round(self, p, p_star, choice, pending, trial, length: int):
        """One steered forward for every pending row, each with its own layer set; a row accepts
        the steered token when it is plausible under the raw distribution, otherwise halves its
        layers for the next round, or falls back after the last."""
        n_layers = self.layer_counts[trial.clamp_max(len(self.counts) - 1)]
        row_layers = (self.ranks < n_layers[:, None]) & pending[:, None]
        with peek(self.cache, length):
            s_logits = forward(self.model, self.steering, self.ids[:, -1:], self.am, self.cache, row_layers)
        s = self.stats
        s.forwards += 1
        s.trials += int(pending.sum())
        s_scores = self._scores(s_logits)
        s_arg = torch.multinomial(s_scores.softmax(-1), 1)[:, 0] if self.sample else s_scores.argmax(-1)
        ok = pending & (p.gather(1, s_arg[:, None])[:, 0] >= self.beta * p_star)
        for n in n_layers[ok].tolist():
            s.accepted[n] = s.accepted.get(n, 0) + 1
        choice = torch.where(ok, s_arg, choice)
        pending = pending & ~ok
        trial = trial + pending.long()
        out_of_tries = pending & (trial >= len(self.counts))
        s.fallbacks += int(out_of_tries.sum())
        return choice, pending & ~out_of_tries, trial

    def emit(self, choice: torch.Tensor, raw_scores: torch.Tensor) -> bool:
        """Append the chosen tokens (pad for finished rows); True while any row is unfinished."""
        B = choice.shape[0]
        choice = torch.where(self.unfinished, choice, torch.full_like(choice, self.pad_id))
        self.ids = torch.cat([self.ids, choice[:, None]], dim=-1)
        self.am = torch.cat([self.am, self.am.new_ones(B, 1)], dim=-1)
        if self.streamer is not None:
            self.streamer.put(choice.cpu())
        if self.stopping_criteria is not None:
            self.unfinished = self.unfinished & ~self.stopping_criteria(self.ids, raw_scores).to(self.unfinished.device)
        return bool(self.unfinished.any()) and self.ids.shape[1] < self.max_length

    def step(self) -> bool:
        raw_scores = self.raw_step()
        p, p_star, choice, pending = self.gate(raw_scores)
        trial = torch.zeros_like(choice)
        length = self.cache.get_seq_length() - 1
        while bool(pending.any()):
            choice, pending, trial = self.trial_round(p, p_star, choice, pending, trial, length)
        return self.emit(choice, raw_scores)


def _decode(
    d: Directer,
    model,
    input_ids,
    attention_mask,
    spans,
    ranking,
    logits_processor,
    stopping_criteria,
    generation_config,
    streamer,
) -> torch.LongTensor:
    from ..hf import active
    from ..hf import steer as steer_ctx

    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    span = span_mask_for(spans, input_ids)
    check_model(model, getattr(generation_config, "max_length", None) or input_ids.shape[1] + 20)
    d.stats = None
    with steer_ctx(model, d.trial_method(), spans=span):
        dec = _Decoder(
            d,
            model,
            active(model),
            input_ids,
            attention_mask,
            ranking,
            logits_processor,
            stopping_criteria,
            generation_config,
            streamer,
        )
        d.stats, d.last_ranking = dec.stats, dec.ranking
        # (model.generate already put the prompt into the streamer)
        while dec.step():
            pass
    if streamer is not None:
        streamer.end()
    return dec.ids
