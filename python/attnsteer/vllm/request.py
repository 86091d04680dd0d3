"""The per-request steering format for vLLM: what a request carries, built from the same inputs
as `attnsteer.highlight`, and read back (validated) by the serving side.

A steered request is ``SamplingParams(extra_args={"attnsteer": {...}})`` with::

    {"method": "guide:delta=2",                  # a method spec (attnsteer.eval.specs grammar)
     "spans": [[start, end, weight], ...]}       # token positions [start, end) of the prompt

and, for the OpenAI server's ``vllm_xargs`` (flat values only), the same as two strings::

    {"attnsteer_method": "guide:delta=2", "attnsteer_spans": "12:20:1,31:35:2"}

Steered requests get a ``cache_salt`` derived from that configuration, so that identical steered
requests share prefix-cache blocks with each other but never with unsteered ones (whose salt
is unset); the plugin adds it at admission to a steered request that comes without one. Methods
that need extra forwards (``directer``, ``gate+…``) are not servable this way.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch

__all__ = ["SteeredPrompt", "RequestSteering", "steered_prompt", "parse_request", "request_salt", "spans_from_mask"]

KEY = "attnsteer"
FLAT_METHOD, FLAT_SPANS = "attnsteer_method", "attnsteer_spans"
Span = Tuple[int, int, float]


@dataclass(frozen=True)
class SteeredPrompt:
    """A prompt ready for vLLM: its token ids, the request's ``extra_args`` and ``cache_salt``.

    Guide: ``docs/guides/vllm.md`` (with a runnable example).
    """

    prompt_token_ids: List[int]
    extra_args: Dict[str, Any]
    cache_salt: str

    def flat(self) -> Dict[str, str]:
        """The ``vllm_xargs`` form (flat string values) for the OpenAI-compatible server."""
        cfg = self.extra_args[KEY]
        return {FLAT_METHOD: cfg["method"], FLAT_SPANS: ",".join(f"{a}:{b}:{_num(w)}" for a, b, w in cfg["spans"])}

    def prompt(self) -> Dict[str, Any]:
        """A vLLM ``TokensPrompt`` dict: ``llm.generate(p.prompt(), SamplingParams(extra_args=p.extra_args))``."""
        return {"prompt_token_ids": list(self.prompt_token_ids), "cache_salt": self.cache_salt}


@dataclass(frozen=True)
class RequestSteering:
    """A request's steering as the serving side uses it: the method and the span weights of every
    prompt token (``(T,)`` float32, 0 = not span).

    Guide: ``docs/guides/vllm.md`` (with a runnable example).
    """

    method: Any
    spec: str
    span_weights: torch.Tensor
    spans: Tuple[Span, ...] = ()


def _num(w: float) -> str:
    return f"{float(w):g}"


def spans_from_mask(span_mask: torch.Tensor) -> List[Span]:
    """Runs of equal nonzero weight of a ``(T,)`` span mask as ``[start, end, weight]``.

    Guide: ``docs/guides/vllm.md`` (with a runnable example).
    """
    from ..ops.pieces import key_ranges

    return [r for r in key_ranges(span_mask.float().flatten()) if r[2] != 0]


def _servable_spec(method: Union[str, Any]) -> Tuple[str, Any]:
    """``(canonical spec, method)`` of a method that can be served per request, else a clear error.
    A `attnsteer.SteeringConfig` stands for its spec."""
    from ..config import SteeringConfig
    from ..eval import specs

    if isinstance(method, SteeringConfig):
        method = method.method

    if not isinstance(method, str):
        raise TypeError(f"method must be a method spec string such as 'guide:delta=2'; got {type(method).__name__}")
    canon = specs.canonical(method)  # raises on unknown methods or settings
    if canon == "none":
        raise ValueError("method 'none' is an unsteered request: send it without attnsteer extra args")
    if canon.startswith(("gate+", "directer")):
        raise ValueError(
            f"{canon!r} needs extra forwards per token (DIRECTER's trials) and cannot be served "
            "per request; use guide, instaboost, pasta, spotlight or keyscale"
        )
    parsed = specs.parse(canon)
    if parsed.needs_span_mass():
        raise ValueError(
            f"{canon!r}: pooled SpotLight needs a first pass over the whole layer's span mass, which a paged "
            "step (chunked prefill) does not have; serve spotlight without pooled=true"
        )
    return canon, parsed


def _salt(spec: str, spans: Sequence[Span]) -> str:
    blob = json.dumps({"method": spec, "spans": [[int(a), int(b), float(w)] for a, b, w in spans]}, sort_keys=True)
    return "attnsteer-" + hashlib.sha256(blob.encode()).hexdigest()[:16]


def request_salt(steering: RequestSteering) -> str:
    """The ``cache_salt`` a request with this steering gets (the one `steered_prompt` sets)."""
    return _salt(steering.spec, steering.spans)


def steered_prompt(tokenizer, prompt: Any, method: Any, **highlight_kwargs) -> SteeredPrompt:
    """Token ids and request arguments for one steered prompt.

    Args:
        tokenizer: the served model's tokenizer.
        prompt: what `attnsteer.highlight` takes — text with ``<<markup>>`` or chat messages.
        method: a method spec, e.g. ``"guide:delta=2"``, ``"spotlight:target=0.3,layers=0-11"``, or a
            `attnsteer.SteeringConfig` (``attnsteer.recommended(...)``, ``SteeringConfig.load(FILE)``).
        highlight_kwargs: passed to `attnsteer.highlight` (``char_spans``, ``markers``, …).

    Example:
        ```python
        p = steered_prompt(tok, "<<Answer in French.>> Name a fruit.", "guide:delta=1")
        llm.generate(p.prompt(), SamplingParams(max_tokens=32, extra_args=p.extra_args))
        ```

    Guide: ``docs/guides/vllm.md``.
    """
    from ..spans import highlight

    spec, _ = _servable_spec(method)
    enc = highlight(tokenizer, prompt, **highlight_kwargs)
    if enc["input_ids"].shape[0] != 1:
        raise ValueError("steered_prompt builds one request; call it once per prompt")
    spans = spans_from_mask(enc.span_mask[0])
    if not spans:
        raise ValueError("the prompt has no highlighted tokens: mark the instruction with <<...>>")
    return SteeredPrompt(
        enc["input_ids"][0].tolist(), {KEY: {"method": spec, "spans": [list(s) for s in spans]}}, _salt(spec, spans)
    )


def _parse_flat_spans(raw: str) -> List[Span]:
    spans = []
    for part in filter(None, (p.strip() for p in raw.split(","))):
        bits = part.split(":")
        if len(bits) not in (2, 3):
            raise ValueError(f"attnsteer_spans entry {part!r} must be start:end or start:end:weight")
        a, b = int(bits[0]), int(bits[1])
        spans.append((a, b, float(bits[2]) if len(bits) == 3 else 1.0))
    return spans


def parse_request(
    extra_args: Optional[Dict[str, Any]], prompt_token_ids: Sequence[int], special_ids: Sequence[int] = ()
) -> Optional[RequestSteering]:
    """The steering of one request, or None for an unsteered one; a ``ValueError`` that names the
    problem for an unknown method or parameter, spans outside the prompt, bad weights, or a span
    that covers special tokens only.

    Guide: ``docs/guides/vllm.md`` (with a runnable example).
    """
    extra_args = extra_args or {}
    if KEY in extra_args:
        cfg = extra_args[KEY]
        if not isinstance(cfg, dict) or "method" not in cfg or "spans" not in cfg:
            raise ValueError(
                'extra_args["attnsteer"] must be {"method": "<spec>", "spans": [[start, end, weight], ...]}'
            )
        method, spans = cfg["method"], [tuple(s) for s in cfg["spans"]]
    elif FLAT_METHOD in extra_args or FLAT_SPANS in extra_args:
        if FLAT_METHOD not in extra_args or FLAT_SPANS not in extra_args:
            raise ValueError(f"vllm_xargs needs both {FLAT_METHOD} and {FLAT_SPANS}")
        method, spans = extra_args[FLAT_METHOD], _parse_flat_spans(str(extra_args[FLAT_SPANS]))
    else:
        return None
    spec, parsed = _servable_spec(method)
    T = len(prompt_token_ids)
    weights = torch.zeros(T, dtype=torch.float32)
    clean: List[Span] = []
    for s in spans:
        if len(s) not in (2, 3):
            raise ValueError(f"a span is [start, end] or [start, end, weight]; got {list(s)}")
        a, b = int(s[0]), int(s[1])
        w = float(s[2]) if len(s) == 3 else 1.0
        if not 0 <= a < b <= T:
            raise ValueError(f"span [{a}, {b}) lies outside the {T}-token prompt (0 <= start < end <= {T})")
        if not (w > 0 and w < float("inf")):
            raise ValueError(f"span [{a}, {b}) has weight {w}; weights are finite and > 0")
        weights[a:b] = w
        clean.append((a, b, w))
    special = set(int(i) for i in special_ids)
    if special:
        ids = torch.as_tensor(list(prompt_token_ids))
        on_special = torch.tensor([int(i) in special for i in ids.tolist()], dtype=torch.bool)
        weights[on_special] = 0.0
        if not bool((weights != 0).any()):
            raise ValueError(
                "the spans cover special tokens only (chat markers, BOS), which are never steered; "
                "mark the instruction's text"
            )
    return RequestSteering(parsed, spec, weights, tuple(clean))
