"""BentoML peer: its documented file-upload API (a ``pathlib.Path`` parameter, sent as a
multipart form field) and ``bentoml serve``, one worker with two request threads, the same
decode, preprocessing and ORT session as the service. Runs in its own venv (bentoml.txt)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import bentoml
import cv2

from app.inference.classifier import Classifier
from app.inference.preprocess import preprocess

THREADS = int(os.environ.get("PEER_THREADS", "2"))


@bentoml.service(workers=int(os.environ.get("PEER_WORKERS", "1")), threads=THREADS)
class SkinLesion:
    def __init__(self) -> None:
        cv2.setNumThreads(1)
        self.classifier = Classifier(Path(os.environ["PEER_MODEL"]), "cpu", threads=1)
        self.classifier.warm_up()
        self.labels = self.classifier.spec.labels

    @bentoml.api
    def predict(self, image: Path) -> dict[str, Any]:
        x = preprocess(image.read_bytes(), self.classifier.spec)
        probs = self.classifier.run(x[None])[0].tolist()
        top = max(range(len(probs)), key=probs.__getitem__)
        return {
            "label": self.labels[top],
            "probabilities": dict(zip(self.labels, probs, strict=True)),
        }
