"""The evaluation harness: scoring = lm-eval's, offline, splits, highlight strategies, resume,
fluency figures, method specs, sweep choice, and a 5-prompt end-to-end run on a tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from attnsteer import specs
from attnsteer.config import from_cli
from attnsteer.eval import checkers, fluency, ifeval, runner, sweep

from tiny import model as tiny_model
from tiny import tokenizer

RECORDS = ifeval.load_prompts()
BY_KEY = {r["key"]: r for r in RECORDS}

# Fixed responses: each passes or fails different checkers (commas, case, length, quotes, JSON…).
RESPONSES = [
    "",
    "hello world",
    "HELLO WORLD THIS IS ALL CAPS AND HAS NO COMMA AT ALL",
    '"Wrapped in double quotes, with a comma."',
    '```json\n{"answer": "yes"}\n```',
    "* one\n* two\n* three\n\nP.S. a postscript here.",
    "My answer is yes.",
    "Title <<A poem>>\n\nSECTION 1\nThe first part. It has two sentences.\n\n***\n\nSECTION 2\nThe second part.",
    ("word " * 320).strip(),
    "Bonjour, je suis un assistant qui répond en français sans problème aujourd'hui.",
]


def test_prompts_are_the_541_ifeval_prompts():
    import hashlib

    data = open(ifeval.DATA, "rb").read()
    assert hashlib.sha256(data).hexdigest() == "67ffeee0fcb87c317c5b08a2de85557b4a7e96ada6178aa645b4954fe4b53d49"
    assert len(RECORDS) == 541 and len({r["key"] for r in RECORDS}) == 541


def test_scoring_equals_lm_evals_process_results():
    utils = checkers.load()
    sample = RECORDS[::9] + [BY_KEY[1122], BY_KEY[1129]]
    ours, theirs = [], []
    for r in sample:
        for resp in RESPONSES:
            s = checkers.score(r, resp)
            import random

            random.seed(r["key"])  # lm-eval draws the same random letters when seeded alike
            res = utils.process_results(r, [resp])
            assert s.strict == res["inst_level_strict_acc"] and s.prompt_strict == res["prompt_level_strict_acc"]
            assert s.loose == res["inst_level_loose_acc"] and s.prompt_loose == res["prompt_level_loose_acc"]
            ours.append(s)
            theirs.append(res)
    agg = checkers.aggregate(ours)
    assert agg["inst_loose"] == pytest.approx(utils.agg_inst_level_acc([t["inst_level_loose_acc"] for t in theirs]))
    assert agg["prompt_loose"] == pytest.approx(sum(t["prompt_level_loose_acc"] for t in theirs) / len(theirs))
    # Not a constant: the responses pass some checkers and fail others.
    assert 0 < agg["inst_strict"] < 1 and agg["inst_strict"] <= agg["inst_loose"]


def test_random_checkers_are_seeded_per_prompt():
    for key in (1122, 1129):
        r = BY_KEY[key]
        got = {tuple(checkers.score(r, resp).strict) for resp in ["d" * 10 + " u" * 10] * 5}
        assert len(got) == 1
        assert len(
            {
                checkers.describe(i, kw, key=key)
                for i, kw in zip(r["instruction_id_list"], r["kwargs"])
                for _ in range(3)
            }
        ) == len(r["instruction_id_list"])


def test_scoring_runs_offline_with_the_network_blocked(tmp_path):
    """A fresh interpreter with sockets and nltk.download disabled and no NLTK data of the user's:
    every prompt is scored, and the sentence-counting checkers work."""
    code = textwrap.dedent("""
        import socket
        def _blocked(*a, **k):
            raise OSError("network blocked by the test")
        socket.socket.connect = _blocked
        socket.create_connection = _blocked
        import nltk
        nltk.download = _blocked
        from attnsteer.eval import checkers, ifeval
        recs = ifeval.load_prompts()
        n = 0
        for r in recs:
            checkers.score(r, "One sentence here. Another sentence there.")
            n += 1
        r = next(r for r in recs if "length_constraints:number_sentences" in r["instruction_id_list"])
        print("scored", n)
    """)
    env = {k: v for k, v in os.environ.items() if k != "NLTK_DATA"}
    env.update(HOME=str(tmp_path), no_proxy="*", http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "scored 541" in res.stdout


def test_sentence_checker_counts_with_the_shipped_punkt():
    r = next(r for r in RECORDS if r["instruction_id_list"] == ["length_constraints:number_sentences"])
    n = r["kwargs"][0]["num_sentences"]
    rel = r["kwargs"][0]["relation"]
    few, many = "Short one.", " ".join(f"Sentence number {i} is here." for i in range(n + 3))
    ok = {"less than": (True, False), "at least": (False, True)}[rel]
    assert (checkers.score(r, few).prompt_strict, checkers.score(r, many).prompt_strict) == ok


def test_dev_test_split_is_fixed_disjoint_and_stratified():
    dev, test = ifeval.split(RECORDS, "dev"), ifeval.split(RECORDS, "test")
    assert len(dev) == 100 and len(test) == 441
    assert not {r["key"] for r in dev} & {r["key"] for r in test}
    assert [r["key"] for r in dev] == [r["key"] for r in ifeval.split(list(reversed(RECORDS)), "dev")][::-1]
    assert {r["instruction_id_list"][0] for r in dev} == {r["instruction_id_list"][0] for r in RECORDS}
    with pytest.raises(ValueError, match="split must be"):
        ifeval.split(RECORDS, "train")


def test_constraints_strategy_locates_the_constraint_sentences():
    r = BY_KEY[1000]  # no comma + highlighted sections + 300 words
    spans, found = ifeval.locate_constraints(r)
    assert found == [True, True, True]
    texts = [r["prompt"][a:b] for a, b in spans]
    assert texts[0].startswith("Write a 300+ word summary") and texts[1].startswith("Do not use any commas")
    r = next(
        r
        for r in RECORDS
        if r["instruction_id_list"] == ["punctuation:no_comma"]
        and "\n" not in r["prompt"]
        and len(ifeval.sentence_spans(r["prompt"])) > 1
    )
    spans, found = ifeval.locate_constraints(r)
    assert found == [True] and all("comma" in r["prompt"][a:b].lower() for a, b in spans)
    assert len(spans) < len(ifeval.sentence_spans(r["prompt"]))  # not the whole prompt
    rep = ifeval.locate_report(RECORDS)
    assert rep["instructions"] == 834 and rep["instructions_located"] >= 820 and rep["prompts_some_located"] >= 535


@pytest.mark.parametrize("strategy", ifeval.STRATEGIES)
def test_strategy_spans_come_from_offsets_and_keep_literal_markup(strategy):
    tok = tokenizer()
    r = next(r for r in RECORDS if "<<" in r["prompt"])
    p = ifeval.build_prompt(tok, r, strategy)
    assert r["prompt"] in p.text
    marked = [p.text[a:b] for a, b in p.spans]
    if strategy == "prompt":
        assert marked == [r["prompt"]]
    elif strategy == "system":
        assert len(marked) == 1 and marked[0] == ifeval.system_message(r)
        assert checkers.describe(r["instruction_id_list"][0], r["kwargs"][0], key=r["key"]) in marked[0]
    else:
        assert all(m in r["prompt"] for m in marked) and p.located
    enc = runner._encode(tok, [p], steered=True)
    ids = enc["input_ids"][0]
    assert "<<" in tok.decode(ids)  # the dataset's brackets survive (no markup parsing)
    span_text = tok.decode(ids[enc.span_mask[0].bool()])
    assert span_text.replace(" ", "") in "".join(marked).replace(" ", "") or strategy == "constraints"
    assert enc.span_mask[0].any()


def test_fluency_figures_on_repetitive_and_normal_replies():
    normal = "The cat sat on the mat and looked at the birds outside the window before it fell asleep."
    loop = "I am here. " * 20
    assert fluency.distinct_ngrams(normal) == 1.0
    assert fluency.distinct_ngrams(loop) < 0.1
    assert fluency.distinct_ngrams("too short") == 1.0
    base = {"n_tokens": 100.0, "nll": 1.0, "distinct4": 0.9}
    assert fluency.flags(base, base) == []
    assert fluency.flags({"n_tokens": 20.0, "nll": 2.0, "distinct4": 0.3}, base) == ["short", "unlikely", "repetitive"]


def test_response_nll_equals_a_per_row_computation():
    m, tok = tiny_model("llama", std=0.3), tokenizer()
    enc = tok(["Answer in French.", "The quick brown fox jumps over the lazy dog."], padding=True, return_tensors="pt")
    gen = torch.randint(5, len(tok), (2, 6))
    gmask = torch.ones_like(gen)
    gmask[0, 4:] = 0
    got = fluency.response_nll(m, enc["input_ids"], enc["attention_mask"], gen, gmask)
    for b in range(2):
        real = enc["input_ids"][b][enc["attention_mask"][b].bool()]
        n = int(gmask[b].sum())
        ids = torch.cat([real, gen[b, :n]])[None]
        with torch.no_grad():
            logp = torch.log_softmax(m(ids).logits[0, len(real) - 1 : -1].float(), -1)
        want = -logp.gather(-1, gen[b, :n, None]).mean().item()
        assert got[b] == pytest.approx(want, rel=1e-4, abs=1e-4)


def test_method_specs_parse_and_canonicalise(tmp_path):
    import attnsteer

    assert specs.parse("none") is None
    assert specs.parse("guide:delta=2") == attnsteer.GUIDE(2.0)
    assert specs.parse("pasta:alpha=0.1,layers=2-3+5").layers == (2, 3, 5)
    g = specs.parse("gate+spotlight:target=0.2")
    assert isinstance(g, attnsteer.Directer) and g.method == attnsteer.SpotLight(0.2)
    assert specs.parse("directer:beta=0.25,max_trials=3") == attnsteer.Directer(beta=0.25, max_trials=3)
    heads = tmp_path / "heads.json"
    heads.write_text(json.dumps({"1": [0, 2]}))
    assert specs.parse_local(f"pasta:heads={heads}").heads == {1: [0, 2]}  # the local user's file
    with pytest.raises(ValueError, match="read by parse_local"):
        specs.parse(f"pasta:heads={heads}")  # the library default opens nothing
    assert specs.canonical(f"pasta:heads={heads}") == f"pasta:heads={heads}"  # nor does canonical
    assert from_cli(f"pasta:heads={heads}") == f"pasta:heads={heads}"
    with pytest.raises(FileNotFoundError):
        from_cli(f"pasta:heads={tmp_path / 'missing.json'}")  # the CLI checks it before a model loads
    assert specs.parse("pasta:heads=1:0+1:2").heads == {1: [0, 2]}  # inline
    assert specs.parse("pasta:heads=3:1-3+3:2+0:0").heads == {3: [1, 2, 3], 0: [0]}
    assert specs.canonical("GUIDE:delta=2.0") == specs.canonical("guide:delta=2") == "guide:delta=2"
    assert specs.canonical("unsteered") == "none"
    with pytest.raises(ValueError, match="no setting 'delta'"):
        specs.parse("instaboost:delta=2")
    with pytest.raises(ValueError, match="unknown method"):
        specs.parse("steerit:x=1")
    with pytest.raises(ValueError, match="already gated"):
        specs.parse("gate+directer")
    with pytest.raises(ValueError, match="key=value"):
        specs.parse("guide:2")
    with pytest.raises(ValueError, match="given twice"):
        specs.parse("guide:delta=2,DELTA=3")
    with pytest.raises(ValueError, match="NaN and infinity"):
        specs.parse("guide:delta=-inf")
    with pytest.raises(ValueError, match="outside 0..1023"):
        specs.parse("guide:layers=0-300000000")  # the cap without a model, before a list is built
    assert specs.canonical("spotlight:Phases=Decode,target=.2") == "spotlight:phases=decode,target=0.2"


def test_sweep_choice_skips_flagged_points_and_prefers_the_weaker_tie():
    def sc(m, v, flags=()):
        return {"method": m, "score": v, "flags": list(flags), "n": 100, "cells": 1}

    scores = {
        "guide:delta=0.5": sc("guide:delta=0.5", 0.3),
        "guide:delta=1": sc("guide:delta=1", 0.3),
        "guide:delta=2": sc("guide:delta=2", 0.5, ["short"]),
    }
    cands = [s for _, s in sweep.grid_specs("ifeval", "guide", 30)]
    assert cands == ["guide:delta=0.5", "guide:delta=1", "guide:delta=2"]
    assert sweep.choose(scores, cands)["method"] == "guide:delta=0.5"
    assert sweep.choose(scores, list(reversed(cands)))["method"] == "guide:delta=0.5"  # weaker, not earlier
    assert sweep.choose({"guide:delta=2": scores["guide:delta=2"]}, cands) is None
    assert sweep.grid_specs("ifeval", "pasta-layers", 30, gated=True)[0][1] == "gate+pasta:alpha=0.3,layers=15-29"
    # strength: |log| of a factor, so PASTA 0.5 is weaker than 0.1 and InstABoost 2 than 10
    assert sweep.strength("pasta:alpha=0.5") < sweep.strength("pasta:alpha=0.1")
    assert sweep.strength("instaboost:alpha=2") < sweep.strength("instaboost:alpha=10")
    assert sweep.strength("none") == 0.0
    with pytest.raises(ValueError, match="unknown priority sweep grid 'nope'"):
        sweep.grid_specs("priority", "nope", 30)
    with pytest.raises(ValueError, match="rank them first"):
        sweep.grid_specs("retention", "keyscale-ranked", 30)
    # SEKA's grid takes the model's shipped projection and its last 10 layers
    assert sweep.grid_specs("priority", "seka", 24, projection="qwen2.5-coder-0.5b")[0][1] == (
        "seka:gain=0.8,layers=14-23,projection=qwen2.5-coder-0.5b"
    )
    assert sweep._shipped_projection("Qwen2.5-Coder-0.5B-Instruct") == "qwen2.5-coder-0.5b"
    assert sweep._shipped_projection("tiny") is None
    with pytest.raises(ValueError, match="needs a shipped key projection"):
        sweep.grid_specs("priority", "seka", 24)
    # PRISM-Δ's grid takes the shipped PRISM projection (none ships for SmolLM2)
    assert sweep._shipped_projection("Qwen2.5-Coder-0.5B-Instruct", "prism") == "qwen2.5-coder-0.5b-prism"
    assert sweep._shipped_projection("Qwen2.5-Coder-1.5B-Instruct", "prism") == "qwen2.5-coder-1.5b-prism"
    assert sweep._shipped_projection("SmolLM2-135M-Instruct", "prism") is None  # none ships for it
    assert sweep.grid_specs("priority", "prism", 24, prism_projection="qwen2.5-coder-0.5b-prism")[0][1] == (
        "prism:gain=0.4,gain_value=0.2,layers=14-23,projection=qwen2.5-coder-0.5b-prism"
    )
    with pytest.raises(ValueError, match="needs a shipped key projection"):
        sweep.grid_specs("priority", "prism", 24, projection="qwen2.5-coder-0.5b")
    assert sweep._shipped_projection("Qwen2.5-Coder-0.5B-Instruct", "experts") == "qwen2.5-coder-0.5b"
    assert sweep._shipped_projection("Qwen2.5-Coder-1.5B-Instruct", "experts") == "qwen2.5-coder-1.5b"
    assert sweep._shipped_projection("SmolLM2-135M-Instruct", "experts") is None
    assert sweep._shipped_projection("SmolLM2-135M-Instruct", "heads") == "smollm2-135m"
    assert (
        sweep.grid_specs("ifeval", "pasta-heads", 30, heads="smollm2-135m")[0][1]
        == "pasta:alpha=0.1,heads=smollm2-135m"
    )
    with pytest.raises(ValueError, match="head profile"):
        sweep.grid_specs("priority", "pasta-heads", 24)
    assert sweep.grid_specs("priority", "adaseka", 24, experts="qwen2.5-coder-0.5b")[1][1] == (
        "adaseka:experts=qwen2.5-coder-0.5b,gain=1,layers=14-23"
    )
    assert sweep.strength("seka:gain=0.8,projection=x") < sweep.strength("seka:gain=2,projection=x")


def _saved_tiny(tmp_path, kind: str, max_position_embeddings: int) -> str:
    """A tiny random model and the test tokenizer saved as a local model directory (for --model)."""
    m = tiny_model(kind, std=0.3, max_position_embeddings=max_position_embeddings)
    m.save_pretrained(tmp_path / "tiny")
    tokenizer().save_pretrained(tmp_path / "tiny")
    return str(tmp_path / "tiny")


def _short_records(n=5):
    return sorted((r for r in RECORDS if "<<" not in r["prompt"]), key=lambda r: len(r["prompt"]))[:n]


def test_resume_skips_prompts_already_done(tmp_path, monkeypatch):
    m, tok = tiny_model("llama", std=0.3, max_position_embeddings=2048), tokenizer()
    recs = _short_records(4)
    store = runner.ResponseStore(str(tmp_path / "responses.jsonl"))
    runner.run_ifeval(
        m,
        tok,
        recs[:2],
        ["none"],
        strategy="prompt",
        store=store,
        model_tag="tiny",
        batch_size=2,
        max_new_tokens=3,
        progress=False,
    )
    with open(store.path, "a") as f:
        f.write('{"model": "tiny", "method": "none", "stra')  # a line cut by an interruption
    seen = []
    real = runner.generate_batch

    def counting(model, tokenizer, prompts, method, max_new_tokens):
        seen.extend(p.key for p in prompts)
        return real(model, tokenizer, prompts, method, max_new_tokens)

    monkeypatch.setattr(runner, "generate_batch", counting)
    store2 = runner.ResponseStore(store.path)
    assert len(store2.records) == 2
    runner.run_ifeval(
        m,
        tok,
        recs,
        ["none"],
        strategy="prompt",
        store=store2,
        model_tag="tiny",
        batch_size=2,
        max_new_tokens=3,
        progress=False,
    )
    assert sorted(seen) == sorted(r["key"] for r in recs[2:])
    # Another setting (tokens, method or strategy) is another key: nothing is skipped.
    seen.clear()
    runner.run_ifeval(
        m,
        tok,
        recs[:2],
        ["guide:delta=1"],
        strategy="constraints",
        store=store2,
        model_tag="tiny",
        batch_size=2,
        max_new_tokens=3,
        progress=False,
    )
    assert sorted(seen) == sorted(r["key"] for r in recs[:2])
    assert len(runner.ResponseStore(store.path).records) == 6


def test_five_prompt_end_to_end_run_on_a_tiny_model(tmp_path, capsys):
    """CLI: unsteered + GUIDE + gated GUIDE on 5 prompts of a saved tiny Qwen2; batched, scored, reported."""
    from attnsteer import cli

    model_dir = _saved_tiny(tmp_path, "qwen2", 4096)
    out = tmp_path / "res"
    argv = [
        "eval",
        "ifeval",
        "--model",
        model_dir,
        "--limit",
        "5",
        "--batch-size",
        "2",
        "--max-new-tokens",
        "4",
        "--method",
        "none",
        "--method",
        "guide:delta=2",
        "--method",
        "gate+guide:delta=2",
        "--strategy",
        "constraints",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert cli.main(argv) == 0
    assert "located at least one constraint in 5 of 5 prompts" in capsys.readouterr().err
    lines = [json.loads(x) for x in open(out / "responses.jsonl")]
    assert len(lines) == 15
    assert {(r["method"], r["strategy"]) for r in lines} == {
        ("none", "none"),
        ("guide:delta=2", "constraints"),
        ("gate+guide:delta=2", "constraints"),
    }
    for r in lines:
        rec = BY_KEY[r["key"]]
        assert len(r["strict"]) == len(rec["instruction_id_list"]) == len(r["loose"])
        assert checkers.score(rec, r["response"]).strict == r["strict"]
        assert 0 < r["n_tokens"] <= 4 and r["nll"] == r["nll"]
    res = json.load(open(out / "results.json"))
    assert [row["method"] for row in res["rows"]][0] == "none" and len(res["rows"]) == 3
    md = open(out / "results.md").read()
    assert "| unsteered | none | 5 |" in md and "guide:delta=2" in md and "Command: `attnsteer eval ifeval" in md
    # The same command again generates nothing new.
    assert cli.main(argv) == 0
    assert len(open(out / "responses.jsonl").readlines()) == 15
    assert cli.main(["eval", "report", "--out", str(out), "--max-new-tokens", "4"]) == 0
    assert "guide:delta=2" in capsys.readouterr().out


def test_eval_cli_rejects_a_bad_method_before_loading(capsys):
    from attnsteer import cli

    assert cli.main(["eval", "ifeval", "--method", "gide:delta=2", "--model", "/nonexistent"]) == 2
    err = capsys.readouterr().err
    assert "unknown method 'gide'" in err and "Traceback" not in err


def test_retention_documents_fit_their_length_and_differ():
    from attnsteer.eval import retention

    tok = tokenizer()
    docs = retention.documents(tok, 300, 3)
    lens = [len(tok(d, add_special_tokens=False)["input_ids"]) for d in docs]
    assert all(150 < n <= 300 for n in lens), lens
    assert len(set(docs)) == 3
    assert "\n\n" in docs[0] and "::=" not in "".join(docs)  # prose paragraphs, no grammar blocks


@pytest.mark.parametrize("placement", ["system", "before", "after"])
def test_retention_marks_the_rule_where_it_is_placed(placement):
    from attnsteer.eval import retention

    tok = tokenizer()
    doc = retention.documents(tok, 120, 1)[0]
    p = retention.build(tok, "end-phrase", placement, doc, "k")
    rule = retention.rule_text("end-phrase")
    assert "Is there anything else I can help with?" in rule
    assert [p.text[a:b] for a, b in p.spans] == [rule]
    a = p.spans[0][0]
    doc_at = p.text.find(doc[:40])
    assert (a < doc_at) == (placement in ("system", "before"))
    enc = runner._encode(tok, [p], steered=True)
    assert tok.decode(enc["input_ids"][0][enc.span_mask[0]]).replace(" ", "") == rule.replace(" ", "")


def test_retention_run_on_a_tiny_model(tmp_path):
    from attnsteer.eval import retention

    m, tok = tiny_model("llama", std=0.3, max_position_embeddings=2048), tokenizer()
    cs = retention.cases(tok, [64, 128], ["system", "after"], ["lowercase"], 1, max_context=None, max_new_tokens=3)
    assert len(cs) == 4 and {c.length for c in cs} == {64, 128}
    store = runner.ResponseStore(str(tmp_path / "responses.jsonl"))
    retention.run(
        m,
        tok,
        cs,
        ["none", "spotlight:target=0.3"],
        store=store,
        model_tag="tiny",
        batch_size=2,
        max_new_tokens=3,
        progress=False,
    )
    rows = retention.summarize(store, "tiny", 3)
    assert len(rows) == 8 and rows[0]["method"] == "none" and all(r["n"] == 1 for r in rows)
    for r in store.records.values():  # the rule's own checker decided
        rec = {"key": 0, "prompt": "", "instruction_id_list": ["change_case:english_lowercase"], "kwargs": [{}]}
        assert r["rule"] == "lowercase" and r["loose"] == checkers.score(rec, r["response"]).loose
    assert "| unsteered | all | system |" in retention.table(rows)
    by_rule = retention.summarize(store, "tiny", 3, by_rule=True)
    assert {r["rule"] for r in by_rule} == {"lowercase"} and len(by_rule) == 8
    assert os.path.getsize(retention.plot(rows, str(tmp_path / "r.png"))) > 1000
    # Capped by the model's context: documents shrink to fit rule + reply.
    capped = retention.cases(tok, [4096], ["after"], ["lowercase"], 1, max_context=600, max_new_tokens=8)
    assert capped[0].length == 4096 and capped[0].doc_tokens <= 600 - 192 - 8


def test_sweep_plot_is_written(tmp_path):
    pts = sweep.grid_specs("ifeval", "guide", 30)
    scores = {s: {"method": s, "score": 0.1 * i, "flags": ["short"] if i == 2 else []} for i, (_, s) in enumerate(pts)}
    scores["none"] = {"method": "none", "score": 0.15, "flags": []}
    path = sweep.plot(scores, {"guide": pts}, str(tmp_path / "s.png"), "t", "y")
    assert os.path.getsize(path) > 1000


def test_sweep_end_to_end_on_a_tiny_model(tmp_path, capsys):
    from attnsteer import cli

    out = tmp_path / "sweep"
    assert (
        cli.main(
            [
                "eval",
                "sweep",
                "--model",
                _saved_tiny(tmp_path, "qwen2", 4096),
                "--limit",
                "2",
                "--batch-size",
                "2",
                "--max-new-tokens",
                "2",
                "--methods",
                "guide,pasta-layers",
                "--gated",
                "--report-test",
                "--out",
                str(out),
                "--no-progress",
                "--save-config",
                str(tmp_path / "tuned.json"),
                "--allow-no-gain",  # a random tiny model: steering need not help
            ]
        )
        == 0
    )
    from attnsteer import SteeringConfig

    saved = SteeringConfig.load(tmp_path / "tuned.json")
    swept = json.load(open(out / "sweep.json"))
    assert saved.task == "ifeval" and saved.method == swept["best"] and swept["task"] == "ifeval"
    assert set(saved.evidence) >= {"dev_score", "dev_unsteered_score", "test", "command"}
    assert set(saved.evidence["test"]) == {"prompt_loose_diff", "inst_loose_diff"}
    lines = [json.loads(x) for x in open(out / "responses.jsonl")]
    dev_keys = {r["key"] for r in ifeval.split(RECORDS, "dev")}
    dev_lines = [r for r in lines if r["key"] in dev_keys]
    assert len(dev_lines) == 2 * (1 + 2 * 3 * 2)  # none + 2 grids × 3 points × (plain, gated)
    chosen = swept["by_grid"]
    assert set(chosen) == {"guide", "gate+guide", "pasta-layers", "gate+pasta-layers"}
    test_lines = [r for r in lines if r["key"] not in dev_keys]
    assert {r["key"] for r in test_lines} <= {r["key"] for r in ifeval.split(RECORDS, "test")}  # never tuned on test
    assert {r["method"] for r in test_lines} == {"none"} | {v for v in chosen.values() if v}
    assert (out / "sweep.png").exists() and (out / "test" / "results.md").exists()


def test_retention_flags_steered_replies_much_shorter_than_unsteered(tmp_path):
    from attnsteer.eval import retention

    store = runner.ResponseStore(str(tmp_path / "responses.jsonl"))

    def rec(method, key, n_tokens, ok=True):
        rule, placement, length, _ = key.split("|")
        return {
            "model": "m",
            "method": method,
            "strategy": retention.STRATEGY,
            "max_new_tokens": 96,
            "key": key,
            "rule": rule,
            "placement": placement,
            "length": int(length),
            "doc_tokens": int(length),
            "n_tokens": n_tokens,
            "nll": 0.5,
            "distinct4": 1.0,
            "loose": [ok],
            "strict": [ok],
        }

    a, b = "end-phrase|after|512|0", "end-phrase|after|512|1"
    c = "french|after|512|0"
    store.add([rec("none", a, 96, False), rec("none", b, 96, False), rec("none", c, 96)])
    # an echo of the rule (10 tokens) on both prompts; one short and one full reply; a full one
    store.add([rec("guide:delta=2", a, 10), rec("guide:delta=2", b, 10)])
    store.add([rec("guide:delta=1", a, 10), rec("guide:delta=1", b, 96)])
    store.add([rec("keyscale:alpha=1.5", c, 90)])
    rows = {(r["method"], r["rule"]): r for r in retention.summarize(store, "m", 96, by_rule=True)}
    assert rows[("guide:delta=2", "end-phrase")]["short"] and rows[("guide:delta=2", "end-phrase")]["accuracy"] == 1
    assert not rows[("guide:delta=1", "end-phrase")]["short"]  # 106 tokens vs 192: over half
    assert not rows[("keyscale:alpha=1.5", "french")]["short"]
    assert not rows[("none", "french")]["short"]
    md = retention.table(list(rows.values()))
    assert "| guide:delta=2 | end-phrase | after | 100 (n=2, 10 tok, short) Δ +100.0 [+100.0, +100.0] |" in md
    assert "| guide:delta=1 | end-phrase | after | 100 (n=2, 53 tok) Δ +100.0 [+100.0, +100.0] |" in md
    assert rows[("guide:delta=2", "end-phrase")]["flags"] == ["short"]
    assert rows[("keyscale:alpha=1.5", "french")]["vs_unsteered"]["verdict"] == "no evidence of a difference"


def test_retention_cli_end_to_end_and_report(tmp_path, capsys):
    from attnsteer import cli

    out = tmp_path / "ret"
    argv = [
        "eval",
        "retention",
        "--model",
        _saved_tiny(tmp_path, "llama", 1024),
        "--lengths",
        "64,128,4096",
        "--docs",
        "1",
        "--rules",
        "no-comma",
        "--placements",
        "before,after",
        "--method",
        "none",
        "--method",
        "guide:delta=1",
        "--max-new-tokens",
        "2",
        "--batch-size",
        "2",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert cli.main(argv) == 0
    lines = [json.loads(x) for x in open(out / "responses.jsonl")]
    assert len(lines) == 2 * 3 * 2
    big = [r for r in lines if r["length"] == 4096]
    assert big and all(r["doc_tokens"] <= 1024 - 192 - 2 for r in big)  # shrunk to the model's context
    assert (out / "retention.png").exists() and "| unsteered | all | before |" in (out / "results.md").read_text()
    capsys.readouterr()
    assert cli.main(["eval", "report", "--retention", "--out", str(out), "--max-new-tokens", "2"]) == 0
    assert "guide:delta=1" in capsys.readouterr().out
    assert cli.main(["eval", "retention", "--placements", "middle"]) == 2  # before loading any model
    assert "unknown placement 'middle'" in capsys.readouterr().err


def test_paired_table_compares_on_the_same_prompts():
    """A run over a subset of the prompts is compared with unsteered on that subset."""
    acc = dict(prompt_strict=0.5, prompt_loose=0.75, inst_strict=0.5, inst_loose=0.8, n_tokens=100.0, nll=0.6)
    base = dict(prompt_strict=0.25, prompt_loose=0.5, inst_strict=0.5, inst_loose=0.9, n_tokens=120.0, nll=0.5, n=4)
    rows = [
        dict(method="none", strategy="none", n=10, **acc),
        dict(method="guide:delta=1", strategy="prompt", n=4, baseline_on_same=base, **acc),
    ]
    table = runner.paired_table(rows)
    assert table.count("\n") == 2  # header, rule, one row: the unsteered row is the baseline, not a row
    assert "| 4 | 50.0 / 25.0 (+25.0) | 75.0 / 50.0 (+25.0) | 50.0 / 50.0 (+0.0) | 80.0 / 90.0 (-10.0) |" in table
    assert "100 / 120 | 0.60 / 0.50 |" in table


def test_retention_sweep_cli_tunes_on_dev_documents_and_reports_test_ones(tmp_path, capsys):
    """`eval sweep --task retention`: dev grid (ranked layers computed once), choice, test cells with
    intervals, a saved configuration that loads; two shards are read together."""
    from attnsteer import SteeringConfig, cli
    from attnsteer.eval import retention

    out = tmp_path / "rs"
    model_dir = _saved_tiny(tmp_path, "llama", 1024)
    base = [
        "eval", "sweep", "--task", "retention", "--model", model_dir, "--lengths", "64", "--docs", "1",
        "--rules", "no-comma,lowercase", "--max-new-tokens", "2", "--batch-size", "2", "--out", str(out),
        "--no-progress", "--test-lengths", "64,128", "--test-placements", "before", "--test-docs", "1",
    ]  # fmt: skip
    cfg_path = tmp_path / "cfg.json"
    argv = base + [
        "--methods",
        "guide,keyscale-ranked",
        "--report-test",
        "--save-config",
        str(cfg_path),
        "--allow-no-gain",
    ]
    assert cli.main(argv) == 0
    ranked = json.loads((out / sweep.RANKED_FILE).read_text())["layers"]
    assert len(ranked) == 2 and all(0 <= x < 4 for x in ranked)  # tiny llama: 4 layers -> a quarter, at least 2
    lines = [json.loads(x) for x in open(out / "responses.jsonl")]
    dev = [r for r in lines if "|dev" in r["key"]]
    test = [r for r in lines if "|test" in r["key"]]
    # dev: unsteered + 3 guide + 2 keyscale-ranked points, 2 rules x 1 doc each
    assert len(dev) == 6 * 2 and {r["method"] for r in dev} >= {
        "none",
        f"keyscale:alpha=4,layers={ranked[0]}+{ranked[1]}",
    }
    sweep_json = json.loads((out / "sweep.json").read_text())
    assert sweep_json["best"] in sweep_json["by_grid"].values()
    cfg = SteeringConfig.load(cfg_path)
    assert cfg.method == sweep_json["best"] and cfg.task == "retention"
    # test cells: unsteered + each grid's choice, 2 lengths x 2 rules
    assert {r["method"] for r in test} == {"none", *[c for c in sweep_json["by_grid"].values() if c]}
    assert len([r for r in test if r["method"] == "none"]) == 4
    assert "Δ " in (out / "test" / "results.md").read_text()
    # dev and test documents never share a paragraph
    tok = tokenizer()
    assert not set(retention.documents(tok, 200, 3, split="dev")) & set(retention.documents(tok, 200, 3, split="test"))
    # a second shard is read with the first: a test-only run of one more setting
    capsys.readouterr()
    argv = base + ["--methods", "guide", "--test-only", "--test-method", "instaboost:alpha=2", "--shard", "b"]
    assert cli.main(argv) == 0
    assert (out / "responses.b.jsonl").exists()
    assert "instaboost:alpha=2" in (out / "test" / "results.md").read_text()
    assert "guide:delta=0.5" in (out / "test" / "results.md").read_text()  # from the first shard
    # --test-method best / grid:NAME name the dev choices; an unknown grid is an error that names them
    assert cli.main(base + ["--methods", "guide,keyscale-ranked", "--test-only", "--test-method", "best"]) == 0
    capsys.readouterr()
    assert cli.main(base + ["--methods", "guide", "--test-only", "--test-method", "grid:nope"]) == 2
    assert "no such grid among the swept ones (guide, keyscale-ranked)" in capsys.readouterr().err
    # --report-only generates nothing (the setting asked for gets no replies) and rebuilds the report
    before = sum(1 for p in out.glob("responses*.jsonl") for _ in open(p))
    (out / "test" / "results.md").unlink()
    argv = base + ["--methods", "guide", "--test-only", "--report-only", "--test-method", "keyscale:alpha=9"]
    assert cli.main(argv) == 0
    assert sum(1 for p in out.glob("responses*.jsonl") for _ in open(p)) == before
    assert "instaboost:alpha=2" in (out / "test" / "results.md").read_text()
    assert "| keyscale:alpha=9 |" not in (out / "test" / "results.md").read_text()
    # --report-only alone rebuilds the dev report; with --report-test it is an error that says what to pass
    (out / "sweep.md").unlink()
    assert cli.main(base + ["--methods", "guide", "--report-only"]) == 0
    assert sum(1 for p in out.glob("responses*.jsonl") for _ in open(p)) == before
    assert "| guide | guide:delta=0.5" in (out / "sweep.md").read_text()
    capsys.readouterr()
    assert cli.main(base + ["--methods", "guide", "--report-only", "--report-test"]) == 2
    assert "pass --test-only" in capsys.readouterr().err


def _retention_results(path, rows):
    path.write_text(json.dumps({"command": "x", "machine": "y", "rows": rows, "rows_by_rule": []}))
    return str(path)


def _ret_row(method, length, acc, placement="before", vs=None, flags=()):
    return dict(
        method=method, rule="all", placement=placement, length=length, n=30, accuracy=acc,
        accuracy_ci=[acc - 0.1, acc + 0.1], doc_tokens=length - 4, n_tokens=60.0, short=False,
        flags=list(flags), vs_unsteered=vs,
    )  # fmt: skip


def test_retention_curves_put_models_side_by_side(tmp_path, capsys):
    """`eval curves`: one panel per model, a table with each cell's interval and the steered rows'
    paired difference, only the asked placement and methods; bad arguments say what to pass."""
    from attnsteer import cli
    from attnsteer.eval import stats

    d = stats.paired_bootstrap([1, 1, 0, 1], [0, 1, 0, 0]).as_dict()
    a = _retention_results(
        tmp_path / "a.json",
        [_ret_row("none", 512, 0.2), _ret_row("none", 1024, 0.1), _ret_row("guide:delta=1", 512, 0.3, vs=d),
         _ret_row("guide:delta=1", 1024, 0.4, vs=d, flags=["repetitive"]), _ret_row("none", 512, 0.9, "after")],
    )  # fmt: skip
    b = _retention_results(tmp_path / "b.json", [_ret_row("none", 512, 0.05), _ret_row("keyscale:alpha=2", 512, 0.5)])
    png = tmp_path / "out" / "curves.png"
    only_b = [f"B={b}", "--out", str(png), "--method", "guide:delta=1"]
    assert cli.main(["eval", "curves", *only_b]) == 2  # B has no GUIDE cells: the error lists what it has
    assert "has no 'before' cells" in capsys.readouterr().err and not png.exists()
    assert cli.main(["eval", "curves", f"Model A={a}", f"B={b}", "--out", str(png)]) == 0
    md = (tmp_path / "out" / "curves.md").read_text()
    assert png.stat().st_size > 10_000
    assert "| Model A | unsteered | 20 [10, 30] n=30 | 10 [0, 20] n=30 |" in md
    assert "| Model A | guide:delta=1 | 30 [20, 40] n=30<br>Δ " in md and "(repetitive)" in md
    assert "| B | keyscale:alpha=2 | 50 [40, 60] n=30 |  |" in md
    assert "90" not in md.split("|---|")[-1]  # the 'after' cell is not in a 'before' table
    capsys.readouterr()
    assert cli.main(["eval", "curves", str(a), "--out", str(png)]) == 2
    assert "LABEL=PATH" in capsys.readouterr().err


def test_fluency_margins_and_a_dev_choice_at_the_edge_of_a_bound():
    """fluency.margins: 1 at the unsteered value, 0 on the bound, < 0 past it; the sweep marks a dev choice
    that passes a bound by less than fluency.EDGE of its width (it may be flagged on the test prompts)."""
    from attnsteer.eval import fluency

    base = {"n_tokens": 100.0, "nll": 0.4, "distinct4": 0.6}
    m = fluency.margins({"n_tokens": 100.0, "nll": 0.4, "distinct4": 0.6}, base)
    assert m == pytest.approx({"short": 1.0, "unlikely": 1.0, "repetitive": 1.0})
    m = fluency.margins({"n_tokens": 50.0, "nll": 0.9, "distinct4": 0.5}, base)
    assert m == pytest.approx({"short": 0.0, "unlikely": 0.0, "repetitive": 0.0}, abs=1e-9)
    m = fluency.margins({"n_tokens": 40.0, "nll": 0.88, "distinct4": 0.7}, base)
    assert m["short"] < 0 and m["unlikely"] == pytest.approx(0.04) and m["repetitive"] > 1
    assert fluency.flags({"n_tokens": 40.0, "nll": 0.88, "distinct4": 0.7}, base) == ["short"]
    rows = [
        {"method": "a", "n_tokens": 90.0, "nll": 0.88, "distinct4": 0.6, "baseline_on_same": base},
        {"method": "b", "n_tokens": 90.0, "nll": 0.5, "distinct4": 0.6, "baseline_on_same": base},
        {"method": "c", "n_tokens": 90.0, "nll": 0.88},  # no unsteered twin (a retention / priority cell)
    ]
    assert sweep._edge(rows, "a") == {"unlikely": 0.04}
    assert sweep._edge(rows, "b") == {} and sweep._edge(rows, "c") == {}
