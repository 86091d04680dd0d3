"""Paired bootstrap intervals: is a steered run better than unsteered on the same prompts?

Every report compares a steered configuration with the unsteered run on the *same* prompts. The
difference of two accuracies measured on a few dozen or a few hundred prompts is noisy; the
paired bootstrap resamples the prompts (with replacement, the same draw for both runs) and
reads the 2.5 % and 97.5 % quantiles of the difference. When that interval contains 0 the
report says "no evidence of a difference" rather than calling a gain.

Example::

    >>> d = paired_bootstrap([1, 1, 0, 1], [0, 1, 0, 0], n_boot=1000)
    >>> round(d.diff, 2), d.n
    (0.5, 4)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

__all__ = ["Difference", "paired_bootstrap", "paired", "NO_EVIDENCE"]

NO_EVIDENCE = "no evidence of a difference"


@dataclass(frozen=True)
class Difference:
    """Steered minus unsteered on ``n`` paired prompts, with its bootstrap interval (fractions,
    not %): ``diff`` the observed difference, ``[low, high]`` the ``level`` interval."""

    diff: float
    low: float
    high: float
    n: int
    level: float = 0.95

    @property
    def verdict(self) -> str:
        """``better`` / ``worse`` when the interval excludes 0, else `NO_EVIDENCE`."""
        if self.low > 0:
            return "better"
        if self.high < 0:
            return "worse"
        return NO_EVIDENCE

    @classmethod
    def from_dict(cls, d: dict) -> "Difference":
        """The inverse of `as_dict` (a report's JSON back to a `Difference`)."""
        return cls(d["diff"], d["low"], d["high"], d["n"], d.get("level", 0.95))

    def as_dict(self) -> dict:
        return {
            "diff": self.diff,
            "low": self.low,
            "high": self.high,
            "n": self.n,
            "level": self.level,
            "verdict": self.verdict,
        }

    def pct(self) -> str:
        """``+5.7 [+1.2, +10.0]`` in percentage points, with ``(no evidence)`` when it spans 0."""
        s = f"{100 * self.diff:+.1f} [{100 * self.low:+.1f}, {100 * self.high:+.1f}]"
        return s + (" (no evidence)" if self.verdict == NO_EVIDENCE else "")


def paired_bootstrap(
    steered: Sequence[float],
    baseline: Sequence[float],
    *,
    steered_den: Optional[Sequence[float]] = None,
    baseline_den: Optional[Sequence[float]] = None,
    n_boot: int = 4000,
    level: float = 0.95,
    seed: int = 0,
) -> Difference:
    """Bootstrap interval of ``mean(steered) − mean(baseline)`` over paired prompts.

    Args:
        steered, baseline: per-prompt scores ``(n,)`` in the same prompt order (e.g. 1/0 for
            "every instruction followed").
        steered_den, baseline_den: optional per-prompt denominators ``(n,)``: the statistic is
            then the ratio ``Σ score / Σ den`` (IFEval's instruction-level accuracy: correct
            instructions over instructions, prompts resampled as units).
        n_boot: bootstrap resamples; ``level``: the interval's coverage; ``seed``: fixed, so a
            report rebuilt from the same responses prints the same interval.

    Returns:
        `Difference`.
    """
    a = np.asarray(steered, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(
            f"paired_bootstrap needs two score lists over the same prompts; got shapes {a.shape} and {b.shape}"
        )
    n = a.shape[0]
    if n == 0:
        raise ValueError("paired_bootstrap needs at least one paired prompt; the runs share none")
    da = np.ones(n) if steered_den is None else np.asarray(steered_den, dtype=np.float64)
    db = np.ones(n) if baseline_den is None else np.asarray(baseline_den, dtype=np.float64)

    def stat(idx) -> np.ndarray:
        return a[idx].sum(-1) / da[idx].sum(-1) - b[idx].sum(-1) / db[idx].sum(-1)

    observed = float(stat(np.arange(n)))
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(n_boot, n))
    boots = stat(draws)
    lo, hi = np.quantile(boots, [(1 - level) / 2, 1 - (1 - level) / 2])
    return Difference(observed, float(lo), float(hi), n, level)


def paired(steered: dict, baseline: dict, score, den=None, **kw) -> Optional[Difference]:
    """`paired_bootstrap` over the keys two ``{prompt key: record}`` maps share, with
    ``score(record)`` (and ``den(record)``) per prompt; None when they share none."""
    keys = [k for k in steered if k in baseline]
    if not keys:
        return None
    return paired_bootstrap(
        [score(steered[k]) for k in keys],
        [score(baseline[k]) for k in keys],
        steered_den=None if den is None else [den(steered[k]) for k in keys],
        baseline_den=None if den is None else [den(baseline[k]) for k in keys],
        **kw,
    )
