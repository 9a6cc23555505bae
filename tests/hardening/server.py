"""A real ``python -m app serve`` process on a free loopback port, for the red-team findings."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def running_server(
    data_dir: Path,
    env: dict[str, str] | None = None,
    wrapper: Sequence[str] = (),
    ready_timeout_s: float = 60.0,
    log_dir: Path | None = None,
) -> Iterator[Server]:
    """Start the service (dev mode, no API auth, CPU) and wait until /health/ready is 200."""
    port = free_port()
    full_env = {
        **os.environ,
        "APP_DEV": "1",
        "APP_API_AUTH": "0",
        "APP_PROVIDERS": "cpu",
        "APP_HOST": "127.0.0.1",
        "APP_PORT": str(port),
        "APP_DATA_DIR": str(data_dir),
        "APP_LOG_LEVEL": "INFO",
        **(env or {}),
    }
    log = (log_dir or data_dir.parent) / f"server-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*wrapper, sys.executable, "-m", "app", "serve"],
            cwd=REPO,
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Server(f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited ({process.returncode}):\n{server.output()}")
            try:
                if httpx.get(server.url + "/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server was not ready in {ready_timeout_s} s")
            time.sleep(0.2)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
