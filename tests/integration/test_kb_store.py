"""The knowledge store in a real Redis: documents, replacement, two replicas kept in sync by
the version key, concurrent writers, bad input, and Redis down.

A bag-of-words embedder (tests/fakes.py) stands in for MiniLM here, so these tests exercise
Redis and the index, not the model; test_kb_api.py runs MiniLM.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import redis

from orchestrator.config import KnowledgeConfig
from orchestrator.errors import InvalidRequestError, NotFoundError, ServiceUnavailableError
from orchestrator.kb.store import DocumentIn, KnowledgeStore
from orchestrator.store import RedisStore
from tests.conftest import ROOT, free_port
from tests.fakes import WordEmbedder

KB = ROOT / "docs" / "examples" / "kb"


@pytest.fixture
def kb_url(redis_url: str) -> Iterator[str]:
    """A Redis database of its own, emptied before and after."""
    url = redis_url.rsplit("/", 1)[0] + "/11"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


def replica(url: str, **config: int) -> KnowledgeStore:
    return KnowledgeStore(RedisStore(url), KnowledgeConfig(**config), embedder=WordEmbedder())  # type: ignore[arg-type]


def spec(name: str) -> DocumentIn:
    path = KB / f"brindlewave-{name}.md"
    return DocumentIn(path.read_text(), path.stem, {"source": path.name})


def test_add_search_list_get_delete(kb_url: str) -> None:
    kb = replica(kb_url)
    infos = kb.add([spec("tarn-40"), spec("quenby-h2"), DocumentIn("Loose note about Lund.")])
    assert [i.id for i in infos][:2] == ["brindlewave-tarn-40", "brindlewave-quenby-h2"]
    assert infos[2].id.startswith("doc-") and not any(i.replaced for i in infos)
    assert infos[0].title == "Brindlewave Tarn-40 field weather station"
    assert all(i.chunks >= 1 for i in infos)
    assert kb.version() == 1
    (hits,) = kb.search(["Tarn-40 battery capacity"], 3)
    assert hits[0].doc_id == "brindlewave-tarn-40"
    assert hits == sorted(hits, key=lambda h: -h.score)
    passages = kb.passages(hits[:1])
    assert "5200 mAh" in passages[0].text or "battery" in passages[0].text
    assert passages[0].metadata == {"source": "brindlewave-tarn-40.md"}
    docs, total = kb.list_documents()
    assert total == 3 and [d.id for d in docs][:2] == [i.id for i in infos][:2]
    info, text = kb.get("brindlewave-quenby-h2")
    assert "Tampere" in text and info.chunks == infos[1].chunks
    kb.delete("brindlewave-tarn-40")
    assert kb.version() == 2
    (hits,) = kb.search(["Tarn-40 battery capacity"], 3)
    assert all(h.doc_id != "brindlewave-tarn-40" for h in hits)
    with pytest.raises(NotFoundError):
        kb.delete("brindlewave-tarn-40")
    with pytest.raises(NotFoundError):
        kb.get("brindlewave-tarn-40")
    # nothing of the deleted document is left in Redis
    client = redis.Redis.from_url(kb_url)
    assert not [k for k in client.scan_iter("eo:kb:chunk:brindlewave-tarn-40#*")]


def test_re_adding_replaces_whole_and_same_text_is_stored_once(kb_url: str) -> None:
    kb = replica(kb_url, chunk_chars=200, chunk_overlap_chars=0)
    long = DocumentIn(" ".join(f"Fact {i} about the Vesper unit." for i in range(40)), "v")
    first = kb.add([long])[0]
    assert first.chunks > 3
    short = kb.add([DocumentIn("The Vesper unit was retired.", "v")])[0]
    assert short.replaced and short.chunks == 1
    snap = kb.snapshot()
    assert snap.chunk_ids == ("v#0",)  # the old chunks are gone, not orphaned
    a = kb.add([DocumentIn("Same words twice.")])[0]
    b = kb.add([DocumentIn("Same words twice.")])[0]
    assert a.id == b.id and b.replaced
    assert kb.list_documents()[1] == 2


def test_two_replicas_stay_in_sync(kb_url: str) -> None:
    a, b = replica(kb_url), replica(kb_url)
    assert len(b.snapshot()) == 0
    a.add([spec("ostrava-s9")])
    (hits,) = b.search(["Ostrava seismograph sample rate"], 2)  # b reloads: the version moved
    assert hits and hits[0].doc_id == "brindlewave-ostrava-s9"
    snap = b.snapshot()
    assert b.snapshot() is snap  # unchanged version: the same index, no reload
    a.delete("brindlewave-ostrava-s9")
    assert b.search(["Ostrava seismograph sample rate"], 2) == [[]]
    assert b.snapshot().version == a.version()


def test_concurrent_writers_lose_nothing(kb_url: str) -> None:
    stores = [replica(kb_url) for _ in range(4)]
    errors: list[BaseException] = []

    def write(k: int) -> None:
        try:
            for i in range(5):
                stores[k].add([DocumentIn(f"Note {k}-{i} on the Halden buoy.", f"n{k}-{i}")])
                # everyone also rewrites one shared document with a different length
                stores[k].add([DocumentIn("Shared. " * (5 + 40 * k), "shared")])
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=write, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    kb = stores[0]
    _docs, total = kb.list_documents(limit=100)
    assert total == 21
    shared = kb.get("shared")[0]
    snap = kb.snapshot()
    assert sorted(c for c in snap.chunk_ids if c.startswith("shared#")) == sorted(
        f"shared#{n}" for n in range(shared.chunks)
    )
    assert len(snap) == 20 + shared.chunks


def test_bad_input_is_a_400(kb_url: str) -> None:
    kb = replica(kb_url, max_document_chars=50)
    for docs, needle in [
        ([], "no documents"),
        ([DocumentIn("   ")], "empty"),
        ([DocumentIn("x" * 51)], "max_document_chars"),
        ([DocumentIn("text", "has space")], "not a valid id"),
        ([DocumentIn("text", "a#1")], "not a valid id"),
        ([DocumentIn("one", "same"), DocumentIn("two", "same")], "more than once"),
    ]:
        with pytest.raises(InvalidRequestError, match=needle):
            kb.add(docs)
    assert kb.version() == 0  # nothing was written


def test_another_embedder_is_refused(kb_url: str) -> None:
    replica(kb_url).add([DocumentIn("A note.", "n")])

    class Other(WordEmbedder):
        key = "other-model"

    kb = KnowledgeStore(RedisStore(kb_url), embedder=Other())  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError, match="embedded with 'fake-words'"):
        kb.add([DocumentIn("Another note.", "m")])


def test_redis_down_is_a_503_naming_the_store() -> None:
    down = RedisStore(f"redis://127.0.0.1:{free_port()}/0")
    kb = KnowledgeStore(down, embedder=WordEmbedder())  # type: ignore[arg-type]
    for action in (kb.snapshot, kb.list_documents, lambda: kb.add([DocumentIn("x", "x")])):
        with pytest.raises(ServiceUnavailableError, match="knowledge store"):
            action()
    assert not down.available and "unavailable" in down.status()
    none = KnowledgeStore(RedisStore(None), embedder=WordEmbedder())  # type: ignore[arg-type]
    with pytest.raises(ServiceUnavailableError, match="no redis_url"):
        none.version()
