"""``transformers``: real local models on CPU (GPU when present), batched and streamed.

Experts that name the same model share one loaded copy (reference counted), so a demo pool of
several experts on SmolLM2 holds its weights once. Calls to one model are serialized by a lock
(the CPU is the bottleneck anyway); concurrent non-streaming requests are gathered for
``batch_wait_ms`` into one ``generate`` call of at most ``max_batch_size`` prompts.

Engine options (``engine:`` in the expert's config): ``dtype`` (float32), ``device`` (auto),
``max_batch_size`` (8), ``batch_wait_ms`` (5), ``max_input_tokens`` (2048).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator.config import ExpertConfig
from orchestrator.errors import ContextWindowError
from orchestrator.microbatch import MicroBatcher
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

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # servers fork; keep tokenizers quiet


@dataclass
class _Loaded:
    model: Any
    tokenizer: Any
    device: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    refs: int = 0
    nbytes: int = 0
    batcher: MicroBatcher[GenerationRequest, Generation] | None = None


_models: dict[str, _Loaded] = {}
_models_lock = threading.Lock()


def _acquire(model: str, dtype_name: str, device: str) -> _Loaded:
    key = f"{model}|{dtype_name}|{device}"
    with _models_lock:
        loaded = _models.get(key)
        if loaded is None:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            folder = materialize(model)
            tokenizer = AutoTokenizer.from_pretrained(folder)
            tokenizer.padding_side = "left"  # decoder-only batching pads on the left
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            lm = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype_name))
            lm = lm.to(device).eval()  # type: ignore[arg-type]
            nbytes = sum(p.numel() * p.element_size() for p in lm.parameters())
            loaded = _models[key] = _Loaded(lm, tokenizer, device, nbytes=nbytes)
        loaded.refs += 1
        return loaded


def _release(model: str, dtype_name: str, device: str) -> None:
    key = f"{model}|{dtype_name}|{device}"
    with _models_lock:
        loaded = _models.get(key)
        if loaded is not None:
            loaded.refs -= 1
            if loaded.refs <= 0:
                del _models[key]


class TransformersBackend(Backend):
    name = "transformers"

    def __init__(self, expert: ExpertConfig) -> None:
        super().__init__(expert)
        opts = expert.engine
        self.dtype_name = str(opts.get("dtype", "float32"))
        self.device = str(opts.get("device", "auto"))
        self.max_batch_size = int(opts.get("max_batch_size", 8))
        self.batch_wait_ms = float(opts.get("batch_wait_ms", 5))
        self.max_input_tokens = int(opts.get("max_input_tokens", 2048))
        self._loaded: _Loaded | None = None

    def _resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    async def load(self) -> None:
        if self._loaded is None:
            self.device = self._resolved_device()
            self._loaded = await asyncio.to_thread(
                _acquire, self.expert.model, self.dtype_name, self.device
            )
        self.loaded = True

    async def unload(self) -> None:
        if self._loaded is not None:
            self._loaded = None
            await asyncio.to_thread(_release, self.expert.model, self.dtype_name, self.device)
        self.loaded = False

    def memory_bytes(self) -> int:
        if self._loaded is not None:
            return self._loaded.nbytes
        return super().memory_bytes()

    # -- prompts ---------------------------------------------------------------------------

    def _prompt(self, request: GenerationRequest) -> str:
        assert self._loaded is not None
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        text: str = self._loaded.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        return text

    def _encode(self, prompts: list[str]) -> Any:
        assert self._loaded is not None
        enc = self._loaded.tokenizer(
            prompts, return_tensors="pt", padding=True, add_special_tokens=False
        )
        if enc["input_ids"].shape[1] > self.max_input_tokens:
            raise ContextWindowError(
                f"the prompt has {enc['input_ids'].shape[1]} tokens; expert "
                f"'{self.expert.name}' accepts at most {self.max_input_tokens}"
            )
        return enc.to(self._loaded.device)

    def _generate_kwargs(self, sampling: SamplingParams) -> dict[str, Any]:
        assert self._loaded is not None
        kwargs: dict[str, Any] = {
            "max_new_tokens": sampling.max_tokens,
            "pad_token_id": self._loaded.tokenizer.pad_token_id,
            "do_sample": not sampling.greedy,
        }
        if sampling.greedy:
            # Unset the model's sampling defaults so greedy decoding raises no warnings.
            kwargs.update(temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p)
        if sampling.stop:
            kwargs.update(stop_strings=list(sampling.stop), tokenizer=self._loaded.tokenizer)
        return kwargs

    def _finish(self, new_ids: Any, sampling: SamplingParams) -> tuple[str, int, FinishReason]:
        """Decode one row of new tokens: text (cut at stop strings), token count, reason."""
        assert self._loaded is not None
        tok = self._loaded.tokenizer
        ids = [int(i) for i in new_ids]
        eos = {tok.eos_token_id, tok.pad_token_id} - {None}
        n = len(ids)
        while n and ids[n - 1] in eos:
            n -= 1
        stopped = n < len(ids)
        text = tok.decode(ids[:n], skip_special_tokens=True)
        text, cut = _cut_at_stop(text, sampling.stop)
        reason: FinishReason = "stop" if stopped or cut or n < sampling.max_tokens else "length"
        return text, (n + 1 if stopped else n), reason

    # -- generation ----------------------------------------------------------------------

    def _run_batch(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        import torch

        assert self._loaded is not None
        sampling = requests[0].sampling
        prompts = [self._prompt(r) for r in requests]
        enc = self._encode(prompts)
        with self._loaded.lock, torch.inference_mode():
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
            out = self._loaded.model.generate(**enc, **self._generate_kwargs(sampling))
        width = enc["input_ids"].shape[1]
        results = []
        for row, mask in zip(out, enc["attention_mask"], strict=True):
            text, completion_tokens, reason = self._finish(row[width:], sampling)
            results.append(Generation(text, Usage(int(mask.sum()), completion_tokens), reason))
        return results

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        """Batch ``requests``; requests with different sampling run as separate sub-batches."""
        if not self.loaded:
            await self.load()
        groups: dict[SamplingParams, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(r.sampling, []).append(i)
        results: list[Generation | None] = [None] * len(requests)
        for indices in groups.values():
            for start in range(0, len(indices), self.max_batch_size):
                chunk = indices[start : start + self.max_batch_size]
                outs = await asyncio.to_thread(self._run_batch, [requests[i] for i in chunk])
                for i, g in zip(chunk, outs, strict=True):
                    results[i] = g
        return [g for g in results if g is not None]

    async def generate_one(self, request: GenerationRequest) -> Generation:
        """Online path: join the model's current micro-batch and wait for its result.

        The batcher belongs to the loaded model, not the expert, so experts sharing weights
        (different system prompts on one model) batch together."""
        if not self.loaded:
            await self.load()
        assert self._loaded is not None
        if self._loaded.batcher is None:
            self._loaded.batcher = MicroBatcher(
                self.generate, self.max_batch_size, self.batch_wait_ms
            )
        return await self._loaded.batcher.submit(request)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        """Real token streaming: generate runs in a thread and pushes text as it decodes."""
        if not self.loaded:
            await self.load()
        import torch
        from transformers.generation.streamers import TextStreamer

        assert self._loaded is not None
        loaded = self._loaded
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | BaseException | None] = asyncio.Queue()
        enc = self._encode([self._prompt(request)])
        sampling = request.sampling

        class _Push(TextStreamer):
            def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
                if text:
                    loop.call_soon_threadsafe(queue.put_nowait, text)

        streamer = _Push(loaded.tokenizer, skip_prompt=True, skip_special_tokens=True)
        result: dict[str, Any] = {}

        def run() -> None:
            try:
                with loaded.lock, torch.inference_mode():
                    if sampling.seed is not None:
                        torch.manual_seed(sampling.seed)
                    result["out"] = loaded.model.generate(
                        **enc, streamer=streamer, **self._generate_kwargs(sampling)
                    )
            except BaseException as e:
                loop.call_soon_threadsafe(queue.put_nowait, e)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, None)

        thread = threading.Thread(target=run, name=f"generate-{self.expert.name}", daemon=True)
        thread.start()
        emitted = ""
        while True:
            item = await queue.get()
            if item is None:
                break
            if isinstance(item, BaseException):
                raise item
            # Hold back text that could be the start of a stop string; cut at a full one.
            pending = emitted + item
            cut_text, cut = _cut_at_stop(pending, sampling.stop)
            if cut:
                if len(cut_text) > len(emitted):
                    yield Delta(cut_text[len(emitted) :])
                emitted = cut_text
                break
            emitted = pending
            yield Delta(item)
        await asyncio.to_thread(thread.join)
        width = enc["input_ids"].shape[1]
        out = result.get("out")
        if out is None:
            yield Delta("", "stop", Usage(width, 0))
            return
        _, completion_tokens, reason = self._finish(out[0][width:], sampling)
        if sampling.stop and _cut_at_stop(emitted, sampling.stop)[1]:
            reason = "stop"
        yield Delta("", reason, Usage(width, completion_tokens))


def _cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    positions = [i for s in stops if s and (i := text.find(s)) >= 0]
    if not positions:
        return text, False
    return text[: min(positions)], True
