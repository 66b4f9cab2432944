"""The routing-strategy contract.

A strategy turns a batch of queries into one :class:`Decision` each: the experts to call, every
candidate with its score (best first; also the fallback order) and a human-readable reason.
``route`` is the one method a strategy must write. Options are a pydantic model validated when
the configuration loads. Heavy imports (torch, sentence-transformers) belong inside methods so
that listing strategies stays cheap.

Lifecycle: 1. constructed with the expert pool and validated options (cheap); 2. the server
calls :meth:`bind` with its whole configuration (strategies that use shared services read them
there: ExpertRAG's knowledge store at ``redis_url``); 3. :meth:`setup` is called once (load
embeddings, trained artifacts); 4. :meth:`route` is called concurrently from worker threads.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from orchestrator.config import ExpertConfig, OrchestratorConfig
from orchestrator.types import Candidate, Decision, Query


class StrategyOptions(BaseModel):
    """Base for a strategy's options: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Strategy(ABC):
    name: ClassVar[str]
    Options: ClassVar[type[StrategyOptions]] = StrategyOptions

    def __init__(
        self,
        experts: Sequence[ExpertConfig],
        options: StrategyOptions | dict[str, Any] | None = None,
        *,
        artifacts_dir: Path | None = None,
    ) -> None:
        if not experts:
            raise ValueError("a strategy needs at least one expert")
        self.experts = list(experts)
        self.options = (
            options
            if isinstance(options, StrategyOptions)
            else self.Options.model_validate(options or {})
        )
        self.artifacts_dir = artifacts_dir
        """Where trained artifacts live (``config.artifacts_dir``); trainable strategies read it."""

    def bind(self, config: OrchestratorConfig) -> None:  # noqa: B027 - optional hook
        """Receive the service configuration before :meth:`setup` (by default: ignore it)."""

    def setup(self) -> None:  # noqa: B027 - optional hook
        """Load what routing needs (embeddings, artifacts). Called once, off the event loop."""

    @abstractmethod
    def route(self, queries: Sequence[Query]) -> list[Decision]:
        """Return one decision per query, in order."""

    def expert_names(self) -> list[str]:
        return [e.name for e in self.experts]

    def ranked(self, scores: Sequence[float]) -> tuple[Candidate, ...]:
        """Candidates sorted best first from per-expert scores aligned with ``self.experts``."""
        pairs = sorted(zip(self.expert_names(), scores, strict=True), key=lambda p: -p[1])
        return tuple(Candidate(n, float(s)) for n, s in pairs)
