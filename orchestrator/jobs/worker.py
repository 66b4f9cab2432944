"""The job worker of one server process: :class:`JobRunner` and where a run executes.

Lifecycle, driven by the HTTP app's lifespan (:mod:`orchestrator.admin`):

1. :meth:`JobRunner.start` — a loop starts; each turn (every ``jobs.poll_s``, or at once after
   a submission here) it first *recovers* running jobs whose lease expired (their process
   died: re-queued, or failed after ``max_attempts`` runs), then *claims* queued jobs while
   fewer than ``jobs.max_concurrent`` run across all replicas.
2. Per claimed job, a monitor task starts the run on an executor — a child process
   (``python -m orchestrator.jobs.child``) or a Ray task — and, every ``min(poll_s, lease_s/3)``,
   renews the lease and checks for a cancel request (then stops the run and records
   ``cancelled``). When the run ends, its own result is already in Redis; an abnormal exit
   (killed, crashed) is recorded as ``failed`` with the exit code.
3. :meth:`JobRunner.stop` — the loop ends; each running job's run is stopped and the job goes
   back to the head of the queue without counting the run (a graceful shutdown is not the
   job's fault). A SIGKILL skips this: the lease then expires and step 1 of a surviving or
   restarted replica recovers the job.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import socket
import sys
import uuid
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from orchestrator.config import OrchestratorConfig
from orchestrator.jobs.models import TERMINAL
from orchestrator.jobs.queue import JobQueue
from orchestrator.store import RedisStore

log = logging.getLogger(__name__)

STOP_GRACE_S = 5.0
EXIT_WAIT_S = 60.0
"""How long a run that recorded its result may take to exit before it is stopped."""


class Execution(ABC):
    """One running attempt."""

    pid: int | None = None

    @abstractmethod
    async def wait(self, timeout_s: float) -> int | None:
        """Its exit code if it ended within ``timeout_s``, else None."""

    @abstractmethod
    async def stop(self) -> None:
        """End it now (idempotent)."""


class Executor(ABC):
    name: str

    @abstractmethod
    async def start(self, payload: dict[str, Any]) -> Execution:
        """Start :func:`~orchestrator.jobs.work.run_job` on ``payload``."""


class _ProcessExecution(Execution):
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.pid = proc.pid
        self._done = asyncio.ensure_future(proc.wait())

    async def wait(self, timeout_s: float) -> int | None:
        try:
            return await asyncio.wait_for(asyncio.shield(self._done), timeout_s)
        except TimeoutError:
            return None

    async def stop(self) -> None:
        if self.proc.returncode is not None:
            return
        self.proc.terminate()
        if await self.wait(STOP_GRACE_S) is None:
            self.proc.kill()
            await self._done


class ProcessExecutor(Executor):
    """Each run in a fresh Python process on this machine (spawned, not forked: the server
    has threads and an event loop that must not be copied)."""

    name = "process"

    async def start(self, payload: dict[str, Any]) -> Execution:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "orchestrator.jobs.child", stdin=asyncio.subprocess.PIPE
        )
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(payload).encode())
        await proc.stdin.drain()
        proc.stdin.close()
        return _ProcessExecution(proc)


class _RayExecution(Execution):
    def __init__(self, ref: Any) -> None:
        self.ref = ref
        self._done = asyncio.wrap_future(ref.future())

    async def wait(self, timeout_s: float) -> int | None:
        try:
            return int(await asyncio.wait_for(asyncio.shield(self._done), timeout_s))
        except TimeoutError:
            return None
        except Exception as e:  # the task raised or was cancelled
            log.warning("ray task of a job ended with %s", type(e).__name__)
            return 1

    async def stop(self) -> None:
        import ray

        if not self._done.done():
            ray.cancel(self.ref, force=True)
            await self.wait(STOP_GRACE_S)


class RayExecutor(Executor):
    """Each run as a Ray task (``jobs.num_cpus`` reserved) on the cluster this process is
    connected to. A task fate-shares with the process that submitted it: if that process
    dies, Ray ends the task too, and the job's lease lapses like a local one."""

    name = "ray"

    def __init__(self, num_cpus: float) -> None:
        self.num_cpus = num_cpus
        self._task: Any = None

    async def start(self, payload: dict[str, Any]) -> Execution:
        if self._task is None:
            from orchestrator.jobs.work import ray_task

            self._task = ray_task(self.num_cpus)
        return _RayExecution(self._task.remote(payload))


def make_executor(config: OrchestratorConfig) -> Executor:
    """``jobs.executor``; ``auto`` is Ray when this process is already connected to Ray."""
    choice = config.jobs.executor
    if choice == "auto":
        ray = sys.modules.get("ray")
        choice = "ray" if ray is not None and ray.is_initialized() else "process"
    if choice == "ray":
        return RayExecutor(config.jobs.num_cpus)
    return ProcessExecutor()


def uploads_dir(config: OrchestratorConfig) -> Path:
    """Where uploaded JSONL datasets wait for their job (beside the artifacts, so every worker
    that can write artifacts can read them)."""
    return config.artifacts_dir / ".uploads"


class JobRunner:
    """Works the queue from this process (see the module docstring for the lifecycle)."""

    def __init__(
        self,
        config: OrchestratorConfig,
        store: RedisStore,
        executor: Executor | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.queue = JobQueue(store, config.jobs)
        self.executor = executor or make_executor(config)
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.running: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._redis_down = False

    async def start(self) -> None:
        self._loop_task = asyncio.create_task(self._loop(), name="job-runner")
        log.info("job worker %s started (executor: %s)", self.worker_id, self.executor.name)

    def wake(self) -> None:
        """Look for work now (a job was just submitted)."""
        self._wake.set()

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
            self._loop_task = None
        monitors = list(self.running.values())
        for task in monitors:
            task.cancel()
        await asyncio.gather(*monitors, return_exceptions=True)

    # -- the loop --------------------------------------------------------------------------------

    async def _loop(self) -> None:
        import redis

        while True:
            try:
                await self.tick()
                if self._redis_down:
                    log.info("job worker: redis is back")
                self._redis_down = False
            except (redis.RedisError, OSError) as e:
                if not self._redis_down:
                    log.warning("job worker: redis unavailable (%s); retrying", e)
                self._redis_down = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.config.jobs.poll_s)
            self._wake.clear()

    async def tick(self) -> None:
        """One turn: recover jobs with expired leases, then claim and start what fits."""
        for job_id, outcome in (await self.queue.recover()).items():
            log.warning("job %s: its process stopped mid-run; %s", job_id, outcome)
            if outcome in ("failed", "cancelled"):
                await self._cleanup(job_id)
        while (claimed := await self.queue.claim(self.worker_id)) is not None:
            job_id, attempt = claimed
            task = asyncio.create_task(self._run(job_id, attempt), name=f"job-{job_id}")
            self.running[job_id] = task
            task.add_done_callback(functools.partial(self._forget, job_id))

    def _forget(self, job_id: str, _: asyncio.Task[None]) -> None:
        self.running.pop(job_id, None)

    # -- one job ---------------------------------------------------------------------------------

    def payload(self, job_id: str, attempt: int, fields: dict[str, Any]) -> dict[str, Any]:
        return {
            "job": job_id,
            "attempt": attempt,
            "redis_url": self.config.redis_url,
            "namespace": self.store.namespace,
            "artifacts_dir": str(self.config.artifacts_dir.resolve()),
            "jobs": self.config.jobs.model_dump(mode="json"),
            "spec": json.loads(fields["spec"]),
        }

    async def _run(self, job_id: str, attempt: int) -> None:
        import redis

        execution: Execution | None = None
        jobs = self.config.jobs
        tick = min(jobs.poll_s, jobs.lease_s / 3)
        try:
            fields = await self.queue.get(job_id, log_lines=0)
            if fields is None:  # expired under us: nothing to run
                return
            execution = await self.executor.start(self.payload(job_id, attempt, fields))
            where = f"process {execution.pid}" if execution.pid else f"{self.executor.name} task"
            await self.queue.update(
                job_id,
                attempt,
                {"pid": str(execution.pid or "")},
                log=f"attempt {attempt}: {where} on {self.worker_id}",
            )
            while True:
                code = await execution.wait(tick)
                if code is not None:
                    await self._ended(job_id, attempt, code)
                    return
                try:
                    beat = await self.queue.heartbeat(job_id, self.worker_id, attempt)
                except (redis.RedisError, OSError):
                    continue  # the lease may lapse; recovery then re-runs the job elsewhere
                if beat == -1:
                    await self._lease_gone(job_id, attempt, execution)
                    return
                if beat == 1:
                    await execution.stop()
                    await self.queue.finish(
                        job_id,
                        attempt,
                        "cancelled",
                        {"error": "cancelled by an administrator while running"},
                        log="cancelled: the run was stopped",
                    )
                    await self._cleanup(job_id)
                    return
        except asyncio.CancelledError:
            if execution is not None:
                await execution.stop()
            # If Redis is unreachable, the lease lapses and recovery re-queues the job.
            with contextlib.suppress(redis.RedisError, OSError):
                await self.queue.release(
                    job_id, attempt, "the orchestrator running it shut down gracefully"
                )
            raise
        except Exception as e:
            log.exception("job %s: cannot run", job_id)
            if execution is not None:
                await execution.stop()
            with contextlib.suppress(redis.RedisError, OSError):
                await self.queue.finish(
                    job_id,
                    attempt,
                    "failed",
                    {"error": f"could not run: {type(e).__name__}: {e}"},
                    log=f"failed: could not run: {e}",
                )

    async def _lease_gone(self, job_id: str, attempt: int, execution: Execution) -> None:
        """The lease vanished: either this run recorded its result (which drops the lease) and
        its process is exiting, or the lease lapsed and recovery gave the job to another run."""
        fields = await self.queue.get(job_id, log_lines=0) or {}
        if fields.get("attempts") == str(attempt) and fields.get("status") in TERMINAL:
            code = await execution.wait(EXIT_WAIT_S)
            if code is None:
                await execution.stop()
            await self._cleanup(job_id)
            return
        log.warning("job %s: attempt %d lost its lease (re-queued); stopping it", job_id, attempt)
        await execution.stop()

    async def _ended(self, job_id: str, attempt: int, code: int) -> None:
        """The run ended with ``code``. It recorded its own result unless it crashed: then this
        (fenced, so a no-op after a recorded result) marks it failed with the exit code."""
        if code == 0:
            reason = "its process exited without recording a result"
        elif code < 0:
            reason = f"its process was killed by signal {-code}"
            if -code == 9:
                reason += " (out of memory, or killed from outside)"
        else:
            reason = f"its process exited with code {code}"
        await self.queue.finish(job_id, attempt, "failed", {"error": reason}, log=reason)
        await self._cleanup(job_id)

    async def _cleanup(self, job_id: str) -> None:
        """Delete the job's uploaded dataset once the job is over."""
        upload = uploads_dir(self.config) / f"{job_id}.jsonl"
        await asyncio.to_thread(upload.unlink, missing_ok=True)
