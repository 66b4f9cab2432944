"""The durable job queue in Redis: a list of queued ids, a hash per job, a lease per running job.

Keys (namespace ``eo``, :class:`~orchestrator.store.RedisStore`)::

    eo:jobs:queue         list   queued job ids; new ones are LPUSHed, workers RPOP (FIFO), a
                                 re-queued job is RPUSHed (it runs next)
    eo:jobs:running       set    ids of running jobs (its size is the cluster-wide concurrency)
    eo:jobs:index         zset   every known id by creation time (listing)
    eo:jobs:job:<id>      hash   status, request, progress, stage, metrics, version, error,
                                 attempts, timestamps, worker, pid, cancel
    eo:jobs:logs:<id>     list   the newest ``jobs.max_log_lines`` log lines
    eo:jobs:lease:<id>    string ``<worker>#<attempt>`` running it, expiring after ``jobs.lease_s``

Life of a job: ``queued`` → (claim) ``running`` → ``succeeded`` | ``failed`` | ``cancelled``.
Every transition is one Lua script, so two replicas never claim one job and the concurrency
limit holds across replicas. The process running a job renews its lease every ``lease_s/3``;
when the lease expired (that process died: SIGKILL, OOM, node lost), any worker's recovery
sweep puts the job back at the head of the queue, or fails it with the reason once
``max_attempts`` runs have started — a job is never silently lost. A job's own process writes
progress and its result *fenced* by its attempt number: a run that lost its lease cannot
overwrite the run that replaced it. Finished jobs and their logs expire after
``keep_finished_s``; Redis' own persistence (AOF/RDB) decides whether they survive a restart
of Redis itself.

The scripts name keys they compute from the namespace, so they need a single Redis (or a
Sentinel-managed primary), not Redis Cluster.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from orchestrator.config import JobsConfig
from orchestrator.jobs.models import Job
from orchestrator.store import RedisStore

RESTART_REASON = "orchestrator restarted while running (its lease expired)"

_LOG = """
local function log(key, line, max)
  if line ~= '' then
    redis.call('RPUSH', key, line)
    redis.call('LTRIM', key, -tonumber(max), -1)
  end
end
"""

# KEYS: queue, running.  ARGV: prefix, limit, worker, lease_ms, now
CLAIM = """
if redis.call('SCARD', KEYS[2]) >= tonumber(ARGV[2]) then return false end
while true do
  local id = redis.call('RPOP', KEYS[1])
  if not id then return false end
  local job = ARGV[1] .. 'job:' .. id
  if redis.call('HGET', job, 'status') == 'queued' then
    redis.call('SADD', KEYS[2], id)
    local attempt = redis.call('HINCRBY', job, 'attempts', 1)
    redis.call('SET', ARGV[1] .. 'lease:' .. id, ARGV[3] .. '#' .. attempt, 'PX', ARGV[4])
    redis.call('HSET', job, 'status', 'running', 'worker', ARGV[3], 'started_at', ARGV[5],
      'stage', 'starting', 'progress', '0')
    redis.call('HDEL', job, 'pid')
    return {id, attempt}
  end
end
"""

# KEYS: running, queue.  ARGV: prefix, id, max_attempts, now, keep_s, max_log, reason, stamp
RECOVER = (
    _LOG
    + """
local lease = ARGV[1] .. 'lease:' .. ARGV[2]
if redis.call('EXISTS', lease) == 1 then return 'alive' end
if redis.call('SREM', KEYS[1], ARGV[2]) == 0 then return 'gone' end
local job = ARGV[1] .. 'job:' .. ARGV[2]
local logs = ARGV[1] .. 'logs:' .. ARGV[2]
if redis.call('HGET', job, 'status') ~= 'running' then return 'stale' end
local attempts = tonumber(redis.call('HGET', job, 'attempts') or '0')
local outcome
if redis.call('HGET', job, 'cancel') == '1' then
  redis.call('HSET', job, 'status', 'cancelled', 'finished_at', ARGV[4], 'stage', 'cancelled',
    'error', 'cancelled; ' .. ARGV[7])
  outcome = 'cancelled'
elseif attempts < tonumber(ARGV[3]) then
  redis.call('HSET', job, 'status', 'queued', 'progress', '0',
    'stage', 'queued again after attempt ' .. attempts .. ': ' .. ARGV[7])
  redis.call('HDEL', job, 'worker', 'pid')
  redis.call('RPUSH', KEYS[2], ARGV[2])
  outcome = 'requeued'
else
  redis.call('HSET', job, 'status', 'failed', 'finished_at', ARGV[4], 'stage', 'failed',
    'error', ARGV[7] .. ' (attempt ' .. attempts .. ' of ' .. ARGV[3] .. ')')
  outcome = 'failed'
end
log(logs, ARGV[8] .. ' ' .. outcome .. ': ' .. ARGV[7] .. ' (attempt ' .. attempts .. ')', ARGV[6])
if outcome ~= 'requeued' then
  redis.call('EXPIRE', job, ARGV[5])
  redis.call('EXPIRE', logs, ARGV[5])
end
return outcome
"""
)

# KEYS: running.  ARGV: prefix, id, attempt, status, keep_s, max_log, logline, field, value, ...
FINISH = (
    _LOG
    + """
local job = ARGV[1] .. 'job:' .. ARGV[2]
local logs = ARGV[1] .. 'logs:' .. ARGV[2]
if redis.call('HGET', job, 'attempts') ~= ARGV[3] then return 0 end
if redis.call('HGET', job, 'status') ~= 'running' then return 0 end
redis.call('HSET', job, 'status', ARGV[4])
for i = 8, #ARGV, 2 do redis.call('HSET', job, ARGV[i], ARGV[i + 1]) end
redis.call('SREM', KEYS[1], ARGV[2])
redis.call('DEL', ARGV[1] .. 'lease:' .. ARGV[2])
log(logs, ARGV[7], ARGV[6])
redis.call('EXPIRE', job, ARGV[5])
redis.call('EXPIRE', logs, ARGV[5])
return 1
"""
)

# KEYS: running, queue.  ARGV: prefix, id, attempt, now, keep_s, max_log, reason, stamp
RELEASE = (
    _LOG
    + """
local job = ARGV[1] .. 'job:' .. ARGV[2]
local logs = ARGV[1] .. 'logs:' .. ARGV[2]
if redis.call('HGET', job, 'attempts') ~= ARGV[3] then return 0 end
if redis.call('HGET', job, 'status') ~= 'running' then return 0 end
redis.call('SREM', KEYS[1], ARGV[2])
redis.call('DEL', ARGV[1] .. 'lease:' .. ARGV[2])
if redis.call('HGET', job, 'cancel') == '1' then
  redis.call('HSET', job, 'status', 'cancelled', 'finished_at', ARGV[4], 'stage', 'cancelled',
    'error', 'cancelled; ' .. ARGV[7])
  log(logs, ARGV[8] .. ' cancelled: ' .. ARGV[7], ARGV[6])
  redis.call('EXPIRE', job, ARGV[5])
  redis.call('EXPIRE', logs, ARGV[5])
  return 2
end
redis.call('HINCRBY', job, 'attempts', -1)
redis.call('HSET', job, 'status', 'queued', 'progress', '0', 'stage', 'queued again: ' .. ARGV[7])
redis.call('HDEL', job, 'worker', 'pid')
redis.call('RPUSH', KEYS[2], ARGV[2])
log(logs, ARGV[8] .. ' requeued: ' .. ARGV[7], ARGV[6])
return 1
"""
)

# ARGV: prefix, id, attempt, max_log, logline, field, value, ...
UPDATE = (
    _LOG
    + """
local job = ARGV[1] .. 'job:' .. ARGV[2]
if redis.call('HGET', job, 'attempts') ~= ARGV[3] then return 0 end
if redis.call('HGET', job, 'status') ~= 'running' then return 0 end
for i = 6, #ARGV, 2 do redis.call('HSET', job, ARGV[i], ARGV[i + 1]) end
log(ARGV[1] .. 'logs:' .. ARGV[2], ARGV[5], ARGV[4])
return 1
"""
)

# ARGV: prefix, id, owner (worker#attempt), lease_ms.  -1: lost; 1: cancel requested; 0: renewed
HEARTBEAT = """
local lease = ARGV[1] .. 'lease:' .. ARGV[2]
if redis.call('GET', lease) ~= ARGV[3] then return -1 end
redis.call('PEXPIRE', lease, ARGV[4])
if redis.call('HGET', ARGV[1] .. 'job:' .. ARGV[2], 'cancel') == '1' then return 1 end
return 0
"""

# KEYS: queue.  ARGV: prefix, id, now, keep_s, max_log, stamp
CANCEL = (
    _LOG
    + """
local job = ARGV[1] .. 'job:' .. ARGV[2]
local logs = ARGV[1] .. 'logs:' .. ARGV[2]
local status = redis.call('HGET', job, 'status')
if not status then return false end
if status == 'queued' then
  redis.call('LREM', KEYS[1], 0, ARGV[2])
  redis.call('HSET', job, 'status', 'cancelled', 'finished_at', ARGV[3], 'stage', 'cancelled',
    'error', 'cancelled before it started')
  log(logs, ARGV[6] .. ' cancelled before it started', ARGV[5])
  redis.call('EXPIRE', job, ARGV[4])
  redis.call('EXPIRE', logs, ARGV[4])
  return 'cancelled'
elseif status == 'running' then
  if redis.call('HGET', job, 'cancel') ~= '1' then
    redis.call('HSET', job, 'cancel', '1')
    log(logs, ARGV[6] .. ' cancel requested', ARGV[5])
  end
  return 'cancelling'
end
return status
"""
)


def new_job_id() -> str:
    return "job_" + uuid.uuid4().hex[:16]


def stamp() -> str:
    """The timestamp that starts a log line (UTC, seconds)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _flat(fields: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for k, v in fields.items():
        out += [k, v if isinstance(v, str) else json.dumps(v)]
    return out


class Keys:
    """Key names of the queue under one :class:`RedisStore` namespace."""

    def __init__(self, namespace: str) -> None:
        self.prefix = f"{namespace}:jobs:"
        self.queue = self.prefix + "queue"
        self.running = self.prefix + "running"
        self.index = self.prefix + "index"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}"

    def logs(self, job_id: str) -> str:
        return f"{self.prefix}logs:{job_id}"

    def lease(self, job_id: str) -> str:
        return f"{self.prefix}lease:{job_id}"


class JobQueue:
    """Server side of the queue (redis.asyncio): submit, read, cancel, claim, renew, recover.

    Redis errors propagate (``redis.RedisError``/``OSError``); the admin routes turn them into
    503 and the worker loop retries.
    """

    def __init__(self, store: RedisStore, config: JobsConfig) -> None:
        self.store = store
        self.config = config
        self.keys = Keys(store.namespace)
        client = store.client
        self._claim = client.register_script(CLAIM)
        self._recover = client.register_script(RECOVER)
        self._finish = client.register_script(FINISH)
        self._release = client.register_script(RELEASE)
        self._update = client.register_script(UPDATE)
        self._heartbeat = client.register_script(HEARTBEAT)
        self._cancel = client.register_script(CANCEL)

    @property
    def _lease_ms(self) -> int:
        return int(self.config.lease_s * 1000)

    # -- admin side ------------------------------------------------------------------------------

    async def submit(
        self,
        strategy: str,
        request: dict[str, Any],
        spec: dict[str, Any],
        job_id: str | None = None,
    ) -> str:
        """Store a new queued job and return its id (one MULTI: all or nothing). ``request`` is
        what the admin sent (shown back), ``spec`` what the run gets
        (:class:`~orchestrator.jobs.work.TrainSpec` fields)."""
        job_id = job_id or new_job_id()
        now = time.time()
        fields = {
            "id": job_id,
            "status": "queued",
            "strategy": strategy,
            "request": json.dumps(request),
            "spec": json.dumps({**spec, "job": job_id}),
            "progress": "0",
            "stage": "queued",
            "attempts": "0",
            "created_at": repr(now),
        }
        async with self.store.client.pipeline(transaction=True) as pipe:
            pipe.hset(self.keys.job(job_id), mapping=fields)
            pipe.rpush(self.keys.logs(job_id), f"{stamp()} submitted: {strategy}")
            pipe.zadd(self.keys.index, {job_id: now})
            pipe.lpush(self.keys.queue, job_id)
            await pipe.execute()
        return job_id

    async def get(self, job_id: str, log_lines: int = 50) -> dict[str, Any] | None:
        """The job's hash plus its newest ``log_lines`` lines (key ``_logs``), or None."""
        async with self.store.client.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.keys.job(job_id))
            pipe.lrange(self.keys.logs(job_id), -log_lines, -1) if log_lines > 0 else pipe.ping()
            fields, logs = await pipe.execute()
        if not fields:
            return None
        fields["_logs"] = logs if log_lines > 0 else []
        return dict(fields)

    async def list(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest ``limit`` jobs; ids whose hash expired are dropped from the index."""
        ids: list[str] = await self.store.client.zrevrange(self.keys.index, 0, limit - 1)
        if not ids:
            return []
        async with self.store.client.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hgetall(self.keys.job(job_id))
            found = await pipe.execute()
        expired = [i for i, f in zip(ids, found, strict=True) if not f]
        if expired:
            await self.store.client.zrem(self.keys.index, *expired)
        return [dict(f, _logs=[]) for f in found if f]

    async def cancel(self, job_id: str) -> str | None:
        """'cancelled' (it was queued), 'cancelling' (its worker stops it within a poll), the
        terminal status it already had, or None for an unknown job."""
        result = await self._cancel(
            keys=[self.keys.queue],
            args=[
                self.keys.prefix,
                job_id,
                repr(time.time()),
                self.config.keep_finished_s,
                self.config.max_log_lines,
                stamp(),
            ],
        )
        return str(result) if result else None

    # -- worker side -----------------------------------------------------------------------------

    async def claim(self, worker: str) -> tuple[str, int] | None:
        """Take the oldest queued job if fewer than ``max_concurrent`` run: (id, attempt)."""
        got = await self._claim(
            keys=[self.keys.queue, self.keys.running],
            args=[
                self.keys.prefix,
                self.config.max_concurrent,
                worker,
                self._lease_ms,
                repr(time.time()),
            ],
        )
        if not got:
            return None
        return str(got[0]), int(got[1])

    async def heartbeat(self, job_id: str, worker: str, attempt: int) -> int:
        """Renew the lease of this ``attempt``: 0 renewed, 1 renewed and a cancel was
        requested, -1 lost (the lease names the attempt: a worker that re-claimed the job
        after losing it does not keep the old attempt alive)."""
        owner = f"{worker}#{attempt}"
        return int(await self._heartbeat(args=[self.keys.prefix, job_id, owner, self._lease_ms]))

    async def recover(self, reason: str = RESTART_REASON) -> dict[str, str]:
        """Re-queue (or fail, after ``max_attempts``) every running job whose lease expired."""
        running: set[str] = await self.store.client.smembers(self.keys.running)
        if not running:
            return {}
        ids = sorted(running)
        async with self.store.client.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.exists(self.keys.lease(job_id))
            alive = await pipe.execute()
        outcomes: dict[str, str] = {}
        for job_id, has_lease in zip(ids, alive, strict=True):
            if has_lease:
                continue
            outcome = await self._recover(
                keys=[self.keys.running, self.keys.queue],
                args=[
                    self.keys.prefix,
                    job_id,
                    self.config.max_attempts,
                    repr(time.time()),
                    self.config.keep_finished_s,
                    self.config.max_log_lines,
                    reason,
                    stamp(),
                ],
            )
            if outcome not in ("alive", "gone"):
                outcomes[job_id] = str(outcome)
        return outcomes

    async def finish(
        self,
        job_id: str,
        attempt: int,
        status: str,
        fields: dict[str, Any] | None = None,
        log: str = "",
    ) -> bool:
        """Record a terminal status for ``attempt`` (a no-op returning False when that run no
        longer owns the job, or it already finished)."""
        args = _finish_args(self.keys, self.config, job_id, attempt, status, fields, log)
        return bool(await self._finish(keys=[self.keys.running], args=args))

    async def release(self, job_id: str, attempt: int, reason: str) -> int:
        """Put a running job back at the head of the queue without counting the run (a
        graceful shutdown), or cancel it if that was requested: 1 requeued, 2 cancelled, 0 it
        was not this run's to release."""
        return int(
            await self._release(
                keys=[self.keys.running, self.keys.queue],
                args=[
                    self.keys.prefix,
                    job_id,
                    attempt,
                    repr(time.time()),
                    self.config.keep_finished_s,
                    self.config.max_log_lines,
                    reason,
                    stamp(),
                ],
            )
        )

    async def update(
        self, job_id: str, attempt: int, fields: dict[str, Any], log: str = ""
    ) -> bool:
        line = f"{stamp()} {log}" if log else ""
        args = [self.keys.prefix, job_id, attempt, self.config.max_log_lines, line, *_flat(fields)]
        return bool(await self._update(args=args))


def _finish_args(
    keys: Keys,
    config: JobsConfig,
    job_id: str,
    attempt: int,
    status: str,
    fields: dict[str, Any] | None,
    log: str,
) -> list[Any]:
    """Arguments of the FINISH script (shared by the server and the job's own process)."""
    return [
        keys.prefix,
        job_id,
        attempt,
        status,
        config.keep_finished_s,
        config.max_log_lines,
        f"{stamp()} {log}" if log else "",
        "finished_at",
        repr(time.time()),
        "stage",
        status,
        *_flat(fields or {}),
    ]


class JobReporter:
    """The job's own side (a separate process or a Ray task; synchronous redis-py): progress,
    log lines and the result, each fenced by the attempt number.

    Reporting never raises: a Redis hiccup must not fail a training run. The result
    (:meth:`finish`) is retried for a while; if it still cannot be written, the job's lease
    lapses and recovery re-runs it.
    """

    def __init__(
        self, redis_url: str, namespace: str, job_id: str, attempt: int, config: JobsConfig
    ) -> None:
        import redis

        self.job_id = job_id
        self.attempt = attempt
        self.config = config
        self.keys = Keys(namespace)
        self.client = redis.Redis.from_url(
            redis_url, decode_responses=True, socket_timeout=5, socket_connect_timeout=5
        )
        self._update = self.client.register_script(UPDATE)
        self._finish = self.client.register_script(FINISH)
        self.owned = True
        """False once a write was refused: another run owns the job now."""

    def update(self, log: str = "", **fields: Any) -> None:
        import redis

        args: list[Any] = [
            self.keys.prefix,
            self.job_id,
            self.attempt,
            self.config.max_log_lines,
            f"{stamp()} {log}" if log else "",
            *_flat(fields),
        ]
        with contextlib.suppress(redis.RedisError, OSError):
            self.owned = bool(self._update(args=args)) and self.owned

    def finish(self, status: str, log: str, **fields: Any) -> bool:
        import redis

        args = _finish_args(self.keys, self.config, self.job_id, self.attempt, status, fields, log)
        for delay in (0.5, 1, 2, 4, 8, 0):
            try:
                return bool(self._finish(keys=[self.keys.running], args=args))
            except (redis.RedisError, OSError):
                time.sleep(delay)
        return False

    def close(self) -> None:
        self.client.close()


def job_from_fields(fields: dict[str, Any]) -> Job:
    """The admin API's view of a job hash (as returned by :meth:`JobQueue.get`)."""

    def num(key: str) -> float | None:
        value = fields.get(key)
        return float(value) if value not in (None, "") else None

    status = fields.get("status", "queued")
    has_plot = bool(fields.get("plot")) and status == "succeeded"
    return Job(
        id=fields["id"],
        status=status,
        strategy=fields.get("strategy", ""),
        progress=num("progress") or 0.0,
        stage=fields.get("stage", ""),
        metrics=json.loads(fields["metrics"]) if fields.get("metrics") else {},
        version=fields.get("version") or None,
        artifact_path=fields.get("artifact_path") or None,
        plot_url=f"/admin/jobs/{fields['id']}/plot" if has_plot else None,
        error=fields.get("error") or None,
        attempts=int(fields.get("attempts") or 0),
        cancel_requested=fields.get("cancel") == "1",
        request=json.loads(fields["request"]) if fields.get("request") else {},
        created_at=num("created_at"),
        started_at=num("started_at"),
        finished_at=num("finished_at"),
        worker=fields.get("worker") or None,
        pid=int(fields["pid"]) if fields.get("pid") else None,
        logs=list(fields.get("_logs", [])),
    )
