"""A bounded load driver on loopback (aiohttp; httpx's async client caps near 200 req/s here).

`drive()` sends ``requests`` chat completions at ``concurrency`` to one URL and reports req/s,
p50/p99 latency, errors, and — given the server's pid — the server's CPU time per request and
its RSS before/after (flat memory). Used by `bench.peers` and the slow load test; also runnable:

    python -m bench.load --url http://127.0.0.1:8000 --requests 10000 --concurrency 64 --pid PID
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp
import psutil


@dataclass
class LoadResult:
    requests: int
    concurrency: int
    seconds: float
    req_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    statuses: dict[str, int] = field(default_factory=dict)
    server_cpu_ms_per_req: float | None = None
    server_rss_mb_before: float | None = None
    server_rss_mb_after: float | None = None
    rss_samples_mb: list[float] = field(default_factory=list)

    def line(self, name: str) -> str:
        cpu = f"{self.server_cpu_ms_per_req:6.2f} ms CPU/req" if self.server_cpu_ms_per_req else ""
        return (
            f"{name:28s} {self.req_per_s:8.0f} req/s  p50 {self.p50_ms:7.1f} ms  "
            f"p99 {self.p99_ms:7.1f} ms  errors {self.errors}  {cpu}"
        )


def _cpu_s(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            p = psutil.Process(pid)
            procs = [p, *p.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for q in procs:
            try:
                t = q.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
    return total


def _rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            p = psutil.Process(pid)
            total += sum(q.memory_info().rss for q in [p, *p.children(recursive=True)])
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


async def drive(
    url: str,
    body: dict[str, Any],
    requests: int,
    concurrency: int,
    server_pids: list[int] | None = None,
    headers: dict[str, str] | None = None,
    timeout_s: float = 60,
    vary: bool = True,
) -> LoadResult:
    """``vary`` makes every prompt distinct (a request number appended to the last message),
    so caches (embeddings of repeated queries) do not flatter a routed server."""
    pids = server_pids or []
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    errors = 0
    rss_samples: list[float] = []
    payload = json.dumps(body)
    hdrs = {"content-type": "application/json", **(headers or {})}
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def warm() -> None:
            async with session.post(url, data=payload, headers=hdrs) as r:
                await r.read()

        await asyncio.gather(*(warm() for _ in range(min(concurrency, 32))))
        rss_before = _rss_mb(pids) if pids else None
        cpu_before = _cpu_s(pids) if pids else 0.0
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(requests):
            queue.put_nowait(i)

        async def worker() -> None:
            nonlocal errors
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                data = payload
                if vary:
                    messages = [*body["messages"][:-1], dict(body["messages"][-1])]
                    messages[-1]["content"] = f"{messages[-1]['content']} #{i}"
                    data = json.dumps({**body, "messages": messages})
                t0 = time.perf_counter()
                try:
                    async with session.post(url, data=data, headers=hdrs) as r:
                        await r.read()
                        key = str(r.status)
                        if r.status != 200:
                            errors += 1
                except (aiohttp.ClientError, TimeoutError) as e:
                    key = type(e).__name__
                    errors += 1
                latencies.append((time.perf_counter() - t0) * 1000)
                statuses[key] = statuses.get(key, 0) + 1
                if pids and i % max(1, requests // 20) == 0:
                    rss_samples.append(round(_rss_mb(pids), 1))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - t0
        cpu = (_cpu_s(pids) - cpu_before) if pids else None
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return LoadResult(
        requests=requests,
        concurrency=concurrency,
        seconds=seconds,
        req_per_s=requests / seconds,
        p50_ms=q[49],
        p99_ms=q[98],
        errors=errors,
        statuses=statuses,
        server_cpu_ms_per_req=(cpu / requests * 1000) if cpu is not None else None,
        server_rss_mb_before=rss_before,
        server_rss_mb_after=_rss_mb(pids) if pids else None,
        rss_samples_mb=rss_samples,
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--model", default="auto")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--pid", type=int, action="append", default=[])
    args = ap.parse_args()
    body = {"model": args.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    result = asyncio.run(
        drive(args.url + "/v1/chat/completions", body, args.requests, args.concurrency, args.pid)
    )
    print(result.line(args.url))
    print(json.dumps(asdict(result)))


if __name__ == "__main__":
    main()
