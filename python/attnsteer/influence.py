"""GUIDE's Influence (arXiv 2409.19001), attention rollout and span mass, in O(T) memory.

Influence of the span, per layer and token: ``I⁽⁻¹⁾_k = 1`` on highlighted tokens, 0 elsewhere;
at layer ℓ mix through the head-averaged attention ``u = Ā·I`` — optionally weighting each
source token j by the L1 norm of its value vector, ``u_k = Σ_h Σ_j A_hkj w_hj I_j / Σ_h Σ_j
A_hkj w_hj`` — then blend with the residual stream by norms,
``I_k ← (‖x_k‖₁ I_k + ‖o_k‖₁ u_k) / (‖x_k‖₁ + ‖o_k‖₁)`` with x the attention block's input
(after the input norm) and o its output (after o_proj). Attention rollout: ``R ← (R + Ā·R)/2``.

The mixing ``Ā·I`` is attention with a one-channel value, so it runs through the fused op with
``I`` (and the value norms, the rollout vector and the span indicator) as the value channels: no
``T × T`` matrix, and under a steering method the mixing uses the steered weights.

Conventions (where GUIDE's released code, ``pay-attention-pipeline`` 0.2.0, departs from the
paper's wording; its variant is ``value_norms=False, residual="previous"``):

- ``value_norms``: the paper weights sources by their value norms; the code calls its metric
  with ``use_values=False`` (its other branch cannot broadcast with GQA).
- ``residual``: ``"current"`` uses ‖x‖ of layer ℓ (the paper: the input of the same block);
  ``"previous"`` uses layer ℓ−1's (layer 0's at ℓ = 0), as the code does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch

from ._plot import finish, pyplot
from .methods import GUIDE, Method

__all__ = [
    "influence",
    "InfluenceResult",
    "span_mass",
    "SpanMass",
    "calibrate_delta",
    "Calibration",
    "aggregate_influence",
]


class _Probe:
    """Runs inside the attention layers of one steered forward (see attnsteer.hf.attention.attention_function)."""

    def __init__(self, span: torch.Tensor, value_norms: bool, residual: str):
        ind = (span > 0).float()
        self.span = ind  # (B, T)
        self.I = ind.clone()
        self.R = ind.clone()
        self.value_norms = value_norms
        self.residual = residual
        self.u: Optional[torch.Tensor] = None
        self.prev_x_norm: Optional[torch.Tensor] = None
        self.influence: List[torch.Tensor] = [ind.clone()]
        self.rollout: List[torch.Tensor] = [ind.clone()]
        self.mass: List[torch.Tensor] = []

    def attend(self, run_op, key: torch.Tensor, value: torch.Tensor) -> None:
        """``run_op(v)`` is this layer's op call with the value replaced; key/value ``(B, Hkv, T, D)``."""
        B, Hkv, T, D = key.shape
        if D < 4:
            raise ValueError(f"influence needs a head dimension of at least 4; got {D}")
        if self.I.shape[1] != T:
            raise ValueError("influence runs one forward over the prompt (no cache, no generated tokens)")
        w = value.float().abs().sum(-1) if self.value_norms else torch.ones(B, Hkv, T, device=key.device)
        v = torch.zeros(B, Hkv, T, D, device=key.device, dtype=torch.float32)
        v[..., 0] = w * self.I[:, None, :].to(key.device)
        v[..., 1] = w
        v[..., 2] = self.R[:, None, :].to(key.device)
        v[..., 3] = self.span[:, None, :].to(key.device)
        out = run_op(v.to(value.dtype)).float()  # (B, Hq, T, D)
        self.u = out[..., 0].sum(1) / out[..., 1].sum(1).clamp_min(1e-30)
        self.R = 0.5 * (self.R.to(out.device) + out[..., 2].mean(1))
        self.rollout.append(self.R.clone())
        self.mass.append(out[..., 3].clone())  # (B, Hq, T): attention mass on the highlight

    def blend(self, x: torch.Tensor, o: torch.Tensor) -> None:
        """After the attention block: x its input ``(B, T, d)``, o its output ``(B, T, d)``."""
        x_norm = x.float().abs().sum(-1)
        o_norm = o.float().abs().sum(-1)
        ne = x_norm if self.residual == "current" or self.prev_x_norm is None else self.prev_x_norm
        I = self.I.to(x.device)
        self.I = (ne * I + o_norm * self.u) / (ne + o_norm).clamp_min(1e-30)
        self.prev_x_norm = x_norm
        self.influence.append(self.I.clone())


@dataclass
class InfluenceResult:
    """Per-layer Influence, rollout and span mass of one forward over the prompts.

    Attributes:
        influence: ``(B, L + 1, T)``; index 0 is the initial indicator ("layer −1"), index
            ℓ + 1 the value after layer ℓ. Padding positions are 0.
        rollout: ``(B, L + 1, T)``, attention rollout, same layout.
        span_mass: ``(B, L, Hq, T)``, the attention mass each layer and head puts on the
            highlight, per query token (steered when a method was given).
        attention_mask: ``(B, T)``.
        method: the steering method of the forward (None = unsteered).

    Guide: ``docs/guides/influence.md`` (with a runnable example).
    """

    influence: torch.Tensor
    rollout: torch.Tensor
    span_mass: torch.Tensor
    attention_mask: torch.Tensor
    method: Optional[Method] = None
    settings: Dict[str, Any] = field(default_factory=dict)

    def last(self, row: int = 0, kind: str = "influence") -> torch.Tensor:
        """``(L + 1,)`` values at the last (real) token of ``row``: what generation reads."""
        return getattr(self, kind)[row, :, -1]

    def to_records(self) -> List[Dict[str, Any]]:
        """One record per (row, layer, token): ``row, layer (−1…L−1), token, influence, rollout``."""
        B, L1, T = self.influence.shape
        inf, rol, am = self.influence.tolist(), self.rollout.tolist(), self.attention_mask.tolist()
        return [
            {"row": b, "layer": l - 1, "token": t, "influence": inf[b][l][t], "rollout": rol[b][l][t]}
            for b in range(B)
            for l in range(L1)
            for t in range(T)
            if am[b][t]
        ]

    def to_dataframe(self):
        """`to_records` as a pandas DataFrame (needs pandas)."""
        import pandas as pd

        return pd.DataFrame(self.to_records())

    def plot(
        self,
        path: Optional[str] = None,
        *,
        row: int = 0,
        others: Optional[Dict[str, "InfluenceResult"]] = None,
        title: Optional[str] = None,
    ):
        """Influence and rollout at the last token against the layer; ``others`` adds curves
        (e.g. ``{"GUIDE Δ=2": steered_result}``). Saves to ``path`` when given; returns the figure."""
        plt = pyplot(path)

        fig, ax = plt.subplots(figsize=(5.5, 3.4))
        curves = {"unsteered" if self.method is None else _name(self.method): self, **(others or {})}
        layers = list(range(-1, self.influence.shape[1] - 1))
        for i, (name, res) in enumerate(curves.items()):
            ax.plot(layers, res.last(row).tolist(), "-", color=f"C{i}", label=f"Influence — {name}")
            ax.plot(layers, res.last(row, "rollout").tolist(), ":", color=f"C{i}", label=f"rollout — {name}")
        ax.set_xlabel("layer")
        ax.set_ylabel("span's share at the last token")
        ax.set_title(title or "Influence of the highlighted span", fontsize=9)
        ax.legend(fontsize=7)
        return finish(fig, path)


def _name(method) -> str:
    return type(method).__name__


def _run(model, enc, method: Optional[Method], value_norms: bool, residual: str) -> _Probe:
    from . import hf

    if residual not in ("current", "previous"):
        raise ValueError(f"residual must be 'current' (the paper) or 'previous' (GUIDE's code); got {residual!r}")
    span = getattr(enc, "span_mask", None)
    if span is None:
        raise TypeError("influence needs the encoding from attnsteer.highlight (it carries .span_mask)")
    probe = _Probe(span.float(), value_norms, residual)
    hooks = []

    def post(module, args, kwargs, output):
        x = kwargs.get("hidden_states", args[0] if args else None)
        o = output[0] if isinstance(output, tuple) else output
        probe.blend(x, o)

    with hf.steer(model, method if method is not None else GUIDE(0.0), spans=enc) as m:
        for mod in hf.attention_modules(model):
            hooks.append(mod.register_forward_hook(post, with_kwargs=True))
        try:
            am = enc["attention_mask"].to(model.device)
            pos = (am.long().cumsum(-1) - 1).clamp(min=0)  # left padding: positions as generate counts them
            with torch.no_grad(), hf.active(model).probing(probe):
                m(input_ids=enc["input_ids"].to(model.device), attention_mask=am, position_ids=pos, use_cache=False)
        finally:
            for h in hooks:
                h.remove()
    return probe


def influence(
    model, enc, method: Optional[Method] = None, *, value_norms: bool = True, residual: str = "current"
) -> InfluenceResult:
    """GUIDE's Influence of the highlighted span, per layer and token, with attention rollout.

    Args:
        model: a Hugging Face causal LM that `attnsteer.steer` supports.
        enc: the encoding from `attnsteer.highlight` ``(B, T)``, rows with their own spans.
        method: steer the forward (and the mixing) with this method; None = unsteered.
        value_norms: weight each source token by its value vector's L1 norm (the paper);
            False as GUIDE's code.
        residual: ``"current"`` (the paper) or ``"previous"`` (GUIDE's code) — see the module docstring.

    Returns:
        `InfluenceResult`. Memory O(T): the mixing runs through the fused op.

    Example:
        ```python
        res = attnsteer.influence(model, enc, attnsteer.GUIDE(2.0))
        res.plot(path="influence.png")
        ```

    Guide: ``docs/guides/influence.md``.
    """
    probe = _run(model, enc, method, value_norms, residual)
    am = enc["attention_mask"].to(probe.I.device).float()
    inf = torch.stack(probe.influence, 1) * am[:, None, :]
    rol = torch.stack([r.to(am.device) for r in probe.rollout], 1) * am[:, None, :]
    mass = torch.stack(probe.mass, 1)
    return InfluenceResult(
        inf, rol, mass, enc["attention_mask"], method, {"value_norms": value_norms, "residual": residual}
    )


@dataclass
class SpanMass:
    """Attention mass on the highlight per layer, head and query token.

    Attributes:
        unsteered: ``(B, L, Hq, T)``; steered: the same under the method (None without one).

    Guide: ``docs/guides/influence.md`` (with a runnable example).
    """

    unsteered: torch.Tensor
    steered: Optional[torch.Tensor]
    attention_mask: torch.Tensor
    method: Optional[Method] = None

    def table(self, row: int = 0, query: str = "last", steered: bool = False) -> torch.Tensor:
        """``(L, Hq)``: the mass at the last token (``query="last"``) or averaged over the real
        tokens that are not span (``"mean"``)."""
        m = (self.steered if steered else self.unsteered)[row]
        if query == "last":
            return m[..., -1]
        if query == "mean":
            w = self.attention_mask[row].float().to(m.device)
            return (m * w).sum(-1) / w.sum().clamp_min(1)
        raise ValueError(f"query must be 'last' or 'mean'; got {query!r}")

    def heatmap(self, path: Optional[str] = None, *, row: int = 0, query: str = "last"):
        """Layers × heads heatmaps, unsteered and (when given) steered; returns the figure."""
        plt = pyplot(path)

        panels = [("unsteered", self.table(row, query))]
        if self.steered is not None:
            panels.append(
                (_name(self.method) if self.method is not None else "steered", self.table(row, query, steered=True))
            )
        fig, axes = plt.subplots(
            1, len(panels), figsize=(3.4 * len(panels) + 0.8, 4.2), squeeze=False, constrained_layout=True
        )
        vmax = max(float(t.max()) for _, t in panels)
        for ax, (name, t) in zip(axes[0], panels):
            im = ax.imshow(t.numpy(), aspect="auto", origin="lower", vmin=0, vmax=vmax, cmap="viridis")
            ax.set_title(f"span mass — {name}", fontsize=9)
            ax.set_xlabel("head")
            ax.set_ylabel("layer")
        fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
        return finish(fig, path, tight=False)


def span_mass(model, enc, method: Optional[Method] = None) -> SpanMass:
    """The attention mass each layer and head puts on the highlight, unsteered and under
    ``method`` — the quickest way to see SpotLight's target or PASTA's heads at work.

    Example:
        ```python
        attnsteer.span_mass(model, enc, attnsteer.SpotLight(target=0.3)).heatmap(path="mass.png")
        ```

    Guide: ``docs/guides/influence.md``.
    """
    base = _run(model, enc, None, False, "current")
    steered = _run(model, enc, method, False, "current") if method is not None else None
    return SpanMass(
        torch.stack(base.mass, 1), torch.stack(steered.mass, 1) if steered else None, enc["attention_mask"], method
    )


@dataclass
class Calibration:
    """What `calibrate_delta` found.

    Attributes:
        delta: the chosen Δ.
        target_gain: Influence gain of the upper-case rewrite over the plain prompt (unsteered).
        deltas, gains: the grid tried and the gain of GUIDE(Δ) at each point.
        base, upper: the aggregate Influence of the plain prompt and of its upper-case rewrite.

    Guide: ``docs/guides/influence.md`` (with a runnable example).
    """

    delta: float
    target_gain: float
    deltas: List[float]
    gains: List[float]
    base: float
    upper: float

    def plot(self, path: Optional[str] = None):
        plt = pyplot(path)

        fig, ax = plt.subplots(figsize=(4.5, 3.0))
        ax.plot(self.deltas, self.gains, "o-", label="GUIDE(Δ) on the marked span")
        ax.axhline(self.target_gain, color="gray", ls="--", label="upper-case rewrite")
        ax.axvline(self.delta, color="C1", ls=":", label=f"chosen Δ = {self.delta:.2f}")
        ax.set_xlabel("Δ")
        ax.set_ylabel("Influence gain")
        ax.legend(fontsize=7)
        return finish(fig, path)


def aggregate_influence(res: InfluenceResult, row: int = 0) -> float:
    """The calibration's summary of a curve: the mean over layers 0…L−1 of the span's
    Influence at the last prompt token (the area under `InfluenceResult.plot`'s curve)."""
    return float(res.last(row)[1:].mean())


def _upper_markup(x):
    """The prompt with the marked text written in upper case (markers kept)."""
    from .spans import DEFAULT_MARKERS, parse_markup

    def up(text: str) -> str:
        clean, spans = parse_markup(text)
        if not spans:
            return text
        out, pos = [], 0
        for s, e, w in spans:
            opener = next(o for o, (c, ww) in DEFAULT_MARKERS.items() if ww == w)
            out += [clean[pos:s], opener, clean[s:e].upper(), DEFAULT_MARKERS[opener][0]]
            pos = e
        out.append(clean[pos:])
        return "".join(out)

    if isinstance(x, str):
        return up(x)
    return [dict(m, content=up(m["content"])) for m in x]


def calibrate_delta(
    model,
    tokenizer,
    prompt,
    *,
    deltas=(0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0),
    value_norms: bool = True,
    residual: str = "current",
) -> Calibration:
    """Choose GUIDE's Δ so that marking the span moves Influence as much as writing it in capitals.

    GUIDE (arXiv 2409.19001) proposes matching the Influence gain of a natural emphasis, the
    instruction rewritten in upper case; its code only plots the two curves. The rule here:

    1. ``g(p, m)`` = the mean over layers of the span's Influence at the last prompt token
       (`aggregate_influence`) for prompt ``p`` under method ``m``.
    2. Target gain ``r = g(upper, none) / g(plain, none)``: the upper-case rewrite (the marked
       text in capitals, still marked, unsteered) against the plain prompt.
    3. ``Δ*`` = the smallest Δ with ``g(plain, GUIDE(Δ)) / g(plain, none) = r``, by linear
       interpolation on ``deltas``; 0 when ``r <= 1`` (capitals add nothing); the largest grid
       value when even it falls short.

    Args:
        prompt: a string or chat messages with the span marked in ``<<...>>``.

    Guide: ``docs/guides/influence.md`` (with a runnable example).
    """
    from .spans import highlight

    deltas = sorted(float(d) for d in deltas)
    if not deltas or deltas[0] != 0.0:
        deltas = [0.0] + [d for d in deltas if d > 0]
    enc = highlight(tokenizer, prompt)
    up = highlight(tokenizer, _upper_markup(prompt))
    base = aggregate_influence(influence(model, enc, None, value_norms=value_norms, residual=residual))
    upper = aggregate_influence(influence(model, up, None, value_norms=value_norms, residual=residual))
    if base <= 0:
        raise ValueError("the span has no Influence at the last token (is anything marked before it?)")
    target = upper / base
    gains = [1.0] + [
        aggregate_influence(influence(model, enc, GUIDE(d), value_norms=value_norms, residual=residual)) / base
        for d in deltas[1:]
    ]
    return Calibration(_choose_delta(deltas, gains, target), target, deltas, gains, base, upper)


def _choose_delta(deltas: List[float], gains: List[float], target: float) -> float:
    """Step 3 of `calibrate_delta`: the smallest Δ whose gain reaches ``target``
    (linear interpolation between grid points); 0 if ``target <= 1``; the last Δ if none does."""
    if target <= 1.0:
        return 0.0
    for (d0, g0), (d1, g1) in zip(zip(deltas, gains), zip(deltas[1:], gains[1:])):
        if g0 <= target <= g1 and g1 > g0:
            return d0 + (target - g0) * (d1 - d0) / (g1 - g0)
    return deltas[-1]
