"""The replay backend answers as the recorded model did: text, score and cost."""

from __future__ import annotations

import pytest

from orchestrator.config import ExpertConfig
from orchestrator.errors import BackendError, ConfigError, InvalidRequestError
from orchestrator.types import GenerationRequest, Message, SamplingParams
from tests.routing_data import write_llmrouter, write_routerbench
from workers import create_backend
from workers.replay import ReplayBackend


def replay(dataset: str, path, model: str) -> ReplayBackend:
    expert = ExpertConfig(
        name="x", backend="replay", model=model, engine={"dataset": dataset, "path": str(path)}
    )
    backend = create_backend(expert)
    assert isinstance(backend, ReplayBackend)
    return backend


def request(text: str, max_tokens: int = 256) -> GenerationRequest:
    return GenerationRequest(
        (Message("system", "be brief"), Message("user", text)), SamplingParams(max_tokens)
    )


async def test_routerbench_replays_the_recorded_response_score_and_cost(tmp_path):
    backend = replay("routerbench", write_routerbench(tmp_path / "rb"), "mistralai/mistral-7b-chat")
    await backend.load()
    (g,) = await backend.generate([request("Write a function to add two numbers.")])
    assert g.text == "def add(a,b): return a-b"
    assert g.usage.prompt_tokens > 0 and g.usage.completion_tokens > 0
    out = backend.outcome("Write a function to reverse a string.")
    assert (out.score, out.cost_usd, out.recorded_text) == (1.0, pytest.approx(0.0002), True)


async def test_unknown_prompts_are_a_clear_400(tmp_path):
    backend = replay("routerbench", write_routerbench(tmp_path / "rb"), "gpt-4-1106-preview")
    await backend.load()
    with pytest.raises(InvalidRequestError, match="has no prompt 'Tell me a joke'") as info:
        await backend.generate([request("Tell me a joke")])
    assert info.value.code == "prompt_not_recorded"


async def test_a_missing_record_is_a_backend_error_so_fallback_applies(tmp_path):
    backend = replay("routerbench", write_routerbench(tmp_path / "rb"), "mistralai/mistral-7b-chat")
    await backend.load()
    with pytest.raises(BackendError, match="no recorded outcome"):
        await backend.generate([request("Write a function to sort a list.")])


async def test_scores_without_text_answer_with_a_marker(tmp_path):
    backend = replay("llmrouter", write_llmrouter(tmp_path / "lr"), "small-7b")
    await backend.load()
    out = backend.outcome("Name the capital of France.")
    assert not out.recorded_text and out.score == 0.0
    assert "no response text recorded; recorded outcome wrong" in out.text


async def test_unknown_model_or_dataset_fail_loudly(tmp_path):
    backend = replay("routerbench", write_routerbench(tmp_path / "rb"), "gpt-5")
    with pytest.raises(ConfigError, match="recorded: gpt-4-1106-preview"):
        await backend.load()
    with pytest.raises(ConfigError, match=r"engine\.dataset must be one of"):
        create_backend(ExpertConfig(name="y", backend="replay", model="m", engine={}))


async def test_max_tokens_cuts_long_recorded_answers(tmp_path):
    backend = replay("routerbench", write_routerbench(tmp_path / "rb"), "gpt-4-1106-preview")
    await backend.load()
    (g,) = await backend.generate([request("Write a function to add two numbers.", max_tokens=2)])
    assert g.finish_reason == "length" and len(g.text) < len("def add(a, b):\n    return a + b")
