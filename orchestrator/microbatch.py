"""Micro-batching of concurrent calls: many awaiting callers, one batched call.

Used where one batched call is much cheaper than many single ones: routing (one MiniLM pass
over all pending queries) and local generation (one ``generate`` over all pending prompts).
While a batch runs, new arrivals queue; when it finishes they go as the next batch. So an idle
system adds no latency, a busy one batches itself; ``wait_ms`` optionally holds the first
arrival a little to let a batch form.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Pending(Generic[T, R]):
    item: T
    future: asyncio.Future[R]


class MicroBatcher(Generic[T, R]):
    def __init__(
        self,
        run: Callable[[Sequence[T]], Awaitable[list[R]]],
        max_batch_size: int = 64,
        wait_ms: float = 0.0,
    ) -> None:
        self.run = run
        self.max_batch_size = max_batch_size
        self.wait_ms = wait_ms
        self._queue: list[_Pending[T, R]] = []
        self._worker: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        """Queue ``item``; return its result, or raise its batch's exception."""
        loop = asyncio.get_running_loop()
        pending: _Pending[T, R] = _Pending(item, loop.create_future())
        self._queue.append(pending)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.ensure_future(self._drain())
        return await pending.future

    async def _drain(self) -> None:
        if self.wait_ms > 0 and len(self._queue) < self.max_batch_size:
            await asyncio.sleep(self.wait_ms / 1000)
        while self._queue:
            batch = self._queue[: self.max_batch_size]
            del self._queue[: self.max_batch_size]
            batch = [p for p in batch if not p.future.done()]  # callers that gave up
            if not batch:
                continue
            try:
                results = await self.run([p.item for p in batch])
            except Exception as e:
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(e)
                continue
            for p, r in zip(batch, results, strict=True):
                if not p.future.done():
                    p.future.set_result(r)
