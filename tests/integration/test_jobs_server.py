"""Training jobs end to end: real `orchestrator serve` processes, a real Redis, CoE trained on
the shared RouterBench data (a small ``limit``: MiniLM embeds long prompts slowly here), replay
experts answering as the recorded models did.

The module's story, in order: a job is submitted to server A, which is SIGKILLed while the job
is embedding; server B starts on the same Redis and artifacts, recovers the job and finishes it
(attempt 2). Its metrics, plot and version are served; a second job trains on uploaded JSONL
through the CLI while a third is cancelled; then the two versions are promoted and rolled back
under concurrent chat load: every request succeeds and the versions in the routing traces
switch exactly when promote/rollback return.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis
import yaml
from typer.testing import CliRunner

from orchestrator.cli import app as cli
from orchestrator.evaluation.datasets import RoutingDataset, load_dataset, sample, split
from orchestrator.evaluation.harness import replay_experts
from orchestrator.sdk import Client
from tests.server import running_server

LIMIT = 120


@pytest.fixture(scope="module")
def routerbench(shared_data: Path) -> RoutingDataset:
    return load_dataset("routerbench", shared_data / "routerbench")


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory,
    shared_data: Path,
    redis_url: str,
    routerbench: RoutingDataset,
) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("jobs")
    db = redis_url.rsplit("/", 1)[0] + "/9"  # promotions live in the shared namespace: own db
    redis.Redis.from_url(db).flushdb()
    experts = [
        e.model_dump(mode="json", exclude_defaults=True)
        for e in replay_experts(routerbench, str(shared_data / "routerbench"))
    ]
    config = {
        "experts": experts,
        "routing": {"default_strategy": "random", "strategies": {"coe": {"min_confidence": 0}}},
        "redis_url": db,
        "artifacts_dir": str(root / "artifacts"),
        "server": {"default_temperature": 0.0},
        "jobs": {
            "lease_s": 3.0,
            "poll_s": 0.5,
            "max_attempts": 2,
            "promotion_poll_s": 0.5,
            "data_dir": str(shared_data),
            "embedding_cache_dir": str(root / "cache"),
        },
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return {"config": path, "root": root}


def job(url: str, job_id: str) -> dict[str, Any]:
    r = httpx.get(f"{url}/admin/jobs/{job_id}", params={"logs": 200}, timeout=30)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def wait_for(
    url: str, job_id: str, done: Callable[[dict[str, Any]], bool], timeout_s: float = 900
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        j = job(url, job_id)
        if done(j):
            return j
        assert j["status"] in ("queued", "running"), j
        assert time.monotonic() < deadline, f"job stuck: {j['status']} {j['stage']}"
        time.sleep(0.5)


def finished(j: dict[str, Any]) -> bool:
    return j["status"] in ("succeeded", "failed", "cancelled")


def gone(pid: int) -> bool:
    """The process no longer runs (a zombie waiting for a reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


@pytest.fixture(scope="module")
def killed(setup: dict[str, Any]) -> dict[str, Any]:
    """Server A takes a CoE job and is SIGKILLed while the job's process is embedding."""
    with running_server(setup["config"]) as url:
        body = {"strategy": "coe", "dataset": "routerbench", "limit": LIMIT}
        r = httpx.post(f"{url}/admin/jobs", json=body, timeout=30)
        assert r.status_code == 202, r.text
        submitted = r.json()
        assert submitted["status"] in ("queued", "running")
        running = wait_for(
            url, submitted["id"], lambda j: j["stage"] == "embedding prompts", timeout_s=300
        )
        server_pid = int(running["worker"].split(":")[1])
        child_pid = running["pid"]
        assert child_pid and not gone(child_pid)
        os.kill(server_pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while not gone(child_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        return {
            "id": submitted["id"],
            "first_run": running,
            "child_gone": gone(child_pid),
        }


@pytest.fixture(scope="module")
def server(setup: dict[str, Any], killed: dict[str, Any]) -> Iterator[str]:
    """Server B: the same config, Redis and artifacts."""
    with running_server(setup["config"]) as url:
        yield url


def test_a_job_whose_server_was_killed_resumes_after_restart(
    server: str, killed: dict[str, Any]
) -> None:
    assert killed["child_gone"], "the killed server's job process outlived it"
    assert killed["first_run"]["attempts"] == 1
    j = wait_for(server, killed["id"], finished)
    assert j["status"] == "succeeded", j["error"]
    assert j["attempts"] == 2 and j["version"] == "v0001"
    assert j["worker"] != killed["first_run"]["worker"]
    logs = "\n".join(j["logs"])
    assert "requeued: orchestrator restarted while running (its lease expired) (attempt 1)" in logs
    assert "attempt 2 started" in logs and "succeeded: coe v0001" in logs


def test_metrics_plot_and_version_of_the_finished_job(
    server: str, killed: dict[str, Any], routerbench: RoutingDataset, tmp_path: Path
) -> None:
    j = wait_for(server, killed["id"], finished)
    m = j["metrics"]
    # The held-out split, recomputed here the way `orchestrator eval` cuts it.
    data, _ = sample(routerbench, LIMIT, seed=0).complete()
    train, test = split(data, 0.3, seed=0, salt="test")
    assert (m["train_rows"], m["test_rows"]) == (len(train), len(test))
    singles = np.nan_to_num(test.scores, nan=0.0).mean(axis=0)
    assert m["best_single"] == test.models[int(np.argmax(singles))]
    assert m["best_single_accuracy"] == pytest.approx(singles.max())
    assert 0 <= m["accuracy"] <= m["oracle_accuracy"] <= 1
    assert m["knob"] == "cost_weight" and m["knob_value"] == 0.0
    assert m["train"]["categories"] == 3 and not m["test_seen_in_training"]

    r = httpx.get(server + j["plot_url"], timeout=30)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content.startswith(b"\x89PNG\r\n\x1a\n") and len(r.content) > 10_000

    routers = httpx.get(f"{server}/admin/routers", timeout=30).json()["data"]
    coe = next(r for r in routers if r["strategy"] == "coe")
    (v1,) = coe["versions"]
    assert v1["version"] == "v0001" and v1["job"] == killed["id"] and v1["has_plot"]
    assert v1["metrics"]["evaluation"]["accuracy"] == m["accuracy"]
    assert v1["dataset"]["name"] == "routerbench" and v1["dataset"]["rows"] == len(train)

    with Client(server) as sdk:  # the SDK reads the same routes
        got = sdk.admin.jobs.get(killed["id"])
        assert got.done and got.version == "v0001" and got.metrics == m
        assert killed["id"] in [x.id for x in sdk.admin.jobs.list()]

    runner = CliRunner()
    shown = runner.invoke(cli, ["jobs", "show", killed["id"], "--url", server])
    assert shown.exit_code == 0, shown.output
    assert f"{killed['id']}  succeeded  coe  v0001" in shown.output
    png = tmp_path / "plot.png"
    saved = runner.invoke(cli, ["jobs", "plot", killed["id"], "-o", str(png), "--url", server])
    assert saved.exit_code == 0 and png.read_bytes() == r.content


def to_jsonl(data: RoutingDataset) -> str:
    lines = []
    for i, prompt in enumerate(data.prompts):
        scores = {m: float(s) for m, s in zip(data.models, data.scores[i], strict=True)}
        costs = {m: float(c) for m, c in zip(data.models, data.costs[i], strict=True)}
        lines.append(
            json.dumps(
                {
                    "prompt": prompt,
                    "category": data.categories[i],
                    "scores": scores,
                    "costs": costs,
                }
            )
        )
    return "\n".join(lines)


def test_an_uploaded_jsonl_job_trains_while_a_queued_one_is_cancelled(
    server: str, killed: dict[str, Any], routerbench: RoutingDataset, setup: dict[str, Any]
) -> None:
    wait_for(server, killed["id"], finished)
    traffic, _ = sample(routerbench, LIMIT, seed=1).complete()
    upload = setup["root"] / "traffic.jsonl"
    upload.write_text(to_jsonl(traffic))
    runner = CliRunner()
    submit = runner.invoke(
        cli,
        [
            *("jobs", "submit", "coe", "--jsonl", str(upload), "--label", "traffic"),
            *("--option", "cost_weight=0.5", "--url", server),
        ],
    )
    assert submit.exit_code == 0, submit.output
    upload_id = submit.output.strip().splitlines()[-1]
    other = runner.invoke(cli, ["jobs", "submit", "coe", "--limit", "50", "--url", server])
    assert other.exit_code == 0, other.output
    other_id = other.output.strip().splitlines()[-1]
    cancelled = runner.invoke(cli, ["jobs", "cancel", other_id, "--url", server])
    assert cancelled.exit_code == 0, cancelled.output
    assert job(server, other_id)["status"] == "cancelled"  # it waited behind the upload

    j = wait_for(server, upload_id, finished)
    assert j["status"] == "succeeded", j["error"]
    assert j["version"] == "v0002"
    assert j["request"]["dataset"]["jsonl"] == f"<{len(traffic)} uploaded lines>"
    meta = json.loads((Path(j["artifact_path"]) / "meta.json").read_text())
    assert meta["dataset"]["name"] == "traffic" and meta["options"]["cost_weight"] == 0.5
    assert meta["job"] == upload_id
    stored = setup["root"] / "artifacts" / ".uploads" / f"{upload_id}.jsonl"
    deadline = time.monotonic() + 30
    while stored.exists():  # deleted by the worker once the job's process has exited
        assert time.monotonic() < deadline, f"{stored} outlived its job"
        time.sleep(0.1)
    listed = runner.invoke(cli, ["jobs", "list", "--url", server])
    assert f"{other_id}  cancelled" in listed.output
    assert f"{upload_id}  succeeded  coe  v0002" in listed.output


def test_promotion_and_rollback_under_load_fail_no_request(
    server: str, killed: dict[str, Any], routerbench: RoutingDataset
) -> None:
    routers = httpx.get(f"{server}/admin/routers", timeout=30).json()["data"]
    assert [v["version"] for v in next(r for r in routers if r["strategy"] == "coe")["versions"]][
        :2
    ] == ["v0001", "v0002"], "the earlier tests train these"
    runner = CliRunner()
    first = runner.invoke(cli, ["jobs", "promote", "coe", "v0001", "--url", server])
    assert first.exit_code == 0 and "→ v0001" in first.output, first.output
    complete, _ = routerbench.complete()  # every replay expert has an answer for these
    _, test = split(complete, 0.3, seed=0, salt="test")
    prompts = test.prompts[:40]

    def chat(client: httpx.Client, prompt: str) -> httpx.Response:
        body = {"model": "router/coe", "messages": [{"role": "user", "content": prompt}]}
        return client.post(f"{server}/v1/chat/completions", json=body, timeout=120)

    with httpx.Client() as c:  # the first request builds CoE here (MiniLM): before the load
        warm = chat(c, prompts[0])
        assert warm.status_code == 200 and warm.json()["routing"]["version"] == "v0001"

    results: list[tuple[float, int, str | None]] = []
    stop = threading.Event()

    def load(offset: int) -> None:
        with httpx.Client() as client:
            i = offset
            while not stop.is_set():
                start = time.monotonic()
                r = chat(client, prompts[i % len(prompts)])
                version = r.json()["routing"]["version"] if r.status_code == 200 else None
                results.append((start, r.status_code, version))
                i += 4

    def after(t: float, n: int) -> None:
        deadline = time.monotonic() + 300
        while sum(1 for s, _, _ in list(results) if s > t) < n:
            assert time.monotonic() < deadline, "the load stalled"
            time.sleep(0.05)

    threads = [threading.Thread(target=load, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    try:
        after(0, 20)
        asked = time.monotonic()
        r = httpx.post(
            f"{server}/admin/routers/coe/promote", json={"version": "v0002"}, timeout=300
        )
        promoted = time.monotonic()
        assert r.status_code == 200, r.text
        assert r.json() == {
            "strategy": "coe",
            "promoted": "v0002",
            "previous": "v0001",
            "history": ["v0002", "v0001"],
        }
        after(promoted, 20)
        rolling = time.monotonic()
        back = runner.invoke(cli, ["jobs", "rollback", "coe", "--url", server])
        rolled = time.monotonic()
        assert back.exit_code == 0 and "v0002 → v0001" in back.output, back.output
        after(rolled, 20)
    finally:
        stop.set()
        for t in threads:
            t.join(60)

    assert [code for _, code, _ in results if code != 200] == []
    before = {v for s, _, v in results if s < asked}
    during = {v for s, _, v in results if promoted < s < rolling}
    after_rollback = {v for s, _, v in results if s > rolled}
    assert before == {"v0001"} and during == {"v0002"} and after_rollback == {"v0001"}
    routers = httpx.get(f"{server}/admin/routers", timeout=30).json()["data"]
    coe = next(r for r in routers if r["strategy"] == "coe")
    assert (coe["promoted"], coe["serving"], coe["history"]) == ("v0001", "v0001", ["v0001"])


def test_admin_errors_on_a_live_server(server: str, killed: dict[str, Any]) -> None:
    def error(r: httpx.Response, status: int) -> dict[str, Any]:
        assert r.status_code == status, r.text
        body: dict[str, Any] = r.json()["error"]
        return body

    assert error(httpx.get(f"{server}/admin/jobs/job_nope"), 404)["param"] == "job_id"
    done = killed["id"]
    err = error(httpx.post(f"{server}/admin/jobs/{done}/cancel"), 400)
    assert err["code"] == "job_finished" and "already succeeded" in err["message"]
    err = error(httpx.post(f"{server}/admin/routers/coe/promote", json={"version": "v0099"}), 404)
    assert "saved versions: v0001, v0002" in err["message"]
    err = error(httpx.post(f"{server}/admin/routers/coe/rollback"), 400)
    assert err["code"] == "nothing_to_roll_back"
