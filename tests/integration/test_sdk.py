"""The SDK (and, side by side, the official openai SDK) against a real demo-like server.

The server runs the demo's four experts with their descriptions and the demo's ``semantic``
strategy (real MiniLM routing), but on the instant ``echo`` backend, plus one expert that always
fails. The docs' examples (README.md and docs/sdk.md, between ``<!-- sdk-examples -->`` markers)
run against the same server.
"""

from __future__ import annotations

import asyncio
import copy
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from orchestrator.demo import demo_config_dict
from orchestrator.sdk import (
    AsyncClient,
    AuthenticationError,
    BackendError,
    Client,
    InvalidRequestError,
    ModelNotFoundError,
    NotFoundError,
    RequestTooLargeError,
    RoutingTrace,
)
from tests.conftest import ROOT, free_port
from tests.server import running_server

KEY = "sk-sdk-test-1"
KEY_ENV = "SDK_TEST_KEY"
MATH = "Solve the equation 2x + 3 = 11"
CODE = "Write a Python function that reverses a string."


def demo_like_config() -> dict[str, Any]:
    config = copy.deepcopy(demo_config_dict())
    for expert in config["experts"]:
        expert.update(backend="echo", model="echo")
    config["experts"].append(
        {"name": "broken", "backend": "echo", "model": "echo", "engine": {"fail": True}}
    )
    config["server"]["api_keys"] = [
        {"name": "sdk", "key_env": KEY_ENV, "scopes": ["user", "admin"]}
    ]
    config["server"]["max_body_bytes"] = 50_000
    return config


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path = tmp_path_factory.mktemp("sdk") / "config.yaml"
    path.write_text(yaml.safe_dump(demo_like_config()))
    with running_server(path, env={KEY_ENV: KEY}) as url:
        yield url


@pytest.fixture
def client(base_url: str) -> Iterator[Client]:
    with Client(base_url, KEY, max_retries=0) as c:
        yield c


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# -- chat ----------------------------------------------------------------------------------------


def test_create_returns_typed_trace(client: Client) -> None:
    r = client.chat.completions.create(messages=user(CODE), max_tokens=64)
    assert r.choices[0].message.content == CODE  # echo answers with the prompt
    assert isinstance(r.routing, RoutingTrace)
    assert r.routing.strategy == "semantic" and r.routing.answered_by == ["code"] == [r.model]
    assert r.routing.candidates[0].expert == "code"
    assert r.usage.completion_tokens == len(CODE.split())


def test_routing_options_reach_the_server(client: Client) -> None:
    r = client.chat.completions.create(messages=user(MATH), strategy="random", k=1)
    assert r.routing.strategy == "random"
    assert {c.expert for c in r.routing.candidates} == {
        "general",
        "math",
        "code",
        "medical",
        "broken",
    }
    budgets = client.chat.completions.create(
        messages=user(MATH), max_cost_usd=0.5, max_latency_ms=5000, max_energy_j=100
    )
    assert budgets.routing.answered_by == ["math"]


@pytest.mark.parametrize(
    ("option", "bad"),
    [
        ("k", 0),
        ("max_cost_usd", -1),
        ("max_latency_ms", 0),
        ("max_energy_j", 0),
        ("strategy", "nope"),
    ],
)
def test_each_routing_option_is_a_flat_body_field(client: Client, option: str, bad: Any) -> None:
    """The server validates each option where it expects it; its 400 names the field."""
    with pytest.raises(InvalidRequestError) as e:
        client.chat.completions.create(messages=user("hi"), **{option: bad})
    assert e.value.status == 400 and e.value.param == option


def test_stream_has_trace_before_iteration(client: Client) -> None:
    with client.chat.completions.stream(messages=user(MATH), include_usage=True) as stream:
        assert stream.routing.answered_by == ["math"]
        assert stream.response.headers["x-routing-expert"] == "math"
        chunks = list(stream)
    assert chunks[0].routing == stream.routing
    assert all(c.routing is None for c in chunks[1:])
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == MATH
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == len(MATH.split())


def test_models(client: Client) -> None:
    kinds = {m.id: m.kind for m in client.models.list()}
    assert {k: kinds[k] for k in ("general", "math", "code", "medical")} == dict.fromkeys(
        ("general", "math", "code", "medical"), "expert"
    )
    assert kinds["auto"] == "router" and kinds["router/semantic"] == "router"


# -- errors --------------------------------------------------------------------------------------


def test_errors_are_the_server_classes(client: Client, base_url: str) -> None:
    with pytest.raises(ModelNotFoundError) as missing:
        client.chat.completions.create(model="router/nope", messages=user("hi"))
    assert isinstance(missing.value, NotFoundError)
    err = missing.value
    assert (err.status, err.type, err.param, err.code) == (
        404,
        "not_found_error",
        "model",
        "model_not_found",
    )
    assert "router/nope" in err.message
    with pytest.raises(BackendError) as broken:  # named expert: no fallback, 502
        client.chat.completions.create(model="broken", messages=user("hi"))
    assert broken.value.status == 502 and "broken" in broken.value.message
    with pytest.raises(BackendError):  # same error before the first token of a stream
        client.chat.completions.stream(model="broken", messages=user("hi"))
    with pytest.raises(RequestTooLargeError) as large:
        client.chat.completions.create(messages=user("x" * 60_000))
    assert large.value.status == 413
    with pytest.raises(InvalidRequestError) as cap:
        client.chat.completions.create(messages=user("hi"), max_tokens=10**6)
    assert cap.value.param == "max_tokens"
    with (
        Client(base_url, "sk-wrong", max_retries=0) as wrong,
        pytest.raises(AuthenticationError) as auth,
    ):
        wrong.models.list()
    assert auth.value.status == 401 and auth.value.type == "authentication_error"


def test_connection_error_is_httpx_after_retries() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with Client(dead, max_retries=1, retry_backoff_s=0.01) as c, pytest.raises(httpx.ConnectError):
        c.models.list()


def test_settings_from_environment(base_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCHESTRATOR_URL", base_url + "/v1")  # the openai-style form works too
    monkeypatch.setenv("ORCHESTRATOR_API_KEY", KEY)
    with Client() as c:
        assert c.base_url == base_url
        assert c.chat.completions.create(model="math", messages=user("hi")).model == "math"
    monkeypatch.delenv("ORCHESTRATOR_API_KEY")
    with Client() as c, pytest.raises(AuthenticationError):
        c.models.list()


# -- asyncio -------------------------------------------------------------------------------------


def test_async_client(base_url: str) -> None:
    async def main() -> tuple[Any, ...]:
        async with AsyncClient(base_url, KEY, max_retries=0) as c:
            done, models = await asyncio.gather(
                c.chat.completions.create(messages=user(CODE)), c.models.list()
            )
            stream = await c.chat.completions.stream(messages=user(MATH))
            async with stream:
                text = "".join([ch.choices[0].delta.content or "" async for ch in stream])
            with pytest.raises(ModelNotFoundError):
                await c.chat.completions.create(model="router/nope", messages=user("hi"))
            ready = await c.admin.ready()
            return done, models, stream.routing, text, ready

    done, models, routing, text, ready = asyncio.run(main())
    assert done.routing.answered_by == ["code"]
    assert "auto" in {m.id for m in models}
    assert routing.answered_by == ["math"] and text == MATH
    assert ready.ready


# -- admin ---------------------------------------------------------------------------------------


def test_admin_health_ready_metrics(client: Client) -> None:
    assert client.admin.health().status == "ok"
    ready = client.admin.wait_ready(timeout_s=10)
    assert ready.ready and ready.experts["math"] == "ready" and set(ready.experts) >= {"broken"}
    client.chat.completions.create(model="medical", messages=user("hi"))
    metrics = client.admin.metrics()
    assert re.search(r'^orchestrator_requests_total\{.*expert="medical".*\} [1-9]', metrics, re.M)


def test_wait_ready_times_out_on_a_dead_url() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with Client(dead, max_retries=0) as c, pytest.raises(TimeoutError, match="not ready"):
        c.admin.wait_ready(timeout_s=0.3, poll_s=0.05)


# -- the official openai SDK, same server ----------------------------------------------------------


def test_openai_sdk_sees_the_same_routing(client: Client, base_url: str) -> None:
    oai = openai.OpenAI(base_url=base_url + "/v1", api_key=KEY, max_retries=0)
    ours = client.chat.completions.create(messages=user(MATH), strategy="semantic", k=1)
    theirs = oai.chat.completions.create(
        model="auto", messages=user(MATH), extra_body={"strategy": "semantic", "k": 1}
    )
    assert theirs.model_extra is not None
    assert RoutingTrace.model_validate(theirs.model_extra["routing"]).candidates == (
        ours.routing.candidates
    )
    chunks = list(
        oai.chat.completions.create(
            model="auto", messages=user(CODE), stream=True, extra_body={"max_latency_ms": 5000}
        )
    )
    assert chunks[0].model_extra is not None
    assert chunks[0].model_extra["routing"]["answered_by"] == ["code"]
    with pytest.raises(openai.NotFoundError) as theirs_err:
        oai.chat.completions.create(model="router/nope", messages=user("hi"))
    with pytest.raises(ModelNotFoundError) as ours_err:
        client.chat.completions.create(model="router/nope", messages=user("hi"))
    assert theirs_err.value.status_code == ours_err.value.status
    assert isinstance(theirs_err.value.body, dict)
    assert theirs_err.value.body["type"] == ours_err.value.type


# -- the docs' examples ----------------------------------------------------------------------------

START, END = "<!-- sdk-examples -->", "<!-- /sdk-examples -->"
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.M | re.S)


def example_section(path: Path) -> str | None:
    """The text between the markers, or None when the file has no start marker."""
    text = path.read_text()
    if START not in text:
        return None
    start = text.index(START) + len(START)
    end = text.find(END, start)
    assert end != -1, f"{path.name}: '{START}' without a closing '{END}'"
    return text[start:end]


@pytest.mark.parametrize("doc", ["README.md", "docs/sdk.md"])
def test_doc_examples_run(doc: str, base_url: str) -> None:
    """The section's ```python blocks, in order, as one script against the live server."""
    section = example_section(ROOT / doc)
    if section is None:
        if doc == "README.md":
            pytest.skip(f"README.md has no '{START}' section yet (the SDK section is pasted there)")
        pytest.fail(f"{doc} has no '{START}' section")
    blocks = PYTHON_BLOCK.findall(section)
    assert blocks, f"{doc}: no ```python blocks between the sdk-examples markers"
    env = {
        **os.environ,
        "ORCHESTRATOR_URL": base_url,
        "ORCHESTRATOR_API_KEY": KEY,
        "PYTHONPATH": str(ROOT),
    }
    run = subprocess.run(
        [sys.executable, "-c", "\n\n".join(blocks)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, f"{doc} examples failed:\n{run.stderr[-3000:]}"
    assert run.stdout.strip(), f"{doc} examples printed nothing"


def test_every_python_block_in_the_sdk_doc_compiles() -> None:
    """Blocks outside the executed section (admin routes the server does not serve yet) must
    at least parse."""
    text = (ROOT / "docs/sdk.md").read_text()
    for i, block in enumerate(PYTHON_BLOCK.findall(text)):
        compile(block, f"docs/sdk.md block {i}", "exec")
