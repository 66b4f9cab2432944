"""``Client`` and ``AsyncClient``: the same API, blocking and asyncio, over httpx.

Settings are read here and nowhere else: ``base_url`` from the argument, else
``ORCHESTRATOR_URL``, else ``http://127.0.0.1:8000`` (the server's root; a trailing ``/v1`` —
the form openai clients use — is accepted and dropped); ``api_key`` from the argument, else
``ORCHESTRATOR_API_KEY``, else none (a server without keys).

Every request goes through ``_send``: one place that adds auth, applies the timeout, retries
per :class:`~orchestrator.sdk._retry.RetryPolicy` and turns an error status into the typed
error (:mod:`orchestrator.sdk._errors`).
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Collection, Mapping, Sequence
from types import TracebackType
from typing import Any, Unpack

import httpx

from orchestrator import __version__
from orchestrator.protocol import ModelList
from orchestrator.sdk import _retry
from orchestrator.sdk._admin import Admin, AsyncAdmin
from orchestrator.sdk._errors import error_from_response
from orchestrator.sdk._retry import RETRYABLE_TRANSPORT_ERRORS, RetryPolicy
from orchestrator.sdk._streaming import AsyncStream, Stream
from orchestrator.sdk._types import (
    CHAT_PARAMS,
    ChatCompletion,
    ChatParams,
    ModelCard,
)

ENV_URL = "ORCHESTRATOR_URL"
ENV_API_KEY = "ORCHESTRATOR_API_KEY"
DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = httpx.Timeout(600.0, connect=5.0)
"""Generation can be slow (10 minutes overall), but a dead host should fail fast (5 s)."""

Timeout = float | httpx.Timeout | None
Messages = Sequence[Mapping[str, Any]]


def chat_body(
    model: str,
    messages: Messages,
    params: Mapping[str, Any],
    extra_body: Mapping[str, Any] | None = None,
    *,
    stream: bool = False,
    include_usage: bool = False,
) -> dict[str, Any]:
    """The JSON body of a chat completion: OpenAI's fields, then routing options as flat
    fields beside them (where the server reads them), then ``extra_body`` verbatim.

    Raises TypeError for a keyword that is no :class:`ChatParams` field (a typo would else
    be sent and silently ignored by the server).
    """
    unknown = sorted(set(params) - CHAT_PARAMS)
    if "stream" in unknown:
        raise TypeError("to stream, call chat.completions.stream(...) instead of create(...)")
    if unknown:
        raise TypeError(
            f"unknown chat parameter(s) {unknown}; valid: {sorted(CHAT_PARAMS)} "
            "(send anything else with extra_body)"
        )
    body: dict[str, Any] = {"model": model, "messages": [dict(m) for m in messages]}
    body.update({k: v for k, v in params.items() if v is not None})
    if stream:
        body["stream"] = True
        if include_usage:
            body["stream_options"] = {"include_usage": True}
    if extra_body:
        body.update(extra_body)
    return body


class _BaseClient:
    def __init__(
        self,
        base_url: str | None,
        api_key: str | None,
        max_retries: int,
        retry_backoff_s: float,
        headers: Mapping[str, str] | None,
    ) -> None:
        url = (base_url or os.environ.get(ENV_URL) or DEFAULT_BASE_URL).rstrip("/")
        self.base_url = url.removesuffix("/v1")
        self.api_key = api_key if api_key is not None else os.environ.get(ENV_API_KEY) or None
        self.retry = RetryPolicy(max_retries=max_retries, backoff_s=retry_backoff_s)
        self._headers = {"user-agent": f"expert-orchestrator-sdk/{__version__}"}
        if self.api_key:
            self._headers["authorization"] = f"Bearer {self.api_key}"
        self._headers.update(headers or {})

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"

    def _build(
        self,
        http: httpx.Client | httpx.AsyncClient,
        method: str,
        path: str,
        json: Any,
        timeout: Timeout,
    ) -> httpx.Request:
        return http.build_request(
            method,
            self.base_url + path,
            json=json,
            headers=self._headers,
            timeout=httpx.USE_CLIENT_DEFAULT if timeout is None else timeout,
        )


class Client(_BaseClient):
    """Blocking client. ``chat.completions``, ``models``, ``admin``; close it (or use ``with``).

    ``timeout`` is httpx's (seconds or an ``httpx.Timeout``; None disables it) and every method
    takes a per-call ``timeout`` too. ``max_retries`` retries 429/503 and connection failures
    with exponential backoff from ``retry_backoff_s`` (see :mod:`orchestrator.sdk._retry`).
    ``http_client`` replaces the internal httpx client (proxies, custom transports); it is not
    closed by :meth:`close`, and its own timeout applies.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: Timeout = DEFAULT_TIMEOUT,
        max_retries: int = 2,
        retry_backoff_s: float = 0.5,
        headers: Mapping[str, str] | None = None,
        http_client: httpx.Client | None = None,
    ) -> None:
        super().__init__(base_url, api_key, max_retries, retry_backoff_s, headers)
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client(timeout=timeout)
        self.chat = Chat(self)
        self.models = Models(self)
        self.admin = Admin(self)

    def _send(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        timeout: Timeout = None,
        stream: bool = False,
        accept: Collection[int] = (),
    ) -> httpx.Response:
        """The response to one request, after retries. A status >= 400 not in ``accept``
        raises its typed error; with ``stream`` the body is left unread (caller closes)."""
        request = self._build(self._http, method, path, json, timeout)
        retries = 0
        while True:
            try:
                response = self._http.send(request, stream=stream)
            except RETRYABLE_TRANSPORT_ERRORS:
                delay = self.retry.delay_s(retries)
                if delay is None:
                    raise
            else:
                if response.status_code < 400 or response.status_code in accept:
                    return response
                if stream:
                    response.read()
                    response.close()
                delay = self.retry.delay_s(retries, response.status_code, response.headers)
                if delay is None:
                    raise error_from_response(response)
            retries += 1
            _retry.sleep(delay)

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncClient(_BaseClient):
    """The asyncio twin of :class:`Client`: the same arguments and methods, awaited."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: Timeout = DEFAULT_TIMEOUT,
        max_retries: int = 2,
        retry_backoff_s: float = 0.5,
        headers: Mapping[str, str] | None = None,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(base_url, api_key, max_retries, retry_backoff_s, headers)
        self._owns_http = http_client is None
        self._http = http_client or httpx.AsyncClient(timeout=timeout)
        self.chat = AsyncChat(self)
        self.models = AsyncModels(self)
        self.admin = AsyncAdmin(self)

    async def _send(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        timeout: Timeout = None,
        stream: bool = False,
        accept: Collection[int] = (),
    ) -> httpx.Response:
        """See :meth:`Client._send`."""
        request = self._build(self._http, method, path, json, timeout)
        retries = 0
        while True:
            try:
                response = await self._http.send(request, stream=stream)
            except RETRYABLE_TRANSPORT_ERRORS:
                delay = self.retry.delay_s(retries)
                if delay is None:
                    raise
            else:
                if response.status_code < 400 or response.status_code in accept:
                    return response
                if stream:
                    await response.aread()
                    await response.aclose()
                delay = self.retry.delay_s(retries, response.status_code, response.headers)
                if delay is None:
                    raise error_from_response(response)
            retries += 1
            await _retry.asleep(delay)

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


# -- resources ---------------------------------------------------------------------------------


class Completions:
    def __init__(self, client: Client) -> None:
        self._client = client

    def create(
        self,
        *,
        messages: Messages,
        model: str = "auto",
        extra_body: Mapping[str, Any] | None = None,
        timeout: Timeout = None,
        **params: Unpack[ChatParams],
    ) -> ChatCompletion:
        """One chat completion. ``model``: an expert's name, ``auto`` or ``router/<strategy>``;
        routing options (``strategy``, ``k``, ``max_cost_usd``, ``max_latency_ms``,
        ``max_energy_j``) and sampling are keywords (:class:`ChatParams`). The result's
        ``routing`` says which expert answered and why. Raises the typed server error."""
        body = chat_body(model, messages, params, extra_body)
        response = self._client._send("POST", "/v1/chat/completions", json=body, timeout=timeout)
        return ChatCompletion.model_validate_json(response.content)

    def stream(
        self,
        *,
        messages: Messages,
        model: str = "auto",
        include_usage: bool = False,
        extra_body: Mapping[str, Any] | None = None,
        timeout: Timeout = None,
        **params: Unpack[ChatParams],
    ) -> Stream:
        """A streamed chat completion: iterate the returned :class:`Stream` for chunks; its
        ``routing`` is ready on return. ``include_usage`` adds a final usage-only chunk. A
        failure before the first token raises here; one after it raises while iterating."""
        body = chat_body(
            model, messages, params, extra_body, stream=True, include_usage=include_usage
        )
        response = self._client._send(
            "POST", "/v1/chat/completions", json=body, timeout=timeout, stream=True
        )
        return Stream(response)


class Chat:
    def __init__(self, client: Client) -> None:
        self.completions = Completions(client)


class Models:
    def __init__(self, client: Client) -> None:
        self._client = client

    def list(self, *, timeout: Timeout = None) -> builtins.list[ModelCard]:
        """Experts (``kind="expert"``) and routed virtual models (``auto``, ``router/<s>``)."""
        response = self._client._send("GET", "/v1/models", timeout=timeout)
        return ModelList.model_validate_json(response.content).data


class AsyncCompletions:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def create(
        self,
        *,
        messages: Messages,
        model: str = "auto",
        extra_body: Mapping[str, Any] | None = None,
        timeout: Timeout = None,
        **params: Unpack[ChatParams],
    ) -> ChatCompletion:
        """See :meth:`Completions.create`."""
        body = chat_body(model, messages, params, extra_body)
        response = await self._client._send(
            "POST", "/v1/chat/completions", json=body, timeout=timeout
        )
        return ChatCompletion.model_validate_json(response.content)

    async def stream(
        self,
        *,
        messages: Messages,
        model: str = "auto",
        include_usage: bool = False,
        extra_body: Mapping[str, Any] | None = None,
        timeout: Timeout = None,
        **params: Unpack[ChatParams],
    ) -> AsyncStream:
        """See :meth:`Completions.stream`; iterate with ``async for``."""
        body = chat_body(
            model, messages, params, extra_body, stream=True, include_usage=include_usage
        )
        response = await self._client._send(
            "POST", "/v1/chat/completions", json=body, timeout=timeout, stream=True
        )
        return await AsyncStream.open(response)


class AsyncChat:
    def __init__(self, client: AsyncClient) -> None:
        self.completions = AsyncCompletions(client)


class AsyncModels:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def list(self, *, timeout: Timeout = None) -> builtins.list[ModelCard]:
        """See :meth:`Models.list`."""
        response = await self._client._send("GET", "/v1/models", timeout=timeout)
        return ModelList.model_validate_json(response.content).data
