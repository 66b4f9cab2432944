"""Symbolic-MoE on the SmolLM2 demo pool (real transformers experts): `router/symbolic-moe`
answers through recruited experts and an aggregator over HTTP (untrained profiles from the
experts' declared skills), skills come from a real small LLM in-process, and `orchestrator
batch` runs the recruited experts and then the aggregator."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import yaml

from orchestrator.config import ExpertConfig
from orchestrator.demo import demo_config_dict
from orchestrator.types import Message, Query
from routers import create_strategy
from routers.skills import backend_llm
from tests.conftest import ROOT
from tests.server import running_server

MOE = {"k": 2, "min_k": 2, "profiles": "experts"}


def demo_with_moe(tmp_path: Path, **moe: object) -> Path:
    config = demo_config_dict()
    config["experts"] = [{**e, "timeout_s": 1800} for e in config["experts"]]
    config["routing"]["strategies"] = {"symbolic-moe": {**MOE, **moe}}
    config["artifacts_dir"] = str(tmp_path / "artifacts")
    path = tmp_path / "demo-moe.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[openai.OpenAI]:
    with running_server(demo_with_moe(tmp_path_factory.mktemp("moe"))) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=900)


def test_router_symbolic_moe_answers_through_recruited_experts_and_an_aggregator(
    client: openai.OpenAI,
) -> None:
    c = client.chat.completions.create(
        model="router/symbolic-moe",
        messages=[{"role": "user", "content": "Solve the equation 2x + 3 = 11 for x."}],
        max_tokens=32,
    )
    assert (c.choices[0].message.content or "").strip()
    trace = c.model_extra["routing"]
    assert trace["strategy"] == "symbolic-moe"
    assert len(trace["experts"]) >= 2 and trace["experts"][0] == "math"
    assert trace["aggregator"] in {"general", "math", "code", "medical"}
    assert trace["answered_by"] == trace["experts"]
    chars = trace["details"]["answer_chars"]
    assert set(chars) == set(trace["experts"]) and all(n > 0 for n in chars.values())
    assert trace["details"]["skills"] and trace["details"]["profiles"] == "experts"
    # every recruited expert, then the aggregator, answered
    assert [a["expert"] for a in trace["attempts"]] == [*trace["experts"], trace["aggregator"]]
    assert all(a["status"] == "ok" for a in trace["attempts"])
    assert c.usage and c.usage.completion_tokens > 0


def test_streams_the_aggregators_answer(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="router/symbolic-moe",
            messages=[{"role": "user", "content": "What are common symptoms of the flu?"}],
            max_tokens=24,
            stream=True,
        )
    )
    trace = chunks[0].model_extra["routing"]
    assert trace["experts"][0] == "medical" and len(trace["experts"]) == 2
    assert trace["aggregator"] and set(trace["details"]["answer_chars"]) == set(trace["experts"])
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()


def test_skills_from_a_real_small_llm_in_process() -> None:
    pool = [ExpertConfig.model_validate(e) for e in demo_config_dict()["experts"]]
    moe = create_strategy(
        "symbolic-moe", pool, {"profiles": "experts", "skill_method": "llm", "skill_llm": "general"}
    )
    moe.setup()
    llm = backend_llm(pool[0])  # the same callable the strategy builds from `skill_llm`
    moe.set_skill_llm(llm)  # type: ignore[attr-defined]
    query = Query(messages=(Message("user", "Write a Python function that sorts a list."),))
    (d,) = moe.route([query])
    assert d.details["skill_method"] == "llm"
    keywords = d.details["keywords"]
    assert isinstance(keywords, list) and keywords  # SmolLM2 listed some keywords
    assert d.details["skills"] and d.experts
    moe.route([query])  # cached: the LLM is not asked again
    assert moe.inference is not None and moe.inference.cache.hits >= 1  # type: ignore[attr-defined]


def test_batch_runs_recruited_experts_then_the_aggregator(tmp_path: Path) -> None:
    questions = [
        "What is 12 plus 30?",
        "Write a Python function that reverses a string.",
        "What is a common symptom of the flu?",
    ]
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text(
        "".join(
            json.dumps(
                {
                    "custom_id": f"q{i}",
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": {
                        "model": "router/symbolic-moe",
                        "messages": [{"role": "user", "content": q}],
                        "max_tokens": 12,
                    },
                }
            )
            + "\n"
            for i, q in enumerate(questions)
        )
    )
    config = demo_with_moe(tmp_path)
    command = ["batch", str(src), "-o", str(dst), "-c", str(config), "--no-progress"]
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator", *command],
        cwd=ROOT,
        env=os.environ,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in dst.read_text().splitlines()]
    assert len(rows) == 3
    aggregators = set()
    for row in rows:
        body = row["response"]["body"]
        assert row["response"]["status_code"] == 200, body
        assert body["choices"][0]["message"]["content"].strip()
        assert len(body["routing"]["experts"]) == 2 and body["routing"]["aggregator"]
        aggregators.add(body["routing"]["aggregator"])
    assert len(aggregators) == 1  # one aggregator for every query
    rounds = re.search(r"batches in (\d+) rounds", proc.stderr)
    assert rounds is not None and int(rounds.group(1)) == 2, proc.stderr
