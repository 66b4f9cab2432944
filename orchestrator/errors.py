"""One error tree for the whole service.

Every error a client can see is an :class:`OrchestratorError`. Each class knows its HTTP status
and its OpenAI error ``type``; :func:`error_body` is the single place that turns one into
OpenAI's wire shape ``{"error": {"message", "type", "param", "code"}}``. The SDK maps the same
``type`` strings back to the same classes.

    OrchestratorError                    500 server_error
    ├── InvalidRequestError              400 invalid_request_error
    │   └── ContextWindowError           400 invalid_request_error (code context_length_exceeded)
    ├── AuthenticationError              401 authentication_error
    ├── PermissionDeniedError            403 permission_error
    ├── NotFoundError                    404 not_found_error
    │   └── ModelNotFoundError           404 not_found_error (code model_not_found)
    ├── RequestTooLargeError             413 request_too_large
    ├── RateLimitError                   429 rate_limit_error (Retry-After header)
    ├── BackendError                     502 backend_error (an expert failed; fallback exhausted)
    ├── ServiceUnavailableError          503 service_unavailable (not ready, overloaded)
    │   └── ExpertUnavailableError       503 service_unavailable (an expert is not loaded/healthy)
    └── ConfigError                      500 config_error (never reaches a client at run time)
"""

from __future__ import annotations

from typing import Any, ClassVar


class OrchestratorError(Exception):
    """Base of every error the service raises on purpose."""

    status_code: ClassVar[int] = 500
    error_type: ClassVar[str] = "server_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}
        # What the wire carried: the class's own values on the server; the SDK overwrites them
        # with the response's status and type (a 405 is an invalid_request_error, say).
        self.status: int = self.status_code
        self.type: str = self.error_type

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.error_type, self.param, self.code)


class InvalidRequestError(OrchestratorError):
    status_code = 400
    error_type = "invalid_request_error"


class ContextWindowError(InvalidRequestError):
    def __init__(self, message: str, *, param: str | None = "messages") -> None:
        super().__init__(message, param=param, code="context_length_exceeded")


class AuthenticationError(OrchestratorError):
    status_code = 401
    error_type = "authentication_error"


class PermissionDeniedError(OrchestratorError):
    status_code = 403
    error_type = "permission_error"


class NotFoundError(OrchestratorError):
    status_code = 404
    error_type = "not_found_error"


class ModelNotFoundError(NotFoundError):
    def __init__(self, model: str, valid: list[str]) -> None:
        super().__init__(
            f"The model '{model}' does not exist. Valid models: {', '.join(valid)}.",
            param="model",
            code="model_not_found",
        )


class RequestTooLargeError(OrchestratorError):
    status_code = 413
    error_type = "request_too_large"


class RateLimitError(OrchestratorError):
    status_code = 429
    error_type = "rate_limit_error"

    def __init__(self, message: str, *, retry_after_s: float = 1.0, code: str | None = None):
        super().__init__(
            message, code=code, headers={"Retry-After": str(max(1, round(retry_after_s)))}
        )
        self.retry_after_s = retry_after_s


class BackendError(OrchestratorError):
    status_code = 502
    error_type = "backend_error"


class ServiceUnavailableError(OrchestratorError):
    status_code = 503
    error_type = "service_unavailable"


class ExpertUnavailableError(ServiceUnavailableError):
    pass


class ConfigError(OrchestratorError):
    """The configuration is invalid. The message names the setting and the fix."""

    error_type = "config_error"


ERROR_TYPES: dict[str, type[OrchestratorError]] = {
    cls.error_type: cls
    for cls in (
        OrchestratorError,
        InvalidRequestError,
        AuthenticationError,
        PermissionDeniedError,
        NotFoundError,
        RequestTooLargeError,
        RateLimitError,
        BackendError,
        ServiceUnavailableError,
        ConfigError,
    )
}


def error_body(
    message: str, error_type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """OpenAI's error shape: the one place it is built."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}
