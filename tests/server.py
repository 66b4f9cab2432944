"""Run `orchestrator serve` as a real subprocess on a free port (integration/engine tiers)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import ROOT, free_port


@contextmanager
def running_server(
    config: Path | None = None, env: dict[str, str] | None = None, ready_timeout_s: float = 240
) -> Iterator[str]:
    port = free_port()
    cmd = [sys.executable, "-m", "orchestrator", "serve", "--port", str(port)]
    if config is not None:
        cmd += ["--config", str(config)]
    logs = ROOT / ".pytest_cache"
    logs.mkdir(exist_ok=True)
    log = (logs / f"server-{port}.log").open("wb")  # closed in finally
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}")
            try:
                if httpx.get(url + "/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("server did not become ready")
            time.sleep(0.25)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def log_path(url: str) -> Path:
    """The log file of the server started by :func:`running_server` at ``url``."""
    return ROOT / ".pytest_cache" / f"server-{url.rsplit(':', 1)[1]}.log"


@contextmanager
def serving_in_thread(config: Any, start_timeout_s: float = 120) -> Iterator[str]:
    """Serve ``config`` in this process (uvicorn in a thread) on a free port; yield its URL.

    For tests that build artifacts in-process and need the server to see them without a
    subprocess; :func:`running_server` is the out-of-process twin."""
    import threading

    import uvicorn

    from orchestrator.api import build_app
    from orchestrator.pipeline import Orchestrator

    port = free_port()
    uv = uvicorn.Server(
        uvicorn.Config(
            build_app(Orchestrator(config)), host="127.0.0.1", port=port, log_level="warning"
        )
    )
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not uv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.1)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        uv.should_exit = True
        thread.join(30)
