"""PDF reports: view inline or download; built on first use and rebuilt when missing."""

from __future__ import annotations

import re
from typing import Any

from litestar import Request, Response, get
from litestar.datastructures import State

from app import analyses, audit
from app.auth.session import USER, CurrentUser
from app.page_helpers import client_address


@get("/analyses/{analysis_id:str}/report.pdf", name="report", dependencies=USER)
async def report(
    request: Request[Any, Any, State],
    state: State,
    user: CurrentUser,
    analysis_id: str,
    download: bool = False,
) -> Response[bytes]:
    row = await analyses.get_owned(analysis_id, user.id, state["store"])
    pdf = await analyses.report_pdf(state["store"], row, state.get("inference"))
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


handlers: list[Any] = [report]
