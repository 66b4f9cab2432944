"""Typed results of the SDK.

Responses the server already describes in :mod:`orchestrator.protocol` are parsed into those
same models (:class:`ChatCompletion` with its :class:`RoutingTrace`, :class:`ModelCard`), so
client and server cannot drift apart. Stream chunks, health/readiness and the admin objects
have no server-side model yet and are defined here; the admin models (:class:`Job`,
:class:`Document`) keep unknown fields (``extra="allow"``) because their routes are still being
built (issues 6 and 7).
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.protocol import (
    AttemptOut,
    CandidateOut,
    ChatCompletion,
    ChatMessageOut,
    ChoiceOut,
    ModelCard,
    RoutingTrace,
    UsageOut,
)


class ChatParams(TypedDict, total=False):
    """Optional keyword arguments of ``chat.completions.create`` / ``stream``.

    The SDK sends each one that is given as a flat field of the JSON body, beside ``model`` and
    ``messages`` — exactly where a stock openai client puts its ``extra_body``.
    """

    temperature: float
    top_p: float
    max_tokens: int
    max_completion_tokens: int
    stop: str | list[str]
    seed: int
    user: str
    strategy: str
    """Routing strategy for this request (overrides the one ``model`` implies)."""
    k: int
    """Experts to recruit (ensembles)."""
    max_cost_usd: float
    """Budget for this request in USD."""
    max_latency_ms: float
    """Budget for this request: latency in milliseconds."""
    max_energy_j: float
    """Budget for this request: energy in joules."""


CHAT_PARAMS: frozenset[str] = ChatParams.__optional_keys__ | ChatParams.__required_keys__


class ChunkDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: ChunkDelta
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    """One event of a streamed completion. The first carries ``routing``; with
    ``include_usage`` the last has empty ``choices`` and carries ``usage``."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: UsageOut | None = None
    routing: RoutingTrace | None = None


class Health(BaseModel):
    model_config = ConfigDict(extra="allow")

    status: str


class Readiness(BaseModel):
    """``GET /ready``: overall status and each expert's load status."""

    model_config = ConfigDict(extra="allow")

    status: str
    experts: dict[str, str] = Field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return self.status == "ready"


JOB_TERMINAL_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
"""A job in one of these states will not change again; ``jobs.wait`` returns on them."""


class Job(BaseModel):
    """A router training job (``/admin/jobs``)."""

    model_config = ConfigDict(extra="allow")

    id: str
    status: str
    progress: float | None = Field(None, description="Fraction done, 0..1, when known.")
    metrics: dict[str, Any] = Field(default_factory=dict)
    strategy: str | None = None
    version: str | None = Field(None, description="The router version the job produces.")
    error: str | None = None

    @property
    def done(self) -> bool:
        return self.status in JOB_TERMINAL_STATUSES


class Document(BaseModel):
    """A knowledge-store document (``/admin/kb/documents``)."""

    model_config = ConfigDict(extra="allow")

    id: str
    text: str = ""
    metadata: dict[str, Any] = Field(default_factory=dict)


__all__ = [
    "CHAT_PARAMS",
    "JOB_TERMINAL_STATUSES",
    "AttemptOut",
    "CandidateOut",
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatMessageOut",
    "ChatParams",
    "ChoiceOut",
    "ChunkChoice",
    "ChunkDelta",
    "Document",
    "Health",
    "Job",
    "ModelCard",
    "Readiness",
    "RoutingTrace",
    "UsageOut",
]
