"""What a report shows, independent of the PDF library."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ReportData:
    report_id: str
    patient: str
    clinician: str
    created_at: dt.datetime
    image: bytes  # decrypted original JPEG/PNG/DICOM
    image_sha256: str
    predicted_class: str
    predicted_name: str
    risk_group: str
    confidence: float
    probabilities: dict[str, float]  # label -> probability, in the model's label order
    label_names: dict[str, str]
    melanoma_flag: bool
    melanoma_threshold: float | None
    model_name: str
    model_version: str
    model_sha256: str
    # The gate's reasons when a clinician analysed an image the gate refused, else None.
    outside_intended_use: str | None = None
    # The Layer-CAM overlay (PNG) printed beside the image, with what it is and is not.
    explanation_png: bytes | None = None
    explanation_caveat: str = ""
