"""The conversion pipeline end to end on tiny models: convert, quantise, verify, build, Triton.

TensorFlow-heavy work is done once per module (module-scoped fixtures) to keep this fast.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")

from app.inference.classifier import Classifier
from app.inference.classifier import file_sha256 as sha256_file
from app.inference.preprocess import preprocess
from app.inference.spec import HAM10000_LABELS, ModelSpec
from conversion.__main__ import main
from conversion.convert import convert, read_spec
from conversion.images import Sample
from conversion.quantize import QuantConfig, quantize
from conversion.source import SPEC_ATTR, SpecOverrides
from conversion.triton import parse_pbtxt
from conversion.verify import verify

pytestmark = pytest.mark.tensorflow

TINY = 16


def _tiny_model(classes: int = 7, seed: int = 0):  # type: ignore[no-untyped-def]
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((TINY, TINY, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, use_bias=False)(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(classes, activation="softmax")(x)
    return keras.Model(inputs, outputs)


def _save_with_spec(model, path: Path) -> Path:  # type: ignore[no-untyped-def]
    import h5py

    model.save(path)
    spec = {
        "name": "tiny",
        "input_scale": 1.0,
        "input_offset": 0.0,
        "mel_threshold": 0.3,
        "training_data": "none (test)",
        "license": "test",
    }
    with h5py.File(path, "a") as fh:
        fh.attrs[SPEC_ATTR] = json.dumps(spec)
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("conversion")


@pytest.fixture(scope="module")
def tiny_h5(work: Path) -> Path:
    return _save_with_spec(_tiny_model(), work / "tiny.h5")


@pytest.fixture(scope="module")
def tiny_onnx(work: Path, tiny_h5: Path) -> dict[str, Path]:
    out = {}
    for layout in ("NHWC", "NCHW"):
        out[layout] = work / f"tiny_{layout}.onnx"
        convert(tiny_h5, out[layout], layout=layout)  # type: ignore[arg-type]
    return out


@pytest.fixture(scope="module")
def upstream_onnx(work: Path, upstream_h5: Path) -> Path:
    out = work / "upstream.onnx"
    convert(upstream_h5, out, SpecOverrides(name="upstream_skin", input_scale=1 / 255), "NHWC")
    return out


@pytest.fixture(scope="module")
def samples(fixture_images: list[tuple[Path, str]]) -> list[Sample]:
    return [Sample(p, dx) for p, dx in fixture_images]


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_convert_tiny_round_trip_matches_keras(
    layout: str, tiny_h5: Path, tiny_onnx: dict[str, Path], fixture_images: list[tuple[Path, str]]
) -> None:
    import keras

    clf = Classifier(tiny_onnx[layout], providers="cpu")
    assert clf.spec.layout == layout
    assert clf.spec.mel_threshold == 0.3 and clf.spec.name == "tiny"
    data = [p.read_bytes() for p, _ in fixture_images]
    batch = np.stack([preprocess(d, clf.spec) for d in data])
    nhwc = ModelSpec(**{**_fields(clf.spec), "layout": "NHWC"})
    keras_in = np.stack([preprocess(d, nhwc) for d in data])
    expected = np.asarray(keras.models.load_model(tiny_h5, compile=False)(keras_in))
    np.testing.assert_allclose(clf.run(batch), expected, atol=1e-4)
    graph = onnx.load(str(tiny_onnx[layout])).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"  # dynamic batch
    if layout == "NCHW":  # inputs_as_nchw: no layout Transpose left in front of the conv
        assert graph.node[0].op_type != "Transpose"


def _fields(spec: ModelSpec) -> dict[str, object]:
    return {f: getattr(spec, f) for f in spec.__dataclass_fields__}


def test_convert_upstream_metadata_present_and_parsed(
    upstream_onnx: Path, upstream_h5: Path
) -> None:
    proto = onnx.load(str(upstream_onnx))
    assert proto.opset_import[0].version >= 17
    keys = {p.key for p in proto.metadata_props}
    assert {"skinlesion.labels", "skinlesion.input_scale", "skinlesion.source_sha256"} <= keys
    clf = Classifier(upstream_onnx, providers="cpu")
    assert clf.spec.labels == HAM10000_LABELS
    assert clf.spec.input_size == (28, 28)
    assert clf.spec.input_scale == pytest.approx(1 / 255)
    assert clf.spec.source_sha256 == sha256_file(upstream_h5)
    assert clf.spec.extra["precision"] == "fp32" and clf.spec.extra["opset"] == 17


def test_verify_passes_on_good_and_fails_on_damaged_model(
    work: Path, upstream_onnx: Path, upstream_h5: Path, samples: list[Sample]
) -> None:
    good = verify(upstream_onnx, keras_h5=upstream_h5, samples=samples)
    assert good.passed, good.render()
    assert good.parity["keras_fp32"]["max_abs_prob_diff"] <= 1e-4

    proto = onnx.load(str(upstream_onnx))
    weight = max(proto.graph.initializer, key=lambda t: len(t.raw_data))
    arr = onnx.numpy_helper.to_array(weight).copy()
    arr.flat[: arr.size // 4] *= -3.0  # a damaged weight tensor
    weight.CopyFrom(onnx.numpy_helper.from_array(arr, weight.name))
    damaged = work / "damaged.onnx"
    onnx.save(proto, str(damaged))
    bad = verify(damaged, keras_h5=upstream_h5, samples=samples)
    assert not bad.passed
    assert "keras_fp32.max_abs_prob_diff" in {g.name for g in bad.failed()}


def test_verify_cli_exit_codes(
    work: Path, upstream_onnx: Path, upstream_h5: Path, fixtures_dir: Path
) -> None:
    images = fixtures_dir / "images"
    args = [
        "--keras",
        str(upstream_h5),
        "--images",
        str(images),
        "--labels-csv",
        str(images / "labels.csv"),
        "--split",
        "all",
    ]
    assert main(["verify", str(upstream_onnx), *args]) == 0
    assert main(["verify", str(work / "damaged.onnx"), *args]) == 1


def test_quantize_upstream_int8_loads_with_metadata(
    work: Path, upstream_onnx: Path, fixture_images: list[tuple[Path, str]], samples: list[Sample]
) -> None:
    out = work / "upstream_int8.onnx"
    spec = quantize(upstream_onnx, out, [p for p, _ in fixture_images], QuantConfig())
    assert spec.extra["precision"] == "int8"
    clf = Classifier(out, providers="cpu")
    assert clf.spec.extra["quantization"]["activation_type"] == "uint8"
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    report = verify(upstream_onnx, out, samples=samples)
    assert "fp32_int8" in report.parity  # gates evaluated (14 images: too few to assert them)


@pytest.mark.parametrize("case", ["not_hdf5", "weights_only", "eight_classes"])
def test_convert_bad_input_clear_error_no_output(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "bad.h5"
    if case == "not_hdf5":
        source.write_text("this is not a model")
        expected = "not an HDF5"
    elif case == "weights_only":
        source = tmp_path / "bad.weights.h5"
        _tiny_model().save_weights(source)
        expected = "weights only"
    else:
        _save_with_spec(_tiny_model(classes=8), source)
        expected = "--labels"
    out = tmp_path / "out.onnx"
    assert main(["convert", str(source), "-o", str(out), "--layout", "NHWC"]) == 2
    assert expected in capsys.readouterr().err
    assert not out.exists()
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".out.onnx*"))


def test_convert_eight_classes_with_labels(tmp_path: Path) -> None:
    source = _save_with_spec(_tiny_model(classes=8), tmp_path / "eight.h5")
    out = tmp_path / "eight.onnx"
    codes = "a,b,c,d,e,f,g,mel"
    assert (
        main(["convert", str(source), "-o", str(out), "--layout", "NHWC", "--labels", codes]) == 0
    )
    assert read_spec(out).labels == tuple(codes.split(","))


def test_build_writes_manifest_and_triton_repo(
    work: Path, tiny_h5: Path, fixture_images: list[tuple[Path, str]], split_csv: Path
) -> None:
    from conversion.build import build

    split = split_csv
    out, triton = work / "models", work / "models" / "triton"
    manifest = build(
        tiny_h5,
        out,
        images_dir=fixture_images[0][0].parent,
        split_csv=split,
        quant=QuantConfig(calibration_count=7),
        triton_repo=triton,
        extra_manifests=(work / "root" / "manifest.json",),
        max_retries=0,
        fallback_16bit=False,
        latency_rounds=3,
    )
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["preferred"] == manifest["preferred"]
    assert on_disk["preferred"] in {e["path"] for e in on_disk["files"].values()}
    for entry in on_disk["files"].values():
        path = out / entry["path"]
        assert entry["sha256"] == sha256_file(path) and entry["size"] == path.stat().st_size
    assert on_disk["parity"]["keras_fp32"]["max_abs_prob_diff"] <= 1e-4
    assert on_disk["parity"]["split"] == "test" and on_disk["parity"]["images"] == 4
    assert on_disk["quantization"]["selection"] == {
        "split": "val",
        "images": 5,
        "chosen_attempt": 0,
    }
    assert set(on_disk["latency_ms_1thread"]["int8"]) == {"batch1", "batch8"}
    assert {"tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime"} <= on_disk["versions"].keys()
    if not on_disk["files"]["int8"]["gates_passed"]:
        assert on_disk["preferred"] == on_disk["files"]["fp32"]["path"]
    moved = json.loads((work / "root" / "manifest.json").read_text())
    assert (work / "root" / moved["preferred"]).resolve() == (out / on_disk["preferred"]).resolve()

    # Triton: the config must agree with the ONNX model it ships
    model_dir = triton / "tiny"
    config = parse_pbtxt((model_dir / "config.pbtxt").read_text())
    model = onnx.load(str(model_dir / "1" / "model.onnx"))
    assert config["platform"] == ["onnxruntime_onnx"]
    assert config["name"] == ["tiny"]
    assert config["max_batch_size"][0] >= 8
    assert "dynamic_batching" in config and config["instance_group"][0]["kind"] == ["KIND_CPU"]
    for key, values in (("input", model.graph.input), ("output", model.graph.output)):
        assert len(config[key]) == len(values)  # outputs: probabilities and the gate's features
        for entry, value in zip(config[key], values, strict=True):
            dims = [d.dim_value for d in value.type.tensor_type.shape.dim[1:]]
            assert entry["name"] == [value.name] and entry["dims"] == dims
            assert entry["data_type"] == ["TYPE_FP32"]
    assert on_disk["files"]["gate"]["mode"] == "quality+distribution"
    # the quality checks' view: the model's own picture where it is large enough, else 160x120
    gate_doc = json.loads((out / on_disk["files"]["gate"]["path"]).read_text())
    meta = {p.key: p.value for p in model.metadata_props}
    width, height = ModelSpec.from_metadata(meta).input_size
    large = width >= 160 and height >= 120
    assert gate_doc["quality"]["view"] == ([width, height] if large else [160, 120])
    assert (model_dir / "labels.txt").read_text().split() == list(HAM10000_LABELS)
