"""``attnsteer demo``: marked statements and rules on a real model, unsteered vs each method.

By default it runs on Qwen2.5-Coder-0.5B-Instruct (``make demo`` installs it): the smallest shipped
model on which the papers' effects show (the context-priority evaluation, eval_results/priority —
on the embedded SmolLM2-135M, which follows few rules steered or not, steering rarely helps). With
the 0.5B model absent it falls back to the embedded model and says so. Beneath the replies it prints
what was measured on the test split for the settings `attnsteer.recommended` ships for the model.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import torch

from . import Directer, highlight, steer

DEMO_MODEL = "qwen2.5-coder-0.5b"

LONG_TEXT = (
    "The history of the bicycle spans more than two centuries. Early designs, called draisines, had no pedals: "
    "riders pushed themselves along with their feet. In the 1860s pedals were attached to the front wheel, and "
    "later designs made the front wheel very large to increase speed. The safety bicycle, with two wheels of equal "
    "size and a chain driving the rear wheel, appeared in the 1880s and quickly became popular. Pneumatic tyres "
    "made riding much more comfortable, and bicycles became an important means of transport for workers, "
    "soldiers and travellers around the world."
)

Messages = List[dict]


@dataclass
class Task:
    """A demo task: ``prompts`` are ``(variant, chat messages with <<markup>>)``; ``check(variant,
    reply)`` says whether the reply did what the marked text asks."""

    name: str
    about: str
    prompts: List[Tuple[str, Messages]]
    check: Callable[[str, str], bool]


def _rule(rule: str, question: str, in_user_message: bool) -> Messages:
    if in_user_message:
        return [{"role": "user", "content": f"{LONG_TEXT}\n\n<<{rule}>> {question}"}]
    return [{"role": "system", "content": f"<<{rule}>>"}, {"role": "user", "content": f"{LONG_TEXT}\n\n{question}"}]


_PRIORITY_VALUES = ("Dranek", "Suvato")


def _priority(marked: int) -> Messages:
    a, b = (f"The capital of Velmoria is {v}." for v in _PRIORITY_VALUES)
    a, b = (f"<<{a}>>", b) if marked == 0 else (a, f"<<{b}>>")
    text = f"{a}\n\n{LONG_TEXT}\n\n{b}\n\nWhat is the capital of Velmoria? Reply with the name only."
    return [{"role": "user", "content": text}]


def _priority_check(variant: str, reply: str) -> bool:
    from .eval.priority import verdict

    return verdict(reply, _PRIORITY_VALUES, 0 if variant == "first marked" else 1) == "marked"


def _is_french(_: str, reply: str) -> bool:
    try:
        from langdetect import DetectorFactory, detect

        DetectorFactory.seed = 0
        return bool(reply.strip()) and detect(reply) == "fr"
    except Exception:  # noqa: BLE001 - langdetect raises on text without letters
        return False


TASKS: List[Task] = [
    Task(
        "priority",
        "two statements disagree, one is marked: the reply should name the marked one's value",
        [("first marked", _priority(0)), ("second marked", _priority(1))],
        _priority_check,
    ),
    Task(
        "french",
        "a marked rule in the system message: answer in French",
        [
            (
                "system",
                [
                    {"role": "system", "content": "<<Answer in French.>>"},
                    {"role": "user", "content": "What is bread made of?"},
                ],
            )
        ],  # fmt: skip
        _is_french,
    ),
    Task(
        "start-yes",
        "a marked rule after a text: start with YES",
        [("user", _rule("Start your answer with the word YES.", "Summarise the text above in one sentence.", True))],
        lambda _, s: s.strip().startswith("YES"),
    ),
    Task(
        "ends-with",
        "a marked rule in the system message: end with GOODBYE",
        [
            (
                "system",
                _rule(
                    "End your answer with the exact word GOODBYE.", "Summarise the text above in two sentences.", False
                ),
            )
        ],  # fmt: skip
        lambda _, s: s.strip().rstrip(".!").endswith("GOODBYE"),
    ),
]


def methods(model_tag: str = "SmolLM2-135M-Instruct"):
    """``[(label, method)]``: unsteered, the settings `attnsteer.recommended` ships for the model
    (each task's best, labelled "tuned"), each method at its paper's strength (labelled "paper"; a tuned
    setting that is also its paper's strength runs once, labelled both) and DIRECTER at the paper's settings."""
    from . import specs
    from .config import PAPER_STRENGTHS, recommended, shipped_tasks

    out = [("unsteered", None)]
    tuned = {}  # canonical spec -> its index in out
    for task in shipped_tasks(model_tag):
        cfg = recommended(model_tag, task=task)
        if cfg.method not in tuned and cfg.method != "none":
            tuned[cfg.method] = len(out)
            out.append((f"{cfg.method} (tuned, {task})", cfg.build()))
    for name in ("guide", "instaboost", "pasta", "spotlight", "keyscale"):
        spec = specs.canonical(PAPER_STRENGTHS[name])
        if spec in tuned:
            label, method = out[tuned[spec]]
            out[tuned[spec]] = (label[:-1] + "; paper)", method)
        else:
            out.append((f"{PAPER_STRENGTHS[name]} (paper)", specs.parse(PAPER_STRENGTHS[name])))
    out.append(("directer:alpha=100 (paper)", Directer()))
    return out


def _generate(model, tok, enc, method, max_new_tokens: int):
    kw = dict(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        if method is None:
            return model.generate(**enc, **kw)
        if isinstance(method, Directer):
            return model.generate(**enc, custom_generate=method, spans=enc, **kw)
        with steer(model, method, spans=enc):
            return model.generate(**enc, **kw)


def _load(model_name: Optional[str]):
    from .models import MODELS, _installed, load, load_default

    if model_name is None:
        if _installed(MODELS[DEMO_MODEL]):
            model, tok = load(DEMO_MODEL)
            return model, tok, MODELS[DEMO_MODEL].tag, MODELS[DEMO_MODEL].title
        print(f"({DEMO_MODEL} is not installed — {MODELS[DEMO_MODEL].install_command()} — so the demo runs on the "
              "embedded SmolLM2-135M-Instruct, which follows few rules steered or not)\n")  # fmt: skip
        model, tok = load_default()
        return model, tok, "SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct (embedded GGUF)"
    model, tok = load(model_name)
    shipped = MODELS.get(model_name)
    tag = shipped.tag if shipped else os.path.basename(os.path.normpath(model_name))
    return model, tok, tag, tag


def measured(model_tag: str) -> List[str]:
    """What the shipped settings measured on the test split, one line per task (``[]``: none ship)."""
    from .config import recommended, shipped_tasks
    from .eval.stats import Difference

    lines = []
    for task in shipped_tasks(model_tag):
        cfg = recommended(model_tag, task=task)
        ev = cfg.evidence
        summary = ev.get("summary") or ev.get("split", "")
        if "prompt_loose_diff" in ev:  # an IFEval entry: the prompt-level rates and their paired difference
            d = Difference.from_dict(ev["prompt_loose_diff"])
            n = ev["prompt_loose_diff"]["n"]
            rate = lambda x: 100 * round(x * n) / n  # noqa: E731 - a count of prompts (the file keeps 4 digits)
            summary += (
                f": {rate(ev['prompt_loose']):.1f}% vs {rate(ev['unsteered_prompt_loose']):.1f}% unsteered "
                f"(prompt-level loose; Δ {d.pct()})"
            )
        lines.append(f"  {task}: {cfg.method} — {summary}")
    return lines


def run(task_name: Optional[str] = None, max_new_tokens: int = 40, model_name: Optional[str] = None) -> int:
    """The demo on Qwen2.5-Coder-0.5B-Instruct (or the embedded model when it is not installed), or
    on ``model_name`` (a shipped model's name, a folder or a ``.gguf`` file)."""
    from ._progress import tqdm

    tasks = [t for t in TASKS if task_name in (None, t.name)]
    if not tasks:
        raise ValueError(f"unknown task {task_name!r}; choose from {[t.name for t in TASKS]}")
    model, tok, tag, title = _load(model_name)
    rows, notes = [], []
    jobs = [(task, variant, msgs) for task in tasks for variant, msgs in task.prompts]
    todo = methods(tag)
    bar = tqdm(total=len(jobs) * len(todo), desc="demo", unit="reply")
    for task, variant, msgs in jobs:
        enc = highlight(tok, msgs)
        n_prompt = enc["input_ids"].shape[1]
        for name, method in todo:
            t0 = time.perf_counter()
            out = _generate(model, tok, enc, method, max_new_tokens)
            dt = time.perf_counter() - t0
            new = out[0, n_prompt:]
            text = tok.decode(new, skip_special_tokens=True).strip()
            rows.append((f"{task.name}" + (f" ({variant})" if len(task.prompts) > 1 else ""), name,
                         task.check(variant, text), len(new) / dt, text))  # fmt: skip
            if isinstance(method, Directer):
                notes.append(f"{task.name} ({variant}): {method.stats}")
            bar.update(1)
    bar.close()
    print(
        f"\nModel: {title}, greedy, {max_new_tokens} new tokens max. Marked text: <<...>>; 'kept' is checked by code."
    )
    for task in tasks:
        print(f"  {task.name}: {task.about}")
    print(
        "'tuned' = the setting attnsteer.recommended() ships for this model and task (chosen on a dev split); "
        "'paper' = the paper's strength.\n"
    )
    print(f"{'task':24s} {'method':44s} {'kept':5s} {'tok/s':>6s}  reply")
    for task, name, ok, tps, text in rows:
        snippet = text.replace("\n", " ")[:60]
        print(f"{task:24s} {name:44s} {'yes' if ok else 'no':5s} {tps:6.1f}  {snippet}")
    for note in notes:
        print(note)
    lines = measured(tag)
    print("\nMeasured on the test split (attnsteer.recommended(model, task).evidence):")
    print(
        "\n".join(lines)
        if lines
        else f"  nothing ships for {tag} yet: tune one with attnsteer eval sweep --save-config"
    )
    return 0
