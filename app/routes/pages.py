"""Clinic pages: landing, dashboard, new analysis (batch), result, history, delete, audit log."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import secrets
from collections import Counter
from typing import Any

from litestar import Controller, Request, Response, get, post
from litestar.datastructures import State, UploadFile
from litestar.di import Provide
from litestar.response import Redirect, Template

from app import analyses, audit, deps
from app.analyses import RISK_HEX, Upload
from app.auth.session import ADMIN, USER, CurrentUser, optional_user
from app.charts import column_svg, hbar_svg
from app.config import Settings
from app.db.tables import Analysis, AuditEvent
from app.errors import AppError
from app.inference import formats
from app.inference.explain import CAVEAT, ExplanationUnavailableError
from app.inference.gate import ImageRejectedError
from app.inference.preprocess import ImageError
from app.inference.service import InferenceService
from app.inference.spec import HAM10000_LABELS, HAM10000_NAMES, RISK_GROUPS
from app.page_helpers import client_address, flash, form_text, render
from app.storage import EncryptedStore

log = logging.getLogger(__name__)

PAGE_SIZE = 20


def _when(value: Any) -> dt.datetime:
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value  # type: ignore[no-any-return]


def short_name(label: str) -> str:
    """ "Actinic keratosis / intraepithelial carcinoma" -> "Actinic keratosis" for chart labels."""
    return HAM10000_NAMES.get(label, label).split(" (")[0].split(" /")[0]


async def _read_uploads(
    request: Request[Any, Any, State],
) -> tuple[str, list[Upload], bool]:
    try:
        form = await request.form()
    except Exception as exc:  # Litestar 2.25 raises from deep in multipart parsing
        raise AppError("the upload could not be read; choose one or more images") from exc
    patient = form_text(form.get("patient"), "patient name")
    files = (
        [f for f in form.getall("images") if isinstance(f, UploadFile) and f.filename]
        if ("images" in form)
        else []
    )
    uploads = [Upload(f.filename, await f.read()) for f in files]
    analyse_anyway = form.get("analyse_anyway") == "yes"
    return patient, [u for u in uploads if u.data], analyse_anyway


# The columns a list of analyses shows (dashboard, history); ``decorate`` unseals the patient.
_LISTED = (
    Analysis.id,
    Analysis.patient,
    Analysis.patient_sealed,
    Analysis.predicted_class,
    Analysis.confidence,
    Analysis.melanoma_flag,
    Analysis.created_at,
)


def _skipped_summary(errors: list[str], shown: int = 3, width: int = 120) -> str:
    """One short message for the files a batch skipped. Flash messages live in the session
    cookie: one per file made 24 KB of cookies for a 32-file batch with long names, over a
    browser's 4 KB per cookie and a proxy's 8 KB header limit."""
    listed = [e if len(e) <= width else e[: width - 1] + "…" for e in errors[:shown]]
    more = f"; and {len(errors) - shown} more" if len(errors) > shown else ""
    return f"Skipped {len(errors)} file(s): " + "; ".join(listed) + more


# Every page but the landing one takes the logged-in user; any may take the store, the
# settings and the inference service (None until the model is ready: a page that needs it
# says so after checking its form, one that only shows a heat map shows none).
PAGE = {
    **USER,
    "store": Provide(deps.store, sync_to_thread=False),
    "settings": Provide(deps.settings, sync_to_thread=False),
    "service": Provide(deps.ready_service_or_none, sync_to_thread=False),
}


class PagesController(Controller):
    """The clinic's pages: landing, dashboard, new analysis (batch), result, its image and heat
    map, delete, history, and the audit log (administrators). Every page but the landing one
    takes the logged-in ``user``."""

    path = "/"
    dependencies = PAGE

    @get("/", name="landing")
    async def landing(self, request: Request[Any, Any, State]) -> Template:
        await optional_user(request)
        return render(request, "landing.html")

    @get("/dashboard", name="dashboard")
    async def dashboard(
        self, store: EncryptedStore, request: Request[Any, Any, State], user: CurrentUser
    ) -> Template:
        rows = (
            await Analysis.select(
                Analysis.predicted_class,
                Analysis.confidence,
                Analysis.melanoma_flag,
                Analysis.created_at,
            )
            .where(Analysis.owner == user.id)
            .run()
        )
        by_class = Counter(r["predicted_class"] for r in rows)
        today = dt.datetime.now(dt.UTC).date()
        monday = today - dt.timedelta(days=today.weekday())
        weeks = [monday - dt.timedelta(weeks=i) for i in range(11, -1, -1)]
        per_week: Counter[dt.date] = Counter()
        for r in rows:
            d = _when(r["created_at"]).date()
            per_week[d - dt.timedelta(days=d.weekday())] += 1
        class_chart = hbar_svg(
            [
                (
                    f"{short_name(c)} ({c})",
                    by_class.get(c, 0),
                    RISK_HEX.get(RISK_GROUPS[c], "#6c757d"),
                )
                for c in HAM10000_LABELS
            ],
            fmt="{:.0f}",
            title="Analyses by predicted class",
        )
        week_chart = column_svg(
            [(w.strftime("%d %b"), per_week.get(w, 0)) for w in weeks],
            title="Analyses per week (last 12 weeks)",
        )
        flagged = sum(1 for r in rows if r["melanoma_flag"])
        mean_conf = sum(r["confidence"] for r in rows) / len(rows) if rows else None
        recent = (
            await Analysis.select(*_LISTED)
            .where((Analysis.owner == user.id) & (Analysis.melanoma_flag.eq(True)))
            .order_by(Analysis.created_at, ascending=False)
            .limit(5)
            .run()
        )
        return render(
            request,
            "dashboard.html",
            total=len(rows),
            flagged=flagged,
            mean_conf=mean_conf,
            class_chart=class_chart,
            week_chart=week_chart,
            flagged_recent=[analyses.decorate({**r, "probabilities": "{}"}, store) for r in recent],
        )

    @get("/analyses/new", name="new_analysis")
    async def new_analysis(
        self, settings: Settings, request: Request[Any, Any, State], user: CurrentUser
    ) -> Template:
        return render(request, "new_analysis.html", batch_max=settings.batch_max)

    @post("/analyses", status_code=303)
    async def create_analysis(
        self,
        store: EncryptedStore,
        settings: Settings,
        service: InferenceService | None,
        request: Request[Any, Any, State],
        user: CurrentUser,
    ) -> Response[Any]:
        patient, uploads, analyse_anyway = await _read_uploads(request)
        errors: list[str] = []
        if not patient:
            errors.append("Enter the patient's name or identifier.")
        if not uploads:
            errors.append(f"Choose at least one image ({formats.listing('or')}).")
        if len(uploads) > settings.batch_max:
            errors.append(f"At most {settings.batch_max} images at once.")
        if errors:
            return render(
                request,
                "new_analysis.html",
                status_code=400,
                errors=errors,
                patient=patient,
                batch_max=settings.batch_max,
            )
        ready = deps.require_ready(service)  # 503 not_ready while the model loads
        # Through the service's shared path (gate, micro-batcher, queue bound). "Analyse
        # anyway": the gate still measures and its reasons are kept, but it does not refuse.
        results = await ready.analyse_many([u.data for u in uploads], analyse_anyway)
        classifier = ready.classifier
        batch = secrets.token_hex(8) if len(uploads) > 1 else None
        saved: list[str] = []
        rejected: list[str] = []
        for upload, result in zip(uploads, results, strict=True):
            if isinstance(result, ImageRejectedError):
                # No analysis, but the refusal is on record: which checks, never the image.
                rejected.append(f"{upload.filename}: {result}")
                await audit.record(
                    "analysis_refused",
                    actor_id=user.id,
                    actor_name=user.username,
                    address=client_address(request),
                    detail="intended-use gate: "
                    + ", ".join(r.check for r in result.result.reasons),
                )
                continue
            if isinstance(result, ImageError):
                errors.append(f"{upload.filename}: {result}")
                continue
            analysis_id = await analyses.save(
                store,
                classifier,
                user.id,
                patient,
                upload,
                result.prediction,
                batch,
                result.gate,
            )
            saved.append(str(analysis_id))
            prediction = result.prediction
            outside = not result.gate.passed
            await audit.record(
                "analysis_outside_intended_use" if outside else "analysis_created",
                actor_id=user.id,
                actor_name=user.username,
                target=str(analysis_id),
                address=client_address(request),
                detail=f"{prediction.label} {prediction.confidence:.3f}"
                + (
                    " (analyse anyway: " + ", ".join(r.check for r in result.gate.reasons) + ")"
                    if outside
                    else ""
                ),
            )
        errors = rejected + errors
        if not saved:
            return render(
                request,
                "new_analysis.html",
                status_code=422 if rejected else 400,
                errors=errors,
                rejected=bool(rejected),
                patient=patient,
                batch_max=settings.batch_max,
            )
        if errors:
            flash(request, _skipped_summary(errors), "warning")
        if len(saved) == 1:
            return Redirect(f"/analyses/{saved[0]}", status_code=303)
        flash(request, f"{len(saved)} images analysed for {patient}.", "success")
        return Redirect(f"/history?batch={batch}", status_code=303)

    @get("/analyses/{analysis_id:str}", name="analysis")
    async def analysis_page(
        self,
        store: EncryptedStore,
        service: InferenceService | None,
        request: Request[Any, Any, State],
        user: CurrentUser,
        analysis_id: str,
    ) -> Template:
        row = await analyses.get_owned(analysis_id, user.id, store)
        chart = hbar_svg(
            [
                (f"{short_name(c)} ({c})", p, RISK_HEX.get(RISK_GROUPS.get(c, ""), "#6c757d"))
                for c, p in sorted(row["probabilities"].items(), key=lambda kv: -kv[1])
            ],
            max_value=1.0,
            title="Probability of each class",
        )
        return render(
            request,
            "result.html",
            a=row,
            chart=chart,
            explanations=service is not None and service.explanations_available,
            explanation_caveat=CAVEAT,
            # The heat map is drawn by today's model; say so when another one made this result.
            explained_by_other_model=service is not None
            and row["model_sha256"] != service.classifier.sha256,
        )

    @get("/analyses/{analysis_id:str}/image")
    async def analysis_image(
        self, store: EncryptedStore, user: CurrentUser, analysis_id: str
    ) -> Response[bytes]:
        row = await analyses.get_owned(analysis_id, user.id, store)
        data = await store.read(row["image_path"])
        shown = await asyncio.to_thread(analyses.picture, data)  # PNG where browsers need it
        # Decrypted for its owner only: never cached by shared caches.
        return Response(
            shown.data, media_type=shown.media_type, headers={"Cache-Control": "private, no-store"}
        )

    @get("/analyses/{analysis_id:str}/explanation.png")
    async def analysis_explanation(
        self,
        store: EncryptedStore,
        service: InferenceService | None,
        user: CurrentUser,
        analysis_id: str,
    ) -> Response[bytes]:
        """Grad-CAM heat map of the stored result's class over the stored image (501 without a
        CAM model); computed on request, nothing is stored."""
        row = await analyses.get_owned(analysis_id, user.id, store)
        data = await store.read(row["image_path"])
        if service is None:
            raise ExplanationUnavailableError("the model is not loaded yet")
        explanation = await service.explain(data, row["predicted_class"])
        return Response(
            explanation.png, media_type="image/png", headers={"Cache-Control": "private, no-store"}
        )

    @post("/analyses/{analysis_id:str}/delete", status_code=303)
    async def delete_analysis(
        self,
        store: EncryptedStore,
        request: Request[Any, Any, State],
        user: CurrentUser,
        analysis_id: str,
    ) -> Redirect:
        row = await analyses.delete_owned(
            store, analysis_id, user.id, user.username, client_address(request)
        )
        flash(request, f"Analysis for {row['patient']} deleted, with its image and report.", "info")
        return Redirect("/history", status_code=303)

    @get("/history", name="history")
    async def history(
        self,
        store: EncryptedStore,
        request: Request[Any, Any, State],
        user: CurrentUser,
        patient: str | None = None,
        dx: str | None = None,  # HAM10000 class code; Litestar ignores a parameter named `cls`
        batch: str | None = None,
        page: int = 1,
    ) -> Template:
        where: Any = Analysis.owner == user.id  # Piccolo's Where/And types do not unify
        patient = form_text(patient, "patient filter")
        batch = form_text(batch, "batch filter")
        if patient:
            # Exact match (ignoring case and spacing) on the keyed hash: the names are sealed.
            where &= Analysis.patient_index == store.blind_index(patient)
        if dx in HAM10000_LABELS:
            where &= Analysis.predicted_class == dx
        if batch:
            where &= Analysis.batch == batch
        total = await Analysis.count().where(where).run()
        pages = max(1, -(-total // PAGE_SIZE))
        page = min(max(1, page), pages)
        rows = (
            await Analysis.select(*_LISTED, Analysis.original_filename, Analysis.filename_sealed)
            .where(where)
            .order_by(Analysis.created_at, ascending=False)
            .limit(PAGE_SIZE)
            .offset((page - 1) * PAGE_SIZE)
            .run()
        )
        return render(
            request,
            "history.html",
            rows=[analyses.decorate({**r, "probabilities": "{}"}, store) for r in rows],
            total=total,
            page=page,
            pages=pages,
            patient=patient or "",
            dx=dx or "",
            batch=batch or "",
            labels=HAM10000_LABELS,
            names=HAM10000_NAMES,
        )

    @get("/audit", name="audit", dependencies=ADMIN)
    async def audit_log(
        self, request: Request[Any, Any, State], user: CurrentUser, page: int = 1
    ) -> Template:
        total = await AuditEvent.count().run()
        pages = max(1, -(-total // 50))
        page = min(max(1, page), pages)
        rows = (
            await AuditEvent.select()
            .order_by(AuditEvent.id, ascending=False)
            .limit(50)
            .offset((page - 1) * 50)
            .run()
        )
        return render(request, "audit.html", rows=rows, page=page, pages=pages, total=total)


handlers: list[Any] = [PagesController]
