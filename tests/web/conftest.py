"""Fixtures for the clinic web app: a tiny real ONNX model, real SQLite files, real PostgreSQL."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from argon2 import PasswordHasher
from litestar import Litestar
from litestar.testing import TestClient

from app.config import Settings
from app.inference.spec import ModelSpec
from app.main import create_app

PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/test"
PASSWORD = "correct horse battery"
# Cheap argon2 for tests only; production keeps argon2-cffi's defaults (app/auth/passwords.py).
FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


def build_tiny_model(path: Path) -> Path:
    """A 7-class ONNX classifier (mean colour -> linear -> softmax) with our metadata."""
    onnx = pytest.importorskip(
        "onnx", reason="building the test model needs `onnx` (conversion extra)"
    )
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = rng.normal(0, 3.0, (3, 7)).astype(np.float32)
    bias = np.zeros(7, np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["input", "axes"], ["mean"], keepdims=0),
            helper.make_node("MatMul", ["mean", "w"], ["logits0"]),
            helper.make_node("Add", ["logits0", "b"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 32, 32, 3])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 7])],
        [
            numpy_helper.from_array(np.array([1, 2], np.int64), "axes"),
            numpy_helper.from_array(weights, "w"),
            numpy_helper.from_array(bias, "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    spec = ModelSpec(
        name="tiny-test-model",
        input_width=32,
        input_height=32,
        version="t1",
        input_scale=1 / 255,
        mel_threshold=0.3,
    )
    for key, value in spec.to_metadata().items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    return path


def build_tiny_cam_model(model_path: Path) -> Path:
    """Its CAM model, where the served model's explanations look for it (conversion/cam.py)."""
    import onnx

    from app.inference.explain import cam_model_path
    from app.inference.spec import ModelSpec
    from conversion.cam import add_class_maps

    model = onnx.load(str(model_path))
    spec = ModelSpec.from_metadata({p.key: p.value for p in model.metadata_props})
    cam_path = cam_model_path(model_path, spec)
    onnx.save(add_class_maps(model)[0], str(cam_path))
    return cam_path


def write_quality_gate(model_path: Path) -> Path:
    """A quality-only gate file for a test model, with the shipped model's thresholds."""
    import json

    import onnx

    from app.config import default_model_path
    from app.inference.gate import gate_path

    model = onnx.load(str(model_path))
    spec = ModelSpec.from_metadata({p.key: p.value for p in model.metadata_props})
    shipped = default_model_path()
    shipped_gate = json.loads(gate_path(shipped, ModelSpec(name="skin_lesion")).read_text())
    doc = {
        "schema": 1,
        "model": spec.name,
        "quality": shipped_gate["quality"],
        "distribution": None,
    }
    target = gate_path(model_path, spec)
    target.write_text(json.dumps(doc))
    return target


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = build_tiny_model(tmp_path_factory.mktemp("model") / "tiny.onnx")
    build_tiny_cam_model(model)
    write_quality_gate(model)
    return model


@pytest.fixture
def web_settings(tmp_path: Path, tiny_model: Path) -> Settings:
    """Production-like settings (not dev mode) on a fresh SQLite file."""
    return Settings(
        data_dir=tmp_path / "data",
        model_path=tiny_model,
        providers="cpu",
        ort_threads=1,
        dev=False,
        secret_key="test-secret-key-" + "x" * 32,
        storage_key="A" * 43 + "=",
        api_auth=True,
        batch_max=8,
        registration="open",  # production's default is invite; the tests register through it
    )


def migrated(settings: Settings) -> Settings:
    from app.db.migrate import migrate

    migrate(settings)
    return settings


@pytest.fixture
def sqlite_settings(web_settings: Settings) -> Settings:
    return migrated(web_settings)


def _pg_reachable() -> str | None:
    import asyncpg

    async def probe() -> None:
        conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=3)
        await conn.close()

    try:
        asyncio.run(probe())
    except Exception as exc:  # any failure means "not reachable here"
        return f"{type(exc).__name__}: {exc}"
    return None


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database per test (dropped afterwards); skips when unreachable."""
    import asyncpg

    problem = _pg_reachable()
    if problem:
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 is unreachable ({problem})")
    name = f"clinic_test_{uuid.uuid4().hex[:10]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(PG_ADMIN_DSN)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_settings(request: pytest.FixtureRequest, web_settings: Settings) -> Settings:
    """The same tests on a SQLite file and on a fresh PostgreSQL database."""
    if request.param == "postgres":
        url = request.getfixturevalue("pg_url")
        return migrated(replace(web_settings, database_url=url))
    return migrated(web_settings)


def make_client(settings: Settings) -> TestClient[Litestar]:
    app = create_app(settings)
    app.state.password_hasher = FAST_HASHER
    return TestClient(app=app)


@pytest.fixture
def client(sqlite_settings: Settings) -> Iterator[TestClient[Litestar]]:
    with make_client(sqlite_settings) as c:
        yield c


CSRF_RE = re.compile(r'name="_csrf_token" value="([^"]+)"')


def csrf(client: TestClient[Litestar], path: str = "/login") -> str:
    page = client.get(path)
    match = CSRF_RE.search(page.text)
    assert match, f"no CSRF token on {path}"
    return match.group(1)


def register(client: TestClient[Litestar], username: str, password: str = PASSWORD) -> None:
    token = csrf(client, "/register")
    r = client.post(
        "/register",
        data={
            "username": username,
            "password": password,
            "confirm": password,
            "_csrf_token": token,
        },
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
    assert r.headers["location"] == "/dashboard"


def login(client: TestClient[Litestar], username: str, password: str = PASSWORD) -> int:
    token = csrf(client, "/login")
    r = client.post(
        "/login",
        data={"username": username, "password": password, "_csrf_token": token},
        follow_redirects=False,
    )
    return r.status_code


def upload(client: TestClient[Litestar], patient: str, files: list[tuple[str, bytes]]) -> str:
    """Upload images as the logged-in user; returns the Location it redirects to."""
    token = csrf(client, "/analyses/new")
    r = client.post(
        "/analyses",
        data={"patient": patient, "_csrf_token": token},
        files=[("images", (name, data, "image/jpeg")) for name, data in files],
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
    return r.headers["location"]
