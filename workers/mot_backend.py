"""``mot``: one expert that is a trained Mixture of Thoughts (:mod:`routers.mot`).

The expert's ``model`` names the MoT artifact — ``latest``, a version (``v0003``) or a path
to a version folder — under ``engine.artifacts_dir`` (default ``artifacts``, as the config's
``artifacts_dir``). The artifact holds only the router and the interaction layers and names
its frozen members; they are loaded here (causal LMs through the transformers backend's shared
copies, so an expert of the pool on the same model holds its weights once) and checked against
the fingerprints recorded at training.

Per request: the MoT's router picks the primary and peers from the last user message, the
peers prefill once, and the primary decodes with the interaction at every step
(:mod:`routers.mot.inference`). Streaming is real token streaming; the non-streaming result is
the same generation joined. Calls are serialized: the MoT's lock and the locks of the shared
models it uses are held for a whole generation (its hooks sit on those modules meanwhile).

Engine options: ``artifacts_dir``, ``max_input_tokens`` (2048), ``threads`` (torch threads;
default unchanged).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Generator, Iterator, Sequence
from typing import Any

from orchestrator.config import ExpertConfig
from orchestrator.types import Delta, FinishReason, Generation, GenerationRequest, Usage
from workers.base import Backend
from workers.transformers_backend import _acquire, _Loaded, _release

DEVICE = "cpu"
DTYPE = "float32"


class MoTBackend(Backend):
    name = "mot"

    def __init__(self, expert: ExpertConfig) -> None:
        super().__init__(expert)
        opts = expert.engine
        self.artifacts_dir = str(opts.get("artifacts_dir", "artifacts"))
        self.max_input_tokens = int(opts.get("max_input_tokens", 2048))
        self.threads = opts.get("threads")
        self.version: str | None = None
        self._model: Any = None
        self._shared: dict[str, _Loaded] = {}
        self._lock = threading.Lock()

    async def load(self) -> None:
        if self._model is None:
            await asyncio.to_thread(self._load)
        self.loaded = True

    def _load(self) -> None:
        from routers.artifacts import ArtifactStore
        from routers.mot.inference import MoTModel, require_state
        from routers.mot.members import load_full, source_folder

        if self.threads is not None:
            import torch

            torch.set_num_threads(int(self.threads))
        artifact = ArtifactStore(self.artifacts_dir).load("mot", self.expert.model)
        require_state(artifact.state)

        def base(source: str) -> tuple[Any, Any]:
            if not _is_causal(source_folder(source)):
                return load_full(source)
            if source not in self._shared:
                self._shared[source] = _acquire(source, DTYPE, DEVICE)
            loaded = self._shared[source]
            return loaded.model, loaded.tokenizer

        try:
            self._model = MoTModel.from_state(artifact.state, base)
        except BaseException:
            self._release_shared()
            raise
        self.version = artifact.version

    async def unload(self) -> None:
        if self._model is not None:
            self._model = None
            await asyncio.to_thread(self._release_shared)
        self.loaded = False

    def _release_shared(self) -> None:
        for source in list(self._shared):
            _release(source, DTYPE, DEVICE)
        self._shared.clear()

    def memory_bytes(self) -> int:
        if self._model is None:
            return super().memory_bytes()
        seen: set[int] = set()
        total = 0
        for m in self._model.members:
            for p in m.model.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    total += p.numel() * p.element_size()
        return total

    # -- generation -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The shared models' locks (in a fixed order), for a whole generation."""
        with contextlib.ExitStack() as stack:
            stack.enter_context(self._lock)
            for source in sorted(self._shared):
                stack.enter_context(self._shared[source].lock)
            yield

    def _steps(self, request: GenerationRequest) -> Generator[Any, None, None]:
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        with self._locked():
            yield from self._model.stream(
                messages, request.sampling, max_input_tokens=self.max_input_tokens
            )

    def _run(self, request: GenerationRequest) -> Generation:
        text, finish, usage = "", "stop", Usage()
        with contextlib.closing(self._steps(request)) as steps:
            for step in steps:
                text += step.text
                if step.finish is not None:
                    finish = step.finish
                    usage = Usage(step.prompt_tokens, step.completion_tokens)
        return Generation(text, usage, "stop" if finish == "stop" else "length")

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        if not self.loaded:
            await self.load()
        return [await asyncio.to_thread(self._run, r) for r in requests]

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        """Token streaming: the decode loop runs in a thread and pushes each step's text
        (stop strings are handled by the loop, :meth:`routers.mot.inference.MoTModel.stream`)."""
        if not self.loaded:
            await self.load()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        cancelled = threading.Event()

        def run() -> None:
            try:
                with contextlib.closing(self._steps(request)) as steps:
                    for step in steps:
                        loop.call_soon_threadsafe(queue.put_nowait, step)
                        if cancelled.is_set():  # the client went away
                            break
            except BaseException as e:
                loop.call_soon_threadsafe(queue.put_nowait, e)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, None)

        thread = threading.Thread(target=run, name=f"mot-{self.expert.name}", daemon=True)
        thread.start()
        try:
            while True:
                item = await queue.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                if item.finish is not None:
                    reason: FinishReason = "stop" if item.finish == "stop" else "length"
                    yield Delta(
                        item.text, reason, Usage(item.prompt_tokens, item.completion_tokens)
                    )
                elif item.text:
                    yield Delta(item.text)
        finally:
            cancelled.set()
            await asyncio.to_thread(thread.join)


def _is_causal(folder: Any) -> bool:
    import json
    from pathlib import Path

    config = Path(folder) / "config.json"
    if not config.is_file():
        return False
    archs = json.loads(config.read_text()).get("architectures") or []
    return any(str(a).endswith("ForCausalLM") for a in archs)
