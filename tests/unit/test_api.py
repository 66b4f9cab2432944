"""The HTTP API over the echo backend (instant, no models) and a fake strategy."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from orchestrator.api import build_app
from orchestrator.config import load_config
from orchestrator.pipeline import Orchestrator

KEYWORD = "tests.fakes:KeywordStrategy"


def make_config(**kw: Any):
    experts = kw.pop(
        "experts",
        [
            {"name": "alpha", "backend": "echo", "model": "x"},
            {"name": "beta", "backend": "echo", "model": "x"},
            {"name": "gamma", "backend": "echo", "model": "x", "engine": {"reply": "from gamma"}},
        ],
    )
    routing = {"default_strategy": KEYWORD, **kw.pop("routing", {})}
    return load_config(None, experts=experts, routing=routing, **kw)


@pytest.fixture
async def client(request: pytest.FixtureRequest) -> AsyncIterator[httpx.AsyncClient]:
    cfg = getattr(request, "param", None) or make_config()
    orch = Orchestrator(cfg)
    await orch.start()
    app = build_app(orch, manage_lifecycle=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        yield c
    await orch.stop()


def chat(content: str = "hello there", **kw: Any) -> dict[str, Any]:
    return {"model": "auto", "messages": [{"role": "user", "content": content}], **kw}


def sse(text: str) -> list[Any]:
    out = []
    for line in text.splitlines():
        if line.startswith("data: "):
            payload = line[6:]
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def assert_openai_error(r: httpx.Response, status: int, err_type: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == err_type and body["error"]["message"]
    return body["error"]


async def test_completion_with_trace(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/chat/completions", json=chat("please ask beta"))
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == "please ask beta"
    assert body["model"] == "beta"
    trace = body["routing"]
    assert trace["strategy"] == "keyword" and trace["answered_by"] == ["beta"]
    assert trace["candidates"][0] == {"expert": "beta", "score": 2.0}
    assert trace["resolution"] == "routed" and trace["reason"]
    assert r.headers["x-routing-expert"] == "beta"
    assert r.headers["x-routing-strategy"] == "keyword"
    usage = body["usage"]
    assert usage["completion_tokens"] == 3 and usage["total_tokens"] == usage["prompt_tokens"] + 3


async def test_named_expert_and_unknown_model(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/chat/completions", json={**chat(), "model": "gamma"})
    assert r.json()["choices"][0]["message"]["content"] == "from gamma"
    assert r.json()["routing"]["strategy"] == "direct"
    r = await client.post("/v1/chat/completions", json={**chat(), "model": "gpt-4o"})
    assert r.status_code == 200
    assert r.json()["routing"]["resolution"] == "unknown"


async def test_max_tokens_reaches_backend(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/chat/completions", json=chat("one two three four", max_tokens=2))
    body = r.json()
    assert body["choices"][0]["message"]["content"] == "one two"
    assert body["choices"][0]["finish_reason"] == "length"


async def test_stream_with_usage_and_trace_first(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/v1/chat/completions",
        json=chat("stream to beta now", stream=True, stream_options={"include_usage": True}),
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["x-routing-expert"] == "beta"
    events = sse(r.text)
    assert events[-1] == "[DONE]"
    first, *rest = events[:-1]
    assert first["choices"][0]["delta"]["role"] == "assistant"
    assert first["routing"]["answered_by"] == ["beta"]
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in rest if e["choices"])
    assert text == "stream to beta now"
    finals = [e for e in rest if e["choices"] and e["choices"][0]["finish_reason"]]
    assert [f["choices"][0]["finish_reason"] for f in finals] == ["stop"]
    usage = rest[-1]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 4


async def test_models_health_ready_metrics(client: httpx.AsyncClient) -> None:
    ids = [m["id"] for m in (await client.get("/v1/models")).json()["data"]]
    assert {"alpha", "beta", "gamma", "auto", "router/semantic", "router/direct"} <= set(ids)
    assert (await client.get("/health")).json() == {"status": "ok"}
    ready = (await client.get("/ready")).json()
    assert ready["experts"] == {"alpha": "ready", "beta": "ready", "gamma": "ready"}
    await client.post("/v1/chat/completions", json=chat("beta"))
    metrics = (await client.get("/metrics")).text
    assert (
        'orchestrator_requests_total{expert="beta",status="ok",strategy="keyword"} 1.0' in metrics
    )
    assert 'orchestrator_routing_decisions_total{expert="beta",strategy="keyword"}' in metrics


@pytest.mark.parametrize(
    ("body", "status", "etype", "param"),
    [
        (b"{not json", 400, "invalid_request_error", None),
        (b"", 400, "invalid_request_error", None),
        (
            json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode(),
            400,
            "invalid_request_error",
            "model",
        ),
        (json.dumps(chat(temperature=5)).encode(), 400, "invalid_request_error", "temperature"),
        (
            json.dumps({"model": "auto", "messages": []}).encode(),
            400,
            "invalid_request_error",
            "messages",
        ),
        (
            json.dumps(
                {"model": "auto", "messages": [{"role": "wizard", "content": "x"}]}
            ).encode(),
            400,
            "invalid_request_error",
            "messages.0.role",
        ),
        (json.dumps(chat(max_tokens=100000)).encode(), 400, "invalid_request_error", "max_tokens"),
        (json.dumps({**chat(), "model": "router/nope"}).encode(), 404, "not_found_error", "model"),
        (json.dumps(chat(strategy="nope")).encode(), 400, "invalid_request_error", "strategy"),
        (json.dumps(chat("x" * 2_000_000)).encode(), 413, "request_too_large", None),
    ],
)
async def test_bad_requests(
    client: httpx.AsyncClient, body: bytes, status: int, etype: str, param: str | None
) -> None:
    r = await client.post(
        "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
    )
    err = assert_openai_error(r, status, etype)
    assert err["param"] == param


async def test_unknown_route_and_method(client: httpx.AsyncClient) -> None:
    assert_openai_error(await client.get("/v1/nothing"), 404, "not_found_error")
    assert_openai_error(await client.get("/v1/chat/completions"), 405, "invalid_request_error")


FAILING = make_config(
    experts=[
        {"name": "broken", "backend": "echo", "model": "x", "engine": {"fail": True}},
        {"name": "spare", "backend": "echo", "model": "x"},
    ]
)


@pytest.mark.parametrize("client", [FAILING], indirect=True)
async def test_fallback_is_traced(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/chat/completions", json=chat("broken please"))
    assert r.status_code == 200
    trace = r.json()["routing"]
    assert trace["experts"] == ["broken"] and trace["answered_by"] == ["spare"]
    assert trace["fallback"] is True
    assert [(a["expert"], a["status"]) for a in trace["attempts"]] == [
        ("broken", "error"),
        ("spare", "ok"),
    ]
    r = await client.post("/v1/chat/completions", json=chat("broken please", stream=True))
    first = sse(r.text)[0]
    assert first["routing"]["answered_by"] == ["spare"] and first["routing"]["fallback"]
    metrics = (await client.get("/metrics")).text
    assert 'orchestrator_fallbacks_total{from_expert="broken",to_expert="spare"} 2.0' in metrics


@pytest.mark.parametrize("client", [FAILING], indirect=True)
async def test_named_expert_failure_is_an_explicit_error(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/chat/completions", json={**chat(), "model": "broken"})
    err = assert_openai_error(r, 502, "backend_error")
    assert "configured to fail" in err["message"]
    r = await client.post(
        "/v1/chat/completions", json={**chat(), "model": "broken", "stream": True}
    )
    assert_openai_error(r, 502, "backend_error")


KEYED = make_config(
    server={
        "api_keys": [
            {"name": "u", "key": "user-key", "scopes": ["user"]},
            {"name": "a", "key": "admin-key", "scopes": ["user", "admin"]},
        ]
    }
)


@pytest.mark.parametrize("client", [KEYED], indirect=True)
async def test_api_keys(client: httpx.AsyncClient) -> None:
    assert_openai_error(
        await client.post("/v1/chat/completions", json=chat()), 401, "authentication_error"
    )
    bad = {"authorization": "Bearer nope"}
    assert_openai_error(await client.get("/v1/models", headers=bad), 401, "authentication_error")
    ok = await client.post(
        "/v1/chat/completions", json=chat(), headers={"authorization": "Bearer user-key"}
    )
    assert ok.status_code == 200
    assert (await client.get("/health")).status_code == 200  # probes need no key


ENSEMBLE = make_config(routing={"strategies": {KEYWORD: {"k": 2, "aggregator": "vote"}}})


@pytest.mark.parametrize("client", [ENSEMBLE], indirect=True)
async def test_multi_expert_decision(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/chat/completions", json=chat("gamma and alpha"))
    trace = r.json()["routing"]
    assert len(trace["answered_by"]) == 2 and trace["aggregator"] == "vote"


async def test_requests_cannot_name_outside_code(client: httpx.AsyncClient) -> None:
    import sys

    for name in ["json.tool:main", "os:system", ":", "x:"]:
        r = await client.post("/v1/chat/completions", json=chat(strategy=name))
        err = assert_openai_error(r, 400, "invalid_request_error")
        assert err["param"] == "strategy"
    assert "json.tool" not in sys.modules


def test_registry_rejects_malformed_names() -> None:
    from orchestrator.errors import ConfigError
    from routers import get_strategy_class

    for bad in [":", "a:", ":B", "a b:C"]:
        with pytest.raises(ConfigError):
            get_strategy_class(bad)
