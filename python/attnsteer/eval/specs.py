"""Method specs: one short string per steering configuration, used on the command line and as
the key under which results are stored.

Grammar: ``name[:key=value,key=value…]``, with ``gate+`` in front for the plausibility gate
(``Directer(method=…)``)::

    none                         unsteered
    guide:delta=2                GUIDE(delta=2)
    instaboost:alpha=10          InstABoost(alpha=10)
    pasta:alpha=0.1              PASTA on all heads
    pasta:alpha=0.1,layers=10-19 PASTA on every head of layers 10..19 (a head subset)
    pasta:alpha=0.1,heads=heads.json   PASTA on profiled heads (attnsteer.profile_heads JSON)
    pasta:alpha=0.01,heads=smollm2-135m  the profile shipped for the embedded model
    spotlight:target=0.3         SpotLight
    keyscale:alpha=2             KeyScale (DIRECTER's steering, decode rows)
    directer:alpha=100,beta=0.5  DIRECTER
    gate+guide:delta=2           GUIDE inside DIRECTER's plausibility gate

Values: numbers, ``true``/``false``, ``prefill|decode|both`` for ``phases``, layer lists as
``a-b`` ranges joined by ``+`` (``0-3+8``).
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

from ..directer import Directer
from ..methods import GUIDE, PASTA, InstABoost, KeyScale, Method, SpotLight

__all__ = ["parse", "canonical", "Spec"]

_CLASSES = {
    "guide": GUIDE,
    "instaboost": InstABoost,
    "pasta": PASTA,
    "spotlight": SpotLight,
    "keyscale": KeyScale,
    "directer": Directer,
}

Spec = Union[None, Method, Directer]

# Head profiles that ship with the package (examples/profile_pasta_heads.py made them).
SHIPPED_HEADS = {"smollm2-135m": str(Path(__file__).resolve().parents[1] / "data" / "pasta_heads_smollm2_135m.json")}


def _value(cls, key: str, raw: str) -> Any:
    try:
        return _parse_value(cls, key, raw)
    except ValueError as e:
        if "could not convert" not in str(e) and "invalid literal" not in str(e):
            raise
        what = "layer indices like 15-29 or 2+5+7" if key == "layers" else "a number"
        raise ValueError(
            f"{cls.__name__} setting {key}={raw!r} is not {what}; e.g. {_EXAMPLE.get(key, key + '=2')}"
        ) from None


_EXAMPLE = {"layers": "layers=15-29", "max_trials": "max_trials=10", "target": "target=0.1"}


def _parse_value(cls, key: str, raw: str) -> Any:
    names = {f.name: f for f in fields(cls)}
    if key not in names or key in ("stats", "last_ranking", "method", "ranking"):
        allowed = sorted(n for n in names if n not in ("stats", "last_ranking", "method", "ranking"))
        raise ValueError(f"{cls.__name__} has no setting {key!r}; settings: {', '.join(allowed)}")
    if key == "layers":
        out = []
        for part in raw.split("+"):
            if "-" in part:
                a, b = part.split("-", 1)
                out.extend(range(int(a), int(b) + 1))
            else:
                out.append(int(part))
        return tuple(out)
    if key == "heads":
        if raw == "all":
            return "all"
        if raw in SHIPPED_HEADS:
            raw = SHIPPED_HEADS[raw]
        with open(raw, encoding="utf-8") as f:
            data = json.load(f)
        data = data.get("heads", data)  # a profile_heads file, or a bare {layer: [heads]}
        return {int(k): [int(h) for h in v] for k, v in data.items()}
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    if key in ("phases", "ranking_variant"):
        return raw
    if key == "max_trials":
        return int(raw)
    return float(raw)


def _split_settings(spec: str) -> Tuple[str, Dict[str, str]]:
    name, _, rest = spec.partition(":")
    settings: Dict[str, str] = {}
    for item in filter(None, rest.split(",")):
        if "=" not in item:
            raise ValueError(f"method spec {spec!r}: setting {item!r} is not key=value")
        k, v = item.split("=", 1)
        settings[k.strip()] = v.strip()
    return name.strip().lower(), settings


def parse(spec: str) -> Spec:
    """Build the method of ``spec`` (see the module docstring); ``none`` gives None."""
    spec = spec.strip()
    gated = spec.lower().startswith("gate+")
    body = spec[5:] if gated else spec
    name, settings = _split_settings(body)
    if name in ("none", "unsteered"):
        if gated or settings:
            raise ValueError(f"method spec {spec!r}: 'none' takes no settings and no gate")
        return None
    if name not in _CLASSES:
        raise ValueError(f"unknown method {name!r} in spec {spec!r}: choose {', '.join(['none', *_CLASSES])}")
    cls = _CLASSES[name]
    method = cls(**{k: _value(cls, k, v) for k, v in settings.items()})
    if gated:
        if isinstance(method, Directer):
            raise ValueError(f"method spec {spec!r}: DIRECTER is already gated; drop 'gate+'")
        return Directer(method=method)
    return method


def canonical(spec: str) -> str:
    """The spec normalised (lower-case name, settings sorted, numbers as floats), so that
    ``guide:delta=2`` and ``GUIDE:delta=2.0`` are stored under one key."""
    spec = spec.strip()
    gated = spec.lower().startswith("gate+")
    name, settings = _split_settings(spec[5:] if gated else spec)
    parse(spec)  # validate
    if name == "unsteered":
        name = "none"
    cls = _CLASSES.get(name)
    items = []
    for k in sorted(settings):
        v = settings[k]
        if cls is not None and k not in ("layers", "heads", "phases", "ranking_variant"):
            parsed = _value(cls, k, v)
            v = (
                str(parsed).lower()
                if isinstance(parsed, bool)
                else (f"{parsed:g}" if isinstance(parsed, float) else str(parsed))
            )
        items.append(f"{k}={v}")
    out = name + (":" + ",".join(items) if items else "")
    return ("gate+" if gated else "") + out


def from_cli(spec: str) -> str:
    """A ``--method`` value: a spec, or ``@FILE`` — the spec of a `attnsteer.SteeringConfig`
    saved by ``attnsteer eval sweep --save-config FILE`` (checked here, before any model loads)."""
    if spec.startswith("@"):
        from ..config import SteeringConfig

        return SteeringConfig.load(spec[1:]).method
    return canonical(spec)


def label(spec: Optional[str]) -> str:
    return "unsteered" if spec in (None, "none") else spec
