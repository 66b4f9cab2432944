"""What does the orchestrator cost on top of vLLM? Completion tokens/s, bare vs through it.

Both sides run the same engine: vLLM's ``AsyncLLM`` with the same engine arguments (the vllm
backend's :func:`workers.vllm_backend.engine_args` for one expert, ``engine:`` below), on the
same model (SmolLM2-135M-Instruct, ``smollm2``) and the same prompts, greedy, ``max_tokens``
fixed, ``concurrency`` requests in flight:

- ``bare``: vLLM alone. ``--baseline inproc`` (default): ``AsyncLLM`` in this process, prompts
  rendered by vLLM's chat renderer, no HTTP at all (the strictest baseline).
  ``--baseline server``: ``python -m vllm.entrypoints.openai.api_server`` driven over HTTP by
  the same client as the orchestrator.
- ``orchestrator``: ``orchestrator serve`` in its own process with one ``vllm`` expert, driven
  over HTTP (``model`` = the expert's name, so routing is the direct path; ``--routed`` sends
  ``model: auto`` through the semantic strategy instead).

Both engines stay up for the whole run and the runs alternate, the order swapping each round
(bare then orchestrator, orchestrator then bare, …), so both see the same machine. tokens/s =
completion tokens of all requests / wall time of the run. Prints each run, the medians, each
round's ratio, and their median as the ratio and overhead (target: ≤ 10 %).

Run: python -m bench.vllm_overhead [--requests 32] [--concurrency 8] [--max-tokens 64]
[--rounds 5] [--baseline inproc|server] [--stream] [--routed]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path
from typing import Any

for _k, _v in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_HOST_IP": "127.0.0.1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_k, _v)

import httpx  # noqa: E402
import yaml  # noqa: E402

from orchestrator.config import ExpertConfig  # noqa: E402
from workers.models import materialize  # noqa: E402
from workers.vllm_backend import engine_args  # noqa: E402

ENGINE: dict[str, Any] = {"max_model_len": 2048}
EXPERT = ExpertConfig(
    name="smol",
    backend="vllm",
    model="smollm2",
    engine=ENGINE,
    max_concurrency=64,
    description="General knowledge, geography, history and everyday questions.",
)
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
Run = Callable[[str, int], Awaitable[int]]  # (question, max_tokens) -> completion tokens


def _free_port() -> int:
    """A free port below Linux's ephemeral range (32768+): a server binds it only after its
    engine has started (minutes here), and an ephemeral port could be taken by then."""
    import random
    import socket

    while True:
        port = random.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


@contextmanager
def _process(cmd: list[str], ready_url: str, log: Path, timeout_s: float = 600) -> Iterator[None]:
    with open(log, "wb") as out:
        # Its own process group: a kill also takes vLLM's engine-core child, never orphaned.
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"{cmd[:4]} exited with {proc.returncode}; see {log}")
                try:
                    if httpx.get(ready_url, timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{cmd[:4]} not ready after {timeout_s} s; see {log}")
                time.sleep(0.5)
            yield
        finally:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _http_run(client: httpx.AsyncClient, model: str, stream: bool) -> Run:
    async def run(question: str, max_tokens: int) -> int:
        body: dict[str, Any] = {
            "model": model,
            "messages": [{"role": "user", "content": question}],
            "max_tokens": max_tokens,
            "temperature": 0.0,
        }
        if not stream:
            r = await client.post("/v1/chat/completions", json=body)
            r.raise_for_status()
            return int(r.json()["usage"]["completion_tokens"])
        body |= {"stream": True, "stream_options": {"include_usage": True}}
        tokens = 0
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            r.raise_for_status()
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    usage = json.loads(line[6:]).get("usage")
                    if usage:
                        tokens = int(usage["completion_tokens"])
        return tokens

    return run


def _inproc_run(engine: Any, stream: bool) -> Run:
    from vllm import SamplingParams
    from vllm.renderers import ChatParams
    from vllm.sampling_params import RequestOutputKind

    chat = ChatParams(chat_template_kwargs={"add_generation_prompt": True})
    kind = RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY
    counter = iter(range(10**9))

    async def run(question: str, max_tokens: int) -> int:
        _, (prompt,) = await engine.renderer.render_chat_async(
            [[{"role": "user", "content": question}]], chat
        )
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, output_kind=kind)
        tokens = 0
        async for out in engine.generate(prompt, params, f"bare-{next(counter)}"):
            # DELTA outputs carry the new tokens, FINAL_ONLY the whole completion.
            tokens += len(out.outputs[0].token_ids)
        return tokens

    return run


async def _round(run: Run, requests: int, concurrency: int, max_tokens: int) -> float:
    """Completion tokens per second for ``requests`` questions, ``concurrency`` at a time."""
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> int:
        async with gate:
            return await run(QUESTIONS[i % len(QUESTIONS)], max_tokens)

    start = time.perf_counter()
    tokens = await asyncio.gather(*(one(i) for i in range(requests)))
    return sum(tokens) / (time.perf_counter() - start)


def _server_cmd(kwargs: dict[str, Any], port: int) -> list[str]:
    """The vLLM OpenAI server with the same engine arguments, as CLI flags."""
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--port", str(port)]
    cmd += ["--host", "127.0.0.1", "--served-model-name", "smol"]
    for key, value in kwargs.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            cmd.append(flag)
        elif value is not False and value is not None:
            cmd += [flag, str(value)]
    return cmd


async def main(args: argparse.Namespace) -> None:
    kwargs = engine_args(EXPERT, str(materialize(EXPERT.model)))
    workdir = Path(tempfile.mkdtemp(prefix="vllm-overhead-"))
    config = {
        "experts": [EXPERT.model_dump(mode="json", exclude_defaults=True)],
        "routing": {"default_strategy": "semantic" if args.routed else "direct"},
        "server": {"default_temperature": 0.0},
    }
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    limits = httpx.Limits(max_connections=args.concurrency * 2)
    timeout = httpx.Timeout(600)

    print(f"engine arguments: {kwargs}")
    print(
        f"{args.requests} requests, {args.concurrency} in flight, max_tokens {args.max_tokens}, "
        f"{'streamed' if args.stream else 'not streamed'}, baseline {args.baseline}, "
        f"orchestrator model {'auto (semantic)' if args.routed else 'smol (direct)'}"
    )
    results: dict[str, list[float]] = {"bare": [], "orchestrator": []}
    async with AsyncExitStack() as stack:
        t0 = time.perf_counter()
        if args.baseline == "inproc":
            from vllm import AsyncEngineArgs
            from vllm.v1.engine.async_llm import AsyncLLM

            engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs))
            stack.callback(engine.shutdown)
            bare: Run = _inproc_run(engine, args.stream)
        else:
            port = _free_port()
            log = workdir / "vllm-server.log"
            stack.enter_context(
                _process(_server_cmd(kwargs, port), f"http://127.0.0.1:{port}/health", log)
            )
            bare_client = httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=timeout
            )
            stack.push_async_callback(bare_client.aclose)
            bare = _http_run(bare_client, "smol", args.stream)
        print(f"bare vLLM up in {time.perf_counter() - t0:.1f} s")

        orch_port = _free_port()  # taken just before use: the machine is shared
        orch_cmd = [sys.executable, "-m", "orchestrator", "serve", "--port", str(orch_port)]
        orch_cmd += ["--config", str(workdir / "config.yaml"), "--log-level", "warning"]
        t0 = time.perf_counter()
        stack.enter_context(
            _process(orch_cmd, f"http://127.0.0.1:{orch_port}/ready", workdir / "orch.log")
        )
        print(f"orchestrator up in {time.perf_counter() - t0:.1f} s")
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{orch_port}", limits=limits, timeout=timeout
        ) as client:
            orch = _http_run(client, "auto" if args.routed else "smol", args.stream)
            for run in (bare, orch):  # warm both: first requests pay one-off costs
                await _round(run, args.concurrency, args.concurrency, 8)
            sides = [("bare", bare), ("orchestrator", orch)]
            for r in range(args.rounds):
                for name, run in sides if r % 2 == 0 else sides[::-1]:  # ABBA: cancels drift
                    tps = await _round(run, args.requests, args.concurrency, args.max_tokens)
                    results[name].append(tps)
                    print(f"round {r + 1}  {name:<12} {tps:7.1f} tok/s", flush=True)
    bare_tps = statistics.median(results["bare"])
    orch_tps = statistics.median(results["orchestrator"])
    # Each round's two runs are back to back: their ratio is the least disturbed by a machine
    # whose load drifts; its median over rounds is the headline number.
    ratios = [o / b for o, b in zip(results["orchestrator"], results["bare"], strict=True)]
    ratio = statistics.median(ratios)
    print(f"median bare vLLM:    {bare_tps:7.1f} tok/s")
    print(f"median orchestrator: {orch_tps:7.1f} tok/s")
    print(f"per-round ratios orchestrator/bare: {', '.join(f'{r:.3f}' for r in ratios)}")
    print(
        f"ratio orchestrator/bare (median of rounds): {ratio:.3f}  "
        f"overhead: {(1 - ratio) * 100:.1f} % (target ≤ 10 %: {'met' if ratio >= 0.9 else 'NOT met'})"
    )


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--baseline", choices=["inproc", "server"], default="inproc")
    p.add_argument("--stream", action="store_true", help="Stream both sides.")
    p.add_argument("--routed", action="store_true", help="model auto via the semantic strategy.")
    return p.parse_args()


if __name__ == "__main__":  # vLLM spawns processes: the guard is required
    asyncio.run(main(parse_args()))
