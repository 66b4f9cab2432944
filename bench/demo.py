"""The embedded demo on this machine: cold start, first answer, tokens/s.

Starts `orchestrator serve` (no config: four experts on SmolLM2-135M-Instruct, semantic
routing) as a subprocess and measures: seconds from process start to /ready; latency of the
first answer; time to first token streamed; decode tokens/s for one request; aggregate
tokens/s for 8 concurrent requests (micro-batched by the transformers backend).
Run: python -m bench.demo
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import httpx

from workers.models import cache_dir

QUESTIONS = [
    "What is the capital of France?",
    "Write a Python function that adds two numbers.",
    "What is 12 times 7?",
    "What are common symptoms of a cold?",
    "Name the largest planet in the solar system.",
    "Explain what a list comprehension is in Python.",
    "Solve for x: 3x + 2 = 11.",
    "Why is sleep important for health?",
]


def body(q: str, **kw: object) -> dict[str, object]:
    return {"model": "auto", "messages": [{"role": "user", "content": q}], "max_tokens": 64, **kw}


async def concurrent(url: str, n: int) -> tuple[float, int]:
    async with httpx.AsyncClient(base_url=url, timeout=300) as c:
        t0 = time.perf_counter()
        rs = await asyncio.gather(
            *(c.post("/v1/chat/completions", json=body(QUESTIONS[i % 8])) for i in range(n))
        )
        wall = time.perf_counter() - t0
    return wall, sum(r.json()["usage"]["completion_tokens"] for r in rs)


def main() -> None:
    from tests.conftest import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    warm_cache = (cache_dir() / "hf" / "SmolLM2-135M-Instruct.Q4_1" / "config.json").is_file()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "orchestrator",
            "serve",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while True:
            try:
                if httpx.get(url + "/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        cold_start_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        r = httpx.post(url + "/v1/chat/completions", json=body(QUESTIONS[0]), timeout=300).json()
        first_answer_s = time.perf_counter() - t1
        answer = r["choices"][0]["message"]["content"]

        t2 = time.perf_counter()
        ttft = None
        tokens = 0
        with httpx.stream(
            "POST",
            url + "/v1/chat/completions",
            json=body(
                QUESTIONS[5], max_tokens=128, stream=True, stream_options={"include_usage": True}
            ),
            timeout=300,
        ) as s:
            for line in s.iter_lines():
                if not line.startswith("data: ") or line.endswith("[DONE]"):
                    continue
                chunk = json.loads(line[6:])
                if (
                    ttft is None
                    and chunk.get("choices")
                    and chunk["choices"][0]["delta"].get("content")
                ):
                    ttft = time.perf_counter() - t2
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
        stream_s = time.perf_counter() - t2
        single_tps = tokens / (stream_s - (ttft or 0))

        wall, total = asyncio.run(concurrent(url, 8))
    finally:
        proc.terminate()
        proc.wait(30)
    print(f"model cache warm before start: {warm_cache}")
    print(f"cold start (process → /ready):   {cold_start_s:6.1f} s")
    print(f"first answer after ready:        {first_answer_s:6.2f} s   ({answer[:60]!r})")
    print(f"time to first token (streamed):  {ttft or 0:6.3f} s")
    print(f"decode, one request:             {single_tps:6.1f} tokens/s ({tokens} tokens)")
    print(
        f"8 concurrent requests:           {total / wall:6.1f} tokens/s ({total} tokens in {wall:.1f} s)"
    )
    print(
        json.dumps(
            {
                "cache_warm": warm_cache,
                "cold_start_s": cold_start_s,
                "first_answer_s": first_answer_s,
                "ttft_s": ttft,
                "single_tokens_per_s": single_tps,
                "concurrent8_tokens_per_s": total / wall,
            }
        )
    )


if __name__ == "__main__":
    main()
