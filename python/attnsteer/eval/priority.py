"""Context priority: two statements in the prompt disagree, one is marked — does the reply follow
the marked one? The mechanism PASTA's knowledge-conflict experiments and every method here rely on.

A case: ``k`` statements about the same attribute of the same made-up entity, with different
values (``The capital of Velmoria is Dranek.`` … ``The capital of Velmoria is Suvato.``), filler
text of N tokens between them (paragraphs of the Python language reference, as in the retention
task), and a question (``What is the capital of Velmoria? Reply with the name only.``). Every case
is asked ``k`` times, once with each statement marked, so the statements' positions cancel out:
a model that ignores the marks scores about 1/k. Placements: ``user`` (everything in the user
message) and ``system`` (the marked statement in the system message, the others in the user's).

A reply is checked by code: ``marked`` (it names the marked value and no other statement's),
``other`` (another statement's value and not the marked one), ``both`` or ``neither``; the score
is the ``marked`` rate. Dev and test use disjoint relations, entity names and values.

Everything is generated here from templates and seeded syllables: no data set, no licence.
"""

from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .. import specs
from ..config import from_cli
from . import fluency, ifeval, runner, stats

__all__ = ["RELATIONS", "PLACEMENTS", "cases", "verdict", "run", "summarize", "table", "plot", "main"]

PLACEMENTS = ("user", "system")
STRATEGY = "priority"
VERDICTS = ("marked", "other", "both", "neither")


@dataclass(frozen=True)
class Relation:
    """One attribute: a statement and a question template over an entity ``{e}`` and a value ``{v}``,
    and the value pool (``"names"`` / ``"places"`` / ``"languages"``: made-up words of the split; or
    literal values)."""

    name: str
    split: str
    statement: str
    question: str
    values: Any


RELATIONS: Tuple[Relation, ...] = (
    Relation(
        "capital",
        "dev",
        "The capital of {e} is {v}.",
        "What is the capital of {e}? Reply with the name only.",
        "places",
    ),
    Relation(
        "flag",
        "dev",
        "The flag of {e} is {v}.",
        "What colour is the flag of {e}? Reply with the colour only.",
        ("red", "blue", "green", "yellow", "purple", "orange", "black", "white"),
    ),
    Relation("founder", "dev", "{e} was founded by {v}.", "Who founded {e}? Reply with the name only.", "names"),
    Relation(
        "year",
        "dev",
        "The old bridge of {e} was built in {v}.",
        "In which year was the old bridge of {e} built? Reply with the year only.",
        tuple(str(y) for y in range(1712, 1990, 7)),
    ),
    Relation(
        "director",
        "test",
        "The director of the {e} museum is {v}.",
        "Who is the director of the {e} museum? Reply with the name only.",
        "names",
    ),
    Relation(
        "language",
        "test",
        "The official language of {e} is {v}.",
        "What is the official language of {e}? Reply with the language only.",
        "languages",
    ),
    Relation(
        "floors",
        "test",
        "The town hall of {e} has {v} floors.",
        "How many floors does the town hall of {e} have? Reply with the number only.",
        tuple(str(n) for n in range(3, 48, 2)),
    ),
    Relation(
        "river",
        "test",
        "The river that flows through {e} is the {v}.",
        "Which river flows through {e}? Reply with the name only.",
        "places",
    ),
)

# Disjoint syllable inventories: a dev name can never equal a test name.
_SYLLABLES = {
    "dev": ("ka", "lo", "ve", "ri", "sa", "mo", "te", "du", "ne", "bra"),
    "test": ("zi", "pa", "nu", "go", "fe", "bi", "ha", "ju", "wy", "cho"),
}
_SUFFIX = {"places": ("ia", "an", "or", "ek"), "languages": ("ic", "ish", "ese", "ian")}


def _word(rng: random.Random, split: str, n: int, suffix: str = "") -> str:
    syl = _SYLLABLES[split]
    return ("".join(rng.choice(syl) for _ in range(n)) + suffix).capitalize()


def _pool(rel: Relation, rng: random.Random, size: int) -> List[str]:
    if not isinstance(rel.values, str):
        return list(rel.values)
    out: List[str] = []
    while len(out) < size:
        if rel.values == "names":
            w = f"{_word(rng, rel.split, 2)} {_word(rng, rel.split, 2)}"
        else:
            w = _word(rng, rel.split, 2, rng.choice(_SUFFIX[rel.values]))
        if w not in out:
            out.append(w)
    return out


@dataclass
class Case:
    """One prompt: ``values`` of the ``k`` statements in prompt order, ``marked`` the index of the
    marked one; ``key`` is unique per (relation, entity, placement, filler length, marking)."""

    key: str
    relation: str
    placement: str
    filler: int
    filler_tokens: int
    values: Tuple[str, ...]
    marked: int
    prompt: ifeval.Prompt


def _chunks(text: str, parts: int) -> List[str]:
    if parts <= 0:
        return []
    words = text.split()
    step = -(-len(words) // parts) if words else 0
    return [" ".join(words[i * step : (i + 1) * step]) for i in range(parts)]


def build(
    tokenizer, statements: Sequence[str], marked: int, question: str, filler: str, placement: str
) -> Tuple[str, List[Tuple[int, int]]]:
    """The chat prompt and the marked statement's character span."""
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}; got {placement!r}")
    k = len(statements)
    if placement == "user":
        gaps = _chunks(filler, k - 1)
        parts: List[str] = []
        for i, s in enumerate(statements):
            parts.append(s)
            if i < k - 1 and gaps and gaps[i]:
                parts.append(gaps[i])
        msgs = [{"role": "user", "content": "\n\n".join(parts + [question])}]
    else:
        rest = [s for i, s in enumerate(statements) if i != marked]
        gaps = _chunks(filler, len(rest))
        parts = []
        for i, s in enumerate(rest):
            if gaps and gaps[i]:
                parts.append(gaps[i])
            parts.append(s)
        msgs = [
            {"role": "system", "content": statements[marked]},
            {"role": "user", "content": "\n\n".join(parts + [question])},
        ]
    text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    # the marked statement's own occurrence: statements are distinct sentences, each appears once
    at = text.find(statements[marked])
    if at < 0 or text.find(statements[marked], at + 1) >= 0:
        raise ValueError("the chat template changed a statement's text; cannot place the highlight")
    return text, [(at, at + len(statements[marked]))]


def cases(
    tokenizer,
    fillers: Sequence[int] = (0, 512),
    placements: Sequence[str] = ("user",),
    n_entities: int = 8,
    k: int = 2,
    split: str = "dev",
    seed: int = 0,
    max_context: Optional[int] = None,
    max_new_tokens: int = 24,
) -> List[Case]:
    """Every case of ``split``: per relation of the split, ``n_entities`` made-up entities, each with
    ``k`` distinct values, at each filler length and placement, asked once per marked statement."""
    from .retention import documents

    if split not in ("dev", "test"):
        raise ValueError(f"split must be 'dev' or 'test'; got {split!r}")
    if k < 2:
        raise ValueError(f"a conflict needs k >= 2 statements; got k={k}")
    rels = [r for r in RELATIONS if r.split == split]
    out: List[Case] = []
    reserve = 160 + max_new_tokens
    for filler in fillers:
        eff = filler if max_context is None else max(0, min(filler, max_context - reserve))
        docs = documents(tokenizer, eff, n_entities, split=split) if eff > 0 else [""] * n_entities
        for rel in rels:
            rng = random.Random(f"{seed}|{split}|{rel.name}")
            pool = _pool(rel, rng, 4 * n_entities * k)
            seen = set()
            for i in range(n_entities):
                entity = _word(rng, split, 3, "ia" if split == "dev" else "und")
                while entity in seen:
                    entity = _word(rng, split, 3, "ia" if split == "dev" else "und")
                seen.add(entity)
                values = tuple(rng.sample(pool, k))
                statements = [rel.statement.format(e=entity, v=v) for v in values]
                question = rel.question.format(e=entity)
                doc = docs[i % len(docs)]
                n_tok = len(tokenizer(doc, add_special_tokens=False)["input_ids"]) if doc else 0
                for pl in placements:
                    for m in range(k):
                        key = f"{rel.name}|{pl}|{filler}|{split}{i}|m{m}"
                        text, spans = build(tokenizer, statements, m, question, doc, pl)
                        out.append(Case(key, rel.name, pl, filler, n_tok, values, m, ifeval.Prompt(key, text, spans)))
    return out


def _mentions(reply: str, value: str) -> bool:
    return re.search(r"(?<![A-Za-z0-9])" + re.escape(value.lower()) + r"(?![A-Za-z0-9])", reply.lower()) is not None


def verdict(reply: str, values: Sequence[str], marked: int) -> str:
    """``marked`` | ``other`` | ``both`` | ``neither``: which statements' values the reply names."""
    hit = _mentions(reply, values[marked])
    other = any(_mentions(reply, v) for i, v in enumerate(values) if i != marked)
    if hit and not other:
        return "marked"
    if other and not hit:
        return "other"
    return "both" if hit else "neither"


def run(
    model,
    tokenizer,
    case_list: Sequence[Case],
    methods: Sequence[str],
    *,
    store: runner.ResponseStore,
    model_tag: str,
    batch_size: int = 8,
    max_new_tokens: int = 24,
    progress: bool = True,
) -> None:
    """Generate and judge every (method, case) not yet in ``store`` (resumable; `runner.run_task`)."""

    def row(c: Case, g) -> Dict[str, Any]:
        v = verdict(g.text, c.values, c.marked)
        return {"relation": c.relation, "placement": c.placement, "length": c.filler, "filler_tokens": c.filler_tokens,
                "values": list(c.values), "marked": c.marked, "verdict": v, "pass": v == "marked"}  # fmt: skip

    runner.run_task(model, tokenizer, case_list, methods, store=store, model_tag=model_tag, strategy=STRATEGY,
                    max_new_tokens=max_new_tokens, batch_size=batch_size, row=row, size=lambda c: c.filler_tokens,
                    desc="priority", progress=progress)  # fmt: skip


def summarize(
    store: runner.ResponseStore, model_tag: str, max_new_tokens: int, keys: Optional[set] = None
) -> List[Dict[str, Any]]:
    """Per (method, placement, filler length): the ``marked`` rate with its 95 % interval, the
    ``other`` / ``both`` / ``neither`` rates, fluency flags against the unsteered replies to the same
    prompts, and ``vs_unsteered``: the paired bootstrap interval of the difference."""
    from .retention import _mean_interval

    groups: Dict[Tuple[str, str, int], List[Dict[str, Any]]] = {}
    unsteered: Dict[str, Dict[str, Any]] = {}
    for k, r in store.records.items():
        if k[0] != model_tag or k[2] != STRATEGY or k[3] != max_new_tokens or (keys is not None and k[4] not in keys):
            continue
        groups.setdefault((r["method"], r["placement"], r["length"]), []).append(r)
        if r["method"] == "none":
            unsteered[r["key"]] = r
    rows = []
    for (m, pl, n), rs in sorted(groups.items(), key=lambda g: (g[0][0] != "none", g[0])):
        paired = [(r, unsteered[r["key"]]) for r in rs if r["key"] in unsteered]
        flags = (
            fluency.flags(runner._fluency_means([a for a, _ in paired]), runner._fluency_means([b for _, b in paired]))
            if m != "none" and paired
            else []
        )
        diff = stats.paired({r["key"]: r for r in rs}, unsteered, lambda r: float(r["pass"])) if m != "none" else None
        rate = {v: sum(r["verdict"] == v for r in rs) / len(rs) for v in VERDICTS}
        rows.append(
            {
                "method": m,
                "placement": pl,
                "length": n,
                "n": len(rs),
                "accuracy": rate["marked"],
                "accuracy_ci": _mean_interval([float(r["pass"]) for r in rs]),
                **{f"rate_{v}": rate[v] for v in VERDICTS},
                "filler_tokens": sum(r["filler_tokens"] for r in rs) / len(rs),
                "n_tokens": sum(r["n_tokens"] for r in rs) / len(rs),
                "distinct4": sum(r["distinct4"] for r in rs) / len(rs),
                "flags": flags,
                "vs_unsteered": diff.as_dict() if diff else None,
            }
        )
    return rows


def table(rows: Sequence[Dict[str, Any]]) -> str:
    """``marked %`` (other / neither %, n) and Δ with its interval per filler length; one line per
    method and placement."""
    lengths = sorted({r["length"] for r in rows})
    lines = [
        "| method | placement | " + " | ".join(f"{n} tok filler" for n in lengths) + " |",
        "|---|---|" + "---:|" * len(lengths),
    ]
    cells: Dict[Tuple[str, str], Dict[int, Dict[str, Any]]] = {}
    for r in rows:
        cells.setdefault((r["method"], r["placement"]), {})[r["length"]] = r
    for (m, pl), by_len in cells.items():
        vals = []
        for n in lengths:
            r = by_len.get(n)
            if r is None:
                vals.append("")
                continue
            cell = (
                f"{100 * r['accuracy']:.0f} (other {100 * r['rate_other']:.0f}, neither {100 * r['rate_neither']:.0f}, "
                f"n={r['n']}" + "".join(f", {x}" for x in r["flags"]) + ")"
            )
            if r.get("vs_unsteered"):
                cell += " Δ " + stats.Difference.from_dict(r["vs_unsteered"]).pct()
            vals.append(cell)
        lines.append(f"| {specs.label(m)} | {pl} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def _line(
    ax, rows: Sequence[Dict[str, Any]], ci: Sequence[Tuple[float, float, float]], i: int, shift: float, label: str
):
    """One line of a priority plot: ``(value, low, high)`` fractions per row against its filler
    length (shifted so that the bars do not overlap), as % with error bars; a black cross on the
    rows that carry a fluency flag."""
    x = [r["length"] + shift for r in rows]
    y = [100 * v for v, _, _ in ci]
    err = [[yy - 100 * lo for yy, (_, lo, _) in zip(y, ci)], [100 * hi - yy for yy, (_, _, hi) in zip(y, ci)]]
    ax.errorbar(x, y, yerr=err, fmt="o" + ("-", "--", ":", "-.")[i % 4], color=f"C{i}", capsize=3, label=label,
                alpha=0.85)  # fmt: skip
    flagged = [(xx, yy) for xx, yy, r in zip(x, y, rows) if r["flags"]]
    if flagged:
        ax.plot(*zip(*flagged), "x", color="k", ms=8)


def plot(rows: Sequence[Dict[str, Any]], path: str, title: str = "") -> str:
    """The ``marked`` rate against filler length, one line per method and placement, with 95 %
    intervals; a black cross on cells with a fluency flag."""
    from .._plot import finish, pyplot

    plt = pyplot(path)
    fig, ax = plt.subplots(figsize=(6.4, 4))
    series: Dict[Tuple[str, str], List[Dict[str, Any]]] = {}
    for r in rows:
        series.setdefault((r["method"], r["placement"]), []).append(r)
    lengths = sorted({r["length"] for r in rows})
    span = (max(lengths) - min(lengths)) or 1
    for i, ((m, pl), rs) in enumerate(sorted(series.items(), key=lambda s: (s[0][0] != "none", s[0]))):
        rs = sorted(rs, key=lambda r: r["length"])
        ci = [(r["accuracy"], *r["accuracy_ci"]) for r in rs]
        _line(ax, rs, ci, i, 0.012 * span * i, f"{specs.label(m)} ({pl})")
    ax.axhline(50, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("filler tokens between the statements")
    ax.set_ylabel("replies naming the marked value (%, 95 % interval)")
    ax.set_ylim(-2, 102)
    ax.set_title(title or "Context priority: the marked one of two statements", fontsize=10)
    ax.legend(fontsize=7)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    finish(fig, path)
    return path


def write_report(store, tag: str, max_new_tokens: int, out: str, command: str, machine: str, keys=None) -> str:
    """``results.json``, ``results.md`` and ``priority.png`` of the cells in ``store`` (only ``keys``
    when given); returns the path of ``results.md``."""
    import json

    rows = summarize(store, tag, max_new_tokens, keys)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
        json.dump({"model": tag, "max_new_tokens": max_new_tokens, "rows": rows}, f, indent=1)
    plot(rows, os.path.join(out, "priority.png"), f"Context priority — {tag}")
    text = (
        f"# Context priority — {tag}\n\n`{command}`\n\n{machine}\n\n"
        "Cell: % of replies naming the marked statement's value (other / neither %, replies, fluency flags) "
        "and Δ to unsteered on the same prompts with its paired bootstrap 95 % interval.\n\n" + table(rows) + "\n"
    )
    path = os.path.join(out, "results.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def main(args, load: Callable, command: str, machine: Callable) -> int:
    fillers = [int(x) for x in str(args.fillers).split(",") if x.strip()]
    placements = [p.strip() for p in args.placements.split(",") if p.strip()]
    for p in placements:
        if p not in PLACEMENTS:
            raise ValueError(f"--placements: {p!r} is not one of {', '.join(PLACEMENTS)}")
    methods = [from_cli(m) for m in args.method or ["none"]]
    model, tok, tag = load(args)
    max_ctx = getattr(model.config, "max_position_embeddings", None)
    case_list = cases(tok, fillers, placements, args.entities, args.k, args.split, max_context=max_ctx,
                      max_new_tokens=args.max_new_tokens)  # fmt: skip
    if args.limit:
        case_list = case_list[: args.limit]
    store = runner.ResponseStore(os.path.join(args.out, "responses.jsonl"))
    run(model, tok, case_list, methods, store=store, model_tag=tag, batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens, progress=not args.no_progress)  # fmt: skip
    # the report covers every cell of the folder (runs add methods and filler lengths one at a time)
    print(write_report(store, tag, args.max_new_tokens, args.out, command, machine()))
    return 0


def evidence(
    rows: Sequence[Dict[str, Any]],
    spec: str,
    split: str = "priority test",
    more: Sequence[Tuple[str, Sequence[Dict[str, Any]]]] = (),
) -> Dict[str, Any]:
    """What `attnsteer.recommended` ships for ``spec`` on this task: per (placement, filler) cell of
    the test rows, the unsteered and steered ``marked`` rates, the paired difference with its
    interval, the fluency flags; and ``summary``, one line for people (the demo prints it).

    ``more``: ``(dtype, rows)`` of further test reports (e.g. bfloat16 cells at lengths the float32
    report lacks). Their cells fill only the (placement, filler) cells that ``rows`` lacks for ``spec``,
    each paired with the unsteered row of its own report, and carry ``"dtype"``."""

    def cells_of(rs: Sequence[Dict[str, Any]], dtype: Optional[str]) -> List[Dict[str, Any]]:
        base = {(r["placement"], r["length"]): r for r in rs if r["method"] == "none"}
        out = []
        for r in rs:
            b = base.get((r["placement"], r["length"]))
            if r["method"] != spec or b is None or not r.get("vs_unsteered"):
                continue
            cell = {
                "placement": r["placement"],
                "filler_tokens": r["length"],
                "n": r["n"],
                "unsteered": round(b["accuracy"], 4),
                "steered": round(r["accuracy"], 4),
                "diff": r["vs_unsteered"],
                "flags": r["flags"],
            }
            out.append({**cell, "dtype": dtype} if dtype else cell)
        return out

    cells = cells_of(rows, None)
    for dtype, rs in more:
        have = {(c["placement"], c["filler_tokens"]) for c in cells}
        cells += [c for c in cells_of(rs, dtype) if (c["placement"], c["filler_tokens"]) not in have]
    cells.sort(key=lambda c: (c["placement"], c["filler_tokens"]))
    if not cells:
        raise ValueError(f"no test cell of {spec!r} has an unsteered twin: run it with --method none first")
    parts = [
        f"{c['placement']} {c['filler_tokens']} tok{' (' + c['dtype'] + ')' if c.get('dtype') else ''}: "
        f"{100 * c['unsteered']:.0f}% -> {100 * c['steered']:.0f}% "
        f"(Δ {stats.Difference.from_dict(c['diff']).pct()}{', ' + ', '.join(c['flags']) if c['flags'] else ''})"
        for c in cells
    ]
    n = cells[0]["n"]
    summary = f"{split}, {n} replies a cell, marked value named: " + "; ".join(parts)
    return {"split": split, "cells": cells, "summary": summary}


def plot_models(results: Dict[str, Sequence[Dict[str, Any]]], method: str, path: str, placement: str = "user") -> str:
    """The effect of ``method`` (steered − unsteered ``marked`` rate, with its paired 95 % interval)
    against the filler tokens between the statements, one line per model: ``results`` maps a model's
    label to its test rows (`summarize`)."""
    from .._plot import finish, pyplot

    plt = pyplot(path)
    fig, ax = plt.subplots(figsize=(6.4, 4))
    lengths = sorted({r["length"] for rows in results.values() for r in rows})
    span = (max(lengths) - min(lengths)) if lengths else 1
    for i, (label, rows) in enumerate(results.items()):
        pts = sorted(
            (r for r in rows if r["method"] == method and r["placement"] == placement and r.get("vs_unsteered")),
            key=lambda r: r["length"],
        )
        if not pts:
            continue
        ci = [(r["vs_unsteered"]["diff"], r["vs_unsteered"]["low"], r["vs_unsteered"]["high"]) for r in pts]
        _line(ax, pts, ci, i, 0.012 * (span or 1) * i, label)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("filler tokens between the statements")
    ax.set_ylabel(f"{specs.label(method)} − unsteered (points, 95 % interval)")
    ax.set_title(f"Context priority, marked statement in the {placement} message: the effect by model", fontsize=9)
    ax.legend(fontsize=8)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    finish(fig, path)
    return path


def compare_models(results: Dict[str, Sequence[Dict[str, Any]]], methods: Sequence[str]) -> str:
    """A markdown table of several models' test rows side by side: per model, placement and method,
    each filler length's ``unsteered → steered`` marked rate and the difference with its interval."""
    lengths = sorted({r["length"] for rows in results.values() for r in rows})
    lines = [
        "| model | placement | method | " + " | ".join(f"{n} tok filler" for n in lengths) + " |",
        "|---|---|---|" + "---|" * len(lengths),
    ]
    for label, rows in results.items():
        base = {(r["placement"], r["length"]): r for r in rows if r["method"] == "none"}
        for pl in PLACEMENTS:
            for m in methods:
                cells = []
                for n in lengths:
                    r = next((r for r in rows if (r["method"], r["placement"], r["length"]) == (m, pl, n)), None)
                    b = base.get((pl, n))
                    if r is None or b is None or not r.get("vs_unsteered"):
                        cells.append("")
                        continue
                    flags = f" ({', '.join(r['flags'])})" if r["flags"] else ""
                    d = stats.Difference.from_dict(r["vs_unsteered"]).pct()
                    cells.append(f"{100 * b['accuracy']:.0f} → {100 * r['accuracy']:.0f}{flags}<br>Δ {d}")
                if any(cells):
                    lines.append(f"| {label} | {pl} | {specs.label(m)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
