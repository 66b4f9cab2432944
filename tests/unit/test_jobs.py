"""Training jobs without Redis or models: the JSONL format, the admin API's validation, auth and
OpenAPI, and the CLI's option parsing. Queue, runner and promotion semantics against a real
Redis are in tests/integration/test_jobs_queue.py; real training in test_jobs_server.py."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import typer

from orchestrator.api import build_app
from orchestrator.config import load_config
from orchestrator.errors import ConfigError
from orchestrator.jobs.cli import parse_option_items
from orchestrator.jobs.work import parse_jsonl, trainable_strategies
from orchestrator.pipeline import Orchestrator

ECHO = [{"name": "alpha", "backend": "echo", "model": "x"}]


def line(**item: Any) -> str:
    return json.dumps(item)


def jsonl_rows(n: int = 24) -> str:
    return "\n".join(
        line(
            prompt=f"question number {i}",
            category="math" if i % 2 else "code",
            scores={"big": 1, "small": i % 2},
            costs={"big": 0.01, "small": 0.001},
        )
        for i in range(n)
    )


# -- JSONL datasets ------------------------------------------------------------------------------


def test_jsonl_becomes_a_routing_dataset() -> None:
    text = "\n".join(
        [
            line(prompt="2+2?", category="math", scores={"a": 1, "b": 0}, costs={"a": 0.5}),
            "",
            line(prompt="def f():", category="code", scores={"b": 0.5, "c": None}, id="x7"),
        ]
    )
    data = parse_jsonl(text, "mine")
    assert data.name == "mine" and len(data) == 2
    assert data.models == ["a", "b", "c"]
    assert data.categories == ["math", "code"]
    assert data.ids == ["mine:1", "x7"]
    assert data.scores[0].tolist()[:2] == [1.0, 0.0] and math.isnan(data.scores[0, 2])
    assert math.isnan(data.scores[1, 0]) and data.scores[1, 1] == 0.5
    assert math.isnan(data.scores[1, 2])  # null = not recorded
    assert data.costs.tolist() == [[0.5, 0.0, 0.0], [0.0, 0.0, 0.0]]
    complete, dropped = data.complete()
    assert len(complete) == 0 and dropped == 2


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('{"prompt": "a", "scores": {"m": 1}}\n{not json', "line 2: not valid JSON"),
        ('{"scores": {"m": 1}}', "line 1: 'prompt' must be a non-empty string"),
        ('{"prompt": "a", "scores": {}}', "line 1: 'scores' must be an object"),
        ('{"prompt": "a", "scores": {"m": 1.5}}', "line 1: scores.m must be a number in [0, 1]"),
        ('{"prompt": "a", "scores": {"m": true}}', "scores.m must be a number"),
        (
            '{"prompt": "a", "scores": {"m": 1}, "costs": {"m": -1}}',
            "costs.m must be a number >= 0",
        ),
        ('{"prompt": "a", "scores": {"m": 1}, "costs": {"n": 1}}', "models without a score: ['n']"),
        ('{"prompt": "a", "category": 3, "scores": {"m": 1}}', "'category' must be"),
        ("[1, 2]", "line 1: expected a JSON object"),
        ('{"prompt": "only one", "scores": {"m": 1}}', "needs at least 2 prompts, found 1"),
    ],
)
def test_jsonl_errors_name_the_line_and_field(text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_jsonl(text)
    assert needle in e.value.message


def test_cli_option_items() -> None:
    assert parse_option_items("coe", ["cost_weight=0.5", "coe.C=2", "refit=false"]) == {
        "cost_weight": 0.5,
        "C": 2,
        "refit": False,
    }
    with pytest.raises(typer.BadParameter):
        parse_option_items("coe", ["knn.k=3"])
    with pytest.raises(typer.BadParameter):
        parse_option_items("coe", ["cost_weight"])


def test_trainable_strategies_are_the_trainable_ones() -> None:
    names = trainable_strategies()
    assert {"coe", "knn", "threshold"} <= set(names)
    assert "random" not in names and "semantic" not in names


# -- the admin API without Redis -----------------------------------------------------------------


def make_app(**kw: Any) -> Any:
    cfg = load_config(None, experts=ECHO, routing={"default_strategy": "random"}, **kw)
    return build_app(Orchestrator(cfg), manage_lifecycle=False)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=make_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        yield c


def error(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()["error"]
    assert set(body) == {"message", "type", "param", "code"}
    return dict(body)


@pytest.mark.parametrize(
    ("body", "param", "needle"),
    [
        ({"strategy": "nope", "dataset": "routerbench"}, "strategy", "unknown strategy 'nope'"),
        ({"strategy": "random", "dataset": "routerbench"}, "strategy", "not trainable; trainable:"),
        (
            {"strategy": "coe", "dataset": "routerbench", "options": {"cost_weight": -1}},
            "options.cost_weight",
            "greater than or equal to 0",
        ),
        (
            {"strategy": "coe", "dataset": "routerbench", "options": {"k": 3}},
            "options.k",
            "unknown option",
        ),
        ({"strategy": "coe", "dataset": "imagenet"}, "dataset", "unknown dataset 'imagenet'"),
        (
            {"strategy": "coe", "dataset": {"name": "jsonl", "jsonl": '{"prompt": 1}'}},
            "dataset.jsonl",
            "line 1: 'prompt' must be",
        ),
        (
            {"strategy": "coe", "dataset": {"name": "jsonl"}},
            "dataset.jsonl",
            "exactly one of 'jsonl'",
        ),
        (
            {"strategy": "coe", "dataset": {"name": "jsonl", "path": "/no/such/file.jsonl"}},
            "dataset.path",
            "not a file the server can read",
        ),
        (
            {"strategy": "coe", "dataset": {"name": "routerbench", "path": "/no/such/folder"}},
            "dataset.path",
            "does not exist on the server",
        ),
        (
            {"strategy": "coe", "dataset": {"name": "jsonl", "jsonl": jsonl_rows(5)}},
            "dataset.jsonl",
            "5 prompts are too few",
        ),
        ({"strategy": "coe", "dataset": "routerbench", "strategey": "x"}, "strategey", "Extra"),
        ({"strategy": "coe", "dataset": "routerbench", "split": "test"}, "split", "'train'"),
        ({"dataset": "routerbench"}, "strategy", "required"),
    ],
)
async def test_bad_submissions_are_400_naming_the_field(
    client: httpx.AsyncClient, body: dict[str, Any], param: str, needle: str
) -> None:
    err = error(await client.post("/admin/jobs", json=body), 400)
    assert err["type"] == "invalid_request_error"
    assert err["param"] == param
    assert needle in err["message"]


async def test_without_redis_jobs_are_503_naming_the_setting(client: httpx.AsyncClient) -> None:
    # A valid submission passes validation, then needs the queue.
    body = {"strategy": "coe", "dataset": {"name": "jsonl", "jsonl": jsonl_rows()}}
    err = error(await client.post("/admin/jobs", json=body), 503)
    assert "redis_url" in err["message"] and err["type"] == "service_unavailable"
    assert "redis_url" in error(await client.get("/admin/jobs"), 503)["message"]
    assert "redis_url" in error(await client.get("/admin/routers"), 503)["message"]


async def test_promote_checks_the_version_before_redis(client: httpx.AsyncClient) -> None:
    err = error(await client.post("/admin/routers/coe/promote", json={"version": "../x"}), 400)
    assert err["param"] == "version"
    err = error(await client.post("/admin/routers/coe/promote", json={"version": "v0042"}), 404)
    assert err["param"] == "version" and "not found" in err["message"]
    err = error(await client.post("/admin/routers/random/promote", json={"version": "v1"}), 400)
    assert err["param"] == "strategy"


async def test_admin_routes_need_the_admin_scope(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_USER_KEY", "user-secret")
    monkeypatch.setenv("T_ADMIN_KEY", "admin-secret")
    app = make_app(
        server={
            "api_keys": [
                {"name": "app", "key_env": "T_USER_KEY", "scopes": ["user"]},
                {"name": "ops", "key_env": "T_ADMIN_KEY", "scopes": ["user", "admin"]},
            ]
        }
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        for method, path in [
            ("GET", "/admin/jobs"),
            ("POST", "/admin/jobs"),
            ("GET", "/admin/jobs/job_x"),
            ("POST", "/admin/jobs/job_x/cancel"),
            ("GET", "/admin/jobs/job_x/plot"),
            ("GET", "/admin/routers"),
            ("POST", "/admin/routers/coe/promote"),
            ("POST", "/admin/routers/coe/rollback"),
        ]:
            assert error(await c.request(method, path), 401)["type"] == "authentication_error"
            user = {"Authorization": "Bearer user-secret"}
            r = await c.request(method, path, headers=user)
            assert error(r, 403)["type"] == "permission_error", path
        admin = {"Authorization": "Bearer admin-secret"}
        r = await c.post("/admin/jobs", json={"strategy": "nope"}, headers=admin)
        assert error(r, 400)["param"] in ("dataset", "strategy")  # past auth, into validation


async def test_openapi_documents_the_admin_routes(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    paths = spec["paths"]
    for path, method in [
        ("/admin/jobs", "post"),
        ("/admin/jobs", "get"),
        ("/admin/jobs/{job_id}", "get"),
        ("/admin/jobs/{job_id}/cancel", "post"),
        ("/admin/jobs/{job_id}/plot", "get"),
        ("/admin/routers", "get"),
        ("/admin/routers/{strategy}/promote", "post"),
        ("/admin/routers/{strategy}/rollback", "post"),
    ]:
        assert method in paths[path], (path, method)
    submit = paths["/admin/jobs"]["post"]
    assert submit["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/JobRequest"
    )
    assert submit["responses"]["202"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/Job"
    )
    assert "image/png" in paths["/admin/jobs/{job_id}/plot"]["get"]["responses"]["200"]["content"]
    schemas = spec["components"]["schemas"]
    assert {"strategy", "options", "dataset", "split"} <= set(schemas["JobRequest"]["properties"])
    assert {"id", "status", "progress", "metrics", "version"} <= set(schemas["Job"]["properties"])
