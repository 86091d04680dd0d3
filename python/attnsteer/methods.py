"""Steering methods as small validated configs that turn into per-layer op arguments.

Every method reduces to arguments of :func:`attnsteer.steered_attention`: which keys are
"span" for the op, and a bias, a key scale or a target per head (and per row). A bias ``b`` on
the span's logits only moves mass between span and rest (split softmax): with natural span
mass ``p``, the steered mass is ``e^b·p / (e^b·p + 1 − p)`` and the shape inside each part is kept.

| method | paper | keys modified | change |
|---|---|---|---|
| GUIDE | arXiv 2409.19001 | highlight | + delta (markup levels delta/2, delta, 2·delta) |
| InstABoost | arXiv 2506.13734 | highlight | + log(alpha) |
| PASTA | arXiv 2311.02262 | prompt tokens outside the highlight | + log(alpha), selected heads |
| SpotLight | arXiv 2505.12025 | highlight | + log(target/p) when span mass p < target |
| KeyScale (DIRECTER's steering) | arXiv 2603.06745 | highlight | logits × alpha |

``phases`` says which query rows are steered: ``"prefill"`` (prompt rows), ``"decode"``
(generated rows) or ``"both"``. ``layers`` restricts steering to some layer indices (None = all).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence, Union

import torch

__all__ = ["Method", "GUIDE", "InstABoost", "PASTA", "SpotLight", "KeyScale"]

_PHASES = ("prefill", "decode", "both")


@dataclass
class LayerArgs:
    """What one layer hands to the op. ``span`` selects the keys the op modifies."""

    span: str = "highlight"  # "highlight" | "prompt_rest" (PASTA)
    bias: Union[float, torch.Tensor] = 0.0
    key_scale: Union[float, torch.Tensor] = 1.0
    target: Optional[float] = None
    target_exact: bool = False
    pooled_target: bool = False


@dataclass
class Method:
    """Base class: ``layers`` (None = all) and ``phases`` ("prefill", "decode", "both")."""

    layers: Optional[Sequence[int]] = field(default=None, kw_only=True)
    phases: str = field(default="both", kw_only=True)

    def __post_init__(self) -> None:
        if self.phases not in _PHASES:
            raise ValueError(f"phases must be one of {_PHASES}; got {self.phases!r}")
        if self.layers is not None:
            self.layers = tuple(int(x) for x in self.layers)
            if not self.layers:
                raise ValueError(f"{type(self).__name__}(layers=[]) steers nothing; pass layers=None to steer every "
                                 "layer, or list the layer indices to steer")

    def steers_layer(self, layer_idx: int) -> bool:
        return self.layers is None or layer_idx in self.layers

    def layer_args(self, layer_idx: int, num_heads: int) -> Optional[LayerArgs]:  # pragma: no cover - abstract
        raise NotImplementedError

    def check_layers(self, num_layers: int) -> None:
        if self.layers is not None:
            bad = [x for x in self.layers if not 0 <= x < num_layers]
            if bad:
                raise ValueError(f"{type(self).__name__}.layers has indices {bad} outside 0..{num_layers - 1}")


@dataclass
class GUIDE(Method):
    """GUIDE (arXiv 2409.19001): add ``delta`` to the logits of highlighted keys, all layers and heads.

    Markup levels (``<<-x->>``, ``<<x>>``, ``<<+x+>>``) give span weights 0.5 / 1 / 2, so the
    bias is delta/2, delta, 2·delta. The paper uses delta ≈ 1–2. One release steers only the
    prompt (``phases="prefill"``), the other every step (``"both"``, our default).
    """

    delta: float = 2.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not math.isfinite(self.delta):
            raise ValueError(f"GUIDE.delta must be finite; got {self.delta}")

    def layer_args(self, layer_idx: int, num_heads: int) -> Optional[LayerArgs]:
        return LayerArgs(bias=float(self.delta)) if self.steers_layer(layer_idx) else None


@dataclass
class InstABoost(Method):
    """InstABoost (arXiv 2506.13734): multiply the attention weights of the instruction by
    ``alpha`` and renormalise — the same as adding ``log(alpha)`` to its logits. All layers,
    heads and steps. The released code also boosts BOS and the chat header; special tokens are
    never span here, so to reproduce that pass their positions in a span mask of your own."""

    alpha: float = 10.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (self.alpha > 0 and math.isfinite(self.alpha)):
            raise ValueError(f"InstABoost.alpha must be a finite multiplier > 0; got {self.alpha}")

    def layer_args(self, layer_idx: int, num_heads: int) -> Optional[LayerArgs]:
        return LayerArgs(bias=math.log(self.alpha)) if self.steers_layer(layer_idx) else None


@dataclass
class PASTA(Method):
    """PASTA (arXiv 2311.02262): scale the attention of prompt tokens *outside* the highlight
    by ``alpha`` (≈ 0.01) on a profiled subset of heads; generated tokens are never
    down-weighted. ``heads`` is ``"all"`` or ``{layer: [head, ...]}`` (the paper profiles heads
    per task; no profile ships here). ``keep_sink=True`` leaves the first token (BOS, the
    attention sink) alone; the released code down-weights it (default False)."""

    alpha: float = 0.01
    heads: Union[str, Dict[int, Sequence[int]]] = "all"
    keep_sink: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (0 < self.alpha and math.isfinite(self.alpha)):
            raise ValueError(f"PASTA.alpha must be > 0 (≈ 0.01 down-weights the rest); got {self.alpha}")
        if self.heads != "all" and not isinstance(self.heads, dict):
            raise TypeError(f"PASTA.heads must be 'all' or {{layer: [heads]}}; got {type(self.heads).__name__}")

    def steers_layer(self, layer_idx: int) -> bool:
        if self.heads != "all" and layer_idx not in self.heads:
            return False
        return super().steers_layer(layer_idx)

    def layer_args(self, layer_idx: int, num_heads: int) -> Optional[LayerArgs]:
        if not self.steers_layer(layer_idx):
            return None
        b = math.log(self.alpha)
        if self.heads == "all":
            return LayerArgs(span="prompt_rest", bias=b)
        bias = torch.zeros(num_heads)
        for h in self.heads[layer_idx]:
            if not 0 <= h < num_heads:
                raise ValueError(f"PASTA.heads[{layer_idx}] has head {h} outside 0..{num_heads - 1}")
            bias[h] = b
        return LayerArgs(span="prompt_rest", bias=bias)


@dataclass
class SpotLight(Method):
    """SpotLight (arXiv 2505.12025): when the span's attention mass p is below ``target``, add
    ``log(target/p)`` to its logits (mass becomes target/(target+1-p)); ``exact=True`` moves it
    to exactly ``target``. ``pooled=True`` follows the released code: p is pooled over all heads
    and rows of a layer (per sequence, never across the batch), in a second pass."""

    target: float = 0.3
    pooled: bool = False
    exact: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.target < 1:
            raise ValueError(f"SpotLight.target is a span mass in (0, 1); got {self.target}")

    def layer_args(self, layer_idx: int, num_heads: int) -> Optional[LayerArgs]:
        if not self.steers_layer(layer_idx):
            return None
        return LayerArgs(target=self.target, target_exact=self.exact, pooled_target=self.pooled)


@dataclass
class KeyScale(Method):
    """DIRECTER's steering (arXiv 2603.06745): span logits × ``alpha`` (keys × alpha in the
    cache) on the chosen layers, all heads. The paper steers decode steps only
    (``phases="decode"``, our default for this class) with alpha = 100."""

    alpha: float = 100.0
    phases: str = field(default="decode", kw_only=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (self.alpha > 0 and math.isfinite(self.alpha)):
            raise ValueError(f"KeyScale.alpha must be a finite factor > 0 (span logits × alpha; 0 or a negative "
                             f"factor would erase or invert the span's attention); got {self.alpha}")

    def layer_args(self, layer_idx: int, num_heads: int) -> Optional[LayerArgs]:
        return LayerArgs(key_scale=float(self.alpha)) if self.steers_layer(layer_idx) else None
