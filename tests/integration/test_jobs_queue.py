"""The job queue, the job runner and router promotion against a real Redis (no training: the
runner's executor is a fake at its ABC, standing in for the child process; a tiny trainable
strategy stands in for CoE in the hot-swap tests). Real training, a real killed server and
real load are in test_jobs_server.py."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from orchestrator.config import JobsConfig, load_config
from orchestrator.evaluation.datasets import RoutingDataset
from orchestrator.ingress import Target
from orchestrator.jobs.promotion import Promotions
from orchestrator.jobs.queue import RESTART_REASON, JobQueue, JobReporter
from orchestrator.jobs.work import parse_jsonl
from orchestrator.jobs.worker import Execution, Executor, JobRunner
from orchestrator.route import StrategySet
from orchestrator.store import RedisStore
from orchestrator.types import Decision, Message, Query
from routers import STRATEGIES
from routers.artifacts import ArtifactStore
from routers.base import StrategyOptions
from routers.trainable import FitResult, TrainableStrategy

ECHO = [
    {"name": "a", "backend": "echo", "model": "a"},
    {"name": "b", "backend": "echo", "model": "b"},
]
SPEC = {"strategy": "coe", "dataset": "routerbench", "options": {}}


async def until(check: Callable[[], Any], timeout_s: float = 20.0) -> Any:
    """Poll an async or sync ``check`` until it returns something truthy."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisStore]:
    s = RedisStore(redis_url, namespace=f"t{uuid.uuid4().hex[:8]}")
    yield s
    await s.close()


def jobs_config(**kw: Any) -> JobsConfig:
    base: dict[str, Any] = {
        "lease_s": 3.0,
        "poll_s": 0.1,
        "max_attempts": 2,
        "keep_finished_s": 600,
        "max_log_lines": 5,
    }
    return JobsConfig.model_validate({**base, **kw})


async def status(queue: JobQueue, job_id: str) -> str:
    fields = await queue.get(job_id, log_lines=0)
    assert fields is not None
    return str(fields["status"])


# -- the queue -----------------------------------------------------------------------------------


async def test_fifo_claims_and_a_cluster_wide_limit(store: RedisStore) -> None:
    config = jobs_config(max_concurrent=2)
    replica_a, replica_b = JobQueue(store, config), JobQueue(store, config)
    ids = [await replica_a.submit("coe", {"n": i}, SPEC) for i in range(3)]
    assert await replica_a.claim("A") == (ids[0], 1)
    assert await replica_b.claim("B") == (ids[1], 1)
    assert await replica_b.claim("B") is None  # two run, across both replicas: the limit
    assert await status(replica_a, ids[2]) == "queued"
    fields = await replica_a.get(ids[0])
    assert fields is not None
    assert fields["status"] == "running" and fields["worker"] == "A" and fields["attempts"] == "1"
    assert json.loads(fields["spec"])["job"] == ids[0]
    pttl = await store.client.pttl(replica_a.keys.lease(ids[0]))
    assert 0 < pttl <= 3000
    assert await replica_a.finish(ids[0], 1, "succeeded", {"version": "v0001"}, log="done")
    assert await replica_b.claim("B") == (ids[2], 1)  # a slot freed


async def test_an_expired_lease_requeues_then_fails_with_the_reason(store: RedisStore) -> None:
    queue = JobQueue(store, jobs_config(max_attempts=2))
    job_id = await queue.submit("coe", {}, SPEC)
    other = await queue.submit("coe", {}, SPEC)
    assert await queue.claim("dead-worker") == (job_id, 1)
    assert await queue.recover() == {}  # its lease is alive
    await store.client.delete(queue.keys.lease(job_id))  # the process died: no renewal
    assert await queue.recover() == {job_id: "requeued"}
    fields = await queue.get(job_id)
    assert fields is not None and fields["status"] == "queued"
    assert RESTART_REASON in fields["stage"] and "worker" not in fields
    assert await queue.claim("next") == (job_id, 2)  # at the head, ahead of `other`
    await store.client.delete(queue.keys.lease(job_id))
    assert await queue.recover() == {job_id: "failed"}
    fields = await queue.get(job_id, log_lines=10)
    assert fields is not None and fields["status"] == "failed"
    assert fields["error"] == f"{RESTART_REASON} (attempt 2 of 2)"
    assert any("failed: " + RESTART_REASON in line for line in fields["_logs"])
    assert 0 < await store.client.ttl(queue.keys.job(job_id)) <= 600  # kept, then forgotten
    assert await queue.claim("next") == (other, 1)


async def test_a_stale_run_cannot_write_over_its_replacement(
    store: RedisStore, redis_url: str
) -> None:
    config = jobs_config()
    queue = JobQueue(store, config)
    job_id = await queue.submit("coe", {}, SPEC)
    await queue.claim("w1")
    first = JobReporter(redis_url, store.namespace, job_id, 1, config)
    first.update(log="embedding", progress="0.3", stage="embedding prompts")
    assert first.owned
    await store.client.delete(queue.keys.lease(job_id))
    await queue.recover()
    await queue.claim("w2")
    second = JobReporter(redis_url, store.namespace, job_id, 2, config)
    first.update(progress="0.9")
    assert not first.owned
    assert not first.finish("succeeded", "stale", version="v0007")
    fields = await queue.get(job_id)
    assert fields is not None and fields["status"] == "running" and fields["progress"] == "0"
    assert second.finish("succeeded", "done", version="v0008")
    fields = await queue.get(job_id)
    assert fields is not None and fields["status"] == "succeeded"
    assert fields["version"] == "v0008"
    assert not await store.client.sismember(queue.keys.running, job_id)
    assert not await store.client.exists(queue.keys.lease(job_id))
    first.close()
    second.close()


async def test_cancel_queued_running_and_finished_jobs(store: RedisStore) -> None:
    queue = JobQueue(store, jobs_config())
    running, queued, done = [await queue.submit("coe", {}, SPEC) for _ in range(3)]
    assert await queue.claim("w") == (running, 1)
    assert await queue.heartbeat(running, "w", 1) == 0
    assert await queue.cancel(queued) == "cancelled"
    assert await queue.cancel(running) == "cancelling"
    assert await queue.heartbeat(running, "w", 1) == 1  # the worker learns of it
    assert await queue.heartbeat(running, "someone-else", 1) == -1
    assert await queue.heartbeat(running, "w", 2) == -1  # not this attempt's lease
    assert await queue.finish(running, 1, "cancelled")  # what the worker then records
    await store.client.rpush(queue.keys.queue, "job_expired")  # an id whose hash is gone
    assert await queue.claim("w") == (done, 1)  # skips it; the cancelled one left the queue
    assert await queue.finish(done, 1, "succeeded")
    assert await queue.cancel(done) == "succeeded"
    assert await queue.cancel("job_unknown") is None
    fields = await queue.get(queued)
    assert fields is not None and fields["error"] == "cancelled before it started"


async def test_graceful_release_requeues_without_counting_the_run(store: RedisStore) -> None:
    queue = JobQueue(store, jobs_config(max_attempts=1))
    job_id = await queue.submit("coe", {}, SPEC)
    await queue.claim("w")
    assert await queue.release(job_id, 1, "shutting down") == 1
    fields = await queue.get(job_id)
    assert fields is not None and fields["status"] == "queued" and fields["attempts"] == "0"
    assert await queue.claim("w") == (job_id, 1)  # max_attempts=1 still allows this run
    await queue.cancel(job_id)
    assert await queue.release(job_id, 1, "shutting down") == 2  # a cancel wins
    assert await status(queue, job_id) == "cancelled"


async def test_logs_keep_the_newest_lines_and_listing_forgets_expired_jobs(
    store: RedisStore,
) -> None:
    queue = JobQueue(store, jobs_config(max_log_lines=5))
    job_id = await queue.submit("coe", {}, SPEC)
    await queue.claim("w")
    for i in range(12):
        await queue.update(job_id, 1, {"progress": str(i / 12)}, log=f"line {i}")
    fields = await queue.get(job_id, log_lines=50)
    assert fields is not None
    assert [line.split(" ", 1)[1] for line in fields["_logs"]] == [
        f"line {i}" for i in range(7, 12)
    ]
    gone = await queue.submit("coe", {}, SPEC)
    await store.client.delete(queue.keys.job(gone))  # as if keep_finished_s passed
    assert [f["id"] for f in await queue.list()] == [job_id]
    assert await store.client.zscore(queue.keys.index, gone) is None


async def test_promote_and_rollback_form_a_stack(store: RedisStore) -> None:
    promotions = Promotions(store)
    assert await promotions.rollback("coe") is None
    assert await promotions.promote("coe", "v0001") is None
    assert await promotions.rollback("coe") is None  # nothing earlier
    assert await promotions.promote("coe", "v0002") == "v0001"
    assert await promotions.promote("coe", "v0002") == "v0002"  # no-op, not pushed twice
    assert await promotions.promote("coe", "v0003") == "v0002"
    assert await promotions.history("coe") == ["v0003", "v0002", "v0001"]
    assert await promotions.rollback("coe") == ("v0003", "v0002")
    assert await promotions.promoted() == {"coe": "v0002"}
    assert await promotions.rollback("coe") == ("v0002", "v0001")
    assert await promotions.rollback("coe") is None
    assert await promotions.promoted() == {"coe": "v0001"}


# -- the runner, with a fake executor ------------------------------------------------------------


class FakeExecution(Execution):
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.code: int | None = None
        self.ended = asyncio.Event()
        self.stopped = False

    def exit(self, code: int) -> None:
        self.code = code
        self.ended.set()

    async def wait(self, timeout_s: float) -> int | None:
        try:
            await asyncio.wait_for(self.ended.wait(), timeout_s)
        except TimeoutError:
            return None
        return self.code

    async def stop(self) -> None:
        self.stopped = True
        self.exit(-15)


class FakeExecutor(Executor):
    name = "fake"

    def __init__(self) -> None:
        self.started: list[tuple[dict[str, Any], FakeExecution]] = []

    async def start(self, payload: dict[str, Any]) -> Execution:
        execution = FakeExecution(4000 + len(self.started))
        self.started.append((payload, execution))
        return execution


def runner_for(store: RedisStore, tmp_path: Path, **jobs: Any) -> tuple[JobRunner, FakeExecutor]:
    config = load_config(
        None,
        experts=ECHO,
        routing={"default_strategy": "random"},
        redis_url=store.url,
        artifacts_dir=tmp_path,
        jobs={"lease_s": 3.0, "poll_s": 0.1, "max_attempts": 2, **jobs},
    )
    executor = FakeExecutor()
    return JobRunner(config, store, executor), executor


async def test_runner_runs_jobs_and_records_crashes(
    store: RedisStore, tmp_path: Path, redis_url: str
) -> None:
    runner, executor = runner_for(store, tmp_path)
    queue = runner.queue
    ok = await queue.submit("coe", {}, {**SPEC, "limit": 50})
    crash = await queue.submit("coe", {}, SPEC)
    await runner.start()
    try:
        await until(lambda: len(executor.started) == 1)
        payload, execution = executor.started[0]
        assert payload["job"] == ok and payload["attempt"] == 1
        assert payload["spec"]["limit"] == 50 and payload["redis_url"] == redis_url
        assert payload["artifacts_dir"] == str(tmp_path.resolve())
        # What the child does at the end of a run: record the result, then exit 0.
        child = JobReporter(redis_url, store.namespace, ok, 1, runner.config.jobs)
        assert child.finish("succeeded", "done", version="v0001")
        child.close()
        execution.exit(0)
        await until(lambda: len(executor.started) == 2)  # limit 1: the next starts after
        assert (await queue.get(ok) or {})["status"] == "succeeded"
        fields = await queue.get(crash)
        assert fields is not None and fields["pid"] == "4001"
        executor.started[1][1].exit(-9)
        await until(lambda: _is(queue, crash, "failed"))
        fields = await queue.get(crash)
        assert fields is not None
        assert fields["error"].startswith("its process was killed by signal 9")
    finally:
        await runner.stop()


async def _is(queue: JobQueue, job_id: str, expected: str) -> bool:
    return await status(queue, job_id) == expected


async def test_runner_stops_a_cancelled_run(store: RedisStore, tmp_path: Path) -> None:
    runner, executor = runner_for(store, tmp_path)
    job_id = await runner.queue.submit("coe", {}, SPEC)
    await runner.start()
    try:
        await until(lambda: executor.started)
        assert await runner.queue.cancel(job_id) == "cancelling"
        await until(lambda: _is(runner.queue, job_id, "cancelled"))
        assert executor.started[0][1].stopped
    finally:
        await runner.stop()


async def test_runner_waits_for_a_finished_run_to_exit_then_deletes_its_upload(
    store: RedisStore, tmp_path: Path, redis_url: str
) -> None:
    runner, executor = runner_for(store, tmp_path)
    job_id = await runner.queue.submit("coe", {}, SPEC)
    upload = tmp_path / ".uploads" / f"{job_id}.jsonl"
    upload.parent.mkdir()
    upload.write_text("{}")
    await runner.start()
    try:
        await until(lambda: executor.started)
        child = JobReporter(redis_url, store.namespace, job_id, 1, runner.config.jobs)
        assert child.finish("succeeded", "done", version="v0001")  # drops the lease...
        child.close()
        await asyncio.sleep(0.5)  # ...and the process takes a while to exit
        execution = executor.started[0][1]
        assert not execution.stopped and upload.exists()
        execution.exit(0)
        await until(lambda: not upload.exists())
        assert not execution.stopped and await status(runner.queue, job_id) == "succeeded"
    finally:
        await runner.stop()


async def test_runner_stops_a_run_that_lost_its_lease(store: RedisStore, tmp_path: Path) -> None:
    runner, executor = runner_for(store, tmp_path)
    job_id = await runner.queue.submit("coe", {}, SPEC)
    await runner.start()
    try:
        await until(lambda: executor.started)
        # The lease lapsed (say, a long pause) and another replica re-queued the job.
        other = JobQueue(store, jobs_config())
        await store.client.delete(runner.queue.keys.lease(job_id))
        await other.recover()
        await until(lambda: executor.started[0][1].stopped)
        await until(lambda: len(executor.started) == 2)  # and this runner claims it again
        assert executor.started[1][0]["attempt"] == 2
    finally:
        await runner.stop()


async def test_runner_shutdown_puts_running_jobs_back(store: RedisStore, tmp_path: Path) -> None:
    runner, executor = runner_for(store, tmp_path)
    job_id = await runner.queue.submit("coe", {}, SPEC)
    await runner.start()
    await until(lambda: executor.started)
    await runner.stop()
    assert executor.started[0][1].stopped
    fields = await runner.queue.get(job_id, log_lines=5)
    assert fields is not None and fields["status"] == "queued" and fields["attempts"] == "0"
    assert "shut down gracefully" in fields["_logs"][-1]


async def test_runners_share_the_limit_and_recover_a_dead_replicas_job(
    store: RedisStore, tmp_path: Path
) -> None:
    queue = JobQueue(store, jobs_config())
    orphan = await queue.submit("coe", {}, SPEC)
    waiting = await queue.submit("coe", {}, SPEC)
    assert await queue.claim("dead-replica") == (orphan, 1)
    await store.client.delete(queue.keys.lease(orphan))  # that replica was SIGKILLed
    first, first_exec = runner_for(store, tmp_path)
    second, second_exec = runner_for(store, tmp_path)
    await first.start()
    await second.start()
    try:
        await until(lambda: first_exec.started or second_exec.started)
        await asyncio.sleep(0.5)  # several turns of both loops
        started = first_exec.started + second_exec.started
        assert len(started) == 1  # max_concurrent=1 across the two replicas
        payload, execution = started[0]
        assert (payload["job"], payload["attempt"]) == (orphan, 2)  # recovered, run again
        execution.exit(3)
        await until(lambda: len(first_exec.started + second_exec.started) == 2)
        assert (first_exec.started + second_exec.started)[1][0]["job"] == waiting
        fields = await queue.get(orphan)
        assert fields is not None and fields["error"] == "its process exited with code 3"
    finally:
        await first.stop()
        await second.stop()


# -- hot swap of promoted versions in StrategySet -------------------------------------------------


class PickStrategy(TrainableStrategy):
    """Always routes to the recorded model with the best mean score in its training data."""

    name = "pick"

    @classmethod
    def fit(cls, data: RoutingDataset, options: StrategyOptions) -> FitResult:
        return FitResult({"pick": int(np.argmax(np.nanmean(data.scores, axis=0)))})

    def load_state(self, state: dict[str, Any]) -> None:
        self.pick = int(state["pick"])

    def route(self, queries: Sequence[Query]) -> list[Decision]:
        self.ensure_ready()
        scores = np.zeros(len(self.models))
        return [self.decision([self.pick], scores, "best on average") for _ in queries]


def outcomes(best: str) -> RoutingDataset:
    rows = [
        json.dumps(
            {"prompt": f"p{i}", "scores": {"a": float(best == "a"), "b": float(best == "b")}}
        )
        for i in range(4)
    ]
    return parse_jsonl("\n".join(rows))


QUERY = Query(messages=(Message("user", "hello"),))


@pytest.fixture
def swap_setup(redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setitem(STRATEGIES._entries, "pick", f"{__name__}:PickStrategy")
    store = ArtifactStore(tmp_path)
    assert PickStrategy.train(outcomes("a"), {}, store).version == "v0001"
    assert PickStrategy.train(outcomes("b"), {}, store).version == "v0002"
    url = redis_url.rsplit("/", 1)[0] + "/7"  # promotions use the shared namespace: own db
    redis.Redis.from_url(url).flushdb()

    def config(**kw: Any) -> Any:
        return load_config(
            None,
            experts=ECHO,
            routing={"default_strategy": "random", "strategies": {"pick": {"artifact": "v0001"}}},
            artifacts_dir=tmp_path,
            **{"redis_url": url, **kw},
        )

    return config, url


async def test_promotion_swaps_the_instance_and_in_flight_requests_keep_theirs(
    swap_setup: Any, caplog: pytest.LogCaptureFixture
) -> None:
    config, url = swap_setup
    strategies = StrategySet(config())
    store = RedisStore(url)
    promotions = Promotions(store)
    try:
        old = strategies.get("pick")
        (d,) = old.route([QUERY])
        assert (d.version, d.experts) == ("v0001", ("a",))  # nothing promoted: configured
        assert strategies.refresh() == []
        await promotions.promote("pick", "v0001")
        await promotions.promote("pick", "v0002")
        assert await asyncio.to_thread(strategies.refresh) == ["pick"]
        (held,) = old.route([QUERY])  # a request that started before the swap
        assert (held.version, held.experts) == ("v0001", ("a",))
        (new,) = strategies.get("pick").route([QUERY])
        assert (new.version, new.experts) == ("v0002", ("b",))
        assert strategies.serving()["pick"] == "v0002"
        assert await promotions.rollback("pick") == ("v0002", "v0001")
        assert strategies.refresh() == ["pick"]
        assert strategies.serving()["pick"] == "v0001"
        # A version that cannot build (here: never trained) is logged once and not retried;
        # the current one keeps serving.
        await promotions.promote("pick", "v0009")
        with caplog.at_level(logging.ERROR, logger="orchestrator.route"):
            assert strategies.refresh() == []
            assert strategies.refresh() == []
        assert sum("cannot switch to version v0009" in r.message for r in caplog.records) == 1
        assert strategies.serving()["pick"] == "v0001"
    finally:
        await store.close()


async def test_requests_trigger_the_swap_off_the_request_path(swap_setup: Any) -> None:
    config, url = swap_setup
    strategies = StrategySet(config(jobs={"promotion_poll_s": 0.05}))
    target = Target(expert=None, strategy="pick", resolution="routed")
    store = RedisStore(url)
    try:
        assert (await strategies.decide(QUERY, target)).version == "v0001"
        await Promotions(store).promote("pick", "v0002")
        versions = set()
        for _ in range(200):
            versions.add((await strategies.decide(QUERY, target)).version)
            if "v0002" in versions:
                break
            await asyncio.sleep(0.02)
        assert "v0002" in versions and versions <= {"v0001", "v0002"}
    finally:
        await store.close()


def test_a_replica_started_after_a_promotion_serves_it_else_its_configured_version(
    swap_setup: Any,
) -> None:
    config, url = swap_setup
    redis.Redis.from_url(url).hset("eo:routers:promoted", "pick", "v0002")
    assert StrategySet(config()).get("pick").route([QUERY])[0].version == "v0002"
    redis.Redis.from_url(url).hset("eo:routers:promoted", "pick", "v0005")  # not on this disk
    assert StrategySet(config()).get("pick").route([QUERY])[0].version == "v0001"  # configured
    down = StrategySet(config(redis_url="redis://127.0.0.1:1/0"))
    assert down.get("pick").route([QUERY])[0].version == "v0001"  # configured artifact
    assert down.refresh() == []
