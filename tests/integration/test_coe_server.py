"""A CoE artifact trained on a small train split of RouterBench, served by the real HTTP
server in front of replay experts: ``model: "router/coe"`` routes, and the trace names the
artifact version that served."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.config import load_config
from orchestrator.evaluation.datasets import RoutingDataset, load_dataset, sample, split
from orchestrator.evaluation.harness import expert_name, replay_experts
from routers.artifacts import Artifact, ArtifactStore
from routers.coe import CoEStrategy
from tests.server import serving_in_thread


@pytest.fixture(scope="module")
def routerbench(shared_data: Path) -> tuple[RoutingDataset, RoutingDataset]:
    data, _ = load_dataset("routerbench", shared_data / "routerbench").complete()
    train, test = split(data, 0.3, seed=0)
    return sample(train, 120), test  # MiniLM embeds ~30 long prompts/s here: keep it small


@pytest.fixture(scope="module")
def artifact(routerbench, tmp_path_factory) -> Artifact:
    train, _ = routerbench
    store = ArtifactStore(tmp_path_factory.mktemp("artifacts"))
    return CoEStrategy.train(train, {"min_confidence": 0.0}, store)


@pytest.fixture(scope="module")
def server(routerbench, artifact, shared_data) -> Iterator[str]:
    train, _ = routerbench
    experts = [e.model_dump() for e in replay_experts(train, str(shared_data / "routerbench"))]
    assert artifact.path is not None
    cfg = load_config(
        None,
        experts=experts,
        routing={
            "default_strategy": "coe",
            "strategies": {"coe": {"artifact": "latest", "min_confidence": 0.0}},
        },
        artifacts_dir=artifact.path.parent.parent,
        server={"default_temperature": 0.0},
    )
    with serving_in_thread(cfg) as url:
        yield url


def chat(url: str, prompt: str, model: str = "router/coe") -> httpx.Response:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 4000,  # the recorded answers are long; the default 256 would cut them
    }
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)


def test_router_coe_routes_held_out_prompts_with_the_artifact_version(
    server, routerbench, artifact
):
    _, test = routerbench
    seen = set()
    for category in ("mbpp", "winogrande", "arc-challenge"):
        row = test.categories.index(category)
        r = chat(server, test.prompts[row])
        assert r.status_code == 200, r.text
        body = r.json()
        trace = body["routing"]
        assert trace["strategy"] == "coe" and trace["resolution"] == "routed"
        assert trace["version"] == artifact.version == "v0001"
        assert trace["details"]["category"] in ("mbpp", "winogrande", "arc-challenge")
        assert r.headers["x-routing-strategy"] == "coe"
        expert = trace["answered_by"][0]
        model = {expert_name(m): m for m in test.models}[expert]
        recorded = test.response(row, test.models.index(model))
        assert body["choices"][0]["message"]["content"] == recorded
        seen.add(trace["details"]["category"])
    assert seen == {"mbpp", "winogrande", "arc-challenge"}  # the classifier tells tasks apart


def test_unrecorded_prompts_get_a_clear_400(server):
    r = chat(server, "What is the meaning of life?")
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "prompt_not_recorded" and "routerbench" in err["message"]


def test_models_list_the_coe_router(server):
    ids = [m["id"] for m in httpx.get(f"{server}/v1/models", timeout=10).json()["data"]]
    assert "router/coe" in ids and "gpt-4-1106-preview" in ids
