from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from orchestrator.microbatch import MicroBatcher


async def test_batches_form_while_a_batch_runs() -> None:
    calls: list[list[int]] = []

    async def run(items: Sequence[int]) -> list[int]:
        calls.append(list(items))
        await asyncio.sleep(0.05)
        return [i * 10 for i in items]

    b: MicroBatcher[int, int] = MicroBatcher(run, max_batch_size=4)
    results = await asyncio.gather(*(b.submit(i) for i in range(10)))
    assert results == [i * 10 for i in range(10)]
    assert calls[0] == [0, 1, 2, 3] and all(len(c) <= 4 for c in calls)
    assert sum(len(c) for c in calls) == 10 and len(calls) == 3
    # An idle batcher runs a lone item at once (no waiting).
    assert await b.submit(7) == 70 and calls[-1] == [7]


async def test_errors_reach_every_caller_of_the_batch_only() -> None:
    async def run(items: Sequence[int]) -> list[int]:
        if 3 in items:
            raise ValueError("bad batch")
        return list(items)

    b: MicroBatcher[int, int] = MicroBatcher(run, max_batch_size=2)
    results = await asyncio.gather(*(b.submit(i) for i in range(4)), return_exceptions=True)
    assert results[:2] == [0, 1]
    assert all(isinstance(r, ValueError) for r in results[2:])
    assert await b.submit(5) == 5  # the batcher survives a failed batch


async def test_wait_ms_lets_a_batch_form() -> None:
    calls: list[int] = []

    async def run(items: Sequence[int]) -> list[int]:
        calls.append(len(items))
        return list(items)

    b: MicroBatcher[int, int] = MicroBatcher(run, max_batch_size=8, wait_ms=20)

    async def late(i: int) -> int:
        await asyncio.sleep(0.005)
        return await b.submit(i)

    await asyncio.gather(b.submit(0), late(1), late(2))
    assert calls == [3]


@pytest.mark.parametrize("n", [1, 65])
async def test_sizes(n: int) -> None:
    async def run(items: Sequence[int]) -> list[int]:
        return [i + 1 for i in items]

    b: MicroBatcher[int, int] = MicroBatcher(run, max_batch_size=64)
    assert await asyncio.gather(*(b.submit(i) for i in range(n))) == [i + 1 for i in range(n)]
