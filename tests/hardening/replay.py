"""Replay the hostile corpus against a running server and print what was tried and what held.

``python -m tests.hardening.replay`` (``make redteam``): starts the real server (dev mode, API
auth off, CPU), sends every hostile input to every image entry point (predict, a batch with
good images around it, explain, the live WebSocket), then stalls a body, and checks after each
that the server still answers ``/health/ready``. An attempt *holds* when the answer is a
client error (or, in a batch, that item's own error and the others' results) within
``LIMIT_S``, never a 5xx, a hang or a dead server. Exit status 1 when anything did not hold.
Generated at run time from ``tests/hardening/images.py``: nothing hostile is committed.
"""

from __future__ import annotations

import json
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import httpx
import numpy as np

from tests.hardening.images import odd_inputs, scan_bomb, zero_png
from tests.hardening.server import running_server

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
LIMIT_S = 5.0
# Of tests/hardening/images.py odd_inputs (all of which test_odd_inputs.py decodes in process):
# one of each kind of refusal, sent through every entry point.
REPLAYED_ODD_INPUTS = (
    "JPEG claiming 65535x65535",
    "JPEG claiming lossless coding",
    "PNG RGBA, fully transparent",
    "PNG with a 20 MB zTXt bomb",
    "DICOM HSV (retired)",
    "DICOM RLE, garbage",
    "DICOM pixel data twice",
    "DICOM JPEG holding a PNG",
)


def _corpus() -> dict[str, bytes]:
    from conversion.devset import _text_page, jpeg

    lesion = (FIXTURES / "images" / "ISIC_0024329.jpg").read_bytes()
    odd = odd_inputs(lesion)
    return {
        "JPEG scan bomb (20,000 scans)": scan_bomb(),
        "PNG decompression bomb": (FIXTURES / "generated" / "png_bomb.png").read_bytes(),
        "16-bit RGBA PNG, 20 MP": zero_png(5000, 4000, 16, 6),
        "truncated JPEG": lesion[: len(lesion) * 2 // 5],
        "text file named .jpg": (FIXTURES / "generated" / "not_an_image.jpg").read_bytes(),
        "empty file": b"",
        "GIF": (FIXTURES / "generated" / "lesion.gif").read_bytes(),
        "JPEG header, garbage after": lesion[:600] + bytes(50_000),
        "printed document": jpeg(_text_page(np.random.default_rng(1), 800, 600, (250, 250, 245))),
        "black frame": jpeg(np.zeros((450, 600, 3), np.uint8)),
        **{name: odd[name] for name in REPLAYED_ODD_INPUTS},
    }


@dataclass
class Attempt:
    entry: str
    name: str
    status: str
    ms: float
    held: bool


def _timed(call: Callable[[], str]) -> tuple[str, float]:
    started = time.perf_counter()
    try:
        status = call()
    except (httpx.TimeoutException, TimeoutError):
        status = "timeout"
    except (httpx.TransportError, OSError) as exc:
        status = f"connection error ({type(exc).__name__})"
    return status, (time.perf_counter() - started) * 1000


def replay() -> list[Attempt]:
    good = (FIXTURES / "images" / "ISIC_0024329.jpg").read_bytes()
    attempts: list[Attempt] = []
    with running_server(Path(tempfile.mkdtemp()) / "data") as server:
        url = server.url
        client = httpx.Client(base_url=url, timeout=LIMIT_S * 3)

        def alive() -> bool:
            try:
                return client.get("/health/ready", timeout=5).status_code == 200
            except httpx.TransportError:
                return False

        for name, data in _corpus().items():
            files = {"image": ("upload.jpg", data, "image/jpeg")}

            def predict(files: dict[str, tuple[str, bytes, str]] = files) -> str:
                return str(client.post("/api/v1/predict", files=files).status_code)

            def explain(files: dict[str, tuple[str, bytes, str]] = files) -> str:
                return str(client.post("/api/v1/explain", files=files).status_code)

            def batch(data: bytes = data) -> str:
                parts = [
                    ("images", (f"{i}.jpg", d, "image/jpeg"))
                    for i, d in enumerate((good, data, good))
                ]
                r = client.post("/api/v1/predict/batch", files=parts)
                if r.status_code != 200:
                    return str(r.status_code)
                items = r.json()["results"]
                ok = items[0]["result"] and items[2]["result"] and items[1]["error"]
                return f"200, item: {items[1]['error']}" if ok else "200, wrong items"

            def live(data: bytes = data) -> str:
                from websockets.sync.client import connect

                ws_url = url.replace("http://", "ws://") + "/api/v1/live"
                with connect(ws_url, open_timeout=5, close_timeout=2) as ws:
                    ws.send(data)
                    reply = json.loads(ws.recv(timeout=LIMIT_S * 3))
                    return f"frame: {reply.get('error') or 'predicted'}"

            for entry, call in (
                ("predict", predict),
                ("batch", batch),
                ("explain", explain),
                ("live", live),
            ):
                status, ms = _timed(call)
                client_error = status[:1] == "4" or status.startswith("200, item")
                frame_error = status.startswith("frame: ") and status != "frame: internal_error"
                held = (client_error or frame_error) and ms < LIMIT_S * 1000 and alive()
                attempts.append(Attempt(entry, name, status, ms, held))

        status, ms = _timed(lambda: _stalled_body(url))
        attempts.append(Attempt("predict", "stalled body", status, ms, status == "408" and alive()))
    return attempts


def _stalled_body(url: str) -> str:
    """Announce a 100 kB upload, send 100 bytes, and wait for the server to give up."""
    parsed = urlparse(url)
    with socket.create_connection((parsed.hostname, parsed.port), timeout=60) as conn:
        conn.sendall(
            b"POST /api/v1/predict HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n"
            + b"--b\r\n"
            + b"a" * 95
        )
        answer = conn.recv(64)
    return answer.split(b" ")[1].decode() if answer.startswith(b"HTTP/1.1") else "no answer"


def main() -> int:
    attempts = replay()
    print("| entry point | input | answer | ms | held |\n|---|---|---|---|---|")
    for a in attempts:
        print(
            f"| {a.entry} | {a.name} | {a.status} | {a.ms:.0f} | {'yes' if a.held else '**NO**'} |"
        )
    failed = [a for a in attempts if not a.held]
    print(f"\n{len(attempts) - len(failed)} of {len(attempts)} held")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
