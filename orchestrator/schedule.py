"""Expert-grouped batching under a memory budget: the residency scheduler.

Why: a pool may hold more experts than fit in memory at once (Symbolic-MoE runs 16 experts on
one GPU by batching the queries of each expert and loading each model once). Serving queries in
arrival order would swap models on almost every query; grouping them by expert pays one load per
expert per window and runs each group as one ``Backend.generate(list)`` call.

Two parts:

- :class:`Residency` decides which experts are resident under a budget (bytes, from
  ``Backend.memory_bytes()`` / ``ExpertConfig.memory_gb``, and/or a count) and swaps them:
  ``sleep()``/``wake_up()`` when the backend has them and sleeping frees memory
  (:class:`SupportsSleep`: vLLM sleep mode on GPU moves the weights to host RAM, and waking is
  much cheaper than loading), else ``unload()``/``load()`` (always on CPU).
  The victim is the resident expert whose next use is farthest away (not needed at all first),
  least recently used on ties.
- :class:`ExpertScheduler` queues requests per expert and serves them in *windows*. A window
  opens at the first pending request and closes after ``batch_wait_ms`` (at once when a group
  reaches ``max_batch_size``; never later than ``max_wait_ms`` after its oldest request). The
  requests pending at that moment form one *round*: each expert's group runs while that expert
  is resident, in batches of at most ``max_batch_size``, so every model is loaded at most once
  per round. Order within a round (:func:`plan_order`): groups holding a request older than
  ``max_wait_ms`` first (oldest first: the deadline), then groups of resident experts (no load),
  then the rest, oldest request first. Requests arriving during a round wait for the next one,
  so no request can be passed over twice: nothing starves however busy a resident expert is.

Errors are per request: a failed load fails that expert's requests with
:class:`~orchestrator.errors.ExpertUnavailableError` (the dispatcher then falls back); a failed
batch is retried one request at a time so a bad request fails alone; a batch slower than the
expert's ``timeout_s`` fails its requests with :class:`TimeoutError`. Queue time and load time
are not part of ``timeout_s``.

The same scheduler serves the online path (the dispatcher submits each call when the config has
a ``scheduler`` section) and the offline batch job (:mod:`orchestrator.batch`, which holds a
window open until all of a chunk's requests are queued: :meth:`ExpertScheduler.hold_window`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

from orchestrator.errors import BackendError, ExpertUnavailableError, ServiceUnavailableError
from orchestrator.types import Delta, Generation, GenerationRequest

if TYPE_CHECKING:
    from orchestrator.config import SchedulerConfig
    from workers.base import Backend

log = logging.getLogger(__name__)

SwapMode = Literal["auto", "unload"]
State = Literal["cold", "asleep", "awake"]


@runtime_checkable
class SupportsSleep(Protocol):
    """Optional backend capability: free the budgeted memory without dropping the model.

    A backend opts in by having ``sleep()``, ``wake_up()`` (vLLM's names) and a true
    ``sleep_frees_memory``. On CUDA, vLLM sleep mode level 1 offloads the weights to host RAM
    and drops the KV cache, and waking takes seconds where a cold start takes tens. On CPU,
    vLLM's worker ignores sleep (weights and KV cache stay in RAM), so sleeping would free
    nothing: there ``sleep_frees_memory`` is false and the scheduler unloads instead. If
    ``sleep()`` raises (e.g. sleep mode not enabled), the scheduler unloads that expert and
    does not try to sleep it again.
    """

    sleep_frees_memory: bool

    async def sleep(self) -> None: ...

    async def wake_up(self) -> None: ...


def _sleeper(backend: Backend) -> SupportsSleep | None:
    if isinstance(backend, SupportsSleep) and backend.sleep_frees_memory:
        return backend
    return None


@dataclass
class ResidencyStats:
    """What swapping cost: counts, and seconds spent loading/waking (wall clock)."""

    loads: int = 0
    unloads: int = 0
    sleeps: int = 0
    wakes: int = 0
    load_s: float = 0.0
    loads_by_expert: Counter[str] = field(default_factory=Counter)
    max_resident_bytes: int = 0
    max_resident_experts: int = 0


class Residency:
    """Which experts are resident, within a memory budget, and the swaps that keep it so.

    Not re-entrant: one driver (the scheduler's loop, or a benchmark) calls :meth:`acquire` at
    a time; a lock enforces it. Budget accounting uses each expert's measured footprint after
    its first load (``Backend.memory_bytes()`` then), its configured ``memory_gb`` before. An
    expert whose size is still unknown counts as the whole budget, so its first load happens
    alone. An expert bigger than the whole budget is still served, alone, with a warning: the
    budget limits sharing, it cannot make a model smaller. Sleeping experts do not count (their
    weights are in host RAM, which is not budgeted).
    """

    def __init__(
        self,
        backends: Mapping[str, Backend],
        *,
        memory_budget_bytes: int | None = None,
        max_resident_experts: int | None = None,
        swap: SwapMode = "auto",
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.backends = dict(backends)
        self.memory_budget_bytes = memory_budget_bytes
        self.max_resident_experts = max_resident_experts
        self.swap = swap
        self.stats = ResidencyStats()
        self._clock = clock
        self._state: dict[str, State] = {
            n: "awake" if b.loaded else "cold" for n, b in self.backends.items()
        }
        self._lru = [n for n, s in self._state.items() if s == "awake"]  # least recent first
        self._measured: dict[str, int] = {}
        self._no_sleep: set[str] = set()
        self._lock = asyncio.Lock()
        self._warned: set[str] = set()

    # -- queries -------------------------------------------------------------------------------

    def state(self, name: str) -> State:
        return self._state[name]

    def resident(self) -> list[str]:
        """Awake experts, least recently used first."""
        return list(self._lru)

    def size_bytes(self, name: str) -> int | None:
        """The expert's footprint: measured if it was loaded before, else configured; None if
        neither is known."""
        configured = self.backends[name].memory_bytes()
        measured = self._measured.get(name)
        if measured is None:
            return configured or None
        return max(measured, configured)

    def resident_bytes(self) -> int:
        return sum(self.size_bytes(n) or 0 for n in self._lru)

    def fits(self, name: str, others: Sequence[str]) -> bool:
        """Would ``name`` fit beside the awake experts ``others``?"""
        if self.max_resident_experts is not None and len(others) + 1 > self.max_resident_experts:
            return False
        if self.memory_budget_bytes is None:
            return True
        size = self.size_bytes(name)
        if size is None:
            return not others
        return sum(self.size_bytes(o) or 0 for o in others) + size <= self.memory_budget_bytes

    # -- swapping ------------------------------------------------------------------------------

    async def acquire(self, name: str, upcoming: Sequence[str] = ()) -> None:
        """Make ``name`` resident, evicting others as the budget requires.

        ``upcoming`` is the order in which other experts will be needed next; the evicted one
        is the expert needed farthest in the future (first, those not needed at all), least
        recently used on ties (Belady's rule, with LRU when nothing is known). Raises whatever
        the backend's ``load()``/``wake_up()`` raised; the expert is then left cold.
        """
        async with self._lock:
            if self._state[name] == "awake":
                self._touch(name)
                return
            while True:
                others = [n for n in self._lru if n != name]
                if not others or self.fits(name, others):
                    break
                await self._evict(self._victim(others, upcoming))
            if (
                self.memory_budget_bytes is not None
                and (self.size_bytes(name) or 0) > self.memory_budget_bytes
                and name not in self._warned
            ):
                self._warned.add(name)
                log.warning(
                    "expert %s needs %.2f GB, more than the whole budget (%.2f GB); "
                    "serving it alone",
                    name,
                    (self.size_bytes(name) or 0) / 2**30,
                    self.memory_budget_bytes / 2**30,
                )
            await self._bring_in(name)

    async def release_all(self) -> None:
        """Unload every expert (sleeping ones too): the end of a job or of the server."""
        async with self._lock:
            for name, state in list(self._state.items()):
                if state != "cold":
                    try:
                        await self.backends[name].unload()
                    except Exception:
                        log.exception("unloading %s failed", name)
                    self._set(name, "cold")

    def _victim(self, candidates: Sequence[str], upcoming: Sequence[str]) -> str:
        def key(n: str) -> tuple[float, int]:
            next_use = upcoming.index(n) if n in upcoming else math.inf
            return (next_use, -self._lru.index(n))

        return max(candidates, key=key)

    async def _evict(self, name: str) -> None:
        backend = self.backends[name]
        sleeper = _sleeper(backend) if self.swap == "auto" else None
        if sleeper is not None and name not in self._no_sleep:
            try:
                await sleeper.sleep()
            except Exception as e:
                log.warning("expert %s cannot sleep (%s); unloading it instead", name, e)
                self._no_sleep.add(name)
            else:
                self.stats.sleeps += 1
                self._set(name, "asleep")
                log.debug("expert %s asleep", name)
                return
        await backend.unload()
        self.stats.unloads += 1
        self._set(name, "cold")
        log.debug("expert %s unloaded", name)

    async def _bring_in(self, name: str) -> None:
        backend = self.backends[name]
        start = self._clock()
        sleeper = _sleeper(backend)
        if self._state[name] == "asleep" and sleeper is not None:
            await sleeper.wake_up()
            self.stats.wakes += 1
        else:
            await backend.load()
            self.stats.loads += 1
            self.stats.loads_by_expert[name] += 1
        self.stats.load_s += self._clock() - start
        measured = backend.memory_bytes()
        if measured:
            self._measured[name] = measured
        else:
            self._measured.setdefault(name, 0)
        self._set(name, "awake")
        self.stats.max_resident_bytes = max(self.stats.max_resident_bytes, self.resident_bytes())
        self.stats.max_resident_experts = max(self.stats.max_resident_experts, len(self._lru))
        log.debug("expert %s resident (%.2f s)", name, self._clock() - start)

    def _set(self, name: str, state: State) -> None:
        self._state[name] = state
        if name in self._lru:
            self._lru.remove(name)
        if state == "awake":
            self._lru.append(name)

    def _touch(self, name: str) -> None:
        self._lru.remove(name)
        self._lru.append(name)


def plan_order(
    oldest_arrival_s: Mapping[str, float],
    resident: Sequence[str],
    now_s: float,
    max_wait_s: float,
) -> list[str]:
    """The order in which one round serves its groups.

    ``oldest_arrival_s`` maps each expert with pending requests to the arrival time of its
    oldest one; ``resident`` lists the awake experts (least recently used first). Overdue groups
    (oldest request waited ``max_wait_s`` or more) go first, oldest first; then resident
    experts' groups, in ``resident`` order, since they cost no load; then the rest, oldest first.
    """
    overdue = sorted(
        (e for e, t in oldest_arrival_s.items() if now_s - t >= max_wait_s),
        key=lambda e: oldest_arrival_s[e],
    )
    warm = [e for e in resident if e in oldest_arrival_s and e not in overdue]
    cold = sorted(
        (e for e in oldest_arrival_s if e not in overdue and e not in warm),
        key=lambda e: oldest_arrival_s[e],
    )
    return overdue + warm + cold


@dataclass(eq=False)
class _Job:
    expert: str
    request: GenerationRequest
    arrived_s: float
    future: asyncio.Future[Generation] | None = None
    deltas: asyncio.Queue[Delta | BaseException | None] | None = None
    abandoned: bool = False

    @property
    def live(self) -> bool:
        """False once the caller gave up (cancelled or closed its stream): skip the work."""
        if self.future is not None:
            return not self.future.done()
        return not self.abandoned

    def resolve(self, generation: Generation) -> None:
        if self.future is not None and not self.future.done():
            self.future.set_result(generation)

    def fail(self, error: BaseException) -> None:
        if self.future is not None:
            if not self.future.done():
                self.future.set_exception(error)
        elif self.deltas is not None:
            self.deltas.put_nowait(error)
            self.deltas.put_nowait(None)


@dataclass
class SchedulerStats:
    rounds: int = 0
    batches: int = 0
    requests: int = 0
    batch_sizes: Counter[int] = field(default_factory=Counter)


class ExpertScheduler:
    """Queues requests per expert and serves them in windows, one resident group at a time.

    Lifecycle: construct (cheap); :meth:`start` (or the first :meth:`submit`) starts the loop
    on the running event loop; :meth:`submit` / :meth:`stream` / :meth:`run` serve requests;
    :meth:`stop` fails what is still queued with 503 and unloads every expert. The scheduler
    owns the load state of its backends: nothing else should load or unload them meanwhile.
    """

    def __init__(
        self,
        backends: Mapping[str, Backend],
        *,
        memory_budget_bytes: int | None = None,
        max_resident_experts: int | None = None,
        batch_wait_ms: float = 20.0,
        max_batch_size: int = 16,
        max_wait_ms: float = 5000.0,
        swap: SwapMode = "auto",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self.backends = dict(backends)
        self.residency = Residency(
            self.backends,
            memory_budget_bytes=memory_budget_bytes,
            max_resident_experts=max_resident_experts,
            swap=swap,
        )
        self.batch_wait_ms = batch_wait_ms
        self.max_batch_size = max_batch_size
        self.max_wait_ms = max_wait_ms
        self.stats = SchedulerStats()
        self._clock = clock
        self._pending: dict[str, list[_Job]] = {}
        self._arrival = asyncio.Event()
        self._hold: tuple[int, float] | None = None
        self._next_hold: tuple[int, float] | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @classmethod
    def from_config(
        cls, config: SchedulerConfig, backends: Mapping[str, Backend]
    ) -> ExpertScheduler:
        budget = config.memory_budget_gb
        return cls(
            backends,
            memory_budget_bytes=int(budget * 2**30) if budget is not None else None,
            max_resident_experts=config.max_resident_experts,
            batch_wait_ms=config.batch_wait_ms,
            max_batch_size=config.max_batch_size,
            max_wait_ms=config.max_wait_ms,
            swap=config.swap,
        )

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Start the serving loop (idempotent). Experts load on demand, not here."""
        if self._closed:
            raise ServiceUnavailableError("the scheduler was stopped")
        if not self.running:
            self._task = asyncio.create_task(self._loop(), name="expert-scheduler")

    async def stop(self) -> None:
        """Stop serving: queued and in-progress requests fail with 503; every expert unloads."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        _fail_all(self._pending, ServiceUnavailableError("the server is shutting down"))
        self._pending.clear()
        await self.residency.release_all()

    # -- requests ------------------------------------------------------------------------------

    async def submit(self, expert: str, request: GenerationRequest) -> Generation:
        """Queue one request for ``expert`` and wait for its generation.

        Raises what the request's batch raised (see the module docstring). Cancelling the
        caller drops the request if it has not run yet.
        """
        job = self._enqueue(expert, request, stream=False)
        assert job.future is not None
        return await job.future

    async def stream(self, expert: str, request: GenerationRequest) -> AsyncIterator[Delta]:
        """Queue one streamed request; yields the backend's deltas once its group runs.

        The first delta comes after the queue wait and any load. Closing the iterator early
        stops generation at the next delta.
        """
        job = self._enqueue(expert, request, stream=True)
        assert job.deltas is not None
        try:
            while True:
                item = await job.deltas.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            job.abandoned = True

    async def run(
        self, requests: Sequence[tuple[str, GenerationRequest]]
    ) -> list[Generation | BaseException]:
        """Serve a known set of ``(expert, request)`` pairs; results in the same order.

        All are queued before the loop runs again, so they share one window: each expert is
        loaded at most once (given the budget allows one expert at all). A failed request's
        slot holds its exception instead of a generation.
        """
        jobs = [self._enqueue(e, r, stream=False) for e, r in requests]
        futures = [j.future for j in jobs if j.future is not None]
        return list(await asyncio.gather(*futures, return_exceptions=True))

    def hold_window(self, expected_requests: int, timeout_s: float = 10.0) -> None:
        """Keep the next window open until ``expected_requests`` are queued (or ``timeout_s``).

        For callers that start many requests at once whose submissions straggle in over a few
        event-loop turns (the batch job starts one pipeline task per line): without the hold,
        the first window could close before they are all queued and a later round would load
        the same experts again. The timeout only guards against a miscount; correctness never
        depends on it.
        """
        self._hold = (expected_requests, self._clock() + timeout_s)
        self._arrival.set()

    def hold_next_window(self, expected_requests: int, timeout_s: float = 10.0) -> None:
        """After the round that the held window (:meth:`hold_window`) starts, hold the window
        that follows until ``expected_requests`` are queued (or ``timeout_s`` after that round).

        For work that comes in two waves, the second depending on the first: the batch job's
        multi-expert lines (Symbolic-MoE) send the recruited experts' calls in the first round
        and each line's aggregator call once its experts have answered; holding the second
        window puts every aggregator call of the chunk in one round, so the aggregator is
        loaded once. The timeout starts when the first round ends, so slow experts never cut
        the second window short.
        """
        self._next_hold = (expected_requests, timeout_s)

    def pending(self) -> int:
        return sum(len(jobs) for jobs in self._pending.values())

    def _enqueue(self, expert: str, request: GenerationRequest, *, stream: bool) -> _Job:
        if self._closed:
            raise ServiceUnavailableError("the server is shutting down")
        if expert not in self.backends:
            raise ExpertUnavailableError(f"expert '{expert}' is not in the pool")
        if not self.running:
            self._task = asyncio.create_task(self._loop(), name="expert-scheduler")
        job = _Job(expert, request, self._clock())
        if stream:
            job.deltas = asyncio.Queue()
        else:
            job.future = asyncio.get_running_loop().create_future()
        self._pending.setdefault(expert, []).append(job)
        self._arrival.set()
        return job

    # -- the loop ------------------------------------------------------------------------------

    def _window_left_s(self) -> float:
        """Seconds until the current window closes (0: close now)."""
        now = self._clock()
        if self._hold is not None:
            expected, deadline = self._hold
            if self.pending() < expected and now < deadline:
                return deadline - now
            return 0.0
        if any(len(jobs) >= self.max_batch_size for jobs in self._pending.values()):
            return 0.0
        oldest = min(j.arrived_s for jobs in self._pending.values() for j in jobs)
        wait_s = min(self.batch_wait_ms, self.max_wait_ms) / 1000
        return max(0.0, oldest + wait_s - now)

    async def _loop(self) -> None:
        while True:
            self._arrival.clear()
            if not self._pending:
                await self._arrival.wait()
                continue
            left_s = self._window_left_s()
            if left_s > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrival.wait(), left_s)
                continue
            held, (groups, self._pending, self._hold) = self._hold, (self._pending, {}, None)
            try:
                await self._round(groups)
            except asyncio.CancelledError:  # stop(): nobody may wait forever on this round
                _fail_all(groups, ServiceUnavailableError("the server is shutting down"))
                raise
            if held is not None and self._next_hold is not None:
                expected, timeout_s = self._next_hold
                self._next_hold = None
                self._hold = (expected, self._clock() + timeout_s)

    async def _round(self, groups: dict[str, list[_Job]]) -> None:
        self.stats.rounds += 1
        live = {e: [j for j in jobs if j.live] for e, jobs in groups.items()}
        live = {e: jobs for e, jobs in live.items() if jobs}
        order = plan_order(
            {e: min(j.arrived_s for j in jobs) for e, jobs in live.items()},
            self.residency.resident(),
            self._clock(),
            self.max_wait_ms / 1000,
        )
        for i, expert in enumerate(order):
            later = order[i + 1 :]
            upcoming = later + [e for e in self._pending if e not in later]
            try:
                await self._serve(expert, live[expert], upcoming)
            except Exception as e:  # a bug here must not stall every later request
                log.exception("serving expert %s failed", expert)
                for job in live[expert]:
                    job.fail(BackendError(f"the scheduler failed: {type(e).__name__}: {e}"))

    async def _serve(self, expert: str, jobs: list[_Job], upcoming: Sequence[str]) -> None:
        jobs = [j for j in jobs if j.live]
        if not jobs:
            return
        try:
            await self.residency.acquire(expert, upcoming)
        except Exception as e:
            log.warning("expert %s failed to load: %s", expert, e)
            error = ExpertUnavailableError(
                f"expert '{expert}' could not be loaded: {type(e).__name__}: {e}"
            )
            for job in jobs:
                job.fail(error)
            return
        backend = self.backends[expert]
        plain = [j for j in jobs if j.future is not None]
        for start in range(0, len(plain), self.max_batch_size):
            await self._batch(backend, plain[start : start + self.max_batch_size])
        streams = [j for j in jobs if j.deltas is not None]
        if streams:
            await asyncio.gather(*(self._stream(backend, j) for j in streams))

    async def _batch(self, backend: Backend, jobs: list[_Job]) -> None:
        jobs = [j for j in jobs if j.live]
        if not jobs:
            return
        timeout_s = backend.expert.timeout_s
        try:
            generations = await asyncio.wait_for(
                backend.generate([j.request for j in jobs]), timeout=timeout_s
            )
            if len(generations) != len(jobs):
                raise BackendError(
                    f"expert '{backend.expert.name}' returned {len(generations)} generations "
                    f"for {len(jobs)} requests"
                )
        except TimeoutError:
            for job in jobs:
                job.fail(TimeoutError(f"expert '{backend.expert.name}' took over {timeout_s} s"))
            return
        except Exception as e:
            if len(jobs) > 1:  # find the request that broke the batch: the others still answer
                for job in jobs:
                    await self._batch(backend, [job])
                return
            jobs[0].fail(e)
            return
        self.stats.batches += 1
        self.stats.requests += len(jobs)
        self.stats.batch_sizes[len(jobs)] += 1
        for job, generation in zip(jobs, generations, strict=True):
            job.resolve(generation)

    async def _stream(self, backend: Backend, job: _Job) -> None:
        assert job.deltas is not None
        iterator = backend.stream(job.request).__aiter__()
        try:
            while not job.abandoned:
                try:
                    delta = await asyncio.wait_for(anext(iterator), backend.expert.timeout_s)
                except StopAsyncIteration:
                    self.stats.requests += 1
                    break
                job.deltas.put_nowait(delta)
        except asyncio.CancelledError:  # stop(): end the stream with an error, not silently
            job.deltas.put_nowait(ServiceUnavailableError("the server is shutting down"))
            raise
        except Exception as e:
            job.deltas.put_nowait(e)
        finally:
            job.deltas.put_nowait(None)
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()


def _fail_all(groups: Mapping[str, Sequence[_Job]], error: BaseException) -> None:
    for jobs in groups.values():
        for job in jobs:
            job.fail(error)
