"""The knowledge store: documents chunked, embedded (MiniLM) and kept in Redis, shared by
every replica, searched through an in-memory index (:mod:`orchestrator.kb.store`).

Used by the ``expertrag`` strategy (:mod:`routers.expertrag`) for retrieval, managed with
``orchestrator kb add|list|delete`` (:mod:`orchestrator.kb.commands`) and the
``/admin/kb/documents`` routes (:mod:`orchestrator.kb.api`). Importing this package is cheap:
the embedder and redis load on first use.
"""
