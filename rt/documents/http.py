"""`GET` / `DELETE /api/v1/documents/{document_id}` (protocol §5.3), API key required.

GET answers `{document_id, state_b64, content, updated_at}`: the merged Yjs state (what a
joiner receives), the latest rendered content the editor sent (`null` when none), and the
time of the last stored change. DELETE removes the document (log, snapshot, content) and
its in-memory copy; its editors have to join again.
"""
from __future__ import annotations

from .. import payloads as p
from ..api import SEG, ApiContext, ApiHandler
from .service import CollabService


class DocumentHandler(ApiHandler):
    def initialize(self, ctx: ApiContext, collab: CollabService | None = None) -> None:
        # optional only to keep ContextHandler.initialize(ctx)'s signature; routes() gives it
        if collab is None:
            raise TypeError("DocumentHandler needs the documents service (collab=)")
        super().initialize(ctx)
        self.collab = collab

    async def get(self, document_id: str) -> None:
        p.ident({"document_id": document_id}, "document_id")
        body = await self.collab.get_document(document_id)
        if body is None:
            raise p.NotFound(f"document {document_id!r} does not exist")
        self.reply(body)

    async def delete(self, document_id: str) -> None:
        p.ident({"document_id": document_id}, "document_id")
        if not await self.collab.delete_document(document_id):
            raise p.NotFound(f"document {document_id!r} does not exist")
        self.reply({"deleted": document_id})


def routes(ctx: ApiContext, collab: CollabService) -> list[tuple]:
    return [(f"/api/v1/documents/{SEG}", DocumentHandler, {"ctx": ctx, "collab": collab})]
