"""HTTP routes: thin handlers that parse, call the :class:`Orchestrator`, and serialize.

This is also the only place errors become HTTP responses (:func:`_error_response`). The same
app is the ingress of the Ray Serve deployment.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Send
from starlette.types import Scope as ASGIScope

from orchestrator.admin import mount_admin
from orchestrator.config import OrchestratorConfig, Scope
from orchestrator.errors import (
    AuthenticationError,
    InvalidRequestError,
    NotFoundError,
    OrchestratorError,
    PermissionDeniedError,
    RequestTooLargeError,
    error_body,
)
from orchestrator.ingress import with_key_budgets
from orchestrator.kb.api import mount_knowledge
from orchestrator.limits import Limiter
from orchestrator.pipeline import Orchestrator
from orchestrator.protocol import ChatCompletion, ChatCompletionRequest, ErrorResponse, ModelList

log = logging.getLogger(__name__)

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 413, 429, 500, 502, 503)
}


class KeyRing:
    """Bearer API keys and their scopes. No keys configured means no authentication."""

    def __init__(self, config: OrchestratorConfig) -> None:
        self._keys = [(k.name, k.secret(), set(k.scopes)) for k in config.server.api_keys]

    def check(self, authorization: str | None, scope: Scope) -> str | None:
        """Return the key's name; raise 401 for a missing/wrong key, 403 for a missing scope."""
        if not self._keys:
            return None
        if not authorization or not authorization.lower().startswith("bearer "):
            raise AuthenticationError("missing API key: send 'Authorization: Bearer <key>'")
        presented = authorization[7:].strip().encode()
        for name, secret, scopes in self._keys:
            if secret and hmac.compare_digest(presented, secret.encode()):
                if scope not in scopes:
                    raise PermissionDeniedError(f"this API key lacks the '{scope}' scope")
                return name
        raise AuthenticationError("invalid API key")


def require(scope: Scope) -> Callable[[Request], Awaitable[str | None]]:
    async def dependency(request: Request) -> str | None:
        keys: KeyRing = request.app.state.keys
        return keys.check(request.headers.get("authorization"), scope)

    return dependency


def _error_response(exc: OrchestratorError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers or None)


def _routing_headers(trace: Any) -> dict[str, str]:
    return {
        "x-routing-strategy": trace.strategy,
        "x-routing-expert": ",".join(trace.answered_by),
        "x-routing-resolution": trace.resolution,
        "x-routing-fallback": str(trace.fallback).lower(),
    }


def build_app(orchestrator: Orchestrator, *, manage_lifecycle: bool = True) -> FastAPI:
    """The FastAPI app around one orchestrator. With ``manage_lifecycle`` the app loads the
    experts at startup and unloads them at shutdown."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if manage_lifecycle:
            await orchestrator.start()
        await app.state.admin.start()
        yield
        await app.state.admin.stop()
        if manage_lifecycle:
            await orchestrator.stop()

    app = FastAPI(
        title="expert-orchestrator",
        version="0.1.0",
        description="One OpenAI-compatible endpoint in front of many expert LLMs.",
        lifespan=lifespan,
    )
    app.add_middleware(BodyLimit, max_bytes=orchestrator.config.server.max_body_bytes)
    app.state.orchestrator = orchestrator
    app.state.keys = KeyRing(orchestrator.config)

    @app.exception_handler(OrchestratorError)
    async def _orchestrator_error(_: Request, exc: OrchestratorError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _error_response(_invalid(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return _error_response(
                NotFoundError(
                    f"no route {exc.detail}" if exc.detail != "Not Found" else "no such route"
                )
            )
        if exc.status_code == 405:
            err = InvalidRequestError("method not allowed on this route")
            return JSONResponse(err.body(), status_code=405)
        return JSONResponse(
            error_body(str(exc.detail), "invalid_request_error"), status_code=exc.status_code
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return _error_response(OrchestratorError(f"internal error: {type(exc).__name__}"))

    limiter = Limiter(orchestrator.config, orchestrator.store)

    @app.post(
        "/v1/chat/completions",
        response_model=ChatCompletion,
        responses=ERROR_RESPONSES,
        summary="Create a chat completion, routed to the right expert(s)",
    )
    async def chat_completions(
        parsed: ChatCompletionRequest, key_name: str | None = Depends(require("user"))
    ) -> Response:
        parsed = with_key_budgets(parsed, orchestrator.config, key_name)
        if parsed.stream:
            # The admission is held until the stream ends, not until the headers are sent.
            admission = AsyncExitStack()
            await admission.enter_async_context(limiter.admit(key_name))
            try:
                trace, chunks = await orchestrator.start_stream(parsed)
            except BaseException:
                await admission.aclose()
                raise
            return StreamingResponse(
                _sse(chunks, admission),
                media_type="text/event-stream",
                headers=_routing_headers(trace),
            )
        async with limiter.admit(key_name):
            completion = await orchestrator.complete(parsed)
        return Response(
            completion.model_dump_json(),
            media_type="application/json",
            headers=_routing_headers(completion.routing),
        )

    @app.get("/v1/models", response_model=ModelList, dependencies=[Depends(require("user"))])
    async def list_models() -> ModelList:
        return orchestrator.models()

    @app.get("/health", summary="Liveness: the process answers")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", summary="Readiness: experts are loaded", responses={503: {}})
    async def ready() -> JSONResponse:
        ok, detail = await orchestrator.readiness()
        return JSONResponse(detail, status_code=200 if ok else 503)

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics() -> Response:
        return Response(orchestrator.metrics.render(), media_type="text/plain; version=0.0.4")

    app.state.admin = mount_admin(app, orchestrator, require("admin"))
    mount_knowledge(app, orchestrator, require("admin"))
    return app


class BodyLimit:
    """ASGI middleware: a body over ``max_bytes`` gets 413 before anything parses it (checked
    on Content-Length up front, and on the bytes actually received for chunked bodies)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            err = RequestTooLargeError(
                f"request body of {int(declared)} bytes exceeds {self.max_bytes}"
            )
            await _error_response(err)(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise RequestTooLargeError(f"request body exceeds {self.max_bytes} bytes")
            return message

        await self.app(scope, limited, send)


def _invalid(errors: Any) -> InvalidRequestError:
    """The first validation error, named by its path, as a 400."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    if first.get("type") == "json_invalid":
        return InvalidRequestError(f"the body is not valid JSON: {first.get('msg')}")
    msg = first.get("msg", "invalid value")
    if first.get("type") == "missing":
        msg = "this field is required"
    return InvalidRequestError(f"{param or 'body'}: {msg}", param=param)


async def _sse(
    chunks: AsyncIterator[dict[str, Any]], admission: AsyncExitStack
) -> AsyncIterator[bytes]:
    try:
        async for c in chunks:
            yield b"data: " + json.dumps(c, separators=(",", ":")).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"
    finally:
        await admission.aclose()
