"""Tuned configurations (attnsteer.SteeringConfig, attnsteer.recommended): saved and loaded, and
accepted wherever a method is — steer(), generate, the CLI's --config, vLLM's steered_prompt."""

from __future__ import annotations

import json

import pytest
import torch

import attnsteer
from attnsteer import GUIDE, SteeringConfig
from attnsteer.config import PAPER_STRENGTHS, from_cli

from tiny import model as tiny_model
from tiny import tokenizer

PROMPT = "The quick brown fox jumps over the lazy dog. <<Answer in French.>> Now"


def test_save_load_round_trip_and_canonical_spec(tmp_path):
    cfg = SteeringConfig("GUIDE:delta=1.0", model="m", task="retention", evidence={"dev_accuracy": 0.5}, note="x")
    assert cfg.method == "guide:delta=1" and cfg.build() == GUIDE(1.0)
    path = cfg.save(tmp_path / "sub" / "cfg.json")
    assert SteeringConfig.load(path) == cfg
    (tmp_path / "bad.json").write_text('{"spec": "guide"}')
    with pytest.raises(ValueError, match='needs at least {"method"'):
        SteeringConfig.load(tmp_path / "bad.json")
    (tmp_path / "extra.json").write_text('{"method": "guide", "strength": 3}')
    with pytest.raises(ValueError, match="unknown fields"):
        SteeringConfig.load(tmp_path / "extra.json")
    with pytest.raises(FileNotFoundError, match="--save-config"):
        SteeringConfig.load(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="unknown method"):
        SteeringConfig("guidance:delta=1")


def test_steer_and_generate_take_a_config_as_the_method_it_names():
    m, tok = tiny_model("llama", layers=2, std=0.3), tokenizer()
    enc = attnsteer.highlight(tok, PROMPT)
    cfg = SteeringConfig("guide:delta=1.5")
    with torch.no_grad():
        with attnsteer.steer(m, cfg, spans=enc):
            got = m(**enc).logits
        with attnsteer.steer(m, GUIDE(1.5), spans=enc):
            want = m(**enc).logits
        plain = m(**enc).logits
    assert torch.equal(got, want) and not torch.equal(got, plain)
    kw = dict(max_new_tokens=5, do_sample=False)
    assert attnsteer.generate(m, tok, PROMPT, cfg, **kw) == attnsteer.generate(m, tok, PROMPT, GUIDE(1.5), **kw)
    with pytest.raises(TypeError, match="unsteered: run the model without steer"):
        with attnsteer.steer(m, SteeringConfig("none"), spans=enc):
            pass
    with pytest.raises(TypeError, match="DIRECTER decodes with its own loop"):
        with attnsteer.steer(m, SteeringConfig("directer"), spans=enc):
            pass


def test_cli_generate_with_config(tmp_path, capsys):
    from attnsteer import cli

    m, tok = tiny_model("qwen2", std=0.3), tokenizer()
    m.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    cfg = SteeringConfig("instaboost:alpha=3").save(tmp_path / "cfg.json")
    base = ["generate", "--model", str(tmp_path / "m"), "--max-new-tokens", "4"]
    assert cli.main([*base, "--config", cfg, "<<Be brief.>> Hello there"]) == 0
    with_cfg = capsys.readouterr().out
    assert cli.main([*base, "--method", "instaboost", "--alpha", "3", "<<Be brief.>> Hello there"]) == 0
    assert capsys.readouterr().out == with_cfg
    assert cli.main([*base, "--config", cfg, "--method", "pasta", "<<Be brief.>> Hi"]) == 2
    assert "drop --method" in capsys.readouterr().err


def test_vllm_steered_prompt_takes_a_config():
    from attnsteer.vllm import steered_prompt

    tok = tokenizer()
    cfg = SteeringConfig("spotlight:target=0.2")
    assert steered_prompt(tok, PROMPT, cfg) == steered_prompt(tok, PROMPT, "spotlight:target=0.2")
    with pytest.raises(ValueError, match="cannot be served"):
        steered_prompt(tok, PROMPT, SteeringConfig("gate+guide:delta=1"))


def test_recommended_for_the_embedded_model_by_name_and_by_model():
    cfg = attnsteer.recommended("SmolLM2-135M-Instruct", task="ifeval")
    d = cfg.evidence["prompt_loose_diff"]
    assert cfg.task == "ifeval" and cfg.build() is not None
    assert d["low"] <= d["diff"] <= d["high"] and d["n"] == 441  # the shipped test-split interval
    assert attnsteer.recommended("smollm2-135m") == cfg
    assert attnsteer.recommended("smollm2-135m", method="guide").method.startswith("guide:")
    # by model: recognised by architecture, layers and hidden size (here a tiny stand-in of that shape)
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = LlamaConfig(num_hidden_layers=30, hidden_size=576, intermediate_size=8, num_attention_heads=1,
                        num_key_value_heads=1, vocab_size=8, architectures=["LlamaForCausalLM"])  # fmt: skip
    with torch.device("meta"):
        model = LlamaForCausalLM(shape)
    assert attnsteer.recommended(model) == cfg
    with pytest.raises(KeyError, match="--save-config"):
        attnsteer.recommended("gpt-9")
    with pytest.raises(KeyError, match="tasks shipped"):
        attnsteer.recommended("smollm2-135m", task="translation")
    with pytest.raises(KeyError, match="methods shipped"):
        attnsteer.recommended("smollm2-135m", method="magic")
    with pytest.raises(KeyError, match="no tuned configuration ships for this model"):
        attnsteer.recommended(tiny_model("llama", layers=2))


def test_shipped_file_is_consistent():
    """Every shipped spec parses, every interval brackets its difference and carries the verdict
    its bounds give, and the paper strengths are the papers' (what the demo labels as such)."""
    from attnsteer.config import RECOMMENDED_FILE
    from attnsteer.eval.stats import Difference

    def intervals(obj):
        if isinstance(obj, dict):
            if {"diff", "low", "high", "n"} <= set(obj):
                yield obj
            for v in obj.values():
                yield from intervals(v)

    table = json.loads(RECOMMENDED_FILE.read_text())
    seen = 0
    for name, entry in table.items():
        for task in entry["tasks"]:
            for method in [None, *entry["tasks"][task].get("per_method", {})]:
                cfg = attnsteer.recommended(name, task=task, method=method)
                for d in intervals(cfg.evidence):
                    assert d["low"] <= d["diff"] <= d["high"]
                    assert d["verdict"] == Difference.from_dict(d).verdict
                    seen += 1
    assert seen >= 6
    assert PAPER_STRENGTHS["guide"] == "guide:delta=2" and PAPER_STRENGTHS["keyscale"] == "keyscale:alpha=100"


def _ship_no_gain():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "tools" / "ship_no_gain.py"
    spec = importlib.util.spec_from_file_location("ship_no_gain", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_tuned_without_gain_is_an_answer_with_its_evidence(tmp_path):
    """A model tuned on a task where no setting beat unsteered ships no setting but the sweep's evidence:
    recommended raises NoSettingHelps (a KeyError) that says so, and the record is the committed sweep's."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    with pytest.raises(attnsteer.NoSettingHelps, match="tuned on 'retention' and no setting beats unsteered") as err:
        attnsteer.recommended("qwen2.5-coder-0.5b", task="retention")
    assert isinstance(err.value, KeyError) and "--allow-no-gain" in str(err.value)
    ev = err.value.evidence
    dev = root / "eval_results" / "qwen" / "retention-sweep"
    # the record is the committed sweep's (with its test report when the dev choice beat unsteered on dev)
    assert ev == _ship_no_gain().evidence(str(dev), str(dev / "test") if "test" in ev else None)
    assert len(ev["scores"]) >= 8
    if max(ev["scores"].values()) > ev["unsteered"]:  # a dev gain: no test cell of it is better without a flag
        cells = [c for by_length in ev["test"].values() for c in by_length.values()]
        assert cells and not [c for c in cells if c["diff"]["verdict"] == "better" and not c["flags"]]
    with pytest.raises(attnsteer.NoSettingHelps):
        attnsteer.recommended("qwen2.5-coder-0.5b", task="retention", method="guide")
    with pytest.raises(KeyError, match=r"tasks shipped for it: priority, ifeval \(tuned without a gain: retention\)"):
        attnsteer.recommended("qwen2.5-coder-0.5b", task="translation")  # a task never tuned: the message lists both
    # a sweep whose choice helps is refused by the tool (ship it as a setting instead)
    sweep = {"task": "priority", "best": "guide:delta=2", "helps": True, "scores": {}}
    (tmp_path / "sweep.json").write_text(json.dumps(sweep))
    with pytest.raises(SystemExit, match="beats unsteered on dev"):
        _ship_no_gain().evidence(str(tmp_path))


def test_ship_no_gain_accepts_a_dev_gain_only_when_the_test_split_shows_none(tmp_path):
    """tools/ship_no_gain.py --test: a dev choice that beat unsteered on dev is recorded as no gain only when
    none of its test cells is better (interval clear of 0) without a fluency flag; the cells join the record."""
    tool = _ship_no_gain()
    sweep = {"task": "retention", "best": "pasta:alpha=0.3,layers=12-23", "helps": True, "dev_cases": 18,
             "metric": "m", "command": "c", "scores": {"none": {"score": 1 / 3, "flags": []},
             "pasta:alpha=0.3,layers=12-23": {"score": 7 / 18, "flags": []}}}  # fmt: skip
    (tmp_path / "sweep.json").write_text(json.dumps(sweep))
    none = [{"model": "m", "method": "none", "strategy": "retention", "max_new_tokens": 64, "key": f"{rule}|before|1024|{case}",
             "rule": rule, "loose": [ok]} for rule, ok, case in [("french", True, "dev0"), ("lowercase", False, "dev0"),
             ("lowercase", True, "test0")]]  # fmt: skip
    (tmp_path / "responses.jsonl").write_text("".join(json.dumps(r) + "\n" for r in none[:2]))
    (tmp_path / "responses.d.jsonl").write_text(json.dumps(none[2]) + "\n")  # a shard's test reply: not counted
    (tmp_path / "test").mkdir()

    def report(verdict, flags, low):
        def row(method, acc, vs):
            return {"method": method, "rule": "all", "placement": "before", "length": 2048, "n": 33,
                    "accuracy": acc, "flags": flags if vs else [], "vs_unsteered": vs}  # fmt: skip

        vs = {"diff": 0.1, "low": low, "high": 0.2, "n": 33, "level": 0.95, "verdict": verdict}
        rows = [row("none", 0.3, None), row(sweep["best"], 0.4, vs), row("guide:delta=1", 0.9, dict(vs, diff=0.6))]
        (tmp_path / "test" / "results.json").write_text(json.dumps({"rows": rows}))

    with pytest.raises(SystemExit, match="--test DEV/test"):
        tool.evidence(str(tmp_path))  # a dev gain needs the test split's word
    report("no evidence of a difference", [], -0.05)
    ev = tool.evidence(str(tmp_path), str(tmp_path / "test"))
    cell = ev["test"]["before"]["2048"]
    assert (cell["accuracy"], cell["unsteered_accuracy"], cell["n"]) == (0.4, 0.3, 33)  # the choice's row, not guide's
    assert "does not carry over" in ev["summary"] and "before 2048 tok 40 vs 30 %" in ev["summary"]
    assert ev["unsteered_by_rule"] == "french 1 of 1, lowercase 0 of 1"
    report("better", ["repetitive"], 0.03)  # better but flagged: still no usable gain
    assert tool.evidence(str(tmp_path), str(tmp_path / "test"))["test"]["before"]["2048"]["flags"] == ["repetitive"]
    report("better", [], 0.03)
    with pytest.raises(SystemExit, match="ship it as a setting"):
        tool.evidence(str(tmp_path), str(tmp_path / "test"))
    (tmp_path / "test" / "results.json").write_text(json.dumps({"rows": []}))
    with pytest.raises(SystemExit, match="--test-only"):
        tool.evidence(str(tmp_path), str(tmp_path / "test"))


def test_eval_method_at_file_is_the_saved_spec(tmp_path, capsys):
    from attnsteer import cli

    path = SteeringConfig("keyscale:alpha=1.5", task="ifeval").save(tmp_path / "k.json")
    assert from_cli(f"@{path}") == "keyscale:alpha=1.5"
    assert from_cli("GUIDE:delta=1.0") == "guide:delta=1"
    # a missing file fails before any model loads (exit 2, the fix in the message)
    assert cli.main(["eval", "ifeval", "--method", f"@{tmp_path / 'missing.json'}"]) == 2
    assert "--save-config" in capsys.readouterr().err


def test_ship_ifeval_config_writes_the_dev_choice_with_its_test_evidence(tmp_path, monkeypatch, capsys):
    """tools/ship_ifeval_config.py: the sweep's dev choice and each family's, with the paired test evidence of
    the sweep's --test-only report; a partial test split only with --partial (and named so); a choice that
    does not beat unsteered on dev is refused (tools/ship_no_gain.py records those)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "tools" / "ship_ifeval_config.py"
    spec = importlib.util.spec_from_file_location("ship_ifeval_config", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    rec = tmp_path / "recommended.json"
    rec.write_text("{}")
    (tmp_path / "models" / "smollm2-135m").mkdir(parents=True)
    (tmp_path / "models" / "smollm2-135m" / "config.json").write_text(
        json.dumps({"architectures": ["LlamaForCausalLM"], "num_hidden_layers": 30, "hidden_size": 576})
    )
    monkeypatch.setattr(tool, "RECOMMENDED_FILE", rec)
    monkeypatch.setattr(tool, "cache_dir", lambda: str(tmp_path))

    def diff(x, verdict):
        return {"diff": x, "low": x - 0.04, "high": x + 0.04, "n": n, "level": 0.95, "verdict": verdict}

    def row(method, loose, vs=None):
        return {"method": method, "n": n, "prompt_loose": loose, "n_tokens": 150.4, "nll": 0.512, "flags": [],
                "vs_unsteered": vs}  # fmt: skip

    sweep = tmp_path / "sweep"
    (sweep / "test").mkdir(parents=True)
    scores = {
        s: {"n": 100, "score": 0.2, "flags": []} for s in ("none", "spa:omega=2", "guide:delta=1", "seka:gain=0.4")
    }
    scores["spa:omega=2"]["score"] = scores["seka:gain=0.4"]["score"] = 0.27  # a tie on dev, named in the note
    chosen = {"model": "M bf16", "dev_cases": 100, "best": "spa:omega=2", "helps": True, "scores": scores,
              "by_grid": {"spa": "spa:omega=2", "guide": "guide:delta=1", "seka": "seka:gain=0.4"},
              "measured": {"spa": ["spa:omega=2"], "guide": ["guide:delta=0.5", "guide:delta=1", "guide:delta=2"],
                           "seka": ["seka:gain=0.4"]}}  # fmt: skip
    (sweep / "sweep.json").write_text(json.dumps(chosen))
    n = 100
    good = {"prompt_loose": diff(0.07, "better"), "inst_loose": diff(0.05, "better")}
    none_ = {"prompt_loose": diff(0.0, "no evidence of a difference"), "inst_loose": diff(0.0, "x")}
    rows = [row("none", 0.2), row("spa:omega=2", 0.27, good), row("guide:delta=1", 0.2, none_)]
    (sweep / "test" / "results.json").write_text(json.dumps({"rows": rows}))
    assert tool.main(["smollm2-135m", str(sweep)]) == 1  # 100 of 441 test prompts: refused without --partial
    assert "pass --partial" in capsys.readouterr().err
    assert tool.main(["smollm2-135m", str(sweep), "--partial"]) == 0
    entry = json.loads(rec.read_text())["SmolLM2-135M-Instruct"]
    ship = entry["tasks"]["ifeval"]
    assert ship["method"] == "spa:omega=2" and ship["evidence"]["split"] == "IFEval test (first 100 of 441 prompts)"
    assert ship["evidence"]["prompt_loose_diff"] == good["prompt_loose"] and ship["evidence"]["nll"] == [0.51, 0.51]
    assert set(ship["per_method"]) == {"spa", "guide"}  # SEKA's choice has no test row
    assert "+7.0 points [+3.0, +11.0] (better)" in ship["note"] and "among 3 settings" in ship["note"]
    assert "bfloat16" in ship["note"] and entry["signature"] == ["LlamaForCausalLM", 30, 576]
    assert "Tied on dev with seka:gain=0.4: the tie rule keeps the weaker setting" in ship["note"]
    # the grids the dev sweep has not finished are named (guide is complete: not named)
    assert "(points measured): instaboost 0 of 3, spotlight 0 of 3, pasta 0 of 3, pasta-layers 0 of 3, " in ship["note"]
    assert "keyscale 0 of 3, spa 1 of 3, seka 1 of 2; the complete sweep may choose otherwise." in ship["note"]
    chosen["helps"] = False
    (sweep / "sweep.json").write_text(json.dumps(chosen))
    assert tool.main(["smollm2-135m", str(sweep), "--partial"]) == 1
    assert "ship_no_gain.py" in capsys.readouterr().err
    # --per-method-only: the shipped choice stays; families measured later join per_method (a "worse" one too,
    # with its verdict); the record keeps every alias it had (a hub id written by hand is not dropped)
    table = json.loads(rec.read_text())
    table["SmolLM2-135M-Instruct"]["aliases"].append("HuggingFaceTB/SmolLM2-135M-Instruct")
    rec.write_text(json.dumps(table))
    worse = {"prompt_loose": diff(-0.05, "worse"), "inst_loose": diff(-0.04, "worse")}
    rows = [row("none", 0.2), row("seka:gain=0.4", 0.15, worse)]
    (sweep / "test" / "results.json").write_text(json.dumps({"rows": rows}))
    assert tool.main(["smollm2-135m", str(sweep), "--per-method-only"]) == 1  # 100 prompts: --partial needed
    assert tool.main(["smollm2-135m", str(sweep), "--per-method-only", "--partial"]) == 0
    assert "seka -> seka:gain=0.4: -5.0 [-9.0, -1.0] (worse)" in capsys.readouterr().out
    after = json.loads(rec.read_text())["SmolLM2-135M-Instruct"]
    assert (
        after["tasks"]["ifeval"]["method"] == "spa:omega=2" and after["tasks"]["ifeval"]["evidence"] == ship["evidence"]
    )
    assert set(after["tasks"]["ifeval"]["per_method"]) == {"spa", "guide", "seka"}
    assert after["tasks"]["ifeval"]["per_method"]["seka"]["evidence"]["prompt_loose_diff"] == worse["prompt_loose"]
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in after["aliases"] and "smollm2-135m" in after["aliases"]
    rec.write_text("{}")
    assert tool.main(["smollm2-135m", str(sweep), "--per-method-only", "--partial"]) == 1
    assert "ships no IFEval choice yet" in capsys.readouterr().err


def test_shipped_smollm2_2026_methods_are_the_committed_test_report():
    """SmolLM2's per-method IFEval entries for SEKA and SPA carry the paired cells of the committed sweep report
    (tools/ship_ifeval_config.py --per-method-only wrote them; rerun it after the report changes); its shipped
    choice stays KeyScale 1.5."""
    from pathlib import Path

    report = Path(__file__).resolve().parents[1] / "eval_results" / "sweep" / "test" / "results.json"
    rows = {r["method"]: r for r in json.loads(report.read_text())["rows"]}
    assert attnsteer.recommended("smollm2-135m", task="ifeval").method == "keyscale:alpha=1.5"
    for family in ("seka", "spa"):
        cfg = attnsteer.recommended("smollm2-135m", task="ifeval", method=family)
        row = rows[cfg.method]
        assert cfg.evidence["prompt_loose_diff"] == row["vs_unsteered"]["prompt_loose"]
        assert cfg.evidence["inst_loose_diff"] == row["vs_unsteered"]["inst_loose"]
        assert cfg.evidence["prompt_loose_diff"]["n"] == 441 and cfg.evidence["split"] == "IFEval test (441 prompts)"
    assert attnsteer.recommended("HuggingFaceTB/SmolLM2-135M-Instruct").method == "keyscale:alpha=1.5"


def test_shipped_qwen_ifeval_setting_is_the_committed_test_report():
    """Qwen2.5-Coder-0.5B's IFEval choice is the bfloat16 dev sweep's (SpotLight τ = 0.3 since its grid finished:
    27 % on dev, tied with SPA ω = 2, InstABoost α = 10 and the gated InstABoost α = 5, the weakest by the tie
    rule) and carries the paired cell of the committed 441-prompt test report whatever it says
    (tools/ship_ifeval_config.py wrote it); each family's dev choice measured on test ships beside it, SPA ω = 2
    (the choice before SpotLight's grid finished) with its own test cell; the note names every setting tied
    with it on dev (the sweep is complete: 33 settings)."""
    from pathlib import Path

    from attnsteer.eval.sweep import RULE

    folder = Path(__file__).resolve().parents[1] / "eval_results" / "qwen" / "ifeval-bf16"
    rows = {r["method"]: r for r in json.loads((folder / "test" / "results.json").read_text())["rows"]}
    chosen = json.loads((folder / "sweep.json").read_text())
    cfg = attnsteer.recommended("qwen2.5-coder-0.5b", task="ifeval")
    assert cfg.method == chosen["best"] == "spotlight:target=0.3" and "weaker setting" in RULE
    assert cfg.evidence["prompt_loose_diff"] == rows[cfg.method]["vs_unsteered"]["prompt_loose"]
    assert cfg.evidence["split"] == "IFEval test (441 prompts)" and "bfloat16" in cfg.note
    # every grid of the sweep is measured on all dev prompts now: the note says so by naming none unfinished
    assert all(v["n"] >= chosen["dev_cases"] for v in chosen["scores"].values()) and "not yet measured" not in cfg.note
    top = chosen["scores"][cfg.method]["score"]
    tied = sorted(k for k, v in chosen["scores"].items() if k not in ("none", cfg.method) and not v["flags"]
                  and v["score"] == top)  # fmt: skip
    assert {"spa:omega=2", "instaboost:alpha=10", "gate+instaboost:alpha=5"} <= set(tied)
    named = cfg.note.split("Tied on dev with ", 1)[1].split(": the tie rule", 1)[0]
    assert sorted(named.split(", ")) == tied
    assert isinstance(cfg.build(), attnsteer.SpotLight)
    for family in ("seka", "adaseka", "prism", "spa", "instaboost", "spotlight"):
        per = attnsteer.recommended("qwen2.5-coder-0.5b", task="ifeval", method=family)
        assert per.method == chosen["by_grid"][family]
        assert per.evidence["prompt_loose_diff"] == rows[per.method]["vs_unsteered"]["prompt_loose"]
    spa = attnsteer.recommended("qwen2.5-coder-0.5b", task="ifeval", method="spa")
    assert spa.method == "spa:omega=2" and spa.evidence["prompt_loose_diff"]["verdict"] == "better"
    assert spa.evidence["split"] == "IFEval test (441 prompts)" and isinstance(spa.build(), attnsteer.SPA)
