"""The SDK's own logic, isolated with httpx.MockTransport: request bodies, settings, error
mapping, retries and backoff, SSE parsing, job polling, and how light the import is. The SDK
against a real server is tests/integration/test_sdk.py."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from orchestrator import errors
from orchestrator.sdk import (
    ERROR_TYPES,
    AsyncClient,
    BackendError,
    Client,
    ContextWindowError,
    InvalidRequestError,
    Job,
    ModelNotFoundError,
    OrchestratorError,
    RateLimitError,
    RetryPolicy,
    ServiceUnavailableError,
    _retry,
)
from orchestrator.sdk._errors import error_from_response
from orchestrator.sdk._streaming import SSEDecoder
from tests.conftest import ROOT

Handler = Callable[[httpx.Request], httpx.Response]

TRACE = {
    "requested_model": "auto",
    "resolution": "routed",
    "strategy": "semantic",
    "experts": ["math"],
    "candidates": [{"expert": "math", "score": 0.9}, {"expert": "code", "score": 0.1}],
    "reason": "nearest",
    "answered_by": ["math"],
}
COMPLETION = {
    "id": "c1",
    "created": 1,
    "model": "math",
    "choices": [{"message": {"content": "4"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    "routing": TRACE,
}
HI = [{"role": "user", "content": "hi"}]


def client_for(handler: Handler, **kw: Any) -> Client:
    kw.setdefault("max_retries", 2)
    return Client(
        "http://sdk.test",
        "sk-1",
        http_client=httpx.Client(transport=httpx.MockTransport(handler)),
        **kw,
    )


def error_response(
    status: int, type_: str, headers: dict[str, str] | None = None, **info: Any
) -> httpx.Response:
    body = errors.error_body(
        info.pop("message", f"a {type_}"), type_, info.get("param"), info.get("code")
    )
    return httpx.Response(status, json=body, headers=headers)


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ORCHESTRATOR_URL", raising=False)
    monkeypatch.delenv("ORCHESTRATOR_API_KEY", raising=False)


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record the SDK's waits instead of sleeping."""
    waited: list[float] = []

    async def asleep(s: float) -> None:
        waited.append(s)

    monkeypatch.setattr(_retry, "sleep", waited.append)
    monkeypatch.setattr(_retry, "asleep", asleep)
    return waited


# -- requests ------------------------------------------------------------------------------------


def test_routing_options_are_flat_body_fields() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=COMPLETION)

    r = client_for(handler).chat.completions.create(
        messages=HI,
        max_tokens=8,
        strategy="semantic",
        k=2,
        max_cost_usd=0.01,
        max_latency_ms=900,
        max_energy_j=5,
        temperature=None,  # None means "not sent"
        extra_body={"vendor": {"x": 1}},
    )
    (request,) = seen
    assert request.method == "POST" and request.url == "http://sdk.test/v1/chat/completions"
    assert json.loads(request.content) == {
        "model": "auto",
        "messages": HI,
        "max_tokens": 8,
        "strategy": "semantic",
        "k": 2,
        "max_cost_usd": 0.01,
        "max_latency_ms": 900,
        "max_energy_j": 5,
        "vendor": {"x": 1},
    }
    assert request.headers["authorization"] == "Bearer sk-1"
    assert request.headers["user-agent"].startswith("expert-orchestrator-sdk/")
    assert r.routing.candidates[1].expert == "code" and r.choices[0].message.content == "4"


def test_misspelt_option_fails_before_sending() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("nothing should be sent")

    with pytest.raises(TypeError, match="max_latency_ms"):
        client_for(handler).chat.completions.create(messages=HI, max_latency=5)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match=r"stream\(\.\.\.\)"):
        client_for(handler).chat.completions.create(messages=HI, stream=True)  # type: ignore[call-arg]


def test_settings_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    default = Client()
    assert (default.base_url, default.api_key) == ("http://127.0.0.1:8000", None)
    monkeypatch.setenv("ORCHESTRATOR_URL", "http://env:9/v1/")
    monkeypatch.setenv("ORCHESTRATOR_API_KEY", "sk-env")
    from_env = Client()
    assert (from_env.base_url, from_env.api_key) == ("http://env:9", "sk-env")
    explicit = Client("http://arg:1", "sk-arg")
    assert (explicit.base_url, explicit.api_key) == ("http://arg:1", "sk-arg")
    for c in (default, from_env, explicit):
        c.close()


# -- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize("error_type", sorted(ERROR_TYPES))
def test_every_error_type_maps_to_its_class(error_type: str) -> None:
    cls = ERROR_TYPES[error_type]
    err = error_from_response(
        error_response(cls.status_code, error_type, message="boom", param="p", code="c")
    )
    assert type(err) is cls
    assert (err.status, err.type, err.message, err.param, err.code) == (
        cls.status_code,
        error_type,
        "boom",
        "p",
        "c",
    )


def test_error_refinements_and_fallbacks() -> None:
    missing = error_from_response(error_response(404, "not_found_error", code="model_not_found"))
    assert type(missing) is ModelNotFoundError
    too_long = error_from_response(
        error_response(400, "invalid_request_error", code="context_length_exceeded")
    )
    assert type(too_long) is ContextWindowError
    # A 405 the server reports as invalid_request_error keeps its real status.
    method = error_from_response(error_response(405, "invalid_request_error"))
    assert type(method) is InvalidRequestError and method.status == 405
    # A newer server's unknown type: class by status, type string kept.
    newer = error_from_response(error_response(503, "overloaded_error"))
    assert type(newer) is ServiceUnavailableError and newer.type == "overloaded_error"
    # A proxy's HTML page.
    html = error_from_response(httpx.Response(502, text="<html>Bad Gateway</html>"))
    assert type(html) is BackendError and "Bad Gateway" in html.message
    teapot = error_from_response(httpx.Response(418, text=""))
    assert type(teapot) is InvalidRequestError and teapot.status == 418
    limited = error_from_response(error_response(429, "rate_limit_error", {"Retry-After": "7"}))
    assert isinstance(limited, RateLimitError) and limited.retry_after_s == 7.0


# -- retries -------------------------------------------------------------------------------------


def scripted(*responses: httpx.Response | Exception) -> tuple[Handler, list[httpx.Request]]:
    seen: list[httpx.Request] = []
    queue = list(responses)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        item = queue.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    return handler, seen


def test_429_honours_retry_after(sleeps: list[float]) -> None:
    handler, seen = scripted(
        error_response(429, "rate_limit_error", {"Retry-After": "3"}),
        httpx.Response(200, json=COMPLETION),
    )
    assert client_for(handler).chat.completions.create(messages=HI).model == "math"
    assert len(seen) == 2 and sleeps == [3.0]


def test_503_backs_off_then_raises(sleeps: list[float]) -> None:
    handler, seen = scripted(*[error_response(503, "service_unavailable")] * 3)
    with pytest.raises(ServiceUnavailableError):
        client_for(handler, retry_backoff_s=0.5).models.list()
    assert len(seen) == 3
    assert 0.25 <= sleeps[0] <= 0.5 and 0.5 <= sleeps[1] <= 1.0


def test_long_retry_after_is_not_waited_out(sleeps: list[float]) -> None:
    handler, seen = scripted(error_response(429, "rate_limit_error", {"Retry-After": "3600"}))
    with pytest.raises(RateLimitError) as e:
        client_for(handler).models.list()
    assert len(seen) == 1 and sleeps == [] and e.value.retry_after_s == 3600


@pytest.mark.parametrize(
    "error_type",
    [
        "invalid_request_error",
        "authentication_error",
        "not_found_error",
        "server_error",
        "backend_error",
    ],
)
def test_other_statuses_are_not_retried(error_type: str, sleeps: list[float]) -> None:
    cls = ERROR_TYPES[error_type]
    handler, seen = scripted(error_response(cls.status_code, error_type))
    with pytest.raises(cls):
        client_for(handler).models.list()
    assert len(seen) == 1 and sleeps == []


def test_connection_errors_are_retried_read_timeouts_are_not(sleeps: list[float]) -> None:
    models = httpx.Response(200, json={"data": []})
    handler, seen = scripted(
        httpx.ConnectError("refused"), httpx.RemoteProtocolError("closed"), models
    )
    assert client_for(handler).models.list() == []
    assert len(seen) == 3 and len(sleeps) == 2
    handler, seen = scripted(httpx.ReadTimeout("slow"), models)
    with pytest.raises(httpx.ReadTimeout):
        client_for(handler).models.list()
    assert len(seen) == 1


def test_async_client_retries(sleeps: list[float]) -> None:
    handler, seen = scripted(
        error_response(503, "service_unavailable", {"Retry-After": "2"}),
        httpx.Response(200, json=COMPLETION),
    )

    async def main() -> str:
        http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        async with AsyncClient("http://sdk.test", http_client=http) as c:
            r = await c.chat.completions.create(messages=HI, strategy="semantic")
        return r.routing.strategy

    assert asyncio.run(main()) == "semantic"
    assert len(seen) == 2 and sleeps == [2.0]
    assert json.loads(seen[1].content)["strategy"] == "semantic"


def test_backoff_doubles_caps_and_reads_http_dates() -> None:
    policy = RetryPolicy(max_retries=10, backoff_s=1.0, max_backoff_s=4.0)
    delays = [policy.delay_s(n) for n in range(5)]
    for delay, base in zip(delays, [1, 2, 4, 4, 4], strict=True):
        assert delay is not None and base / 2 <= delay <= base
    assert policy.delay_s(10) is None  # retries spent
    assert policy.delay_s(0, status=400) is None
    soon = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    delay = policy.delay_s(0, status=429, headers={"retry-after": soon})
    assert delay is not None and 25 <= delay <= 30
    assert policy.delay_s(0, status=503, headers={"retry-after": "soon-ish"}) is not None


# -- streaming -----------------------------------------------------------------------------------


def sse(*events: dict[str, Any] | str) -> bytes:
    return b"".join(
        b"data: " + (e if isinstance(e, str) else json.dumps(e)).encode() + b"\n\n" for e in events
    )


def chunk(content: str | None = None, **extra: Any) -> dict[str, Any]:
    delta = {} if content is None else {"content": content}
    return {"id": "s", "created": 1, "model": "math", "choices": [{"delta": delta}], **extra}


def stream_client(body: bytes) -> Client:
    return client_for(
        lambda _: httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})
    )


def test_sse_decoder_follows_the_spec_subset() -> None:
    d = SSEDecoder()
    lines = [": keep-alive", "event: x", "data: a", "data:b", "", "", "data: c"]
    assert [d.feed(line) for line in lines] == [None, None, None, None, "a\nb", None, None]
    assert d.flush() == "c" and d.flush() is None


def test_stream_yields_first_chunk_then_the_rest() -> None:
    body = sse(chunk("", routing=TRACE), chunk("x"), chunk("y"), "[DONE]", chunk("after done"))
    with stream_client(body).chat.completions.stream(messages=HI) as s:
        assert s.routing.answered_by == ["math"]
        texts = [c.choices[0].delta.content for c in s]
    assert texts == ["", "x", "y"]


def test_error_event_mid_stream_raises_its_class() -> None:
    body = sse(
        chunk("", routing=TRACE),
        chunk("x"),
        errors.error_body("expert died", "backend_error"),
        "[DONE]",
    )
    s = stream_client(body).chat.completions.stream(messages=HI)
    got: list[str | None] = []
    with pytest.raises(BackendError) as e:
        for c in s:
            got.append(c.choices[0].delta.content)
    assert got == ["", "x"] and e.value.status == 502 and e.value.message == "expert died"
    assert s.response.is_closed


def test_stream_errors_before_first_chunk_raise_from_stream() -> None:
    failing = stream_client(sse(errors.error_body("no", "service_unavailable")))
    with pytest.raises(ServiceUnavailableError):
        failing.chat.completions.stream(messages=HI)
    untraced = stream_client(sse(chunk("x"), "[DONE]"))
    with pytest.raises(OrchestratorError, match="no routing trace"):
        untraced.chat.completions.stream(messages=HI)


# -- admin ---------------------------------------------------------------------------------------


def test_jobs_wait_reports_progress_until_done(sleeps: list[float]) -> None:
    states = [("queued", None), ("running", 0.5), ("running", 0.5), ("succeeded", 1.0)]
    polls = iter(states)

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.raw_path == b"/admin/jobs/j%2F1"  # the id is one path segment
        status, progress = next(polls)
        return httpx.Response(200, json={"id": "j/1", "status": status, "progress": progress})

    seen: list[tuple[str, float | None]] = []
    job = client_for(handler).admin.jobs.wait(
        "j/1", poll_s=0.1, on_progress=lambda j: seen.append((j.status, j.progress))
    )
    assert job.status == "succeeded" and job.done
    assert seen == [("queued", None), ("running", 0.5), ("succeeded", 1.0)]
    assert sleeps == [0.1] * 3


def test_jobs_wait_times_out(sleeps: list[float]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"id": "j", "status": "running", "progress": 0.1})

    with pytest.raises(TimeoutError, match="still running"):
        client_for(handler).admin.jobs.wait("j", timeout_s=0)
    assert Job(id="j", status="failed").done


def test_ready_503_is_a_value_but_other_503s_raise() -> None:
    not_ready = httpx.Response(503, json={"status": "not ready", "experts": {"a": "loading"}})
    r = client_for(lambda _: not_ready, max_retries=0).admin.ready()
    assert not r.ready and r.experts == {"a": "loading"}
    overloaded = error_response(503, "service_unavailable")
    with pytest.raises(ServiceUnavailableError):
        client_for(lambda _: overloaded, max_retries=0).admin.ready()


# -- import weight -------------------------------------------------------------------------------

HEAVY = ("torch", "ray", "vllm", "fastapi", "sentence_transformers", "orchestrator.api")


def test_importing_the_sdk_stays_light() -> None:
    """In the full environment every heavy package is importable, so an accidental import
    would show up in sys.modules (the clean-venv integration test would fail to import)."""
    code = f"import sys, orchestrator.sdk; print([m for m in {HEAVY!r} if m in sys.modules])"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
