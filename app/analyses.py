"""Stored analyses: save (file first, then row), fetch by owner, delete, report."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from app.db.tables import Analysis, AuditEvent, User
from app.errors import AppError, NotFoundError
from app.inference.classifier import Classifier, Prediction
from app.inference.explain import CAVEAT
from app.inference.formats import format_of
from app.inference.formats.base import DEFAULT_MAX_PIXELS, ImageError, Picture
from app.inference.gate import GateResult, Reason, describe
from app.inference.service import InferenceService
from app.inference.spec import HAM10000_NAMES, RISK_GROUPS
from app.reports.data import ReportData
from app.storage import EncryptedStore

log = logging.getLogger(__name__)

RISK_STYLE = {"malignant": "danger", "pre-cancerous": "warning", "benign": "success"}
RISK_HEX = {"malignant": "#dc3545", "pre-cancerous": "#fd7e14", "benign": "#198754"}


@dataclass(frozen=True, slots=True)
class Upload:
    filename: str
    data: bytes


def picture(data: bytes) -> Picture:
    """A stored upload as pages show it, its format's choice: as sent, or its pixels as PNG
    where browsers cannot read the format (blocking: run off-loop)."""
    # Checked against the configured budget at upload.
    return format_of(data).picture(data, DEFAULT_MAX_PIXELS)


def gate_summary(gate: dict[str, Any]) -> str:
    """The failed checks of a stored gate result in plain words, '' when it passed."""
    reasons = [Reason(r["check"], r["value"], r["threshold"]) for r in gate.get("reasons", [])]
    return describe(reasons) if reasons else ""


def parse_id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError as exc:
        raise NotFoundError("analysis not found") from exc


def _display_name(filename: str | None, default: str = "upload") -> str:
    """An upload's file name, kept for display only: control characters dropped, 255 chars."""
    cleaned = "".join(ch for ch in (filename or "") if ch.isprintable()).strip()
    return (cleaned or default)[:255]


async def save(
    store: EncryptedStore,
    classifier: Classifier,
    owner_id: int,
    patient: str,
    upload: Upload,
    prediction: Prediction,
    batch: str | None = None,
    gate: GateResult | None = None,
) -> uuid.UUID:
    """Encrypt and store the image, then insert the row; never a row without its image.

    The database store writes both in one transaction; the file store writes the file (durably)
    first and removes it again when the insert fails.
    """
    fmt = format_of(upload.data)  # validated (pixel budget included) before analysis
    suffix = f".{fmt.name}"
    row = Analysis(
        owner=owner_id,
        # sealed: the database alone names no patient (see the table's comment)
        patient_sealed=store.seal_text(patient[:128]),
        patient_index=store.blind_index(patient[:128]),
        filename_sealed=store.seal_text(_display_name(upload.filename)),
        batch=batch,
        image_path="",  # set below once the image is stored
        image_sha256=hashlib.sha256(upload.data).hexdigest(),
        predicted_class=prediction.label,
        probabilities=json.dumps(prediction.probabilities),
        confidence=prediction.confidence,
        melanoma_flag=prediction.mel_flag,
        melanoma_threshold=prediction.mel_threshold,
        model_name=classifier.spec.name[:128],
        model_version=str(classifier.spec.version)[:64],
        model_sha256=classifier.sha256,
        gate=json.dumps(gate.as_dict()) if gate is not None else "",
    )
    if store.transactional:
        async with Analysis._meta.db.transaction():
            row.image_path = await store.write(upload.data, suffix)
            await row.save().run()
        return row.id
    row.image_path = await store.write(upload.data, suffix)
    try:
        await row.save().run()
    except BaseException:
        store.delete(row.image_path)  # the row never existed; do not leave an orphan file behind
        raise
    return row.id


def decorate(row: dict[str, Any], store: EncryptedStore) -> dict[str, Any]:
    """Add what templates and reports need: the patient and file name unsealed, parsed
    probabilities, names and risk group."""
    probs = row.get("probabilities")
    if isinstance(probs, str):
        probs = json.loads(probs)
    label = row["predicted_class"]
    risk = RISK_GROUPS.get(label, "unknown")
    raw_gate = row.get("gate") or ""
    gate = json.loads(raw_gate) if isinstance(raw_gate, str) and raw_gate else {}
    return {
        **row,
        "patient": _unsealed(store, row, "patient_sealed", "patient"),
        "original_filename": _unsealed(store, row, "filename_sealed", "original_filename"),
        "id": str(row["id"]),
        "probabilities": probs or {},
        "predicted_name": HAM10000_NAMES.get(label, label),
        "risk_group": risk,
        "risk_style": RISK_STYLE.get(risk, "secondary"),
        "risk_hex": RISK_HEX.get(risk, "#6c757d"),
        "urgent": risk == "malignant" or bool(row.get("melanoma_flag")),
        "gate": gate,
        # analysed although the intended-use gate refused it ("analyse anyway")
        "outside_intended_use": bool(gate.get("outside_intended_use")),
        "gate_summary": gate_summary(gate),
    }


def _unsealed(store: EncryptedStore, row: dict[str, Any], sealed: str, plain: str) -> str:
    """A sealed column's text; a row from before sealing has it in its plain column."""
    return store.open_text(row[sealed]) if row.get(sealed) else str(row.get(plain) or "")


async def seal_legacy_rows(store: EncryptedStore) -> int:
    """Seal the patient and file name of rows written before sealing existed; returns how many.

    Idempotent: a sealed row has its plain columns emptied, so it is not picked again.
    """
    rows = await (
        Analysis.select(Analysis.id, Analysis.patient, Analysis.original_filename)
        .where((Analysis.patient_sealed == "") & (Analysis.patient != ""))
        .run()
    )
    for row in rows:
        await (
            Analysis.update(
                {
                    Analysis.patient_sealed: store.seal_text(row["patient"]),
                    Analysis.patient_index: store.blind_index(row["patient"]),
                    Analysis.filename_sealed: store.seal_text(row["original_filename"]),
                    Analysis.patient: "",
                    Analysis.original_filename: "",
                }
            )
            .where(Analysis.id == row["id"])
            .run()
        )
    if rows:
        log.info("sealed the patient and file name of %d earlier analyses", len(rows))
    return len(rows)


async def get_owned(raw_id: str, owner_id: int, store: EncryptedStore) -> dict[str, Any]:
    """The analysis if ``owner_id`` owns it; otherwise 404, the same as if it did not exist."""
    row = (
        await Analysis.select()
        .where((Analysis.id == parse_id(raw_id)) & (Analysis.owner == owner_id))
        .first()
        .run()
    )
    if row is None:
        raise NotFoundError("analysis not found")
    return decorate(row, store)


class DeleteFailedError(AppError):
    """A stored file could not be removed: the analysis is kept, whole, for a retry."""

    status = 503
    code = "delete_failed"


async def delete_owned(
    store: EncryptedStore, raw_id: str, owner_id: int, actor_name: str = "", address: str = ""
) -> dict[str, Any]:
    """Delete an analysis, its stored files and write its audit event, all or nothing.

    The row's deletion and the audit event share one transaction, and the files are removed
    inside it, the image last: when a file cannot be removed (a read-only or failing disk) the
    transaction rolls back, the analysis stays as it was (a removed report is rebuilt on
    demand), and DeleteFailedError tells the user to retry. The event names the analysis by
    its id, never the patient.
    """
    row = await get_owned(raw_id, owner_id, store)
    analysis_id = parse_id(raw_id)
    try:
        async with Analysis._meta.db.transaction():
            await (
                Analysis.delete()
                .where((Analysis.id == analysis_id) & (Analysis.owner == owner_id))
                .run()
            )
            await AuditEvent.insert(
                AuditEvent(
                    actor=owner_id,
                    actor_name=actor_name[:64],
                    action="analysis_deleted",
                    target=row["id"],
                    address=address[:64],
                    detail="with its image and report",
                )
            ).run()
            # the database store deletes its blobs inside this same transaction
            await store.remove(row.get("report_path"))
            await store.remove(row["image_path"])
    except OSError as exc:
        log.error("analysis %s kept: a stored file could not be removed (%s)", row["id"], exc)
        raise DeleteFailedError(
            "the analysis was not deleted: its stored files could not be removed "
            f"({exc.strerror or exc}); nothing was changed, try again later or tell the "
            "administrator"
        ) from exc
    return row


def _render_report(data: ReportData) -> bytes:
    # borb costs ~0.2 s to import: pay it with the first report, off the event loop, not at
    # start-up. Importing app.reports.pdf also switches borb's telemetry off.
    from app.reports.pdf import build_report

    return build_report(data)


async def _explanation_png(
    service: InferenceService | None, image: bytes, label: str
) -> bytes | None:
    """The heat-map overlay for the report, or None where there is none to draw."""
    if service is None or not service.explanations_available:
        return None
    try:
        return (await service.explain(image, label)).png
    except (ImageError, AppError) as exc:  # no CAM model, an image it cannot decode, overload
        log.info("report without an explanation: %s", exc)
        return None


async def report_pdf(
    store: EncryptedStore, row: dict[str, Any], service: InferenceService | None = None
) -> bytes:
    """The stored (encrypted) PDF, rendered off the event loop and saved if missing.

    Args:
        service: draws the explanation printed beside the image, when the model has one.
    """
    name = row.get("report_path")
    if name:
        try:
            return await store.read(name)
        except NotFoundError:
            # Not here (another replica's disk with the file store, or removed): rebuilt from
            # the record, the same text, and kept.
            log.info("report of analysis %s rebuilt: %s is not in this store", row["id"], name)
    image = await store.read(row["image_path"])
    clinician = (await User.select(User.username).where(User.id == row["owner"]).first().run()) or {
        "username": "?"
    }
    created = row["created_at"]
    if isinstance(created, str):
        created = dt.datetime.fromisoformat(created)
    data = ReportData(
        report_id=row["id"],
        patient=row["patient"],
        clinician=clinician["username"],
        created_at=created,
        image=image,
        image_sha256=row["image_sha256"],
        predicted_class=row["predicted_class"],
        predicted_name=row["predicted_name"],
        risk_group=row["risk_group"],
        confidence=row["confidence"],
        probabilities=row["probabilities"],
        label_names=HAM10000_NAMES,
        melanoma_flag=row["melanoma_flag"],
        melanoma_threshold=row["melanoma_threshold"],
        model_name=row["model_name"],
        model_version=row["model_version"],
        model_sha256=row["model_sha256"],
        outside_intended_use=row["gate_summary"] if row["outside_intended_use"] else None,
        explanation_png=await _explanation_png(service, image, row["predicted_class"]),
        explanation_caveat=CAVEAT,
    )
    pdf = await asyncio.to_thread(_render_report, data)
    new_name = await store.write(pdf, ".pdf")
    # Claim the slot only if nobody else did meanwhile (two tabs, a double click, a delete):
    # a PDF that no row points at would survive the analysis's deletion.
    analysis_id = parse_id(row["id"])
    unchanged = Analysis.report_path.is_null() if not name else Analysis.report_path == name
    await (
        Analysis.update({Analysis.report_path: new_name})
        .where((Analysis.id == analysis_id) & unchanged)
        .run()
    )
    now = (
        await Analysis.select(Analysis.report_path).where(Analysis.id == analysis_id).first().run()
    )
    if now is None or now["report_path"] != new_name:
        await store.remove(new_name)  # lost the race, or the analysis was deleted
    return pdf
