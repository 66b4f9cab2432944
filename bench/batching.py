"""Expert-grouped batching vs FIFO under a memory budget: model loads and makespan.

64 queries (8 per expert, in a seeded random arrival order) over 8 experts whose weights really
load from disk: 8 copies of the SmolLM2-135M-Instruct folder (``workers.models.materialize``,
fp32, 0.5 GB each), each under its own path, so each expert is its own entry in the transformers
backend's shared-weights cache and every load reads and deserializes its own safetensors file.
With ``--cold`` the expert's files are also dropped from the page cache before each load
(``posix_fadvise(DONTNEED)`` on those files only), so every load is a read from the disk itself.

For each budget (1 and 2 resident experts: ``memory_budget_bytes`` = k experts' size, +10 %):

- ``grouped``: :meth:`ExpertScheduler.run` on all 64 — one window, grouped by expert, each group
  one ``generate`` batch, resident experts first.
- ``fifo``: the same backends and :class:`Residency` (same budget, LRU eviction), serving one
  query at a time in arrival order, loading and unloading as needed.

Both start with nothing loaded and run greedy decoding with the same ``max_tokens``. Makespan is
wall time from the first query to the last answer, loads included; ``cpu_s`` is this process's
CPU time over the same span (on a machine shared with other jobs the wall clock swings with
their load, the CPU time much less; the load average is printed). Targets (issue 3, part 5):
grouped loads = distinct experts; FIFO makespan / grouped makespan ≥ 4.

Run: python -m bench.batching [--queries 64] [--experts 8] [--budgets 1,2] [--max-tokens 16]
[--cold]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from orchestrator.config import ExpertConfig
from orchestrator.schedule import ExpertScheduler, Residency
from orchestrator.types import Generation, GenerationRequest, Message, SamplingParams
from workers.base import Backend
from workers.models import cache_dir, materialize
from workers.transformers_backend import TransformersBackend

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


def expert_folders(n: int) -> list[Path]:
    """``n`` distinct copies of the SmolLM2 folder (made once, reused; ≈0.5 GB each)."""
    source = materialize("smollm2")
    root = cache_dir() / "bench-batching"
    folders = []
    for i in range(n):
        target = root / f"expert-{i}"
        if not (target / "config.json").is_file():
            tmp = target.with_name(target.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(source, tmp)  # real copies: distinct files, distinct cache keys
            tmp.rename(target)
        folders.append(target)
    return folders


def drop_from_page_cache(folder: Path) -> None:
    for path in folder.iterdir():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


class ColdLoadBackend(TransformersBackend):
    """The transformers backend, reading its weights from the disk on every load."""

    async def load(self) -> None:
        if self._loaded is None:
            await asyncio.to_thread(drop_from_page_cache, Path(self.expert.model))
        await super().load()


def make_backends(folders: Sequence[Path], cold: bool) -> dict[str, Backend]:
    size_gb = sum(f.stat().st_size for f in folders[0].iterdir()) / 2**30
    cls = ColdLoadBackend if cold else TransformersBackend
    return {
        f"expert-{i}": cls(
            ExpertConfig(
                name=f"expert-{i}",
                model=str(folder),
                memory_gb=size_gb,
                timeout_s=3600,
                engine={"max_batch_size": 64},
            )
        )
        for i, folder in enumerate(folders)
    }


@dataclass
class Run:
    policy: str
    budget: int
    loads: int
    load_s: float
    makespan_s: float
    cpu_s: float
    peak_resident: int
    answers: list[str]


async def grouped(
    backends: dict[str, Backend], jobs: list[tuple[str, GenerationRequest]], budget_bytes: int
) -> tuple[list[str], int, float, int, float, float]:
    scheduler = ExpertScheduler(backends, memory_budget_bytes=budget_bytes, max_batch_size=64)
    start, cpu = time.perf_counter(), time.process_time()
    results = await scheduler.run(jobs)
    makespan, cpu = time.perf_counter() - start, time.process_time() - cpu
    stats = scheduler.residency.stats
    await scheduler.stop()
    texts = [r.text if isinstance(r, Generation) else f"<{r!r}>" for r in results]
    return texts, stats.loads, stats.load_s, stats.max_resident_experts, makespan, cpu


async def fifo(
    backends: dict[str, Backend], jobs: list[tuple[str, GenerationRequest]], budget_bytes: int
) -> tuple[list[str], int, float, int, float, float]:
    residency = Residency(backends, memory_budget_bytes=budget_bytes)
    texts = []
    start, cpu = time.perf_counter(), time.process_time()
    for expert, request in jobs:
        await residency.acquire(expert)
        (generation,) = await backends[expert].generate([request])
        texts.append(generation.text)
    makespan, cpu = time.perf_counter() - start, time.process_time() - cpu
    stats = residency.stats
    await residency.release_all()
    return texts, stats.loads, stats.load_s, stats.max_resident_experts, makespan, cpu


async def main_async(args: argparse.Namespace) -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # one bar per load
    folders = expert_folders(args.experts)
    backends = make_backends(folders, args.cold)
    size_bytes = next(iter(backends.values())).memory_bytes()
    names = list(backends)
    per_expert = args.queries // len(names)
    jobs = [
        (
            name,
            GenerationRequest(
                (Message("user", QUESTIONS[q % len(QUESTIONS)]),),
                SamplingParams(max_tokens=args.max_tokens),
            ),
        )
        for name in names
        for q in range(per_expert)
    ]
    random.Random(args.seed).shuffle(jobs)

    # Warm-up outside the clock: torch/transformers imports and the first forward pass.
    warm = backends[names[0]]
    await warm.load()
    await warm.generate([jobs[0][1]])
    await warm.unload()

    print(
        f"{len(jobs)} queries over {len(names)} experts ({per_expert} each, shuffled), "
        f"SmolLM2-135M copies of {size_bytes / 2**30:.2f} GB, max_tokens {args.max_tokens}, "
        f"greedy, page cache {'dropped before each load' if args.cold else 'warm'}; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}"
    )
    print(
        f"{'budget':>6}  {'policy':<8} {'loads':>5} {'load_s':>7} {'makespan_s':>10} "
        f"{'cpu_s':>7} {'peak':>4}"
    )
    for k in args.budgets:
        budget_bytes = int(k * size_bytes * 1.1)
        runs = {}
        for policy, fn in (("grouped", grouped), ("fifo", fifo)):
            texts, loads, load_s, peak, makespan, cpu = await fn(backends, jobs, budget_bytes)
            runs[policy] = Run(policy, k, loads, load_s, makespan, cpu, peak, texts)
            print(
                f"{k:>6}  {policy:<8} {loads:>5} {load_s:>7.1f} {makespan:>10.1f} "
                f"{cpu:>7.1f} {peak:>4}"
            )
        g, f = runs["grouped"], runs["fifo"]
        same = sum(a == b for a, b in zip(g.answers, f.answers, strict=True))
        print(
            f"{'':>6}  fifo/grouped: loads {f.loads / g.loads:.1f}x, makespan "
            f"{f.makespan_s / g.makespan_s:.1f}x, cpu {f.cpu_s / g.cpu_s:.1f}x | grouped loads = distinct experts: "
            f"{g.loads == len(names)} | makespan >= 4x: {f.makespan_s >= 4 * g.makespan_s} | "
            f"same answer batched vs one by one: {same}/{len(jobs)}"
        )
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--queries", type=int, default=64)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--budgets", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2])
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cold", action="store_true", help="drop weights from the page cache")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # Before torch loads: spinning OpenMP threads collapse when the machine is oversubscribed
    # (measured here at load 20 on 2 cores: 8 tokens took 21 s instead of 3 s).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    main()
