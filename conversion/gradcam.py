"""Grad-CAM on an earlier, finer block, as one ONNX graph: no TensorFlow and no autograd at serving.

The last block of MobileNet-0.25 at 160x120 is a 3x5 grid: one cell is a fifth of the image,
too coarse to point at a lesion. Grad-CAM (Selvaraju et al., 2017) on an earlier block needs
the gradient of each class's logit with respect to that block's activations. Between that block
and the head this backbone is a plain chain of Pad, Conv, Mul/Add (folded batch norm) and Clip
(ReLU6), so the backward pass is written here as ONNX nodes: a Conv's input gradient is a
ConvTranspose with the same weights, a Clip's is a 0/1 mask of where it passed its input, a
constant Mul scales, an Add and a Pad (cropped back) pass it on. The gradients of all classes
are computed at once, as a batch of ``classes`` per image.

The maps are ``ReLU(sum_k alpha_ck A_k)`` with ``alpha_ck`` the spatial mean of the gradient,
as in Grad-CAM. A parity check compares the graph's ``alpha`` with central finite differences of
the model's own logits on real images (``check_alphas``).
"""

from __future__ import annotations

import logging
from collections.abc import Container
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from app.inference.explain import LABEL  # the second input the server feeds: the class index
from conversion.cam import CamHead, consumers_of, find_head
from conversion.errors import ConversionError, GateError

log = logging.getLogger(__name__)

GRADIENT_PREFIX = "layercam_grad:"  # + a layer's tensor: exposed only in the checked copy
ALPHAS = "gradcam_alphas"  # [N, 1, channels]: exposed only in the copy that is checked
ALPHA_MAX_REL_ERROR = 0.05  # measured 0.018; a wrong stride, pad or kernel gives O(1)
EPS = 1e-3  # smaller: float32 noise; larger: steps cross ReLU6 kinks (measured)
LAYER_CAM_SCALES = 2  # stride 16 and stride 8 (a stride-4 block pointed worse on val: 89 %)
# Directional derivatives, relative to |grad|. float32 noise depends on the CPU's kernels: on the
# shipped model the worst of six images was under 0.01 with AVX-512, 0.053 on an AVX2-only EPYC
# (2026-12-06, which failed the 0.05 this bound once was); a backward pass without the ReLU6
# masks gives 1.77, and a shifted map O(1). 0.2 is 4x the noise seen and 9x below that defect.
GRADIENT_MAX_REL_ERROR = 0.2
# A random direction moves every element, so it crosses more ReLU6 kinks than EPS on one channel:
# at 1e-3 up to 0.08 of |grad| off; at 1e-4 the error is float32 noise (3e-4: no better).
DIRECTION_EPS = 1e-4
LAYER_MAP_MAX_DIFF = 1e-4  # the graph's maps against numpy's from the same tensors, relative


@dataclass(frozen=True, slots=True)
class FineLayer:
    tensor: str  # the activation the maps are drawn on
    channels: int
    height: int
    width: int


def _shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    inferred = shape_inference.infer_shapes(model)
    out: dict[str, list[int]] = {}
    for v in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]:
        out[v.name] = [d.dim_value for d in v.type.tensor_type.shape.dim]
    return out


def _data_inputs(node: onnx.NodeProto, weights: Container[str]) -> list[str]:
    """The inputs of ``node`` that are tensors computed by the graph, not its weights."""
    return [i for i in node.input if i and i not in weights]


def candidate_layers(
    model: onnx.ModelProto, finer_than: tuple[int, int] | None = None
) -> list[FineLayer]:
    """ReLU/Clip activations (NCHW) with a finer grid than the head's (or ``finer_than``'s
    rows), nearest the head first."""
    head = find_head(model)
    if head.channels_last:
        raise ConversionError("fine Grad-CAM maps are built for NCHW models only")
    shapes = _shapes(model)
    rows = finer_than[0] if finer_than else shapes[head.feature_map][2]
    out = []
    for node in reversed(model.graph.node):
        shape = shapes.get(node.output[0], [])
        if node.op_type in ("Clip", "Relu") and len(shape) == 4 and shape[2] > rows:
            out.append(FineLayer(node.output[0], shape[1], shape[2], shape[3]))
    return out


def fine_layers(
    model: onnx.ModelProto, finer_than: tuple[int, int] | None = None
) -> list[FineLayer]:
    """The finer block nearest the head on each branch into it: one for a single backbone, one
    per member for an ensemble whose members' maps are concatenated before the pooling.
    Finer than the head's grid, or than ``finer_than`` (rows, columns).

    The search walks back from each branch breadth-first, so a residual block's two paths are
    both seen and the first finer activation met is the nearest.
    """
    finer = {layer.tensor: layer for layer in candidate_layers(model, finer_than)}
    weights = {i.name for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    branches = _branches(model)
    found = []
    for branch in branches:
        queue, seen = [branch], {branch}
        while queue:
            tensor = queue.pop(0)
            if tensor in finer:
                found.append(finer[tensor])
                break
            node = producer.get(tensor)
            for name in _data_inputs(node, weights) if node is not None else []:
                if name not in seen:
                    seen.add(name)
                    queue.append(name)
    if len({(f.height, f.width) for f in found}) > 1:
        raise ConversionError("the members' finer blocks have different grids")
    return found


def _branches(model: onnx.ModelProto) -> list[str]:
    """The last feature map of each member the head reads: the Concat's inputs for an ensemble,
    the head's feature map for a single backbone."""
    head = find_head(model)
    weights = {i.name for i in model.graph.initializer}
    top = next((n for n in model.graph.node if head.feature_map in n.output), None)
    if top is not None and top.op_type == "Concat":
        return _data_inputs(top, weights)
    return [head.feature_map]


def last_layers(model: onnx.ModelProto) -> list[FineLayer]:
    """Each member's last feature map, the grid the pooled head reads (5x7 for MobileNetV2 at
    200x150): the coarsest of the three Layer-CAM scales. There the gradient of a logit is the
    head's weight spread evenly over the grid, so its Layer-CAM weighs each channel by its
    positive head weight."""
    if find_head(model).channels_last:
        raise ConversionError("Layer-CAM maps are built for NCHW models only")
    shapes = _shapes(model)
    return [FineLayer(t, *shapes[t][1:4]) for t in _branches(model)]


def scale_layers(model: onnx.ModelProto, scales: int = LAYER_CAM_SCALES) -> list[list[FineLayer]]:
    """``scales`` grids of blocks, each finer than the one before: per grid, each member's
    block nearest the head (MobileNetV2 at 200x150: 10x13 at stride 16, 19x25 at stride 8)."""
    out: list[list[FineLayer]] = []
    grid = None
    for _ in range(scales):
        layers = fine_layers(model, grid)
        if not layers:
            raise ConversionError(f"no block finer than {grid or 'the head'} for Layer-CAM")
        out.append(layers)
        grid = (layers[0].height, layers[0].width)
    return out


def logit_kernel(head: CamHead, centred: bool = False) -> np.ndarray:
    """The Dense kernel [features, classes]; ``centred``: of each logit minus the mean logit."""
    return head.kernel - head.kernel.mean(axis=1, keepdims=True) if centred else head.kernel


class _Builder:
    """Appends the backward nodes to a copy of the model."""

    def __init__(self, model: onnx.ModelProto, head: CamHead, prefix: str) -> None:
        self.model = model
        self.prefix = prefix  # names stay unique when several maps are added
        self.graph = model.graph
        self.head = head
        self.shapes = _shapes(model)
        self.weights = {i.name: numpy_helper.to_array(i) for i in self.graph.initializer}
        self.producer = {o: n for n in self.graph.node for o in n.output}
        self.classes = 1  # maps per image: the backward pass runs for the requested class only
        self.count = 0

    def name(self, stem: str) -> str:
        self.count += 1
        return f"{self.prefix}_{stem}_{self.count}"

    def const(self, array: np.ndarray, stem: str = "c") -> str:
        name = self.name(stem)
        self.graph.initializer.append(numpy_helper.from_array(array, name))
        return name

    def node(self, op: str, inputs: list[str], stem: str, **attrs: Any) -> str:
        out = self.name(stem)
        self.graph.node.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def data_input(self, node: onnx.NodeProto) -> str:
        """The one input of ``node`` that is not a weight."""
        data = _data_inputs(node, self.weights)
        if len(data) != 1:
            raise ConversionError(f"{node.op_type} {node.name}: not a single-input layer")
        return data[0]

    def gradients(self, seed: str, starts: list[str]) -> dict[str, str]:
        """Reverse mode from the head's feature map back to each of ``starts``.

        Only nodes on a path from a start to the head take part; a tensor read by two of them
        (a residual block's input) gets the sum of their gradients.
        """
        consumers = consumers_of(self.graph)
        reached, queue = set(starts), list(starts)  # tensors that depend on a start
        while queue:
            for node in consumers.get(queue.pop(), []):
                for out in node.output:
                    if out not in reached:
                        reached.add(out)
                        queue.append(out)
        if self.head.feature_map not in reached:
            raise ConversionError(f"{starts} do not lead to the head")
        grads, found = {self.head.feature_map: seed}, {}
        for node in reversed(list(self.graph.node)):  # ONNX nodes are in topological order
            if node.output[0] not in grads:
                continue
            grad = grads.pop(node.output[0])
            if node.output[0] in starts:
                found[node.output[0]] = grad  # complete: every consumer came later
            # On past a start only towards a deeper one: inputs outside ``reached`` are skipped.
            for name, part in self.backward_inputs(node, grad, reached):
                grads[name] = (
                    self.node("Add", [grads[name], part], "gsum") if name in grads else part
                )
        missing = [s for s in starts if s not in found]
        if missing:
            raise ConversionError(f"no gradient reached {missing}")
        return {s: found[s] for s in starts}

    def backward_inputs(
        self, node: onnx.NodeProto, grad: str, reached: set[str]
    ) -> list[tuple[str, str]]:
        """(input, its gradient) for each input of ``node`` that depends on a start."""
        data = _data_inputs(node, self.weights)
        inputs = [i for i in data if i in reached]
        if node.op_type == "Add" and len(data) == 2:
            return [(i, grad) for i in inputs]  # a residual sum passes the gradient to both
        if node.op_type == "Concat":
            axis = helper.get_attribute_value(next(a for a in node.attribute if a.name == "axis"))
            axis = axis % 4 + 1  # gradients carry a class axis after the batch
            out, offset = [], 0
            for name in node.input:
                width = self.shapes[name][axis - 1]
                if name in reached:
                    bounds = [
                        self.const(np.array([v], np.int64)) for v in (offset, offset + width, axis)
                    ]
                    out.append((name, self.node("Slice", [grad, *bounds], "gcat")))
                offset += width
            return out
        return [(inputs[0], self.backward(node, grad))] if inputs else []

    def to4d(self, grad: str, shape: list[int]) -> str:
        return self.node("Reshape", [grad, self.const(np.array([-1, *shape[1:]], np.int64))], "r4")

    def to5d(self, grad: str, shape: list[int]) -> str:
        target = np.array([-1, self.classes, *shape[1:]], np.int64)
        return self.node("Reshape", [grad, self.const(target)], "r5")

    def backward(self, node: onnx.NodeProto, grad: str) -> str:
        """Gradient w.r.t. the node's data input, given the gradient of its output (5-D)."""
        x = self.data_input(node)
        xs, ys = self.shapes[x], self.shapes[node.output[0]]
        op = node.op_type
        if op in ("Clip", "Relu"):
            low = self.const(np.array(0.0, np.float32)) if op == "Relu" else node.input[1]
            passed = self.node("Greater", [x, low], "gt")
            if op == "Clip" and len(node.input) > 2 and node.input[2]:
                below = self.node("Less", [x, node.input[2]], "lt")
                passed = self.node("And", [passed, below], "and")
            mask = self.node("Cast", [passed], "mask", to=onnx.TensorProto.FLOAT)
            mask = self.node("Unsqueeze", [mask, self.const(np.array([1], np.int64))], "m5")
            return self.node("Mul", [grad, mask], "gclip")
        if op == "Add":
            return grad  # a constant shift (folded batch norm)
        if op == "Mul":
            (scale,) = [self.weights[i] for i in node.input if i in self.weights]
            return self.node("Mul", [grad, self.const(scale.astype(np.float32)[None])], "gmul")
        if op == "Pad":
            pads = self.weights[node.input[1]].astype(np.int64)  # [begin per axis, end per axis]
            if np.any(pads[:2]) or np.any(pads[4:6]):
                raise ConversionError("only spatial padding is supported")
            starts = np.array([pads[2], pads[3]], np.int64)
            ends = np.array([ys[2] - pads[6], ys[3] - pads[7]], np.int64)
            axes = np.array([3, 4], np.int64)
            return self.node(
                "Slice", [grad, self.const(starts), self.const(ends), self.const(axes)], "gpad"
            )
        if op == "Conv":
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
                raise ConversionError(f"Conv {node.name}: auto_pad is not supported")
            if any(d != 1 for d in attrs.get("dilations", [1, 1])):
                raise ConversionError(f"Conv {node.name}: dilation is not supported")
            weight = node.input[1]
            kernel = attrs.get("kernel_shape") or list(self.weights[weight].shape[2:])
            strides = attrs.get("strides", [1, 1])
            pads = attrs.get("pads", [0, 0, 0, 0])
            extra = [
                xs[2 + i] - (strides[i] * (ys[2 + i] - 1) + kernel[i] - pads[i] - pads[i + 2])
                for i in range(2)
            ]
            g4 = self.to4d(grad, ys)
            back = self.node(
                "ConvTranspose",
                [g4, weight],
                "gconv",
                group=int(attrs.get("group", 1)),
                strides=strides,
                pads=pads,
                kernel_shape=kernel,
                output_padding=extra,
            )
            return self.to5d(back, xs)
        raise ConversionError(f"no backward rule for {op} ({node.name})")

    def seed(self, centred: bool = False) -> str:
        """d logit / d head map for the class given as the ``label`` input: [N, 1, C, h, w].

        ``centred``: of the class's logit minus the mean of all logits, the part of the logit
        the softmax reads (evidence that raises every logit alike changes no probability).
        """
        fmap = self.head.feature_map
        shape = self.shapes[fmap]
        kernel = logit_kernel(self.head, centred)
        # d logit_c / d A_last = kernel[:, c] / (h*w) everywhere (the mean pool + Dense head)
        seeds = (kernel.T / (shape[2] * shape[3])).astype(np.float32)[:, :, None, None]
        if LABEL not in [i.name for i in self.graph.input]:
            self.graph.input.append(
                helper.make_tensor_value_info(LABEL, onnx.TensorProto.INT64, [1])
            )
        # One class's gradient, not all seven: the backward pass is most of an explanation's
        # cost (measured 3.4 ms for all classes against a 1.1 ms prediction).
        seed = self.node("Gather", [self.const(seeds, "seeds"), LABEL], "seed", axis=0)
        zeros = self.node("Mul", [fmap, self.const(np.array(0.0, np.float32))], "zero")
        zeros = self.node("Unsqueeze", [zeros, self.const(np.array([1], np.int64))], "z5")
        return self.node("Add", [zeros, seed], "seed5")

    def build_layer_cam(
        self, scales: list[list[FineLayer]], grads: dict[str, str], expose_gradients: bool = False
    ) -> list[str]:
        """Append Layer-CAM maps, one [N, 1, h, w] per scale (its members summed), from the
        gradients ``grads`` (tensor -> its gradient); returns their tensor names."""
        axes = self.const(np.array([1], np.int64))
        names = []
        for layers in scales:
            total = None
            for layer in layers:
                shape = np.array([-1, layer.channels, layer.height, layer.width], np.int64)
                grad = self.node("Reshape", [grads[layer.tensor], self.const(shape)], "g4")
                mean = self.node("ReduceMean", [layer.tensor], "amean", axes=[2, 3], keepdims=1)
                above = self.node("Sub", [layer.tensor, mean], "above")
                weighted = self.node("Mul", [self.node("Relu", [grad], "gpos"), above], "lcw")
                maps = self.node("ReduceSum", [weighted, axes], "lc", keepdims=1)
                total = maps if total is None else self.node("Add", [total, maps], "lcsum")
                if expose_gradients:
                    name = f"{GRADIENT_PREFIX}{layer.tensor}"
                    self.graph.node.append(helper.make_node("Identity", [grad], [name]))
                    dims: list[str | int] = ["N", layer.channels, layer.height, layer.width]
                    self.graph.output.append(
                        helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, dims)
                    )
            assert total is not None
            names.append(total)
        return names

    def build(
        self,
        layers: list[FineLayer],
        expose_alphas: bool = False,
        grads: dict[str, str] | None = None,
    ) -> str:
        """Append the maps for ``layers`` (summed: the members' evidence adds up in the logit),
        from ``grads`` where given (a backward pass shared with Layer-CAM); returns the maps'
        tensor name."""
        if grads is None:
            grads = self.gradients(self.seed(), [layer.tensor for layer in layers])
        height, width = layers[0].height, layers[0].width
        total = None
        for layer in layers:
            alphas = self.node(
                "ReduceMean", [grads[layer.tensor]], "alpha", axes=[3, 4], keepdims=0
            )  # opset 17
            alphas = self.node(
                "Reshape",
                [alphas, self.const(np.array([-1, self.classes, layer.channels], np.int64))],
                "alpha3",
            )
            flat = self.node(
                "Reshape",
                [
                    layer.tensor,
                    self.const(np.array([-1, layer.channels, height * width], np.int64)),
                ],
                "aflat",
            )
            maps = self.node("MatMul", [alphas, flat], "mm")
            total = maps if total is None else self.node("Add", [total, maps], "msum")
            if expose_alphas and len(layers) == 1:
                self.graph.node.append(helper.make_node("Identity", [alphas], [ALPHAS]))
                self.graph.output.append(
                    helper.make_tensor_value_info(
                        ALPHAS, onnx.TensorProto.FLOAT, ["N", self.classes, layer.channels]
                    )
                )
        assert total is not None
        target = np.array([-1, self.classes, height, width], np.int64)
        return self.node("Reshape", [total, self.const(target)], "maps")


def add_fine_maps(
    model: onnx.ModelProto, layers: list[FineLayer], output: str, expose_alphas: bool = False
) -> onnx.ModelProto:
    """A copy of ``model`` with ``output`` [N, 1, h, w]: the Grad-CAM map on ``layers`` (summed)
    of the class given as the ``label`` input, before the ReLU (the server clips and scales)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    builder = _Builder(out, find_head(model), f"gradcam_{output}")
    maps = builder.build(layers, expose_alphas)
    out.graph.node.append(helper.make_node("Identity", [maps], [output]))
    out.graph.output.append(
        helper.make_tensor_value_info(
            output,
            onnx.TensorProto.FLOAT,
            ["N", builder.classes, layers[0].height, layers[0].width],
        )
    )
    onnx.checker.check_model(out)
    return out


def add_layer_maps(
    model: onnx.ModelProto,
    scales: list[list[FineLayer]],
    outputs: list[str],
    expose_gradients: bool = False,
    gradcam_output: str | None = None,
) -> onnx.ModelProto:
    """A copy of ``model`` with one output [N, 1, h, w] per scale (named by ``outputs``): the
    Layer-CAM map of the class given as the ``label`` input, the members summed, before the
    ReLU (the server clips and scales). With ``gradcam_output``, also Grad-CAM on the first
    scale from the same backward pass (onnxruntime runs every node whatever is fetched, so a
    second pass would cost its full time on every explanation).

    Layer-CAM (Jiang et al., 2021) weighs each activation by its own positive gradient instead of
    a channel's mean gradient, so the map keeps the block's spatial detail. Here each channel's
    activation is taken relative to its mean over the image: ``sum_k relu(dy/dA_k) (A_k -
    mean(A_k))``, the evidence a place adds beyond the image's average place (what the pooled
    head reads), so skin that raises a channel everywhere no longer counts as evidence.
    """
    if len(outputs) != len(scales):
        raise ValueError("one output name per scale")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    builder = _Builder(out, find_head(model), "layercam")
    grads = builder.gradients(builder.seed(), [layer.tensor for ls in scales for layer in ls])
    maps = builder.build_layer_cam(scales, grads, expose_gradients)
    if gradcam_output:
        outputs, scales = [*outputs, gradcam_output], [*scales, scales[0]]
        maps.append(builder.build(scales[0], grads=grads))
    for name, tensor, layers in zip(outputs, maps, scales, strict=True):
        out.graph.node.append(helper.make_node("Identity", [tensor], [name]))
        out.graph.output.append(
            helper.make_tensor_value_info(
                name, onnx.TensorProto.FLOAT, ["N", 1, layers[0].height, layers[0].width]
            )
        )
    onnx.checker.check_model(out)
    return out


class _Tail:
    """The network from ``layer`` on, cut out of the model, to perturb that layer's activation."""

    def __init__(self, model: onnx.ModelProto, layer: FineLayer) -> None:
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        logits = _logits_tensor(model, find_head(model))
        self.layer = layer.tensor
        self.input = model.graph.input[0].name
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        for name in (layer.tensor, logits):
            probe.graph.output.append(
                helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
            )
        self.probe = ort.InferenceSession(probe.SerializeToString(), providers=providers)
        # An ensemble's other members still read the image: the tail then takes both.
        tail = onnx.utils.Extractor(probe).extract_model([self.input, layer.tensor], [logits])
        used = {i for n in tail.graph.node for i in n.input}
        for unused in [i for i in tail.graph.input if i.name not in used]:
            tail.graph.input.remove(unused)
        self.tail = ort.InferenceSession(tail.SerializeToString(), providers=providers)
        self.reads_image = self.input in {i.name for i in self.tail.get_inputs()}

    def activation(self, x: np.ndarray) -> np.ndarray:
        """The layer's activation for one image [C, H, W] -> [1, C, h, w]."""
        out: np.ndarray = self.probe.run([self.layer], {self.input: x[None]})[0]
        return out

    def slope(
        self, x: np.ndarray, activation: np.ndarray, direction: np.ndarray, eps: float = EPS
    ) -> np.ndarray:
        """Central difference of the logits [classes] along ``direction``, steps of ``eps``."""
        image = {self.input: x[None]} if self.reads_image else {}
        up = self.tail.run(None, {**image, self.layer: activation + eps * direction})[0]
        down = self.tail.run(None, {**image, self.layer: activation - eps * direction})[0]
        out: np.ndarray = (up - down)[0] / (2 * eps)
        return out


def check_layer_maps(
    model: onnx.ModelProto, scales: list[list[FineLayer]], batch: np.ndarray
) -> float:
    """Largest relative error of the graph's Layer-CAM gradients against central differences.

    Every element of the gradient counts in Layer-CAM, not only its mean, so the check is a
    directional derivative along a random direction V over the whole block: ``<grad, V>``
    against (logit(A + eps V) - logit(A - eps V)) / (2 eps), for every class, relative to
    ``|grad|`` (a map shifted by one cell or an unmasked ReLU6 is off by O(1)). The graph's maps
    must also equal the Layer-CAM sum computed here from the same gradients and activations.
    """
    import onnxruntime as ort

    names = [f"layercam_check_{i}" for i in range(len(scales))]
    checked = add_layer_maps(model, scales, names, expose_gradients=True)
    session = ort.InferenceSession(checked.SerializeToString(), providers=["CPUExecutionProvider"])
    tails = {layer.tensor: _Tail(model, layer) for layers in scales for layer in layers}
    input_name = session.get_inputs()[0].name
    classes = int(find_head(model).kernel.shape[1])
    rng = np.random.default_rng(0)
    worst = 0.0
    for x in batch:
        for c in range(classes):
            wanted = names + [f"{GRADIENT_PREFIX}{t}" for t in tails]
            values = session.run(wanted, {input_name: x[None], LABEL: np.array([c])})
            out = dict(zip(wanted, values, strict=True))
            for name, layers in zip(names, scales, strict=True):
                expected = np.zeros_like(out[name][0, 0])
                for layer in layers:
                    tail = tails[layer.tensor]
                    activation = tail.activation(x)
                    grad = out[f"{GRADIENT_PREFIX}{layer.tensor}"]
                    direction = rng.standard_normal(activation.shape).astype(np.float32)
                    numeric = tail.slope(x, activation, direction, DIRECTION_EPS)[c]
                    exact = float((grad * direction).sum())
                    norm = max(float(np.linalg.norm(grad)), 1e-9)
                    worst = max(worst, abs(numeric - exact) / norm)
                    above = activation[0] - activation[0].mean(axis=(1, 2), keepdims=True)
                    expected += (np.maximum(grad[0], 0) * above).sum(axis=0)
                diff = float(np.abs(out[name][0, 0] - expected).max())
                if not diff <= LAYER_MAP_MAX_DIFF * max(float(np.abs(expected).max()), 1e-6):
                    raise GateError(f"Layer-CAM map {name} differs from its definition by {diff}")
    if not worst <= GRADIENT_MAX_REL_ERROR:
        raise GateError(
            f"Layer-CAM gradients disagree with finite differences: relative error {worst:.3f} "
            f"> {GRADIENT_MAX_REL_ERROR}"
        )
    return worst


def check_alphas(
    model: onnx.ModelProto, layer: FineLayer, batch: np.ndarray, channels: int = 6
) -> float:
    """Largest relative error of the graph's Grad-CAM weights against central differences.

    ``alpha_ck`` is the mean over the grid of d logit_c / d A_k: the directional derivative of
    the logits along a uniform step on channel k. The tail of the network (``layer`` -> logits)
    is cut out of the model and run on A +- eps on a few channels.
    """
    import onnxruntime as ort

    head = find_head(model)
    checked = add_fine_maps(model, [layer], "gradcam_check_maps", expose_alphas=True)
    session = ort.InferenceSession(checked.SerializeToString(), providers=["CPUExecutionProvider"])
    tail = _Tail(model, layer)
    input_name = session.get_inputs()[0].name
    worst = 0.0
    rng = np.random.default_rng(0)
    classes = int(head.kernel.shape[1])
    for x in batch:
        activation = tail.activation(x)
        all_alphas = np.stack(  # [classes, channels]
            [
                session.run([ALPHAS], {input_name: x[None], LABEL: np.array([c])})[0][0, 0]
                for c in range(classes)
            ]
        )
        # Relative to the layer's largest weight: a channel whose weights are all near zero
        # (dead below every ReLU6) would otherwise turn float32 noise into a huge ratio.
        scale = max(float(np.abs(all_alphas).max()), 1e-6)
        channels_checked = rng.choice(
            layer.channels, size=min(channels, layer.channels), replace=False
        )
        for k in channels_checked:
            step = np.zeros_like(activation)
            step[:, k] = 1.0
            numeric = tail.slope(x, activation, step) / (layer.height * layer.width)
            exact = all_alphas[:, k]
            worst = max(worst, float(np.abs(numeric - exact).max()) / scale)
    if not worst <= ALPHA_MAX_REL_ERROR:
        raise GateError(
            f"Grad-CAM weights disagree with finite differences: relative error {worst:.3f} > "
            f"{ALPHA_MAX_REL_ERROR}"
        )
    return worst


def _logits_tensor(model: onnx.ModelProto, head: CamHead) -> str:
    """The Dense layer's output (+ bias): the logits before softmax."""
    consumers = consumers_of(model.graph)
    (dense,) = [n for n in consumers[head.pooled] if n.op_type == "MatMul"]
    after = consumers.get(dense.output[0], [])
    logits: str = (
        after[0].output[0] if len(after) == 1 and after[0].op_type == "Add" else dense.output[0]
    )
    return logits
