"""The FP16 copy for CUDA is checked against FP32; the INT8 recipes keep each member's first layer
in FP32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from app.inference.preprocess import preprocess
from conversion.cam import find_head
from conversion.convert import read_spec
from conversion.errors import GateError
from conversion.fp16 import check, to_fp16
from conversion.int8_sweep import DIAGNOSIS, first_convs, recipes, verdict

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "skin_lesion.onnx"


@pytest.fixture(scope="module")
def batch(fixture_images: list[tuple[Path, str]]) -> np.ndarray:
    spec = read_spec(SHIPPED)
    return np.stack([preprocess(p.read_bytes(), spec) for p, _ in fixture_images[:6]])


def test_fp16_agrees_with_fp32_and_keeps_float32_inputs(tmp_path: Path, batch: np.ndarray) -> None:
    out = tmp_path / "half.onnx"
    to_fp16(SHIPPED, out)
    model = onnx.load(str(out))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    assert read_spec(out).extra["precision"] == "fp16"
    result = check(SHIPPED, out, batch)
    assert result["top1_agreement"] >= 0.99 and result["max_abs_prob_diff"] < 0.05


def test_the_fp16_check_fails_on_a_wrong_file(tmp_path: Path, batch: np.ndarray) -> None:
    out = tmp_path / "half.onnx"
    to_fp16(SHIPPED, out)
    model = onnx.load(str(out))
    head = find_head(onnx.load(str(SHIPPED)))
    kernels = [i for i in model.graph.initializer if tuple(i.dims) == head.kernel.shape]
    assert kernels, "the dense kernel was not found in the FP16 file"
    shuffled = numpy_helper.to_array(kernels[0])[:, ::-1].copy()  # classes swapped around
    kernels[0].CopyFrom(numpy_helper.from_array(shuffled, kernels[0].name))
    onnx.save(model, str(out))
    with pytest.raises(GateError, match="FP16 disagrees"):
        check(SHIPPED, out, batch)


def test_int8_recipes_keep_every_members_first_conv_in_fp32() -> None:
    model = onnx.load(str(SHIPPED))
    producer = {o: n for n in model.graph.node for o in n.output}
    top = producer[find_head(model).feature_map]
    members = len(top.input) if top.op_type == "Concat" else 1
    first = first_convs(model)
    assert len(first) == members
    weights = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.name in first:  # a stem: it reads the 3 colour channels
            assert weights[node.input[1]].dims[1] == 3
    for name, config in recipes(model).items():
        if "first" in name:
            assert set(first) <= set(config.exclude_nodes)
        if DIAGNOSIS not in name:  # the candidates: the fast U8S8 kind only
            assert config.activation_type == "uint8" and config.weight_type == "int8"


def test_a_diagnosis_row_never_makes_int8_preferred() -> None:
    vnni = {"model": "x", "avx512_vnni": True, "amx_int8": False, "avx2": True}
    diagnosis = {"recipe": f"16-bit weights {DIAGNOSIS}", "pays": True}
    candidate = {"recipe": "QDQ minmax", "pays": False}
    assert verdict([diagnosis, candidate], vnni).startswith("FP32 preferred")
    assert verdict([diagnosis, {**candidate, "pays": True}], vnni) == "INT8 preferred"
    no_vnni = {**vnni, "avx512_vnni": False}
    assert verdict([{**candidate, "pays": True}], no_vnni).startswith("open")
