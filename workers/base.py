"""The worker backend contract.

Lifecycle: 1. constructed from an :class:`ExpertConfig` (cheap, no I/O); 2. :meth:`load` is
awaited once before traffic (weights read, engine started); 3. :meth:`generate` / :meth:`stream`
serve requests, concurrently; 4. :meth:`unload` frees memory (the scheduler may load again
later). ``generate`` is the one method a backend must write: it takes a batch so engines that
batch (transformers, vLLM) get the whole group at once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from typing import ClassVar

from orchestrator.config import ExpertConfig
from orchestrator.types import Delta, Generation, GenerationRequest


class Backend(ABC):
    """Generates text for one expert."""

    name: ClassVar[str]

    def __init__(self, expert: ExpertConfig) -> None:
        self.expert = expert
        self.loaded = False

    async def load(self) -> None:
        """Make the expert ready to serve. Idempotent."""
        self.loaded = True

    async def unload(self) -> None:
        """Free what :meth:`load` took. Idempotent."""
        self.loaded = False

    @abstractmethod
    async def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        """Generate one completion per request, in order. Raises on failure of the batch."""

    async def generate_one(self, request: GenerationRequest) -> Generation:
        """The online path for one request; engines that micro-batch override it."""
        (generation,) = await self.generate([request])
        return generation

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        """Yield the completion piece by piece; the last delta has finish_reason and usage.

        The default generates in one go and yields it as a single delta; engines override
        this with real token streaming.
        """
        (generation,) = await self.generate([request])
        yield Delta(generation.text, generation.finish_reason, generation.usage)

    async def health(self) -> bool:
        """True when the expert can take requests now."""
        return self.loaded

    def memory_bytes(self) -> int:
        """Resident memory this expert needs when loaded (scheduler budget)."""
        gb = self.expert.memory_gb
        return int(gb * 2**30) if gb is not None else 0
