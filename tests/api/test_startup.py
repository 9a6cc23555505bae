"""A missing, corrupt or wrong-shaped model refuses start-up with a one-line reason."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from app.__main__ import serve
from app.config import Settings
from app.inference.classifier import Classifier, ModelLoadError
from app.inference.spec import ModelSpec


def wrong_shape_model(path: Path) -> Path:
    """A valid ONNX file with our metadata whose input is (N, 10), not an image."""
    onnx = pytest.importorskip("onnx", reason="needs the conversion extra (onnx)")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 10])
    y = helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 10])
    graph = helper.make_graph([helper.make_node("Softmax", ["input"], ["probs"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in ModelSpec(name="wrong").to_metadata().items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    return path


@pytest.fixture
def bad_models(tmp_path: Path) -> dict[str, Path]:
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"this is not a protobuf" * 10)
    return {"missing": tmp_path / "nope.onnx", "corrupt": corrupt}


@pytest.mark.parametrize("kind", ["missing", "corrupt"])
def test_serve_refuses_a_bad_model_with_one_line(
    kind: str,
    bad_models: dict[str, Path],
    api_settings: Settings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = serve(replace(api_settings, model_path=bad_models[kind], port=1))
    assert code != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err


def test_classifier_refuses_a_wrong_shaped_model(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="input shape"):
        Classifier(wrong_shape_model(tmp_path / "wrong.onnx"), "cpu", 1)


def test_classifier_refuses_a_model_without_metadata(tmp_path: Path, model_path: Path) -> None:
    onnx = pytest.importorskip("onnx", reason="needs the conversion extra (onnx)")
    model = onnx.load(str(model_path))
    del model.metadata_props[:]
    path = tmp_path / "bare.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ModelLoadError, match="metadata"):
        Classifier(path, "cpu", 1)


def test_sqlite_server_loads_neither_pydantic_nor_asyncpg(tmp_path: Path) -> None:
    # Start-up time and RSS are targets (issue 5): Litestar's pydantic plugins are left out
    # (app/main.py) and a SQLite process hides asyncpg (app/db/drivers.py), as `serve` does.
    # A fresh interpreter, because this suite's other imports load both.
    code = """
import sys
from app.config import Settings
from app.db.drivers import hide_unused_postgres_driver
settings = Settings.from_env()
assert hide_unused_postgres_driver(settings.database_url)
from litestar.testing import TestClient
from app.main import create_app
with TestClient(create_app(settings)) as client:  # lifespan: migrations run on SQLite
    assert client.get("/health/ready").status_code == 200
    assert client.get("/login").status_code == 200
print(sorted(m for m in ("pydantic", "asyncpg") if sys.modules.get(m)))
"""
    env = {**os.environ, "APP_DEV": "1", "APP_DATA_DIR": str(tmp_path)}
    env.pop("APP_DATABASE_URL", None)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "app.sqlite3").is_file()


def test_postgres_settings_keep_the_driver() -> None:
    from app.db.drivers import hide_unused_postgres_driver

    assert not hide_unused_postgres_driver("postgresql://127.0.0.1:5432/test")
