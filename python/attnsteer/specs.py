"""Method specs: one short string per steering configuration, used on the command line, in
serving requests and as the key under which results are stored.

Grammar: ``name[:key=value,key=value…]``, with ``gate+`` in front for the plausibility gate
(``Directer(method=…)``)::

    none                         unsteered
    guide:delta=2                GUIDE(delta=2)
    instaboost:alpha=10          InstABoost(alpha=10)
    pasta:alpha=0.1              PASTA on all heads
    pasta:alpha=0.1,layers=10-19 PASTA on every head of layers 10..19 (a head subset)
    pasta:alpha=0.1,heads=10:0+10:3-5+12:1   PASTA on heads given inline, as layer:head pairs
    pasta:alpha=0.01,heads=smollm2-135m      a head profile by name (shipped, or the server's)
    pasta:alpha=0.1,heads=heads.json         a profile file (attnsteer.profile_heads JSON): parse_local only
    spotlight:target=0.3         SpotLight
    keyscale:alpha=2             KeyScale (DIRECTER's steering, decode rows)
    directer:alpha=100,beta=0.5  DIRECTER
    spa:omega=1.5                SPA (logit-level: two passes, the anchor hidden in the second)
    seka:gain=1,projection=F     SEKA, projectors from attnsteer learn-projection (parse_local only)
    prism:gain=1,gain_value=0.2,projection=F   PRISM-Δ (learn-projection --kind prism)
    adaseka:gain=1,experts=A+B+C AdaSEKA: SEKA projections (--family …) mixed per prompt; a model name
                                 names its shipped set (experts=qwen2.5-coder-0.5b)
    gate+guide:delta=2           GUIDE inside DIRECTER's plausibility gate

Values: plain ASCII decimal numbers (no NaN, no infinity), ``true``/``false``,
``prefill|decode|both`` for ``phases``, layer lists as ``a-b`` ranges joined by ``+`` (``0-3+8``).
A setting may appear once.

Two trust levels, two entry points, one grammar:

- `parse_local` (the CLI, the evaluation harness, saved configs): a local user's spec; ``heads=``
  may also name a JSON file, which is read.
- `parse` and `parse_request_spec` (the library default, and every spec that arrives with a vLLM
  request): values only — nothing is ever opened. `parse_request_spec` also bounds every setting
  before it is used (`REQUEST_RANGES`, layer and head indices against the served model's counts, the
  spec's length), and its errors name the setting and its allowed range, never a server path.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import MISSING, dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

from .directer import Directer
from .keyedit import FAMILIES, PRISM, SEKA, AdaSEKA
from .methods import GUIDE, PASTA, InstABoost, KeyScale, Method, SpotLight
from .spa import SPA

__all__ = [
    "parse",
    "parse_local",
    "parse_request_spec",
    "canonical",
    "Spec",
    "SpecError",
    "RequestLimits",
    "REQUEST_RANGES",
    "load_head_profiles",
    "HeadMap",
    "SPAN_WEIGHT_RANGE",
    "is_decimal",
]

_CLASSES = {
    "guide": GUIDE,
    "instaboost": InstABoost,
    "pasta": PASTA,
    "spotlight": SpotLight,
    "keyscale": KeyScale,
    "directer": Directer,
    "spa": SPA,
    "seka": SEKA,
    "prism": PRISM,
    "adaseka": AdaSEKA,
}

Spec = Union[None, Method, Directer, SPA]
HeadMap = Dict[int, Sequence[int]]

# Head profiles that ship with the package (examples/profile_pasta_heads.py made them).
_DATA = Path(__file__).resolve().parent / "data"
SHIPPED_HEADS = {
    "smollm2-135m": "pasta_heads_smollm2_135m.json",
    "qwen2.5-coder-0.5b": "pasta_heads_qwen2.5_coder_0.5b.json",  # bfloat16 profile (its provenance inside)
}
_CAPABLE = ("qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b")
# Settings whose value is a name or a list, kept as written in the canonical spec
_NAMED = ("layers", "heads", "projection", "experts")
# SEKA key projections that ship (attnsteer learn-projection --prompts 64 --gamma 0.9; provenance inside).
SHIPPED_PROJECTIONS = {
    **{name: f"{name}.seka.safetensors" for name in ("qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b", "smollm2-135m")},
    # PRISM-Δ (learn-projection --kind prism) and AdaSEKA's experts, one SEKA projection per prompt family
    # (learn-projection --family F, with the singular values its routing needs), for the capable models
    **{f"{m}-prism": f"{m}.prism.safetensors" for m in _CAPABLE},
    **{f"{m}-{f}": f"{m}.{f}.safetensors" for m in _CAPABLE for f in FAMILIES},
}
# experts=MODEL: the model's shipped set of AdaSEKA experts
SHIPPED_EXPERTS = {m: tuple(f"{m}-{f}" for f in FAMILIES) for m in _CAPABLE}

# Without a model to check against, layer and head indices stop here (a range is checked before
# any list is built, so ``layers=0-300000000`` costs nothing).
MAX_LAYERS = 1024
MAX_HEADS = 1024
MAX_LOCAL_SPEC_CHARS = 4096
_MAX_NUMBER_CHARS = 32

# The range (inclusive) of every strength a serving request may set. Within them the kernels give
# finite output for any finite input, with span weights up to `SPAN_WEIGHT_RANGE`'s top
# (tests/test_serving_security.py runs both ends of each through the op and a model).
REQUEST_RANGES: Dict[Tuple[str, str], Tuple[float, float]] = {
    ("guide", "delta"): (-50.0, 50.0),
    ("guide", "length_ref"): (1.0, 1e6),
    ("instaboost", "alpha"): (1e-6, 1e6),
    ("pasta", "alpha"): (1e-6, 1e6),
    ("spotlight", "target"): (1e-3, 0.999),
    ("keyscale", "alpha"): (1e-3, 1e3),
    ("directer", "alpha"): (1e-3, 1e3),
    ("directer", "beta"): (1e-3, 1.0),
    ("directer", "max_trials"): (1, 64),
}
SPAN_WEIGHT_RANGE: Tuple[float, float] = (1e-3, 16.0)

_INT = re.compile(r"[0-9]{1,9}")
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,4})?")
_WORD = re.compile(r"[a-z][a-z0-9_]{0,31}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_LAYERS = re.compile(r"[0-9]{1,9}(?:-[0-9]{1,9})?(?:\+[0-9]{1,9}(?:-[0-9]{1,9})?)*")
_HEAD_PAIR = r"[0-9]{1,9}:[0-9]{1,9}(?:-[0-9]{1,9})?"
_INLINE_HEADS = re.compile(rf"{_HEAD_PAIR}(?:\+{_HEAD_PAIR})*")
_HIDDEN = ("stats", "last_ranking", "method", "ranking")


class SpecError(ValueError):
    """A method spec that cannot be used. The message names the setting and what is allowed and
    quotes only (a shortened copy of) the spec's own text."""


@dataclass(frozen=True)
class RequestLimits:
    """What a serving request may ask for, set by whoever starts the server.

    Attributes:
        num_layers: the served model's layer count (None: `MAX_LAYERS`).
        num_heads: its query heads per layer (None: `MAX_HEADS`).
        head_profiles: PASTA head profiles the operator loaded at start-up, by name
            (`load_head_profiles`); requests name them, as they name the shipped ones.
        max_spec_chars: the longest spec accepted.
        max_spans: the most spans one request may list.
    """

    num_layers: Optional[int] = None
    num_heads: Optional[int] = None
    head_profiles: Mapping[str, HeadMap] = field(default_factory=dict)
    max_spec_chars: int = 256
    max_spans: int = 256


@dataclass(frozen=True)
class _Grammar:
    """How one trust level reads values: the index bounds, the strength ranges (None: the method
    classes' own checks only), and how a ``heads=`` name that is not inline is resolved."""

    num_layers: int
    num_heads: int
    ranges: Optional[Mapping[Tuple[str, str], Tuple[float, float]]]
    resolve_heads: Callable[[str], Any]
    max_chars: int


def _show(raw: str, n: int = 40) -> str:
    """The client's own text, shortened, for an error message."""
    raw = str(raw)
    return repr(raw if len(raw) <= n else raw[:n] + "…")


def _shipped_profile_names() -> Tuple[str, ...]:
    return tuple(SHIPPED_HEADS)


@lru_cache(maxsize=None)
def _shipped_profile(name: str) -> HeadMap:
    return _read_profile(_DATA / SHIPPED_HEADS[name])


def _read_profile(path: Union[str, Path]) -> HeadMap:
    """A head profile file: the JSON that `attnsteer.profile_heads` writes, or a bare
    ``{layer: [heads]}``. Only trusted code calls this (local specs, the server's start-up)."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    data = data.get("heads", data) if isinstance(data, dict) else data
    if not isinstance(data, dict):
        raise ValueError(f"head profile {path}: expected {{layer: [heads]}}, got {type(data).__name__}")
    return {int(k): tuple(int(h) for h in v) for k, v in data.items()}


def load_head_profiles(setting: str) -> Dict[str, HeadMap]:
    """The server operator's head profiles, from a plugin setting such as
    ``"qwen-conflict=/srv/heads/qwen.json,other=/srv/heads/other.json"`` (``name=path`` pairs).

    Read once at start-up by trusted code (`attnsteer.vllm.plugin`, from
    ``ATTNSTEER_HEAD_PROFILES``); requests then refer to them by name (``heads=qwen-conflict``).
    Errors name the file: they go to the operator, not to a client.
    """
    out: Dict[str, HeadMap] = {}
    for item in filter(None, (s.strip() for s in setting.split(","))):
        name, eq, path = item.partition("=")
        name, path = name.strip(), path.strip()
        if not eq or not _NAME.fullmatch(name) or not path:
            raise ValueError(
                f"head profile setting {item!r} is not name=path (name: letters, digits, '.', '_', '-'); "
                "e.g. ATTNSTEER_HEAD_PROFILES=qwen=/srv/heads/qwen.json"
            )
        if name in out or name in SHIPPED_HEADS or name == "all":
            raise ValueError(f"head profile name {name!r} is used twice (or by a shipped profile); rename it")
        try:
            out[name] = _read_profile(path)
        except (OSError, ValueError, TypeError, AttributeError) as e:
            raise ValueError(f"head profile {name!r} ({path}) cannot be read: {e}") from None
    return out


def _parse_int(cls, key: str, raw: str) -> int:
    if not _INT.fullmatch(raw):
        raise SpecError(f"{cls.__name__} setting {key}={_show(raw)} is not a whole number; e.g. {key}=10")
    return int(raw)


def is_decimal(raw: str) -> bool:
    """Whether ``raw`` is a plain ASCII decimal number of bounded length (no NaN, infinity, hex,
    underscores or non-ASCII digits) — the one rule for a number that arrives as text."""
    return len(raw) <= _MAX_NUMBER_CHARS and _NUMBER.fullmatch(raw) is not None


def _parse_number(cls, key: str, raw: str) -> float:
    if not is_decimal(raw):
        hint = (
            "; NaN and infinity are not numbers here"
            if raw.strip("+-").lower() in ("nan", "inf", "infinity")
            else f"; e.g. {_EXAMPLE.get(key, key + '=2')}"
        )
        raise SpecError(f"{cls.__name__} setting {key}={_show(raw)} is not a number (plain decimal){hint}")
    return float(raw)


_EXAMPLE = {"layers": "layers=15-29", "max_trials": "max_trials=10", "target": "target=0.1"}


def _ranges(raw: str, what: str, bound: int, example: str) -> list:
    """``a-b`` / ``a`` parts joined by ``+``, each checked against ``bound`` before it is expanded."""
    out = []
    for part in raw.split("+"):
        a, _, b = part.partition("-")
        lo, hi = int(a), int(b or a)
        if lo > hi:
            raise SpecError(f"{what} range {part!r} runs backwards; write it low-high, e.g. {example}")
        if hi >= bound:
            raise SpecError(f"{what} index {hi} is outside 0..{bound - 1}")
        out.extend(range(lo, hi + 1))
    return list(dict.fromkeys(out))


def _parse_layers(raw: str, grammar: _Grammar) -> Tuple[int, ...]:
    if not _LAYERS.fullmatch(raw):
        raise SpecError(f"layers={_show(raw)} is not layer indices like 15-29 or 2+5+7")
    return tuple(_ranges(raw, "layers", grammar.num_layers, "layers=15-29"))


def _parse_inline_heads(raw: str, grammar: _Grammar) -> HeadMap:
    heads: Dict[int, list] = {}
    for pair in raw.split("+"):
        layer, _, hs = pair.partition(":")
        if int(layer) >= grammar.num_layers:
            raise SpecError(f"heads: layer {int(layer)} is outside 0..{grammar.num_layers - 1}")
        heads.setdefault(int(layer), []).extend(_ranges(hs, "heads", grammar.num_heads, "heads=10:0-3"))
    return {k: list(dict.fromkeys(v)) for k, v in heads.items()}


def _parse_heads(raw: str, grammar: _Grammar) -> Union[str, HeadMap]:
    if raw == "all":
        return "all"
    if _INLINE_HEADS.fullmatch(raw):
        return _parse_inline_heads(raw, grammar)
    heads = grammar.resolve_heads(raw)
    for layer, hs in heads.items():
        if not 0 <= layer < grammar.num_layers or any(not 0 <= h < grammar.num_heads for h in hs):
            raise SpecError(
                f"head profile {_show(raw)} names layer {layer} heads {list(hs)}, outside this model's "
                f"{grammar.num_layers} layers x {grammar.num_heads} heads"
            )
    return {k: list(v) for k, v in heads.items()}


def _kind(cls, key: str) -> str:
    names = {f.name: f for f in fields(cls) if f.init and f.name not in _HIDDEN}
    if key not in names:
        raise SpecError(f"{cls.__name__} has no setting {_show(key)}; settings: {', '.join(sorted(names))}")
    if key in _NAMED:
        return key
    default = names[key].default
    if default is MISSING:
        return "number"
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, int):
        return "int"
    if isinstance(default, str):
        return "word"
    return "number"


def _value(name: str, cls, key: str, raw: str, grammar: _Grammar) -> Any:
    kind = _kind(cls, key)
    if kind == "layers":
        return _parse_layers(raw, grammar)
    if kind == "heads":
        return _parse_heads(raw, grammar)
    if kind == "projection":
        return _projection(raw, grammar)
    if kind == "experts":
        names = SHIPPED_EXPERTS.get(raw) or raw.split("+")
        if not all(names):
            raise SpecError(f"experts={_show(raw)} has an empty name; join projections with '+', e.g. experts=a+b")
        return [_projection(n, grammar) for n in names]
    if kind == "bool":
        if raw.lower() not in ("true", "false"):
            raise SpecError(f"{cls.__name__} setting {key}={_show(raw)} is true or false")
        return raw.lower() == "true"
    if kind == "word":
        if not _WORD.fullmatch(raw.lower()):
            raise SpecError(f"{cls.__name__} setting {key}={_show(raw)} is not a word (e.g. phases=decode)")
        return raw.lower()
    value: float = _parse_int(cls, key, raw) if kind == "int" else _parse_number(cls, key, raw)
    if not math.isfinite(value):
        raise SpecError(f"{cls.__name__} setting {key}={_show(raw)} must be finite")
    if grammar.ranges is not None:
        lo, hi = grammar.ranges.get((name, key), (-math.inf, math.inf))
        if not lo <= value <= hi:
            raise SpecError(f"{cls.__name__} setting {key}={_show(raw)} is outside its allowed range {lo:g} to {hi:g}")
    return value


def _split_settings(spec: str) -> Tuple[str, Dict[str, str]]:
    name, _, rest = spec.partition(":")
    settings: Dict[str, str] = {}
    for item in filter(None, rest.split(",")):
        if "=" not in item:
            raise SpecError(f"method spec {_show(spec)}: setting {_show(item)} is not key=value")
        k, v = item.split("=", 1)
        k, v = k.strip().lower(), v.strip()
        if k in settings:
            raise SpecError(f"method spec {_show(spec)}: setting {k!r} is given twice; give each setting once")
        settings[k] = v
    return name.strip().lower(), settings


def _build(spec: str, grammar: _Grammar) -> Tuple[str, Spec]:
    """``(canonical spec, method)``: the one reader behind every entry point."""
    if not isinstance(spec, str):
        raise TypeError(f"a method spec is a string such as 'guide:delta=2'; got {type(spec).__name__}")
    if len(spec) > grammar.max_chars:
        raise SpecError(f"the method spec has {len(spec)} characters; at most {grammar.max_chars} are allowed")
    if not spec.isascii():
        raise SpecError(f"method spec {_show(spec)} has non-ASCII characters; write numbers and names in ASCII")
    spec = spec.strip()
    gated = spec.lower().startswith("gate+")
    name, settings = _split_settings(spec[5:] if gated else spec)
    if name in ("none", "unsteered"):
        if gated or settings:
            raise SpecError(f"method spec {_show(spec)}: 'none' takes no settings and no gate")
        return "none", None
    if name not in _CLASSES:
        raise SpecError(f"unknown method {_show(name)} in spec {_show(spec)}: choose {', '.join(['none', *_CLASSES])}")
    cls = _CLASSES[name]
    values = {k: _value(name, cls, k, v, grammar) for k, v in settings.items()}
    try:
        method = cls(**values)
    except (ValueError, TypeError) as e:  # the classes' own checks; their messages quote values only
        raise SpecError(str(e)) from None
    if gated:
        if isinstance(method, Directer):
            raise SpecError(f"method spec {_show(spec)}: DIRECTER is already gated; drop 'gate+'")
        if isinstance(method, SPA):
            raise SpecError(f"method spec {_show(spec)}: SPA mixes logits, it cannot run inside DIRECTER's gate")
        if isinstance(method, (SEKA, AdaSEKA)):
            raise SpecError(
                f"method spec {_show(spec)}: SEKA / PRISM edit keys when they are written, which DIRECTER's "
                "per-step gate cannot undo; drop 'gate+'"
            )
        method = Directer(method=method)
    items = []
    for k in sorted(settings):
        v = values[k]
        if k in _NAMED or isinstance(v, str):
            text = settings[k] if k in _NAMED else v
        elif isinstance(v, bool):
            text = str(v).lower()
        else:
            text = f"{v:g}" if isinstance(v, float) else str(v)
        items.append(f"{k}={text}")
    canon = ("gate+" if gated else "") + name + (":" + ",".join(items) if items else "")
    return canon, method


def _projection(raw: str, grammar: _Grammar) -> Any:
    """SEKA's ``projection=``: a shipped projection by name (`SHIPPED_PROJECTIONS`), or a file
    (``attnsteer learn-projection``), which only `parse_local` reads."""
    from .keyedit import KeyProjection

    if raw in SHIPPED_PROJECTIONS:
        return KeyProjection.load(_DATA / "projections" / SHIPPED_PROJECTIONS[raw])
    if grammar.resolve_heads is _local_files:
        return KeyProjection.load(raw)
    if grammar.resolve_heads is _keep_name:
        return KeyProjection({}, {}, {"path": raw})  # canonical(): the name only, no file opened
    raise SpecError(
        f"projection={_show(raw)} is not a shipped key projection ({', '.join(SHIPPED_PROJECTIONS)}); a file is "
        "read by parse_local (the CLI, saved configs), not by a values-only spec"
    )


def _no_files(raw: str) -> HeadMap:
    if raw in SHIPPED_HEADS:
        return _shipped_profile(raw)
    raise SpecError(
        f"heads={_show(raw)} is not a head profile name ({', '.join(_shipped_profile_names())}) or an inline "
        "list such as heads=10:0+10:3-5; a profile file is read by parse_local (the CLI), not here"
    )


def _local_files(raw: str) -> HeadMap:
    if raw in SHIPPED_HEADS:
        return _shipped_profile(raw)
    return _read_profile(raw)


def _keep_name(raw: str) -> HeadMap:
    return {}


_VALUES = _Grammar(MAX_LAYERS, MAX_HEADS, None, _no_files, MAX_LOCAL_SPEC_CHARS)
_LOCAL = _Grammar(MAX_LAYERS, MAX_HEADS, None, _local_files, MAX_LOCAL_SPEC_CHARS)
# canonical() normalises a local spec without reading its profile file (parse_local reads it)
_SYNTAX = _Grammar(MAX_LAYERS, MAX_HEADS, None, _keep_name, MAX_LOCAL_SPEC_CHARS)


def parse(spec: str) -> Spec:
    """The method of ``spec`` (module docstring), values only: numbers, layer lists, inline
    heads, shipped head-profile names; never a file. ``none`` gives None."""
    return _build(spec, _VALUES)[1]


def parse_local(spec: str) -> Spec:
    """`parse` for a local user's spec (the CLI, the evaluation harness, a saved config):
    ``heads=`` may also name a head-profile JSON file, which is read here."""
    return _build(spec, _LOCAL)[1]


# Methods a serving request cannot name, and why (the reason is the error's second half).
_NOT_SERVED = {
    "spa": "SPA runs a second forward pass per step with the anchor hidden, which a vLLM request cannot "
    "schedule; use attnsteer.generate, or model.generate inside attnsteer.steer(model, SPA(...), spans=enc)",
    "prism": "its keys and values must be edited when vLLM writes them into the paged cache, which the plugin "
    "does not do yet; use attnsteer.steer / attnsteer.generate",
    "seka": "its keys must be edited when vLLM writes them into the paged cache, which the plugin does not do yet; "
    "use attnsteer.steer / attnsteer.generate",
    "adaseka": "its keys must be edited when vLLM writes them into the paged cache, with a mix of experts routed "
    "on the prompt's last query, which the plugin does not do yet; use attnsteer.steer / attnsteer.generate",
}


def parse_request_spec(spec: Any, limits: Optional[RequestLimits] = None) -> Tuple[str, Spec]:
    """``(canonical spec, method)`` of a spec that arrived with a serving request.

    Values only, each bounded before use: strengths in `REQUEST_RANGES`, layer indices below
    ``limits.num_layers`` and heads below ``limits.num_heads`` (checked before a range becomes a
    list), at most ``limits.max_spec_chars`` characters; head profiles by name only (shipped or
    ``limits.head_profiles``). Raises `SpecError` (a ``ValueError``) that names the setting and its
    allowed range, or ``TypeError`` when ``spec`` is not a string.
    """
    limits = limits or RequestLimits()
    head = _split_settings(spec.strip()[:64].split(",")[0])[0] if isinstance(spec, str) else ""
    if head in _NOT_SERVED:
        raise SpecError(f"{head} is not served by the vLLM plugin: {_NOT_SERVED[head]}")
    profiles = dict(limits.head_profiles)

    def by_name(raw: str) -> HeadMap:
        if raw in profiles:
            return profiles[raw]
        if raw in SHIPPED_HEADS:
            return _shipped_profile(raw)
        known = ", ".join(sorted({*profiles, *SHIPPED_HEADS}))
        raise SpecError(
            f"heads={_show(raw)} is not a head profile this server knows ({known}); give heads inline as "
            "layer:head pairs, e.g. heads=10:0+10:3-5"
        )

    grammar = _Grammar(
        min(limits.num_layers or MAX_LAYERS, MAX_LAYERS),
        min(limits.num_heads or MAX_HEADS, MAX_HEADS),
        REQUEST_RANGES,
        by_name,
        limits.max_spec_chars,
    )
    return _build(spec, grammar)


def canonical(spec: str) -> str:
    """The spec normalised (lower-case name, settings sorted, numbers as floats), so that
    ``guide:delta=2`` and ``GUIDE:delta=2.0`` are stored under one key. Checks the grammar of a
    local spec (`parse_local`'s) without reading a profile file."""
    return _build(spec, _SYNTAX)[0]


def label(spec: Optional[str]) -> str:
    return "unsteered" if spec in (None, "none") else spec
