"""The pipeline in one process: ingress → route → dispatch → aggregate.

:class:`Orchestrator` owns the expert pool, the strategies and the metrics; the HTTP app (and
later the Ray Serve ingress) calls :meth:`complete` or :meth:`start_stream` and serializes what
they return. Errors are raised as :mod:`orchestrator.errors` classes; mapping them to HTTP
happens in :mod:`orchestrator.api` only.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from orchestrator import aggregate
from orchestrator.config import OrchestratorConfig
from orchestrator.dispatch import Attempt, Dispatcher, ExpertPool
from orchestrator.errors import OrchestratorError
from orchestrator.ingress import ROUTER_PREFIX, Target, resolve_model, to_query
from orchestrator.metrics import Metrics
from orchestrator.protocol import (
    AttemptOut,
    CandidateOut,
    ChatCompletion,
    ChatCompletionRequest,
    ChatMessageOut,
    ChoiceOut,
    ModelCard,
    ModelList,
    RoutingTrace,
    UsageOut,
)
from orchestrator.route import StrategySet
from orchestrator.store import RedisStore
from orchestrator.types import Decision, Delta, Generation, Query, Usage

log = logging.getLogger(__name__)


class Orchestrator:
    def __init__(
        self,
        config: OrchestratorConfig,
        metrics: Metrics | None = None,
        *,
        pool: ExpertPool | None = None,
        strategies: StrategySet | None = None,
    ) -> None:
        """``pool`` and ``strategies`` default to in-process ones; the Ray ingress passes its
        remote ones (:mod:`orchestrator.ray_app`)."""
        self.config = config
        self.pool = pool or ExpertPool(config)
        self.strategies = strategies or StrategySet(config)
        self.dispatcher = Dispatcher(self.pool)
        self.metrics = metrics or Metrics()
        self.store = RedisStore(config.redis_url)
        self.created = int(time.time())
        self.started = False

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Load experts and set up the default strategy, so the first request is fast."""
        await self.pool.start()
        await asyncio.to_thread(self.strategies.warm, [self.config.routing.default_strategy])
        self.started = True

    async def stop(self) -> None:
        await self.pool.stop()
        await self.store.close()
        self.started = False

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready when started and at least one expert is loaded. Redis being down does not make
        the service unready: it is reported with the features it degrades."""
        ok = self.started and self.pool.ready()
        detail: dict[str, Any] = {
            "status": "ready" if ok else "not ready",
            "experts": self.pool.status(),
        }
        if self.store.configured:
            await self.store.ping()
            detail["redis"] = self.store.status()
            if not self.store.available:
                detail["degraded"] = [
                    "rate and concurrency limits are not enforced",
                    "knowledge store (retrieval for router/expertrag, /admin/kb) answers 503",
                ]
        return ok, detail

    def models(self) -> ModelList:
        cards = [
            ModelCard(
                id=e.name,
                created=self.created,
                owned_by="expert-orchestrator",
                kind="expert",
                description=e.description,
            )
            for e in self.config.experts
        ]
        cards.append(
            ModelCard(
                id="auto",
                created=self.created,
                owned_by="expert-orchestrator",
                kind="router",
                description=f"routed by the default strategy "
                f"({self.config.routing.default_strategy})",
            )
        )
        cards += [
            ModelCard(
                id=ROUTER_PREFIX + s,
                created=self.created,
                owned_by="expert-orchestrator",
                kind="router",
                description=f"routed by the {s} strategy",
            )
            for s in self.strategies.names()
        ]
        return ModelList(data=cards)

    # -- requests ----------------------------------------------------------------------------

    async def _route(self, request: ChatCompletionRequest) -> tuple[Query, Target, Decision, float]:
        query = to_query(request, self.config)
        target = resolve_model(request.model, self.config, self.strategies.names())
        start = time.perf_counter()
        decision = await self.strategies.decide(query, target)
        route_s = time.perf_counter() - start
        self.metrics.route_latency.labels(decision.strategy).observe(route_s)
        for e in decision.experts:
            self.metrics.decisions.labels(decision.strategy, e).inc()
        return query, target, decision, route_s * 1000

    async def complete(
        self,
        request: ChatCompletionRequest,
        routed: tuple[Query, Target, Decision, float] | None = None,
    ) -> ChatCompletion:
        """Answer one request. ``routed`` (query, target, decision, route_ms) skips routing:
        the batch job routes whole chunks at once (``StrategySet.decide_batch``)."""
        start = time.perf_counter()
        query, target, decision, route_ms = routed or await self._route(request)
        try:
            answers, attempts = await self.dispatcher.generate(decision, query)
            generation, answered = await self._aggregate(decision, query, answers, attempts)
        except OrchestratorError as e:
            self.metrics.requests.labels(decision.strategy, decision.experts[0], "error").inc()
            self.metrics.errors.labels(e.error_type).inc()
            raise
        total_ms = (time.perf_counter() - start) * 1000
        trace = self._trace(
            request,
            target,
            decision,
            attempts,
            answered,
            {"route": route_ms, "total": total_ms},
            _answer_details(answers),
        )
        self._record(decision, attempts, answered, generation.usage, total_ms, stream=False)
        return ChatCompletion(
            id=f"chatcmpl-{uuid.uuid4().hex}",
            created=int(time.time()),
            model=answered[0] if len(answered) == 1 else request.model,
            choices=[
                ChoiceOut(
                    message=ChatMessageOut(content=generation.text),
                    finish_reason=generation.finish_reason,
                )
            ],
            usage=_usage(generation.usage),
            routing=trace,
        )

    async def _aggregate(
        self,
        decision: Decision,
        query: Query,
        answers: list[tuple[str, Generation]],
        attempts: list[Attempt],
    ) -> tuple[Generation, list[str]]:
        answered = [e for e, _ in answers]
        aggregator = decision.aggregator
        if len(answers) > 1 and aggregator in self.pool.backends:
            synth = Decision(
                decision.strategy, (aggregator,), decision.candidates[:1], "aggregator"
            )
            [(_, final)], more = await self.dispatcher.generate(
                synth, aggregate.synthesis_query(query, answers)
            )
            attempts.extend(more)
            usage = sum((g.usage for _, g in answers), final.usage)
            return Generation(final.text, usage, final.finish_reason), answered
        return aggregate.combine(decision, answers), answered

    async def start_stream(
        self, request: ChatCompletionRequest
    ) -> tuple[RoutingTrace, AsyncIterator[dict[str, Any]]]:
        """Route and open the stream; errors before the first token raise normally.

        Returns the routing trace (for headers) and an iterator of chunk dicts: the first chunk
        carries the role and the trace, then content deltas, a final chunk with
        finish_reason, and (``stream_options.include_usage``) a usage chunk. A failure after
        the first chunk yields ``{"error": ...}`` and ends the stream.
        """
        start = time.perf_counter()
        query, target, decision, route_ms = await self._route(request)
        attempts: list[Attempt] = []
        details: dict[str, Any] = {}
        try:
            if len(decision.experts) == 1:
                expert, deltas = await self.dispatcher.open_stream(decision, query, attempts)
                answered = [expert]
            else:
                answers, more = await self.dispatcher.generate(decision, query)
                attempts.extend(more)
                answered = [e for e, _ in answers]
                details = _answer_details(answers)
                deltas = await self._aggregate_stream(decision, query, answers, attempts)
        except OrchestratorError as e:
            self.metrics.requests.labels(decision.strategy, decision.experts[0], "error").inc()
            self.metrics.errors.labels(e.error_type).inc()
            raise
        first_ms = (time.perf_counter() - start) * 1000
        trace = self._trace(
            request,
            target,
            decision,
            attempts,
            answered,
            {"route": route_ms, "first_token": first_ms},
            details,
        )
        include_usage = bool(request.stream_options and request.stream_options.include_usage)
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        model = answered[0] if len(answered) == 1 else request.model

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
            body: dict[str, Any] = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            body.update(extra)
            return body

        async def chunks() -> AsyncIterator[dict[str, Any]]:
            usage = Usage()
            status = "ok"
            try:
                yield chunk(
                    {"role": "assistant", "content": ""}, routing=trace.model_dump(mode="json")
                )
                async for d in deltas:
                    if d.text:
                        yield chunk({"content": d.text})
                    if d.finish_reason is not None:
                        usage = d.usage or usage
                        yield chunk({}, d.finish_reason)
                if include_usage:
                    body = chunk({}, None, usage=_usage(usage).model_dump())
                    body["choices"] = []
                    yield body
            except Exception as e:
                status = "error"
                err = (
                    e
                    if isinstance(e, OrchestratorError)
                    else OrchestratorError(f"the stream failed: {type(e).__name__}: {e}")
                )
                log.warning("stream from %s failed: %s", answered, err.message)
                self.metrics.errors.labels(err.error_type).inc()
                yield err.body()
            finally:
                total_ms = (time.perf_counter() - start) * 1000
                self._record(
                    decision, attempts, answered, usage, total_ms, stream=True, status=status
                )

        return trace, chunks()

    async def _aggregate_stream(
        self,
        decision: Decision,
        query: Query,
        answers: list[tuple[str, Generation]],
        attempts: list[Attempt],
    ) -> AsyncIterator[Delta]:
        aggregator = decision.aggregator
        if aggregator in self.pool.backends:
            synth = Decision(
                decision.strategy, (aggregator,), decision.candidates[:1], "aggregator"
            )
            _, deltas = await self.dispatcher.open_stream(
                synth, aggregate.synthesis_query(query, answers), attempts
            )
            return deltas
        final = aggregate.combine(decision, answers)

        async def one() -> AsyncIterator[Delta]:
            yield Delta(final.text, final.finish_reason, final.usage)

        return one()

    # -- trace and metrics -------------------------------------------------------------------

    def _trace(
        self,
        request: ChatCompletionRequest,
        target: Target,
        decision: Decision,
        attempts: list[Attempt],
        answered: list[str],
        timings: dict[str, float],
        details: dict[str, Any] | None = None,
    ) -> RoutingTrace:
        """``details`` (what the answers were like, e.g. their lengths) join the decision's."""
        return RoutingTrace(
            requested_model=request.model,
            resolution=target.resolution,
            strategy=decision.strategy,
            experts=list(decision.experts),
            candidates=[
                CandidateOut(expert=c.expert, score=round(c.score, 4)) for c in decision.candidates
            ],
            reason=decision.reason,
            answered_by=answered,
            fallback=any(a.status != "ok" for a in attempts),
            attempts=[
                AttemptOut(expert=a.expert, status=a.status, error=a.error, latency_ms=a.latency_ms)
                for a in attempts
            ],
            aggregator=decision.aggregator,
            version=decision.version,
            details={**decision.details, **(details or {})},
            timings_ms={k: round(v, 2) for k, v in timings.items()},
        )

    def _record(
        self,
        decision: Decision,
        attempts: list[Attempt],
        answered: list[str],
        usage: Usage,
        total_ms: float,
        *,
        stream: bool,
        status: str = "ok",
    ) -> None:
        m = self.metrics
        m.latency.labels(decision.strategy, str(stream).lower()).observe(total_ms / 1000)
        for a in attempts:
            m.expert_latency.labels(a.expert).observe(a.latency_ms / 1000)
        for e in answered:
            m.requests.labels(decision.strategy, e, status).inc()
        expert = answered[0] if answered else decision.experts[0]
        m.tokens.labels(expert, "prompt").inc(usage.prompt_tokens)
        m.tokens.labels(expert, "completion").inc(usage.completion_tokens)
        failed = [a.expert for a in attempts if a.status != "ok"]
        if failed and answered:
            m.fallbacks.labels(failed[0], answered[0]).inc()


def _answer_details(answers: list[tuple[str, Generation]]) -> dict[str, Any]:
    """For several experts' answers (an ensemble): each answer's length in characters."""
    if len(answers) < 2:
        return {}
    return {"answer_chars": {e: len(g.text) for e, g in answers}}


def _usage(u: Usage) -> UsageOut:
    return UsageOut(
        prompt_tokens=u.prompt_tokens,
        completion_tokens=u.completion_tokens,
        total_tokens=u.total_tokens,
    )
