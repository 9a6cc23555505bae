"""JSON API over a user's stored analyses, guarded by the per-user API token."""

from __future__ import annotations

import datetime as dt
from typing import Any

from litestar import Request, get
from litestar.datastructures import State

from app import analyses
from app.auth.tokens import SECURITY, api_token_guard
from app.db.tables import Analysis
from app.inference.classifier import DISCLAIMER

_PUBLIC_FIELDS = (
    "id",
    "patient",
    "predicted_class",
    "predicted_name",
    "risk_group",
    "confidence",
    "probabilities",
    "melanoma_flag",
    "melanoma_threshold",
    "model_name",
    "model_version",
    "model_sha256",
    "image_sha256",
    "original_filename",
    "created_at",
)


def _public(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: row.get(k) for k in _PUBLIC_FIELDS}
    created = out["created_at"]
    out["created_at"] = created.isoformat() if isinstance(created, dt.datetime) else created
    out["disclaimer"] = DISCLAIMER  # a stored prediction is still only a second opinion
    return out


@get("/api/v1/analyses", guards=[api_token_guard], security=SECURITY, tags=["analyses"])
async def list_analyses(request: Request[Any, Any, State], limit: int = 50) -> dict[str, Any]:
    """The caller's own analyses, newest first."""
    owner = request.state.api_user["id"]
    rows = (
        await Analysis.select()
        .where(Analysis.owner == owner)
        .order_by(Analysis.created_at, ascending=False)
        .limit(max(1, min(limit, 200)))
        .run()
    )
    store = request.app.state["store"]
    return {"analyses": [_public(analyses.decorate(r, store)) for r in rows]}


@get(
    "/api/v1/analyses/{analysis_id:str}",
    guards=[api_token_guard],
    security=SECURITY,
    tags=["analyses"],
)
async def get_analysis(request: Request[Any, Any, State], analysis_id: str) -> dict[str, Any]:
    """One of the caller's analyses; another user's id answers 404, as if it did not exist."""
    row = await analyses.get_owned(
        analysis_id, request.state.api_user["id"], request.app.state["store"]
    )
    return _public(row)


handlers: list[Any] = [list_analyses, get_analysis]
