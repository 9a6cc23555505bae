"""The JSON shapes the API answers with (typed, so the OpenAPI schema shows them), and how an
analysis becomes one. Shared by the HTTP routes and the live sockets."""

from __future__ import annotations

from dataclasses import dataclass, field

from app.inference.classifier import DISCLAIMER, Classifier
from app.inference.explain import CAVEAT
from app.inference.gate import GateResult
from app.inference.service import Analysis


@dataclass(frozen=True, slots=True)
class ErrorBody:
    error: str
    detail: str


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str
    version: str
    sha256: str


@dataclass(frozen=True, slots=True)
class Timing:
    decode_ms: float
    inference_ms: float  # the whole micro-batch's session.run
    queue_ms: float
    batch_size: int  # images in the micro-batch this one ran in


@dataclass(frozen=True, slots=True)
class GateReason:
    check: str  # e.g. "blurred", "out_of_distribution"
    value: float
    threshold: float


@dataclass(frozen=True, slots=True)
class GateBody:
    """The intended-use gate's measurements, for an integrator to log."""

    passed: bool
    outside_intended_use: bool  # analysed although it failed (web "analyse anyway" only)
    distribution_checked: bool  # False: this model's gate runs its quality checks only
    scores: dict[str, float]
    thresholds: dict[str, float]
    reasons: list[GateReason]


@dataclass(frozen=True, slots=True)
class RejectedBody:
    error: str  # "image_rejected"
    detail: str  # plain words: what is wrong and what to do
    reasons: list[GateReason]


@dataclass(frozen=True, slots=True)
class PredictResponse:
    label: str  # HAM10000 class code, e.g. "mel"
    name: str  # plain-language name
    risk_group: str
    confidence: float
    probabilities: dict[str, float]
    melanoma_flag: bool
    melanoma_threshold: float | None
    model: ModelInfo
    timing: Timing
    gate: GateBody
    disclaimer: str = DISCLAIMER


@dataclass(frozen=True, slots=True)
class HeatMap:
    rows: int
    cols: int
    values: list[list[float]]  # >= 0, scaled to a maximum of 1 (all 0: no evidence)


@dataclass(frozen=True, slots=True)
class View:
    # [x, y, w, h] in the upload's pixels (EXIF-upright): the centre crop the model saw,
    # which the map covers edge to edge
    crop: list[int]


@dataclass(frozen=True, slots=True)
class ExplanationBody:
    label: str  # the class whose evidence is shown
    method: str
    grid: list[int]  # [rows, columns] of the class map before smoothing
    evidence: bool  # False: nothing in the image raised this class's score
    map: HeatMap
    view: View
    image_png_base64: str  # the model's view of the image with the heat map over it
    caveat: str = CAVEAT


@dataclass(frozen=True, slots=True)
class ExplainResponse:
    prediction: PredictResponse
    explanation: ExplanationBody
    disclaimer: str = DISCLAIMER


@dataclass(frozen=True, slots=True)
class BatchItem:
    index: int
    filename: str | None
    result: PredictResponse | None = None
    error: str | None = None
    detail: str | None = None
    reasons: list[GateReason] | None = None  # with error "image_rejected"


@dataclass(frozen=True, slots=True)
class BatchResponse:
    count: int
    failed: int
    results: list[BatchItem] = field(default_factory=list)


def model_info(classifier: Classifier) -> ModelInfo:
    return ModelInfo(classifier.spec.name, classifier.spec.version, classifier.sha256)


def gate_body(result: GateResult) -> GateBody:
    return GateBody(
        passed=result.passed,
        outside_intended_use=result.overridden and not result.passed,
        distribution_checked=result.distribution_checked,
        scores=dict(result.scores),
        thresholds=dict(result.thresholds),
        reasons=[GateReason(r.check, r.value, r.threshold) for r in result.reasons],
    )


def to_response(analysis: Analysis, model: ModelInfo) -> PredictResponse:
    p = analysis.prediction
    return PredictResponse(
        label=p.label,
        name=p.name,
        risk_group=p.risk_group,
        confidence=round(p.confidence, 6),
        probabilities={k: round(v, 6) for k, v in p.probabilities.items()},
        melanoma_flag=p.mel_flag,
        melanoma_threshold=p.mel_threshold,
        model=model,
        timing=Timing(
            round(analysis.decode_ms, 3),
            round(analysis.inference_ms, 3),
            round(analysis.queue_ms, 3),
            analysis.batch_size,
        ),
        gate=gate_body(analysis.gate),
    )
