"""Fast checks of the peers and edge harness. Nothing here builds a venv or starts a peer: the
full measurement is ``python -m benchmarks peers`` (the quick run in test_quick.py skips a peer
whose venv is missing)."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.images import Sample
from benchmarks.peers import suite as peers
from benchmarks.registry import suite_named
from benchmarks.report import render, with_latest_suites
from benchmarks.stats import Figure
from benchmarks.targets import evaluate_targets

REPO = Path(__file__).resolve().parents[2]


def test_triton_request_carries_the_jpeg_as_one_bytes_element() -> None:
    body, headers = peers.triton_body(Sample("a.jpg", b"\xff\xd8\xffJPEG"))
    size = int(headers["inference-header-content-length"])
    header = json.loads(body[:size])
    (tensor,) = header["inputs"]
    assert tensor["datatype"] == "BYTES" and tensor["shape"] == [1, 1]
    # Triton's BYTES serialisation: a 4-byte little-endian length before each element.
    assert body[size:] == struct.pack("<I", 7) + b"\xff\xd8\xffJPEG"
    assert tensor["parameters"]["binary_data_size"] == len(body) - size


def test_triton_answer_gives_the_top_class() -> None:
    parse = peers.triton_label(["akiec", "bcc", "mel"])
    answer = {"outputs": [{"name": "probabilities", "data": [0.1, 0.7, 0.2]}]}
    assert parse(json.dumps(answer).encode()) == "bcc"


def test_floor_finds_the_file_part_of_a_multipart_body() -> None:
    # The floor's module loads a model at import; its parser is checked in a subprocess-free way
    # by reading the function's source into a namespace of its own.
    source = (REPO / "benchmarks" / "peers" / "floor_app.py").read_text()
    start = source.index("def file_part")
    namespace: dict[str, Any] = {}
    exec(source[start : source.index("\n\n\n", start)], namespace)
    from benchmarks.load import BOUNDARY, multipart_body

    body = multipart_body("image", Sample("x.jpg", b"\xff\xd8\xff\r\n--not-the-end"))
    content_type = f"multipart/form-data; boundary={BOUNDARY}".encode()
    assert namespace["file_part"](body, content_type) == b"\xff\xd8\xff\r\n--not-the-end"


# Drives the floor's ASGI callable with one upload and prints the status it answers.
_FLOOR_ONCE = """
import floor_app  # first, as uvicorn imports it: nothing has loaded numpy yet
import asyncio, sys
from benchmarks.load import BOUNDARY, multipart_body
from benchmarks.images import Sample

async def once(data):
    body = multipart_body("image", Sample("x.jpg", data))
    scope = {"type": "http", "path": "/predict", "method": "POST",
             "headers": [(b"content-type", f"multipart/form-data; boundary={BOUNDARY}".encode())]}
    sent = []
    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}
    async def send(message):
        sent.append(message)
    await floor_app.app(scope, receive, send)
    return sent[0]["status"]

status = asyncio.run(once(open(sys.argv[1], "rb").read()))
from threadpoolctl import threadpool_info
blas = [p["num_threads"] for p in threadpool_info() if p["internal_api"] == "openblas"]
print(max(blas, default=1), status)
"""


@pytest.mark.parametrize(
    ("gated", "image", "status"),
    [(True, "lesion", 200), (True, "black", 422), (False, "black", 200)],
)
def test_the_gated_floor_refuses_what_the_service_s_gate_refuses(
    tmp_path: Path, gated: bool, image: str, status: int
) -> None:
    import cv2
    import numpy as np

    path = REPO / "tests" / "fixtures" / "images" / "ISIC_0024329.jpg"
    if image == "black":
        path = tmp_path / "black.jpg"
        cv2.imwrite(str(path), np.zeros((450, 600, 3), np.uint8))
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": f"{REPO}:{REPO / 'benchmarks' / 'peers'}",
        "PEER_MODEL": str(REPO / "models" / "skin_lesion.onnx"),
    }
    if gated:
        env["PEER_GATE"] = str(peers._gate_file(REPO / "models" / "skin_lesion.onnx"))
    done = subprocess.run(
        [sys.executable, "-c", _FLOOR_ONCE, str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    blas_threads, answered = done.stdout.split()[-2:]
    assert answered == str(status)
    # One BLAS thread per product, as in the service, though cv2 loads numpy before ``app``.
    assert blas_threads == "1"


def test_quick_builds_nothing_and_says_which_venv_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(peers, "WORK", tmp_path / "peers")
    assert peers.ensure_venv("bentoml", build=False) is None
    assert not (tmp_path / "peers").exists()


def test_a_venv_is_reused_only_while_its_pins_are_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(peers, "WORK", tmp_path)
    root = tmp_path / "floor"
    root.mkdir()
    (root / ".pins").write_text((peers.PEERS_DIR / "floor.txt").read_text())
    assert peers.ensure_venv("floor", build=False) == root
    (root / ".pins").write_text("numpy==0.0\n")
    assert peers.ensure_venv("floor", build=False) is None


@pytest.mark.parametrize("name", ["floor", "bentoml", "pytriton"])
def test_pins_pin_every_package(name: str) -> None:
    lines = (peers.PEERS_DIR / f"{name}.txt").read_text().splitlines()
    reqs = [line for line in lines if line.strip() and not line.startswith("#")]
    assert reqs and all("==" in line for line in reqs), reqs
    if name == "pytriton":  # 0.7 needs numpy < 2; 0.5.x corrupts BYTES inputs
        assert any(line.startswith("nvidia-pytriton==0.7.") for line in reqs)
        assert any(line.startswith("numpy==1.") for line in reqs)


def _peers_run() -> dict[str, Any]:
    figures: dict[str, Any] = {}
    rounds = {
        "service": ([6.0, 6.2, 5.9], [300.0, 310.0, 305.0]),
        "floor": ([5.5, 5.6, 5.4], [330.0, 320.0, 325.0]),
        "floor_gated": ([5.8, 5.9, 5.7], [310.0, 305.0, 300.0]),
        "bentoml": ([9.0, 9.5, 8.8], [180.0, 170.0, 190.0]),
        "pytriton": ([9.5, 9.0, 9.9], [200.0, 210.0, 190.0]),
    }
    for name, (p50, rps) in rounds.items():
        figures[f"{name}/p50_c1"] = Figure.of(p50, "ms").as_dict()
        figures[f"{name}/p99_c1"] = Figure.of([v * 1.3 for v in p50], "ms").as_dict()
        figures[f"{name}/rps_c8"] = Figure.of(rps, "req/s").as_dict()
        figures[f"{name}/parity_top_class"] = Figure.value(43, "images", 43).as_dict()
        if name != "service":
            ratios_p50 = [s / p for s, p in zip(rounds["service"][0], p50, strict=True)]
            ratios_rps = [s / p for s, p in zip(rounds["service"][1], rps, strict=True)]
            figures[f"ratio/service_vs_{name}/p50_c1"] = Figure.of(ratios_p50, "x").as_dict()
            figures[f"ratio/service_vs_{name}/rps_c8"] = Figure.of(ratios_rps, "x").as_dict()
    gate_p50 = [g / f for g, f in zip(rounds["floor_gated"][0], rounds["floor"][0], strict=True)]
    gate_rps = [g / f for g, f in zip(rounds["floor_gated"][1], rounds["floor"][1], strict=True)]
    figures["ratio/floor_gated_vs_floor/p50_c1"] = Figure.of(gate_p50, "x").as_dict()
    figures["ratio/floor_gated_vs_floor/rps_c8"] = Figure.of(gate_rps, "x").as_dict()
    params = {"rounds": 3, "servers": {n: n for n in rounds}}
    return {"suites": {"peers": {"figures": figures, "params": params, "skipped": {}}}}


def test_peer_targets_read_the_median_of_the_per_round_ratios() -> None:
    verdicts = {v.target: v for v in evaluate_targets(_peers_run()) if v.source == "peers #13"}
    bento = verdicts["req/s at c=8 vs BentoML"]
    assert bento.met is True and bento.measured.startswith("1.67× (rounds: 3, 1.61–1.82×)")
    floor_p50 = verdicts["p50 at c=1 vs the bare ASGI floor"]
    assert floor_p50.met is False and floor_p50.measured.startswith("1.09×")  # over 1.05
    assert verdicts["req/s at c=8 vs the bare ASGI floor"].met is False  # 0.94 < 0.95


def test_peers_section_has_the_issue_columns_and_the_ratios() -> None:
    text = "\n".join(suite_named("peers").section(_peers_run()))
    for column in ("p50 c=1 ms", "p99 c=1 ms", "req/s c=8", "RSS MB", "cold start s", "venv MB"):
        assert column in text
    assert "| service / floor | 1.09 (1.09–1.11) | 0.94 (0.91–0.97) | 3 |" in text
    assert "| floor_gated / floor | 1.05 (1.05–1.06) | 0.94 (0.92–0.95) | 3 |" in text
    assert "43/43" in text
    assert "Where the throughput at c=8 goes" not in text  # no thread figures: no table


def test_peers_section_breaks_the_throughput_down_where_threads_were_read() -> None:
    run = _peers_run()
    figures = run["suites"]["peers"]["figures"]
    for name, busy, loop, waits in (("service", 1.6, 1.4, 9.0), ("floor", 1.8, 0.6, 3.0)):
        figures[f"{name}/busy_cores_c8"] = Figure.of([busy, busy], "cores").as_dict()
        figures[f"{name}/server_cpu_ms_c8"] = Figure.of([10.0, 12.0], "ms CPU").as_dict()
        figures[f"{name}/loop_cpu_ms_c8"] = Figure.of([loop, loop], "ms CPU").as_dict()
        figures[f"{name}/worker_cpu_ms_c8"] = Figure.of([9.5, 9.5], "ms CPU").as_dict()
        figures[f"{name}/worker_waits_c8"] = Figure.of([waits, waits], "per request").as_dict()
    text = "\n".join(suite_named("peers").section(run))
    assert "other threads' waits /req" in text
    assert "| service | 305 | 1.60 | 11.00 | 1.40 | 9.50 | 9.0 |" in text
    assert "| floor | 325 | 1.80 | 11.00 | 0.60 | 9.50 | 3.0 |" in text
    assert "| bentoml | 180 |" not in text  # BentoML serves from child processes


def test_report_keeps_a_suite_run_on_its_own_beside_the_full_run() -> None:
    full = {"_file": "a.json", "created_utc": "2026-12-04T10:00", "quick": False}
    full["suites"] = {"service": {"figures": {}}}
    alone = {**_peers_run(), "_file": "b.json", "created_utc": "2026-12-04T11:00"}
    alone["quick"] = False
    quick = {"_file": "c.json", "created_utc": "2026-12-04T12:00", "quick": True, "suites": {}}
    merged = with_latest_suites(alone, [full, alone, quick])
    assert merged["suites"]["service"]["_from"] == "a.json"
    assert "_from" not in merged["suites"]["peers"]
    page = render(merged, [])
    assert "## Peers" in page and "come from `a.json`" in page


def test_edge_target_pins_one_core_and_caps_the_address_space(tmp_path: Path) -> None:
    from benchmarks.artifacts import resolve_models
    from benchmarks.edge import edge_target

    models = resolve_models()
    if models.serving is None:
        pytest.skip("no model in models/manifest.json")
    target, token = edge_target(models, tmp_path / "data", core=1, address_space_mib=768)
    limits = (f"--as={768 << 20}", f"--stack={2 << 20}")
    assert target.argv[:6] == ("taskset", "-c", "1", "prlimit", *limits)
    assert target.env["APP_ORT_THREADS"] == "1" and target.env["APP_API_AUTH"] == "1"
    assert token.startswith("slk_")
    check = subprocess.run(
        [sys.executable, "-m", "app", "create-token", "bench", "--name", "again"],
        env={**target.env, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0 and check.stdout.strip().startswith("slk_"), check.stderr
