"""MoE² trained on a small train split of RouterBench (real MiniLM embeddings), served by the
real HTTP server in front of replay experts: per-request and per-key budgets change the
choice, the trace shows the budget and the chosen subset, and an impossible budget is a 400.

The experts' latency profiles below are test settings (RouterBench records no latencies);
costs come from the gate's cost head, trained on RouterBench's recorded USD."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.config import load_config
from orchestrator.evaluation.datasets import RoutingDataset, load_dataset, sample, split
from orchestrator.evaluation.harness import expert_name, replay_experts
from routers.artifacts import Artifact, ArtifactStore
from routers.moe2 import Moe2Strategy
from tests.server import serving_in_thread

# (ttft_ms, ms_per_output_token): big hosted models slow, small open ones fast.
PROFILES = {
    "gpt-4-1106-preview": (900, 60),
    "claude-v2": (700, 45),
    "claude-v1": (600, 40),
    "gpt-3.5-turbo-1106": (300, 20),
    "claude-instant-v1": (300, 20),
    "meta/llama-2-70b-chat": (250, 45),
    "zero-one-ai/Yi-34B-Chat": (150, 25),
    "meta/code-llama-instruct-34b-chat": (150, 25),
    "mistralai/mixtral-8x7b-chat": (120, 15),
    "WizardLM/WizardLM-13B-V1.2": (80, 12),
    "mistralai/mistral-7b-chat": (60, 8),
}


@pytest.fixture(scope="module")
def routerbench(shared_data: Path) -> tuple[RoutingDataset, RoutingDataset]:
    data, _ = load_dataset("routerbench", shared_data / "routerbench").complete()
    train, test = split(data, 0.3, seed=0)
    return sample(train, 150), test  # MiniLM embeds ~30 long prompts/s here: keep it small


@pytest.fixture(scope="module")
def artifact(routerbench, tmp_path_factory) -> Artifact:
    train, _ = routerbench
    store = ArtifactStore(tmp_path_factory.mktemp("artifacts"))
    return Moe2Strategy.train(train, {"max_epochs": 120}, store)


@pytest.fixture(scope="module")
def server(routerbench, artifact, shared_data) -> Iterator[str]:
    train, _ = routerbench
    experts = []
    for e in replay_experts(train, str(shared_data / "routerbench")):
        ttft, per_token = PROFILES[e.model]
        experts.append(
            {**e.model_dump(), "profile": {"ttft_ms": ttft, "ms_per_output_token": per_token}}
        )
    assert artifact.path is not None
    cfg = load_config(
        None,
        experts=experts,
        routing={"default_strategy": "moe2", "strategies": {"moe2": {"artifact": "latest"}}},
        artifacts_dir=artifact.path.parent.parent,
        server={
            "default_temperature": 0.0,
            "api_keys": [
                {"name": "edge", "key": "edge-key", "budgets": {"max_latency_ms": 400}},
                {"name": "open", "key": "open-key"},
            ],
        },
    )
    with serving_in_thread(cfg) as url:
        yield url


def chat(url: str, prompt: str, key: str = "open-key", **extra: Any) -> httpx.Response:
    body: dict[str, Any] = {
        "model": "router/moe2",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 4000,  # the recorded answers are long; the default 256 would cut them
        **extra,
    }
    headers = {"authorization": f"Bearer {key}"}
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=60)


def recorded(test: RoutingDataset, row: int, expert: str) -> str | None:
    model = {expert_name(m): m for m in test.models}[expert]
    return test.response(row, test.models.index(model))


def test_budgets_change_the_choice_and_the_trace_shows_them(server, routerbench, artifact):
    _, test = routerbench
    row = test.categories.index("mbpp")
    prompt = test.prompts[row]
    free = chat(server, prompt)
    assert free.status_code == 200, free.text
    trace = free.json()["routing"]
    assert trace["strategy"] == "moe2" and trace["version"] == artifact.version
    assert trace["details"]["budget"]["max_latency_ms"] is None
    first = trace["answered_by"][0]
    assert free.json()["choices"][0]["message"]["content"] == recorded(test, row, first)
    slowest_ok = trace["details"]["estimate"]["latency_ms"]

    budget = slowest_ok - 1  # the unbudgeted choice no longer fits
    tight = chat(server, prompt, max_latency_ms=budget)
    assert tight.status_code == 200, tight.text
    trace = tight.json()["routing"]
    assert trace["answered_by"][0] != first
    assert trace["details"]["budget"]["max_latency_ms"] == budget
    assert trace["details"]["budget"]["from_request"] == ["max_latency_ms"]
    assert trace["details"]["subset"] == trace["experts"] == trace["answered_by"]
    assert trace["details"]["estimate"]["latency_ms"] <= budget
    assert f"latency ≤ {budget:g} ms" in trace["reason"]
    answer = tight.json()["choices"][0]["message"]["content"]
    assert answer == recorded(test, row, trace["answered_by"][0])


def test_key_default_budget_and_impossible_budget(server, routerbench):
    _, test = routerbench
    prompt = test.prompts[test.categories.index("winogrande")]
    edge = chat(server, prompt, key="edge-key")
    trace = edge.json()["routing"]
    assert trace["details"]["budget"]["max_latency_ms"] == 400  # the key's default
    assert trace["details"]["estimate"]["latency_ms"] <= 400
    bad = chat(server, prompt, max_latency_ms=1)
    assert bad.status_code == 400
    err = bad.json()["error"]
    assert err["code"] == "budget_infeasible" and err["param"] == "max_latency_ms"
    assert "mistral" in err["message"]  # the fastest expert, and what it needs


def test_two_experts_in_parallel_and_streamed_trace(server, routerbench):
    _, test = routerbench
    row = test.categories.index("arc-challenge")
    r = chat(server, test.prompts[row], k=2)
    trace = r.json()["routing"]
    assert len(trace["experts"]) == 2 and trace["aggregator"] == "first"
    assert len(trace["answered_by"]) == 2
    content = r.json()["choices"][0]["message"]["content"]
    assert content == recorded(test, row, trace["experts"][0])  # the highest-value member
    with httpx.stream(
        "POST",
        f"{server}/v1/chat/completions",
        json={
            "model": "router/moe2",
            "messages": [{"role": "user", "content": test.prompts[row]}],
            "max_tokens": 4000,
            "stream": True,
            "max_cost_usd": 0.001,
        },
        headers={"authorization": "Bearer open-key"},
        timeout=60,
    ) as s:
        first = next(line for line in s.iter_lines() if line.startswith("data: "))
    routing = json.loads(first[6:])["routing"]
    assert routing["details"]["budget"]["max_cost_usd"] == 0.001
    assert routing["details"]["estimate"]["cost_usd"] <= 0.001
