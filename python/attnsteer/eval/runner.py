"""Batched steered generation with a resumable response store, and IFEval's run and report.

Every response is one JSON line in ``responses.jsonl``, keyed by (model, method spec,
strategy, max_new_tokens, prompt key); a run skips the keys already there, so an interrupted
run continues where it stopped. Results (``results.json``, ``results.md``) are recomputed from
the store.
"""

from __future__ import annotations

import glob
import json
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from .. import specs
from ..directer import Directer
from ..hf import steer
from ..spans import highlight
from . import checkers, fluency, ifeval, stats

__all__ = ["ResponseStore", "generate_batch", "run_ifeval", "summarize_ifeval", "write_report", "baseline_strategy"]

Key = Tuple[str, str, str, int, Any]


def baseline_strategy(strategy: str) -> str:
    """The strategy an unsteered run is stored under: only ``system`` changes its prompt."""
    return "system" if strategy == "system" else "none"


class ResponseStore:
    """Append-only jsonl of responses; `done` tells which keys exist.

    It writes ``path`` and reads it together with its shards, ``<folder>/responses.*.jsonl`` beside
    a ``responses*.jsonl`` path: two queues running side by side each append to their own shard
    (no two processes write one file) and every report sees all of them."""

    def __init__(self, path: str):
        self.path = path
        self.records: Dict[Key, Dict[str, Any]] = {}
        folder, name = os.path.split(os.path.abspath(path))
        paths = []
        if name.startswith("responses") and name.endswith(".jsonl"):
            paths = sorted(p for p in glob.glob(os.path.join(folder, "responses*.jsonl")) if p != os.path.abspath(path))
        paths.append(path)  # last: its own lines win over a shard's
        for p in paths:
            if not os.path.exists(p):
                continue
            with open(p, encoding="utf-8") as f:
                for line in f:
                    line = line.strip()
                    if not line:
                        continue
                    try:
                        r = json.loads(line)
                    except json.JSONDecodeError:  # a line cut by an interruption: redo that prompt
                        continue
                    self.records[self.key_of(r)] = r

    @staticmethod
    def key_of(r: Dict[str, Any]) -> Key:
        return (r["model"], r["method"], r["strategy"], int(r["max_new_tokens"]), r["key"])

    def done(self, key: Key) -> bool:
        return key in self.records

    def add(self, rows: Iterable[Dict[str, Any]]) -> None:
        rows = list(rows)
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        with open(self.path, "a+b") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":  # a line cut by an interruption: start a new one
                    f.write(b"\n")
            for r in rows:
                f.write((json.dumps(r, ensure_ascii=False) + "\n").encode("utf-8"))
                self.records[self.key_of(r)] = r
            f.flush()
            os.fsync(f.fileno())

    def select(self, model: str, method: str, strategy: str, max_new_tokens: int) -> Dict[Any, Dict[str, Any]]:
        return {k[4]: r for k, r in self.records.items() if k[:4] == (model, method, strategy, max_new_tokens)}


@dataclass
class Generated:
    text: str
    n_tokens: int
    nll: float
    distinct4: float


def _encode(tokenizer, prompts: Sequence[ifeval.Prompt], steered: bool):
    texts = [p.text for p in prompts]
    if steered:
        # markers={}: dataset text is taken verbatim (IFEval has literal <<title>>); the
        # highlight is the character spans alone.
        return highlight(
            tokenizer, texts, char_spans=[p.spans for p in prompts], markers={}, add_special_tokens=False, padding=True
        )
    return tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")


@torch.no_grad()
def generate_batch(
    model, tokenizer, prompts: Sequence[ifeval.Prompt], method: specs.Spec, max_new_tokens: int
) -> List[Generated]:
    """Greedy replies to a batch of rendered prompts (left padding), steered by ``method``
    on each prompt's own spans, with their fluency figures."""
    enc = _encode(tokenizer, prompts, method is not None)
    enc = enc.to(model.device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    kw = dict(
        max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad, temperature=None, top_p=None, top_k=None
    )
    inputs = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    if method is None:
        out = model.generate(**inputs, **kw)
    elif isinstance(method, Directer):
        out = model.generate(**inputs, custom_generate=method, spans=enc, **kw)
    else:  # SPA too: steer() runs its batch of two
        with steer(model, method, spans=enc):
            out = model.generate(**inputs, **kw)
    P = enc["input_ids"].shape[1]
    gen = out[:, P:]
    eos = _eos_ids(model, tokenizer)
    gen_mask = torch.ones_like(gen)
    for b in range(gen.shape[0]):
        ends = [i for i, t in enumerate(gen[b].tolist()) if t in eos]
        if ends:
            gen_mask[b, ends[0] + 1 :] = 0
    nll = fluency.response_nll(model, inputs["input_ids"], inputs["attention_mask"], gen, gen_mask)
    results = []
    for b in range(gen.shape[0]):
        n = int(gen_mask[b].sum())
        ids = gen[b, :n].tolist()
        text = tokenizer.decode(ids, skip_special_tokens=True)
        results.append(Generated(text, n, nll[b], fluency.distinct_ngrams(text)))
    return results


def _eos_ids(model, tokenizer) -> set:
    ids = set()
    for src in (getattr(model, "generation_config", None), model.config):
        e = getattr(src, "eos_token_id", None) if src is not None else None
        if e is None:
            continue
        ids.update(e if isinstance(e, (list, tuple)) else [e])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def run_batches(
    model,
    tokenizer,
    items: Sequence[Tuple[ifeval.Prompt, Any]],
    method: specs.Spec,
    max_new_tokens: int,
    batch_size: int,
    store: ResponseStore,
    bar,
    row,
) -> None:
    """Generate ``items`` (``(prompt, payload)``, in order) in batches and store
    ``row(payload, prompt, generated, seconds_per_prompt)`` for each, a batch at a time."""
    for i in range(0, len(items), batch_size):
        chunk = items[i : i + batch_size]
        t0 = time.perf_counter()
        outs = generate_batch(model, tokenizer, [p for p, _ in chunk], method, max_new_tokens)
        dt = (time.perf_counter() - t0) / len(chunk)
        store.add(row(x, p, g, dt) for (p, x), g in zip(chunk, outs))
        bar.update(len(chunk))


def run_task(
    model,
    tokenizer,
    cases: Sequence[Any],
    methods: Sequence[str],
    *,
    store: ResponseStore,
    model_tag: str,
    strategy: str,
    max_new_tokens: int,
    batch_size: int,
    row: Callable[[Any, Any], Dict[str, Any]],
    size: Callable[[Any], int] = lambda c: 0,
    desc: str = "prompts",
    progress: bool = True,
) -> None:
    """The one generation loop of the case tasks (retention, priority): every (method, case) not yet
    in ``store`` is generated (largest ``size`` first, in batches) and stored as the record
    ``{model, method, strategy, max_new_tokens, key}`` + ``row(case, generated)`` + the reply and its
    fluency figures. ``cases`` carry ``.key`` and ``.prompt`` (an `ifeval.Prompt`). Resumable."""
    from .._progress import tqdm

    jobs = []
    for m in methods:
        canon = specs.canonical(m)
        jobs.append((canon, [c for c in cases if not store.done((model_tag, canon, strategy, max_new_tokens, c.key))]))
    bar = tqdm(total=sum(len(t) for _, t in jobs), desc=desc, unit="prompt", disable=not progress)
    for canon, todo in jobs:
        method = specs.parse_local(canon)
        bar.set_postfix_str(specs.label(canon))
        head = {"model": model_tag, "method": canon, "strategy": strategy, "max_new_tokens": max_new_tokens}

        def record(c, p, g, dt, head=head):
            tail = {"response": g.text, "n_tokens": g.n_tokens, "nll": g.nll, "distinct4": g.distinct4, "seconds": dt}
            return {**head, "key": c.key, **row(c, g), **tail}

        todo = sorted(todo, key=lambda c: -size(c))
        run_batches(
            model, tokenizer, [(c.prompt, c) for c in todo], method, max_new_tokens, batch_size, store, bar, record
        )
    bar.close()


def run_ifeval(
    model,
    tokenizer,
    records: Sequence[Dict[str, Any]],
    methods: Sequence[str],
    *,
    strategy: str,
    store: ResponseStore,
    model_tag: str,
    batch_size: int = 8,
    max_new_tokens: int = 256,
    progress: bool = True,
) -> None:
    """Generate and score every (method, prompt) not yet in ``store``.

    ``methods`` are spec strings (`attnsteer.specs`); ``none`` runs unsteered under
    `baseline_strategy`. Prompts are batched longest first (less padding)."""
    from .._progress import tqdm

    if strategy not in ifeval.STRATEGIES:
        raise ValueError(f"unknown highlight strategy {strategy!r}: choose one of {ifeval.STRATEGIES}")
    jobs = []
    for spec in methods:
        canon = specs.canonical(spec)
        strat = baseline_strategy(strategy) if canon == "none" else strategy
        todo = [r for r in records if not store.done((model_tag, canon, strat, max_new_tokens, r["key"]))]
        jobs.append((canon, strat, todo))
    total = sum(len(t) for _, _, t in jobs)
    bar = tqdm(total=total, desc="ifeval", unit="prompt", disable=not progress)
    render_as = {"none": "prompt"}
    for canon, strat, todo in jobs:
        if not todo:
            continue
        bar.set_postfix_str(f"{specs.label(canon)} [{strat}]")
        method = specs.parse_local(canon)
        built = [(r, ifeval.build_prompt(tokenizer, r, render_as.get(strat, strat))) for r in todo]
        lengths = {r["key"]: len(tokenizer(p.text, add_special_tokens=False)["input_ids"]) for r, p in built}
        built.sort(key=lambda rp: -lengths[rp[0]["key"]])

        def row(r, p, g, dt):
            s = checkers.score(r, g.text)
            return {
                "model": model_tag,
                "method": canon,
                "strategy": strat,
                "max_new_tokens": max_new_tokens,
                "key": r["key"],
                "response": g.text,
                "n_tokens": g.n_tokens,
                "nll": g.nll,
                "distinct4": g.distinct4,
                "strict": s.strict,
                "loose": s.loose,
                "located": p.located,
                "seconds": dt,
                "prompt_tokens": lengths[r["key"]],
            }

        run_batches(model, tokenizer, [(p, r) for r, p in built], method, max_new_tokens, batch_size, store, bar, row)
    bar.close()


def summarize_ifeval(
    store: ResponseStore,
    records: Sequence[Dict[str, Any]],
    model_tag: str,
    max_new_tokens: int,
    *,
    only_complete: bool = False,
) -> List[Dict[str, Any]]:
    """One row per (method, strategy) in the store for these prompts: the four accuracies,
    instruction-level loose accuracy per instruction type, fluency means and flags against
    the unsteered run of the same strategy on the same prompts, seconds per prompt."""
    by_key = {r["key"]: r for r in records}
    configs = sorted(
        {(k[1], k[2]) for k in store.records if k[0] == model_tag and k[3] == max_new_tokens},
        key=lambda c: (c[0] != "none", c[1], c[0]),
    )
    rows = []
    for method, strat in configs:
        got = {k: r for k, r in store.select(model_tag, method, strat, max_new_tokens).items() if k in by_key}
        if not got or (only_complete and len(got) < len(by_key)):
            continue
        rows.append(_summary_row(method, strat, got, by_key))
    # Fluency flags against unsteered on the same prompts (intersection of keys).
    for row in rows:
        if row["method"] == "none":
            row["flags"] = []
            continue
        base = store.select(model_tag, "none", baseline_strategy(row["strategy"]), max_new_tokens)
        common = [k for k in row["_keys"] if k in base]
        if not common:
            row["flags"] = ["no-baseline"]
            continue
        mine = store.select(model_tag, row["method"], row["strategy"], max_new_tokens)
        st = _fluency_means([mine[k] for k in common])
        bl = _fluency_means([base[k] for k in common])
        row["baseline_on_same"] = {**bl, **checkers.aggregate([_score(base[k]) for k in common]), "n": len(common)}
        row["flags"] = fluency.flags(st, bl)
        row["vs_unsteered"] = _intervals(mine, base, common)
    for row in rows:
        row.pop("_keys")
    return rows


def _intervals(mine: Dict[Any, Dict[str, Any]], base: Dict[Any, Dict[str, Any]], keys) -> Dict[str, Dict[str, Any]]:
    """Paired bootstrap 95 % intervals of steered − unsteered on the prompts ``keys``: prompt-level
    loose (every instruction followed) and instruction-level loose (prompts resampled as units)."""
    m, b = {k: mine[k] for k in keys}, {k: base[k] for k in keys}
    return {
        "prompt_loose": stats.paired(m, b, lambda r: float(all(r["loose"]))).as_dict(),
        "inst_loose": stats.paired(m, b, lambda r: float(sum(r["loose"])), den=lambda r: len(r["loose"])).as_dict(),
    }


def _score(r: Dict[str, Any]) -> checkers.Score:
    return checkers.Score(list(r["strict"]), list(r["loose"]))


def _fluency_means(rs: Sequence[Dict[str, Any]]) -> Dict[str, float]:
    return {
        "n_tokens": fluency.mean([r["n_tokens"] for r in rs]),
        "nll": fluency.mean([r["nll"] for r in rs]),
        "distinct4": fluency.mean([r["distinct4"] for r in rs]),
    }


def _summary_row(method: str, strat: str, got: Dict[Any, Dict[str, Any]], by_key) -> Dict[str, Any]:
    scores = [_score(r) for r in got.values()]
    per_type: Dict[str, List[bool]] = {}
    for k, r in got.items():
        for inst, ok in zip(by_key[k]["instruction_id_list"], r["loose"]):
            per_type.setdefault(inst, []).append(ok)
    located = [r.get("located") for r in got.values() if r.get("located") is not None]
    return {
        "method": method,
        "strategy": strat,
        "n": len(got),
        **checkers.aggregate(scores),
        "per_type_inst_loose": {t: sum(v) / len(v) for t, v in sorted(per_type.items())},
        **_fluency_means(list(got.values())),
        "seconds_per_prompt": fluency.mean([r["seconds"] for r in got.values()]),
        "located": (sum(located), len(located)) if located else None,
        "_keys": list(got),
    }


def markdown_table(rows: Sequence[Dict[str, Any]]) -> str:
    head = (
        "| method | strategy | n | prompt strict | prompt loose | inst strict | inst loose | tokens | NLL | distinct-4 "
        "| s/prompt | flags |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    )
    lines = [head]
    for r in rows:
        lines.append(
            f"| {specs.label(r['method'])} | {r['strategy']} | {r['n']} | {100 * r['prompt_strict']:.1f} | "
            f"{100 * r['prompt_loose']:.1f} | {100 * r['inst_strict']:.1f} | {100 * r['inst_loose']:.1f} | "
            f"{r['n_tokens']:.0f} | {r['nll']:.2f} | {r['distinct4']:.2f} | {r['seconds_per_prompt']:.1f} | "
            f"{', '.join(r['flags']) or '—'} |"
        )
    return "\n".join(lines)


def paired_table(rows: Sequence[Dict[str, Any]]) -> str:
    """Each steered row against unsteered on the *same* prompts (``baseline_on_same``), so runs
    that cover different subsets of the prompts compare fairly: steered / unsteered (Δ), and the
    paired bootstrap 95 % interval of Δ for the loose accuracies."""
    head = (
        "| method | strategy | n | prompt strict | prompt loose | inst strict | inst loose | tokens | NLL "
        "| Δ prompt loose, 95 % CI | Δ inst loose, 95 % CI |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|"
    )
    lines = [head]
    for r in rows:
        b = r.get("baseline_on_same")
        if r["method"] == "none" or not b:
            continue
        cells = [
            f"{100 * r[k]:.1f} / {100 * b[k]:.1f} ({100 * (r[k] - b[k]):+.1f})"
            for k in ("prompt_strict", "prompt_loose", "inst_strict", "inst_loose")
        ]
        lines.append(
            f"| {specs.label(r['method'])} | {r['strategy']} | {b['n']} | "
            + " | ".join(cells)
            + f" | {r['n_tokens']:.0f} / {b['n_tokens']:.0f} | {r['nll']:.2f} / {b['nll']:.2f} | "
            + " | ".join(_ci_cell(r.get("vs_unsteered", {}).get(k)) for k in ("prompt_loose", "inst_loose"))
            + " |"
        )
    return "\n".join(lines)


def _ci_cell(d: Optional[Dict[str, Any]]) -> str:
    if not d:
        return ""
    return stats.Difference.from_dict(d).pct()


def per_type_table(rows: Sequence[Dict[str, Any]]) -> str:
    types = sorted({t for r in rows for t in r["per_type_inst_loose"]})
    cols = [f"{specs.label(r['method'])} [{r['strategy']}]" for r in rows]
    lines = ["| instruction | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for t in types:
        cells = [f"{100 * r['per_type_inst_loose'][t]:.0f}" if t in r["per_type_inst_loose"] else "" for r in rows]
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ifeval_and_report(
    model,
    tokenizer,
    records: Sequence[Dict[str, Any]],
    methods: Sequence[str],
    out_dir: str,
    *,
    title: str,
    strategy: str,
    model_tag: str,
    batch_size: int,
    max_new_tokens: int,
    progress: bool = True,
    command: str = "",
    machine: str = "",
) -> Tuple[List[Dict[str, Any]], str]:
    """`run_ifeval` into ``out_dir/responses.jsonl`` (resumes), then `summarize_ifeval` of those
    records and `write_report` into ``out_dir``. Returns the rows and the path of ``results.md``."""
    store = ResponseStore(os.path.join(out_dir, "responses.jsonl"))
    run_ifeval(
        model,
        tokenizer,
        records,
        methods,
        strategy=strategy,
        store=store,
        model_tag=model_tag,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        progress=progress,
    )
    rows = summarize_ifeval(store, records, model_tag, max_new_tokens)
    return rows, write_report(rows, out_dir, title=title, command=command, machine=machine)[1]


def write_report(
    rows: Sequence[Dict[str, Any]], out_dir: str, *, title: str, command: str = "", machine: str = ""
) -> Tuple[str, str]:
    """``results.json`` and ``results.md`` (overall table + per-instruction-type table)."""
    os.makedirs(out_dir, exist_ok=True)
    jpath, mpath = os.path.join(out_dir, "results.json"), os.path.join(out_dir, "results.md")
    with open(jpath, "w", encoding="utf-8") as f:
        json.dump(
            {
                "title": title,
                "command": command,
                "machine": machine,
                "fluency_bounds": fluency.BOUNDS,
                "rows": list(rows),
            },
            f,
            indent=1,
        )
    md = [f"# {title}", ""]
    if command:
        md += [f"Command: `{command}`", ""]
    if machine:
        md += [f"Machine: {machine}", ""]
    md += [
        "Accuracies in %. tokens = mean reply length; NLL = mean nats/token under the unsteered model; "
        "distinct-4 = share of distinct word 4-grams. Flags against unsteered on the same prompts: "
        f"short (< {fluency.BOUNDS['short']}× its length), unlikely (NLL > +{fluency.BOUNDS['unlikely']}), "
        f"repetitive (distinct-4 < −{fluency.BOUNDS['repetitive']}).",
        "",
        markdown_table(rows),
        "",
        "## Against unsteered on the same prompts",
        "",
        "Steered / unsteered (difference), accuracies in %; tokens and NLL steered / unsteered. The last two "
        "columns: the difference in points with its paired bootstrap 95 % interval (prompts resampled); "
        f"'(no evidence)' = {stats.NO_EVIDENCE}: the interval contains 0.",
        "",
        paired_table(rows),
        "",
        "## Instruction-level loose accuracy per instruction type (%)",
        "",
        per_type_table(rows),
        "",
    ]
    with open(mpath, "w", encoding="utf-8") as f:
        f.write("\n".join(md))
    return jpath, mpath
