"""``openai``: any OpenAI-compatible server (a vLLM server, another gateway, a hosted API).

One pooled :class:`httpx.AsyncClient` per expert; connection errors are retried by the
transport (``engine.retries``, default 2); each call has the expert's ``timeout_s``. Streaming
reads the server's SSE and yields deltas; usage comes from the server
(``stream_options.include_usage``).
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx

from orchestrator.config import ExpertConfig
from orchestrator.errors import BackendError, ExpertUnavailableError
from orchestrator.types import Delta, FinishReason, Generation, GenerationRequest, Usage
from workers.base import Backend


class OpenAIBackend(Backend):
    name = "openai"

    def __init__(self, expert: ExpertConfig) -> None:
        super().__init__(expert)
        self._client: httpx.AsyncClient | None = None

    async def load(self) -> None:
        if self._client is None:
            headers = {}
            if self.expert.api_key_env and (key := os.environ.get(self.expert.api_key_env)):
                headers["Authorization"] = f"Bearer {key}"
            self._client = httpx.AsyncClient(
                base_url=(self.expert.base_url or "").rstrip("/"),
                headers=headers,
                timeout=httpx.Timeout(self.expert.timeout_s, connect=5.0),
                transport=httpx.AsyncHTTPTransport(
                    retries=int(self.expert.engine.get("retries", 2))
                ),
                limits=httpx.Limits(max_connections=self.expert.max_concurrency * 2),
            )
        self.loaded = True

    async def unload(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        self.loaded = False

    async def health(self) -> bool:
        if self._client is None:
            return False
        try:
            r = await self._client.get("/models", timeout=2.0)
        except httpx.HTTPError:
            return False
        return r.status_code < 500

    def _body(self, request: GenerationRequest, stream: bool) -> dict[str, Any]:
        s = request.sampling
        body: dict[str, Any] = {
            "model": self.expert.model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "max_tokens": s.max_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "stream": stream,
        }
        if s.stop:
            body["stop"] = list(s.stop)
        if s.seed is not None:
            body["seed"] = s.seed
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body

    def _client_or_raise(self) -> httpx.AsyncClient:
        if self._client is None:
            raise ExpertUnavailableError(f"expert '{self.expert.name}' is not loaded")
        return self._client

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        import asyncio

        return list(await asyncio.gather(*(self.generate_one(r) for r in requests)))

    async def generate_one(self, request: GenerationRequest) -> Generation:
        client = self._client_or_raise()
        try:
            r = await client.post("/chat/completions", json=self._body(request, stream=False))
        except httpx.HTTPError as e:
            raise BackendError(f"expert '{self.expert.name}' is unreachable: {e!r}") from e
        if r.status_code >= 400:
            raise BackendError(
                f"expert '{self.expert.name}' answered {r.status_code}: {r.text[:300]}"
            )
        data = r.json()
        choice = data["choices"][0]
        usage = data.get("usage") or {}
        return Generation(
            choice["message"].get("content") or "",
            Usage(usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)),
            _finish(choice.get("finish_reason")),
        )

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        client = self._client_or_raise()
        reason: FinishReason = "stop"
        usage = Usage()
        try:
            async with client.stream(
                "POST", "/chat/completions", json=self._body(request, stream=True)
            ) as r:
                if r.status_code >= 400:
                    await r.aread()
                    raise BackendError(
                        f"expert '{self.expert.name}' answered {r.status_code}: {r.text[:300]}"
                    )
                async for line in r.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == "[DONE]":
                        break
                    chunk = json.loads(payload)
                    if "error" in chunk:
                        raise BackendError(f"expert '{self.expert.name}': {chunk['error']}")
                    if chunk.get("usage"):
                        u = chunk["usage"]
                        usage = Usage(u.get("prompt_tokens", 0), u.get("completion_tokens", 0))
                    for choice in chunk.get("choices") or []:
                        text = (choice.get("delta") or {}).get("content") or ""
                        if choice.get("finish_reason"):
                            reason = _finish(choice["finish_reason"])
                        if text:
                            yield Delta(text)
        except httpx.HTTPError as e:
            raise BackendError(f"expert '{self.expert.name}' is unreachable: {e!r}") from e
        yield Delta("", reason, usage)


def _finish(reason: str | None) -> FinishReason:
    return "length" if reason == "length" else "stop"
