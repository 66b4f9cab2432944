"""The README's promise: `orchestrator serve` with no config answers through the openai SDK."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from tests.server import running_server


@pytest.fixture(scope="module")
def client() -> Iterator[openai.OpenAI]:
    with running_server() as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_answers_paris(client: openai.OpenAI) -> None:
    c = client.chat.completions.create(model="auto", messages=QUESTION, max_tokens=32)
    assert "Paris" in (c.choices[0].message.content or "")
    trace = c.model_extra["routing"]
    assert trace["answered_by"] == ["general"] and trace["reason"]
    assert c.usage and c.usage.completion_tokens > 0


def test_streams_paris(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(model="auto", messages=QUESTION, max_tokens=32, stream=True)
    )
    assert chunks[0].model_extra["routing"]["answered_by"] == ["general"]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert (
        "Paris" in text and len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 2
    )


def test_routes_code_to_code_expert(client: openai.OpenAI) -> None:
    c = client.chat.completions.create(
        model="auto",
        messages=[{"role": "user", "content": "Write a Python function that reverses a string."}],
        max_tokens=48,
    )
    assert c.model == "code" and "def " in (c.choices[0].message.content or "")


def test_models_and_bad_request(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list()}
    assert {"general", "math", "code", "medical", "auto"} <= ids
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model="general", messages=[{"role": "user", "content": "x"}], max_tokens=0
        )
