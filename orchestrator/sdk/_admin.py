"""``client.admin``: operations on the service rather than chat.

Served today: ``health``, ``ready`` (+ ``wait_ready``), ``metrics``. The training-job and
knowledge-store methods speak the routes planned by issues 7 and 6 and raise
:class:`~orchestrator.errors.NotFoundError` until a server has them:

    POST   /admin/jobs  {strategy, options, dataset, split}  → job {id, status, progress, ...}
    GET    /admin/jobs,  GET /admin/jobs/{id},  POST /admin/jobs/{id}/cancel
    POST   /admin/routers/{strategy}/promote  {version},  POST /admin/routers/{strategy}/rollback
    POST   /admin/kb/documents  {documents: [{id?, text, metadata}]}
    GET    /admin/kb/documents,  DELETE /admin/kb/documents/{id}

A list route may answer a bare JSON list or an object holding it under ``data`` (OpenAI's list
shape) or under the resource's name; all three are read. Admin routes need a key with the
``admin`` scope.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

from orchestrator.sdk import _retry
from orchestrator.sdk._errors import error_from_response
from orchestrator.sdk._types import Document, Health, Job, Readiness

if TYPE_CHECKING:
    from orchestrator.sdk._client import AsyncClient, Client

ProgressCallback = Callable[[Job], None]


def _items(payload: Any, name: str) -> builtins.list[Any]:
    if isinstance(payload, list):
        return payload
    if isinstance(payload, dict):
        for key in ("data", name):
            if isinstance(payload.get(key), list):
                return list(payload[key])
    raise ValueError(f"expected a list of {name} (or {{'data': [...]}}), got {payload!r:.200}")


def _readiness(response: httpx.Response) -> Readiness:
    """200 ready / 503 not ready, both with a readiness body; any other 503 is an error."""
    try:
        payload = response.json()
    except ValueError:
        payload = None
    if isinstance(payload, dict) and "status" in payload:
        return Readiness.model_validate(payload)
    raise error_from_response(response)


def _job_body(
    strategy: str, dataset: str, split: str, options: Mapping[str, Any] | None
) -> dict[str, Any]:
    return {
        "strategy": strategy,
        "options": dict(options or {}),
        "dataset": dataset,
        "split": split,
    }


def _seg(value: str) -> str:
    return quote(value, safe="")


class _Waiter:
    """Shared bookkeeping of ``jobs.wait``: when to report progress, when to give up."""

    def __init__(self, job_id: str, timeout_s: float | None, on_progress: ProgressCallback | None):
        self.job_id = job_id
        self.deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self.timeout_s = timeout_s
        self.on_progress = on_progress
        self.last: tuple[str, float | None] | None = None

    def observe(self, job: Job) -> bool:
        """Report a change of status or progress; True when the job is done. Raises
        TimeoutError past the deadline."""
        seen = (job.status, job.progress)
        if seen != self.last and self.on_progress is not None:
            self.on_progress(job)
        self.last = seen
        if job.done:
            return True
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise TimeoutError(
                f"job {self.job_id} still {job.status} (progress {job.progress}) "
                f"after {self.timeout_s} s"
            )
        return False


class Admin:
    """Health, readiness, metrics; ``jobs`` and ``kb`` (see the module docstring)."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self.jobs = Jobs(client)
        self.kb = KnowledgeBase(client)

    def health(self) -> Health:
        """Liveness: the process answers."""
        return Health.model_validate_json(self._client._send("GET", "/health").content)

    def ready(self) -> Readiness:
        """Readiness and per-expert status; ``.ready`` is False (no error) while loading."""
        return _readiness(self._client._send("GET", "/ready", accept=(503,)))

    def wait_ready(self, timeout_s: float = 60.0, poll_s: float = 0.25) -> Readiness:
        """Poll ``/ready`` until ready, riding out connection errors (a starting server).
        Raises TimeoutError with the last status seen."""
        deadline = time.monotonic() + timeout_s
        last: object = "no answer"
        while True:
            try:
                state = self.ready()
                if state.ready:
                    return state
                last = state
            except httpx.TransportError as e:
                last = e
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{self._client.base_url} not ready after {timeout_s} s: {last}")
            _retry.sleep(poll_s)

    def metrics(self) -> str:
        """The Prometheus exposition text (parse it with ``prometheus_client.parser`` if
        needed)."""
        return self._client._send("GET", "/metrics").text


class Jobs:
    """Router training jobs (issue 7's routes)."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def submit(
        self,
        strategy: str,
        *,
        dataset: str,
        split: str = "train",
        options: Mapping[str, Any] | None = None,
    ) -> Job:
        """Start training ``strategy`` on ``dataset``/``split``; returns the queued job."""
        body = _job_body(strategy, dataset, split, options)
        return Job.model_validate_json(self._client._send("POST", "/admin/jobs", json=body).content)

    def list(self) -> builtins.list[Job]:
        payload = self._client._send("GET", "/admin/jobs").json()
        return [Job.model_validate(j) for j in _items(payload, "jobs")]

    def get(self, job_id: str) -> Job:
        response = self._client._send("GET", f"/admin/jobs/{_seg(job_id)}")
        return Job.model_validate_json(response.content)

    def wait(
        self,
        job_id: str,
        *,
        timeout_s: float | None = None,
        poll_s: float = 2.0,
        on_progress: ProgressCallback | None = None,
    ) -> Job:
        """Poll until the job is done (:data:`JOB_TERMINAL_STATUSES`) and return it — a failed
        job is returned, not raised; check ``status``. ``on_progress(job)`` runs whenever the
        status or progress changed. Raises TimeoutError after ``timeout_s``."""
        waiter = _Waiter(job_id, timeout_s, on_progress)
        while True:
            job = self.get(job_id)
            if waiter.observe(job):
                return job
            _retry.sleep(poll_s)

    def cancel(self, job_id: str) -> Job:
        response = self._client._send("POST", f"/admin/jobs/{_seg(job_id)}/cancel")
        return Job.model_validate_json(response.content)

    def promote(self, strategy: str, version: str) -> dict[str, Any]:
        """Serve ``version`` of ``strategy``'s trained router; returns the server's answer."""
        path = f"/admin/routers/{_seg(strategy)}/promote"
        result: dict[str, Any] = self._client._send("POST", path, json={"version": version}).json()
        return result

    def rollback(self, strategy: str) -> dict[str, Any]:
        """Serve the previously promoted version of ``strategy``'s router."""
        path = f"/admin/routers/{_seg(strategy)}/rollback"
        result: dict[str, Any] = self._client._send("POST", path).json()
        return result


class KnowledgeBase:
    """The knowledge store retrieval strategies read (issue 6's routes)."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def add(self, documents: Sequence[Mapping[str, Any]]) -> builtins.list[Document]:
        """Add documents ``{"text", "metadata"?, "id"?}``; returns them with their ids."""
        body = {"documents": [dict(d) for d in documents]}
        payload = self._client._send("POST", "/admin/kb/documents", json=body).json()
        return [Document.model_validate(d) for d in _items(payload, "documents")]

    def list(self) -> builtins.list[Document]:
        payload = self._client._send("GET", "/admin/kb/documents").json()
        return [Document.model_validate(d) for d in _items(payload, "documents")]

    def delete(self, document_id: str) -> None:
        self._client._send("DELETE", f"/admin/kb/documents/{_seg(document_id)}")


# -- asyncio twins -----------------------------------------------------------------------------


class AsyncAdmin:
    """See :class:`Admin`."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client
        self.jobs = AsyncJobs(client)
        self.kb = AsyncKnowledgeBase(client)

    async def health(self) -> Health:
        return Health.model_validate_json((await self._client._send("GET", "/health")).content)

    async def ready(self) -> Readiness:
        return _readiness(await self._client._send("GET", "/ready", accept=(503,)))

    async def wait_ready(self, timeout_s: float = 60.0, poll_s: float = 0.25) -> Readiness:
        deadline = time.monotonic() + timeout_s
        last: object = "no answer"
        while True:
            try:
                state = await self.ready()
                if state.ready:
                    return state
                last = state
            except httpx.TransportError as e:
                last = e
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{self._client.base_url} not ready after {timeout_s} s: {last}")
            await _retry.asleep(poll_s)

    async def metrics(self) -> str:
        return (await self._client._send("GET", "/metrics")).text


class AsyncJobs:
    """See :class:`Jobs`."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def submit(
        self,
        strategy: str,
        *,
        dataset: str,
        split: str = "train",
        options: Mapping[str, Any] | None = None,
    ) -> Job:
        body = _job_body(strategy, dataset, split, options)
        response = await self._client._send("POST", "/admin/jobs", json=body)
        return Job.model_validate_json(response.content)

    async def list(self) -> builtins.list[Job]:
        payload = (await self._client._send("GET", "/admin/jobs")).json()
        return [Job.model_validate(j) for j in _items(payload, "jobs")]

    async def get(self, job_id: str) -> Job:
        response = await self._client._send("GET", f"/admin/jobs/{_seg(job_id)}")
        return Job.model_validate_json(response.content)

    async def wait(
        self,
        job_id: str,
        *,
        timeout_s: float | None = None,
        poll_s: float = 2.0,
        on_progress: ProgressCallback | None = None,
    ) -> Job:
        waiter = _Waiter(job_id, timeout_s, on_progress)
        while True:
            job = await self.get(job_id)
            if waiter.observe(job):
                return job
            await _retry.asleep(poll_s)

    async def cancel(self, job_id: str) -> Job:
        response = await self._client._send("POST", f"/admin/jobs/{_seg(job_id)}/cancel")
        return Job.model_validate_json(response.content)

    async def promote(self, strategy: str, version: str) -> dict[str, Any]:
        path = f"/admin/routers/{_seg(strategy)}/promote"
        response = await self._client._send("POST", path, json={"version": version})
        result: dict[str, Any] = response.json()
        return result

    async def rollback(self, strategy: str) -> dict[str, Any]:
        path = f"/admin/routers/{_seg(strategy)}/rollback"
        result: dict[str, Any] = (await self._client._send("POST", path)).json()
        return result


class AsyncKnowledgeBase:
    """See :class:`KnowledgeBase`."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def add(self, documents: Sequence[Mapping[str, Any]]) -> builtins.list[Document]:
        body = {"documents": [dict(d) for d in documents]}
        payload = (await self._client._send("POST", "/admin/kb/documents", json=body)).json()
        return [Document.model_validate(d) for d in _items(payload, "documents")]

    async def list(self) -> builtins.list[Document]:
        payload = (await self._client._send("GET", "/admin/kb/documents")).json()
        return [Document.model_validate(d) for d in _items(payload, "documents")]

    async def delete(self, document_id: str) -> None:
        await self._client._send("DELETE", f"/admin/kb/documents/{_seg(document_id)}")
