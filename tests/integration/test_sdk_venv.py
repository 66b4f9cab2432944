"""The SDK from a virtual environment holding only its own dependencies (httpx, pydantic).

A fresh venv gets ``pip install httpx pydantic`` from the registry (pip's cache keeps reruns fast); the repository
is put on PYTHONPATH, and a script there drives a real server (instant ``echo`` experts, the
``direct`` strategy) through the sync and async clients. The script proves the venv really lacks
the heavy packages, then reports which of them got imported: none may be.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT
from tests.server import running_server

KEY = "sk-venv-1"
HEAVY = ["torch", "ray", "vllm", "fastapi", "sentence_transformers"]
CONFIG = {
    "experts": [
        {"name": "alpha", "backend": "echo", "model": "echo"},
        {"name": "beta", "backend": "echo", "model": "echo"},
    ],
    "routing": {"default_strategy": "direct", "strategies": {"direct": {"expert": "beta"}}},
    "server": {"api_keys": [{"name": "venv", "key_env": "VENV_TEST_KEY", "scopes": ["user"]}]},
}

SCRIPT = """
import asyncio, importlib.util, json, sys

HEAVY = {heavy!r}
missing = [m for m in HEAVY if importlib.util.find_spec(m) is None]
assert missing == HEAVY, f"not a clean venv: {{sorted(set(HEAVY) - set(missing))}} installed"

from orchestrator.sdk import AsyncClient, Client, ModelNotFoundError

out = {{}}
msgs = [{{"role": "user", "content": "two plus two"}}]
with Client() as c:
    r = c.chat.completions.create(messages=msgs, max_tokens=16)
    out["answer"] = [r.choices[0].message.content, r.routing.strategy, r.routing.answered_by]
    with c.chat.completions.stream(model="alpha", messages=msgs) as s:
        text = "".join(ch.choices[0].delta.content or "" for ch in s if ch.choices)
        out["stream"] = [text, s.routing.answered_by]
    out["models"] = sorted(m.id for m in c.models.list())
    try:
        c.chat.completions.create(model="router/nope", messages=msgs)
    except ModelNotFoundError as e:
        out["error"] = [e.status, e.type, e.code]
    out["ready"] = c.admin.ready().ready


async def main():
    async with AsyncClient() as c:
        r = await c.chat.completions.create(model="alpha", messages=msgs, strategy="direct")
        return r.routing.answered_by


out["async"] = asyncio.run(main())
out["loaded"] = sorted(m for m in HEAVY if m in sys.modules)
out["executable"] = sys.executable
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def clean_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with httpx, pydantic and their dependencies only. It gets no pip of its own
    (ensurepip costs seconds); this environment's pip installs into it with ``--python``."""
    venv = tmp_path_factory.mktemp("sdk-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python), "--disable-pip-version-check"]
    subprocess.run([*pip, "install", "-q", "httpx", "pydantic"], check=True)
    return python


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path = tmp_path_factory.mktemp("venv-cfg") / "config.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    with running_server(path, env={"VENV_TEST_KEY": KEY}) as url:
        yield url


def test_sdk_in_a_clean_venv(clean_python: Path, base_url: str, tmp_path: Path) -> None:
    script = tmp_path / "use_sdk.py"
    script.write_text(SCRIPT.format(heavy=HEAVY))
    env = {
        k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME", "PYTHONPATH")
    }
    env |= {
        "PYTHONPATH": str(ROOT),
        "PYTHONNOUSERSITE": "1",
        "ORCHESTRATOR_URL": base_url,
        "ORCHESTRATOR_API_KEY": KEY,
    }
    run = subprocess.run(
        [str(clean_python), str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout)
    assert out["executable"] == str(clean_python)
    assert out["answer"] == ["two plus two", "direct", ["beta"]]
    assert out["stream"] == ["two plus two", ["alpha"]]
    assert {"alpha", "beta", "auto", "router/direct"} <= set(out["models"])
    assert out["error"] == [404, "not_found_error", "model_not_found"]
    assert out["ready"] is True and out["async"] == ["alpha"]
    assert out["loaded"] == []
