"""The HTTP API's integration suite, unchanged, against the Ray Serve deployment.

The application is built the way ``serve deploy`` / KubeRay build it — Serve's app builder
``orchestrator.ray_app:app_builder`` with ``{"config_path": ...}`` — on the session's local Ray
cluster (loopback, no dashboard), under its own route prefix. Every ``test_*`` of
``test_http_openai_sdk`` runs here too, with this module's ``base_url``: non-streaming and
streaming chat through the official openai SDK (trace in the first chunk), models.list, errors.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import httpx
import openai
import pytest
import yaml

from tests.conftest import serve_app
from tests.integration import test_http_openai_sdk as http_suite
from tests.integration.test_http_openai_sdk import CONFIG, KEY, client

APP = "http-api"

# The suite's tests, collected again in this module, so they use the Ray base_url below.
globals().update({n: f for n, f in vars(http_suite).items() if n.startswith("test_")})
__all__ = ["client"]  # the suite's client fixture, re-exported for its tests


@pytest.fixture(scope="module")
def base_url(ray_serve: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    config = copy.deepcopy(CONFIG)
    # Replicas do not share this process's environment: give the key itself, not key_env.
    config["server"]["api_keys"] = [{"name": "tests", "key": KEY, "scopes": ["user"]}]
    path = tmp_path_factory.mktemp("ray") / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    with serve_app(ray_serve, APP, path) as url:
        yield url


def test_deployment_graph_matches_the_serve_config() -> None:
    from ray import serve

    from orchestrator.config import load_config
    from orchestrator.ray_app import serve_config

    app = serve.status().applications[APP]
    assert app.status == "RUNNING"
    assert set(app.deployments) == {
        "ingress",
        "router",
        "expert-math",
        "expert-code",
        "expert-broken",
    }
    assert all(d.status == "HEALTHY" for d in app.deployments.values())
    generated = serve_config(load_config(None, **copy.deepcopy(CONFIG)), "unused")
    assert {d["name"] for d in generated["applications"][0]["deployments"]} == set(app.deployments)


def test_streaming_trace_comes_first(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="auto",
        messages=[{"role": "user", "content": "Write a python function to reverse a string"}],
        stream=True,
    )
    chunks = list(stream)
    first = chunks[0]
    assert first.choices[0].delta.role == "assistant"
    trace = first.model_extra["routing"]
    assert trace["answered_by"] == ["code"] and trace["strategy"] == "semantic"
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_errors_raised_in_a_replica_keep_their_type(client: openai.OpenAI) -> None:
    """The router deployment rejects an unknown strategy: the 400 crosses the handle as itself."""
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model="auto",
            messages=[{"role": "user", "content": "hi"}],
            extra_body={"strategy": "no-such-strategy"},
        )
    assert e.value.body["type"] == "invalid_request_error" and e.value.body["param"] == "strategy"


def test_ready_lists_remote_experts(base_url: str) -> None:
    ready = httpx.get(base_url + "/ready").json()
    assert ready["experts"] == {"math": "ready", "code": "ready", "broken": "ready"}
