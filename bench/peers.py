"""Gateway performance against peers, side by side on loopback, the same load for each.

Each server starts in turn, is warmed up, gets ``--requests`` chat completions at
``--concurrency`` from an aiohttp client (`bench.load`), and stops. Reported: req/s, p50, p99
and the server's CPU per request (its process tree), each as a ratio to the peer.

Gateway overhead, instant backend:
  floor                 bare FastAPI returning a fixed completion (`bench.floor`)
  ours in-process       `orchestrator serve`, an `echo` expert named directly
  ours on Ray Serve     `orchestrator serve --ray`, same config (when the Ray wiring exists)
  litellm               LiteLLM proxy with `mock_response`

Routed requests (model `auto`):
  ours semantic → floor  MiniLM routing, then the `openai` backend forwards to the floor server
  routellm random → floor RouteLLM 0.2.0's server, `random` router, forwarding to the floor

Peers live in their own virtualenvs (their pins clash with ours):
  python -m bench.peers --install          # once: creates .cache/peers/{litellm,routellm}
  python -m bench.peers [--requests 3000 --concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.load import LoadResult, drive

ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT / ".cache" / "peers"
PY = sys.executable


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def install() -> None:
    PEERS.mkdir(parents=True, exist_ok=True)
    for name, reqs in {
        "litellm": ["litellm[proxy]"],
        # RouteLLM depends on torch: pin the CPU wheel in the same command.
        "routellm": ["torch==2.13.0", "routellm[serve]==0.2.0"],
    }.items():
        venv = PEERS / name
        if not (venv / "bin" / "python").exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *reqs], check=True)


def wait_ready(url: str, model: str, proc: subprocess.Popen[bytes], timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            r = httpx.post(
                url + "/v1/chat/completions",
                json=body,
                timeout=5,
                headers={"authorization": "Bearer sk-bench"},
            )
            if r.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(url)


def run_server(
    name: str,
    cmd: list[str],
    port: int,
    model: str,
    requests: int,
    concurrency: int,
    env: dict[str, str] | None = None,
) -> LoadResult | None:
    log = Path(tempfile.gettempdir()) / f"peers-{port}.log"
    print(f"-- {name}: starting (log {log})", flush=True)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, model, proc)
        body = {
            "model": model,
            "messages": [{"role": "user", "content": "hello there"}],
            "max_tokens": 8,
        }
        result = asyncio.run(
            drive(
                url + "/v1/chat/completions",
                body,
                requests,
                concurrency,
                [proc.pid],
                headers={"authorization": "Bearer sk-bench"},
            )
        )
        print(result.line(name), flush=True)
        return result
    except (RuntimeError, TimeoutError) as e:
        print(f"-- {name}: skipped ({e})", flush=True)
        return None
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--install", action="store_true")
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--only", nargs="*", default=None)
    args = ap.parse_args()
    if args.install:
        install()
        return
    tmp = Path(tempfile.mkdtemp())
    floor_port = free_port()
    floor = subprocess.Popen([PY, "-m", "bench.floor", str(floor_port)], cwd=ROOT)
    floor_url = f"http://127.0.0.1:{floor_port}"
    ours_cfg = tmp / "ours.yaml"
    ours_cfg.write_text(
        yaml.safe_dump(
            {
                "experts": [
                    {
                        "name": "instant",
                        "backend": "echo",
                        "model": "x",
                        "engine": {"reply": "ok"},
                        "description": "general questions and chat",
                    },
                    {
                        "name": "forward",
                        "backend": "openai",
                        "model": "floor",
                        "base_url": floor_url + "/v1",
                        "description": "python code",
                        "max_concurrency": 64,
                    },
                    {
                        "name": "forward2",
                        "backend": "openai",
                        "model": "floor",
                        "base_url": floor_url + "/v1",
                        "description": "general questions and chat",
                        "max_concurrency": 64,
                    },
                ],
                "routing": {"default_strategy": "semantic", "strategies": {}},
                "server": {"log_level": "warning"},
            }
        )
    )
    routed_cfg = tmp / "routed.yaml"
    routed_cfg.write_text(
        yaml.safe_dump(
            {
                "experts": [
                    {
                        "name": "strong",
                        "backend": "openai",
                        "model": "floor",
                        "base_url": floor_url + "/v1",
                        "description": "hard reasoning, math and code",
                        "max_concurrency": 64,
                    },
                    {
                        "name": "weak",
                        "backend": "openai",
                        "model": "floor",
                        "base_url": floor_url + "/v1",
                        "description": "simple questions and chat",
                        "max_concurrency": 64,
                    },
                ],
                "routing": {"default_strategy": "semantic"},
                "server": {"log_level": "warning"},
            }
        )
    )
    litellm_cfg = tmp / "litellm.yaml"
    litellm_cfg.write_text(
        yaml.safe_dump(
            {
                "model_list": [
                    {
                        "model_name": "instant",
                        "litellm_params": {"model": "openai/instant", "mock_response": "ok"},
                    }
                ],
                "general_settings": {},
                "litellm_settings": {"set_verbose": False},
            }
        )
    )
    rows: dict[str, LoadResult | None] = {}
    n, c = args.requests, args.concurrency
    plan: list[tuple[str, Any]] = []

    def add(name: str, fn: Any) -> None:
        if args.only is None or any(o in name for o in args.only):
            plan.append((name, fn))

    add(
        "floor (bare FastAPI)",
        lambda p: run_server(
            "floor (bare FastAPI)", [PY, "-m", "bench.floor", str(p)], p, "floor", n, c
        ),
    )
    add(
        "ours in-process",
        lambda p: run_server(
            "ours in-process",
            [
                PY,
                "-m",
                "orchestrator",
                "serve",
                "-c",
                str(ours_cfg),
                "--port",
                str(p),
                "--log-level",
                "warning",
            ],
            p,
            "instant",
            n,
            c,
        ),
    )
    add(
        "ours on Ray Serve",
        lambda p: run_server(
            "ours on Ray Serve",
            [PY, "-m", "orchestrator", "serve", "--ray", "-c", str(ours_cfg), "--port", str(p)],
            p,
            "instant",
            n,
            c,
            env={"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"},
        ),
    )
    litellm = PEERS / "litellm" / "bin" / "litellm"
    add(
        "litellm (mock_response)",
        lambda p: (
            run_server(
                "litellm (mock_response)",
                [
                    str(litellm),
                    "--config",
                    str(litellm_cfg),
                    "--port",
                    str(p),
                    "--host",
                    "127.0.0.1",
                    "--num_workers",
                    "1",
                ],
                p,
                "instant",
                n,
                c,
                env={"LITELLM_LOG": "ERROR", "LITELLM_MASTER_KEY": "sk-bench"},
            )
            if litellm.exists()
            else None
        ),
    )
    add(
        "ours routed (semantic → floor)",
        lambda p: run_server(
            "ours routed (semantic → floor)",
            [
                PY,
                "-m",
                "orchestrator",
                "serve",
                "-c",
                str(routed_cfg),
                "--port",
                str(p),
                "--log-level",
                "warning",
            ],
            p,
            "auto",
            n,
            c,
        ),
    )
    routellm_py = PEERS / "routellm" / "bin" / "python"
    add(
        "routellm (random → floor)",
        lambda p: (
            run_server(
                "routellm (random → floor)",
                [
                    str(routellm_py),
                    "-m",
                    "routellm.openai_server",
                    "--routers",
                    "random",
                    "--strong-model",
                    "openai/floor",
                    "--weak-model",
                    "openai/floor",
                    "--base-url",
                    floor_url + "/v1",
                    "--api-key",
                    "sk-bench",
                    "--port",
                    str(p),
                ],
                p,
                "router-random-0.5",
                n,
                c,
                env={"OPENAI_API_KEY": "sk-bench", "HF_HUB_OFFLINE": "1"},
            )
            if routellm_py.exists()
            else None
        ),
    )
    try:
        for name, fn in plan:
            rows[name] = fn(free_port())
    finally:
        floor.terminate()

    def ratio(a: str, b: str, field: str, invert: bool = False) -> str:
        ra, rb = rows.get(a), rows.get(b)
        if not ra or not rb:
            return "n/a"
        va, vb = getattr(ra, field), getattr(rb, field)
        if not va or not vb:
            return "n/a"
        return f"{(vb / va) if invert else (va / vb):.2f}x"

    print("\nresults")
    for name, r in rows.items():
        print(r.line(name) if r else f"{name:28s} not run")
    print("\nratios")
    for ours, peer in [
        ("ours in-process", "litellm (mock_response)"),
        ("ours on Ray Serve", "litellm (mock_response)"),
        ("ours routed (semantic → floor)", "routellm (random → floor)"),
    ]:
        print(
            f"{ours} vs {peer}: req/s {ratio(ours, peer, 'req_per_s')}, "
            f"p50 {ratio(ours, peer, 'p50_ms', invert=True)} lower, "
            f"p99 {ratio(ours, peer, 'p99_ms', invert=True)} lower, "
            f"CPU/req {ratio(ours, peer, 'server_cpu_ms_per_req', invert=True)} less"
        )
    print(json.dumps({k: asdict(v) if v else None for k, v in rows.items()}))


if __name__ == "__main__":
    main()
