"""Dispatch stage: the expert pool, and calls to its backends with fallback.

A decision names the experts to call; its candidates (best first) are the fallback order. When
an expert errors, times out or is unavailable, the next unused candidate is tried, up to
``routing.max_fallbacks`` times; every attempt is recorded for the routing trace, and when all
fail the request ends with an explicit :class:`BackendError`, never silently.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from orchestrator.config import ExpertConfig, OrchestratorConfig
from orchestrator.errors import (
    BackendError,
    ExpertUnavailableError,
    InvalidRequestError,
    OrchestratorError,
)
from orchestrator.schedule import ExpertScheduler
from orchestrator.types import Decision, Delta, Generation, GenerationRequest, Message, Query
from workers import Backend, create_backend

log = logging.getLogger(__name__)

AttemptStatus = Literal["ok", "error", "timeout", "unavailable"]


@dataclass(frozen=True, slots=True)
class Attempt:
    expert: str
    status: AttemptStatus
    latency_ms: float
    error: str | None = None


def build_request(
    expert: ExpertConfig, query: Query, context: Sequence[Message] = ()
) -> GenerationRequest:
    """The messages an expert sees: its system prompt first, merged with the client's system
    and developer messages into one system message; tool results become user turns (small
    chat templates know only system/user/assistant).

    ``context`` (a decision's :attr:`~orchestrator.types.Decision.context`, e.g. retrieved
    passages) goes right after the expert's system prompt: system messages join the one system
    message (before the client's), other roles become turns before the conversation."""
    system = [expert.system_prompt] if expert.system_prompt else []
    system += [m.content for m in context if m.role in ("system", "developer")]
    turns: list[Message] = [m for m in context if m.role not in ("system", "developer")]
    for m in query.messages:
        if m.role in ("system", "developer"):
            system.append(m.content)
        elif m.role == "tool":
            turns.append(
                Message("user", f"[tool result{f' {m.name}' if m.name else ''}]\n{m.content}")
            )
        else:
            turns.append(m)
    head = (Message("system", "\n\n".join(system)),) if system else ()
    return GenerationRequest(head + tuple(turns), query.sampling)


class ExpertPool:
    """Backends by expert name, their load state and per-expert concurrency limits."""

    def __init__(
        self,
        config: OrchestratorConfig,
        backend_factory: Callable[[ExpertConfig], Backend] = create_backend,
    ) -> None:
        """``backend_factory`` builds each expert's backend (the Ray ingress passes one that
        forwards to the expert's deployment)."""
        self.config = config
        self.backends: dict[str, Backend] = {e.name: backend_factory(e) for e in config.experts}
        self.errors: dict[str, str] = {}
        self._slots = {e.name: asyncio.Semaphore(e.max_concurrency) for e in config.experts}
        # With a `scheduler` section, experts load on demand within its memory budget and every
        # call goes through it (grouped by expert); see orchestrator/schedule.py.
        self.scheduler = (
            ExpertScheduler.from_config(config.scheduler, self.backends)
            if config.scheduler is not None
            else None
        )

    async def start(self) -> None:
        """Load every expert; a failure marks that expert unavailable instead of failing all.

        With a scheduler, load nothing: the scheduler loads experts when queries need them."""
        if self.scheduler is not None:
            await self.scheduler.start()
            return
        for name, backend in self.backends.items():
            try:
                await backend.load()
                self.errors.pop(name, None)
            except Exception as e:
                log.exception("expert %s failed to load", name)
                self.errors[name] = f"{type(e).__name__}: {e}"

    async def stop(self) -> None:
        if self.scheduler is not None:
            await self.scheduler.stop()
        for backend in self.backends.values():
            try:
                await backend.unload()
            except Exception:
                log.exception("unloading %s failed", backend.expert.name)

    def status(self) -> dict[str, str]:
        if self.scheduler is not None:
            return {
                n: "ready" if b.loaded else "ready (not resident)" for n, b in self.backends.items()
            }
        return {
            name: "ready" if b.loaded else f"unavailable: {self.errors.get(name, 'not loaded')}"
            for name, b in self.backends.items()
        }

    def ready(self) -> bool:
        if self.scheduler is not None:
            return self.scheduler.running
        return any(b.loaded for b in self.backends.values())

    def get(self, name: str) -> Backend:
        backend = self.backends.get(name)
        if backend is None:
            raise ExpertUnavailableError(f"expert '{name}' is not in the pool")
        if not backend.loaded and self.scheduler is None:
            raise ExpertUnavailableError(
                f"expert '{name}' is not loaded ({self.errors.get(name, 'loading')})"
            )
        return backend

    def slot(self, name: str) -> asyncio.Semaphore:
        return self._slots[name]


class Dispatcher:
    def __init__(self, pool: ExpertPool) -> None:
        self.pool = pool
        self.routing = pool.config.routing

    def fallback_order(self, decision: Decision, primary: str) -> list[str]:
        """``primary`` first, then unused candidates, capped by ``max_fallbacks``."""
        if not self.routing.fallback:
            return [primary]
        rest = [c.expert for c in decision.candidates if c.expert not in decision.experts]
        return [primary, *rest[: self.routing.max_fallbacks]]

    async def generate(
        self, decision: Decision, query: Query
    ) -> tuple[list[tuple[str, Generation]], list[Attempt]]:
        """Call every chosen expert concurrently, each with its own fallback chain."""
        attempts: list[Attempt] = []
        used: set[str] = set(decision.experts)

        async def one(primary: str) -> tuple[str, Generation]:
            order = [primary] + [
                e for e in self.fallback_order(decision, primary)[1:] if e not in used
            ]
            last: OrchestratorError | None = None
            for expert in order:
                used.add(expert)
                try:
                    return expert, await self._call(expert, query, attempts, decision.context)
                except InvalidRequestError:
                    raise  # the request is wrong for every expert: do not fall back
                except OrchestratorError as e:
                    last = e
            raise BackendError(
                f"every expert tried failed ({', '.join(a.expert for a in attempts)}): "
                f"{last.message if last else 'no expert'}"
            )

        results = await asyncio.gather(*(one(e) for e in decision.experts))
        return list(results), attempts

    async def _call(
        self,
        expert: str,
        query: Query,
        attempts: list[Attempt],
        context: Sequence[Message] = (),
    ) -> Generation:
        start = time.perf_counter()
        try:
            backend = self.pool.get(expert)
            if self.pool.scheduler is not None:  # it bounds batches and times each one itself
                return await self._scheduled(expert, backend, query, attempts, start, context)
            async with self.pool.slot(expert):
                generation = await asyncio.wait_for(
                    backend.generate_one(build_request(backend.expert, query, context)),
                    timeout=backend.expert.timeout_s,
                )
        except TimeoutError:
            attempts.append(Attempt(expert, "timeout", _ms(start), "timed out"))
            raise BackendError(f"expert '{expert}' timed out") from None
        except ExpertUnavailableError as e:
            attempts.append(Attempt(expert, "unavailable", _ms(start), e.message))
            raise
        except InvalidRequestError:
            raise
        except Exception as e:
            msg = e.message if isinstance(e, OrchestratorError) else f"{type(e).__name__}: {e}"
            log.warning("expert %s failed: %s", expert, msg)
            attempts.append(Attempt(expert, "error", _ms(start), msg))
            raise BackendError(msg) from e
        attempts.append(Attempt(expert, "ok", _ms(start)))
        return generation

    async def _scheduled(
        self,
        expert: str,
        backend: Backend,
        query: Query,
        attempts: list[Attempt],
        start: float,
        context: Sequence[Message] = (),
    ) -> Generation:
        assert self.pool.scheduler is not None
        generation = await self.pool.scheduler.submit(
            expert, build_request(backend.expert, query, context)
        )
        attempts.append(Attempt(expert, "ok", _ms(start)))
        return generation

    async def open_stream(
        self, decision: Decision, query: Query, attempts: list[Attempt]
    ) -> tuple[str, AsyncIterator[Delta]]:
        """Start streaming from the first expert that produces a first delta.

        Fallback is possible until the first delta: after that the client has text, and a
        failure ends the stream with an error event instead.
        """
        last = "no expert"
        for expert in self.fallback_order(decision, decision.experts[0]):
            start = time.perf_counter()
            try:
                backend = self.pool.get(expert)
            except ExpertUnavailableError as e:
                attempts.append(Attempt(expert, "unavailable", _ms(start), e.message))
                last = e.message
                continue
            slot = self.pool.slot(expert)
            await slot.acquire()
            request = build_request(backend.expert, query, decision.context)
            scheduler = self.pool.scheduler
            iterator = (
                scheduler.stream(expert, request) if scheduler else backend.stream(request)
            ).__aiter__()
            try:
                first = await asyncio.wait_for(anext(iterator), timeout=backend.expert.timeout_s)
            except (TimeoutError, Exception) as e:
                slot.release()
                if isinstance(e, InvalidRequestError):
                    raise
                status: AttemptStatus = "timeout" if isinstance(e, TimeoutError) else "error"
                last = e.message if isinstance(e, OrchestratorError) else f"{type(e).__name__}: {e}"
                attempts.append(Attempt(expert, status, _ms(start), last))
                continue
            attempts.append(Attempt(expert, "ok", _ms(start)))
            return expert, _chain(first, iterator, slot, backend.expert.timeout_s)
        raise BackendError(f"every expert tried failed: {last}")


async def _chain(
    first: Delta, rest: AsyncIterator[Delta], slot: asyncio.Semaphore, timeout_s: float
) -> AsyncIterator[Delta]:
    try:
        yield first
        while True:
            try:
                delta = await asyncio.wait_for(anext(rest), timeout=timeout_s)
            except StopAsyncIteration:
                return
            yield delta
    finally:
        slot.release()
        aclose = getattr(rest, "aclose", None)
        if aclose is not None:
            await aclose()


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 2)
