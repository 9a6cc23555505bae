"""``convert``: Keras HDF5 -> FP32 ONNX with the model contract in ``metadata_props``."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import onnx

from app.inference.spec import ModelSpec
from conversion.errors import ConversionError
from conversion.files import save_onnx
from conversion.runtime import measure_latency, predict_keras, predict_onnx, random_input
from conversion.source import (
    SpecOverrides,
    check_hdf5,
    check_probabilities,
    load_keras,
    resolve_spec,
)

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

Layout = Literal["auto", "NHWC", "NCHW"]
INPUT_NAME = "input"
OUTPUT_NAME = "probabilities"
BATCH_DIM = "batch"
DEFAULT_OPSET = 17
PROBE_TOLERANCE = 1e-4


def to_onnx(model: keras.Model, spec: ModelSpec, layout: str, opset: int) -> onnx.ModelProto:
    """Trace the Keras model in a tf.function and convert it with tf2onnx.

    ``from_keras`` fails on Keras 3 models (KeyError 'keras_tensor_…'); ``from_function`` works.
    """
    import tensorflow as tf
    import tf2onnx

    signature = (
        tf.TensorSpec((None, spec.input_height, spec.input_width, 3), tf.float32, name=INPUT_NAME),
    )

    @tf.function(input_signature=signature)  # type: ignore[untyped-decorator]
    def serve(x: tf.Tensor) -> tf.Tensor:
        return model(x, training=False)

    nchw = [f"{INPUT_NAME}:0"] if layout == "NCHW" else None
    proto, _ = tf2onnx.convert.from_function(
        serve, input_signature=signature, opset=opset, inputs_as_nchw=nchw
    )
    return tidy_graph(proto)


def tidy_graph(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Stable names (input/probabilities/batch) and no unused graph inputs (ORT refuses them)."""
    graph = proto.graph
    used = {name for node in graph.node for name in node.input}
    used |= {o.name for o in graph.output}
    for unused in [i for i in graph.input if i.name not in used]:
        graph.input.remove(unused)
    if len(graph.input) != 1 or len(graph.output) != 1:
        raise ConversionError(
            f"expected one input and one output, got {len(graph.input)}/{len(graph.output)}"
        )
    renames = {graph.input[0].name: INPUT_NAME, graph.output[0].name: OUTPUT_NAME}
    for node in graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    graph.input[0].name = INPUT_NAME
    graph.output[0].name = OUTPUT_NAME
    for value in (graph.input[0], graph.output[0]):
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_param = BATCH_DIM
    return proto


def set_metadata(proto: onnx.ModelProto, spec: ModelSpec) -> None:
    """Replace the ``skinlesion.*`` metadata_props with ``spec``; other props are kept."""
    keep = [(p.key, p.value) for p in proto.metadata_props if not p.key.startswith("skinlesion.")]
    del proto.metadata_props[:]
    for key, value in [*keep, *spec.to_metadata().items()]:
        proto.metadata_props.add(key=key, value=value)


def read_spec(path: Path) -> ModelSpec:
    proto = onnx.load(str(path), load_external_data=False)
    return ModelSpec.from_metadata({p.key: p.value for p in proto.metadata_props})


def convert(
    source: Path,
    output: Path,
    overrides: SpecOverrides | None = None,
    layout: Layout = "auto",
    opset: int = DEFAULT_OPSET,
) -> ModelSpec:
    """Convert ``source`` (Keras HDF5) to FP32 ONNX at ``output``; returns the written spec.

    With ``layout="auto"`` both NHWC and NCHW (tf2onnx ``inputs_as_nchw``, which removes the
    layout Transposes) are built and timed on one thread; the faster one is kept.
    """
    if opset < 17:
        raise ConversionError(f"opset {opset} < 17 is not supported")
    stored = check_hdf5(source)
    model = load_keras(source)
    spec = resolve_spec(source, model, overrides or SpecOverrides(), stored)
    check_probabilities(model, spec)
    layouts = ["NHWC", "NCHW"] if layout == "auto" else [layout]
    candidates: dict[str, tuple[onnx.ModelProto, ModelSpec]] = {}
    for lay in layouts:
        log.info("converting %s (%s, opset %d)", source.name, lay, opset)
        try:
            proto = to_onnx(model, spec, lay, opset)
        except ConversionError:
            raise
        except Exception as exc:  # tf2onnx errors are untyped
            raise ConversionError(f"tf2onnx failed for {lay}: {exc}") from exc
        candidates[lay] = (proto, dataclasses.replace(spec, layout=lay))
    timings: dict[str, dict[str, float]] = {}
    if len(candidates) > 1:
        timings = measure_latency(
            {k: (p.SerializeToString(), s) for k, (p, s) in candidates.items()}, rounds=9
        )
        # per-image cost over the batch sizes the server uses (1 and micro-batches of 8)
        chosen = min(timings, key=lambda k: timings[k]["batch1"] + timings[k]["batch8"] / 8)
        log.info("layout timings (ms, 1 thread): %s -> %s", timings, chosen)
    else:
        chosen = layouts[0]
    proto, spec = candidates[chosen]
    _check_probe(model, proto, spec)
    extra = {
        **spec.extra,
        "precision": "fp32",
        "opset": opset,
        "layout_latency_ms": timings,
        "layout_choice": "measured" if timings else "requested",
    }
    spec = dataclasses.replace(spec, extra=extra)
    set_metadata(proto, spec)
    proto.producer_name = "skin-lesion conversion (tf2onnx)"
    onnx.checker.check_model(proto)
    save_onnx(proto, output)
    log.info("wrote %s (%s)", output, chosen)
    return spec


def _check_probe(model: keras.Model, proto: onnx.ModelProto, spec: ModelSpec) -> None:
    """A cheap sanity check on random inputs; ``verify`` does the real one on real images."""
    x_nhwc = random_input(dataclasses.replace(spec, layout="NHWC"), 4)
    x = x_nhwc.transpose(0, 3, 1, 2).copy() if spec.layout == "NCHW" else x_nhwc
    diff = float(
        np.abs(predict_keras(model, x_nhwc) - predict_onnx(proto.SerializeToString(), x)).max()
    )
    if diff > PROBE_TOLERANCE:
        raise ConversionError(f"ONNX differs from Keras by {diff:.2e} on a probe input")
