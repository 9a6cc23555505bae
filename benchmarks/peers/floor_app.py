"""The bare floor: a raw ASGI callable on uvicorn + uvloop + httptools, one process, the
service's own decode, preprocessing and ORT session on a pool of two threads.

No framework, no middleware, no micro-batcher, no validation beyond finding the file part: the
least any Python HTTP server can spend on this work. Runs in its own venv (floor.txt) with the
repository on PYTHONPATH, so ``app.inference`` is the same code the service runs.

With ``PEER_GATE`` (a gate file) it also runs the service's intended-use gate, its quality
checks and its distribution check, and answers 422 for what the gate refuses: the floor with
the one feature that costs model-side work, so the service's gap to it is the HTTP stack's.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

# As the service (app/__init__.py): one BLAS thread per matrix product. Set here because cv2
# loads numpy, and with it OpenBLAS, before ``app`` is imported; started by hand without it the
# gated floor served 92 req/s at c=8 instead of 163 (2026-12-07). The suite passes it anyway.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import cv2

from app.inference.classifier import Classifier
from app.inference.gate import Gate, ImageRejectedError
from app.inference.preprocess import prepare

cv2.setNumThreads(1)  # as the service: two cores serve two requests
CLASSIFIER = Classifier(Path(os.environ["PEER_MODEL"]), "cpu", threads=1)
GATE = Gate.load(Path(os.environ["PEER_GATE"])) if os.environ.get("PEER_GATE") else None
CLASSIFIER.distribution = GATE.distribution if GATE else None
CLASSIFIER.warm_up()
LABELS = CLASSIFIER.spec.labels
POOL = ThreadPoolExecutor(int(os.environ.get("PEER_THREADS", "2")))
JSON = [(b"content-type", b"application/json")]

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def classify(data: bytes) -> bytes:
    """The answer's JSON; raises ImageRejectedError when the gate (if any) refuses the image."""
    upload = prepare(data, CLASSIFIER.spec)
    if GATE is not None:
        result = GATE.check_quality(upload.rgb, upload.size, resized=upload.resized)
    row = CLASSIFIER.run(upload.tensor[None])[0]
    if GATE is not None:
        GATE.check_distribution(result, CLASSIFIER.distribution_score(row))
    probs = row[: len(LABELS)].tolist()
    top = max(range(len(probs)), key=probs.__getitem__)
    return json.dumps(
        {"label": LABELS[top], "probabilities": dict(zip(LABELS, probs, strict=True))}
    ).encode()


def file_part(body: bytes, content_type: bytes) -> bytes:
    """The first part's content of a single-file multipart body."""
    boundary = content_type.split(b"boundary=", 1)[1].strip(b'"')
    start = body.index(b"\r\n\r\n") + 4
    return body[start : body.rindex(b"\r\n--" + boundary)]


async def respond(send: Send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": JSON})
    await send({"type": "http.response.body", "body": body})


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["path"] != "/predict" or scope["method"] != "POST":
        await respond(send, 200 if scope["path"] == "/health/ready" else 404, b"{}")
        return
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    content_type = dict(scope["headers"]).get(b"content-type", b"")
    try:
        data = file_part(b"".join(chunks), content_type)
    except (IndexError, ValueError):
        await respond(send, 400, b'{"error": "no file part"}')
        return
    loop = asyncio.get_running_loop()
    try:
        answer = await loop.run_in_executor(POOL, classify, data)
    except ImageRejectedError:
        await respond(send, 422, b'{"error": "image_rejected"}')
        return
    await respond(send, 200, answer)
