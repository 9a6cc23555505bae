"""``cam``: the FP32 model plus an output of class activation maps, for Grad-CAM explanations.

For a head of global average pooling -> Dense(logits) (ours: GAP -> dropout -> Dense), Grad-CAM
on the last convolutional map *is* the class activation map: the gradient of logit c with
respect to the map A is the constant w_c / (h*w), so Grad-CAM's weights are the Dense kernel.
The added output ``class_maps`` is A projected through that kernel, [N, classes, h, w], computed
in the same run as the probabilities; the serving install then needs no gradients and no `onnx`.

The gate is an identity, not a tolerance tuned to pass: averaging each class map over h*w and
adding the Dense bias must give back the logits, so softmax of it must equal the model's own
probabilities, on real images.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import helper, numpy_helper

# The output names the server reads, and the class index it feeds as the second input.
from app.inference.explain import (
    CLASS_MAPS,
    FINE_MAPS,
    LABEL,
    LAYER_CAM_LAST,
    LAYER_CAM_OUTPUTS,
)
from conversion.errors import ConversionError, GateError
from conversion.files import save_onnx

if TYPE_CHECKING:
    from conversion.gradcam import FineLayer

log = logging.getLogger(__name__)

CAM_MAX_PROB_DIFF = 1e-5  # float32 rounding of a sum reordered; a wrong head is off by >1e-2
_PASS_THROUGH = {"Squeeze", "Flatten", "Reshape", "Identity", "Dropout"}


@dataclass(frozen=True, slots=True)
class CamHead:
    """Where the pooled feature map meets the Dense layer in an ONNX graph."""

    feature_map: str  # tensor name of the map before pooling
    channels_last: bool  # NHWC (ReduceMean over axes 1, 2) or NCHW (GlobalAveragePool)
    kernel: np.ndarray  # [channels, classes]
    bias: np.ndarray  # [classes], zeros when the head has none
    pooled: str = ""  # tensor name of the pooled features [N, channels] the Dense layer reads


def consumers_of(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """Tensor name -> the nodes that read it."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return consumers


def find_head(model: onnx.ModelProto) -> CamHead:
    """The GAP -> Dense head that feeds the model's probabilities, or a ConversionError."""
    graph = model.graph
    consumers = consumers_of(graph)
    weights = {init.name: numpy_helper.to_array(init) for init in graph.initializer}

    for pool in graph.node:
        channels_last = _spatial_mean_layout(pool, weights)
        if channels_last is None:
            continue
        tensor = pool.output[0]
        while len(consumers.get(tensor, [])) == 1 and consumers[tensor][0].op_type in _PASS_THROUGH:
            tensor = consumers[tensor][0].output[0]
        # tf2onnx writes Dense as MatMul (+ Add for the bias); an exporter's Gemm is not found
        # and gets the ConversionError below rather than an untested path.
        dense = [n for n in consumers.get(tensor, []) if n.op_type == "MatMul"]
        if len(dense) != 1 or dense[0].input[1] not in weights:
            continue
        kernel = weights[dense[0].input[1]].astype(np.float32)
        bias = _following_bias(dense[0].output[0], consumers, weights, kernel.shape[1])
        return CamHead(
            pool.input[0], channels_last, kernel, bias.astype(np.float32).ravel(), dense[0].input[0]
        )
    raise ConversionError(
        "no global-average-pooling -> Dense head found: class activation maps need one "
        "(a Flatten -> Dense head, like the upstream 28x28 model's, has no spatial map to show)"
    )


def _spatial_mean_layout(node: onnx.NodeProto, weights: dict[str, np.ndarray]) -> bool | None:
    """True for a mean over NHWC's H and W, False for GlobalAveragePool (NCHW), else None."""
    if node.op_type == "GlobalAveragePool":
        return False
    if node.op_type != "ReduceMean":
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    axes = attrs.get("axes")  # opset < 18 keeps axes as an attribute, later as an input
    if axes is None and len(node.input) > 1 and node.input[1] in weights:
        axes = weights[node.input[1]].tolist()
    return True if sorted(axes or []) == [1, 2] else None


def _following_bias(
    tensor: str,
    consumers: dict[str, list[onnx.NodeProto]],
    weights: dict[str, np.ndarray],
    classes: int,
) -> np.ndarray:
    after = consumers.get(tensor, [])
    if len(after) == 1 and after[0].op_type == "Add":
        other = [name for name in after[0].input if name != tensor]
        if other and other[0] in weights:
            return np.broadcast_to(weights[other[0]], (classes,)).copy()
    return np.zeros(classes, np.float32)


def add_class_maps(model: onnx.ModelProto) -> tuple[onnx.ModelProto, CamHead]:
    """A copy of ``model`` with a second output, ``class_maps`` [N, classes, h, w]."""
    head = find_head(model)
    cam = onnx.ModelProto()
    cam.CopyFrom(model)
    graph = cam.graph
    kernel = numpy_helper.from_array(head.kernel, "cam_kernel")
    graph.initializer.append(kernel)
    nodes = []
    source = head.feature_map
    if not head.channels_last:
        nodes.append(helper.make_node("Transpose", [source], ["cam_nhwc"], perm=[0, 2, 3, 1]))
        source = "cam_nhwc"
    nodes += [
        helper.make_node("MatMul", [source, "cam_kernel"], ["cam_nhwk"]),
        helper.make_node("Transpose", ["cam_nhwk"], [CLASS_MAPS], perm=[0, 3, 1, 2]),
    ]
    graph.node.extend(nodes)
    classes = head.kernel.shape[1]
    graph.output.append(
        helper.make_tensor_value_info(CLASS_MAPS, onnx.TensorProto.FLOAT, ["N", classes, "h", "w"])
    )
    onnx.checker.check_model(cam)
    return cam, head


def _finer_layers(model: onnx.ModelProto) -> list[FineLayer]:
    """The block nearest the head whose grid is finer, one per ensemble member (MobileNet-0.25
    at 160x120: 7x10 against 3x5). Measured on val lesion references for that model: it pointed
    at the lesion in 64 % of images against 45 % for the last block; the 15x20 block pointed worse
    (28 %), and an average of the three no better (65 %)."""
    from conversion.gradcam import fine_layers

    try:
        return fine_layers(model)
    except ConversionError as exc:
        log.warning("no fine Grad-CAM maps: %s", exc)
        return []


def _layer_cam_scales(model: onnx.ModelProto) -> list[list[FineLayer]]:
    """Each member's block nearest the head at stride 16 and at stride 8 (for the 3 x
    MobileNetV2-0.35 at 200x150: 10x13 and 19x25). Their Layer-CAM maps' geometric mean was the
    best of the candidates on val lesion references (models/card/localisation_candidates.json)."""
    from conversion.gradcam import scale_layers

    try:
        return scale_layers(model)
    except ConversionError as exc:
        log.warning("no Layer-CAM maps: %s", exc)
        return []


def check_class_maps(probabilities: np.ndarray, class_maps: np.ndarray, bias: np.ndarray) -> float:
    """Largest |softmax(mean_hw(class_maps) + bias) - probabilities|; raises GateError."""
    logits = class_maps.mean(axis=(2, 3)) + bias
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    rebuilt = shifted / shifted.sum(axis=1, keepdims=True)
    diff = float(np.abs(rebuilt - probabilities).max())
    if not diff <= CAM_MAX_PROB_DIFF:
        raise GateError(
            f"class maps do not rebuild the probabilities: max |diff| {diff:.2e} > "
            f"{CAM_MAX_PROB_DIFF:.0e}; the head found is not the one the model uses"
        )
    return diff


def build_cam_model(fp32_path: Path, out_path: Path, batch: np.ndarray) -> float:
    """Write the CAM model for ``fp32_path`` after checking it on ``batch`` (model inputs).

    Returns the largest probability difference of the identity gate (see the module doc).
    """
    import onnxruntime as ort

    # it builds on this module
    from conversion.gradcam import (
        add_fine_maps,
        add_layer_maps,
        check_alphas,
        check_layer_maps,
        last_layers,
    )

    source = onnx.load(str(fp32_path))
    cam, head = add_class_maps(source)
    fine = _finer_layers(source)
    scales = _layer_cam_scales(source) if fine else []
    if scales:
        # What the server shows: Layer-CAM on two finer grids and on the last block from one
        # backward pass, its gradients checked element by element against finite differences.
        scales = [*scales, last_layers(source)]
        gradient_error = check_layer_maps(source, scales, batch[:2])
        # Grad-CAM on the stride-16 blocks from the same pass: what the server showed before
        # (with the class maps), kept so `localise` measures both on the same images.
        names = [*LAYER_CAM_OUTPUTS, LAYER_CAM_LAST]
        cam = add_layer_maps(cam, scales, names, gradcam_output=FINE_MAPS)
        log.info(
            "Layer-CAM maps on grids %s, gradients within %.3f of finite differences",
            ", ".join(f"{s[0].height}x{s[0].width}" for s in scales),
            gradient_error,
        )
    elif fine:
        # Grad-CAM on a finer block beside the exact class maps: each member's weights are
        # checked against finite differences of the model's own logits before it is written.
        alpha_error = max(check_alphas(source, layer, batch[:4]) for layer in fine)
        cam = add_fine_maps(cam, fine, FINE_MAPS)
        log.info(
            "fine Grad-CAM maps on %s (%dx%d), weights within %.3f of finite differences",
            ", ".join(layer.tensor for layer in fine),
            fine[0].height,
            fine[0].width,
            alpha_error,
        )
    session = ort.InferenceSession(cam.SerializeToString(), providers=["CPUExecutionProvider"])
    base = ort.InferenceSession(str(fp32_path), providers=["CPUExecutionProvider"])
    input_name = base.get_inputs()[0].name
    # By name: a model with the gate's features output has more than one output already.
    probs_name = base.get_outputs()[0].name
    (expected,) = base.run([probs_name], {input_name: batch})
    feeds = {input_name: batch}
    if LABEL in [i.name for i in session.get_inputs()]:  # the fine maps' class, unused here
        feeds[LABEL] = np.array([0], np.int64)
    probabilities, class_maps = session.run([probs_name, CLASS_MAPS], feeds)
    # Not bit-equal once the fine maps read intermediate tensors: onnxruntime then fuses fewer
    # layers, and float32 sums come out in another order.
    drift = float(np.abs(probabilities - expected).max())
    if not drift <= CAM_MAX_PROB_DIFF:
        raise GateError(
            f"the CAM model's probabilities differ from the model it was built from by {drift:.1e}"
        )
    diff = check_class_maps(probabilities, class_maps, head.bias)
    save_onnx(cam, out_path)
    log.info(
        "wrote %s: class maps %s, identity gate max |diff| %.1e on %d images",
        out_path,
        "x".join(str(d) for d in class_maps.shape[2:]),
        diff,
        len(batch),
    )
    return diff


def _shown(grids: dict[str, list[int]]) -> dict[str, object]:
    """The map the server returns (app/inference/explain.py shown_map) and its grid: the finest
    of the maps it is made of."""
    from app.inference.explain import shown_map

    name, made_of = shown_map(grids)
    return {"map": name, "grid": grids[made_of[-1]]}


def record_in_manifest(manifest_path: Path, cam_path: Path, gate: dict[str, object]) -> None:
    """Add the CAM model to ``manifest.json`` (files.cam), beside the models it explains."""
    import json

    from app.inference.classifier import file_sha256
    from conversion.files import write_text

    manifest = json.loads(manifest_path.read_text())
    import onnxruntime as ort

    session = ort.InferenceSession(str(cam_path), providers=["CPUExecutionProvider"])
    first = session.get_inputs()[0]
    feeds = {
        first.name: np.zeros([d if isinstance(d, int) else 1 for d in first.shape], np.float32)
    }
    feeds |= {i.name: np.array([0], np.int64) for i in session.get_inputs()[1:]}  # the label
    outputs = session.run(None, feeds)
    grids = {
        o.name: list(value.shape[2:])
        for o, value in zip(session.get_outputs(), outputs, strict=True)
        if o.name in (CLASS_MAPS, FINE_MAPS, *LAYER_CAM_OUTPUTS, LAYER_CAM_LAST)
    }
    manifest["files"]["cam"] = {
        "path": cam_path.relative_to(manifest_path.parent).as_posix(),
        "sha256": file_sha256(cam_path),
        "size": cam_path.stat().st_size,
        "precision": "fp32",
        "purpose": "explanations (class_maps, fine_maps, layer_cam, layer_cam_fine, "
        "layer_cam_last outputs); "
        "not used to classify",
        "grids": grids,  # [rows, columns] of each map the model outputs
        "shown": _shown(grids),
        "identity_gate": gate,
    }
    write_text(manifest_path, json.dumps(manifest, indent=2) + "\n")
