"""Server errors rebuilt on the client as the server's own classes (:mod:`orchestrator.errors`).

An OpenAI-shaped error ``{"error": {"message", "type", "param", "code"}}`` becomes the class
registered for its ``type`` in :data:`~orchestrator.errors.ERROR_TYPES`, refined by ``code``
where the tree has a subclass for it (``model_not_found`` → ``ModelNotFoundError``,
``context_length_exceeded`` → ``ContextWindowError``). So ``except RateLimitError`` means the
same thing in server and client code, and there is no second tree to keep in step.

Every rebuilt error carries what the wire said: ``status`` (the response's HTTP status — a 405
is an ``invalid_request_error`` with status 405), ``message``, ``type``, ``param``, ``code`` and
``headers``; a :class:`~orchestrator.errors.RateLimitError` also ``retry_after_s``. A body that
is not OpenAI-shaped (a proxy's HTML 502) maps by HTTP status, and an unknown ``type`` (a newer
server) by status too, keeping the unknown string in ``type``.

An error event inside a stream (the server's way to end a stream that broke after it started)
raises the same way, with the class's own status since the HTTP status was already 200.

Network failures are not server errors and stay httpx's own: ``httpx.TransportError``
(``httpx.TimeoutException`` for timeouts), raised once retries are spent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from orchestrator.errors import (
    ERROR_TYPES,
    ContextWindowError,
    InvalidRequestError,
    ModelNotFoundError,
    OrchestratorError,
    RateLimitError,
)
from orchestrator.sdk._retry import parse_retry_after

_BY_STATUS: dict[int, type[OrchestratorError]] = {}
for _cls in ERROR_TYPES.values():
    _BY_STATUS.setdefault(_cls.status_code, _cls)  # OrchestratorError, not ConfigError, for 500

_BY_CODE: dict[str, type[OrchestratorError]] = {
    "model_not_found": ModelNotFoundError,
    "context_length_exceeded": ContextWindowError,
}


def build_error(
    status: int,
    message: str,
    error_type: str | None = None,
    param: str | None = None,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> OrchestratorError:
    """The error class for ``error_type`` (else for ``status``), carrying the wire's values."""
    cls = ERROR_TYPES.get(error_type or "") or _class_for_status(status)
    refined = _BY_CODE.get(code or "")
    if refined is not None and issubclass(refined, cls):
        cls = refined
    # Subclasses with their own constructors (ModelNotFoundError(model, valid), ...) build
    # their message on the server; here the message is already built, so bypass them.
    err = cls.__new__(cls)
    OrchestratorError.__init__(err, message, param=param, code=code, headers=dict(headers or {}))
    err.status = status
    err.type = error_type or cls.error_type
    if isinstance(err, RateLimitError):
        after = parse_retry_after(err.headers)
        err.retry_after_s = 1.0 if after is None else after
    return err


def error_from_response(response: httpx.Response) -> OrchestratorError:
    """The typed error for a response with status >= 400 (its body must have been read)."""
    info = _error_info(response)
    if info is None:
        text = response.text.strip()[:500]
        message = f"HTTP {response.status_code} {response.reason_phrase}" + (
            f": {text}" if text else ""
        )
        return build_error(response.status_code, message, headers=response.headers)
    return build_error(
        response.status_code,
        str(info.get("message") or f"HTTP {response.status_code}"),
        _str_or_none(info.get("type")),
        _str_or_none(info.get("param")),
        _str_or_none(info.get("code")),
        response.headers,
    )


def error_from_event(info: Mapping[str, Any]) -> OrchestratorError:
    """The typed error for a stream's ``{"error": {...}}`` event."""
    error_type = _str_or_none(info.get("type"))
    cls = ERROR_TYPES.get(error_type or "", OrchestratorError)
    return build_error(
        cls.status_code,
        str(info.get("message") or "the stream failed"),
        error_type,
        _str_or_none(info.get("param")),
        _str_or_none(info.get("code")),
    )


def _class_for_status(status: int) -> type[OrchestratorError]:
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return InvalidRequestError if 400 <= status < 500 else OrchestratorError


def _error_info(response: httpx.Response) -> dict[str, Any] | None:
    try:
        payload = response.json()
    except ValueError:
        return None
    info = payload.get("error") if isinstance(payload, dict) else None
    return info if isinstance(info, dict) else None


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)
