"""Streamed chat completions: server-sent events → typed chunks.

Lifecycle: the client sends the request and checks the status (errors before the first token
arrive as a normal HTTP error and may be retried); :class:`Stream` then reads the first chunk at
once, so :attr:`Stream.routing` is known before iteration; iterating yields every chunk,
starting with that first one; ``data: [DONE]`` ends it; an ``{"error": ...}`` event raises the
typed error (see :mod:`orchestrator.sdk._errors`). The HTTP response is closed when the
stream ends, fails, or :meth:`Stream.close` is called — use ``with`` when you may stop early.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator
from types import TracebackType

import httpx

from orchestrator.errors import OrchestratorError
from orchestrator.sdk._errors import error_from_event
from orchestrator.sdk._types import ChatCompletionChunk, RoutingTrace

DONE = "[DONE]"


class SSEDecoder:
    """Lines → event data, per the SSE spec's parsing rules for the parts a server sends here:
    ``data:`` lines (joined by newlines), a blank line ending the event, ``:`` comments and
    other fields ignored."""

    def __init__(self) -> None:
        self._data: list[str] = []

    def feed(self, line: str) -> str | None:
        """The data of the event this line completes, else None."""
        if not line:
            return self.flush()
        if line.startswith(":"):
            return None
        field, _, value = line.partition(":")
        if field == "data":
            self._data.append(value.removeprefix(" "))
        return None

    def flush(self) -> str | None:
        """The pending event, if the stream ended without its blank line."""
        if not self._data:
            return None
        data, self._data = "\n".join(self._data), []
        return data


def parse_chunk(data: str) -> ChatCompletionChunk:
    """One event's data as a chunk; an error event raises its typed error."""
    payload = json.loads(data)
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        raise error_from_event(payload["error"])
    return ChatCompletionChunk.model_validate(payload)


def _first_routing(first: ChatCompletionChunk | None) -> RoutingTrace:
    if first is None:
        raise OrchestratorError("the stream ended before its first chunk")
    if first.routing is None:
        raise OrchestratorError(
            "the stream's first chunk carries no routing trace; is the base URL an "
            "expert-orchestrator server?"
        )
    return first.routing


class Stream:
    """Iterator of :class:`ChatCompletionChunk` for one streamed completion.

    ``routing`` is the routing trace (also on the first chunk); ``response`` is the open HTTP
    response (headers such as ``x-routing-expert``).
    """

    def __init__(self, response: httpx.Response) -> None:
        """Reads the first chunk; raises (and closes the response) if it is an error."""
        self.response = response
        self._chunks = self._iter_chunks()
        self._first: ChatCompletionChunk | None = None
        try:
            self._first = next(self._chunks, None)
            self.routing: RoutingTrace = _first_routing(self._first)
        except BaseException:
            self.close()
            raise

    def _iter_chunks(self) -> Generator[ChatCompletionChunk, None, None]:
        decoder = SSEDecoder()
        try:
            for line in self.response.iter_lines():
                data = decoder.feed(line)
                if data is None:
                    continue
                if data == DONE:
                    return
                yield parse_chunk(data)
            data = decoder.flush()
            if data is not None and data != DONE:
                yield parse_chunk(data)
        finally:
            self.response.close()

    def __iter__(self) -> Iterator[ChatCompletionChunk]:
        return self

    def __next__(self) -> ChatCompletionChunk:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        return next(self._chunks)

    def close(self) -> None:
        self._chunks.close()
        self.response.close()

    def __enter__(self) -> Stream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncStream:
    """Async iterator of :class:`ChatCompletionChunk`; build it with :meth:`open`."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._chunks = self._iter_chunks()
        self._first: ChatCompletionChunk | None = None
        self.routing: RoutingTrace

    @classmethod
    async def open(cls, response: httpx.Response) -> AsyncStream:
        """Reads the first chunk; raises (and closes the response) if it is an error."""
        stream = cls(response)
        try:
            stream._first = await anext(stream._chunks, None)
            stream.routing = _first_routing(stream._first)
        except BaseException:
            await stream.aclose()
            raise
        return stream

    async def _iter_chunks(self) -> AsyncGenerator[ChatCompletionChunk, None]:
        decoder = SSEDecoder()
        try:
            async for line in self.response.aiter_lines():
                data = decoder.feed(line)
                if data is None:
                    continue
                if data == DONE:
                    return
                yield parse_chunk(data)
            data = decoder.flush()
            if data is not None and data != DONE:
                yield parse_chunk(data)
        finally:
            await self.response.aclose()

    def __aiter__(self) -> AsyncIterator[ChatCompletionChunk]:
        return self

    async def __anext__(self) -> ChatCompletionChunk:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        return await anext(self._chunks)

    async def aclose(self) -> None:
        await self._chunks.aclose()
        await self.response.aclose()

    async def __aenter__(self) -> AsyncStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
