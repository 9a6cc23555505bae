"""The ONNX classifier: one onnxruntime session per process, spec read from the model file."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from app.files import file_sha256 as file_sha256
from app.inference.gate import FEATURES, Distribution
from app.inference.spec import RISK_GROUPS, ModelSpec, ModelSpecError

log = logging.getLogger(__name__)


# Shown wherever a person sees a result: pages, reports, and every API and WebSocket answer.
DISCLAIMER = "This result is a second opinion, not a diagnosis."


class ModelLoadError(RuntimeError):
    """The model is missing, corrupt or not a 7-class image classifier; start-up must stop."""


class ModelOutputError(RuntimeError):
    """The model answered something that is not a probability (a 500: no result, not a guess)."""


@dataclass(frozen=True, slots=True)
class Prediction:
    label: str
    name: str
    risk_group: str
    confidence: float
    probabilities: dict[str, float]
    mel_flag: bool
    mel_threshold: float | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "name": self.name,
            "risk_group": self.risk_group,
            "confidence": self.confidence,
            "probabilities": self.probabilities,
            "melanoma_flag": self.mel_flag,
            "melanoma_threshold": self.mel_threshold,
        }


def choose_providers(requested: str) -> list[str]:
    """``auto`` takes CUDA when onnxruntime-gpu sees a GPU; ``cuda`` insists on it."""
    available = ort.get_available_providers()
    if requested == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if requested == "cuda":
        raise ModelLoadError(
            "APP_PROVIDERS=cuda but onnxruntime has no CUDAExecutionProvider "
            "(install the `gpu` extra: pip install '.[gpu]')"
        )
    return ["CPUExecutionProvider"]


# TF32 (on by default in onnxruntime's CUDA provider) moved probabilities by up to 0.004 from the
# CPU's on an H100, enough to flip a melanoma flag near its threshold; FP32 costs this small model
# nothing worth having.
PROVIDER_OPTIONS: dict[str, dict[str, str]] = {"CUDAExecutionProvider": {"use_tf32": "0"}}

# Classifier.release_memory: a run that frees the CPU arena's unused regions when it ends.
_SHRINK_ARENAS = ort.RunOptions()
_SHRINK_ARENAS.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")


def _open_session(model_path: Path, requested: str, threads: int) -> ort.InferenceSession:
    """An onnxruntime session on the requested providers; ``auto`` falls back to the CPU."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    if threads > 1:
        # Spin while a run hands work between its threads (the speed of several threads), but
        # not after it: otherwise they spin on between requests, taking the cores from the
        # decode and the event loop (2x the CPU per request at concurrency 1, measured).
        options.add_session_config_entry("session.force_spinning_stop", "1")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    wanted = choose_providers(requested)
    try:
        session = ort.InferenceSession(
            str(model_path),
            options,
            providers=wanted,
            provider_options=[PROVIDER_OPTIONS.get(name, {}) for name in wanted],
        )
    except Exception as exc:  # onnxruntime raises its own untyped errors
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if requested != "auto" or wanted[0] == "CPUExecutionProvider":
            raise ModelLoadError(f"cannot load {model_path}: {reason}") from exc
        # onnxruntime-gpu installed but no usable GPU (a CUDA image run without --gpus, say).
        log.warning("%s failed (%s); falling back to the CPU", wanted[0], reason)
        return _open_session(model_path, "cpu", threads)
    started = session.get_providers()[0]
    if started != wanted[0]:
        # onnxruntime also falls back to the CPU with only a log line when the CUDA or cuDNN
        # libraries cannot be loaded: never let `cuda` quietly mean the CPU.
        if requested == "cuda":
            raise ModelLoadError(
                f"APP_PROVIDERS=cuda but onnxruntime could not start {wanted[0]} "
                f"(no GPU, or CUDA/cuDNN libraries missing?); it fell back to {started}"
            )
        log.warning("%s failed to start; running on %s", wanted[0], started)
    return session


class Classifier:
    """Wraps an onnxruntime session; thread-safe for concurrent ``run`` calls."""

    def __init__(
        self, model_path: Path, providers: str = "auto", threads: int = 1, solo_threads: int = 1
    ) -> None:
        """Args:
        threads: intra-op threads of the session that runs while other work is in flight.
        solo_threads: threads for a run with the machine to itself (``run(solo=True)``): a
            second CPU session of the same file, opened only when it has more threads.
        """
        if not model_path.is_file():
            raise ModelLoadError(f"model file not found: {model_path}")
        self.session = _open_session(model_path, providers, threads)
        self._solo_session: ort.InferenceSession | None = None
        if solo_threads > threads and self.session.get_providers()[0] == "CPUExecutionProvider":
            self._solo_session = _open_session(model_path, "cpu", solo_threads)
        try:
            meta = self.session.get_modelmeta().custom_metadata_map
            self.spec = ModelSpec.from_metadata(dict(meta))
        except ModelSpecError as exc:
            raise ModelLoadError(f"{model_path}: {exc}") from exc
        self.path = model_path
        self.sha256 = file_sha256(model_path)
        self.providers = self.session.get_providers()
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.has_features = FEATURES in self.output_names
        # Set by load_service from the gate file: with it, ``run`` adds one column per image,
        # the distance from the training images (the gate's distribution score).
        self.distribution: Distribution | None = None
        self._check_shapes()
        log.info(
            "loaded %s (%s, sha256 %s…) on %s with %d intra-op threads (%d alone)",
            model_path.name,
            self.spec.name,
            self.sha256[:12],
            self.providers[0],
            threads,
            solo_threads if self._solo_session is not None else threads,
        )

    def _check_shapes(self) -> None:
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        extra = [o.name for o in outputs[1:]]
        if len(inputs) != 1 or not outputs or extra not in ([], [FEATURES]):
            raise ModelLoadError(
                f"expected 1 input and the outputs [probabilities] or [probabilities, {FEATURES}],"
                f" got {len(inputs)} inputs and outputs {[o.name for o in outputs]}"
            )
        shape = inputs[0].shape
        w, h = self.spec.input_size
        want = [3, h, w] if self.spec.layout == "NCHW" else [h, w, 3]
        if len(shape) != 4 or [d if isinstance(d, int) else -1 for d in shape[1:]] != want:
            raise ModelLoadError(
                f"input shape {shape} does not match spec {want} ({self.spec.layout})"
            )
        out = outputs[0].shape
        if len(out) != 2 or out[1] != len(self.spec.labels):
            raise ModelLoadError(f"output shape {out} is not (batch, {len(self.spec.labels)})")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        w, h = self.spec.input_size
        return (3, h, w) if self.spec.layout == "NCHW" else (h, w, 3)

    def warm_up(self, runs: int = 3) -> None:
        """Run dummy batches so the first real request does not pay for allocation."""
        for batch in (1, 2)[: max(1, runs)]:
            self.run(np.zeros((batch, *self.input_shape), np.float32))
        if self._solo_session is not None:
            self.run(np.zeros((1, *self.input_shape), np.float32), solo=True)

    @property
    def has_solo_session(self) -> bool:
        return self._solo_session is not None

    def release_memory(self) -> None:
        """Give back what the CPU memory arenas grew to for big batches (call when idle).

        The arena keeps the largest batch's memory for good: after 1,000 clients the idle
        server stayed 141 MB above its pre-burst RSS. A run with arena shrinkage frees every
        arena region not in use when it ends. Shrinking after every run made an image of a
        batch of 8 take 1.55 times as long, and the arena off 1.04-1.07 times (more in runs at
        a higher load; python -m benchmarks.arena); one batch-1 run when idle costs nothing
        under load.
        """
        feeds = {self.input_name: np.zeros((1, *self.input_shape), np.float32)}
        for session in filter(None, (self.session, self._solo_session)):
            session.run(self.output_names[:1], feeds, _SHRINK_ARENAS)

    def run(self, batch: np.ndarray, solo: bool = False) -> np.ndarray:
        """float32 batch in the model's layout -> rows of (N, classes [+ 1]).

        Each row is the class probabilities, then, when the gate has a distribution check,
        the image's distribution score: one array, so the micro-batcher hands out rows
        without knowing about the gate.

        Args:
            solo: nothing else needs the cores: use the session with ``solo_threads``, if any.
        """
        session = self._solo_session if solo and self._solo_session is not None else self.session
        feeds = {self.input_name: batch}
        if self.distribution is None or not self.has_features:
            probs = session.run(self.output_names[:1], feeds)[0]
            return np.asarray(probs, dtype=np.float32)
        probs, features = session.run([self.output_names[0], FEATURES], feeds)
        scores = self.distribution.scores(np.asarray(features, np.float32))
        return np.column_stack([probs, scores]).astype(np.float32)

    def distribution_score(self, row: np.ndarray) -> float | None:
        """The gate's distribution score in one row of ``run``, if it has one."""
        classes = len(self.spec.labels)
        return float(row[classes]) if len(row) > classes else None

    def describe(self, probs: np.ndarray) -> Prediction:
        """Turn one probability vector into a Prediction, with the melanoma flag applied."""
        labels = self.spec.labels
        # Plain Python on 7 floats: this runs on the event loop, and numpy's argmax releases
        # and retakes the GIL, which costs the loop a wait behind the decode threads (measured
        # +1.5 % throughput at concurrency 8 without it).
        values: list[float] = probs[: len(labels)].tolist()
        if not all(math.isfinite(v) for v in values):
            # A NaN would otherwise pick a class by its position: never show such a result.
            raise ModelOutputError(f"the model returned non-finite probabilities {values}")
        top = max(range(len(values)), key=values.__getitem__)
        threshold = self.spec.mel_threshold
        mel = labels.index("mel") if "mel" in labels else None
        if mel is None:
            flag = False
        elif threshold is None:
            flag = top == mel
        else:
            flag = values[mel] >= threshold
        return Prediction(
            label=labels[top],
            name=self.spec.label_names[top],
            risk_group=RISK_GROUPS.get(labels[top], "unknown"),
            confidence=values[top],
            probabilities=dict(zip(labels, values, strict=True)),
            mel_flag=flag,
            mel_threshold=threshold,
        )
