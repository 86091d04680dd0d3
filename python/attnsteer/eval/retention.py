"""Rule retention over long context (in the spirit of GUIDE's "summarise in French" test).

A prompt = a rule a checker can verify + a document of N tokens + a task about the document.
The rule is marked; its placement is the system message, or the user message before or after
the document. Accuracy (the IFEval checker of the rule, loose) against N, unsteered vs each
method; a PNG plot.

- Documents: the prose paragraphs of the Python language reference that ships with every
  CPython (``pydoc_data.topics``; indented grammar and code blocks dropped), consecutive
  paragraphs from a seeded starting topic, whole sentences added while they fit in N tokens. Nothing is
  downloaded. A length that does not fit the model's context with the rule, the template and
  the reply is shrunk to fit, and the actual length is stored (SmolLM2's 8192-token context
  takes ~7.7k tokens at "8k").
- Rules (`RULES`): IFEval instruction families, worded by the checkers'
  ``build_description``; ``french`` is ``language:response_language`` (langdetect).
- Task: "Summarise the document in a few sentences."
"""

from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .. import specs
from ..config import from_cli
from . import checkers, fluency, ifeval, runner, stats

__all__ = ["RULES", "PLACEMENTS", "documents", "build", "run", "summarize", "plot"]

RULES: Dict[str, Tuple[str, Dict[str, Any]]] = {
    "lowercase": ("change_case:english_lowercase", {}),
    "end-phrase": ("startend:end_checker", {"end_phrase": "Is there anything else I can help with?"}),
    "no-comma": ("punctuation:no_comma", {}),
    "quotation": ("startend:quotation", {}),
    "french": ("language:response_language", {"language": "fr"}),
}
PLACEMENTS = ("system", "before", "after")
TASK = "Summarise the document in a few sentences."
STRATEGY = "retention"


@lru_cache(maxsize=1)
def _paragraphs() -> Tuple[str, ...]:
    from pydoc_data.topics import topics

    out = []
    for name in sorted(topics):
        for block in re.split(r"\n\s*\n", topics[name]):
            lines = block.split("\n")
            if (
                not lines
                or any(line.startswith(" ") for line in lines)
                or re.fullmatch(r"[*=\-]+", lines[-1].strip() or "*")
            ):
                continue  # grammar / code / headings
            text = " ".join(line.strip() for line in lines).strip()
            if len(text) > 80 and text.count('"') < len(text) / 20:
                out.append(text)
    return tuple(out)


SPLITS = ("dev", "test")


def _split_paragraphs(split: Optional[str]) -> Tuple[str, ...]:
    """All paragraphs (``split=None``, the first retention runs), or one half of them: ``dev``
    the first half in topic order, ``test`` the second, so tuning never sees a test document."""
    paras = _paragraphs()
    if split is None:
        return paras
    if split not in SPLITS:
        raise ValueError(f"document split must be one of {SPLITS} (or None for all); got {split!r}")
    half = len(paras) // 2
    return paras[:half] if split == "dev" else paras[half:]


def documents(tokenizer, length: int, n: int, seed: int = 0, split: Optional[str] = None) -> List[str]:
    """``n`` documents of at most ``length`` tokens, each from its own seeded start: whole
    sentences, paragraph breaks kept, added while they fit. ``split`` (``dev`` / ``test``) draws
    from that half of the paragraphs only."""
    paras = _split_paragraphs(split)
    rng = random.Random(seed * 1000 + length)
    docs = []
    for _ in range(n):
        i = rng.randrange(len(paras))
        out_paras: List[List[str]] = []
        total = 0
        full = False
        while not full and len(out_paras) < len(paras):
            p = paras[i % len(paras)]
            sents = [p[a:b] for a, b in ifeval.sentence_spans(p)]
            cur: List[str] = []
            for sent in sents:
                t = len(tokenizer(" " + sent, add_special_tokens=False)["input_ids"]) + 1
                if total + t > length:
                    if total == 0:
                        continue  # a first sentence longer than the document: start at the next
                    full = True
                    break
                cur.append(sent)
                total += t
            if cur:
                out_paras.append(cur)
            i += 1
        doc = "\n\n".join(" ".join(c) for c in out_paras)
        while len(tokenizer(doc, add_special_tokens=False)["input_ids"]) > length and out_paras:
            out_paras[-1].pop()  # token counts of pieces need not add up exactly
            out_paras = [c for c in out_paras if c]
            doc = "\n\n".join(" ".join(c) for c in out_paras)
        docs.append(doc)
    return docs


def rule_text(rule: str) -> str:
    inst, kw = RULES[rule]
    return checkers.describe(inst, kw)


def build(tokenizer, rule: str, placement: str, doc: str, key: str) -> ifeval.Prompt:
    """The chat prompt of one case, with the rule's characters as the highlight."""
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}; got {placement!r}")
    text_rule = rule_text(rule)
    if placement == "system":
        msgs = [{"role": "system", "content": text_rule}, {"role": "user", "content": f"{doc}\n\n{TASK}"}]
    elif placement == "before":
        msgs = [{"role": "user", "content": f"{text_rule}\n\n{doc}\n\n{TASK}"}]
    else:
        msgs = [{"role": "user", "content": f"{doc}\n\n{TASK} {text_rule}"}]
    text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    if placement == "after":
        at = text.rfind(text_rule)
    else:
        at = text.find(text_rule)
    if at < 0:
        raise ValueError("the chat template changed the rule's text; cannot place the highlight")
    return ifeval.Prompt(key, text, [(at, at + len(text_rule))])


@dataclass
class Case:
    key: str
    rule: str
    placement: str
    length: int
    doc_tokens: int
    prompt: ifeval.Prompt


def cases(
    tokenizer,
    lengths: Sequence[int],
    placements: Sequence[str],
    rules: Sequence[str],
    n_docs: int,
    max_context: Optional[int],
    max_new_tokens: int,
    split: Optional[str] = None,
) -> List[Case]:
    """Every (length, document, rule, placement) case. Keys are ``rule|placement|length|doc``;
    with a document ``split`` the doc part is ``dev3`` / ``test3``, so the splits never share a key."""
    out = []
    reserve = 192 + max_new_tokens  # rule + template + task + reply
    for length in lengths:
        eff = length if max_context is None else min(length, max_context - reserve)
        for d, doc in enumerate(documents(tokenizer, eff, n_docs, split=split)):
            n_tok = len(tokenizer(doc, add_special_tokens=False)["input_ids"])
            for rule in rules:
                if rule not in RULES:
                    raise ValueError(f"unknown rule {rule!r}: choose from {', '.join(RULES)}")
                for pl in placements:
                    key = f"{rule}|{pl}|{length}|{split or ''}{d}"
                    out.append(Case(key, rule, pl, length, n_tok, build(tokenizer, rule, pl, doc, key)))
    return out


def run(
    model,
    tokenizer,
    case_list: Sequence[Case],
    methods: Sequence[str],
    *,
    store: runner.ResponseStore,
    model_tag: str,
    batch_size: int = 4,
    max_new_tokens: int = 96,
    progress: bool = True,
) -> None:
    """Generate and score every (method, case) not yet in ``store`` (resumable; `runner.run_task`)."""

    def row(c: Case, g) -> Dict[str, Any]:
        inst, kw = RULES[c.rule]
        s = checkers.score({"key": 0, "prompt": c.prompt.text, "instruction_id_list": [inst], "kwargs": [kw]}, g.text)
        return {"rule": c.rule, "placement": c.placement, "length": c.length, "doc_tokens": c.doc_tokens,
                "strict": s.strict, "loose": s.loose}  # fmt: skip

    runner.run_task(model, tokenizer, case_list, methods, store=store, model_tag=model_tag, strategy=STRATEGY,
                    max_new_tokens=max_new_tokens, batch_size=batch_size, row=row, size=lambda c: c.doc_tokens,
                    desc="retention", progress=progress)  # fmt: skip


def summarize(
    store: runner.ResponseStore, model_tag: str, max_new_tokens: int, keys: Optional[set] = None, by_rule: bool = False
) -> List[Dict[str, Any]]:
    """Per (method, placement, length) — and rule, with ``by_rule`` — loose accuracy, n, mean
    document tokens, mean reply tokens and distinct-4; ``flags``: the fluency flags
    (`fluency.flags`) of a steered cell against the unsteered replies to the same prompts,
    and ``short`` among them (a reply that only echoes the rule can pass a checker such as the end
    phrase); ``vs_unsteered``: the paired bootstrap interval of the accuracy difference."""
    groups: Dict[Tuple[str, str, str, int], List[Dict[str, Any]]] = {}
    unsteered: Dict[str, Dict[str, Any]] = {}  # prompt key -> the unsteered record
    for k, r in store.records.items():
        if k[0] != model_tag or k[2] != STRATEGY or k[3] != max_new_tokens or (keys is not None and k[4] not in keys):
            continue
        groups.setdefault((r["method"], r["rule"] if by_rule else "all", r["placement"], r["length"]), []).append(r)
        if r["method"] == "none":
            unsteered[r["key"]] = r
    rows = []
    for (m, rule, pl, n), rs in sorted(
        groups.items(), key=lambda g: (g[0][0] != "none", g[0][0], g[0][1], g[0][2], g[0][3])
    ):
        n_tokens = sum(r["n_tokens"] for r in rs) / len(rs)
        paired = [(r, unsteered[r["key"]]) for r in rs if r["key"] in unsteered]
        flags = (
            fluency.flags(runner._fluency_means([a for a, _ in paired]), runner._fluency_means([b for _, b in paired]))
            if m != "none" and paired
            else []
        )
        diff = (
            stats.paired({r["key"]: r for r in rs}, unsteered, lambda r: float(all(r["loose"])))
            if m != "none"
            else None
        )
        rows.append(
            {
                "method": m,
                "rule": rule,
                "placement": pl,
                "length": n,
                "n": len(rs),
                "accuracy": sum(all(r["loose"]) for r in rs) / len(rs),
                "accuracy_ci": _mean_interval([float(all(r["loose"])) for r in rs]),
                "doc_tokens": sum(r["doc_tokens"] for r in rs) / len(rs),
                "n_tokens": n_tokens,
                "distinct4": sum(r["distinct4"] for r in rs) / len(rs),
                "short": "short" in flags,
                "flags": flags,
                "vs_unsteered": diff.as_dict() if diff else None,
            }
        )
    return rows


def table(rows: Sequence[Dict[str, Any]]) -> str:
    """Accuracy % (replies, mean reply tokens[, short]) per length; one line per method, rule and
    placement."""
    lengths = sorted({r["length"] for r in rows})
    lines = [
        "| method | rule | placement | " + " | ".join(f"{n} tok" for n in lengths) + " |",
        "|---|---|---|" + "---:|" * len(lengths),
    ]
    cells: Dict[Tuple[str, str, str], Dict[int, Dict[str, Any]]] = {}
    for r in rows:
        cells.setdefault((r["method"], r.get("rule", "all"), r["placement"]), {})[r["length"]] = r
    for (m, rule, pl), by_len in cells.items():
        vals = [_cell(by_len[n]) if n in by_len else "" for n in lengths]
        lines.append(f"| {specs.label(m)} | {rule} | {pl} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def _mean_interval(xs: Sequence[float]) -> List[float]:
    """Bootstrap 95 % interval of a cell's accuracy (its replies resampled): the paired bootstrap
    against a run of zeros is the plain bootstrap of the mean."""
    d = stats.paired_bootstrap(xs, [0.0] * len(xs))
    return [d.low, d.high]


def _cell(r: Dict[str, Any], interval: bool = False) -> str:
    """``25 (n=32, 90 tok)``, the flag ``short``, and for a steered cell ``Δ +12.5 [+3.1, +21.9]``:
    the difference to unsteered on the same prompts with its paired bootstrap 95 % interval. With
    ``interval``: ``25 [12, 41] n=32 (short)<br>Δ ...``, the cell's own 95 % interval in place of
    the reply length (the models' side-by-side table)."""
    flags = r.get("flags", ["short"] if r.get("short") else [])
    d = r.get("vs_unsteered")
    delta = stats.Difference.from_dict(d).pct() if d else ""
    if not interval:
        out = f"{100 * r['accuracy']:.0f} (n={r['n']}, {r['n_tokens']:.0f} tok" + "".join(f", {x}" for x in flags) + ")"
        return out + (" Δ " + delta if delta else "")
    lo, hi = r.get("accuracy_ci") or [r["accuracy"]] * 2
    out = f"{100 * r['accuracy']:.0f} [{100 * lo:.0f}, {100 * hi:.0f}] n={r['n']}"
    out += f" ({', '.join(flags)})" if flags else ""
    return out + ("<br>Δ " + delta if delta else "")


def _curve(ax, pts: Sequence[Tuple[float, Dict[str, Any]]], i: int, flagged: Callable[[Dict[str, Any]], bool]) -> None:
    """One method's line on ``ax``: ``pts`` are (x, row) sorted by x; accuracy with its 95 % interval
    as error bars, the ``i``-th colour and dash, shifted a little per method so that the bars do not
    overlap (x is on a log axis), and a black cross on the points ``flagged`` picks."""
    x = [n * (1 + 0.04 * i) for n, _ in pts]
    y = [100 * r["accuracy"] for _, r in pts]
    ci = [r.get("accuracy_ci") or [r["accuracy"]] * 2 for _, r in pts]
    err = [[v - 100 * c[0] for v, c in zip(y, ci)], [100 * c[1] - v for v, c in zip(y, ci)]]
    label = specs.label(pts[0][1]["method"])
    ax.errorbar(
        x, y, yerr=err, fmt="o" + ("-", "--", ":", "-.")[i % 4], color=f"C{i}", capsize=3, label=label, alpha=0.85
    )
    marked = [(xx, yy) for xx, yy, (_, r) in zip(x, y, pts) if flagged(r)]
    if marked:
        ax.plot(*zip(*marked), "x", color="k", ms=8)


def plot(rows: Sequence[Dict[str, Any]], path: str) -> str:
    """Accuracy against document length, one panel per placement, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pls = [p for p in PLACEMENTS if any(r["placement"] == p for r in rows)]
    fig, axes = plt.subplots(1, len(pls), figsize=(4 * len(pls), 3.2), squeeze=False, sharey=True)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for ax, pl in zip(axes[0], pls):
        for i, m in enumerate(methods):
            pts = sorted(
                ((r["doc_tokens"], r) for r in rows if r["method"] == m and r["placement"] == pl), key=lambda p: p[0]
            )
            if pts:  # a cross: replies under half the unsteered length (a pass there may be an echo)
                _curve(ax, pts, i, lambda r: bool(r.get("short")))
        ax.set_xscale("log", base=2)
        ax.set_title(f"rule in the {pl} message" if pl == "system" else f"rule {pl} the document", fontsize=9)
        ax.set_xlabel("document tokens")
    axes[0][0].set_ylabel("rule followed (%, 95 % interval)")
    axes[0][-1].plot([], [], "x", color="k", label="replies < ½ unsteered length")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def compare_models(
    results: Dict[str, str], placement: str = "before", methods: Optional[Sequence[str]] = None, rule: str = "all"
) -> Tuple[List[Dict[str, Any]], str]:
    """The retention test cells of several models side by side: ``results`` maps a model's label to
    its ``results.json`` (``attnsteer eval sweep --task retention --test-only``); keeps the cells at
    ``placement`` for ``rule`` and ``methods`` (specs; default: every method in the file). Returns
    the rows (each with ``"model"``) and a markdown table: per model and method, accuracy with its
    95 % interval by document length and, for steered rows, the difference to unsteered with its
    paired interval.

    Guide: ``docs/guides/evaluation.md``.
    """
    import json

    rows: List[Dict[str, Any]] = []
    for label, path in results.items():
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        kept = [r for r in data["rows"] if r["placement"] == placement and r["rule"] == rule]
        if methods:
            kept = [r for r in kept if r["method"] in methods]
        if not kept:
            have = sorted({(r["method"], r["placement"]) for r in data["rows"]})
            raise ValueError(f"{path} has no '{placement}' cells for {list(methods or [])}: it has {have}")
        rows += [dict(r, model=label) for r in kept]
    lengths = sorted({r["length"] for r in rows})
    lines = [
        "| model | method | " + " | ".join(f"{n} tok" for n in lengths) + " |",
        "|---|---|" + "---:|" * len(lengths),
    ]
    for label in results:
        for m in dict.fromkeys(r["method"] for r in rows if r["model"] == label):
            cells = {r["length"]: r for r in rows if r["model"] == label and r["method"] == m}
            vals = [_cell(cells[n], interval=True) if n in cells else "" for n in lengths]
            lines.append(f"| {label} | {specs.label(m)} | " + " | ".join(vals) + " |")
    return rows, "\n".join(lines)


def plot_models(rows: Sequence[Dict[str, Any]], path: str, title: str = "") -> str:
    """One panel per model (rows from `compare_models`): accuracy against document length,
    one line per method, 95 % intervals as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    lengths = sorted({r["length"] for r in rows})
    fig, axes = plt.subplots(1, len(models), figsize=(4.4 * len(models), 3.4), squeeze=False, sharey=True)
    for ax, label in zip(axes[0], models):
        mine = [r for r in rows if r["model"] == label]
        for i, m in enumerate(dict.fromkeys(r["method"] for r in mine)):
            pts = sorted(((r["length"], r) for r in mine if r["method"] == m), key=lambda p: p[0])
            _curve(ax, pts, i, lambda r: bool(r.get("flags")))
        ax.set_xscale("log", base=2)
        ax.set_xticks(lengths, [f"{n // 1024}k" if n >= 1024 else str(n) for n in lengths])
        ax.set_xlim(lengths[0] / 1.3, lengths[-1] * 1.3)
        ax.set_xlabel("document tokens")
        ax.set_title(label, fontsize=10)
        ax.legend(fontsize=7, loc="upper left")
    axes[0][0].set_ylabel("rule followed (%, 95 % interval)")
    axes[0][-1].plot([], [], "x", color="k", label="fluency flag")
    axes[0][-1].legend(fontsize=7, loc="upper left")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def parse_lists(lengths: str, placements: str, rules: Optional[str]) -> Tuple[List[int], List[str], List[str]]:
    """The CLI's comma-separated lengths, placements and rules (default: every rule), checked
    before any model loads."""
    pls = [p.strip() for p in placements.split(",")]
    for p in pls:
        if p not in PLACEMENTS:
            raise ValueError(f"unknown placement {p!r}: choose from {', '.join(PLACEMENTS)}")
    names = [r.strip() for r in rules.split(",")] if rules else list(RULES)
    for r in names:
        if r not in RULES:
            raise ValueError(f"unknown rule {r!r}: choose from {', '.join(RULES)}")
    return [int(x) for x in lengths.split(",")], pls, names


def main(args, load: Callable, command: str, machine: Callable) -> int:
    lengths, placements, rules = parse_lists(args.lengths, args.placements, args.rules)
    methods = [from_cli(m) for m in args.method or ["none"]]
    model, tok, tag = load(args)
    max_ctx = getattr(model.config, "max_position_embeddings", None)
    case_list = cases(tok, lengths, placements, rules, args.docs, max_ctx, args.max_new_tokens)
    if args.limit:
        case_list = case_list[: args.limit]
    store = runner.ResponseStore(os.path.join(args.out, "responses.jsonl"))
    run(
        model,
        tok,
        case_list,
        methods,
        store=store,
        model_tag=tag,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        progress=not args.no_progress,
    )
    print(write_report(store, tag, args.max_new_tokens, args.out, command, machine(), keys={c.key for c in case_list}))
    return 0


def write_report(
    store: runner.ResponseStore,
    model_tag: str,
    max_new_tokens: int,
    out: str,
    command: str,
    machine: str,
    keys: Optional[set] = None,
) -> str:
    """``results.json``, ``results.md`` and ``retention.png`` from the store; returns the markdown."""
    import json

    rows = summarize(store, model_tag, max_new_tokens, keys=keys)
    by_rule = summarize(store, model_tag, max_new_tokens, keys=keys, by_rule=True)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
        json.dump({"command": command, "machine": machine, "rows": rows, "rows_by_rule": by_rule}, f, indent=1)
    md = "\n".join(
        [
            f"# Rule retention — {model_tag}",
            "",
            f"Command: `{command}`",
            "",
            f"Machine: {machine}",
            "",
            "Share of replies that follow the marked rule (IFEval checker, loose) by document length, with the "
            "number of replies and their mean length in tokens; `short`: the replies are under "
            f"{fluency.BOUNDS['short']}× as long as the unsteered replies to the same prompts (a reply "
            "that only echoes the rule can pass the end-phrase checker). Steered cells: Δ = the difference to "
            "unsteered on the same prompts in points with its paired bootstrap 95 % interval; '(no evidence)' = "
            f"{stats.NO_EVIDENCE} (the interval contains 0).",
            "",
            table(rows),
            "",
            "## Per rule",
            "",
            table(by_rule),
            "",
        ]
    )
    with open(os.path.join(out, "results.md"), "w", encoding="utf-8") as f:
        f.write(md)
    if rows:
        plot(rows, os.path.join(out, "retention.png"))
    return md
