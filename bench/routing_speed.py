"""Routing speed: decision latency and throughput of trained strategies, against the MiniLM
embedding alone, measured in the same run on the same held-out prompts.

    python bench/routing_speed.py [--dataset routerbench] [--strategies coe,knn,threshold] [-n 200]

Trains each strategy on the train split (embeddings from the eval cache when present), then:

* single query — p50 / p90 latency of ``route([query])`` with a cold embedding cache, and of
  ``embedder.encode([text])`` alone, interleaved prompt by prompt; the ratio of the p50s
  (target ≤ 1.2×);
* batched, cold — decisions/s of ``route(batch)`` on unseen prompts vs. embeddings/s;
* batched, warm — decisions/s when the queries repeat (the embedder's cache answers; target
  ≥ 500/s).

Prints numbers; asserts nothing. The machine's load at the time is printed with them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--dataset", default="routerbench")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--strategies", default="coe,knn,threshold")
    parser.add_argument("-n", type=int, default=200, help="held-out prompts measured")
    parser.add_argument("--batch", type=int, default=200, help="batch size for throughput")
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache/embeddings"))
    args = parser.parse_args()

    from orchestrator.evaluation.datasets import load_dataset, sample, split
    from orchestrator.evaluation.harness import replay_experts, warm_embeddings
    from orchestrator.types import Message, Query
    from routers import get_strategy_class
    from routers.embeddings import get_embedder

    full = load_dataset(args.dataset, data_dir=args.data_dir)
    warm_embeddings(full, cache_dir=args.cache_dir)  # the cache file `orchestrator eval` wrote
    data, _ = full.complete()
    train, test = split(data, 0.3, seed=0)
    prompts = sample(test, args.n).prompts
    batch_prompts = prompts[: args.batch]
    experts = replay_experts(data)
    embedder = get_embedder()
    embedder.encode(["warm-up"])  # model loaded before timing

    print(
        f"routing speed on {args.dataset}: {len(prompts)} held-out prompts, "
        f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
    )
    print(
        f"embedding: MiniLM, last {embedder.max_chars} chars, ≤{embedder.max_seq_length} "
        "word pieces"
    )
    header = (
        f"{'strategy':10s} {'p50 route':>10s} {'p50 embed':>10s} {'ratio':>6s} "
        f"{'p90 route':>10s} {'cold dec/s':>11s} {'embed/s':>8s} {'ratio':>6s} "
        f"{'warm dec/s':>11s}"
    )
    print(header)
    for name in [s for s in args.strategies.split(",") if s]:
        cls = get_strategy_class(name)
        artifact = cls.train(train, {})  # type: ignore[attr-defined]
        strategy = cls(experts, {})
        strategy.use_artifact(artifact)  # type: ignore[attr-defined]
        route_ms, embed_ms = [], []
        for p in prompts:
            q = [Query(messages=(Message("user", p),))]
            embedder.clear_cache()
            t = time.perf_counter()
            embedder.encode([p])
            embed_ms.append((time.perf_counter() - t) * 1000)
            embedder.clear_cache()
            t = time.perf_counter()
            strategy.route(q)
            route_ms.append((time.perf_counter() - t) * 1000)
        queries = [Query(messages=(Message("user", p),)) for p in batch_prompts]
        embedder.clear_cache()
        t = time.perf_counter()
        embedder.encode(batch_prompts)
        embed_rate = len(batch_prompts) / (time.perf_counter() - t)
        embedder.clear_cache()
        t = time.perf_counter()
        strategy.route(queries)
        cold_rate = len(queries) / (time.perf_counter() - t)
        t = time.perf_counter()
        rounds = 5
        for _ in range(rounds):
            strategy.route(queries)
        warm_rate = rounds * len(queries) / (time.perf_counter() - t)
        p50_route, p50_embed = statistics.median(route_ms), statistics.median(embed_ms)
        p90_route = statistics.quantiles(route_ms, n=10)[-1]
        print(
            f"{name:10s} {p50_route:8.1f}ms {p50_embed:8.1f}ms {p50_route / p50_embed:5.2f}× "
            f"{p90_route:8.1f}ms {cold_rate:11.0f} {embed_rate:8.0f} "
            f"{embed_rate / cold_rate:5.2f}× {warm_rate:11.0f}"
        )


if __name__ == "__main__":
    main()
