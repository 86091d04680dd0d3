"""The evaluation tasks in one shape, so that one sweep and report engine (`.sweep`) serves them all.

Every task goes cases → prompts with spans → replies → per-case verdicts → summary with intervals:

- ``cases(tokenizer, model, split, options)``: the prompts of a split, each with a unique ``key``
  and its highlighted character spans (`ifeval.Prompt`);
- ``run(...)``: generate and judge every (method, case) not yet in the resumable
  `runner.ResponseStore`;
- ``summarize(store, tag, max_new_tokens, keys)``: summary rows, each with ``method``, ``n``,
  ``flags`` (fluency against the unsteered replies to the same prompts) and ``vs_unsteered`` (the
  paired bootstrap interval of the difference);
- ``scores(rows)``: one dev score per method — what a sweep maximises (`Task.metric`);
- ``report(...)``: ``results.json`` / ``results.md`` (and the task's plot) for a folder.

Tasks: ``ifeval`` (`.ifeval`, prompt-level loose accuracy), ``retention`` (`.retention`, mean
accuracy over the length × placement cells) and ``priority`` (`.priority`, mean ``marked`` rate over
the filler × placement cells).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from . import runner

__all__ = ["Task", "TASKS", "Options", "get"]


@dataclass
class Options:
    """What a task's cases depend on besides the split (the CLI's task options; `None` = the task's
    default). ``lengths``: retention document lengths / priority filler tokens; ``docs``: retention
    documents per length / priority entities per relation."""

    lengths: Optional[Sequence[int]] = None
    placements: Optional[Sequence[str]] = None
    docs: Optional[int] = None
    rules: Optional[Sequence[str]] = None
    strategy: str = "prompt"
    k: int = 2
    limit: Optional[int] = None


@dataclass
class Task:
    """One evaluation task. ``defaults[split]`` holds the `Options` a split uses when not given."""

    name: str
    metric: str
    max_new_tokens: int
    defaults: Dict[str, Options] = field(default_factory=dict)

    def options(self, split: str, given: Options) -> Options:
        """``given`` with its unset fields taken from the split's defaults."""
        base = self.defaults.get(split, Options())
        return Options(**{f: (getattr(given, f) if getattr(given, f) is not None else getattr(base, f))
                          for f in Options.__dataclass_fields__})  # fmt: skip

    # --- the task's own steps -------------------------------------------------------------------
    def cases(self, tokenizer, model, split: str, opts: Options, max_new_tokens: int) -> List[Any]:
        raise NotImplementedError

    def strategy(self, method: str, opts: Options) -> str:
        """The strategy string the store files ``method``'s replies under."""
        raise NotImplementedError

    def run(self, model, tokenizer, cases, methods, *, store, model_tag, batch_size, max_new_tokens, opts,
            progress=True) -> None:  # fmt: skip
        raise NotImplementedError

    def summarize(self, store, model_tag: str, max_new_tokens: int, cases, opts: Options) -> List[Dict[str, Any]]:
        raise NotImplementedError

    def scores(self, rows: Sequence[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
        """Per method: ``score`` (the dev metric), ``cells``, ``n`` (replies) and the union of the
        cells' fluency ``flags``. Default: the mean of the rows' ``accuracy`` over the method's cells."""
        out: Dict[str, Dict[str, Any]] = {}
        for r in rows:
            s = out.setdefault(r["method"], {"method": r["method"], "cells": 0, "n": 0, "sum": 0.0, "flags": set()})
            s["cells"] += 1
            s["n"] += r["n"]
            s["sum"] += r["accuracy"]
            s["flags"].update(r.get("flags", []))
        for s in out.values():
            s["score"] = s.pop("sum") / s["cells"]
            s["flags"] = sorted(s["flags"])
        return out

    def table(self, rows: Sequence[Dict[str, Any]]) -> str:
        raise NotImplementedError

    def report(self, store, model_tag, max_new_tokens, out, cases, opts, *, title, command, machine) -> str:
        """Write the folder's report of these cases; returns the path of its ``results.md``."""
        raise NotImplementedError

    def keys(self, cases) -> set:
        return {_key(c) for c in cases}


def _key(c) -> Any:
    return c["key"] if isinstance(c, dict) else c.key


class IFEvalTask(Task):
    """IFEval's prompts, the fixed 100 / 441 split, a highlight strategy (`ifeval.STRATEGIES`)."""

    def cases(self, tokenizer, model, split, opts, max_new_tokens):
        from . import ifeval

        records = ifeval.split(ifeval.load_prompts(), split)
        return records[: opts.limit] if opts.limit else records

    def strategy(self, method, opts):
        return runner.baseline_strategy(opts.strategy) if method == "none" else opts.strategy

    def run(self, model, tokenizer, cases, methods, *, store, model_tag, batch_size, max_new_tokens, opts,
            progress=True):  # fmt: skip
        runner.run_ifeval(model, tokenizer, cases, methods, strategy=opts.strategy, store=store,
                          model_tag=model_tag, batch_size=batch_size, max_new_tokens=max_new_tokens,
                          progress=progress)  # fmt: skip

    def summarize(self, store, model_tag, max_new_tokens, cases, opts):
        rows = runner.summarize_ifeval(store, cases, model_tag, max_new_tokens)
        return [r for r in rows if r["strategy"] == self.strategy(r["method"], opts)]

    def scores(self, rows):
        return {r["method"]: {"method": r["method"], "score": r["prompt_loose"], "cells": 1, "n": r["n"],
                              "flags": list(r["flags"])} for r in rows}  # fmt: skip

    def table(self, rows):
        return runner.markdown_table(rows)

    def report(self, store, model_tag, max_new_tokens, out, cases, opts, *, title, command, machine):
        rows = self.summarize(store, model_tag, max_new_tokens, cases, opts)
        return runner.write_report(rows, out, title=title, command=command, machine=machine)[1]

    def evidence(self, rows, spec):
        row = next((r for r in rows if r["method"] == spec), None)
        if row is None or not row.get("vs_unsteered"):
            raise ValueError(f"{spec!r} has no test row with an unsteered twin")
        return {"prompt_loose_diff": row["vs_unsteered"].get("prompt_loose"),
                "inst_loose_diff": row["vs_unsteered"].get("inst_loose")}  # fmt: skip


class _CaseTask(Task):
    """A task whose module (`retention`, `priority`) has ``STRATEGY``, ``run``, ``summarize(…, keys=)``,
    ``table`` and ``write_report``; subclasses build the cases."""

    module = ""

    def _mod(self):
        import importlib

        return importlib.import_module(f"{__package__}.{self.module}")

    def strategy(self, method, opts):
        return self._mod().STRATEGY

    def run(self, model, tokenizer, cases, methods, *, store, model_tag, batch_size, max_new_tokens, opts,
            progress=True):  # fmt: skip
        self._mod().run(model, tokenizer, cases, methods, store=store, model_tag=model_tag, batch_size=batch_size,
                        max_new_tokens=max_new_tokens, progress=progress)  # fmt: skip

    def summarize(self, store, model_tag, max_new_tokens, cases, opts):
        return self._mod().summarize(store, model_tag, max_new_tokens, keys=self.keys(cases))

    def table(self, rows):
        return self._mod().table(rows)

    def report(self, store, model_tag, max_new_tokens, out, cases, opts, *, title, command, machine):
        self._mod().write_report(store, model_tag, max_new_tokens, out, command, machine, keys=self.keys(cases))
        return os.path.join(out, "results.md")


class RetentionTask(_CaseTask):
    """A checkable rule before / after / beside a long document (`retention`)."""

    module = "retention"

    def cases(self, tokenizer, model, split, opts, max_new_tokens):
        from . import retention

        max_ctx = getattr(model.config, "max_position_embeddings", None)
        out = retention.cases(tokenizer, opts.lengths, opts.placements, opts.rules, opts.docs, max_ctx,
                              max_new_tokens, split=split)  # fmt: skip
        return out[: opts.limit] if opts.limit else out


class PriorityTask(_CaseTask):
    """Conflicting statements, one marked (`priority`)."""

    module = "priority"

    def cases(self, tokenizer, model, split, opts, max_new_tokens):
        from . import priority

        max_ctx = getattr(model.config, "max_position_embeddings", None)
        out = priority.cases(tokenizer, opts.lengths, opts.placements, opts.docs, opts.k, split,
                             max_context=max_ctx, max_new_tokens=max_new_tokens)  # fmt: skip
        return out[: opts.limit] if opts.limit else out

    def evidence(self, rows, spec):
        from . import priority

        return priority.evidence(rows, spec)


TASKS: Dict[str, Task] = {
    "ifeval": IFEvalTask("ifeval", "prompt-level loose accuracy", 256),
    "retention": RetentionTask(
        "retention",
        "mean rule-following accuracy over the length × placement cells",
        64,
        {
            "dev": Options(lengths=[1024], placements=["before"], docs=6, rules=["french", "lowercase", "no-comma"]),
            "test": Options(
                lengths=[512, 1024, 2048, 4096],
                placements=["before", "after", "system"],
                docs=11,
                rules=["french", "lowercase", "no-comma"],
            ),  # fmt: skip
        },
    ),
    "priority": PriorityTask(
        "priority",
        "mean rate of replies naming the marked value over the filler × placement cells",
        24,
        {
            "dev": Options(lengths=[0], placements=["user", "system"], docs=4),
            "test": Options(lengths=[0, 512, 2048], placements=["user", "system"], docs=8),
        },
    ),
}


def get(name: str) -> Task:
    """The task called ``name`` (`TASKS`)."""
    if name not in TASKS:
        raise ValueError(f"unknown evaluation task {name!r}: choose from {', '.join(TASKS)}")
    return TASKS[name]
