"""``attnsteer demo``: a marked rule on the embedded SmolLM2-135M-Instruct, unsteered vs each method."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable, List, Optional

import torch

from . import Directer, highlight, steer

LONG_TEXT = (
    "The history of the bicycle spans more than two centuries. Early designs, called draisines, had no pedals: "
    "riders pushed themselves along with their feet. In the 1860s pedals were attached to the front wheel, and "
    "later designs made the front wheel very large to increase speed. The safety bicycle, with two wheels of equal "
    "size and a chain driving the rear wheel, appeared in the 1880s and quickly became popular. Pneumatic tyres "
    "made riding much more comfortable, and bicycles became an important means of transport for workers, "
    "soldiers and travellers around the world."
)


@dataclass
class Task:
    name: str
    rule: str
    question: str
    check: Callable[[str], bool]
    in_user_message: bool = False  # the marked rule sits right before the question, else in the system prompt


# Picked by trying on the embedded model (greedy): unsteered, it drops these marked rules.
# On a 135M model steering is blunt: the papers' strengths (chosen for 7B+ models, shown beside the
# tuned ones) often derail the reply instead of making it keep the rule.
TASKS: List[Task] = [
    Task(
        "start-yes",
        "Start your answer with the word YES.",
        "Summarise the text above in one sentence.",
        lambda s: s.strip().startswith("YES"),
        in_user_message=True,
    ),
    Task(
        "ends-with",
        "End your answer with the exact word GOODBYE.",
        "Summarise the text above in two sentences.",
        lambda s: s.strip().rstrip(".!").endswith("GOODBYE"),
    ),
]


def methods(model_tag: str = "SmolLM2-135M-Instruct"):
    """``[(label, method)]``: unsteered, then each method at the strength tuned for the model
    (`attnsteer.recommended`, when one ships for it) and at its paper's strength, labelled as such,
    and DIRECTER at the paper's settings."""
    from .config import PAPER_STRENGTHS, recommended
    from .eval import specs

    out = [("unsteered", None)]
    for name in ("guide", "instaboost", "pasta", "spotlight", "keyscale"):
        try:
            tuned = recommended(model_tag, task="ifeval", method=name)
        except KeyError:
            tuned = None  # nothing tuned for this model yet: the paper's strength alone
        if tuned is not None:
            out.append((f"{tuned.method} (tuned)", tuned.build()))
        out.append((f"{PAPER_STRENGTHS[name]} (paper)", specs.parse(PAPER_STRENGTHS[name])))
    out.append(("directer:alpha=100 (paper)", Directer()))
    return out


def messages(task: Task):
    if task.in_user_message:
        return [{"role": "user", "content": f"{LONG_TEXT}\n\n<<{task.rule}>> {task.question}"}]
    return [
        {"role": "system", "content": f"<<{task.rule}>>"},
        {"role": "user", "content": f"{LONG_TEXT}\n\n{task.question}"},
    ]


def run(task_name: Optional[str] = None, max_new_tokens: int = 60, model_name: Optional[str] = None) -> int:
    """The demo on the embedded model, or on ``model_name`` (a shipped model's name, a folder or
    a ``.gguf`` file, as `attnsteer.models.load` takes)."""
    from ._progress import tqdm
    from .models import MODELS, load, load_default

    tasks = [t for t in TASKS if task_name in (None, t.name)]
    if not tasks:
        raise ValueError(f"unknown task {task_name!r}; choose from {[t.name for t in TASKS]}")
    if model_name is None:
        model, tok = load_default()
        title, tag = "SmolLM2-135M-Instruct (embedded GGUF)", "SmolLM2-135M-Instruct"
    else:
        model, tok = load(model_name)
        shipped = MODELS.get(model_name)
        title = tag = shipped.tag if shipped else os.path.basename(os.path.normpath(model_name))
    rows, notes = [], []
    for task in tasks:
        enc = highlight(tok, messages(task))
        n_prompt = enc["input_ids"].shape[1]
        for name, method in tqdm(methods(tag), desc=f"task {task.name}"):
            t0 = time.perf_counter()
            with torch.no_grad():
                if method is None:
                    out = model.generate(
                        **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id
                    )
                elif isinstance(method, Directer):
                    out = model.generate(
                        **enc,
                        custom_generate=method,
                        spans=enc,
                        max_new_tokens=max_new_tokens,
                        do_sample=False,
                        pad_token_id=tok.pad_token_id,
                    )
                else:
                    with steer(model, method, spans=enc):
                        out = model.generate(
                            **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id
                        )
            dt = time.perf_counter() - t0
            new = out[0, n_prompt:]
            text = tok.decode(new, skip_special_tokens=True).strip()
            rows.append((task.name, name, task.check(text), len(new) / dt, text))
            if isinstance(method, Directer):
                notes.append(f"{task.name}: {method.stats}")
    print(f"\nModel: {title}, greedy, {max_new_tokens} new tokens max.")
    print(
        f"Prompts: a {len(LONG_TEXT.split())}-word text, a marked rule (in the system prompt, or in the user "
        "message before the question) and a question; 'rule kept' is checked by code.\n"
    )
    print(
        "'tuned' = the strength attnsteer.recommended() ships for this model (chosen on IFEval's dev split); "
        "'paper' = the paper's strength, chosen for 7B+ models.\n"
    )
    print(f"{'task':10s} {'method':38s} {'rule kept':9s} {'tok/s':>6s}  reply    (tok/s includes the prefill)")
    for task, name, ok, tps, text in rows:
        snippet = text.replace("\n", " ")[:60]
        print(f"{task:10s} {name:38s} {'yes' if ok else 'no':9s} {tps:6.1f}  {snippet}")
    for note in notes:
        print(note)
    return 0
