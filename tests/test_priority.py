"""The context-priority task (attnsteer.eval.priority): cases from templates (dev and test share
no relation, entity or value; every case asked once per marked statement; the span is the marked
statement), the verdict rule, a resumable end-to-end run on a tiny model, the report."""

from __future__ import annotations

import os

import pytest
import torch

from attnsteer.eval import priority, runner

from tiny import model as tiny_model
from tiny import tokenizer


def test_verdicts():
    vals = ("Dranek", "Suvato")
    assert priority.verdict("The capital is Dranek.", vals, 0) == "marked"
    assert priority.verdict("Suvato", vals, 0) == "other"
    assert priority.verdict("Either Dranek or Suvato.", vals, 1) == "both"
    assert priority.verdict("I do not know.", vals, 1) == "neither"
    assert priority.verdict("Draneks", vals, 0) == "neither"  # whole words only
    assert priority.verdict("built in 1733", ("1733", "173"), 1) == "other"


def test_cases_cover_each_marking_and_the_splits_are_disjoint():
    tok = tokenizer()
    dev = priority.cases(tok, [0, 64], ["user", "system"], n_entities=3, split="dev")
    test = priority.cases(tok, [0], ["user"], n_entities=3, split="test")
    assert len(dev) == 4 * 3 * 2 * 2 * 2 and len(test) == 4 * 3 * 2
    assert {c.relation for c in dev}.isdisjoint({c.relation for c in test})
    words = lambda cs: {w for c in cs for v in c.values for w in v.split() if not w.isdigit()}  # noqa: E731
    assert words(dev).isdisjoint(words(test))  # names and places come from disjoint syllables
    assert len({c.key for c in dev}) == len(dev)
    by_case = {}
    for c in dev:
        by_case.setdefault(c.key.rsplit("|", 1)[0], []).append(c.marked)
        ((a, b),) = c.prompt.spans
        marked_text = c.prompt.text[a:b]
        assert c.values[c.marked] in marked_text and all(
            v not in marked_text for i, v in enumerate(c.values) if i != c.marked
        )
        assert all(c.prompt.text.count(v) >= 1 for v in c.values)
        if c.placement == "system":
            sys_part = c.prompt.text.split("<|im_start|>user")[0]
            assert marked_text in sys_part
    assert all(sorted(m) == [0, 1] for m in by_case.values())  # each statement marked once
    with_filler = [c for c in dev if c.filler == 64 and c.placement == "user"]
    assert sum(c.filler_tokens for c in with_filler) / len(with_filler) > 20  # whole sentences up to 64 tokens
    ((a, _),) = with_filler[0].prompt.spans
    assert with_filler[0].prompt.text.find(with_filler[0].values[1 - with_filler[0].marked]) != -1
    with pytest.raises(ValueError, match="k >= 2"):
        priority.cases(tok, [0], k=1)


def test_end_to_end_run_is_resumable_and_reports(tmp_path):
    tok = tokenizer()
    model = tiny_model("qwen2", layers=2)
    cs = priority.cases(tok, [0, 32], ["user"], n_entities=2, split="dev")[:12]
    store = runner.ResponseStore(str(tmp_path / "responses.jsonl"))
    kw = dict(store=store, model_tag="tiny", batch_size=4, max_new_tokens=4, progress=False)
    priority.run(model, tok, cs, ["none", "guide:delta=2"], **kw)
    assert len(store.records) == 24
    before = os.path.getsize(tmp_path / "responses.jsonl")
    priority.run(model, tok, cs, ["none", "guide:delta=2"], **kw)  # nothing left to do
    assert os.path.getsize(tmp_path / "responses.jsonl") == before
    rows = priority.summarize(store, "tiny", 4)
    assert {r["method"] for r in rows} == {"none", "guide:delta=2"}
    for r in rows:
        assert abs(sum(r[f"rate_{v}"] for v in priority.VERDICTS) - 1) < 1e-9
        assert (r["vs_unsteered"] is None) == (r["method"] == "none")
    md = priority.write_report(store, "tiny", 4, str(tmp_path), "attnsteer eval priority", "test machine")
    text = open(md).read()
    assert "| guide:delta=2 | user |" in text and os.path.exists(tmp_path / "priority.png")


def _record(method, key, verdict, n_tokens=4.0):
    return {"model": "tiny", "method": method, "strategy": priority.STRATEGY, "max_new_tokens": 24, "key": key,
            "relation": "capital", "placement": "user", "length": 0, "filler_tokens": 0, "values": ["A", "B"],
            "marked": 0, "verdict": verdict, "pass": verdict == "marked", "response": "x", "n_tokens": n_tokens,
            "nll": 1.0, "distinct4": 1.0, "seconds": 0.1}  # fmt: skip


def test_sweep_engine_choice_on_a_partial_priority_store(tmp_path):
    """The one sweep engine on priority replies: only points measured on every dev case count, a
    flagged point is never chosen, a tie goes to the weaker setting; sweep.md / .json / .png written."""
    from attnsteer.eval import sweep, tasks

    keys = [f"capital|user|0|dev{i}|m0" for i in range(4)]
    store = runner.ResponseStore(str(tmp_path / "responses.jsonl"))
    rates = {"none": 1, "guide:delta=1": 3, "guide:delta=2": 3, "guide:delta=4": 4, "instaboost:alpha=10": 4}
    for m, hits in rates.items():
        n_tok = 1.0 if m == "guide:delta=4" else 4.0  # much shorter than unsteered: flagged "short"
        store.add(_record(m, k, "marked" if i < hits else "other", n_tok) for i, k in enumerate(keys))
    store.add([_record("instaboost:alpha=2", keys[0], "marked")])  # still running: one case of four
    cases = [type("C", (), {"key": k})() for k in keys]
    task = tasks.get("priority")
    grids = {g: sweep.grid_specs("priority", g, 24) for g in ("guide", "instaboost")}
    opts = task.options("dev", tasks.Options())
    chosen = sweep.report(task, store, "tiny", 24, str(tmp_path), grids, cases, opts, "cmd", "machine")
    assert chosen["by_grid"] == {"guide": "guide:delta=1", "instaboost": "instaboost:alpha=10"}
    assert chosen["best"] == "instaboost:alpha=10"  # the best score; guide 4 scores as high but is flagged
    assert "short" in chosen["scores"]["guide:delta=4"]["flags"]
    assert "instaboost:alpha=2" not in chosen["scores"]  # partial: not a candidate
    saved = __import__("json").loads((tmp_path / "sweep.json").read_text())
    assert saved["task"] == "priority" and saved["best"] == "instaboost:alpha=10" and saved["dev_cases"] == 4
    assert "| guide | guide:delta=1* | 75.0 | +50.0 | 4 | — |" in (tmp_path / "sweep.md").read_text()
    assert os.path.getsize(tmp_path / "sweep.png") > 1000


def test_cli_priority_sweep_end_to_end(tmp_path, monkeypatch, capsys):
    """``eval sweep --task priority``: the dev grid on dev cases, the choice, the test cells (disjoint
    keys) with their report, and a saved configuration whose evidence holds the test cells."""
    import json

    from attnsteer import SteeringConfig, cli, models

    tok = tokenizer()
    monkeypatch.setattr(models, "load_default", lambda **_: (tiny_model("llama", layers=2), tok))
    out = tmp_path / "ps"
    argv = [
        "eval",
        "sweep",
        "--task",
        "priority",
        "--methods",
        "guide",
        "--docs",
        "1",
        "--placements",
        "user",
        "--test-lengths",
        "0,48",
        "--test-placements",
        "user,system",
        "--test-docs",
        "1",
        "--max-new-tokens",
        "3",
        "--out",
        str(out),
        "--no-progress",
        "--report-test",
        "--save-config",
        str(tmp_path / "c.json"),
        "--allow-no-gain",
    ]  # fmt: skip  (a random tiny model: steering need not help)
    assert cli.main(argv) == 0
    swept = json.loads((out / "sweep.json").read_text())
    lines = [json.loads(x) for x in open(out / "responses.jsonl")]
    dev = [r for r in lines if "|dev" in r["key"]]
    test = [r for r in lines if "|test" in r["key"]]
    assert len(dev) == 5 * 4 * 2  # unsteered + 4 GUIDE points; 4 relations x 1 entity x 2 markings
    assert swept["dev_cases"] == 8 and set(swept["by_grid"]) == {"guide"}
    assert swept["best"] is not None  # (the tiny model's replies carry no fluency flag at 3 tokens)
    assert {r["method"] for r in test} == {"none", swept["best"]}
    assert {r["length"] for r in test} == {0, 48} and {r["placement"] for r in test} == {"user", "system"}
    cfg = SteeringConfig.load(tmp_path / "c.json")
    assert cfg.task == "priority" and cfg.method == swept["best"]
    assert {(c["placement"], c["filler_tokens"]) for c in cfg.evidence["test"]["cells"]} == {
        (p, n) for p in ("user", "system") for n in (0, 48)
    }
    assert "| guide:delta=" in (out / "test" / "results.md").read_text()
    # a later run with other --methods still reports and chooses over every grid in the store
    later = ["eval", "sweep", "--task", "priority", "--methods", "instaboost", "--docs", "1", "--placements", "user",
             "--max-new-tokens", "3", "--out", str(out), "--no-progress", "--report-only"]  # fmt: skip
    assert cli.main(later) == 0
    again = json.loads((out / "sweep.json").read_text())
    assert again["by_grid"]["guide"] == swept["by_grid"]["guide"] and again["by_grid"]["instaboost"] is None
    assert again["best"] == swept["best"] and "| guide | guide:delta=" in (out / "sweep.md").read_text()


def test_save_config_refuses_a_choice_that_does_not_beat_unsteered(tmp_path, monkeypatch, capsys):
    """A dev choice that only ties (or loses to) unsteered is not saved unless --allow-no-gain says so;
    the error names the report and the flag."""
    from attnsteer import SteeringConfig, cli, models
    from attnsteer.eval import sweep

    tok = tokenizer()
    monkeypatch.setattr(models, "load_default", lambda **_: (tiny_model("llama", layers=2), tok))
    real = sweep.report

    def no_gain(*a, **k):
        chosen = real(*a, **k)
        return {**chosen, "helps": False}

    monkeypatch.setattr(sweep, "report", no_gain)
    cfg = tmp_path / "c.json"
    argv = ["eval", "sweep", "--task", "priority", "--methods", "guide", "--docs", "1", "--placements", "user",
            "--max-new-tokens", "3", "--out", str(tmp_path / "ps"), "--no-progress", "--save-config", str(cfg)]  # fmt: skip
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "does not beat unsteered on dev" in err and "--allow-no-gain" in err and "sweep.md" in err
    assert not cfg.exists()
    assert cli.main(argv + ["--report-only", "--allow-no-gain"]) == 0
    assert SteeringConfig.load(cfg).task == "priority"


def test_cli_priority_end_to_end(tmp_path, monkeypatch, capsys):
    from attnsteer import cli, models

    tok = tokenizer()
    monkeypatch.setattr(models, "load_default", lambda **_: (tiny_model("llama", layers=2), tok))
    argv = ["eval", "priority", "--fillers", "0", "--placements", "user", "--entities", "1", "--limit", "4",
            "--max-new-tokens", "3", "--out", str(tmp_path), "--no-progress", "--method", "none", "--method", "guide:delta=2"]  # fmt: skip
    assert cli.main(argv) == 0
    text = (tmp_path / "results.md").read_text()
    assert "| unsteered | user |" in text and "| guide:delta=2 | user |" in text


def test_bfloat16_replies_are_stored_apart(tmp_path, monkeypatch):
    """--dtype bfloat16 loads bfloat16 weights and stores the replies under the model name + " bf16", so a
    float32 run into the same folder neither resumes from nor mixes with them; the shipped projections
    are still found by the model's name."""
    from attnsteer import cli, models
    from attnsteer.eval import runner, sweep
    from attnsteer.eval.cli import base_tag

    tok, seen = tokenizer(), []

    def load_default(dtype=None, **_):
        seen.append(dtype)
        return tiny_model("llama", layers=2).to(dtype or torch.float32), tok

    monkeypatch.setattr(models, "load_default", load_default)
    argv = ["eval", "priority", "--fillers", "0", "--placements", "user", "--entities", "1", "--limit", "2",
            "--max-new-tokens", "2", "--out", str(tmp_path), "--no-progress", "--method", "none"]  # fmt: skip
    assert cli.main(argv + ["--dtype", "bfloat16"]) == 0 and cli.main(argv) == 0
    assert seen == [torch.bfloat16, torch.float32]
    store = runner.ResponseStore(str(tmp_path / "responses.jsonl"))
    tags = sorted({k[0] for k in store.records})
    assert tags == ["SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct bf16"]
    n = {t: sum(k[0] == t for k in store.records) for t in tags}
    assert n["SmolLM2-135M-Instruct"] == n["SmolLM2-135M-Instruct bf16"] > 0
    assert base_tag("Qwen2.5-Coder-0.5B-Instruct bf16") == "Qwen2.5-Coder-0.5B-Instruct"
    assert sweep._shipped_projection("Qwen2.5-Coder-0.5B-Instruct bf16") == "qwen2.5-coder-0.5b"
    with pytest.raises(SystemExit):
        cli.main(argv + ["--dtype", "float16"])  # not offered: argparse names the choices


def test_evidence_pairs_each_cell_with_unsteered():
    def row(m, pl, n, acc, diff=None, flags=()):
        return {"method": m, "placement": pl, "length": n, "n": 64, "accuracy": acc, "flags": list(flags),
                "vs_unsteered": diff}  # fmt: skip

    d = {"diff": 0.5, "low": 0.4, "high": 0.6, "n": 64, "level": 0.95, "verdict": "better"}
    rows = [
        row("none", "user", 0, 0.5),
        row("guide:delta=1", "user", 0, 1.0, d),
        row("guide:delta=1", "user", 512, 0.9, d),
    ]
    ev = priority.evidence(rows, "guide:delta=1")
    assert len(ev["cells"]) == 1 and ev["cells"][0]["unsteered"] == 0.5 and ev["cells"][0]["steered"] == 1.0
    assert "user 0 tok: 50% -> 100% (Δ +50.0 [+40.0, +60.0])" in ev["summary"]
    with pytest.raises(ValueError, match="unsteered twin"):
        priority.evidence(rows, "instaboost:alpha=2")
    # a bfloat16 report fills the cells the first lacks, each paired with its own unsteered row
    d2 = {**d, "diff": 0.25, "low": 0.1, "high": 0.4}
    bf16 = [
        row("none", "user", 0, 0.0),
        row("guide:delta=1", "user", 0, 0.25, d2),  # the float32 report has this cell: not taken
        row("none", "user", 2048, 0.25),
        row("guide:delta=1", "user", 2048, 0.5, d2),
    ]
    ev = priority.evidence(rows, "guide:delta=1", more=[("bfloat16", bf16)])
    assert [(c["filler_tokens"], c.get("dtype")) for c in ev["cells"]] == [(0, None), (2048, "bfloat16")]
    assert ev["cells"][1]["unsteered"] == 0.25 and ev["cells"][1]["steered"] == 0.5
    assert "user 2048 tok (bfloat16): 25% -> 50% (Δ +25.0 [+10.0, +40.0])" in ev["summary"]
    assert priority.evidence(rows[:1], "guide:delta=1", more=[("bfloat16", bf16)])["cells"][0]["dtype"] == "bfloat16"


def test_plot_models_draws_each_model(tmp_path):
    d = {"diff": 0.5, "low": 0.4, "high": 0.6, "n": 64, "level": 0.95, "verdict": "better"}
    rows = [
        {"method": "guide:delta=2", "placement": "user", "length": n, "vs_unsteered": d, "flags": []} for n in (0, 512)
    ]
    path = priority.plot_models({"A": rows, "B": rows[:1]}, "guide:delta=2", str(tmp_path / "p.png"))
    assert os.path.getsize(path) > 5000


def test_compare_models_table():
    d = {"diff": 0.5, "low": 0.4, "high": 0.6, "n": 64, "level": 0.95, "verdict": "better"}
    rows = [
        {"method": "none", "placement": "user", "length": 0, "accuracy": 0.5, "flags": []},
        {"method": "guide:delta=2", "placement": "user", "length": 0, "accuracy": 1.0, "flags": [], "vs_unsteered": d},
    ]
    text = priority.compare_models({"Qwen": rows}, ["guide:delta=2", "pasta:alpha=0.01"])
    assert "| Qwen | user | guide:delta=2 | 50 → 100<br>Δ +50.0 [+40.0, +60.0] |" in text
    assert "pasta" not in text  # not measured: no line


def test_shipped_priority_setting_is_the_committed_evidence():
    """recommended(qwen, task="priority") ships the dev choice with the test evidence that the committed
    report holds (tools/ship_priority_config.py wrote it; rerun it after the report changes)."""
    import json
    from pathlib import Path

    import attnsteer
    from attnsteer import demo

    root = Path(__file__).resolve().parents[1] / "eval_results" / "priority"
    cfg = attnsteer.recommended("qwen2.5-coder-0.5b", task="priority")
    chosen = json.loads((root / "qwen-dev" / "sweep.json").read_text())
    rows = json.loads((root / "qwen-test" / "results.json").read_text())["rows"]
    more = [("bfloat16", json.loads((root / "qwen-test-bf16" / "results.json").read_text())["rows"])]
    assert cfg.method == chosen["best"]
    assert cfg.evidence == priority.evidence(rows, cfg.method, more=more)
    assert all(c["diff"]["verdict"] == "better" for c in cfg.evidence["cells"])
    # the goal's distances: at 512 and 2048 filler tokens, in both placements, +40 points or more, no flag
    far = [c for c in cfg.evidence["cells"] if c["filler_tokens"] >= 512]
    assert {(c["placement"], c["filler_tokens"]) for c in far} == {
        (p, n) for p in ("user", "system") for n in (512, 2048)
    }
    assert all(c["diff"]["diff"] >= 0.40 and not c["flags"] for c in far)
    for family in ("seka", "adaseka", "prism", "spa"):  # the 2026 methods' dev choices, with their test cells
        per = attnsteer.recommended("qwen2.5-coder-0.5b", task="priority", method=family)
        assert per.method == chosen["by_grid"][family]
        assert per.evidence == priority.evidence(rows, per.method, more=more)
    labels = [label for label, _ in demo.methods("Qwen2.5-Coder-0.5B-Instruct")]
    # GUIDE 2 is both the tuned setting and the paper's strength: it runs once, labelled both
    assert labels[:2] == ["unsteered", f"{cfg.method} (tuned, priority; paper)"]
    specs_run = [label.split(" (")[0] for label in labels]
    assert len(specs_run) == len(set(specs_run)), labels
    with pytest.raises(KeyError, match="tasks shipped for it: priority.*attnsteer eval sweep --task ifeval"):
        attnsteer.recommended("qwen2.5-coder-1.5b", task="ifeval")
    # the 1.5B model ships the 0.5B's choice (not re-tuned), with its own test evidence
    big = attnsteer.recommended("qwen2.5-coder-1.5b", task="priority")
    rows15 = json.loads((root / "qwen-1.5b" / "results.json").read_text())["rows"]
    more15 = [("bfloat16", json.loads((root / "qwen-1.5b-bf16" / "results.json").read_text())["rows"])]
    assert big.method == cfg.method and "not re-tuned" in big.note
    assert big.evidence == priority.evidence(rows15, big.method, more=more15)
