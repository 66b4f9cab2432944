"""Domain types passed between pipeline stages: frozen, strict, free of wire concerns.

The wire models in :mod:`orchestrator.protocol` accept anything OpenAI clients send; the
ingress turns them into these, which every strategy and backend sees.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Role = Literal["system", "developer", "user", "assistant", "tool"]


@dataclass(frozen=True, slots=True)
class Message:
    role: Role
    content: str
    name: str | None = None


@dataclass(frozen=True, slots=True)
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass(frozen=True, slots=True)
class RoutingOptions:
    """Routing knobs a request may set beside the OpenAI fields (``extra_body``)."""

    strategy: str | None = None
    k: int | None = None
    max_cost_usd: float | None = None
    max_latency_ms: float | None = None
    max_energy_j: float | None = None


@dataclass(frozen=True, slots=True)
class Query:
    """One chat request, as the pipeline sees it."""

    messages: tuple[Message, ...]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    options: RoutingOptions = field(default_factory=RoutingOptions)

    @property
    def text(self) -> str:
        """What strategies route on: the last user message (all user text if none is last)."""
        for m in reversed(self.messages):
            if m.role == "user":
                return m.content
        return "\n".join(m.content for m in self.messages)


@dataclass(frozen=True, slots=True)
class Candidate:
    expert: str
    score: float


@dataclass(frozen=True, slots=True)
class Decision:
    """A strategy's answer for one query.

    ``experts`` are the experts to call (one for single-expert strategies, k for ensembles);
    ``candidates`` are every considered expert with its score, best first, and are also the
    fallback order when a chosen expert fails. ``context`` are messages the strategy adds to
    what every expert it calls sees (retrieved passages, for one): the dispatcher puts them
    right after the expert's system prompt (:func:`orchestrator.dispatch.build_request`).
    """

    strategy: str
    experts: tuple[str, ...]
    candidates: tuple[Candidate, ...]
    reason: str
    aggregator: str | None = None
    version: str | None = None
    details: dict[str, object] = field(default_factory=dict, hash=False, compare=False)
    context: tuple[Message, ...] = ()


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """What a backend generates from: the final messages (system prompt applied) and sampling."""

    messages: tuple[Message, ...]
    sampling: SamplingParams


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
        )


FinishReason = Literal["stop", "length", "error"]


@dataclass(frozen=True, slots=True)
class Generation:
    text: str
    usage: Usage
    finish_reason: FinishReason = "stop"


@dataclass(frozen=True, slots=True)
class Delta:
    """One piece of a streamed generation; the last one carries finish_reason and usage."""

    text: str
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
