"""Admin HTTP routes of the knowledge store: ``/admin/kb/documents``.

    POST   /admin/kb/documents        {documents: [{id?, text, metadata?}]} → the stored documents
    GET    /admin/kb/documents        ?offset&limit → documents in the order added (no text)
    GET    /admin/kb/documents/{id}   one document with its text
    DELETE /admin/kb/documents/{id}   remove it and its chunks (404 when there is none)

Every route needs a key with the ``admin`` scope (the dependency :func:`orchestrator.api.require`
builds). Handlers are thin: validate, call :class:`~orchestrator.kb.store.KnowledgeStore` in a
worker thread (embedding is CPU work, Redis calls block), serialize. Adding a document whose id
exists replaces it; without an id, the id is derived from the text, so posting the same text
twice stores it once. Redis down or not configured → 503 naming the knowledge store.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Query
from pydantic import BaseModel, ConfigDict, Field

from orchestrator.errors import InvalidRequestError
from orchestrator.pipeline import Orchestrator
from orchestrator.protocol import ErrorResponse

RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 413, 503)
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DocumentBody(_Strict):
    id: str | None = Field(
        None,
        description="Stable id (letters, digits, . _ : / @ -); an existing id is replaced. "
        "Default: derived from the text.",
    )
    text: str = Field(..., min_length=1, description="The document (plain text or markdown).")
    metadata: dict[str, Any] = Field(
        default_factory=dict,
        description="Kept with the document and its passages (a 'title' is embedded with them).",
    )


class AddDocuments(_Strict):
    documents: list[DocumentBody] = Field(..., min_length=1)


class KBDocument(BaseModel):
    id: str
    chunks: int
    chars: int
    title: str | None
    metadata: dict[str, Any]
    created_at: float
    replaced: bool = False
    text: str | None = None


class KBDocumentList(BaseModel):
    object: Literal["list"] = "list"
    data: list[KBDocument]
    total: int
    version: int = Field(description="The store's version after this request.")


class KBDeleted(BaseModel):
    id: str
    deleted: bool = True


def mount_knowledge(
    app: FastAPI, orchestrator: Orchestrator, dependency: Callable[..., Awaitable[Any]]
) -> None:
    """Add the ``/admin/kb`` routes to ``app``, each behind ``dependency`` (the admin scope)."""
    from orchestrator.kb.store import DocumentIn, KnowledgeStore

    config = orchestrator.config
    holder: dict[str, KnowledgeStore] = {}

    def knowledge() -> KnowledgeStore:
        if "store" not in holder:  # no I/O until the first request
            holder["store"] = KnowledgeStore(orchestrator.store, config.knowledge)
        return holder["store"]

    router = APIRouter(
        prefix="/admin/kb", tags=["admin", "knowledge"], dependencies=[Depends(dependency)]
    )

    @router.post(
        "/documents",
        response_model=KBDocumentList,
        responses=RESPONSES,
        summary="Add (or replace) documents: chunked, embedded and stored for retrieval",
    )
    async def add_documents(body: AddDocuments) -> KBDocumentList:
        limit = config.knowledge.max_documents_per_request
        if len(body.documents) > limit:
            raise InvalidRequestError(
                f"documents: {len(body.documents)} in one request; the limit is "
                f"knowledge.max_documents_per_request ({limit}): send several requests",
                param="documents",
            )
        docs = [DocumentIn(d.text, d.id, d.metadata) for d in body.documents]
        kb = knowledge()
        infos = await asyncio.to_thread(kb.add, docs)
        version = await asyncio.to_thread(kb.version)
        return KBDocumentList(
            data=[KBDocument(**i.as_dict()) for i in infos], total=len(infos), version=version
        )

    @router.get(
        "/documents",
        response_model=KBDocumentList,
        responses=RESPONSES,
        summary="List documents in the order they were added (without their text)",
    )
    async def list_documents(
        offset: int = Query(0, ge=0, le=10**9), limit: int = Query(100, ge=1, le=1000)
    ) -> KBDocumentList:
        kb = knowledge()
        infos, total = await asyncio.to_thread(kb.list_documents, offset, limit)
        version = await asyncio.to_thread(kb.version)
        return KBDocumentList(
            data=[KBDocument(**i.as_dict()) for i in infos], total=total, version=version
        )

    @router.get(
        "/documents/{doc_id:path}",
        response_model=KBDocument,
        responses=RESPONSES,
        summary="One document, with its text",
    )
    async def get_document(doc_id: str) -> KBDocument:
        info, text = await asyncio.to_thread(knowledge().get, doc_id)
        return KBDocument(**info.as_dict(), text=text)

    @router.delete(
        "/documents/{doc_id:path}",
        response_model=KBDeleted,
        responses=RESPONSES,
        summary="Delete a document and its passages",
    )
    async def delete_document(doc_id: str) -> KBDeleted:
        await asyncio.to_thread(knowledge().delete, doc_id)
        return KBDeleted(id=doc_id)

    app.include_router(router)
