"""The upstream app's approach: Flask, TensorFlow/Keras loaded in the web process, the upload
saved to disk, ``keras.utils.load_img`` (PIL, nearest-neighbour resize) + ``img_to_array``, and
one ``model.predict`` per request. Kept deliberately plain: this is the thing we measure against.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from flask import Flask, jsonify, request

log = logging.getLogger(__name__)

LABELS = ("akiec", "bcc", "bkl", "df", "nv", "vasc", "mel")


def create_app(
    model_path: Path, size: tuple[int, int], scale: float, offset: float, upload_dir: Path
) -> Flask:
    """Load the Keras model at start-up (so /health/ready means loaded) and build the app.

    Args:
        size: (width, height) of the model input.
        scale, offset: pixels reach the model as ``pixel * scale + offset``.
    """
    import keras
    from keras.utils import img_to_array, load_img

    model = keras.models.load_model(model_path, compile=False)
    upload_dir.mkdir(parents=True, exist_ok=True)
    width, height = size
    app = Flask(__name__)

    @app.get("/health/ready")
    def ready() -> Any:
        return jsonify(status="ready")

    @app.post("/predict")
    def predict() -> Any:
        upload = request.files.get("file")
        if upload is None:
            return jsonify(error="no file"), 400
        path = upload_dir / f"{uuid.uuid4().hex}.jpg"
        upload.save(path)
        try:
            img = load_img(path, target_size=(height, width))
            x = img_to_array(img) * scale + offset
            probs = model.predict(np.expand_dims(x, axis=0), verbose=0)[0]
        finally:
            path.unlink(missing_ok=True)  # upstream kept uploads; a benchmark must not fill disk
        top = int(np.argmax(probs))
        return jsonify(
            label=LABELS[top],
            confidence=float(probs[top]),
            probabilities={c: float(p) for c, p in zip(LABELS, probs, strict=True)},
        )

    return app
