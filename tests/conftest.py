"""Shared fixtures. Tiers are folders: tests/unit, tests/integration, tests/engine; each test
gets its folder's marker automatically, so `pytest -m unit` selects a tier."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

for _k, _v in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "VLLM_HOST_IP": "127.0.0.1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_k, _v)

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("ORCHESTRATOR_SHARED_DATA", ROOT.parent / "shared" / "data"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        tier = Path(str(item.fspath)).relative_to(ROOT / "tests").parts[0]
        if tier in ("unit", "integration", "engine"):
            item.add_marker(getattr(pytest.mark, tier))
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if gpu_items and not _cuda_available():
        skip = pytest.mark.skip(reason="needs CUDA (marker gpu); none on this machine")
        for item in gpu_items:
            item.add_marker(skip)


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA} (set ORCHESTRATOR_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real Redis: $REDIS_URL if set, else a throwaway redis-server on a free port."""
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail(
            "redis-server is not installed (apt-get install redis-server) and REDIS_URL is unset"
        )
    port = free_port()
    proc = subprocess.Popen(
        [exe, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)


@contextmanager
def serve_app(ray_serve: str, name: str, config_path: Path) -> Iterator[str]:
    """Deploy the orchestrator's Serve application on the session's cluster as ``serve deploy``
    does (its app builder, ``{"config_path": ...}``) under ``/<name>``; yield its base URL;
    delete it after."""
    from ray import serve

    from orchestrator.ray_app import app_builder

    serve.run(app_builder({"config_path": str(config_path)}), name=name, route_prefix=f"/{name}")
    try:
        yield f"{ray_serve}/{name}"
    finally:
        serve.delete(name)


@pytest.fixture(scope="session")
def ray_serve() -> Iterator[str]:
    """One local Ray cluster with Serve per test session, on loopback with no dashboard; yields
    the HTTP proxy's base URL. Tests deploy applications on it under their own names and route
    prefixes (``serve.run(app, name=..., route_prefix=...)``) and delete them when done."""
    pytest.importorskip("ray.serve")
    from orchestrator.ray_app import local_serve

    port = free_port()
    with local_serve("127.0.0.1", port):
        yield f"http://127.0.0.1:{port}"
