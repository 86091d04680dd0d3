"""A steering request is untrusted input (issue 28): hostile specs and span lists are refused by
`attnsteer.vllm.parse_request` in bounded time and memory, without opening any file, with errors
that name the setting and its range and never reveal what exists on the server; the strengths a
request may set give finite attention output at both ends of their ranges."""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
import tracemalloc

import pytest
import torch

import attnsteer
from attnsteer import specs
from attnsteer.specs import REQUEST_RANGES, SPAN_WEIGHT_RANGE, RequestLimits
from attnsteer.vllm import parse_request
from attnsteer.vllm.plan import plan_request

T = 24  # prompt tokens
PROMPT = list(range(10, 10 + T))
LIMITS = RequestLimits(num_layers=30, num_heads=9)
TIME_LIMIT_S = 2.0  # generous: every refusal below takes well under a millisecond here
MEMORY_LIMIT = 1 << 20  # bytes of new Python allocations while refusing


# --- no file is opened while a request is read (an audit hook sees every open, os.open included) ---
_WATCH = threading.local()
_OPENED: list = []


def _audit(event, args):
    if getattr(_WATCH, "on", False) and event in ("open", "os.listdir", "os.scandir", "pathlib.Path.glob"):
        _OPENED.append((event, args[0] if args else None))


sys.addaudithook(_audit)


def _read(extra, limits=LIMITS):
    """``parse_request`` in a thread: (result or exception, seconds, peak new bytes, files opened).
    A call that blocks (a FIFO opened for reading would) fails the test instead of hanging it."""
    out = {}

    def run():
        _WATCH.on = True
        t0 = time.perf_counter()
        try:
            out["result"] = parse_request(extra, PROMPT, (), limits)
        except Exception as e:  # noqa: BLE001 - the test looks at which
            out["result"] = e
        finally:
            out["seconds"] = time.perf_counter() - t0
            _WATCH.on = False

    del _OPENED[:]
    tracemalloc.start()
    try:
        th = threading.Thread(target=run, daemon=True)
        th.start()
        th.join(timeout=10 * TIME_LIMIT_S)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert not th.is_alive(), f"parse_request blocked on {extra!r:.200}"
    return out["result"], out["seconds"], peak, list(_OPENED)


def _flat(method, spans="0:4:1"):
    return {"attnsteer_method": method, "attnsteer_spans": spans}


def _nested(method, spans=((0, 4, 1),)):
    return {"attnsteer": {"method": method, "spans": [list(s) for s in spans]}}


@pytest.fixture(scope="module")
def server_files(tmp_path_factory):
    """Files that exist on the 'server': a valid head profile, a FIFO, an unreadable file."""
    d = tmp_path_factory.mktemp("server")
    (d / "heads.json").write_text(json.dumps({"heads": {"1": [0, 2]}}))
    (d / "secret.txt").write_text("not json")
    fifo = d / "fifo"
    os.mkfifo(fifo)
    return d


LONG = 10**6


def _hostile(d):
    """(name, extra_args, words the refusal must contain)."""
    paths = [
        "/dev/zero",
        "/dev/urandom",
        "/dev/stdin",
        "/etc/shadow",
        "/etc/passwd",
        "/proc/self/environ",
        "/nonexistent/x",
        str(d / "fifo"),
        str(d / "heads.json"),  # a valid profile file: still not read
        str(d / "secret.txt"),
        "~/heads.json",
        "~root/.ssh/id_rsa",
        "heads.json",  # relative (the test's cwd holds a valid one)
        "../heads.json",
        "./heads.json",
        "file:///etc/passwd",
        "\\\\server\\share\\heads.json",
        "%2Fetc%2Fpasswd",
    ]
    table = [(f"heads={p}", _flat(f"pasta:alpha=0.1,heads={p}"), "not a head profile this server knows") for p in paths]
    table += [(f"nested heads={p}", _nested(f"pasta:alpha=0.1,heads={p}"), "not a head profile") for p in paths[:3]]
    table += [
        ("huge layer range", _flat("pasta:alpha=0.1,layers=0-300000000"), "outside 0..29"),
        ("huge layer index", _flat("guide:delta=1,layers=999999999"), "outside 0..29"),
        ("layer at the count", _flat("guide:delta=1,layers=30"), "outside 0..29"),
        ("many huge ranges", _flat("guide:delta=1,layers=" + "+".join(["0-999999999"] * 10)), "outside 0..29"),
        ("backwards range", _flat("guide:delta=1,layers=20-3"), "runs backwards"),
        ("negative layer", _flat("guide:delta=1,layers=-1"), "layer indices"),
        ("too many digits", _flat("guide:delta=1,layers=0-9999999999999"), "layer indices"),
        ("huge head range", _flat("pasta:alpha=0.1,heads=1:0-999999999"), "outside 0..8"),
        ("head layer outside", _flat("pasta:alpha=0.1,heads=99:0"), "outside 0..29"),
        ("head at the count", _flat("pasta:alpha=0.1,heads=1:9"), "outside 0..8"),
        ("keyscale 1e30", _flat("keyscale:alpha=1e30"), "allowed range 0.001 to 1000"),
        ("keyscale 0", _flat("keyscale:alpha=0"), "allowed range"),
        ("keyscale negative", _flat("keyscale:alpha=-100"), "allowed range"),
        ("guide 1e308", _flat("guide:delta=1e308"), "allowed range -50 to 50"),
        ("guide -1e308", _flat("guide:delta=-1e308"), "allowed range -50 to 50"),
        ("guide overflow", _flat("guide:delta=1e999"), "must be finite"),
        ("instaboost tiny", _flat("instaboost:alpha=1e-300"), "allowed range 1e-06 to 1e+06"),
        ("instaboost underflow", _flat("instaboost:alpha=1e-400"), "allowed range"),
        ("pasta tiny", _flat("pasta:alpha=1e-30"), "allowed range"),
        ("pasta huge", _flat("pasta:alpha=1e30"), "allowed range"),
        ("spotlight tiny", _flat("spotlight:target=1e-300"), "allowed range 0.001 to 0.999"),
        ("spotlight one", _flat("spotlight:target=1"), "allowed range"),
        ("length_ref huge", _flat("guide:delta=1,length_ref=1e300"), "allowed range"),
        ("length_ref zero", _flat("guide:delta=1,length_ref=0"), "allowed range"),
        ("exponent digits", _flat("guide:delta=1e99999"), "not a number"),
        ("hex", _flat("guide:delta=0x10"), "not a number"),
        ("underscores", _flat("guide:delta=1_0"), "not a number"),
        ("spaces inside", _flat("guide:delta=1 0"), "not a number"),
        ("long number", _flat("guide:delta=" + "0" * 40 + "1"), "not a number"),
        ("bool as number", _flat("guide:delta=true"), "not a number"),
    ]
    for nan in ("nan", "NaN", "-nan", "+NAN", "inf", "+inf", "-inf", "Infinity", "-Infinity", "INF"):
        table.append((f"{nan}", _flat(f"guide:delta={nan}"), "NaN and infinity"))
    table += [
        ("long spec", _flat("guide:delta=" + "1" * LONG), "at most 256 are allowed"),
        ("long setting", _flat("guide:delta=2," + "x" * LONG), "at most 256"),
        ("many layers", _flat("guide:delta=1,layers=" + "+".join(["0"] * LONG)), "at most 256"),
        ("long name", _flat("g" * LONG), "at most 256"),
        ("long flat spans", _flat("guide:delta=1", "0:1:1," * LONG), "spans; at most 256 are allowed"),
        ("many nested spans", _nested("guide:delta=1", [(0, 1, 1)] * LONG), "spans; at most 256 are allowed"),
        ("spans 257", _nested("guide:delta=1", [(0, 1, 1)] * 257), "spans; at most 256 are allowed"),
        ("huge span end", _flat("guide:delta=1", "0:99999999999999999999:1"), "token position"),
        ("span end past prompt", _flat("guide:delta=1", f"0:{T + 1}:1"), "lies outside"),
        ("float span start", _nested("guide:delta=1", [(1.5, 4, 1)]), "token position"),
        ("bool span start", _nested("guide:delta=1", [(True, 4, 1)]), "token position"),
        ("negative span", _nested("guide:delta=1", [(-3, 4, 1)]), "lies outside"),
        ("nan weight", _flat("guide:delta=1", "0:4:nan"), "span weight"),
        ("inf weight", _nested("guide:delta=1", [(0, 4, float("inf"))]), "weights are finite"),
        ("huge weight", _flat("guide:delta=1", "0:4:1e300"), "weights are finite and > 0, in [0.001, 16]"),
        ("tiny weight", _flat("guide:delta=1", "0:4:1e-300"), "in [0.001, 16]"),
        ("string weight", _nested("guide:delta=1", [(0, 4, "1" * 100)]), "span weight"),
        ("span not a list", {"attnsteer": {"method": "guide:delta=1", "spans": "0:4:1"}}, "must be"),
        ("span item a dict", {"attnsteer": {"method": "guide:delta=1", "spans": [{"a": 1}]}}, "a span is"),
        ("method a dict", {"attnsteer": {"method": {"name": "guide"}, "spans": [[0, 4]]}}, "method spec string"),
        ("method a number", _flat(12), "method spec string"),
        ("method None", _nested(None), "method spec string"),
        ("flat spans a list", {"attnsteer_method": "guide:delta=1", "attnsteer_spans": [[0, 4]]}, "is a string"),
        ("config a string", {"attnsteer": "guide:delta=1"}, "must be"),
        # unicode digits, letters and spaces that Python's int()/float() would accept
        ("arabic digits", _flat("guide:delta=\u0661"), "non-ASCII"),
        ("fullwidth digits", _flat("guide:delta=\uff12"), "non-ASCII"),
        ("devanagari layers", _flat("guide:delta=1,layers=\u0966-\u0969"), "non-ASCII"),
        ("unicode minus", _flat("guide:delta=\u22121"), "non-ASCII"),
        ("unicode span", _flat("guide:delta=1", "\u0660:\u0663:1"), "token position"),
        ("unicode name", _flat("guid\u00e9:delta=1"), "non-ASCII"),
        ("nbsp", _flat("guide:delta=\u00a01"), "non-ASCII"),
        ("duplicated key", _flat("guide:delta=2,delta=50"), "given twice"),
        ("duplicated key, case", _flat("guide:delta=1,DELTA=2"), "given twice"),
        ("duplicated layers", _flat("guide:delta=1,layers=0-3,layers=0-299"), "given twice"),
        ("null byte", _flat("guide:delta=1\x00"), "not a number"),
        ("unknown setting", _flat("guide:file=/etc/passwd"), "GUIDE has no setting 'file'"),
        ("directer", _flat("directer:alpha=100"), "cannot be served per request"),
    ]
    return table


def test_hostile_requests_are_refused_quickly_without_opening_a_file(server_files, tmp_path, monkeypatch):
    (tmp_path / "heads.json").write_text(json.dumps({"1": [0]}))
    monkeypatch.chdir(tmp_path)
    table = _hostile(server_files)
    assert len(table) > 90
    failures = []
    for name, extra, words in table:
        got, seconds, peak, opened = _read(extra)
        problems = []
        if not isinstance(got, ValueError) and not (isinstance(got, TypeError) and "string" in words):
            problems.append(f"not refused: {got!r:.200}")
        elif words not in str(got):
            problems.append(f"message lacks {words!r}: {str(got)[:300]}")
        if opened:
            problems.append(f"opened {opened}")
        if seconds > TIME_LIMIT_S:
            problems.append(f"took {seconds:.2f} s")
        if peak > MEMORY_LIMIT:
            problems.append(f"allocated {peak / 1e6:.1f} MB")
        if len(str(got)) > 600:
            problems.append(f"a {len(str(got))}-character message")
        for leak in ("Errno", "No such file", "Permission denied", "JSONDecodeError", "Traceback", "site-packages"):
            if leak in str(got):
                problems.append(f"message leaks {leak!r}")
        if problems:
            failures.append((name, problems))
    assert not failures, failures


def test_an_existing_file_and_a_missing_one_are_refused_alike(server_files):
    """Nothing in the answer tells a client whether a path exists on the server."""
    answers = []
    for path in (
        server_files / "heads.json",
        server_files / "secret.txt",
        server_files / "no-such-file",
        "/etc/shadow",
    ):
        got, *_ = _read(_flat(f"pasta:alpha=0.1,heads={path}"))
        answers.append(str(got).replace(repr(str(path)[:40] + ("…" if len(str(path)) > 40 else "")), "PATH"))
    assert len(set(answers)) == 1, answers


def test_a_good_request_opens_no_file_either():
    got, seconds, _, opened = _read(_flat("pasta:alpha=0.01,heads=1:0-2+3:4,layers=1-3", "2:6:1,8:9:2"))
    assert got.method == attnsteer.PASTA(0.01, heads={1: [0, 1, 2], 3: [4]}, layers=[1, 2, 3])
    assert got.spans == ((2, 6, 1.0), (8, 9, 2.0)) and not opened


def test_operator_profiles_are_loaded_at_start_up_and_named_by_requests(server_files):
    profiles = specs.load_head_profiles(f"mine={server_files / 'heads.json'}")
    assert profiles == {"mine": {1: (0, 2)}}
    limits = RequestLimits(num_layers=30, num_heads=9, head_profiles=profiles)
    got, *_, opened = _read(_flat("pasta:alpha=0.1,heads=mine"), limits)
    assert got.method.heads == {1: [0, 2]} and not opened
    got, *_ = _read(_flat("pasta:alpha=0.1,heads=smollm2-135m"), limits)  # the shipped one (30 x 9)
    assert got.method.heads[0] == [7]
    got, *_ = _read(_flat("pasta:alpha=0.1,heads=smollm2-135m"), RequestLimits(num_layers=2, num_heads=14))
    assert isinstance(got, ValueError) and "outside this model's 2 layers x 14 heads" in str(got)
    small = RequestLimits(num_layers=1, num_heads=9, head_profiles=profiles)
    got, *_ = _read(_flat("pasta:alpha=0.1,heads=mine"), small)
    assert isinstance(got, ValueError) and "outside this model's 1 layers" in str(got)
    # the operator's mistakes stop the start-up, naming the file (they are the operator's)
    with pytest.raises(ValueError, match="secret.txt"):
        specs.load_head_profiles(f"bad={server_files / 'secret.txt'}")
    with pytest.raises(ValueError, match="not name=path"):
        specs.load_head_profiles(str(server_files / "heads.json"))
    with pytest.raises(ValueError, match="used twice"):
        specs.load_head_profiles(f"smollm2-135m={server_files / 'heads.json'}")
    assert specs.load_head_profiles("") == {}


def test_the_library_default_opens_nothing_and_the_cli_entry_point_reads_files(server_files):
    path = server_files / "heads.json"
    _WATCH.on = True
    del _OPENED[:]
    try:
        with pytest.raises(ValueError, match="read by parse_local"):
            specs.parse(f"pasta:alpha=0.1,heads={path}")
        assert specs.canonical(f"pasta:alpha=0.1,heads={path}").endswith(str(path))
        assert not _OPENED
        assert specs.parse_local(f"pasta:alpha=0.1,heads={path}").heads == {1: [0, 2]}
        assert any(str(path) in str(a) for _, a in _OPENED)
    finally:
        _WATCH.on = False


# --- the ranges' ends give finite output --------------------------------------------------------

SERVABLE = [(m, k) for (m, k) in REQUEST_RANGES if m != "directer"]


def _spec_at(method: str, key: str, value: float) -> str:
    extra = ",delta=50" if (method, key) == ("guide", "length_ref") else ""  # the bias a length adds to
    phases = ",phases=both" if method == "keyscale" else ""  # steer the prompt rows too
    return f"{method}:{key}={value!r}{extra}{phases}"


@pytest.mark.parametrize("method, key", SERVABLE)
@pytest.mark.parametrize("end", [0, 1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_allowed_strength_gives_finite_attention(method, key, end, dtype):
    """Both ends of each range, with span weights at both ends of theirs, through the plan a served
    request gets and the fused op, on logits as large as a real model's (|s| up to ~100): finite,
    and (fp32) equal to the float64 reference."""
    from attnsteer.ops import reference

    value = REQUEST_RANGES[(method, key)][end]
    extra = _flat(_spec_at(method, key, value), f"1:5:{SPAN_WEIGHT_RANGE[1]:g},7:9:{SPAN_WEIGHT_RANGE[0]:g}")
    steering = parse_request(extra, PROMPT, (), LIMITS)
    H, Hkv, D = 6, 2, 16
    g = torch.Generator().manual_seed(0)
    q = (torch.randn(1, H, T, D, generator=g) * 3.0).to(dtype)
    k = (torch.randn(1, Hkv, T, D, generator=g) * 3.0).to(dtype)
    v = torch.randn(1, Hkv, T, D, generator=g).to(dtype)
    args = plan_request(steering.method, steering.span_weights, 0, T, H, 0)
    assert args is not None
    kw = dict(
        target=args.target,
        target_exact=args.target_exact,
        query_mask=args.query_mask,
        is_causal=True,
    )
    out = attnsteer.steered_attention(
        q, k, v, args.span_weights, bias=args.bias, key_scale=args.key_scale, enable_gqa=True, **kw
    )
    assert torch.isfinite(out).all()
    rep = H // Hkv
    ref_inputs = (
        k.double().repeat_interleave(rep, 1),
        v.double().repeat_interleave(rep, 1),
        args.span_weights.double(),
        args.bias.double(),
        args.key_scale.double(),
    )
    ref = reference.steered_attention(q.double(), *ref_inputs, **kw)
    assert torch.isfinite(ref).all()
    # the op tests' tolerance rule (tests/test_steered_attention.py): scaled by the strength
    amp = max(1.0, args.key_scale.abs().max().item() / 4, (args.bias.abs().max() * SPAN_WEIGHT_RANGE[1]).item() / 10)
    if dtype == torch.float32:
        tol = 2e-5 * amp
    else:
        own = reference.steered_attention(q, *ref_inputs, compute_dtype=torch.float32, **kw).to(dtype)
        tol = 2 * (own.double() - ref).abs().max().item() + torch.finfo(dtype).eps * amp
    assert (out.double() - ref).abs().max().item() <= tol


def test_the_guide_documents_every_range():
    """docs/guides/vllm.md's security section lists each request range as the code has it."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "guides" / "vllm.md").read_text()
    for (method, key), (lo, hi) in REQUEST_RANGES.items():
        if method == "directer":
            continue
        assert f"| {method} | `{key}` | {lo:g} to {hi:g} |" in text, (method, key)
    lo, hi = SPAN_WEIGHT_RANGE
    assert f"| span weight | | {lo:g} to {hi:g} |" in text
    assert math.isfinite(hi)
