"""An instant backend: answers with the last user message (or a fixed text) at no cost.

For gateway-overhead benchmarks and for isolating the pipeline in unit tests. Options in
``engine``: ``reply`` (fixed text), ``fail`` (raise on every call: fallback tests),
``delay_ms`` (sleep before answering).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from orchestrator.errors import BackendError
from orchestrator.types import Delta, FinishReason, Generation, GenerationRequest, Usage
from workers.base import Backend


class EchoBackend(Backend):
    name = "echo"

    def _answer(self, request: GenerationRequest) -> Generation:
        reply = self.expert.engine.get("reply")
        if reply is None:
            users = [m.content for m in request.messages if m.role == "user"]
            reply = users[-1] if users else ""
        words = str(reply).split(" ")[: request.sampling.max_tokens]
        finish: FinishReason = "length" if len(words) < len(str(reply).split(" ")) else "stop"
        prompt_tokens = sum(len(m.content.split()) for m in request.messages)
        return Generation(" ".join(words), Usage(prompt_tokens, len(words)), finish)

    async def _maybe_fail(self) -> None:
        if self.expert.engine.get("fail"):
            raise BackendError(f"expert '{self.expert.name}' is configured to fail")
        delay = float(self.expert.engine.get("delay_ms", 0))
        if delay:
            await asyncio.sleep(delay / 1000)

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        await self._maybe_fail()
        return [self._answer(r) for r in requests]

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        await self._maybe_fail()
        g = self._answer(request)
        words = g.text.split(" ")
        for i, w in enumerate(words):
            last = i == len(words) - 1
            yield Delta(
                w if i == 0 else " " + w,
                g.finish_reason if last else None,
                g.usage if last else None,
            )
