"""Admin HTTP routes: router-training jobs and the promotion of trained router versions.

Every route needs a key with the ``admin`` scope; with no keys configured the server has no
authentication at all (local use) and these routes are open too — configure
``server.api_keys`` before exposing a server. Handlers stay thin: they validate, call the job
queue (:mod:`orchestrator.jobs.queue`) or the promotions (:mod:`orchestrator.jobs.promotion`),
and serialize. Redis unreachable or not configured is a 503 naming it.

Lifecycle (:class:`AdminService`, driven by :func:`orchestrator.api.build_app`'s lifespan):
constructed with the app (no I/O) → :meth:`AdminService.start` after the orchestrator started
(with ``jobs.worker`` on: the job runner starts, recovering jobs a dead process left) →
:meth:`AdminService.stop` before the orchestrator stops (running jobs go back to the queue).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Query
from fastapi.responses import FileResponse
from pydantic import ValidationError

from orchestrator.errors import (
    ConfigError,
    InvalidRequestError,
    NotFoundError,
    ServiceUnavailableError,
)
from orchestrator.jobs.models import (
    RECORDED_DATASETS,
    TERMINAL,
    DatasetSpec,
    Job,
    JobList,
    JobRequest,
    PromoteRequest,
    Promotion,
    Router,
    RouterList,
    RouterVersion,
)
from orchestrator.pipeline import Orchestrator
from orchestrator.protocol import ErrorResponse

log = logging.getLogger(__name__)

RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 503)
}
CANCEL_WAIT_S = 5.0


class AdminService:
    """The admin feature of one server process: job queue, promotions, job runner."""

    def __init__(self, orchestrator: Orchestrator) -> None:
        self.orchestrator = orchestrator
        self.config = orchestrator.config
        self.store = orchestrator.store
        self._queue: Any = None
        self._promotions: Any = None
        self.runner: Any = None

    @property
    def queue(self) -> Any:
        """The :class:`~orchestrator.jobs.queue.JobQueue` (503 without Redis)."""
        if self._queue is None:
            self._require_redis()
            from orchestrator.jobs.queue import JobQueue

            self._queue = JobQueue(self.store, self.config.jobs)
        return self._queue

    @property
    def promotions(self) -> Any:
        if self._promotions is None:
            self._require_redis()
            from orchestrator.jobs.promotion import Promotions

            self._promotions = Promotions(self.store)
        return self._promotions

    def _require_redis(self) -> None:
        if not self.store.configured:
            raise ServiceUnavailableError(
                "training jobs and router promotion keep their state in Redis: set redis_url"
            )

    async def start(self) -> None:
        if not self.store.configured:
            log.info("no redis_url: training jobs and router promotion are unavailable")
            return
        if self.config.jobs.worker:
            from orchestrator.jobs.worker import JobRunner

            self.runner = JobRunner(self.config, self.store)
            await self.runner.start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.stop()
            self.runner = None

    @asynccontextmanager
    async def redis(self) -> AsyncIterator[None]:
        """Map a Redis failure inside to a 503 naming it."""
        import redis

        try:
            yield
        except (redis.RedisError, OSError) as e:
            self.store.mark_down(e)
            raise ServiceUnavailableError(
                f"training jobs are unavailable: Redis: {type(e).__name__}: {e}"
            ) from None


def mount_admin(
    app: FastAPI, orchestrator: Orchestrator, dependency: Callable[..., Awaitable[Any]]
) -> AdminService:
    """Add the ``/admin`` routes to ``app``, each behind ``dependency`` (the admin scope
    check). Returns the service whose start/stop the app's lifespan calls."""
    service = AdminService(orchestrator)
    router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(dependency)])

    @router.post(
        "/jobs",
        response_model=Job,
        status_code=202,
        responses=RESPONSES,
        summary="Submit a router-training job (queued; poll GET /admin/jobs/{id})",
    )
    async def submit_job(body: JobRequest) -> Job:
        from orchestrator.jobs.queue import new_job_id

        spec, request = await asyncio.to_thread(_validate, service, body)
        queue = service.queue
        job_id = new_job_id()
        upload = body.dataset_spec().jsonl
        if upload is not None:  # on the artifacts volume, where every worker can read it
            spec["path"] = await asyncio.to_thread(_write_upload, service, job_id, upload)
        try:
            async with service.redis():
                await queue.submit(body.strategy, request, spec, job_id)
        except ServiceUnavailableError:
            if upload is not None:
                Path(spec["path"]).unlink(missing_ok=True)
            raise
        if service.runner is not None:
            service.runner.wake()
        async with service.redis():
            return await _job(service, job_id, log_lines=20)

    @router.get("/jobs", response_model=JobList, responses=RESPONSES, summary="List jobs")
    async def list_jobs(
        limit: int = Query(100, ge=1, le=1000, description="Newest first."),
        status: str | None = Query(None, description="Only jobs in this status."),
    ) -> JobList:
        from orchestrator.jobs.queue import job_from_fields

        async with service.redis():
            found = await service.queue.list(limit)
        jobs = [job_from_fields(f) for f in found]
        return JobList(data=[j for j in jobs if status is None or j.status == status])

    @router.get("/jobs/{job_id}", response_model=Job, responses=RESPONSES, summary="One job")
    async def get_job(
        job_id: str, logs: int = Query(50, ge=0, le=1000, description="Log lines (newest).")
    ) -> Job:
        async with service.redis():
            return await _job(service, job_id, log_lines=logs)

    @router.post(
        "/jobs/{job_id}/cancel",
        response_model=Job,
        responses=RESPONSES,
        summary="Cancel a queued or running job",
    )
    async def cancel_job(job_id: str) -> Job:
        async with service.redis():
            outcome = await service.queue.cancel(job_id)
            if outcome is None:
                raise NotFoundError(f"no job '{job_id}'", param="job_id")
            if outcome == "cancelled":  # it never ran: nothing else will delete its upload
                await asyncio.to_thread(_delete_upload, service, job_id)
            if outcome in TERMINAL and outcome != "cancelled":
                raise InvalidRequestError(
                    f"job '{job_id}' already {outcome}; only queued or running jobs can be "
                    "cancelled",
                    param="job_id",
                    code="job_finished",
                )
            # A running job stops at its worker's next check (about a second): wait for it.
            deadline = asyncio.get_running_loop().time() + CANCEL_WAIT_S
            job = await _job(service, job_id, log_lines=20)
            while job.status not in TERMINAL and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.2)
                job = await _job(service, job_id, log_lines=20)
            return job

    @router.get(
        "/jobs/{job_id}/plot",
        response_class=FileResponse,
        responses={200: {"content": {"image/png": {}}}, **RESPONSES},
        summary="The job's cost–quality plot (PNG) on the held-out split",
    )
    async def job_plot(
        job_id: str,
        kind: str = Query("cost_quality", pattern="^(cost_quality|hulls)$"),
    ) -> FileResponse:
        async with service.redis():
            job = await _job(service, job_id, log_lines=0)
        if job.status != "succeeded" or not job.artifact_path:
            raise NotFoundError(f"job '{job_id}' has no plot: it is {job.status}", param="job_id")
        path = Path(job.artifact_path) / f"{kind}.png"
        if not path.is_file():
            raise NotFoundError(f"the plot of job '{job_id}' is gone from {path}")
        return FileResponse(path, media_type="image/png", filename=f"{job_id}-{kind}.png")

    @router.get(
        "/routers",
        response_model=RouterList,
        responses=RESPONSES,
        summary="Trained router versions per strategy, and which is promoted",
    )
    async def list_routers() -> RouterList:
        async with service.redis():
            promoted = await service.promotions.promoted()
            names = await asyncio.to_thread(_trainable)
            histories = {n: await service.promotions.history(n) for n in names}
        serving = orchestrator.strategies.serving()
        routers = await asyncio.to_thread(
            lambda: [_router(service, n, promoted, histories[n], serving) for n in names]
        )
        return RouterList(data=routers)

    @router.post(
        "/routers/{strategy}/promote",
        response_model=Promotion,
        responses=RESPONSES,
        summary="Serve a trained version on every replica, without a restart",
    )
    async def promote(strategy: str, body: PromoteRequest) -> Promotion:
        version = await asyncio.to_thread(_check_version, service, strategy, body.version)
        async with service.redis():
            previous = await service.promotions.promote(strategy, version)
            history = await service.promotions.history(strategy)
        await asyncio.to_thread(orchestrator.strategies.refresh)  # this replica: now
        return Promotion(strategy=strategy, promoted=version, previous=previous, history=history)

    @router.post(
        "/routers/{strategy}/rollback",
        response_model=Promotion,
        responses=RESPONSES,
        summary="Serve the previously promoted version again",
    )
    async def rollback(strategy: str) -> Promotion:
        await asyncio.to_thread(_trainable_or_400, strategy)
        async with service.redis():
            rolled = await service.promotions.rollback(strategy)
            if rolled is None:
                raise InvalidRequestError(
                    f"strategy '{strategy}' has no earlier promoted version to roll back to "
                    "(rollback returns to the version promoted before the current one)",
                    param="strategy",
                    code="nothing_to_roll_back",
                )
            history = await service.promotions.history(strategy)
        await asyncio.to_thread(orchestrator.strategies.refresh)
        return Promotion(strategy=strategy, promoted=rolled[1], previous=rolled[0], history=history)

    app.include_router(router)
    return service


# -- helpers (blocking ones run in a worker thread) ----------------------------------------------


async def _job(service: AdminService, job_id: str, log_lines: int) -> Job:
    from orchestrator.jobs.queue import job_from_fields

    fields = await service.queue.get(job_id, log_lines=log_lines)
    if fields is None:
        raise NotFoundError(f"no job '{job_id}' (unknown, or expired)", param="job_id")
    return job_from_fields(fields)


def _trainable() -> list[str]:
    from orchestrator.jobs.work import trainable_strategies

    return trainable_strategies()


def _trainable_or_400(strategy: str) -> type[Any]:
    from orchestrator.jobs.work import trainable_class

    try:
        return trainable_class(strategy)
    except ConfigError as e:
        raise InvalidRequestError(e.message, param="strategy") from None


def _validate(service: AdminService, body: JobRequest) -> tuple[dict[str, Any], dict[str, Any]]:
    """Check a submission before it is queued; returns (the run's spec, the request as stored).

    Each failure is a 400 naming the field: the strategy, each option (against the strategy's
    option model), the dataset's name and path, the uploaded JSONL line by line."""
    from orchestrator.evaluation.datasets import resolve_path
    from orchestrator.jobs.work import parse_jsonl

    cls = _trainable_or_400(body.strategy)
    try:
        cls.Options.model_validate(body.options)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        msg = "unknown option" if first["type"] == "extra_forbidden" else first["msg"]
        raise InvalidRequestError(
            f"options.{loc}: {msg} (strategy '{body.strategy}')", param=f"options.{loc}"
        ) from None
    if isinstance(body.dataset, str) and body.dataset not in RECORDED_DATASETS:
        raise InvalidRequestError(
            f"dataset: unknown dataset '{body.dataset}'; valid: {', '.join(RECORDED_DATASETS)}, "
            'or an object such as {"name": "jsonl", "jsonl": "<lines>"}',
            param="dataset",
        )
    ds: DatasetSpec = body.dataset_spec()
    param = "dataset" if isinstance(body.dataset, str) else "dataset.name"
    jobs = service.config.jobs
    path: str | None = None
    if ds.name == "jsonl":
        if (ds.jsonl is None) == (ds.path is None):
            raise InvalidRequestError(
                "dataset 'jsonl' needs exactly one of 'jsonl' (the uploaded lines) or 'path'",
                param="dataset.jsonl",
            )
        if ds.jsonl is not None:
            try:
                data = parse_jsonl(ds.jsonl, ds.label or "jsonl")
            except ConfigError as e:
                raise InvalidRequestError(
                    f"dataset.jsonl: {e.message}", param="dataset.jsonl"
                ) from None
            if body.limit is None and len(data) < 20:
                raise InvalidRequestError(
                    f"dataset.jsonl: {len(data)} prompts are too few to train and evaluate on",
                    param="dataset.jsonl",
                )
        else:
            path = str(ds.path)
            if not Path(path).is_file():
                raise InvalidRequestError(
                    f"dataset.path: {path} is not a file the server can read",
                    param="dataset.path",
                )
    else:
        if ds.jsonl is not None:
            raise InvalidRequestError(
                f"dataset.jsonl: only dataset 'jsonl' takes uploaded lines, not '{ds.name}'",
                param="dataset.jsonl",
            )
        try:
            where = resolve_path(ds.name, ds.path, jobs.data_dir)
        except ConfigError as e:
            raise InvalidRequestError(e.message, param=param) from None
        if not where.exists():
            raise InvalidRequestError(
                f"dataset '{ds.name}': {where} does not exist on the server; pass dataset.path "
                "or set jobs.data_dir",
                param="dataset.path" if ds.path else param,
            )
        path = str(where.resolve())
    spec = {
        "strategy": body.strategy,
        "dataset": ds.name,
        "options": dict(body.options),
        "path": path,
        "label": ds.label,
        "split": body.split,
        "test_fraction": body.test_fraction,
        "seed": body.seed,
        "limit": body.limit,
        "evaluate": True,
        "embedding_cache_dir": str(jobs.embedding_cache_dir) if jobs.embedding_cache_dir else None,
    }
    request = body.model_dump(mode="json")
    if isinstance(request["dataset"], dict) and request["dataset"].get("jsonl") is not None:
        lines = sum(1 for line in (ds.jsonl or "").splitlines() if line.strip())
        request["dataset"]["jsonl"] = f"<{lines} uploaded lines>"
    return spec, request


def _write_upload(service: AdminService, job_id: str, text: str) -> str:
    from orchestrator.jobs.worker import uploads_dir

    folder = uploads_dir(service.config)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{job_id}.jsonl"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.rename(path)
    return str(path.resolve())


def _delete_upload(service: AdminService, job_id: str) -> None:
    from orchestrator.jobs.worker import uploads_dir

    (uploads_dir(service.config) / f"{job_id}.jsonl").unlink(missing_ok=True)


def _check_version(service: AdminService, strategy: str, version: str) -> str:
    """The concrete version to promote, after building it against this pool: a version that
    cannot serve here (unknown, corrupt, no recorded model maps to an expert) is refused now,
    not discovered by every replica."""
    import re

    from routers import create_strategy
    from routers.artifacts import ArtifactStore

    _trainable_or_400(strategy)
    if version != "latest" and not re.fullmatch(r"v\d+", version):
        raise InvalidRequestError(
            f"version: '{version}' is not a version name ('v0003') or 'latest'", param="version"
        )
    config = service.config
    store = ArtifactStore(config.artifacts_dir)
    try:
        folder = store.resolve(strategy, version)
    except ConfigError as e:
        raise NotFoundError(e.message, param="version") from None
    concrete = folder.name
    options = {**config.routing.strategies.get(strategy, {}), "artifact": concrete}
    try:
        candidate = create_strategy(
            strategy, config.experts, options, artifacts_dir=config.artifacts_dir
        )
        candidate.setup()
    except ConfigError as e:
        raise InvalidRequestError(
            f"version {concrete} of '{strategy}' cannot serve this pool: {e.message}",
            param="version",
        ) from None
    return concrete


def _router(
    service: AdminService,
    strategy: str,
    promoted: dict[str, str],
    history: list[str],
    serving: dict[str, str | None],
) -> Router:
    from routers.artifacts import META_FILE, ArtifactStore

    config = service.config
    store = ArtifactStore(config.artifacts_dir)
    versions = []
    for v in store.versions(strategy):
        folder = store.root / strategy / v
        try:
            meta = json.loads((folder / META_FILE).read_text())
        except (OSError, ValueError):
            meta = {}
        dataset = meta.get("dataset", {})
        versions.append(
            RouterVersion(
                version=v,
                created_at=meta.get("created_at"),
                dataset={k: dataset.get(k) for k in ("name", "fingerprint", "rows", "source")},
                metrics=meta.get("metrics", {}),
                job=meta.get("job"),
                promoted=promoted.get(strategy) == v,
                has_plot=(folder / "cost_quality.png").is_file(),
            )
        )
    configured = config.routing.strategies.get(strategy, {}).get("artifact", "latest")
    return Router(
        strategy=strategy,
        configured_artifact=str(configured),
        promoted=promoted.get(strategy),
        history=history,
        serving=serving.get(strategy),
        versions=versions,
    )
