"""Paired bootstrap intervals (attnsteer.eval.stats) against their definition."""

from __future__ import annotations

import numpy as np
import pytest

from attnsteer.eval import stats


def test_observed_difference_and_interval_contain_the_truth():
    rng = np.random.default_rng(1)
    base = (rng.random(400) < 0.3).astype(float)
    better = np.where(rng.random(400) < 0.2, 1.0, base)  # ~ +14 points on the same prompts
    d = stats.paired_bootstrap(better, base)
    assert d.diff == pytest.approx(better.mean() - base.mean())
    assert d.low < d.diff < d.high and d.low > 0 and d.verdict == "better"
    assert "no evidence" not in d.pct()


def test_identical_runs_give_no_evidence_and_a_zero_width_interval():
    x = [1, 0, 1, 1, 0]
    d = stats.paired_bootstrap(x, x)
    assert (d.diff, d.low, d.high) == (0.0, 0.0, 0.0)
    assert d.verdict == stats.NO_EVIDENCE and d.pct().endswith("(no evidence)")


def test_small_noisy_difference_spans_zero():
    d = stats.paired_bootstrap([1, 0, 1, 0, 1, 0, 0, 1], [0, 1, 1, 0, 1, 0, 1, 0])
    assert d.low < 0 < d.high and d.verdict == stats.NO_EVIDENCE


def test_pairing_matters_compared_with_unpaired_resampling():
    """The same prompts, resampled together: a constant +1 on half the prompts has a tight interval
    even though each run alone is noisy."""
    rng = np.random.default_rng(0)
    base = (rng.random(200) < 0.5).astype(float)
    steered = base.copy()
    steered[(base == 0) & (np.arange(200) % 4 == 0)] = 1.0
    d = stats.paired_bootstrap(steered, base)
    assert d.high - d.low < 0.12 and d.low > 0


def test_ratio_statistic_resamples_prompts_as_units():
    # instruction-level: correct / instructions per prompt
    d = stats.paired_bootstrap([2, 1, 0], [1, 1, 0], steered_den=[2, 1, 3], baseline_den=[2, 1, 3])
    assert d.diff == pytest.approx(3 / 6 - 2 / 6)


def test_seeded_so_reports_are_reproducible_and_errors_name_the_problem():
    a, b = [1, 0, 1, 1, 0, 1], [0, 0, 1, 0, 0, 1]
    assert stats.paired_bootstrap(a, b) == stats.paired_bootstrap(a, b)
    with pytest.raises(ValueError, match="same prompts"):
        stats.paired_bootstrap([1, 0], [1])
    with pytest.raises(ValueError, match="at least one paired prompt"):
        stats.paired_bootstrap([], [])
    d = stats.paired({"a": {"s": 1}, "b": {"s": 0}}, {"b": {"s": 0}, "c": {"s": 1}}, lambda r: r["s"])
    assert d.n == 1 and stats.paired({"a": {}}, {"b": {}}, lambda r: 0) is None
    assert stats.Difference.from_dict(d.as_dict()) == d
