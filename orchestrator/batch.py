"""The offline batch job behind ``orchestrator batch``: OpenAI Batch-style JSONL in and out.

Input, one request per line (OpenAI's batch input format)::

    {"custom_id": "q1", "method": "POST", "url": "/v1/chat/completions", "body": {...}}

Output, one line per non-blank input line (OpenAI's batch output format)::

    {"id": "batch_req_…", "custom_id": "q1",
     "response": {"status_code": 200, "request_id": "req_…", "body": <chat.completion>},
     "error": null}

A request the server would refuse or fail (invalid body, unknown model, every expert failed)
gets that HTTP status and OpenAI's error body in ``response``, exactly as the HTTP API would
answer it. A line that is no request at all (not JSON, not UTF-8, wrong ``method`` or ``url``,
missing or repeated ``custom_id``) gets ``"response": null`` and ``"error": {"code",
"message"}``. A bad line never stops the job and no line is dropped. Lines are written as they
finish, so the order differs from the input: match on ``custom_id`` (as with OpenAI).

How: the file is read in chunks of ``chunk_lines``. Each chunk is routed in one call per
strategy (:meth:`StrategySet.decide_batch`), then answered through the same pipeline as the
server (fallback, aggregation, routing trace), every expert call going through the
:class:`~orchestrator.schedule.ExpertScheduler` in one window: grouped by expert, each group one
``generate`` batch (up to ``max_batch_size``), each expert loaded at most once per chunk under
the memory budget. Fallbacks and aggregator calls run in later rounds; the aggregator calls
of multi-expert lines (Symbolic-MoE: k recruited experts, then an aggregator expert) are held
into one round of their own (:meth:`ExpertScheduler.hold_next_window`), so each recruited
expert is loaded once for the chunk and the aggregator once more after them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from pydantic import ValidationError

from orchestrator.config import OrchestratorConfig, SchedulerConfig
from orchestrator.errors import (
    ConfigError,
    InvalidRequestError,
    OrchestratorError,
    RequestTooLargeError,
)
from orchestrator.ingress import Target, resolve_model, to_query
from orchestrator.protocol import ChatCompletionRequest
from orchestrator.schedule import ResidencyStats, SchedulerStats
from orchestrator.types import Decision, Query

if TYPE_CHECKING:
    from orchestrator.pipeline import Orchestrator

log = logging.getLogger(__name__)

CHAT_URL = "/v1/chat/completions"
DEFAULT_CHUNK_LINES = 10_000
HOLD_TIMEOUT_S = 5.0
"""Guard on the chunk's window: it closes when every first call is queued, or after this."""


@dataclass(frozen=True, slots=True)
class BatchSummary:
    """What a batch job did: line counts, wall time and what swapping cost."""

    lines: int
    ok: int
    failed: int
    elapsed_s: float
    residency: ResidencyStats
    scheduler: SchedulerStats


@dataclass(frozen=True, slots=True)
class _Request:
    number: int
    custom_id: str
    request: ChatCompletionRequest


@dataclass(frozen=True, slots=True)
class _Routed:
    request: _Request
    query: Query
    target: Target
    decision: Decision
    route_ms: float


def count_lines(path: Path) -> int:
    """Non-blank lines of ``path``: the number of output lines the job will write."""
    with path.open("rb") as f:
        return sum(1 for raw in f if raw.strip())


def _line(custom_id: str | None, response: dict[str, Any] | None, error: Any = None) -> str:
    out = {
        "id": f"batch_req_{uuid.uuid4().hex}",
        "custom_id": custom_id,
        "response": response,
        "error": error,
    }
    return json.dumps(out, ensure_ascii=False, separators=(",", ":"))


def _failed_line(custom_id: str | None, code: str, message: str) -> str:
    return _line(custom_id, None, {"code": code, "message": message})


def _response_line(custom_id: str, status_code: int, body: dict[str, Any]) -> str:
    return _line(
        custom_id,
        {"status_code": status_code, "request_id": f"req_{uuid.uuid4().hex}", "body": body},
    )


def _error_response_line(custom_id: str, e: OrchestratorError) -> str:
    return _response_line(custom_id, e.status_code, e.body())


def _parse(raw: bytes, number: int, max_body_bytes: int, seen: dict[str, int]) -> _Request | str:
    """A request, or the finished output line explaining why the input line is not one."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return _failed_line(None, "invalid_encoding", f"line {number} is not UTF-8: {e}")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        return _failed_line(None, "invalid_json", f"line {number} is not valid JSON: {e}")
    if not isinstance(obj, dict):
        return _failed_line(None, "invalid_request", f"line {number} is not a JSON object")
    custom_id = obj.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return _failed_line(
            None, "missing_custom_id", f"line {number} has no custom_id (a non-empty string)"
        )
    if custom_id in seen:
        return _failed_line(
            custom_id,
            "duplicate_custom_id",
            f"line {number} repeats the custom_id of line {seen[custom_id]}; "
            "custom_ids must be unique",
        )
    seen[custom_id] = number
    if obj.get("method", "POST") != "POST":
        return _failed_line(
            custom_id, "invalid_method", f"line {number}: method must be POST, not {obj['method']}"
        )
    if obj.get("url") != CHAT_URL:
        return _failed_line(
            custom_id,
            "invalid_url",
            f"line {number}: url {obj.get('url')!r} is not supported; use {CHAT_URL}",
        )
    body = obj.get("body")
    if not isinstance(body, dict):
        return _failed_line(custom_id, "missing_body", f"line {number} has no body object")
    if len(raw) > max_body_bytes:
        return _error_response_line(
            custom_id, RequestTooLargeError(f"line {number} exceeds {max_body_bytes} bytes")
        )
    try:
        request = ChatCompletionRequest.model_validate(body)
    except ValidationError as e:
        from orchestrator.api import _invalid  # the server's own 400s, word for word

        return _error_response_line(custom_id, _invalid(e.errors()))
    return _Request(number, custom_id, request)


def _chunks(f: IO[bytes], size: int) -> Iterator[list[tuple[int, bytes]]]:
    chunk: list[tuple[int, bytes]] = []
    for number, raw in enumerate(f, start=1):
        if raw.strip():
            chunk.append((number, raw.rstrip(b"\r\n")))
            if len(chunk) >= size:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def job_config(config: OrchestratorConfig, strategy: str | None) -> OrchestratorConfig:
    """The configuration the job runs with: the scheduler always on (the config's section, or
    its defaults), and ``strategy`` as the default strategy when given."""
    from routers import list_strategies

    routing = config.routing
    if strategy is not None:
        if strategy not in list_strategies() and ":" not in strategy:
            raise ConfigError(
                f"unknown strategy '{strategy}'; valid: {', '.join(list_strategies())}"
            )
        routing = routing.model_copy(update={"default_strategy": strategy})
    return config.model_copy(
        update={"scheduler": config.scheduler or SchedulerConfig(), "routing": routing}
    )


async def run_batch(
    config: OrchestratorConfig,
    input_path: Path,
    output_path: Path,
    *,
    strategy: str | None = None,
    chunk_lines: int = DEFAULT_CHUNK_LINES,
    on_line: Callable[[bool], None] | None = None,
) -> BatchSummary:
    """Answer every request of ``input_path`` into ``output_path`` (see the module docstring).

    ``strategy`` replaces ``routing.default_strategy`` for this job (a line's
    ``router/<name>`` model or ``strategy`` field still wins). ``on_line(ok)`` is called once
    per written line. Raises :class:`ConfigError` for a bad ``strategy``; I/O errors on the
    files propagate. Per-line problems never raise.
    """
    from orchestrator.pipeline import Orchestrator

    config = job_config(config, strategy)
    orchestrator = Orchestrator(config)
    scheduler = orchestrator.pool.scheduler
    assert scheduler is not None
    start = time.perf_counter()
    lines = ok = 0
    seen: dict[str, int] = {}

    def write(out: IO[str], line: str, success: bool) -> None:
        nonlocal lines, ok
        out.write(line + "\n")
        lines += 1
        ok += success
        if on_line is not None:
            on_line(success)

    await orchestrator.start()
    try:
        with input_path.open("rb") as f, output_path.open("w", encoding="utf-8") as out:
            for chunk in _chunks(f, chunk_lines):
                requests: list[_Request] = []
                for number, raw in chunk:
                    parsed = _parse(raw, number, config.server.max_body_bytes, seen)
                    if isinstance(parsed, str):
                        write(out, parsed, False)
                    else:
                        requests.append(parsed)
                routed = await _route(orchestrator, requests, lambda line: write(out, line, False))
                # One window for the chunk: each routed line submits one call per chosen expert.
                scheduler.hold_window(
                    sum(len(r.decision.experts) for r in routed), timeout_s=HOLD_TIMEOUT_S
                )
                # Lines with several experts and an aggregator (Symbolic-MoE) call the
                # aggregator once their experts answered: all such calls form the next round.
                aggregated = sum(
                    len(r.decision.experts) > 1
                    and r.decision.aggregator in orchestrator.pool.backends
                    for r in routed
                )
                if aggregated:
                    scheduler.hold_next_window(aggregated, timeout_s=HOLD_TIMEOUT_S)
                tasks = [asyncio.create_task(_answer(orchestrator, r)) for r in routed]
                for finished in asyncio.as_completed(tasks):
                    line, success = await finished
                    write(out, line, success)
                out.flush()
    finally:
        await orchestrator.stop()
    return BatchSummary(
        lines=lines,
        ok=ok,
        failed=lines - ok,
        elapsed_s=time.perf_counter() - start,
        residency=scheduler.residency.stats,
        scheduler=scheduler.stats,
    )


async def _route(
    orchestrator: Orchestrator, requests: list[_Request], fail: Callable[[str], None]
) -> list[_Routed]:
    """Decisions for a chunk: named experts directly, the rest in one batch per strategy.

    A request that cannot be routed gets its error line through ``fail``."""
    config = orchestrator.config
    strategies = orchestrator.strategies
    names = strategies.names()
    routed: list[_Routed] = []
    by_strategy: dict[str, list[tuple[_Request, Query, Target]]] = {}
    for r in requests:
        try:
            query = to_query(r.request, config)
            target = resolve_model(r.request.model, config, names)
            if target.expert is not None:
                routed.append(_Routed(r, query, target, await strategies.decide(query, target), 0))
                continue
            name = query.options.strategy or target.strategy or config.routing.default_strategy
            if name not in names and ":" not in name:
                raise InvalidRequestError(
                    f"unknown strategy '{name}'; valid: {', '.join(names)}", param="strategy"
                )
        except OrchestratorError as e:
            fail(_error_response_line(r.custom_id, e))
            continue
        by_strategy.setdefault(name, []).append((r, query, target))
    for name, group in by_strategy.items():
        start = time.perf_counter()
        try:
            decisions = await strategies.decide_batch([q for _, q, _ in group], name)
        except Exception as e:
            log.exception("strategy %s failed on a batch of %d", name, len(group))
            err = (
                e
                if isinstance(e, OrchestratorError)
                else OrchestratorError(f"routing failed: {type(e).__name__}: {e}")
            )
            for r, _, _ in group:
                fail(_error_response_line(r.custom_id, err))
            continue
        route_ms = (time.perf_counter() - start) * 1000 / len(group)
        for (r, query, target), decision in zip(group, decisions, strict=True):
            routed.append(_Routed(r, query, target, decision, route_ms))
    return routed


async def _answer(orchestrator: Orchestrator, routed: _Routed) -> tuple[str, bool]:
    """The output line for one routed request, and whether it succeeded."""
    request = routed.request
    try:
        completion = await orchestrator.complete(
            request.request, (routed.query, routed.target, routed.decision, routed.route_ms)
        )
    except OrchestratorError as e:
        return _error_response_line(request.custom_id, e), False
    except Exception as e:  # a bug must cost one line, not the job
        log.exception("line %d failed", request.number)
        err = OrchestratorError(f"internal error: {type(e).__name__}: {e}")
        return _response_line(request.custom_id, err.status_code, err.body()), False
    return _response_line(request.custom_id, 200, completion.model_dump(mode="json")), True


__all__ = ["BatchSummary", "count_lines", "job_config", "run_batch"]
