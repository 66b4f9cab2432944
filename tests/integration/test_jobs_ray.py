"""Jobs on Ray: in a process connected to Ray, the job runner's executor is a Ray task that runs
the same ``run_job`` as the local child process and reports into the same Redis."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from orchestrator.config import load_config
from orchestrator.jobs.worker import JobRunner, RayExecutor
from orchestrator.store import RedisStore


async def test_a_job_runs_as_a_ray_task_and_reports_from_it(
    ray_serve: str, redis_url: str, tmp_path: Path
) -> None:
    config = load_config(
        None,
        experts=[{"name": "a", "backend": "echo", "model": "a"}],
        routing={"default_strategy": "random"},
        redis_url=redis_url,
        artifacts_dir=tmp_path,
        jobs={"poll_s": 0.2, "lease_s": 3.0, "num_cpus": 0},
    )
    store = RedisStore(redis_url, namespace=f"t{uuid.uuid4().hex[:8]}")
    runner = JobRunner(config, store)
    assert isinstance(runner.executor, RayExecutor)  # executor "auto", connected to Ray
    missing = tmp_path / "missing.jsonl"
    spec = {"strategy": "coe", "dataset": "jsonl", "path": str(missing), "options": {}}
    job_id = await runner.queue.submit("coe", {}, spec)
    await runner.start()
    try:
        for _ in range(600):
            fields = await runner.queue.get(job_id, log_lines=50)
            assert fields is not None
            if fields["status"] not in ("queued", "running"):
                break
            await asyncio.sleep(0.1)
        assert fields["status"] == "failed"
        # Written by run_job inside the Ray worker (the runner would say "exited with code").
        assert fields["error"] == f"dataset 'jsonl': {missing} is not a file"
        assert any("attempt 1 started" in line for line in fields["_logs"])
        assert fields.get("pid", "") == ""  # no local process
    finally:
        await runner.stop()
        await store.close()
