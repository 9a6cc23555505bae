"""PDF reports: view inline or download; built on first use and rebuilt when missing."""

from __future__ import annotations

import re
from typing import Any

from litestar import Controller, Request, Response, get
from litestar.datastructures import State
from litestar.di import Provide

from app import analyses, audit, deps
from app.auth.session import USER, CurrentUser
from app.inference.service import InferenceService
from app.page_helpers import client_address
from app.storage import EncryptedStore

# The logged-in owner, the store, and the service: the report prints the heat map when the
# model is ready, and is made without it while it loads.
REPORT = {
    **USER,
    "store": Provide(deps.store, sync_to_thread=False),
    "service": Provide(deps.ready_service_or_none, sync_to_thread=False),
}


class ReportsController(Controller):
    """An analysis's PDF report, for its owner."""

    path = "/analyses"
    dependencies = REPORT

    @get("/{analysis_id:str}/report.pdf", name="report")
    async def report(
        self,
        request: Request[Any, Any, State],
        store: EncryptedStore,
        service: InferenceService | None,
        user: CurrentUser,
        analysis_id: str,
        download: bool = False,
    ) -> Response[bytes]:
        row = await analyses.get_owned(analysis_id, user.id, store)
        pdf = await analyses.report_pdf(store, row, service)
        await audit.record(
            "report_downloaded" if download else "report_viewed",
            actor_id=user.id,
            actor_name=user.username,
            target=row["id"],
            address=client_address(request),
        )
        # File names come from our own data only, never from the upload's name.
        safe_patient = re.sub(r"[^A-Za-z0-9_-]+", "_", row["patient"])[:40].strip("_") or "patient"
        filename = f"report-{safe_patient}-{row['id'][:8]}.pdf"
        disposition = "attachment" if download else "inline"
        return Response(
            pdf,
            media_type="application/pdf",
            headers={
                "Content-Disposition": f'{disposition}; filename="{filename}"',
                "Cache-Control": "private, no-store",
            },
        )


handlers: list[Any] = [ReportsController]
