"""``orchestrator kb add|list|delete|train-gate`` and ``orchestrator eval-rag --no-e2e`` as real
subprocesses against a real Redis (MiniLM embeds; no LLM runs)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import ROOT, free_port

KB = ROOT / "docs" / "examples" / "kb"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.fixture
def kb_url(redis_url: str) -> Iterator[str]:
    url = redis_url.rsplit("/", 1)[0] + "/10"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


def test_add_list_delete_train(kb_url: str, tmp_path: Path) -> None:
    files = [str(p) for p in sorted(KB.glob("brindlewave-*.md"))]
    added = run("kb", "add", *files, "--meta", "owner=docs", "--redis-url", kb_url)
    assert added.returncode == 0, added.stderr
    assert "added brindlewave-tarn-40" in added.stderr
    again = run("kb", "add", files[0], "--redis-url", kb_url)
    assert "replaced" in again.stderr
    listed = run("kb", "list", "--json", "--redis-url", kb_url)
    docs = [json.loads(line) for line in listed.stdout.splitlines()]
    assert len(docs) == len(files)
    by_id = {d["id"]: d for d in docs}
    assert by_id["brindlewave-halden-b220"]["metadata"] == {"source": files[1], "owner": "docs"}
    assert docs[-1]["id"] == "brindlewave-carrow-sp3"  # re-added last: listed last
    gone = run("kb", "delete", "brindlewave-support", "--redis-url", kb_url)
    assert gone.returncode == 0 and "deleted brindlewave-support" in gone.stderr
    missing = run("kb", "delete", "brindlewave-support", "--redis-url", kb_url)
    assert missing.returncode == 2 and "no document 'brindlewave-support'" in missing.stderr
    trained = run(
        "kb", "train-gate", str(KB / "questions.jsonl"), "--redis-url", kb_url,
        "--artifacts-dir", str(tmp_path),
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    assert "trained expertrag gate v0001" in trained.stderr
    meta = json.loads((tmp_path / "expertrag" / "v0001" / "meta.json").read_text())
    assert meta["metrics"]["rows"] == 80 and 0.0 < meta["metrics"]["threshold"] < 1.0


def test_errors_are_clear() -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    down = run("kb", "list", "--redis-url", dead)
    assert down.returncode == 1 and "knowledge store" in down.stderr
    none = run("kb", "list")
    assert none.returncode == 2 and "no Redis" in none.stderr
    absent = run("kb", "add", "no-such-file.md", "--redis-url", dead)
    assert absent.returncode == 2 and "no such file" in absent.stderr


def test_eval_rag_gate_only(redis_url: str, tmp_path: Path) -> None:
    url = redis_url.rsplit("/", 1)[0] + "/10"
    before = set(redis.Redis.from_url(url).keys())
    result = run(
        "eval-rag", "--no-e2e", "--general-per-task", "0", "--redis-url", url,
        "--out", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Retrieval gate on held-out documents" in result.stdout
    report = json.loads((tmp_path / "results.json").read_text())
    gate = report["gate"]["gate"]
    assert gate["positives"] > 0 and 0 <= gate["precision"] <= 1 and 0 <= gate["recall"] <= 1
    assert report["gate"]["always"]["recall"] == 1.0
    assert set(redis.Redis.from_url(url).keys()) == before  # the scratch namespace is gone
