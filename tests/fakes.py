"""Fakes that isolate units: a strategy that ranks experts by config order (or by a keyword),
and a bag-of-words embedder for knowledge-store tests."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import numpy as np

from orchestrator.types import Decision, Query
from routers.base import Strategy, StrategyOptions


class KeywordOptions(StrategyOptions):
    k: int = 1
    aggregator: str | None = None


class KeywordStrategy(Strategy):
    """Picks the first expert whose name appears in the query, else config order."""

    name = "keyword"
    Options = KeywordOptions

    def route(self, queries: Sequence[Query]) -> list[Decision]:
        opts: KeywordOptions = self.options  # type: ignore[assignment]
        out = []
        for q in queries:
            scores = [
                2.0 if e.name in q.text else 1.0 / (i + 1) for i, e in enumerate(self.experts)
            ]
            candidates = self.ranked(scores)
            k = q.options.k or opts.k
            out.append(
                Decision(
                    strategy="keyword",
                    experts=tuple(c.expert for c in candidates[:k]),
                    candidates=candidates,
                    reason="keyword match" if scores[0] else "config order",
                    aggregator=opts.aggregator,
                )
            )
        return out


class WordEmbedder:
    """An embedder for knowledge-store tests: unit-norm bags of hashed words (longer than 3
    letters), so texts sharing words are similar. Deterministic and instant (no MiniLM)."""

    key = "fake-words"

    def __init__(self, dim: int = 1024) -> None:
        self.dim = dim

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, t in enumerate(texts):
            for w in re.findall(r"[a-z0-9-]+", t.lower()):
                if len(w) > 3:
                    out[i, int(hashlib.md5(w.encode()).hexdigest(), 16) % self.dim] += 1
            n = np.linalg.norm(out[i])
            out[i] = out[i] / n if n else out[i]
        return out
