"""Steering methods as small validated configs that turn into per-layer op arguments.

Every method reduces to arguments of `attnsteer.steered_attention`: which keys are
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
from typing import Any, Callable, Dict, Optional, Sequence, Union

import torch

from .ops.args import OpArgs, per_head

__all__ = ["Method", "GUIDE", "InstABoost", "PASTA", "SpotLight", "KeyScale", "ForwardContext"]

_PHASES = ("prefill", "decode", "both")


class ForwardContext:
    """What a method sees of one forward when it plans a layer (built once per forward and mask
    type by the model adapter, shared by its layers).

    Attributes:
        span: ``(B, Tk)`` float32 — the highlight's weights on this forward's keys (0 on generated keys).
        key_pos: ``(Tk,)`` long — absolute positions of the keys (a sliding-window layer keeps the last W).
        q_pos: ``(Tq,)`` long — absolute positions of the queries.
        prompt_length: tokens of the prompt the span mask was made for.
        padding: ``(B, Tk)`` bool, True = a real token; None = no padding.
        first_token: ``(B,)`` long — position of each row's first real token (left padding), or None.
        batch, num_heads: B and the number of query heads.
    """

    def __init__(
        self,
        span: torch.Tensor,
        key_pos: torch.Tensor,
        q_pos: torch.Tensor,
        prompt_length: int,
        num_heads: int,
        padding: Optional[torch.Tensor] = None,
        first_token: Optional[torch.Tensor] = None,
    ):
        self.span = span
        self.key_pos = key_pos
        self.q_pos = q_pos
        self.prompt_length = int(prompt_length)
        self.num_heads = int(num_heads)
        self.padding = padding
        self.first_token = first_token
        self.batch = span.shape[0]
        self.device = span.device
        self._memo: Dict[Any, Any] = {}

    @classmethod
    def for_prompt(
        cls, span_mask: torch.Tensor, num_heads: int, padding: Optional[torch.Tensor] = None
    ) -> "ForwardContext":
        """The context of a forward over the whole prompt (no cache): e.g. to inspect a plan."""
        span = span_mask.float()
        T = span.shape[1]
        pos = torch.arange(T, device=span.device)
        first = None if padding is None else padding.long().argmax(dim=1)
        return cls(span, pos, pos, T, num_heads, None if padding is None else padding.bool(), first)

    def memo(self, key: Any, make: Callable[[], Any]) -> Any:
        """``make()`` once per forward (the same for every layer), e.g. a method's span keys."""
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    def per_head(self, value: Union[float, Sequence[float], torch.Tensor]) -> torch.Tensor:
        """A bias / key scale as the op's ``(B, H)`` float32 tensor (scalars built once per forward)."""
        if isinstance(value, (int, float)):
            return self.memo(
                ("per_head", float(value)),
                lambda: per_head("bias / key_scale", value, self.batch, self.num_heads, self.device),
            )
        return per_head("bias / key_scale", value, self.batch, self.num_heads, self.device)

    def prompt_tokens(self) -> torch.Tensor:
        """``(B,)`` long: the real prompt tokens of each row (the prompt length less its left padding)."""

        def make():
            n = torch.full((self.batch,), self.prompt_length, dtype=torch.long, device=self.device)
            return n if self.first_token is None else n - self.first_token.to(self.device)

        return self.memo("prompt_tokens", make)

    def rows(self, phases: str) -> Optional[torch.Tensor]:
        """Steered query rows ``(B, Tq)`` bool for ``phases``; None = every row."""
        if phases == "both":
            return None

        def make():
            prompt_rows = self.q_pos < self.prompt_length
            rows = prompt_rows if phases == "prefill" else ~prompt_rows
            return rows[None, :].expand(self.batch, -1)

        return self.memo(("rows", phases), make)

    def args(
        self,
        span: Optional[torch.Tensor] = None,
        *,
        bias: Any = 0.0,
        key_scale: Any = 1.0,
        target: Optional[float] = None,
        target_exact: bool = False,
        phases: str = "both",
    ) -> OpArgs:
        """Op arguments for these keys (``span`` default: the highlight) on the rows of ``phases``;
        the adapter adds the model's own masking (padding, causal, window, softcap, scale)."""
        return OpArgs(
            self.span if span is None else span,
            self.per_head(bias),
            self.per_head(key_scale),
            target,
            target_exact,
            self.rows(phases),
        )

    def expand_rows(self, t: torch.Tensor, name: str) -> torch.Tensor:
        """Repeat per-prompt rows for beams / ``num_return_sequences`` (each row repeated in place)."""
        return expand_rows(t, self.batch, name)


def expand_rows(t: torch.Tensor, batch: int, name: str) -> torch.Tensor:
    if t.shape[0] == batch:
        return t
    if batch % t.shape[0] == 0:  # beams / num_return_sequences repeat each row in place
        return t.repeat_interleave(batch // t.shape[0], dim=0)
    raise RuntimeError(
        f"attnsteer: {name} has {t.shape[0]} rows but the model runs a batch of {batch}; "
        "pass the encoding the model is called with to steer(spans=...)"
    )


@dataclass
class Method:
    """Base class: ``layers`` (None = all) and ``phases`` ("prefill", "decode", "both").

    Guide: ``docs/guides/methods.md`` (with a runnable example).
    """

    layers: Optional[Sequence[int]] = field(default=None, kw_only=True)
    phases: str = field(default="both", kw_only=True)

    def __post_init__(self) -> None:
        if self.phases not in _PHASES:
            raise ValueError(f"phases must be one of {_PHASES}; got {self.phases!r}")
        if self.layers is not None:
            self.layers = tuple(int(x) for x in self.layers)
            if not self.layers:
                raise ValueError(
                    f"{type(self).__name__}(layers=[]) steers nothing; pass layers=None to steer every "
                    "layer, or list the layer indices to steer"
                )

    def steers_layer(self, layer_idx: int) -> bool:
        return self.layers is None or layer_idx in self.layers

    def plan(self, layer_idx: int, ctx: ForwardContext) -> Optional[OpArgs]:
        """The op arguments of layer ``layer_idx`` in the forward described by ``ctx``, or None
        to leave the layer unsteered. Each method writes its own math here."""
        raise NotImplementedError(f"{type(self).__name__} must implement plan(layer_idx, ctx)")

    def plan_steered(self, layer_idx: int, ctx: ForwardContext) -> Optional[OpArgs]:
        """`plan`, or None when the plan steers no query row of this forward (the model
        adapters' rule: such a layer runs unsteered)."""
        args = self.plan(layer_idx, ctx)
        if args is not None and args.query_mask is not None and not bool(args.query_mask.any()):
            return None
        return args

    def needs_span_mass(self) -> bool:
        """True when `with_span_mass` must see the span mass of a first pass (pooled SpotLight)."""
        return False

    def with_span_mass(self, args: OpArgs, mass: torch.Tensor, ctx: ForwardContext) -> OpArgs:
        """The final arguments, given the span mass ``(B, H, Tq)`` of a first pass with ``args``."""
        return args

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

    Length-aware option (not in the paper): with ``length_ref`` set, a sequence whose prompt has
    ``n`` tokens gets ``delta + log(max(1, n / length_ref))``. Under roughly even attention the
    span's natural mass falls like ``1/n``; the extra ``log(n / length_ref)`` keeps ``e^b·p``, and
    so the steered mass, about where it is at ``length_ref`` keys. ``n`` is the prompt's real
    (non-padding) tokens, one bias per sequence for every row and step — so a forward with a cache
    and one without steer alike (a per-row key count would not).

    Example::

        GUIDE(delta=1.0)                     # a fixed bias
        GUIDE(delta=1.0, length_ref=256)     # + log(n/256) on contexts longer than 256 keys
    """

    delta: float = 2.0
    length_ref: Optional[float] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not math.isfinite(self.delta):
            raise ValueError(f"GUIDE.delta must be finite; got {self.delta}")
        if self.length_ref is not None and not (self.length_ref >= 1 and math.isfinite(self.length_ref)):
            raise ValueError(
                f"GUIDE.length_ref is a key count >= 1 (the length at which the bias is delta); got {self.length_ref}"
            )

    def plan(self, layer_idx: int, ctx: ForwardContext) -> Optional[OpArgs]:
        if not self.steers_layer(layer_idx):
            return None
        if self.length_ref is None:
            return ctx.args(bias=float(self.delta), phases=self.phases)  # × the markup weight, in the op
        return ctx.args(
            bias=ctx.memo(("guide_length", self.delta, self.length_ref), self._length_bias(ctx)), phases=self.phases
        )

    def _length_bias(self, ctx: ForwardContext) -> Callable[[], torch.Tensor]:
        def make() -> torch.Tensor:
            n = ctx.prompt_tokens().float()
            extra = torch.log((n / float(self.length_ref)).clamp_min(1.0))
            return ctx.per_head((self.delta + extra)[:, None].expand(ctx.batch, ctx.num_heads))

        return make


@dataclass
class InstABoost(Method):
    """InstABoost (arXiv 2506.13734): multiply the attention weights of the instruction by
    ``alpha`` and renormalise — the same as adding ``log(alpha)`` to its logits. All layers,
    heads and steps. The released code also boosts BOS and the chat header; special tokens are
    never span here, so to reproduce that pass their positions in a span mask of your own.

    Example:
        ```python
        method = attnsteer.InstABoost(alpha=2.0)
        ```

    Guide: ``docs/guides/methods.md``.
    """

    alpha: float = 10.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (self.alpha > 0 and math.isfinite(self.alpha)):
            raise ValueError(f"InstABoost.alpha must be a finite multiplier > 0; got {self.alpha}")

    def plan(self, layer_idx: int, ctx: ForwardContext) -> Optional[OpArgs]:
        if not self.steers_layer(layer_idx):
            return None
        return ctx.args(bias=math.log(self.alpha), phases=self.phases)


@dataclass
class PASTA(Method):
    """PASTA (arXiv 2311.02262): scale the attention of prompt tokens *outside* the highlight
    by ``alpha`` (≈ 0.01) on a profiled subset of heads; generated tokens are never
    down-weighted. ``heads`` is ``"all"`` or ``{layer: [head, ...]}`` (the paper profiles heads
    per task; no profile ships here). ``keep_sink=True`` leaves the first token (BOS, the
    attention sink) alone; the released code down-weights it (default False).

    Example:
        ```python
        method = attnsteer.PASTA(alpha=0.3, layers=range(15, 30))
        ```

    Guide: ``docs/guides/methods.md``.
    """

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

    def plan(self, layer_idx: int, ctx: ForwardContext) -> Optional[OpArgs]:
        if not self.steers_layer(layer_idx):
            return None
        b = math.log(self.alpha)
        if self.heads == "all":
            return ctx.args(prompt_rest(ctx, self.keep_sink), bias=b, phases=self.phases)
        return ctx.args(
            prompt_rest(ctx, self.keep_sink), bias=self.head_bias(layer_idx, ctx.num_heads), phases=self.phases
        )

    def head_bias(self, layer_idx: int, num_heads: int) -> torch.Tensor:
        """``(H,)``: log(alpha) on the chosen heads of ``layer_idx``, 0 elsewhere."""
        bias = torch.zeros(num_heads)
        for h in self.heads[layer_idx]:
            if not 0 <= h < num_heads:
                raise ValueError(f"PASTA.heads[{layer_idx}] has head {h} outside 0..{num_heads - 1}")
            bias[h] = math.log(self.alpha)
        return bias


def prompt_rest(ctx: ForwardContext, keep_sink: bool = False) -> torch.Tensor:
    """PASTA's keys ``(B, Tk)`` float: prompt tokens outside the highlight (not padding; not each
    row's first real token with ``keep_sink``). Generated tokens are never in it."""

    def make():
        rest = (ctx.span == 0) & (ctx.key_pos < ctx.prompt_length)[None, :]
        if ctx.padding is not None:
            rest &= ctx.padding
        if keep_sink:
            first = ctx.first_token
            first = (
                torch.zeros(ctx.batch, dtype=torch.long, device=ctx.device)
                if first is None
                else ctx.expand_rows(first.to(ctx.device), "the prompt")
            )
            rest &= ctx.key_pos[None, :] != first[:, None]
        return rest.float()

    return ctx.memo(("prompt_rest", keep_sink), make)


@dataclass
class SpotLight(Method):
    """SpotLight (arXiv 2505.12025): when the span's attention mass p is below ``target``, add
    ``log(target/p)`` to its logits (mass becomes target/(target+1-p)); ``exact=True`` moves it
    to exactly ``target``. ``pooled=True`` follows the released code: p is the unsteered span mass
    pooled over all heads and rows of a layer (per sequence, never across the batch); the steered
    output then follows in closed form from the unsteered pass and an attention over the span keys
    (``attnsteer/ops/pooled.py``), not from a second full pass.

    Example:
        ```python
        method = attnsteer.SpotLight(target=0.1, phases="decode")
        ```

    Guide: ``docs/guides/methods.md``.
    """

    target: float = 0.3
    pooled: bool = False
    exact: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.target < 1:
            raise ValueError(f"SpotLight.target is a span mass in (0, 1); got {self.target}")

    def plan(self, layer_idx: int, ctx: ForwardContext) -> Optional[OpArgs]:
        if not self.steers_layer(layer_idx):
            return None
        return ctx.args(target=self.target, target_exact=self.exact, phases=self.phases)

    def needs_span_mass(self) -> bool:
        return self.pooled

    def with_span_mass(self, args: OpArgs, mass: torch.Tensor, ctx: ForwardContext) -> OpArgs:
        """Pooled variant: ψ = mean span mass over heads and steered (non-padding) rows, per
        sequence; when 0 < ψ < τ every span logit of the sequence gets ``log(τ/ψ)``."""
        B, H, Tq = mass.shape
        rows = (
            args.query_mask if args.query_mask is not None else torch.ones(B, Tq, dtype=torch.bool, device=mass.device)
        )
        if ctx.padding is not None:  # padded query rows (left padding) do not count
            rows = rows & ctx.padding[:, -Tq:]
        w = rows[:, None, :].float()
        psi = (mass * w).sum((1, 2)) / (w.sum((1, 2)) * H).clamp_min(1)
        tau = self.target
        bias = torch.where((psi > 0) & (psi < tau), torch.log(tau / psi.clamp_min(1e-30)), torch.zeros_like(psi))
        return args.replace(bias=bias[:, None].expand(B, H).float().contiguous(), target=None, target_exact=False)


@dataclass
class KeyScale(Method):
    """DIRECTER's steering (arXiv 2603.06745): span logits × ``alpha`` (keys × alpha in the
    cache) on the chosen layers, all heads. The paper steers decode steps only
    (``phases="decode"``, our default for this class) with alpha = 100.

    Example:
        ```python
        method = attnsteer.KeyScale(alpha=1.5)  # the IFEval setting tuned for SmolLM2-135M
        ```

    Guide: ``docs/guides/methods.md``.
    """

    alpha: float = 100.0
    phases: str = field(default="decode", kw_only=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (self.alpha > 0 and math.isfinite(self.alpha)):
            raise ValueError(
                f"KeyScale.alpha must be a finite factor > 0 (span logits × alpha; 0 or a negative "
                f"factor would erase or invert the span's attention); got {self.alpha}"
            )

    def plan(self, layer_idx: int, ctx: ForwardContext) -> Optional[OpArgs]:
        if not self.steers_layer(layer_idx):
            return None
        return ctx.args(key_scale=float(self.alpha), phases=self.phases)
