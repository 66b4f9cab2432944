"""Which HTTP client should the `openai` backend use? CPU per request of httpx vs aiohttp.

Starts a minimal OpenAI-shaped server (aiohttp, in a subprocess so its CPU is not counted),
then sends the same N chat requests at a fixed concurrency with each client and reports
req/s and this process's CPU time per request (user+sys). Run: python -m bench.http_client
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time

SERVER = r"""
import json, sys
from aiohttp import web
BODY = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
async def chat(request):
    await request.read()
    return web.Response(text=BODY, content_type="application/json")
app = web.Application(); app.router.add_post("/v1/chat/completions", chat)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""

PAYLOAD = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


async def run_httpx(url: str, n: int, concurrency: int) -> None:
    import httpx

    async with httpx.AsyncClient(
        base_url=url, limits=httpx.Limits(max_connections=concurrency)
    ) as client:
        sem = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with sem:
                r = await client.post("/v1/chat/completions", json=PAYLOAD)
                r.json()

        await asyncio.gather(*(one() for _ in range(n)))


async def run_aiohttp(url: str, n: int, concurrency: int) -> None:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(base_url=url, connector=connector) as session:
        sem = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with sem, session.post("/v1/chat/completions", json=PAYLOAD) as r:
                await r.json()

        await asyncio.gather(*(one() for _ in range(n)))


def measure(name: str, fn, url: str, n: int, concurrency: int) -> dict[str, float]:
    asyncio.run(fn(url, 50, concurrency))  # warm up
    cpu0, t0 = time.process_time(), time.perf_counter()
    asyncio.run(fn(url, n, concurrency))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    return {"client": name, "req_per_s": n / wall, "cpu_ms_per_req": cpu / n * 1000}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=32)
    args = ap.parse_args()
    from tests.conftest import free_port

    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port)])
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        for _ in range(100):
            try:
                httpx.post(url + "/v1/chat/completions", json=PAYLOAD)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        rows = [
            measure("httpx", run_httpx, url, args.requests, args.concurrency),
            measure("aiohttp", run_aiohttp, url, args.requests, args.concurrency),
        ]
    finally:
        server.terminate()
    for r in rows:
        print(f"{r['client']:8s} {r['req_per_s']:8.0f} req/s  {r['cpu_ms_per_req']:.2f} ms CPU/req")
    ratio = rows[0]["cpu_ms_per_req"] / rows[1]["cpu_ms_per_req"]
    print(json.dumps({"rows": rows, "httpx_over_aiohttp_cpu": ratio, "pid": os.getpid()}))


if __name__ == "__main__":
    main()
