"""A vLLM OpenAI server on a free loopback port, and the few client calls that talk to it — shared by
the server tests (``tests_vllm/test_server.py``) and the soak benchmark (``benchmarks/soak_vllm.py``).
Loopback only, standard library only (no HTTP client dependency)."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Dict, Iterator, List, Optional, Sequence, Tuple
from urllib.parse import urlparse


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def local_server(
    model: str, args: Sequence[str] = (), env: Optional[Dict[str, str]] = None, start_timeout: float = 600
) -> Iterator[Tuple[str, int]]:
    """``(url, pid)`` of ``python -m vllm.entrypoints.openai.api_server --model MODEL ARGS`` on a free
    loopback port, once ``/health`` answers; the server is stopped on exit. ``env`` is added to this
    process's environment. Raises ``RuntimeError`` when it exits or does not answer in time."""
    port = free_port()
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, *args, "--port", str(port)]
    proc = subprocess.Popen(
        cmd, env=dict(os.environ, **(env or {})), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + start_timeout
        while True:
            try:
                urllib.request.urlopen(url + "/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"the vLLM server exited during start-up (code {proc.returncode}): {cmd}"
                    ) from None
                if time.time() > deadline:
                    raise RuntimeError(f"the vLLM server did not answer /health in {start_timeout:.0f} s") from None
                time.sleep(1)
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def post(url: str, path: str, body: dict, timeout: float = 300) -> dict:
    """POST ``body`` as JSON to ``url + path``; the decoded JSON reply (``HTTPError`` on 4xx/5xx)."""
    req = urllib.request.Request(
        url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def drop_stream(url: str, body: dict, chunks: int = 2, timeout: float = 300) -> List[bytes]:
    """Open a streamed completion, read ``chunks`` data events, hang up mid-generation (vLLM then
    aborts the request). Returns the events read."""
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        conn.request(
            "POST", "/v1/completions", json.dumps(dict(body, stream=True)), {"Content-Type": "application/json"}
        )
        resp = conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"the streamed request got HTTP {resp.status}: {resp.read()[:300]!r}")
        got: List[bytes] = []
        while len(got) < chunks:
            line = resp.readline()
            if not line:
                break
            if line.startswith(b"data: ") and b"[DONE]" not in line:
                got.append(line)
        return got
    finally:
        conn.close()
