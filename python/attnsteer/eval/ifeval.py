"""IFEval prompts, the fixed development/test split, and highlight strategies.

IFEval prompts do not mark their constraints, so a strategy decides what is highlighted:

- ``prompt``: the whole user message.
- ``constraints``: the sentences of the prompt that carry a checkable constraint. The prompt is
  cut into sentences (NLTK punkt, per line); a sentence belongs to instruction ``(id, kwargs)``
  when it matches the cue pattern of the instruction's id (`CUES`) or contains one of its
  string arguments (a keyword, a forbidden word, the end phrase, the first word, the
  postscript marker, the section splitter, the language's name; ``prompt_to_repeat`` excepted).
  A prompt in which no instruction is located falls back to the whole prompt
  (`locate_report` counts both).
- ``system``: the constraints restated in a system message, written by the checkers' own
  ``build_description(**kwargs)``, and that message is marked whole. The unsteered baseline of
  this strategy sees the same system message.

Spans always come from character offsets into the rendered chat prompt, never from markup: 36
prompts contain a literal ``<<title>>``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from . import checkers

__all__ = [
    "STRATEGIES",
    "CUES",
    "load_prompts",
    "split",
    "Prompt",
    "build_prompt",
    "sentence_spans",
    "locate_constraints",
    "locate_report",
]

DATA = Path(__file__).resolve().parent / "data" / "ifeval_input_data.jsonl"
STRATEGIES = ("prompt", "constraints", "system")
DEV_SIZE = 100

# Cue patterns per instruction id (case-insensitive) for the `constraints` strategy.
CUES: Dict[str, str] = {
    "change_case:capital_word_frequency": r"capital|upper ?case|all caps|\bcaps\b",
    "change_case:english_capital": r"capital|upper ?case|all caps|\bcaps\b",
    "change_case:english_lowercase": r"lower ?case|capital|small letters",
    "combination:repeat_prompt": r"\brepeat",
    "combination:two_responses": r"two (different )?(responses|answers|versions)|\*{6}|asterisk",
    "detectable_content:number_placeholders": r"placeholder|square brackets|\[[^\]]*\]",
    "detectable_content:postscript": r"postscript|p\.\s?p?\.?\s?s\.",
    "detectable_format:constrained_response": r"my answer is|one of the following|following options",
    "detectable_format:json_format": r"\bjson\b",
    "detectable_format:multiple_sections": r"\bsections?\b|\bparts?\b",
    "detectable_format:number_bullet_lists": r"bullet|\* this is",
    "detectable_format:number_highlighted_sections": r"highlight|markdown",
    "detectable_format:title": r"\btitle|<<",
    "keywords:existence": r"keyword|\binclude\b",
    "keywords:forbidden_words": r"do not (use|include|say|mention)|don't (use|include|say|mention)|without (using|the words?)|avoid|not allowed",
    "keywords:frequency": r"\btimes\b|at least once|\bonce\b|\btwice\b",
    "keywords:letter_frequency": r"\bletters?\b|\bcharacters?\b",
    "language:response_language": r"\blanguage\b|\bonly in\b|\bin [A-Z][a-z]+ only\b",
    "length_constraints:nth_paragraph_first_word": r"paragraph",
    "length_constraints:number_paragraphs": r"paragraph|\*\*\*|markdown divider",
    "length_constraints:number_sentences": r"\bsentences?\b",
    "length_constraints:number_words": r"\bwords?\b",
    "punctuation:no_comma": r"comma",
    "startend:end_checker": r"\bend (your|it|the|with)|finish (your|with)|conclude",
    "startend:quotation": r"quotation|double quotes|quotes",
}
_ANCHOR_KWARGS = (
    "keyword",
    "keywords",
    "forbidden_words",
    "end_phrase",
    "first_word",
    "postscript_marker",
    "section_spliter",
)


@lru_cache(maxsize=1)
def _all_records() -> Tuple[Dict[str, Any], ...]:
    with open(DATA, encoding="utf-8") as f:
        return tuple(json.loads(line) for line in f if line.strip())


def load_prompts(path: Optional[str] = None) -> List[Dict[str, Any]]:
    """The 541 IFEval prompts (package data; ``path`` reads another jsonl of the same form)."""
    if path is None:
        return [dict(r) for r in _all_records()]
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def split(records: Sequence[Dict[str, Any]], which: str = "all", dev_size: int = DEV_SIZE) -> List[Dict[str, Any]]:
    """A fixed development/test split, stratified by instruction type.

    Rule: order the prompts by (first instruction id, key) and take the ``dev_size`` prompts at
    positions ``floor((i + 0.5) · N / dev_size)`` as ``dev`` (systematic sampling, so every
    instruction type gets its share); the rest is ``test``. Sweeps tune on ``dev``; results are
    reported on ``test``.
    """
    if which == "all":
        return list(records)
    if which not in ("dev", "test"):
        raise ValueError(f"split must be 'all', 'dev' or 'test'; got {which!r}")
    ordered = sorted(records, key=lambda r: (r["instruction_id_list"][0], r["key"]))
    n = len(ordered)
    if not 0 < dev_size < n:
        raise ValueError(f"dev_size must be in 1..{n - 1}; got {dev_size}")
    dev_pos = {int((i + 0.5) * n / dev_size) for i in range(dev_size)}
    dev_keys = {ordered[p]["key"] for p in dev_pos}
    return [r for r in records if (r["key"] in dev_keys) == (which == "dev")]


def sentence_spans(text: str) -> List[Tuple[int, int]]:
    """Character spans of the sentences of ``text`` (NLTK punkt, shipped; each line apart)."""
    tok = _punkt()
    out: List[Tuple[int, int]] = []
    pos = 0
    for line in text.split("\n"):
        for a, b in tok.span_tokenize(line):
            out.append((pos + a, pos + b))
        pos += len(line) + 1
    return out


@lru_cache(maxsize=1)
def _punkt():
    checkers._point_nltk()
    from nltk.tokenize.punkt import PunktTokenizer

    return PunktTokenizer("english")


def _anchors(instruction_id: str, kwargs: Dict[str, Any]) -> List[str]:
    out: List[str] = []
    for name in _ANCHOR_KWARGS:
        v = kwargs.get(name)
        if isinstance(v, str) and len(v.strip()) >= 2:
            out.append(v.strip())
        elif isinstance(v, (list, tuple)):
            out.extend(str(x).strip() for x in v if len(str(x).strip()) >= 2)
    if instruction_id == "language:response_language" and kwargs.get("language"):
        import sys

        checkers.load()
        codes = sys.modules["lm_eval.tasks.ifeval.instructions_util"].LANGUAGE_CODES
        out.append(codes.get(kwargs["language"], kwargs["language"]))
    if instruction_id == "keywords:letter_frequency" and kwargs.get("letter"):
        out.append(f"'{kwargs['letter']}'")
        out.append(f'"{kwargs["letter"]}"')
    return out


def locate_constraints(record: Dict[str, Any]) -> Tuple[List[Tuple[int, int]], List[bool]]:
    """The ``constraints`` strategy on one prompt: the character spans of the constraint
    sentences (merged, in order) and, per instruction, whether a sentence was found for it."""
    text = record["prompt"]
    sents = sentence_spans(text)
    chosen = set()
    found: List[bool] = []
    for inst_id, kw in zip(record["instruction_id_list"], record["kwargs"]):
        kw = kw or {}
        cue = re.compile(CUES.get(inst_id, r"(?!x)x"), re.IGNORECASE)
        anchors = [a.lower() for a in _anchors(inst_id, kw)]
        hit = False
        for i, (a, b) in enumerate(sents):
            s = text[a:b]
            if cue.search(s) or any(x in s.lower() for x in anchors):
                chosen.add(i)
                hit = True
        found.append(hit)
    return [sents[i] for i in sorted(chosen)], found


def locate_report(records: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """How much the ``constraints`` strategy locates: prompts with at least one / all
    instructions located, instructions located (overall and per instruction id)."""
    per_id: Dict[str, List[int]] = {}
    some = every = 0
    n_inst = n_found = 0
    for r in records:
        _, found = locate_constraints(r)
        some += any(found)
        every += all(found)
        n_inst += len(found)
        n_found += sum(found)
        for i, f in zip(r["instruction_id_list"], found):
            per_id.setdefault(i, [0, 0])
            per_id[i][0] += f
            per_id[i][1] += 1
    return {
        "prompts": len(records),
        "prompts_some_located": some,
        "prompts_all_located": every,
        "instructions": n_inst,
        "instructions_located": n_found,
        "per_instruction": {k: {"located": v[0], "of": v[1]} for k, v in sorted(per_id.items())},
    }


def system_message(record: Dict[str, Any]) -> str:
    """The prompt's constraints in the checkers' own words, one per line."""
    lines = [
        checkers.describe(i, kw or {}, key=record["key"], prompt=record["prompt"])
        for i, kw in zip(record["instruction_id_list"], record["kwargs"])
    ]
    return "Follow these rules in your answer:\n" + "\n".join(f"- {s}" for s in lines)


@dataclass
class Prompt:
    """A rendered chat prompt and its highlight as character spans of ``text``."""

    key: int
    text: str
    spans: List[Tuple[int, int]] = field(default_factory=list)
    located: Optional[bool] = None  # `constraints`: were the constraints found (else whole prompt)


def build_prompt(tokenizer, record: Dict[str, Any], strategy: str) -> Prompt:
    """Render ``record`` with the chat template and place the highlight of ``strategy``."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown highlight strategy {strategy!r}: choose one of {STRATEGIES}")
    user = record["prompt"]
    messages = [{"role": "user", "content": user}]
    sys_text = None
    if strategy == "system":
        sys_text = system_message(record)
        messages.insert(0, {"role": "system", "content": sys_text})
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    pos = 0
    if sys_text is not None:
        s_at = text.find(sys_text)
        if s_at < 0:
            raise ValueError("the chat template changed the system message's text; cannot place the highlight")
        pos = s_at + len(sys_text)
    u_at = text.find(user, pos)
    if u_at < 0:
        raise ValueError(f"the chat template changed prompt {record['key']}'s text; cannot place the highlight")
    if strategy == "prompt":
        return Prompt(record["key"], text, [(u_at, u_at + len(user))])
    if strategy == "system":
        return Prompt(record["key"], text, [(s_at, s_at + len(sys_text))])
    spans, found = locate_constraints(record)
    if not spans:
        return Prompt(record["key"], text, [(u_at, u_at + len(user))], located=False)
    return Prompt(record["key"], text, [(u_at + a, u_at + b) for a, b in spans], located=True)


def instruction_types(records: Iterable[Dict[str, Any]]) -> List[str]:
    return sorted({i for r in records for i in r["instruction_id_list"]})
