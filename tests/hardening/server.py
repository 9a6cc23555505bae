"""A real ``python -m app serve`` process on a free loopback port, for the red-team findings."""

from __future__ import annotations

import os
import signal
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
            # Its own process group: a wrapper (strace) detaches on SIGTERM and would leave the
            # server running; the group's signal reaches both.
            start_new_session=True,
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
        _stop_group(process)


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's process group, SIGKILL if it has not gone within 15 s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            process.poll()
            try:
                os.killpg(process.pid, 0)  # anyone left in the group?
            except ProcessLookupError:
                return
            time.sleep(0.1)
