"""DIRECTER (arXiv 2603.06745): layer-sensitivity ranking and plausibility-guided decoding.

Per step (arXiv 2603.06745, as the authors' code does it):

1. raw forward of the newest token — its K/V go into the cache, which is always the unsteered one;
2. top-2 gate on the raw distribution p: if ``p(second) < beta * p(first)`` no other token can be
   plausible, so the raw argmax is emitted without steering;
3. otherwise a *trial*: the same token again, over the same cache, with the span keys scaled by
   ``alpha`` (or any other method) on a set of candidate layers — inside the attention op, so the
   cache is neither copied nor edited; the trial's own K/V are thrown away;
4. accept the steered argmax ĩ if ``p(ĩ) >= beta * p(i*)``; else keep the ⌊L/2^k⌋ most sensitive
   layers and retry (never a single layer, at most ``max_trials``), then fall back to i*.

The prompt is prefilled without its last token, so the first generated token can be steered.
Every row of a batch decides on its own (per-row layer sets through per-row query masks), and
rows finish independently.

Usage::

    enc = attnsteer.highlight(tok, messages)
    ids = model.generate(**enc, custom_generate=attnsteer.Directer(), spans=enc, max_new_tokens=64)
    # or: attnsteer.generate(model, tok, messages, method=attnsteer.Directer(), max_new_tokens=64)
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Union

import torch

from .methods import KeyScale, Method

__all__ = ["Directer", "DirecterStats", "LayerRanking", "rank_layers"]


# ----------------------------------------------------------------------------- ranking
@dataclass
class LayerRanking:
    """Layer sensitivity per prompt row.

    Attributes:
        sensitivity: ``(B, L)`` float — higher = steering this layer moves the model more.
        order: ``(B, L)`` long — layer indices by descending sensitivity.
        variant: ``"paper"`` or ``"released"`` (see :func:`rank_layers`).
    """

    sensitivity: torch.Tensor
    order: torch.Tensor
    variant: str = "paper"

    @classmethod
    def from_order(cls, order: Union[Sequence[int], torch.Tensor], batch: int = 1) -> "LayerRanking":
        """A fixed ranking (e.g. computed once per model) shared by every row."""
        o = torch.as_tensor(order, dtype=torch.long)
        if o.dim() == 1:
            o = o[None].expand(batch, -1)
        L = o.shape[1]
        if not torch.equal(o.sort(dim=1).values, torch.arange(L).expand_as(o)):
            raise ValueError(f"a layer ranking must be a permutation of 0..{L - 1} per row; got {o.tolist()}")
        sens = torch.empty(o.shape, dtype=torch.float32)
        sens.scatter_(1, o, torch.arange(L, 0, -1, dtype=torch.float32).expand_as(o).contiguous())
        return cls(sens, o.contiguous(), "given")

    def mean(self) -> "LayerRanking":
        """One ranking shared by every row (mean sensitivity over the rows), e.g. to rank a model
        once on a few prompts and reuse it with ``Directer(ranking=...)`` for any batch size."""
        sens = self.sensitivity.float().mean(dim=0, keepdim=True)
        return LayerRanking(sens, sens.argsort(dim=1, descending=True, stable=True), self.variant)

    def plot(self, row: int = 0, ax=None, path: Optional[str] = None):
        """Bar chart of the sensitivity of every layer (``row`` of the batch); saved to ``path`` if given."""
        import matplotlib

        if ax is None and path is not None:
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig = None
        if ax is None:
            fig, ax = plt.subplots(figsize=(8, 3))
        s = self.sensitivity[row].float().cpu()
        top = set(self.order[row, : max(2, len(s) // 2)].tolist())
        ax.bar(range(len(s)), s.numpy(), color=["tab:orange" if i in top else "tab:blue" for i in range(len(s))])
        ax.set_xlabel("layer")
        ax.set_ylabel("sensitivity")
        ax.set_title(f"DIRECTER layer sensitivity ({self.variant}); orange = top half")
        if path is not None:
            (fig or ax.figure).savefig(path, dpi=120, bbox_inches="tight")
        return ax

    def _rows(self, batch: int) -> torch.Tensor:
        o = self.order
        if o.shape[0] == batch:
            return o
        if o.shape[0] == 1:
            return o.expand(batch, -1)
        raise ValueError(f"the layer ranking has {o.shape[0]} rows but the batch has {batch}")


def _cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return 1.0 - torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)


def _sensitivity(pre0: torch.Tensor, post0: torch.Tensor, pre: torch.Tensor, post: torch.Tensor,
                 variant: str) -> torch.Tensor:
    """pre0/post0: (L, B, d) unperturbed; pre/post: (L_perturbed, L, B, d). Returns (B, L)."""
    base = _cosine_distance(pre0, post0)  # (L, B)
    cross_post = _cosine_distance(pre0[None], post)  # d(H_pre^j, H_post^{j,l})  (l, j, B)
    cross_pre = _cosine_distance(pre, post0[None])  # d(H_pre^{j,l}, H_post^j)
    if variant == "paper":
        D = (cross_post - base[None]) + (cross_pre - base[None])
        return D.mean(dim=1).transpose(0, 1).float()  # mean over measured layers j -> score of l
    D = (cross_post + cross_pre).clamp_min(0)  # released code: no baseline, clamped,
    return D.mean(dim=0).transpose(0, 1).float()  # averaged over perturbed layers l -> score of j


# ----------------------------------------------------------------------------- cache views
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
def _peek(cache, length: int):
    """Run forwards over the first ``length`` cached tokens without changing the cache."""
    cls = _peek_layer_class()
    saved = list(cache.layers)
    cache.layers[:] = [cls(layer, length) for layer in saved]
    try:
        yield cache
    finally:
        cache.layers[:] = saved


# ----------------------------------------------------------------------------- the loop
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
        return (f"DIRECTER: {self.steps} steps, {self.gated} gated ({100 * self.gated_fraction:.0f}%), "
                f"{self.steered} steered (accepted — {acc}; {self.fallbacks} fell back), {self.trials} trials")


def _layer_counts(L: int, max_trials: int) -> List[int]:
    """Layers kept at trial k: L, ⌊L/2⌋, ⌊L/4⌋, … — never one layer, at most max_trials tries."""
    counts, k = [], 0
    while len(counts) < max_trials:
        n = L // (2 ** k)
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
        steer: the steering applied in a trial; None = key scaling by ``alpha`` (the paper).
            Any method works: ``Directer(steer=GUIDE(2.0))``. Its ``layers``/``phases`` are
            replaced by DIRECTER's layer schedule and the current token.
        ranking: a :class:`LayerRanking` (or a layer order) to reuse; None ranks every prompt
            once after the prefill with :func:`rank_layers`.
        ranking_variant: ``"paper"`` or ``"released"`` (see :func:`rank_layers`).

    Use it as ``model.generate(**enc, custom_generate=Directer(), spans=enc)`` or through
    :func:`attnsteer.generate`. Greedy by default; ``do_sample=True`` samples behind the same gate. ``stats`` holds the last generation's
    :class:`DirecterStats`, ``last_ranking`` its :class:`LayerRanking`.
    """

    alpha: float = 100.0
    beta: float = 0.5
    max_trials: int = 10
    steer: Optional[Method] = None
    ranking: Optional[Any] = None
    ranking_variant: str = "paper"
    stats: Optional[DirecterStats] = field(default=None, repr=False, compare=False)
    last_ranking: Optional[LayerRanking] = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not (self.alpha > 0 and float(self.alpha) < float("inf")):
            raise ValueError(f"Directer.alpha must be a positive finite number; got {self.alpha}")
        if not 0.0 < self.beta <= 1.0:
            raise ValueError(f"Directer.beta must be in (0, 1]; got {self.beta}")
        if int(self.max_trials) < 1:
            raise ValueError(f"Directer.max_trials must be >= 1; got {self.max_trials}")
        if self.steer is not None and not isinstance(self.steer, Method):
            raise TypeError(f"Directer.steer must be an attnsteer method (GUIDE, SpotLight, …); got {type(self.steer).__name__}")
        if self.ranking_variant not in ("paper", "released"):
            raise ValueError(f"ranking_variant must be 'paper' or 'released'; got {self.ranking_variant!r}")

    def trial_method(self) -> Method:
        """The method a trial applies (on DIRECTER's layers, to the current token only)."""
        base = self.steer if self.steer is not None else KeyScale(self.alpha)
        return dataclasses.replace(base, layers=None, phases="both")

    # transformers calls this as ``decoding_method(model, input_ids, logits_processor=..., ...)``
    def __call__(self, model, input_ids: torch.LongTensor, logits_processor=None, stopping_criteria=None,
                 generation_config=None, synced_gpus: bool = False, streamer=None, spans: Any = None,
                 ranking: Any = None, **model_kwargs) -> torch.LongTensor:
        """DIRECTER decoding; ``spans`` is the encoding from :func:`attnsteer.highlight`
        (or a ``(B, T)`` span mask) aligned with ``input_ids``. Returns ``(B, T + new)`` ids."""
        if generation_config is not None:
            if getattr(generation_config, "num_beams", 1) not in (1, None):
                raise NotImplementedError("DIRECTER decodes one token per step (greedy or sampling); pass num_beams=1")
            if getattr(generation_config, "return_dict_in_generate", False):
                raise NotImplementedError("DIRECTER returns token ids; statistics are in Directer.stats "
                                          "(pass return_dict_in_generate=False)")
        pkv = model_kwargs.get("past_key_values")
        if pkv is not None and pkv.get_seq_length() > 0:
            raise NotImplementedError("DIRECTER prefills the prompt itself; do not pass past_key_values")
        if streamer is None:
            streamer = _streamer_from_generate()
        attention_mask = model_kwargs.get("attention_mask")
        return _directer_loop(self, model, input_ids, attention_mask, spans, ranking if ranking is not None else self.ranking,
                              logits_processor, stopping_criteria, generation_config, streamer)


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


def _span_mask_for(spans: Any, input_ids: torch.Tensor) -> torch.Tensor:
    if spans is None:
        raise ValueError("DIRECTER needs the highlighted span: pass spans=enc (the encoding from attnsteer.highlight) "
                         "to model.generate(..., custom_generate=Directer(), spans=enc)")
    span = getattr(spans, "span_mask", spans)
    if not isinstance(span, torch.Tensor) or span.dim() != 2:
        raise TypeError("spans must be the encoding from attnsteer.highlight(...) or a (B, T) span mask")
    if span.shape != input_ids.shape:
        raise ValueError(f"the span mask is {tuple(span.shape)} but input_ids are {tuple(input_ids.shape)}; "
                         "pass the encoding the model is given (same prompts, same padding)")
    empty = [i for i in range(span.shape[0]) if not bool((span[i] != 0).any())]
    if empty:
        raise ValueError(f"rows {empty} have no highlighted tokens, so DIRECTER has nothing to steer; "
                         "mark the instruction with <<...>> (or highlight_messages=...) in every prompt")
    return span.to(input_ids.device).float()


def _check_model(model, total_length: int) -> None:
    """Sliding-window limit; whether the model is supported at all is checked by steer()."""
    cfg = getattr(model.config, "text_config", None) or model.config
    window = getattr(cfg, "sliding_window", None)
    types = getattr(cfg, "layer_types", None) or []
    sliding = window is not None and (not types or any("sliding" in t for t in types))
    if sliding and total_length > int(window):
        raise NotImplementedError(
            f"DIRECTER on a sliding-window model (window {window}) is only supported while prompt + new tokens "
            f"({total_length}) fit in the window: a trial re-runs the newest token over the cache as it was before "
            "that token, which a sliding cache has already shifted. Shorten the prompt or max_new_tokens")


def _positions(attention_mask: torch.Tensor) -> torch.Tensor:
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.masked_fill(attention_mask == 0, 1)


def _forward(model, state, ids, attention_mask, cache, row_layers=None) -> torch.Tensor:
    """One forward of ``ids`` (B, n) over ``cache``; ``row_layers`` (B, L) picks steered rows/layers."""
    state.row_layers = row_layers
    state.layer_on = [False] * state.num_layers if row_layers is None else row_layers.any(0).tolist()
    try:
        out = model(input_ids=ids, attention_mask=attention_mask, position_ids=_positions(attention_mask)[:, -ids.shape[1]:],
                    past_key_values=cache, use_cache=True, logits_to_keep=1)
    finally:
        state.row_layers, state.layer_on = None, None
    return out.logits[:, -1].float()


def _rank_after_prefill(model, state, cache, token, attention_mask, variant: str, progress: bool) -> LayerRanking:
    """Sensitivity of every layer, from L + 1 single-token forwards of ``token`` over the prefill cache."""
    from tqdm.auto import tqdm

    from .hf import _attention_modules

    L, B = state.num_layers, token.shape[0]
    modules = {m.layer_idx: m for m in _attention_modules(model)}
    captured: Dict[int, tuple] = {}

    def hook(module, args, kwargs, output):
        h = kwargs.get("hidden_states", args[0] if args else None)
        captured[module.layer_idx] = (h[:, -1].detach(), output[0][:, -1].detach())

    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in modules.values()]
    length = cache.get_seq_length()
    try:
        def run(row_layers):
            captured.clear()
            with _peek(cache, length):
                _forward(model, state, token, attention_mask, cache, row_layers)
            pre = torch.stack([captured[j][0] for j in range(L)])
            post = torch.stack([captured[j][1] for j in range(L)])
            return pre, post

        pre0, post0 = run(None)
        pres, posts = [], []
        for layer in tqdm(range(L), desc="ranking layers", disable=not progress):
            one = torch.zeros(B, L, dtype=torch.bool, device=token.device)
            one[:, layer] = True
            pre, post = run(one)
            pres.append(pre)
            posts.append(post)
    finally:
        for h in handles:
            h.remove()
    sens = _sensitivity(pre0, post0, torch.stack(pres), torch.stack(posts), variant).cpu()
    return LayerRanking(sens, sens.argsort(dim=1, descending=True, stable=True), variant)


def _prefill(model, state, input_ids, attention_mask):
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    if input_ids.shape[1] > 1:
        state.allow_prefix = True  # the prompt one token short, on purpose
        try:
            _forward(model, state, input_ids[:, :-1], attention_mask[:, :-1], cache)
        finally:
            state.allow_prefix = False
    return cache


@torch.no_grad()
def rank_layers(model, inputs: Any, *, alpha: float = 100.0, steer: Optional[Method] = None,
                variant: str = "paper", progress: bool = True) -> LayerRanking:
    """Rank the layers of ``model`` by how much steering each one alone moves the model
    (arXiv 2603.06745).

    The prompt is prefilled without its last token; that token is then run once unsteered and
    once per layer ℓ with the span keys scaled by ``alpha`` at ℓ only. With ``H_pre^j`` the
    attention input of layer j (after its norm) and ``H_post^j`` its output (after o_proj), and
    d the cosine distance::

        D_j(ℓ) = [d(H_pre^j, H_post^{j,ℓ}) − d(H_pre^j, H_post^j)] + [d(H_pre^{j,ℓ}, H_post^j) − d(H_pre^j, H_post^j)]
        sensitivity(ℓ) = mean_j D_j(ℓ)                      (variant="paper")

    ``variant="released"`` follows the authors' code: no baseline terms, clamped at 0, and
    averaged over the perturbed layers ℓ instead of the measured layers j, so the score of
    layer j is how much j's own input/output pair moves when *any* layer is steered.

    Args:
        inputs: the encoding from :func:`attnsteer.highlight` (``input_ids``, ``attention_mask``, ``span_mask``).
        steer: the method a trial applies (default: key scaling by ``alpha``).
    Returns:
        :class:`LayerRanking` with ``sensitivity`` and ``order`` of shape ``(B, L)``.
    """
    if variant not in ("paper", "released"):
        raise ValueError(f"variant must be 'paper' or 'released'; got {variant!r}")
    from .hf import steer as steer_ctx

    input_ids = inputs["input_ids"]
    attention_mask = inputs.get("attention_mask") if hasattr(inputs, "get") else None
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    span = _span_mask_for(inputs, input_ids)
    _check_model(model, input_ids.shape[1])
    method = Directer(alpha=alpha, steer=steer).trial_method()
    with steer_ctx(model, method, spans=span):
        state = model._attnsteer_state
        cache = _prefill(model, state, input_ids, attention_mask)
        return _rank_after_prefill(model, state, cache, input_ids[:, -1:], attention_mask, variant, progress)


def _directer_loop(d: Directer, model, input_ids, attention_mask, spans, ranking, logits_processor,
                   stopping_criteria, generation_config, streamer) -> torch.LongTensor:
    from .hf import _num_layers
    from .hf import steer as steer_ctx

    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    span = _span_mask_for(spans, input_ids)
    B, T = input_ids.shape
    max_length = getattr(generation_config, "max_length", None) or T + 20
    _check_model(model, max_length)
    L = _num_layers(model) or 0
    counts = _layer_counts(L, int(d.max_trials))
    if not counts:
        raise ValueError(f"DIRECTER needs a model with at least 2 layers (never steers a single layer); got {L}")
    pad = getattr(generation_config, "_pad_token_tensor", None)
    pad_id = int(pad) if pad is not None else (getattr(generation_config, "pad_token_id", None) or 0)
    sample = bool(getattr(generation_config, "do_sample", False))
    stats = DirecterStats()
    d.stats = stats
    with steer_ctx(model, d.trial_method(), spans=span):
        state = model._attnsteer_state
        cache = _prefill(model, state, input_ids, attention_mask)
        if ranking is None:
            rk = _rank_after_prefill(model, state, cache, input_ids[:, -1:], attention_mask, d.ranking_variant, False)
            stats.forwards += L + 1
        elif isinstance(ranking, LayerRanking):
            rk = ranking
        else:
            rk = LayerRanking.from_order(ranking, B)
        d.last_ranking = rk
        order = rk._rows(B).to(input_ids.device)
        if order.shape[1] != L:
            raise ValueError(f"the layer ranking covers {order.shape[1]} layers but the model has {L}")
        ranks = torch.empty_like(order)  # ranks[b, layer] = position of layer in row b's ranking
        ranks.scatter_(1, order, torch.arange(L, device=input_ids.device).expand(B, L).contiguous())
        layer_counts = torch.tensor(counts, device=input_ids.device)
        # (model.generate already put the prompt into the streamer)
        ids, am = input_ids, attention_mask
        unfinished = torch.ones(B, dtype=torch.bool, device=ids.device)
        beta = float(d.beta)
        while True:
            # 1. raw pass of the newest token; its K/V stay in the cache
            raw_logits = _forward(model, state, ids[:, -1:], am, cache)
            stats.forwards += 1
            raw_scores = logits_processor(ids, raw_logits) if logits_processor is not None else raw_logits
            p = raw_scores.softmax(-1)
            top = p.topk(2, dim=-1)
            choice = torch.multinomial(p, 1)[:, 0] if sample else top.indices[:, 0].clone()
            # 2. top-2 gate
            pending = unfinished & (top.values[:, 1] >= beta * top.values[:, 0])
            stats.steps += int(unfinished.sum())
            stats.gated += int((unfinished & ~pending).sum())
            stats.steered += int(pending.sum())
            trial = torch.zeros(B, dtype=torch.long, device=ids.device)
            p_star = top.values[:, 0]
            length = cache.get_seq_length() - 1
            while bool(pending.any()):
                # 3. one steered forward for every pending row, each with its own layer set
                n_layers = layer_counts[trial.clamp_max(len(counts) - 1)]
                row_layers = (ranks < n_layers[:, None]) & pending[:, None]
                with _peek(cache, length):
                    s_logits = _forward(model, state, ids[:, -1:], am, cache, row_layers)
                stats.forwards += 1
                stats.trials += int(pending.sum())
                s_scores = logits_processor(ids, s_logits) if logits_processor is not None else s_logits
                s_arg = torch.multinomial(s_scores.softmax(-1), 1)[:, 0] if sample else s_scores.argmax(-1)
                ok = pending & (p.gather(1, s_arg[:, None])[:, 0] >= beta * p_star)
                for n in n_layers[ok].tolist():
                    stats.accepted[n] = stats.accepted.get(n, 0) + 1
                choice = torch.where(ok, s_arg, choice)
                pending = pending & ~ok
                trial = trial + pending.long()
                out_of_tries = pending & (trial >= len(counts))
                stats.fallbacks += int(out_of_tries.sum())
                pending = pending & ~out_of_tries
            choice = torch.where(unfinished, choice, torch.full_like(choice, pad_id))
            ids = torch.cat([ids, choice[:, None]], dim=-1)
            am = torch.cat([am, am.new_ones(B, 1)], dim=-1)
            if streamer is not None:
                streamer.put(choice.cpu())
            if stopping_criteria is not None:
                unfinished = unfinished & ~stopping_criteria(ids, raw_scores).to(unfinished.device)
            if not bool(unfinished.any()) or ids.shape[1] >= max_length:
                break
    if streamer is not None:
        streamer.end()
    return ids
