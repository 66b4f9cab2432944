"""The knowledge store: documents chunked and embedded into Redis, searched in memory.

Every replica shares one Redis, so a document added through any replica (or ``orchestrator kb
add``) is searchable by all. Redis 7.0 has no vector index, so Redis holds the data and each
process keeps its own in-memory index (a numpy matrix of unit-norm chunk embeddings):

Keys (namespace ``eo``, :class:`~orchestrator.store.RedisStore`)::

    eo:kb:version          string  INCRed by every change, in the same transaction as the change
    eo:kb:meta             hash    embedder (the embedding function's key), dim
    eo:kb:docs             zset    document id → time added (listing order)
    eo:kb:doc:<id>         hash    text, metadata (JSON), title, chunks (count), chars, created_at
    eo:kb:chunks           set     every chunk id ``<doc id>#<n>``
    eo:kb:chunk:<id>#<n>   hash    doc_id, n, text, title, metadata (JSON), chars,
                                   embedding (float32 bytes, little-endian)

**Keeping replicas in sync:** before each search a process reads ``eo:kb:version`` (one GET);
when it moved, it reloads the index (every chunk's id and embedding; O(chunks), one pipelined
round trip per 500 chunks), re-reading the version until it is stable. A search therefore
never misses a change committed before it started. Passage texts are fetched from Redis only
for the hits that go into a prompt, so a deleted document is never quoted.

**Writes** are one transaction per request (``WATCH`` the documents' hashes, read their old
chunk counts, ``MULTI`` the new hashes, drop the old chunks, ``INCR`` the version, ``EXEC``;
retried when a concurrent write to the same documents wins), so readers never see half a
document, and adding a document whose id exists replaces it whole. Embedding happens before
the transaction, outside Redis.

**When Redis is down** every operation raises
:class:`~orchestrator.errors.ServiceUnavailableError` naming the knowledge store, and marks the
shared :class:`RedisStore` down (so ``/ready`` lists the degradation); serving without
retrieval is unaffected.

The client is redis-py's *synchronous* one with its own pool of binary connections: searches
run in the routing worker threads (strategies are synchronous) and embeddings are bytes, while
:attr:`RedisStore.client` is an async client that decodes every reply to ``str``.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from hashlib import sha256
from typing import Any, TypeVar

import numpy as np

from orchestrator.config import KnowledgeConfig
from orchestrator.errors import InvalidRequestError, NotFoundError, ServiceUnavailableError
from orchestrator.kb.chunking import chunk_text, embedded_text, title_of
from orchestrator.store import RedisStore
from routers.embeddings import Embedder, get_embedder

log = logging.getLogger(__name__)

T = TypeVar("T")
DOC_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,199}$")
"""Document ids: no '#' (it separates a chunk's number) and no whitespace."""
FEATURE = "the knowledge store (retrieval for router/expertrag, /admin/kb, orchestrator kb)"
_RELOAD_BATCH = 500


@dataclass(frozen=True, slots=True)
class DocumentIn:
    """A document to add: ``id`` None gets one derived from the text (so re-adding the same
    text replaces, never duplicates)."""

    text: str
    id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DocumentInfo:
    id: str
    chunks: int
    chars: int
    title: str | None
    metadata: dict[str, Any]
    created_at: float
    replaced: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "chunks": self.chunks,
            "chars": self.chars,
            "title": self.title,
            "metadata": self.metadata,
            "created_at": self.created_at,
            "replaced": self.replaced,
        }


@dataclass(frozen=True, slots=True)
class Hit:
    """One search result: a chunk of the index and its cosine similarity to the query."""

    chunk_id: str
    doc_id: str
    score: float
    chars: int


@dataclass(frozen=True, slots=True)
class Passage:
    """A hit with its text, as it goes into a prompt."""

    chunk_id: str
    doc_id: str
    title: str | None
    text: str
    metadata: dict[str, Any]
    score: float


@dataclass(frozen=True)
class IndexSnapshot:
    """An immutable view of the index at one version (safe to search from any thread)."""

    version: int
    chunk_ids: tuple[str, ...]
    doc_ids: tuple[str, ...]
    chars: np.ndarray
    matrix: np.ndarray
    """(chunks, dim) float32, unit-norm rows."""

    def __len__(self) -> int:
        return len(self.chunk_ids)

    def search(self, vectors: np.ndarray, k: int) -> list[list[Hit]]:
        """The ``k`` nearest chunks of each query vector (cosine, best first)."""
        if len(self) == 0 or k <= 0:
            return [[] for _ in range(len(vectors))]
        sims = np.asarray(vectors, dtype=np.float32) @ self.matrix.T
        k = min(k, len(self))
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        out = []
        for row, idx in zip(sims, top, strict=True):
            order = idx[np.argsort(-row[idx], kind="stable")]
            out.append(
                [
                    Hit(self.chunk_ids[j], self.doc_ids[j], float(row[j]), int(self.chars[j]))
                    for j in order.tolist()
                ]
            )
        return out


class KnowledgeStore:
    """Documents in Redis and this process's index of them. Thread-safe; every method blocks
    (call it from a worker thread on an event loop)."""

    def __init__(
        self,
        redis: RedisStore,
        config: KnowledgeConfig | None = None,
        embedder: Embedder | None = None,
    ) -> None:
        self.redis = redis
        self.config = config or KnowledgeConfig()
        self._embedder = embedder
        self._client: Any = None
        self._client_lock = threading.Lock()
        self._index_lock = threading.Lock()
        self._snapshot: IndexSnapshot | None = None

    # -- plumbing --------------------------------------------------------------------------------

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = get_embedder(self.config.embedding_model)
        return self._embedder

    def key(self, *parts: str) -> str:
        return self.redis.key("kb", *parts)

    def _redis(self) -> Any:
        with self._client_lock:
            if self._client is None:
                if self.redis.url is None:
                    raise ServiceUnavailableError(
                        f"{FEATURE} is unavailable: no redis_url is configured; set redis_url "
                        "(or ORCHESTRATOR_REDIS_URL)"
                    )
                import redis

                self._client = redis.Redis.from_url(
                    self.redis.url,
                    socket_timeout=2.0,
                    socket_connect_timeout=0.5,
                    decode_responses=False,
                )
            return self._client

    def _call(self, op: Callable[[Any], T]) -> T:
        """Run ``op(client)``; a Redis failure becomes a 503 naming the knowledge store."""
        import redis

        if self.redis.configured and not self.redis.available:
            raise ServiceUnavailableError(
                f"{FEATURE} is unavailable: Redis is down ({self.redis.last_error})"
            )
        try:
            result = op(self._redis())
        except (redis.RedisError, OSError) as e:
            self.redis.mark_down(e)
            raise ServiceUnavailableError(
                f"{FEATURE} is unavailable: Redis failed ({type(e).__name__}: {e})"
            ) from e
        self.redis.mark_up()
        return result

    def close(self) -> None:
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    # -- documents -------------------------------------------------------------------------------

    def add(self, documents: Sequence[DocumentIn]) -> list[DocumentInfo]:
        """Chunk, embed and store ``documents`` (one transaction); an existing id is replaced.

        Raises :class:`InvalidRequestError` for an empty text, a bad id, an id given twice or
        a text over ``knowledge.max_document_chars``."""
        if not documents:
            raise InvalidRequestError("no documents given", param="documents")
        prepared = [self._prepare(i, d) for i, d in enumerate(documents)]
        ids = [p.id for p in prepared]
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        if repeated:
            raise InvalidRequestError(
                f"document ids given more than once: {', '.join(repeated)}", param="documents"
            )
        texts = [embedded_text(p.title, c) for p in prepared for c in p.chunks]
        vectors = self.embedder.encode(texts) if texts else np.zeros((0, 0), np.float32)
        embedder_key = self.embedder.key
        now = time.time()

        def write(client: Any) -> list[DocumentInfo]:
            from redis.exceptions import WatchError

            doc_keys = [self.key("doc", p.id) for p in prepared]
            for _ in range(20):
                with client.pipeline(transaction=True) as pipe:
                    try:
                        pipe.watch(self.key("meta"), *doc_keys)
                        stored = pipe.hget(self.key("meta"), "embedder")
                        if stored is not None and stored.decode() != embedder_key:
                            raise InvalidRequestError(
                                f"the knowledge store was embedded with '{stored.decode()}', "
                                f"not '{embedder_key}': set knowledge.embedding_model to match, "
                                "or delete every document first"
                            )
                        old = [pipe.hget(k, "chunks") for k in doc_keys]
                        pipe.multi()
                        pipe.hset(
                            self.key("meta"),
                            mapping={"embedder": embedder_key, "dim": str(vectors.shape[1])},
                        )
                        infos = []
                        row = 0
                        for i, (p, key, before) in enumerate(
                            zip(prepared, doc_keys, old, strict=True)
                        ):
                            n_old = int(before) if before is not None else 0
                            self._drop_chunks(pipe, p.id, range(len(p.chunks), n_old))
                            meta = json.dumps(p.metadata, separators=(",", ":"))
                            pipe.hset(
                                key,
                                mapping={
                                    "text": p.text,
                                    "metadata": meta,
                                    "title": p.title or "",
                                    "chunks": str(len(p.chunks)),
                                    "chars": str(len(p.text)),
                                    "created_at": repr(now),
                                },
                            )
                            for n, chunk in enumerate(p.chunks):
                                cid = f"{p.id}#{n}"
                                pipe.hset(
                                    self.key("chunk", cid),
                                    mapping={
                                        "doc_id": p.id,
                                        "n": str(n),
                                        "text": chunk,
                                        "title": p.title or "",
                                        "metadata": meta,
                                        "chars": str(len(chunk)),
                                        "embedding": np.asarray(vectors[row], "<f4").tobytes(),
                                    },
                                )
                                pipe.sadd(self.key("chunks"), cid)
                                row += 1
                            # listing order = request order (ties in a zset sort by id)
                            pipe.zadd(self.key("docs"), {p.id: now + i * 1e-6})
                            infos.append(
                                DocumentInfo(
                                    p.id,
                                    len(p.chunks),
                                    len(p.text),
                                    p.title,
                                    p.metadata,
                                    now,
                                    replaced=before is not None,
                                )
                            )
                        pipe.incr(self.key("version"))
                        pipe.execute()
                        return infos
                    except WatchError:
                        continue
            raise ServiceUnavailableError(
                "the knowledge store is busy: concurrent writes to the same documents kept "
                "conflicting; retry"
            )

        return self._call(write)

    def delete(self, doc_id: str) -> None:
        """Remove a document and its chunks; :class:`NotFoundError` when there is none."""

        def remove(client: Any) -> None:
            from redis.exceptions import WatchError

            key = self.key("doc", doc_id)
            for _ in range(20):
                with client.pipeline(transaction=True) as pipe:
                    try:
                        pipe.watch(key)
                        chunks = pipe.hget(key, "chunks")
                        if chunks is None:
                            raise NotFoundError(f"no document '{doc_id}' in the knowledge store")
                        pipe.multi()
                        self._drop_chunks(pipe, doc_id, range(int(chunks)))
                        pipe.delete(key)
                        pipe.zrem(self.key("docs"), doc_id)
                        pipe.incr(self.key("version"))
                        pipe.execute()
                        return
                    except WatchError:
                        continue
            raise ServiceUnavailableError("the knowledge store is busy; retry the delete")

        self._call(remove)

    def list_documents(self, offset: int = 0, limit: int = 100) -> tuple[list[DocumentInfo], int]:
        """Documents in the order they were added (without their text), and the total."""

        def read(client: Any) -> tuple[list[DocumentInfo], int]:
            total = int(client.zcard(self.key("docs")))
            ids = [i.decode() for i in client.zrange(self.key("docs"), offset, offset + limit - 1)]
            pipe = client.pipeline(transaction=False)
            for i in ids:
                pipe.hmget(self.key("doc", i), "chunks", "chars", "title", "metadata", "created_at")
            infos = []
            for i, row in zip(ids, pipe.execute(), strict=True):
                if row[0] is None:  # deleted between the two reads
                    continue
                infos.append(
                    DocumentInfo(
                        i,
                        int(row[0]),
                        int(row[1]),
                        row[2].decode() or None,
                        json.loads(row[3]),
                        float(row[4]),
                    )
                )
            return infos, total

        return self._call(read)

    def get(self, doc_id: str) -> tuple[DocumentInfo, str]:
        """One document and its full text; :class:`NotFoundError` when there is none."""

        def read(client: Any) -> tuple[DocumentInfo, str]:
            row = client.hmget(
                self.key("doc", doc_id),
                "chunks",
                "chars",
                "title",
                "metadata",
                "created_at",
                "text",
            )
            if row[0] is None:
                raise NotFoundError(f"no document '{doc_id}' in the knowledge store")
            info = DocumentInfo(
                doc_id,
                int(row[0]),
                int(row[1]),
                row[2].decode() or None,
                json.loads(row[3]),
                float(row[4]),
            )
            return info, row[5].decode()

        return self._call(read)

    def version(self) -> int:
        return self._call(lambda c: int(c.get(self.key("version")) or 0))

    def _drop_chunks(self, pipe: Any, doc_id: str, numbers: range) -> None:
        for n in numbers:
            pipe.delete(self.key("chunk", f"{doc_id}#{n}"))
            pipe.srem(self.key("chunks"), f"{doc_id}#{n}")

    def _prepare(self, i: int, doc: DocumentIn) -> _Prepared:
        cfg = self.config
        text = doc.text.strip()
        if not text:
            raise InvalidRequestError(
                f"documents.{i}.text: empty; a document needs text", param=f"documents.{i}.text"
            )
        if len(text) > cfg.max_document_chars:
            raise InvalidRequestError(
                f"documents.{i}.text: {len(text)} characters; the limit is "
                f"knowledge.max_document_chars ({cfg.max_document_chars}): split the document",
                param=f"documents.{i}.text",
            )
        doc_id = doc.id or "doc-" + sha256(text.encode()).hexdigest()[:16]
        if not DOC_ID.match(doc_id):
            raise InvalidRequestError(
                f"documents.{i}.id: '{doc_id}' is not a valid id (letters, digits and . _ : / @ -, "
                "starting with a letter or digit, at most 200 characters; no '#' or spaces)",
                param=f"documents.{i}.id",
            )
        title = doc.metadata.get("title") if isinstance(doc.metadata.get("title"), str) else None
        title = (title or title_of(text) or "")[:200] or None
        # the title is embedded with every chunk, so it comes off the chunk's budget
        budget = max(cfg.chunk_chars - (len(title) + 1 if title else 0), 100)
        chunks = [c.text for c in chunk_text(text, budget, cfg.chunk_overlap_chars)]
        return _Prepared(doc_id, text, title, dict(doc.metadata), chunks)

    # -- search ----------------------------------------------------------------------------------

    def snapshot(self) -> IndexSnapshot:
        """The index at the current version: one GET when nothing changed, a reload when the
        version moved (another replica, the CLI or this process wrote)."""
        current = self.version()
        snap = self._snapshot
        if snap is not None and snap.version == current:
            return snap
        with self._index_lock:
            snap = self._snapshot
            if snap is not None and snap.version == current:
                return snap
            snap = self._call(lambda c: self._reload(c, current))
            self._snapshot = snap
            return snap

    def _reload(self, client: Any, version: int) -> IndexSnapshot:
        start = time.perf_counter()
        for _ in range(5):
            ids = sorted(i.decode() for i in client.smembers(self.key("chunks")))
            rows: list[tuple[str, str, int, bytes]] = []
            for batch in _batches(ids, _RELOAD_BATCH):
                pipe = client.pipeline(transaction=False)
                for cid in batch:
                    pipe.hmget(self.key("chunk", cid), "doc_id", "chars", "embedding")
                for cid, (doc, chars, emb) in zip(batch, pipe.execute(), strict=True):
                    if emb is not None:  # deleted since SMEMBERS
                        rows.append((cid, doc.decode(), int(chars), emb))
            after = int(client.get(self.key("version")) or 0)
            if after == version:
                break
            version = after  # written meanwhile: read again so the snapshot matches a version
        dim = len(rows[0][3]) // 4 if rows else 0
        matrix = (
            np.stack([np.frombuffer(r[3], dtype="<f4") for r in rows]).astype(np.float32)
            if rows
            else np.zeros((0, dim), np.float32)
        )
        log.info(
            "knowledge index v%d: %d chunks loaded in %.1f ms",
            version,
            len(rows),
            (time.perf_counter() - start) * 1000,
        )
        return IndexSnapshot(
            version,
            tuple(r[0] for r in rows),
            tuple(r[1] for r in rows),
            np.asarray([r[2] for r in rows], dtype=np.int64),
            matrix,
        )

    def search(self, texts: Sequence[str], k: int) -> list[list[Hit]]:
        """The ``k`` best chunks for each text (embedding them with the store's embedder)."""
        snap = self.snapshot()
        return snap.search(self.embedder.encode(list(texts)), k)

    def passages(self, hits: Sequence[Hit]) -> list[Passage]:
        """Texts of ``hits`` (in order); a chunk deleted since the search is left out."""
        if not hits:
            return []

        def read(client: Any) -> list[Passage]:
            pipe = client.pipeline(transaction=False)
            for h in hits:
                pipe.hmget(self.key("chunk", h.chunk_id), "text", "title", "metadata")
            out = []
            for h, (text, title, meta) in zip(hits, pipe.execute(), strict=True):
                if text is not None:
                    out.append(
                        Passage(
                            h.chunk_id,
                            h.doc_id,
                            title.decode() or None,
                            text.decode(),
                            json.loads(meta),
                            h.score,
                        )
                    )
            return out

        return self._call(read)


@dataclass(frozen=True, slots=True)
class _Prepared:
    id: str
    text: str
    title: str | None
    metadata: dict[str, Any]
    chunks: list[str]


def _batches(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
