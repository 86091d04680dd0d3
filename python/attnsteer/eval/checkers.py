"""lm-eval's IFEval checkers, imported offline and without lm-eval's heavy dependencies.

Route (issue 8): ``pip install --no-deps lm-eval==0.4.13`` plus ``nltk>=3.9.1``, ``langdetect``
and ``immutabledict`` (~130 MB) instead of ``lm-eval[ifeval]`` (~760 MB: datasets, pandas,
pyarrow…). The checkers themselves (``lm_eval/tasks/ifeval/{utils,instructions,
instructions_registry,instructions_util}.py``) need only those three packages; what needs the
heavy ones is ``lm_eval/tasks/__init__.py`` (the task manager), which Python runs on the way to
``lm_eval.tasks.ifeval``. `load` imports the checker modules under their real names with
the task manager skipped, so the checking code that runs is lm-eval's own, unmodified. Where the
full lm-eval is installed and already imported, its modules are used as they are.

Offline: ``instructions_util`` calls ``nltk.download("punkt_tab")`` at import when NLTK cannot
find it, and two checkers (sentence counts) need it. NLTK's English ``punkt_tab`` ships as
package data (``attnsteer/eval/data/nltk_data``) and is put first on ``nltk.data.path`` before
the import, so nothing is downloaded.

Determinism: ``langdetect`` is seeded (``DetectorFactory.seed = 0``), and `score` seeds
``random`` per prompt (some checkers draw a random letter or phrase when a keyword argument is
missing or falsy, e.g. keys 1122 and 1129).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import random
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Sequence

__all__ = ["NLTK_DATA", "INSTALL_HINT", "load", "score", "Score"]

DATA_DIR = Path(__file__).resolve().parent / "data"
NLTK_DATA = DATA_DIR / "nltk_data"
INSTALL_HINT = "pip install --no-deps lm-eval==0.4.13 && pip install 'nltk>=3.9.1' langdetect immutabledict"

_UTILS = "lm_eval.tasks.ifeval.utils"


def _point_nltk() -> None:
    import nltk

    path = str(NLTK_DATA)
    if path not in nltk.data.path:
        nltk.data.path.insert(0, path)


def load() -> types.ModuleType:
    """Import and return ``lm_eval.tasks.ifeval.utils`` (``InputExample``,
    ``test_instruction_following_strict`` / ``_loose``, ``process_results``), offline."""
    if _UTILS in sys.modules:
        return sys.modules[_UTILS]
    try:
        _point_nltk()
        import langdetect
        import lm_eval
    except ImportError as err:
        raise ImportError(
            f"IFEval scoring uses lm-eval's IFEval checkers, which are not installed ({err.name}): {INSTALL_HINT}"
        ) from err
    stub = None
    if "lm_eval.tasks" not in sys.modules:
        # Stand in for lm_eval/tasks/__init__.py (the task manager needs datasets, pandas…):
        # a bare package whose __path__ is the real folder, so the ifeval modules import as is.
        stub = types.ModuleType("lm_eval.tasks")
        stub.__path__ = [os.path.join(os.path.dirname(lm_eval.__file__), "tasks")]
        sys.modules["lm_eval.tasks"] = stub
    try:
        utils = importlib.import_module(_UTILS)
    finally:
        if stub is not None and sys.modules.get("lm_eval.tasks") is stub:
            del sys.modules["lm_eval.tasks"]  # a later real `import lm_eval.tasks` runs its __init__
            if getattr(lm_eval, "tasks", None) is stub:
                delattr(lm_eval, "tasks")
    langdetect.DetectorFactory.seed = 0
    return utils


def registry() -> Dict[str, Any]:
    """lm-eval's ``INSTRUCTION_DICT``: instruction id → checker class."""
    load()
    return sys.modules["lm_eval.tasks.ifeval.instructions_registry"].INSTRUCTION_DICT


@dataclass
class Score:
    """IFEval verdicts for one response: per instruction (``*_list``) and for the whole prompt."""

    strict: List[bool]
    loose: List[bool]

    @property
    def prompt_strict(self) -> bool:
        return all(self.strict)

    @property
    def prompt_loose(self) -> bool:
        return all(self.loose)


def score(record: Dict[str, Any], response: str) -> Score:
    """Score ``response`` to one IFEval prompt ``record`` (``key``, ``prompt``,
    ``instruction_id_list``, ``kwargs``) with lm-eval's strict and loose checkers."""
    utils = load()
    inp = utils.InputExample(
        key=record["key"],
        instruction_id_list=list(record["instruction_id_list"]),
        prompt=record["prompt"],
        kwargs=list(record["kwargs"]),
    )
    state = random.getstate()
    try:
        # One seed, then strict, then loose: what lm-eval's process_results gives after random.seed(key).
        random.seed(int(record["key"]))
        strict = utils.test_instruction_following_strict(inp, response)
        loose = utils.test_instruction_following_loose(inp, response)
    finally:
        random.setstate(state)
    return Score(list(strict.follow_instruction_list), list(loose.follow_instruction_list))


def describe(instruction_id: str, kwargs: Dict[str, Any], *, key: int = 0, prompt: str = "") -> str:
    """The checker's own wording of one instruction (``build_description(**kwargs)``)."""
    cls = registry()[instruction_id]
    inst = cls(instruction_id)
    kw = {k: v for k, v in kwargs.items() if v}
    state = random.getstate()
    try:
        random.seed(int(key))
        text = inst.build_description(**kw)
        args = inst.get_instruction_args()
        if args and "prompt" in args:
            text = inst.build_description(prompt=prompt)
    finally:
        random.setstate(state)
    return text


def aggregate(scores: Sequence[Score]) -> Dict[str, float]:
    """IFEval's four accuracies: prompt level = mean of all-followed, instruction level = the
    flattened mean over instructions (as lm-eval's ``agg_inst_level_acc``)."""
    if not scores:
        return {
            "prompt_strict": float("nan"),
            "prompt_loose": float("nan"),
            "inst_strict": float("nan"),
            "inst_loose": float("nan"),
        }
    flat_s = [x for s in scores for x in s.strict]
    flat_l = [x for s in scores for x in s.loose]
    return {
        "prompt_strict": sum(s.prompt_strict for s in scores) / len(scores),
        "prompt_loose": sum(s.prompt_loose for s in scores) / len(scores),
        "inst_strict": sum(flat_s) / max(len(flat_s), 1),
        "inst_loose": sum(flat_l) / max(len(flat_l), 1),
    }
