"""Soak: the vLLM OpenAI server with the attnsteer plugin under mixed traffic for N minutes.

Run in the vLLM environment (`make test-vllm` creates it):

    .venv-vllm/bin/python benchmarks/soak_vllm.py --minutes 10      # the README's run
    .venv-vllm/bin/python benchmarks/soak_vllm.py --minutes 1       # a quick look

Starts the server on a free loopback port (the exported embedded model, fp32, a small KV cache so
that preemption happens), then --threads clients send requests back to back until the time is up:
unsteered and every servable steered method on prompts of 100-400 tokens, with some streams dropped
after a few tokens and some bad requests (which must get a 400). Reports requests/s and p50 / p99
latency per kind, the 400s, /health failures, preemptions, and the server's resident memory (API
server + engine processes) at the start and the end of the traffic. Loopback only; bounded in time.
Writes CSV and markdown to --out.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from attnsteer.vllm._server import drop_stream, local_server, post

HERE = Path(__file__).resolve().parent
SPECS = ["guide:delta=2", "instaboost:alpha=5", "pasta:alpha=0.1", "spotlight:target=0.3", "keyscale:alpha=3"]
FILLER = "The river rose in spring and the mill by the bridge turned faster than the year before. "
BAD = {"attnsteer_method": "guide:delta=abc", "attnsteer_spans": "0:4:1"}


def _post(url, body):
    return post(url, "/v1/completions", body)


def _drop_stream(url, body):
    drop_stream(url, body, chunks=3)


def _rss_mb(pid: int, children: bool = True) -> float:
    """Resident memory of the server process and (``children``) its engine processes, in MB."""
    import psutil

    proc = psutil.Process(pid)
    procs = [proc, *proc.children(recursive=True)] if children else [proc]
    return sum(p.memory_info().rss for p in procs) / 2**20


def _metric(text: str, name: str) -> float:
    """A Prometheus counter from ``/metrics``, summed over its labels (0 when absent)."""
    pattern = rf"^{re.escape(name)}(?:_total)?\{{[^}}]*\}} ([0-9.e+]+)$"
    return sum(float(v) for v in re.findall(pattern, text, re.M))


def _pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] if xs else float("nan")


def _prompts(tok, model: str, new_tokens: int):
    from attnsteer.vllm import steered_prompt

    rng = random.Random(0)
    out = []
    for i in range(16):
        text = "<<Answer in French.>> " + FILLER * rng.randint(4, 18) + f"Question {i}: what happened to the mill?"
        for spec in [None, *SPECS]:
            p = steered_prompt(tok, text, spec or "guide:delta=1")
            body = {"model": model, "prompt": p.prompt_token_ids, "max_tokens": new_tokens, "temperature": 0}
            if spec is not None:
                body["vllm_xargs"] = p.flat()
            out.append(("steered" if spec else "unsteered", body))
    return out


def _server(model: str, threads: int, blocks: int, prefix_cache: bool = True):
    """The OpenAI server on a free loopback port: fp32, a ``blocks``-block KV cache (preemption)."""
    args = ["--dtype", "float32", "--max-model-len", "1024", "--enforce-eager"]
    args += ["--max-num-seqs", str(threads), "--num-gpu-blocks-override", str(blocks)]
    if not prefix_cache:
        args.append("--no-enable-prefix-caching")
    return local_server(model, args, env={"VLLM_CPU_KVCACHE_SPACE": "1"})


class Traffic:
    """--threads clients sending requests back to back until ``end``; latencies per kind."""

    def __init__(self, url: str, prompts, end: float):
        self.url, self.prompts, self.end = url, prompts, end
        self.lat = {"unsteered": [], "steered": [], "dropped": []}
        self.counts = {"bad_400": 0, "bad_other": 0, "errors": 0}
        self.lock = threading.Lock()

    def _count(self, key):
        with self.lock:
            self.counts[key] += 1

    def _bad(self, body):
        try:
            _post(self.url, dict(body, vllm_xargs=BAD))
            self._count("bad_other")
        except urllib.error.HTTPError as e:
            self._count("bad_400" if e.code == 400 else "bad_other")

    def client(self, seed: int) -> None:
        r = random.Random(seed)
        while time.time() < self.end:
            kind, body = r.choice(self.prompts)
            roll = r.random()
            t0 = time.perf_counter()
            try:
                if roll < 0.05:
                    self._bad(body)
                    continue
                if roll < 0.15:
                    _drop_stream(self.url, body)
                    kind = "dropped"
                else:
                    _post(self.url, body)
            except Exception:  # noqa: BLE001 - a soak counts failures instead of stopping
                self._count("errors")
                continue
            with self.lock:
                self.lat[kind].append(time.perf_counter() - t0)


def _health(url, stop, failures):
    while not stop.is_set():
        try:
            urllib.request.urlopen(url + "/health", timeout=10)
        except OSError as e:
            failures.append(repr(e))
        stop.wait(1.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument(
        "--blocks", type=int, default=10, help="KV cache blocks (128 tokens each): small, to force preemption"
    )
    ap.add_argument("--model", default=str(HERE.parent / "build" / "smollm2"), help="exported model folder")
    ap.add_argument("--only", choices=["steered", "unsteered"], help="one kind of good request only")
    ap.add_argument(
        "--no-prefix-cache",
        action="store_true",
        help="serve without prefix caching (steered requests carry their own cache salt, so they share "
        "fewer cached blocks than unsteered ones; this takes that difference out)",
    )
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args()
    import torch
    from transformers import AutoTokenizer

    import attnsteer
    from attnsteer._harness import write_csv

    if not os.path.isdir(args.model):
        m, t = attnsteer.models.load_default(progress=False)
        attnsteer.models.export(m, t, args.model)
    prompts = _prompts(AutoTokenizer.from_pretrained(args.model), args.model, args.new_tokens)
    if args.only:  # one kind of traffic: to tell the plugin's memory from vLLM's own
        prompts = [p for p in prompts if p[0] == args.only]
    health_fail, stop, rss_mid = [], threading.Event(), []
    with _server(args.model, args.threads, args.blocks, not args.no_prefix_cache) as (url, pid):
        _post(url, prompts[0][1])  # warm-up
        rss_start = _rss_mb(pid)
        traffic = Traffic(url, prompts, time.time() + args.minutes * 60)
        watcher = threading.Thread(target=_health, args=(url, stop, health_fail), daemon=True)
        watcher.start()
        t0 = time.time()
        clients = [threading.Thread(target=traffic.client, args=(i,)) for i in range(args.threads)]
        for th in clients:
            th.start()
        while any(th.is_alive() for th in clients):
            time.sleep(5)
            rss_mid.append((round(time.time() - t0, 1), round(_rss_mb(pid), 1), round(_rss_mb(pid, False), 1)))
        wall = time.time() - t0
        stop.set()
        watcher.join()
        rss_end = _rss_mb(pid)
        metrics = urllib.request.urlopen(url + "/metrics", timeout=30).read().decode()
    preempt = _metric(metrics, "vllm:num_preemptions")
    queried, hit = _metric(metrics, "vllm:prefix_cache_queries"), _metric(metrics, "vllm:prefix_cache_hits")
    cache_line = (
        "Prefix caching off."
        if args.no_prefix_cache
        else f"Prefix cache: {hit:.0f} of {queried:.0f} prompt tokens found cached ({100 * hit / max(queried, 1):.0f} %)."
    )

    rows = [
        {
            "kind": k,
            "requests": len(xs),
            "req_per_s": round(len(xs) / wall, 3),
            "p50_s": round(_pct(xs, 0.5), 3),
            "p99_s": round(_pct(xs, 0.99), 3),
        }
        for k, xs in traffic.lat.items()
    ]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = (f"_{args.only}" if args.only else "") + ("_nocache" if args.no_prefix_cache else "")
    write_csv(rows, out / f"soak_vllm{tag}.csv")
    write_csv(
        [{"seconds": t, "rss_mb": r, "api_server_rss_mb": a} for t, r, a in rss_mid], out / f"soak_vllm{tag}_rss.csv"
    )
    after_1min = next((r for t, r, _ in rss_mid if t >= 60), rss_end)
    c = traffic.counts
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, vLLM (CPU); "
        f"SmolLM2-135M-Instruct fp32, {args.threads} client threads for {wall / 60:.1f} min, {args.new_tokens} new "
        f"tokens (greedy), prompts of 100-400 tokens, KV cache {args.blocks} blocks of 128 tokens; 10 % of the "
        "requests are streams dropped after 3 events, 5 % bad requests.",
        "",
        "| requests | count | requests/s | p50 latency s | p99 latency s |",
        "|---|---:|---:|---:|---:|",
        *[f"| {r['kind']} | {r['requests']} | {r['req_per_s']} | {r['p50_s']} | {r['p99_s']} |" for r in rows],
        "",
        f"Bad requests: {c['bad_400']} got HTTP 400, {c['bad_other']} did not. Client errors: {c['errors']}. "
        f"/health failures: {len(health_fail)}. Preemptions: {preempt:.0f}. {cache_line}",
        f"Server RSS (API server + engine): {rss_start:.0f} MB after warm-up, {after_1min:.0f} MB after the first "
        f"minute of traffic, {rss_end:.0f} MB at the end (max {max([r for _, r, _ in rss_mid] or [rss_end]):.0f} MB); "
        f"samples every 5 s in soak_vllm{tag}_rss.csv.",
    ]
    (out / f"soak_vllm{tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
