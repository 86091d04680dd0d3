"""Tuned steering configurations: the setting a sweep chose for a model and task, with its evidence.

A `SteeringConfig` is a method spec (the `attnsteer.specs` grammar, e.g.
``"keyscale:alpha=1.5"``) plus what it was tuned for and what was measured. It is accepted wherever
a method is: ``steer(model, cfg, spans=...)``, ``attnsteer.generate(..., method=cfg)``, the CLI's
``--config FILE`` and ``attnsteer.vllm.steered_prompt(tok, prompt, cfg)``.

`recommended` returns the configurations that ship for the embedded model (from the sweeps in
``eval_results/``); ``attnsteer eval sweep --save-config FILE`` writes one for your model.

Example::

    import attnsteer
    cfg = attnsteer.recommended("SmolLM2-135M-Instruct", task="ifeval")
    print(cfg.method, cfg.evidence["test"]["verdict"])
    text = attnsteer.generate(model, tok, "<<Answer in lowercase.>> Tell me about Paris.", cfg,
                              max_new_tokens=40)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from . import specs

__all__ = [
    "SteeringConfig",
    "NoSettingHelps",
    "recommended",
    "shipped_tasks",
    "resolve_method",
    "from_cli",
    "RECOMMENDED_FILE",
    "PAPER_STRENGTHS",
]

RECOMMENDED_FILE = Path(__file__).resolve().parent / "data" / "recommended.json"

# The strengths the papers use (7B+ models). On the embedded 135M model they wreck the replies
# (eval_results/sweep: GUIDE 2, InstABoost 10 and PASTA 0.1 lose 16-17 points of IFEval dev accuracy).
PAPER_STRENGTHS = {
    "guide": "guide:delta=2",
    "instaboost": "instaboost:alpha=10",
    "pasta": "pasta:alpha=0.01",
    "spotlight": "spotlight:target=0.3",
    "keyscale": "keyscale:alpha=100",
}


@dataclass(frozen=True)
class SteeringConfig:
    """A steering setting chosen for a model and task.

    Attributes:
        method: the method spec, e.g. ``"keyscale:alpha=1.5"`` (see `attnsteer.specs`).
        model: the model it was tuned on (a name, for the record).
        task: what it was tuned for: ``"ifeval"`` or ``"retention"``.
        evidence: what was measured — dev score, test difference to unsteered with its 95 %
            interval and verdict, replies, the command.
        note: anything a user should know (e.g. "no evidence of a difference at 1k tokens").

    Guide: ``docs/guides/methods.md`` (with a runnable example).
    """

    method: str
    model: Optional[str] = None
    task: Optional[str] = None
    evidence: Dict[str, Any] = field(default_factory=dict)
    note: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", specs.canonical(self.method))  # raises on a bad spec

    def build(self):
        """The method object of `method` (None for ``"none"``)."""
        return specs.parse_local(self.method)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def save(self, path: Union[str, Path]) -> str:
        """Write the configuration as JSON; returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")
        return str(path)

    @classmethod
    def load(cls, path: Union[str, Path]) -> "SteeringConfig":
        """Read a configuration written by `save` or ``attnsteer eval sweep --save-config``."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(
                f"no steering configuration at {path}; write one with `attnsteer eval sweep --save-config {path}`"
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not a steering configuration (invalid JSON: {err})") from err
        if not isinstance(data, dict) or "method" not in data:
            raise ValueError(f'{path} is not a steering configuration: it needs at least {{"method": "<spec>"}}')
        unknown = set(data) - {"method", "model", "task", "evidence", "note"}
        if unknown:
            raise ValueError(
                f"{path}: unknown fields {sorted(unknown)}; a configuration has method, model, task, evidence, note"
            )
        return cls(**data)


def from_cli(spec: str) -> str:
    """A ``--method`` value: a spec (`attnsteer.specs`), or ``@FILE`` — the spec of a `SteeringConfig`
    saved by ``attnsteer eval sweep --save-config FILE`` (checked here, before any model loads; a
    head-profile file it names is read here too). Returns the canonical spec."""
    if spec.startswith("@"):
        spec = SteeringConfig.load(spec[1:]).method
    specs.parse_local(spec)
    return specs.canonical(spec)


def resolve_method(method: Any) -> Any:
    """A `SteeringConfig` → its method object; anything else unchanged. The entry points
    call this, so each accepts a configuration where it takes a method."""
    if isinstance(method, SteeringConfig):
        return method.build()
    return method


class NoSettingHelps(KeyError):
    """`recommended` for a model and task that was tuned, where no setting beat unsteered on the dev split
    (or the dev choice's gain did not carry over to the test split): nothing ships. ``evidence`` holds what
    the sweep measured (every setting's dev score, unsteered's, the command that ran it; ``test``: the dev
    choice's test cells, when it was run there).

    Guide: ``docs/guides/methods.md`` (with a runnable example).
    """

    def __init__(self, message: str, evidence: Dict[str, Any]):
        super().__init__(message)
        self.evidence = evidence

    def __str__(self) -> str:
        return str(self.args[0])


def _shipped() -> Dict[str, Any]:
    return json.loads(RECOMMENDED_FILE.read_text(encoding="utf-8"))


def _model_name(model_or_name: Any, table: Dict[str, Any]) -> str:
    if isinstance(model_or_name, str):
        want = model_or_name.lower()
        for name, entry in table.items():
            if want == name.lower() or want in [a.lower() for a in entry.get("aliases", [])]:
                return name
        raise KeyError(
            f"no tuned configuration ships for {model_or_name!r} (shipped: {', '.join(table)}); tune one with "
            "`attnsteer eval sweep --model YOUR_MODEL --save-config FILE` and pass FILE as --config / "
            "SteeringConfig.load(FILE)"
        )
    cfg = getattr(model_or_name, "config", None)
    arch = (getattr(cfg, "architectures", None) or [type(model_or_name).__name__])[0]
    sig = [arch, getattr(cfg, "num_hidden_layers", None), getattr(cfg, "hidden_size", None)]
    for name, entry in table.items():
        if entry.get("signature") == sig:
            return name
    raise KeyError(
        f"no tuned configuration ships for this model ({sig[0]}, {sig[1]} layers, hidden size {sig[2]}); "
        f"shipped: {', '.join(table)}. Tune one with `attnsteer eval sweep --save-config FILE`"
    )


def shipped_tasks(model_or_name: Any) -> List[str]:
    """The tasks `recommended` has a tuned setting for on this model (``[]`` when none ships).

    Example::

        >>> attnsteer.config.shipped_tasks("smollm2-135m")
        ['ifeval', 'retention']
    """
    table = _shipped()
    try:
        return list(table[_model_name(model_or_name, table)]["tasks"])
    except KeyError:
        return []


def recommended(model_or_name: Any, task: str = "ifeval", method: Optional[str] = None) -> SteeringConfig:
    """The configuration the project's sweeps chose for a shipped model and task.

    Args:
        model_or_name: a model name (``"SmolLM2-135M-Instruct"``, ``"smollm2-135m"``) or a loaded
            model (recognised by architecture, layer count and hidden size).
        task: ``"ifeval"`` (instructions in the prompt), ``"retention"`` (a rule before a long
            document) or ``"priority"`` (the marked one of conflicting statements).
        method: ``"guide"``, ``"instaboost"``, ``"pasta"``, ``"spotlight"``, ``"keyscale"``, ``"seka"``,
            ``"adaseka"``, ``"prism"``, ``"spa"``: the best setting of that method alone, where it was
            measured on the test split (default: the best of all methods).

    Returns:
        `SteeringConfig`, whose ``evidence`` holds the measured difference to unsteered with
        its paired bootstrap 95 % interval and verdict. Read the verdict before relying on it:
        "no evidence of a difference" is a possible, honest answer.

    Raises:
        NoSettingHelps: the model was tuned on this task and no setting beat unsteered on dev
            (a `KeyError`; its ``evidence`` holds the sweep's scores).
        KeyError: no configuration ships for this model, task or method (the message says how to
            tune one).

    Example::

        >>> attnsteer.recommended("smollm2-135m").method
        'keyscale:alpha=1.5'
        >>> attnsteer.recommended("smollm2-135m", method="guide").method
        'guide:delta=1'
    """
    table = _shipped()
    name = _model_name(model_or_name, table)
    tasks, no_gain = table[name]["tasks"], table[name].get("no_gain", {})
    if task in no_gain:
        rec = no_gain[task]
        raise NoSettingHelps(
            f"{name} was tuned on {task!r} and no setting beats unsteered there: {rec['evidence']['summary']}. "
            f"{rec.get('note', '')}Nothing ships for it (the scores are in this error's .evidence). To steer "
            f"anyway, pass a method yourself (e.g. attnsteer.config.PAPER_STRENGTHS), or tune on your own data "
            f"with `attnsteer eval sweep --task {task} --model MODEL --save-config FILE --allow-no-gain`",
            rec["evidence"],
        )
    if task not in tasks:
        tuned = f" (tuned without a gain: {', '.join(no_gain)})" if no_gain else ""
        raise KeyError(
            f"no tuned {task!r} configuration for {name}; tasks shipped for it: {', '.join(tasks)}{tuned}. Tune one with "
            f"`attnsteer eval sweep --task {task} --model MODEL --save-config FILE` and load it with "
            "SteeringConfig.load(FILE)"
        )
    pick = tasks[task]
    if method is not None:
        per = pick.get("per_method", {})
        if method not in per:
            raise KeyError(
                f"no tuned {method!r} setting for {name} on {task!r}; methods shipped: {', '.join(per) or 'none'}"
            )
        pick = per[method]
    return SteeringConfig(pick["method"], model=name, task=task, evidence=pick["evidence"], note=pick.get("note", ""))
