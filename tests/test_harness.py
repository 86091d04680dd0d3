"""The measurement helpers shared by benchmarks/ and the CLI."""

from __future__ import annotations

import csv

from attnsteer._harness import median_time, run_point, timed, write_csv


def test_run_point_in_its_own_process(tmp_path):
    script = tmp_path / "point.py"
    script.write_text(
        "import json, sys\n"
        "spec = json.loads(sys.argv[2])\n"
        "if spec['fail']:\n"
        "    raise SystemExit('bad point ' + str(spec['n']))\n"
        "print('noise')\n"
        "print(json.dumps({'n2': spec['n'] ** 2}))\n"
    )
    assert run_point(str(script), {"n": 7, "fail": False}) == {"n2": 49}
    assert run_point(str(script), {"n": 3, "fail": True}) == {"error": "bad point 3"}


def test_timer_and_table(tmp_path):
    calls = []
    t = median_time(lambda: calls.append(1), reps=5, warmup=2)
    assert len(calls) == 7 and 0 <= t < 1
    out, dt = timed(lambda: sum(range(1000)))
    assert out == 499500 and dt >= 0
    path = write_csv([{"a": 1, "b": "x"}, {"a": 2, "b": "y"}], tmp_path / "sub" / "t.csv")
    assert list(csv.DictReader(open(path))) == [{"a": "1", "b": "x"}, {"a": "2", "b": "y"}]
