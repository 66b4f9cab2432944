"""The residency scheduler on fake backends that record every load, unload and batch.

Fakes isolate the unit: they count loads, hold no weights, and fail on demand. The real
engines are exercised by tests/engine/test_batch_cli.py and bench/batching.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field

import pytest

from orchestrator.config import ExpertConfig
from orchestrator.errors import BackendError, ExpertUnavailableError, ServiceUnavailableError
from orchestrator.schedule import ExpertScheduler, Residency, plan_order
from orchestrator.types import (
    Delta,
    Generation,
    GenerationRequest,
    Message,
    SamplingParams,
    Usage,
)
from workers.base import Backend

GB = 2**30


@dataclass
class Ledger:
    """What happened, in order, across all fake backends; checks the budget at every load."""

    events: list[tuple[str, str, int]] = field(default_factory=list)
    awake: dict[str, int] = field(default_factory=dict)  # name -> bytes
    peak_bytes: int = 0
    peak_experts: int = 0
    generate_delay_s: float = 0.0
    fail_load: set[str] = field(default_factory=set)

    def count(self, kind: str, name: str | None = None) -> int:
        return sum(1 for k, n, _ in self.events if k == kind and (name is None or n == name))

    def batches(self, name: str | None = None) -> list[int]:
        return [size for k, n, size in self.events if k == "generate" and name in (None, n)]


class FakeBackend(Backend):
    name = "fake"

    def __init__(self, expert: ExpertConfig, ledger: Ledger) -> None:
        super().__init__(expert)
        self.ledger = ledger

    async def load(self) -> None:
        if self.expert.name in self.ledger.fail_load:
            raise RuntimeError("weights missing")
        await asyncio.sleep(0)
        self.ledger.events.append(("load", self.expert.name, 0))
        self._awake()

    def _awake(self) -> None:
        self.loaded = True
        self.ledger.awake[self.expert.name] = self.memory_bytes()
        self.ledger.peak_bytes = max(self.ledger.peak_bytes, sum(self.ledger.awake.values()))
        self.ledger.peak_experts = max(self.ledger.peak_experts, len(self.ledger.awake))

    async def unload(self) -> None:
        if self.loaded:
            self.ledger.events.append(("unload", self.expert.name, 0))
        self.ledger.awake.pop(self.expert.name, None)
        self.loaded = False

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        if self.expert.name not in self.ledger.awake:
            raise AssertionError(f"generate on {self.expert.name}, which is not resident")
        self.ledger.events.append(("generate", self.expert.name, len(requests)))
        if self.ledger.generate_delay_s:
            await asyncio.sleep(self.ledger.generate_delay_s)
        texts = [r.messages[-1].content for r in requests]
        if any("BAD" in t for t in texts):
            raise BackendError("the engine choked on BAD")
        return [Generation(f"{self.expert.name}:{t}", Usage(1, 1)) for t in texts]


class SleepyBackend(FakeBackend):
    """A backend with sleep mode (as vLLM on GPU): sleeping frees the budgeted memory."""

    sleep_frees_memory = True
    sleep_error: Exception | None = None

    async def sleep(self) -> None:
        if self.sleep_error is not None:
            raise self.sleep_error
        self.ledger.events.append(("sleep", self.expert.name, 0))
        self.ledger.awake.pop(self.expert.name, None)

    async def wake_up(self) -> None:
        self.ledger.events.append(("wake", self.expert.name, 0))
        self._awake()


def pool(
    ledger: Ledger,
    sizes_gb: Mapping[str, float | None],
    cls: type[FakeBackend] = FakeBackend,
    timeout_s: float = 120.0,
) -> dict[str, Backend]:
    return {
        name: cls(ExpertConfig(name=name, model="x", memory_gb=gb, timeout_s=timeout_s), ledger)
        for name, gb in sizes_gb.items()
    }


def req(text: str) -> GenerationRequest:
    return GenerationRequest((Message("user", text),), SamplingParams(max_tokens=4))


def answers(results: Sequence[Generation | BaseException]) -> list[str]:
    return [r.text if isinstance(r, Generation) else type(r).__name__ for r in results]


FOUR = {"a": 1.0, "b": 1.0, "c": 1.0, "d": 1.0}


async def test_groups_by_expert_one_load_each_and_answers_in_order() -> None:
    ledger = Ledger()
    scheduler = ExpertScheduler(pool(ledger, FOUR), memory_budget_bytes=GB, max_batch_size=64)
    jobs = [("abcd"[i % 4], req(f"q{i}")) for i in range(24)]  # interleaved: worst for FIFO
    results = await scheduler.run(jobs)
    await scheduler.stop()
    assert answers(results) == [f"{e}:{r.messages[0].content}" for e, r in jobs]
    assert [ledger.count("load", e) for e in "abcd"] == [1, 1, 1, 1]
    assert ledger.batches() == [6, 6, 6, 6]
    assert ledger.peak_experts == 1 and ledger.peak_bytes <= GB
    assert scheduler.residency.stats.loads == 4


async def test_max_batch_size_splits_a_group_without_reloading() -> None:
    ledger = Ledger()
    scheduler = ExpertScheduler(pool(ledger, {"a": 1.0}), max_batch_size=4)
    results = await scheduler.run([("a", req(f"q{i}")) for i in range(10)])
    await scheduler.stop()
    assert len(answers(results)) == 10 and ledger.batches("a") == [4, 4, 2]
    assert ledger.count("load", "a") == 1


async def test_resident_expert_is_served_first_and_not_reloaded() -> None:
    ledger = Ledger()
    scheduler = ExpertScheduler(
        pool(ledger, {"a": 1.0, "b": 1.0, "c": 1.0}), memory_budget_bytes=GB
    )
    await scheduler.residency.acquire("c")
    await scheduler.run([("a", req("1")), ("b", req("2")), ("c", req("3"))])
    await scheduler.stop()
    served = [n for k, n, _ in ledger.events if k == "generate"]
    assert served == ["c", "a", "b"]
    assert ledger.count("load", "c") == 1 and ledger.count("load") == 3


def test_plan_order_puts_overdue_groups_before_resident_ones() -> None:
    oldest = {"a": 0.0, "b": 5.0, "c": 9.0}
    assert plan_order(oldest, resident=["c"], now_s=10.0, max_wait_s=100.0) == ["c", "a", "b"]
    assert plan_order(oldest, resident=["c"], now_s=10.0, max_wait_s=8.0) == ["a", "c", "b"]
    assert plan_order(oldest, resident=["c"], now_s=10.0, max_wait_s=4.0) == ["a", "b", "c"]


@pytest.mark.parametrize(("max_wait_ms", "first"), [(60_000.0, "a"), (1.0, "b")])
async def test_deadline_overrides_residency(max_wait_ms: float, first: str) -> None:
    ledger = Ledger()
    scheduler = ExpertScheduler(
        pool(ledger, {"a": 1.0, "b": 1.0}),
        memory_budget_bytes=GB,
        batch_wait_ms=20,
        max_wait_ms=max_wait_ms,
    )
    await scheduler.residency.acquire("a")
    scheduler.hold_window(2, timeout_s=30)  # one round for both, whatever the deadline
    b = asyncio.create_task(scheduler.submit("b", req("old")))
    await asyncio.sleep(0.01)  # b has waited 10 ms when a's request arrives
    await asyncio.gather(b, scheduler.submit("a", req("new")))
    await scheduler.stop()
    assert next(n for k, n, _ in ledger.events if k == "generate") == first


async def test_busy_resident_expert_cannot_starve_another() -> None:
    """a gets a request every 2 ms forever and stays resident; b's one request still runs
    in the round after it arrives: at most two a-batches (the running round's and the next
    round's resident group) go before it."""
    ledger = Ledger(generate_delay_s=0.01)
    scheduler = ExpertScheduler(
        pool(ledger, {"a": 1.0, "b": 1.0}),
        memory_budget_bytes=GB,
        batch_wait_ms=1,
        max_batch_size=64,
        max_wait_ms=60_000,
    )
    stop = asyncio.Event()
    a_tasks: list[asyncio.Task[Generation]] = []

    async def flood() -> None:
        while not stop.is_set():
            a_tasks.append(asyncio.create_task(scheduler.submit("a", req("a"))))
            await asyncio.sleep(0.002)

    flooding = asyncio.create_task(flood())
    await asyncio.sleep(0.05)
    mark = len(ledger.events)
    answer = await asyncio.wait_for(scheduler.submit("b", req("b")), timeout=10)
    stop.set()
    await flooding
    await asyncio.gather(*a_tasks)
    await scheduler.stop()
    assert answer.text == "b:b"
    before_b = [n for k, n, _ in ledger.events[mark:] if k == "generate"]
    assert before_b.index("b") <= 2, before_b


async def test_memory_budget_holds_with_mixed_sizes() -> None:
    ledger = Ledger()
    sizes = {"s1": 1.0, "s2": 1.0, "m": 2.0, "l": 3.0}
    scheduler = ExpertScheduler(pool(ledger, sizes), memory_budget_bytes=3 * GB)
    jobs = [(e, req(e)) for _ in range(3) for e in sizes]
    assert all(isinstance(r, Generation) for r in await scheduler.run(jobs))
    await scheduler.stop()
    assert ledger.peak_bytes <= 3 * GB
    assert ledger.peak_experts >= 2  # the budget was shared, not one at a time
    assert all(ledger.count("load", e) == 1 for e in sizes)


async def test_count_budget() -> None:
    ledger = Ledger()
    scheduler = ExpertScheduler(pool(ledger, FOUR), max_resident_experts=2)
    await scheduler.run([(e, req(e)) for e in "abcdabcd"])
    await scheduler.stop()
    assert ledger.peak_experts == 2 and ledger.count("load") == 4


async def test_eviction_spares_the_expert_needed_next() -> None:
    ledger = Ledger()
    residency = Residency(pool(ledger, {"a": 1.0, "b": 1.0, "c": 1.0}), max_resident_experts=2)
    await residency.acquire("a")
    await residency.acquire("b")
    await residency.acquire("c", upcoming=["a"])  # a is needed next: b goes, though a is older
    assert sorted(residency.resident()) == ["a", "c"]
    await residency.acquire("b")  # nothing known: least recently used (a) goes
    assert sorted(residency.resident()) == ["b", "c"]


async def test_an_expert_bigger_than_the_budget_runs_alone() -> None:
    ledger = Ledger()
    scheduler = ExpertScheduler(pool(ledger, {"a": 1.0, "big": 5.0}), memory_budget_bytes=2 * GB)
    results = await scheduler.run([("a", req("1")), ("big", req("2")), ("a", req("3"))])
    await scheduler.stop()
    assert answers(results) == ["a:1", "big:2", "a:3"]
    assert ledger.peak_experts == 1


async def test_unknown_size_loads_alone_until_measured() -> None:
    ledger = Ledger()
    scheduler = ExpertScheduler(pool(ledger, {"a": 1.0, "u": None}), memory_budget_bytes=4 * GB)
    await scheduler.residency.acquire("a")
    await scheduler.run([("u", req("1"))])
    assert ledger.count("unload", "a") == 1  # u's size was unknown: it needed the whole budget
    await scheduler.run([("a", req("2"))])
    assert ledger.count("unload", "u") == 0  # measured now (0 bytes): both fit
    await scheduler.stop()


async def test_a_bad_request_fails_alone() -> None:
    ledger = Ledger()
    scheduler = ExpertScheduler(pool(ledger, {"a": 1.0}))
    results = await scheduler.run([("a", req("ok1")), ("a", req("BAD")), ("a", req("ok2"))])
    await scheduler.stop()
    assert answers(results) == ["a:ok1", "BackendError", "a:ok2"]
    assert ledger.count("load") == 1


async def test_a_failed_load_fails_only_that_experts_requests() -> None:
    ledger = Ledger(fail_load={"b"})
    scheduler = ExpertScheduler(pool(ledger, {"a": 1.0, "b": 1.0}), memory_budget_bytes=GB)
    results = await scheduler.run([("a", req("1")), ("b", req("2")), ("a", req("3"))])
    await scheduler.stop()
    assert answers(results) == ["a:1", "ExpertUnavailableError", "a:3"]
    assert isinstance(results[1], ExpertUnavailableError) and "weights missing" in str(results[1])


async def test_a_slow_batch_times_out_per_request() -> None:
    ledger = Ledger(generate_delay_s=0.5)
    scheduler = ExpertScheduler(pool(ledger, {"a": 1.0}, timeout_s=0.05))
    results = await scheduler.run([("a", req("1")), ("a", req("2"))])
    await scheduler.stop()
    assert answers(results) == ["TimeoutError", "TimeoutError"]


async def test_sleep_and_wake_replace_reloads() -> None:
    ledger = Ledger()
    scheduler = ExpertScheduler(
        pool(ledger, {"a": 1.0, "b": 1.0}, SleepyBackend), memory_budget_bytes=GB
    )
    for expert in "aba":
        await scheduler.run([(expert, req(expert))])
    assert [k + n for k, n, _ in ledger.events if k != "generate"] == [
        "loada", "sleepa", "loadb", "sleepb", "wakea"
    ]  # fmt: skip
    stats = scheduler.residency.stats
    assert (stats.loads, stats.sleeps, stats.wakes) == (2, 2, 1)
    await scheduler.stop()


async def test_swap_unload_mode_never_sleeps() -> None:
    ledger = Ledger()
    backends = pool(ledger, {"a": 1.0, "b": 1.0}, SleepyBackend)
    scheduler = ExpertScheduler(backends, memory_budget_bytes=GB, swap="unload")
    for expert in "aba":
        await scheduler.run([(expert, req(expert))])
    await scheduler.stop()
    assert ledger.count("sleep") == 0 and ledger.count("load", "a") == 2


async def test_a_backend_that_cannot_sleep_is_unloaded() -> None:
    ledger = Ledger()
    backends = pool(ledger, {"a": 1.0, "b": 1.0}, SleepyBackend)
    backends["a"].sleep_error = NotImplementedError("no sleep mode on CPU")  # type: ignore[attr-defined]
    scheduler = ExpertScheduler(backends, memory_budget_bytes=GB)
    for expert in "abab":
        await scheduler.run([(expert, req(expert))])
    await scheduler.stop()
    assert ledger.count("unload", "a") >= 2 and ledger.count("load", "a") == 2
    assert ledger.peak_experts == 1


async def test_sleep_that_frees_nothing_is_not_used() -> None:
    ledger = Ledger()
    backends = pool(ledger, {"a": 1.0, "b": 1.0}, SleepyBackend)
    backends["a"].sleep_frees_memory = False  # type: ignore[attr-defined]  # vLLM on CPU
    scheduler = ExpertScheduler(backends, memory_budget_bytes=GB)
    for expert in "ab":
        await scheduler.run([(expert, req(expert))])
    await scheduler.stop()
    assert ledger.count("sleep", "a") == 0 and ledger.count("unload", "a") == 1


async def test_concurrent_submits_within_the_window_share_one_batch() -> None:
    ledger = Ledger()
    scheduler = ExpertScheduler(pool(ledger, {"a": 1.0}), batch_wait_ms=50)
    results = await asyncio.gather(*(scheduler.submit("a", req(str(i))) for i in range(6)))
    await scheduler.stop()
    assert [g.text for g in results] == [f"a:{i}" for i in range(6)]
    assert ledger.batches() == [6]


@pytest.mark.parametrize("hold", [True, False])
async def test_hold_window_collects_stragglers(hold: bool) -> None:
    ledger = Ledger()
    scheduler = ExpertScheduler(pool(ledger, {"a": 1.0, "b": 1.0}), batch_wait_ms=1, max_wait_ms=1)
    if hold:
        scheduler.hold_window(4, timeout_s=30)
    tasks = []
    for i, expert in enumerate("abab"):
        tasks.append(asyncio.create_task(scheduler.submit(expert, req(str(i)))))
        await asyncio.sleep(0.02)  # longer than the window
    await asyncio.gather(*tasks)
    await scheduler.stop()
    if hold:
        assert ledger.batches() == [2, 2] and scheduler.stats.rounds == 1
    else:
        assert scheduler.stats.rounds == 4


async def test_a_cancelled_request_is_skipped() -> None:
    ledger = Ledger()
    scheduler = ExpertScheduler(pool(ledger, {"a": 1.0}))
    scheduler.hold_window(2, timeout_s=30)
    gone = asyncio.create_task(scheduler.submit("a", req("gone")))
    await asyncio.sleep(0)
    gone.cancel()
    kept = await scheduler.submit("a", req("kept"))
    await scheduler.stop()
    assert kept.text == "a:kept" and ledger.batches() == [1]


async def test_stop_fails_what_is_queued_and_unloads() -> None:
    ledger = Ledger()
    scheduler = ExpertScheduler(pool(ledger, {"a": 1.0, "b": 1.0}))
    await scheduler.residency.acquire("b")
    scheduler.hold_window(99, timeout_s=30)
    waiting = asyncio.create_task(scheduler.submit("a", req("x")))
    await asyncio.sleep(0.01)
    await scheduler.stop()
    with pytest.raises(ServiceUnavailableError):
        await waiting
    with pytest.raises(ServiceUnavailableError):
        await scheduler.submit("a", req("after"))
    assert ledger.awake == {}


async def test_stop_fails_the_round_in_progress() -> None:
    ledger = Ledger(generate_delay_s=30)
    scheduler = ExpertScheduler(pool(ledger, {"a": 1.0, "b": 1.0}))
    scheduler.hold_window(3, timeout_s=30)
    running = asyncio.create_task(scheduler.submit("a", req("x")))
    streaming = asyncio.create_task(_drain(scheduler.stream("a", req("y"))))
    later = asyncio.create_task(scheduler.submit("b", req("z")))
    while not ledger.batches():
        await asyncio.sleep(0.001)
    await scheduler.stop()
    for task in (running, streaming, later):
        with pytest.raises(ServiceUnavailableError):
            await task


async def _drain(deltas: AsyncIterator[Delta]) -> str:
    return "".join([d.text async for d in deltas])


async def test_unknown_expert_is_refused() -> None:
    scheduler = ExpertScheduler(pool(Ledger(), {"a": 1.0}))
    with pytest.raises(ExpertUnavailableError):
        await scheduler.submit("zzz", req("x"))
    await scheduler.stop()


async def test_streams_run_in_their_experts_group() -> None:
    ledger = Ledger()
    scheduler = ExpertScheduler(pool(ledger, {"a": 1.0, "b": 1.0}), memory_budget_bytes=GB)

    async def collect(expert: str, text: str) -> str:
        return "".join([d.text async for d in scheduler.stream(expert, req(text))])

    texts = await asyncio.gather(collect("a", "1"), collect("b", "2"), collect("a", "3"))
    await scheduler.stop()
    assert list(texts) == ["a:1", "b:2", "a:3"] and ledger.count("load") == 2


async def test_a_stream_whose_expert_fails_to_load_raises() -> None:
    scheduler = ExpertScheduler(pool(Ledger(fail_load={"a"}), {"a": 1.0}))
    with pytest.raises(ExpertUnavailableError):
        async for _ in scheduler.stream("a", req("x")):
            pass
    await scheduler.stop()
