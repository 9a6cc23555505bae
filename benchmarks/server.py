"""Start a server under test as a subprocess on 127.0.0.1, wait for readiness, stop it."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import httpx
import psutil

from benchmarks.artifacts import ModelSet
from benchmarks.images import Sample
from benchmarks.load import BOUNDARY

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"  # load goes to the loopback interface only


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True, slots=True)
class Target:
    """A server the suites can start: its command line, environment and upload route."""

    name: str
    argv: tuple[str, ...]
    env: dict[str, str]
    port: int
    predict_path: str
    form_field: str
    description: str
    workdir: Path = REPO
    ready_path: str = "/health/ready"  # answers 200 once the server can serve

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"


def _name(path: Path | None) -> str:
    return path.name if path else "-"


def service_target(models: ModelSet, data_dir: Path, port: int | None = None) -> Target:
    """``python -m app`` as deployed, with auth off and a throw-away data directory."""
    port = port or free_port()
    env = {
        "APP_HOST": HOST,
        "APP_PORT": str(port),
        "APP_API_AUTH": "0",
        "APP_DEV": "1",
        "APP_DATA_DIR": str(data_dir),
        "APP_LOG_LEVEL": "WARNING",
    }
    if models.serving is not None:
        env["APP_MODEL_PATH"] = str(models.serving)
    return Target(
        "service",
        (sys.executable, "-m", "app"),
        env,
        port,
        "/api/v1/predict",
        "image",
        f"python -m app (Litestar + uvicorn, ORT, {_name(models.serving)})",
    )


TOKEN_SCRIPT = """
import asyncio
from app.auth.admin import create_api_token
from app.config import Settings
from app.db import engine as db_engine
from app.db.tables import User
settings = Settings.from_env()
async def add_user():
    engine = db_engine.make_engine(settings)
    db_engine.bind(engine)
    await db_engine.start(engine)
    try:
        await User.insert(User(username="bench", username_key="bench", password_hash="!")).run()
    finally:
        await db_engine.stop(engine)
asyncio.run(add_user())
print(create_api_token(settings, "bench", "benchmark"))
"""


def with_api_auth(target: Target) -> tuple[Target, str]:
    """The service target with API authentication on, and a bearer token for it.

    Migrates the target's data directory, adds a user that cannot log in (no password hash
    matches ``!``) and creates an API token for it, as ``python -m app create-token`` does.
    """
    env = {**os.environ, **target.env}
    subprocess.run(
        [sys.executable, "-m", "app", "migrate"], env=env, check=True, capture_output=True
    )
    out = subprocess.run(
        [sys.executable, "-c", TOKEN_SCRIPT], env=env, check=True, capture_output=True, text=True
    )
    token = out.stdout.strip().splitlines()[-1]
    authed = dataclasses.replace(
        target,
        env={**target.env, "APP_API_AUTH": "1"},
        description=target.description.replace("(Litestar", "(API token auth on, Litestar"),
    )
    return authed, token


def baseline_target(models: ModelSet, upload_dir: Path, port: int | None = None) -> Target | None:
    """The upstream approach: Flask + keras.utils.load_img + model.predict, threaded server."""
    if models.keras is None:
        return None
    spec = models.spec()
    port = port or free_port()
    argv = (
        sys.executable,
        "-m",
        "benchmarks.baselines",
        "--model",
        str(models.keras),
        "--port",
        str(port),
        "--width",
        str(spec.input_width),
        "--height",
        str(spec.input_height),
        "--scale",
        repr(spec.input_scale),
        "--offset",
        repr(spec.input_offset),
        "--upload-dir",
        str(upload_dir),
    )
    return Target(
        "baseline",
        argv,
        {"TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""},
        port,
        "/predict",
        "file",
        f"Flask (threaded werkzeug) + keras.utils.load_img + model.predict ({models.keras.name})",
    )


def accepted_samples(
    models: ModelSet, samples: list[Sample], workdir: Path
) -> tuple[list[Sample], list[str]]:
    """The samples the service answers with 2xx, and the names of those it refuses.

    The service's input gate refuses (422) an image it does not take for a skin lesion, and a
    few of the benchmark originals are refused. Load sets keep only the answered ones, so every
    server does the same work and a refusal is not counted as an error.
    """
    from benchmarks.load import multipart_body

    target = service_target(models, workdir / "screen-data")
    with RunningServer(target) as server, httpx.Client(timeout=60.0) as client:
        server.wait_ready()
        url = target.base_url + target.predict_path
        headers = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}
        answers = [
            client.post(url, content=multipart_body(target.form_field, s), headers=headers)
            for s in samples
        ]
    for sample, answer in zip(samples, answers, strict=True):
        if answer.is_error and answer.status_code != 422:
            raise ServerError(f"screening {sample.name}: {answer.status_code} {answer.text[:200]}")
    kept = [s for s, a in zip(samples, answers, strict=True) if not a.is_error]
    refused = [s.name for s, a in zip(samples, answers, strict=True) if a.is_error]
    if not kept:
        raise ServerError("the service refused every benchmark image")
    return kept, refused


class ServerError(RuntimeError):
    """The server did not become ready; the message carries the tail of its log."""


class RunningServer:
    """A started server process; use as a context manager so it is always stopped."""

    def __init__(self, target: Target, ready_timeout_s: float = 120.0) -> None:
        self.target = target
        self.ready_timeout_s = ready_timeout_s
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in stop()
            prefix=f"bench-{target.name}-", suffix=".log", delete=False
        )
        self.started = time.perf_counter()
        env = {**os.environ, **target.env}
        self.proc = subprocess.Popen(
            target.argv,
            cwd=target.workdir,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.ready_s: float | None = None

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(Path(self._log.name).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_ready(self) -> float:
        """Poll /health/ready until it answers 200; return seconds since the process started."""
        deadline = self.started + self.ready_timeout_s
        url = f"{self.target.base_url}{self.target.ready_path}"
        with httpx.Client(timeout=2.0) as client:
            while time.perf_counter() < deadline:
                if self.proc.poll() is not None:
                    raise ServerError(
                        f"{self.target.name} exited with {self.proc.returncode} before ready:\n"
                        f"{self.log_tail()}"
                    )
                try:
                    if client.get(url).status_code == 200:
                        self.ready_s = time.perf_counter() - self.started
                        return self.ready_s
                except httpx.TransportError:
                    pass
                time.sleep(0.005)
        raise ServerError(
            f"{self.target.name} not ready after {self.ready_timeout_s:.0f} s:\n{self.log_tail()}"
        )

    def rss_bytes(self) -> tuple[int, int]:
        """(current RSS, peak RSS) summed over the process and its children (workers)."""
        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0, 0
        rss = peak = 0
        for proc in procs:
            try:
                rss += proc.memory_info().rss
                peak += _vm_hwm(proc.pid)
            except psutil.NoSuchProcess:
                continue
        return rss, peak

    def stop(self) -> None:
        if self.proc.poll() is None:
            # The server got its own session: signal only that group, which we started.
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        self._log.close()
        Path(self._log.name).unlink(missing_ok=True)


def _vm_hwm(pid: int) -> int:
    # VmHWM: the peak resident set size the kernel recorded for the process.
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
