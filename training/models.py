"""Model builders: every model takes float32 RGB pixels in [0, 255] and scales them itself."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
from keras import layers

from app.inference.spec import HAM10000_LABELS

WEIGHT_FILES = {
    "mobilenetv2_035": "mobilenet_v2_0.35_224_no_top.weights.h5",
    "mobilenet_025": "mobilenet_2_5_224_tf_no_top.h5",
}
ARCHITECTURES = ("mobilenetv2_035", "mobilenet_025", "small_cnn")


def _small_cnn(x: keras.KerasTensor) -> keras.KerasTensor:
    for filters in (16, 32, 64, 128):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
        x = layers.MaxPooling2D()(x)
    return x


def build_model(
    arch: str,
    size: tuple[int, int],
    weights_dir: Path | None,
    dropout: float = 0.2,
    bn_momentum: float = 0.9,
) -> keras.Model:
    """Backbone + global-average-pooling + dense head, softmax output over the 7 classes.

    Args:
        size: (width, height) of the input in pixels.
        weights_dir: folder holding the ImageNet backbones; None trains from scratch.
    """
    width, height = size
    shape = (height, width, 3)
    inputs = keras.Input(shape, name="image")
    # Scaling lives in the model, so serving only passes raw [0, 255] pixels.
    x = layers.Rescaling(1 / 127.5, offset=-1.0, name="scale")(inputs)
    if arch == "mobilenetv2_035":
        base = keras.applications.MobileNetV2(
            input_shape=shape, alpha=0.35, include_top=False, weights=None
        )
    elif arch == "mobilenet_025":
        base = keras.applications.MobileNet(
            input_shape=shape, alpha=0.25, include_top=False, weights=None
        )
    elif arch == "small_cnn":
        base = None
    else:
        raise ValueError(f"unknown architecture {arch!r}; choose from {ARCHITECTURES}")
    if base is not None:
        if weights_dir is not None:
            base.load_weights(weights_dir / WEIGHT_FILES[arch])
        # Keras' 0.999 BN momentum lags behind fine-tuned weights for thousands of steps on a
        # 7k-image set, so early val checks run on stale statistics.
        for layer in base.layers:
            if isinstance(layer, layers.BatchNormalization):
                layer.momentum = bn_momentum
        base.name = "backbone"
        x = base(x)
    else:
        x = _small_cnn(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    x = layers.Dense(len(HAM10000_LABELS), name="logits")(x)
    outputs = layers.Activation("softmax", name="probs")(x)
    return keras.Model(inputs, outputs, name=arch)


def logits_model(model: keras.Model) -> keras.Model:
    """The same graph, stopping before the softmax (for temperature fitting)."""
    return keras.Model(model.inputs, model.get_layer("logits").output)


def add_to_logits(model: keras.Model, offsets: np.ndarray) -> None:
    """Add a constant per class to the logits: folded into the Dense layer's bias."""
    dense = model.get_layer("logits")
    kernel, bias = dense.get_weights()
    dense.set_weights([kernel, bias + offsets.astype(bias.dtype)])


def fold_temperature(model: keras.Model, temperature: float) -> None:
    """softmax(z / T) == softmax of a Dense layer whose kernel and bias are divided by T."""
    dense = model.get_layer("logits")
    kernel, bias = dense.get_weights()
    dense.set_weights([kernel / temperature, bias / temperature])
