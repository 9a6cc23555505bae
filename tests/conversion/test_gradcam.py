"""Grad-CAM on a finer block: the ONNX backward pass agrees with finite differences."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from app.inference.preprocess import preprocess
from app.inference.spec import ModelSpec
from conversion import gradcam
from conversion.errors import GateError

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "skin_lesion.onnx"


@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    return onnx.load(str(SHIPPED))


@pytest.fixture(scope="module")
def batch(model: onnx.ModelProto, fixture_images: list[tuple[Path, str]]) -> np.ndarray:
    spec = ModelSpec.from_metadata({p.key: p.value for p in model.metadata_props})
    return np.stack([preprocess(p.read_bytes(), spec) for p, _ in fixture_images[:2]])


def test_each_member_has_a_finer_block_with_correct_weights(
    model: onnx.ModelProto, batch: np.ndarray
) -> None:
    from conversion.cam import find_head

    layers = gradcam.fine_layers(model)
    head = gradcam._shapes(model)[find_head(model).feature_map]
    producer = {o: n for n in model.graph.node for o in n.output}
    top = producer[find_head(model).feature_map]
    members = len(top.input) if top.op_type == "Concat" else 1
    assert len({layer.tensor for layer in layers}) == members  # one block per ensemble member
    assert len({(layer.height, layer.width) for layer in layers}) == 1
    for layer in layers:
        assert layer.height > head[2] and layer.width > head[3]
        assert gradcam.check_alphas(model, layer, batch) <= gradcam.ALPHA_MAX_REL_ERROR


@pytest.fixture
def without_relu6_masks(monkeypatch: pytest.MonkeyPatch) -> None:
    """A wrong backward pass: forget the ReLU6 masks, so the gradient flows where the forward
    pass was cut off."""
    original = gradcam._Builder.backward

    def no_masks(self: gradcam._Builder, node: onnx.NodeProto, grad: str) -> str:
        return grad if node.op_type == "Clip" else original(self, node, grad)

    monkeypatch.setattr(gradcam._Builder, "backward", no_masks)


@pytest.mark.usefixtures("without_relu6_masks")
def test_the_check_fails_on_a_wrong_backward_pass(
    model: onnx.ModelProto, batch: np.ndarray
) -> None:
    with pytest.raises(GateError, match="finite differences"):
        gradcam.check_alphas(model, gradcam.fine_layers(model)[0], batch)


def test_layer_cam_gradients_match_finite_differences_on_two_grids(
    model: onnx.ModelProto, batch: np.ndarray
) -> None:
    scales = gradcam.scale_layers(model)
    # one block per member on each grid, the second grid finer than the first
    assert [len(layers) for layers in scales] == [3, 3]
    (coarse,), (fine,) = ({(la.height, la.width) for la in layers} for layers in scales)
    assert fine[0] > coarse[0] and fine[1] > coarse[1]
    assert gradcam.check_layer_maps(model, scales, batch[:1]) <= gradcam.GRADIENT_MAX_REL_ERROR


def test_layer_cam_on_the_last_block_reads_each_member_s_part_of_the_head(
    model: onnx.ModelProto, batch: np.ndarray
) -> None:
    from conversion.cam import find_head

    head = find_head(model)
    last = gradcam.last_layers(model)
    # one per member, on the grid the pooled head reads, together as wide as the head's kernel
    grid = tuple(gradcam._shapes(model)[head.feature_map][2:])
    assert len(last) == 3 and {(la.height, la.width) for la in last} == {grid}
    assert sum(la.channels for la in last) == head.kernel.shape[0]
    assert gradcam.check_layer_maps(model, [last], batch[:1]) <= gradcam.GRADIENT_MAX_REL_ERROR


@pytest.mark.usefixtures("without_relu6_masks")
def test_layer_cam_check_fails_on_a_wrong_backward_pass(
    model: onnx.ModelProto, batch: np.ndarray
) -> None:
    with pytest.raises(GateError, match="Layer-CAM gradients disagree"):
        gradcam.check_layer_maps(model, gradcam.scale_layers(model)[:1], batch[:1])


def _gradient(model: onnx.ModelProto, x: np.ndarray, label: int, centred: bool) -> np.ndarray:
    """d (logit or centred logit) / d the first member's stride-16 activation, for one image."""
    import onnxruntime as ort
    from onnx import helper

    from app.inference.explain import LABEL
    from conversion.cam import find_head

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    builder = gradcam._Builder(probe, find_head(model), "test")
    tensor = gradcam.scale_layers(model)[0][0].tensor
    grad = builder.gradients(builder.seed(centred), [tensor])[tensor]
    probe.graph.node.append(helper.make_node("Identity", [grad], ["grad_out"]))
    probe.graph.output.append(
        helper.make_tensor_value_info("grad_out", onnx.TensorProto.FLOAT, None)
    )
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    out: np.ndarray = session.run(["grad_out"], {name: x[None], LABEL: np.array([label])})[0]
    return out


def test_the_centred_seed_is_the_logit_minus_the_mean_logit(
    model: onnx.ModelProto, batch: np.ndarray
) -> None:
    plain = np.stack([_gradient(model, batch[0], c, centred=False) for c in range(7)])
    centred = _gradient(model, batch[0], 2, centred=True)
    expected = plain[2] - plain.mean(axis=0)
    scale = float(np.abs(plain[2]).max())
    assert float(np.abs(centred - expected).max()) <= 1e-4 * scale
    assert float(np.abs(centred - plain[2]).max()) > 1e-2 * scale  # it is not the plain one
