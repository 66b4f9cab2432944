"""ExpertRAG's overhead: what a query pays for the knowledge store when the gate stays closed,
and what an index reload costs, against the size of the store.

    python -m bench.expertrag [--redis-url redis://127.0.0.1:6379/13] [--sizes 1000,10000]

For each size N, N chunks with 384-dimensional unit vectors (random: this measures Redis and
the index, not MiniLM) are written to a scratch namespace through ``KnowledgeStore.add``, then:

* reload — a replica's first ``snapshot()`` after a change (reads every chunk's embedding);
* probe — per query with the version unchanged: the version GET plus the top-k search of one
  query vector (what every expertrag query pays, gate open or closed);
* gate — the trained classifier's P(retrieve) for one query (logistic regression on 389
  features);
* fetch — reading k passages' text (only when the gate opens).

The query's MiniLM embedding is not counted: the inner strategy (semantic, coe) computes it
anyway and the embedder's cache hands it over. Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from orchestrator.config import KnowledgeConfig
from orchestrator.kb.store import DocumentIn, KnowledgeStore
from orchestrator.store import RedisStore

DIM = 384


class RandomEmbedder:
    key = "bench-random"

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        rng = np.random.default_rng(abs(hash(tuple(texts))) % 2**32)
        v = rng.standard_normal((len(texts), DIM)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def timed(fn: Callable[[], object], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/13")
    )
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, DIM + 5))
    gate = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(
        x, (x[:, 0] > 0).astype(int)
    )
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'chunks':>8} {'reload ms':>10} {'probe p50 ms':>13} {'probe p90':>10} "
          f"{'gate p50 ms':>12} {'fetch p50 ms':>13}")  # fmt: skip
    for n in [int(s) for s in args.sizes.split(",")]:
        measure(n, args.redis_url, args.k, args.repeat, gate)


def measure(n: int, url: str, k: int, repeat: int, gate: Any) -> None:
    namespace = f"bench-kb-{uuid.uuid4().hex[:8]}"

    def store() -> KnowledgeStore:
        return KnowledgeStore(
            RedisStore(url, namespace),
            KnowledgeConfig(),
            embedder=RandomEmbedder(),  # type: ignore[arg-type]
        )

    writer = store()
    try:
        docs = [DocumentIn(f"Chunk {i} of the benchmark corpus.", f"d{i}") for i in range(n)]
        for start in range(0, n, 500):
            writer.add(docs[start : start + 500])
        reader = store()
        reload_ms = timed(reader.snapshot, 1)[0]
        query = RandomEmbedder().encode(["a query"])
        probe_ms = timed(lambda: reader.snapshot().search(query, k), repeat)
        features = np.hstack([query.astype(np.float64), np.zeros((1, 5))])
        gate_ms = timed(lambda: gate.predict_proba(features), repeat)
        hits = reader.snapshot().search(query, k)[0]
        fetch_ms = timed(lambda: reader.passages(hits), max(repeat // 4, 2))
        print(
            f"{n:>8} {reload_ms:>10.1f} {statistics.median(probe_ms):>13.3f} "
            f"{statistics.quantiles(probe_ms, n=10)[-1]:>10.3f} "
            f"{statistics.median(gate_ms):>12.3f} {statistics.median(fetch_ms):>13.3f}"
        )
    finally:
        client = writer._redis()
        keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
        writer.close()


if __name__ == "__main__":
    main()
