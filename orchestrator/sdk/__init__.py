"""Python SDK for expert-orchestrator: what the openai SDK cannot express, typed.

    from orchestrator.sdk import Client

    client = Client()                      # ORCHESTRATOR_URL, ORCHESTRATOR_API_KEY
    r = client.chat.completions.create(
        messages=[{"role": "user", "content": "Solve 2x + 3 = 11"}],
        strategy="semantic", max_latency_ms=2000,   # routing options as keywords
    )
    r.routing.answered_by, r.routing.reason        # the routing trace, typed

Needs only httpx and pydantic: it imports :mod:`orchestrator.errors` (no dependencies) and
:mod:`orchestrator.protocol` (pydantic), never the server, torch, ray or vllm — a test imports it
in a virtual environment holding nothing else. Errors are the server's classes
(:mod:`orchestrator.errors`); see ``docs/sdk.md``.
"""

from __future__ import annotations

from orchestrator.errors import (
    ERROR_TYPES,
    AuthenticationError,
    BackendError,
    ConfigError,
    ContextWindowError,
    ExpertUnavailableError,
    InvalidRequestError,
    ModelNotFoundError,
    NotFoundError,
    OrchestratorError,
    PermissionDeniedError,
    RateLimitError,
    RequestTooLargeError,
    ServiceUnavailableError,
)
from orchestrator.sdk._admin import (
    Admin,
    AsyncAdmin,
    AsyncJobs,
    AsyncKnowledgeBase,
    Jobs,
    KnowledgeBase,
)
from orchestrator.sdk._client import (
    DEFAULT_BASE_URL,
    ENV_API_KEY,
    ENV_URL,
    AsyncClient,
    Client,
)
from orchestrator.sdk._retry import RetryPolicy
from orchestrator.sdk._streaming import AsyncStream, Stream
from orchestrator.sdk._types import (
    JOB_TERMINAL_STATUSES,
    AttemptOut,
    CandidateOut,
    ChatCompletion,
    ChatCompletionChunk,
    ChatParams,
    ChunkChoice,
    ChunkDelta,
    Document,
    Health,
    Job,
    ModelCard,
    Readiness,
    RoutingTrace,
    UsageOut,
)

__all__ = [
    "DEFAULT_BASE_URL",
    "ENV_API_KEY",
    "ENV_URL",
    "ERROR_TYPES",
    "JOB_TERMINAL_STATUSES",
    "Admin",
    "AsyncAdmin",
    "AsyncClient",
    "AsyncJobs",
    "AsyncKnowledgeBase",
    "AsyncStream",
    "AttemptOut",
    "AuthenticationError",
    "BackendError",
    "CandidateOut",
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatParams",
    "ChunkChoice",
    "ChunkDelta",
    "Client",
    "ConfigError",
    "ContextWindowError",
    "Document",
    "ExpertUnavailableError",
    "Health",
    "InvalidRequestError",
    "Job",
    "Jobs",
    "KnowledgeBase",
    "ModelCard",
    "ModelNotFoundError",
    "NotFoundError",
    "OrchestratorError",
    "PermissionDeniedError",
    "RateLimitError",
    "Readiness",
    "RequestTooLargeError",
    "RetryPolicy",
    "RoutingTrace",
    "ServiceUnavailableError",
    "Stream",
    "UsageOut",
]
