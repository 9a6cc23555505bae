"""JSON API over a user's stored analyses, guarded by the per-user API token."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, fields
from typing import Any

from litestar import Controller, Request, get
from litestar.datastructures import State
from litestar.di import Provide

from app import analyses, deps
from app.auth.tokens import SECURITY, api_token_guard
from app.db.tables import Analysis
from app.inference.classifier import DISCLAIMER
from app.storage import EncryptedStore


@dataclass(frozen=True, slots=True)
class AnalysisRecord:
    """One stored analysis as the API shows it (the image itself is not included)."""

    id: str
    patient: str
    predicted_class: str
    predicted_name: str
    risk_group: str
    confidence: float
    probabilities: dict[str, float]
    melanoma_flag: bool
    melanoma_threshold: float | None
    model_name: str
    model_version: str
    model_sha256: str
    image_sha256: str
    original_filename: str
    created_at: str
    outside_intended_use: bool  # analysed although the intended-use gate refused it
    disclaimer: str = DISCLAIMER  # a stored prediction is still only a second opinion


@dataclass(frozen=True, slots=True)
class AnalysisList:
    analyses: list[AnalysisRecord]


def _public(row: dict[str, Any]) -> AnalysisRecord:
    """The record's public fields, taken by name from a decorated row (nothing else leaves)."""
    values = {f.name: row[f.name] for f in fields(AnalysisRecord) if f.name != "disclaimer"}
    created = values["created_at"]
    values["created_at"] = created.isoformat() if isinstance(created, dt.datetime) else str(created)
    values["melanoma_flag"] = bool(values["melanoma_flag"])
    return AnalysisRecord(**values)


RECORDS = {"store": Provide(deps.store, sync_to_thread=False)}


class RecordsController(Controller):
    """The caller's own stored analyses (``/api/v1/analyses``), behind the API token."""

    path = "/api/v1/analyses"
    tags = ("analyses",)
    dependencies = RECORDS

    # Guarded per handler: a controller's guards would also cover Litestar's automatic OPTIONS.
    @get("/", guards=[api_token_guard], security=SECURITY)
    async def list_analyses(
        self, request: Request[Any, Any, State], store: EncryptedStore, limit: int = 50
    ) -> AnalysisList:
        """The caller's own analyses, newest first."""
        owner = request.state.api_user["id"]
        rows = (
            await Analysis.select()
            .where(Analysis.owner == owner)
            .order_by(Analysis.created_at, ascending=False)
            .limit(max(1, min(limit, 200)))
            .run()
        )
        return AnalysisList([_public(analyses.decorate(r, store)) for r in rows])

    @get("/{analysis_id:str}", guards=[api_token_guard], security=SECURITY)
    async def get_analysis(
        self, request: Request[Any, Any, State], store: EncryptedStore, analysis_id: str
    ) -> AnalysisRecord:
        """One of the caller's analyses; another user's id answers 404, as if it did not exist."""
        row = await analyses.get_owned(analysis_id, request.state.api_user["id"], store)
        return _public(row)


handlers: list[Any] = [RecordsController]
