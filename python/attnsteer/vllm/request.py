"""The per-request steering format for vLLM: what a request carries, built from the same inputs
as `attnsteer.highlight`, and read back (validated) by the serving side.

A steered request is ``SamplingParams(extra_args={"attnsteer": {...}})`` with::

    {"method": "guide:delta=2",                  # a method spec (attnsteer.specs grammar)
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
import logging
import math
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch

from ..specs import SPAN_WEIGHT_RANGE, RequestLimits, _show, is_decimal, parse_request_spec

logger = logging.getLogger(__name__)

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


def _servable_spec(method: Union[str, Any], limits: Optional[RequestLimits] = None) -> Tuple[str, Any]:
    """``(canonical spec, method)`` of a method that can be served per request, else a clear error.
    A `attnsteer.SteeringConfig` stands for its spec. Read with the request grammar
    (`attnsteer.specs.parse_request_spec`: values only, bounded), on the client as on the server,
    so a request that `steered_prompt` builds is one the server accepts."""
    from ..config import SteeringConfig

    if isinstance(method, SteeringConfig):
        method = method.method

    if not isinstance(method, str):
        raise TypeError(f"method must be a method spec string such as 'guide:delta=2'; got {type(method).__name__}")
    canon, parsed = parse_request_spec(method, limits)  # raises on unknown methods, settings or ranges
    if canon == "none":
        raise ValueError("method 'none' is an unsteered request: send it without attnsteer extra args")
    if canon.startswith(("gate+", "directer")):
        raise ValueError(
            f"{canon!r} needs extra forwards per token (DIRECTER's trials) and cannot be served "
            "per request; use guide, instaboost, pasta, spotlight or keyscale"
        )
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


def _parse_flat_spans(raw: Any, max_spans: int) -> List[Tuple[str, ...]]:
    if not isinstance(raw, str):
        raise ValueError(f"{FLAT_SPANS} is a string of start:end:weight entries joined by ','")
    if len(raw) > max_spans * _MAX_FLAT_SPAN_CHARS:
        raise ValueError(
            f"{FLAT_SPANS} has {len(raw)} characters, more than {max_spans} spans; at most {max_spans} are allowed"
        )
    parts = [p.strip() for p in raw.split(",") if p.strip()]  # bounded by the length check above
    spans = []
    for part in parts:
        bits = tuple(part.split(":"))
        if len(bits) not in (2, 3):
            raise ValueError(f"{FLAT_SPANS} entry {_show(part)} must be start:end or start:end:weight")
        spans.append(bits)
    return spans


_MAX_FLAT_SPAN_CHARS = 48  # "start:end:weight," with generous digits
_POSITION = re.compile(r"[0-9]{1,9}")


def _position(raw: Any, what: str) -> int:
    """A span bound: a non-negative int (JSON) or its ASCII digits (the flat form)."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and _POSITION.fullmatch(raw.strip()):
        return int(raw)
    raise ValueError(f"a span's {what} is a whole token position such as 12; got {_show(raw)}")


def _weight(raw: Any) -> float:
    lo, hi = SPAN_WEIGHT_RANGE
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        w = float(raw)
    elif isinstance(raw, str) and is_decimal(raw.strip()):
        w = float(raw)
    else:
        raise ValueError(f"a span weight is a number in [{lo:g}, {hi:g}]; got {_show(raw)}")
    if not (w > 0 and math.isfinite(w)) or not lo <= w <= hi:
        raise ValueError(f"span weight {_show(raw)}: weights are finite and > 0, in [{lo:g}, {hi:g}]")
    return w


def parse_request(
    extra_args: Optional[Dict[str, Any]],
    prompt_token_ids: Sequence[int],
    special_ids: Sequence[int] = (),
    limits: Optional[RequestLimits] = None,
) -> Optional[RequestSteering]:
    """The steering of one request, or None for an unsteered one.

    Everything in ``extra_args`` comes from a client and is read as such: the method spec with the
    request grammar (`attnsteer.specs.parse_request_spec` — values only, never a file; each
    setting bounded by `attnsteer.specs.REQUEST_RANGES` and ``limits``, the served model's
    layer and head counts), at most ``limits.max_spans`` spans of whole token positions inside the
    prompt with weights in `attnsteer.specs.SPAN_WEIGHT_RANGE`. Work and memory stay
    proportional to the request. Raises a ``ValueError`` that names the setting and what is
    allowed (never a server path nor an internal exception's text) for anything else, and for a
    span that covers special tokens only.

    Guide: ``docs/guides/vllm.md`` (with a runnable example; its security section says what a
    client can and cannot make the server do).
    """
    limits = limits or RequestLimits()
    try:
        return _parse_request(extra_args or {}, prompt_token_ids, special_ids, limits)
    except (ValueError, TypeError):
        raise  # written here and in specs: they name the setting and quote only the client's own text
    except Exception:  # noqa: BLE001 - a client must not see an internal exception's text
        logger.exception("attnsteer: an unexpected error while reading a steering request")
        raise ValueError("the attnsteer steering request could not be read; see docs/guides/vllm.md") from None


def _parse_request(
    extra_args: Dict[str, Any], prompt_token_ids: Sequence[int], special_ids: Sequence[int], limits: RequestLimits
) -> Optional[RequestSteering]:
    if not isinstance(extra_args, dict):
        raise ValueError("extra_args must be a JSON object")
    if KEY in extra_args:
        cfg = extra_args[KEY]
        if not isinstance(cfg, dict) or "method" not in cfg or not isinstance(cfg.get("spans"), (list, tuple)):
            raise ValueError(
                'extra_args["attnsteer"] must be {"method": "<spec>", "spans": [[start, end, weight], ...]}'
            )
        method, spans = cfg["method"], cfg["spans"]
    elif FLAT_METHOD in extra_args or FLAT_SPANS in extra_args:
        if FLAT_METHOD not in extra_args or FLAT_SPANS not in extra_args:
            raise ValueError(f"vllm_xargs needs both {FLAT_METHOD} and {FLAT_SPANS}")
        method, spans = extra_args[FLAT_METHOD], _parse_flat_spans(extra_args[FLAT_SPANS], limits.max_spans)
    else:
        return None
    if len(spans) > limits.max_spans:  # before the spec or any span is read (both forms)
        raise ValueError(f"the request lists {len(spans)} spans; at most {limits.max_spans} are allowed")
    spec, parsed = _servable_spec(method, limits)
    T = len(prompt_token_ids)
    weights = torch.zeros(T, dtype=torch.float32)
    clean: List[Span] = []
    for s in spans:
        if not isinstance(s, (list, tuple)) or len(s) not in (2, 3):
            raise ValueError(f"a span is [start, end] or [start, end, weight]; got {_show(s)}")
        a, b = _position(s[0], "start"), _position(s[1], "end")
        if not 0 <= a < b <= T:
            raise ValueError(f"span [{a}, {b}) lies outside the {T}-token prompt (0 <= start < end <= {T})")
        w = _weight(s[2]) if len(s) == 3 else 1.0
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
