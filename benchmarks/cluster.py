"""A fleet on this machine with real processes: a PostgreSQL of its own, app replicas, nginx.

Used by the scale-out benchmark (``python -m benchmarks.scaleout``) and the failover tests
(``tests/deploy/``). Every address is on 127.0.0.1; every process is started here and stopped
here by its own process id.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
NGINX_DIR = REPO / "deploy" / "nginx"
HOST = "127.0.0.1"


class ClusterError(RuntimeError):
    """A part of the fleet did not start."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def missing_tools() -> list[str]:
    """What this machine lacks to run a fleet (each is a Debian package)."""
    wanted = {
        "nginx": "nginx",
        "initdb": "postgresql",
        "pg_ctl": "postgresql",
        "openssl": "openssl",
    }
    found = {tool: _which(tool) for tool in wanted}
    return sorted({wanted[t] for t, path in found.items() if path is None})


def _which(tool: str) -> str | None:
    path = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")
    if path is None and tool in ("initdb", "pg_ctl"):
        for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{tool}"), reverse=True):
            return str(candidate)
    return path


def _wait_port(port: int, timeout_s: float, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ClusterError(f"exited with {process.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise ClusterError(f"nothing listens on {HOST}:{port} after {timeout_s} s")


# ---------------------------------------------------------------------------- PostgreSQL


@dataclass
class Postgres:
    """A PostgreSQL cluster of its own (initdb in ``root``), trust auth on 127.0.0.1."""

    root: Path
    port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{HOST}:{self.port}/postgres"

    def _as_owner(self, argv: Sequence[str]) -> list[str]:
        # PostgreSQL refuses to run as root: as root, run it as the `postgres` user.
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *argv]
        return list(argv)

    def init(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        initdb = _which("initdb") or "initdb"
        subprocess.run(
            self._as_owner(
                [
                    initdb,
                    "-D",
                    str(self.root / "data"),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--no-sync",
                    "--no-instructions",
                ]
            ),
            check=True,
            capture_output=True,
        )

    def start(self) -> None:
        pg_ctl = _which("pg_ctl") or "pg_ctl"
        options = f"-p {self.port} -c listen_addresses={HOST} -k {self.root} -c max_connections=100"
        subprocess.run(
            self._as_owner(
                [
                    pg_ctl,
                    "-D",
                    str(self.root / "data"),
                    "-l",
                    str(self.root / "pg.log"),
                    "-o",
                    options,
                    "-w",
                    "-t",
                    "30",
                    "start",
                ]
            ),
            check=True,
            capture_output=True,
        )

    def stop(self, mode: str = "fast") -> None:
        pg_ctl = _which("pg_ctl") or "pg_ctl"
        subprocess.run(
            self._as_owner(
                [pg_ctl, "-D", str(self.root / "data"), "-m", mode, "-w", "-t", "30", "stop"]
            ),
            check=False,
            capture_output=True,
        )


@contextlib.contextmanager
def running_postgres(root: Path) -> Iterator[Postgres]:
    pg = Postgres(root)
    pg.init()
    pg.start()
    try:
        yield pg
    finally:
        pg.stop("immediate")


# ---------------------------------------------------------------------------- app replicas


@dataclass
class Replica:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """kill -9, the whole process group (a crash, not a shutdown)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.process.wait(timeout=15)
                return
            except subprocess.TimeoutExpired:
                continue


def fleet_env(database_url: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The settings every replica shares: one database, one set of secrets, database storage."""
    return {
        "APP_DEV": "0",
        "APP_DATABASE_URL": database_url,
        "APP_STORAGE": "database",
        "APP_SECRET_KEY": "fleet-secret-" + "s" * 40,
        "APP_STORAGE_KEY": base64.urlsafe_b64encode(b"k" * 32).decode(),
        "APP_REGISTRATION": "open",
        "APP_PROVIDERS": "cpu",
        "APP_ORT_THREADS": "1",
        "APP_TRUSTED_PROXIES": HOST,
        "APP_LOG_LEVEL": "WARNING",
        **(extra or {}),
    }


def migrate(env: dict[str, str], data_dir: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "app", "migrate"],
        cwd=REPO,
        env={**os.environ, **env, "APP_DATA_DIR": str(data_dir)},
        check=True,
        capture_output=True,
    )


def start_replica(
    name: str, env: dict[str, str], data_dir: Path, port: int | None = None
) -> Replica:
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir.parent / f"{name}.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "app", "serve"],
            cwd=REPO,
            env={
                **os.environ,
                **env,
                "APP_HOST": HOST,
                "APP_PORT": str(port),
                "APP_DATA_DIR": str(data_dir),
            },
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Replica(name, port, process, log)


def wait_ready(replica: Replica, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if replica.process.poll() is not None:
            raise ClusterError(f"{replica.name} exited:\n{replica.output()[-3000:]}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(replica.url + "/health/ready", timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise ClusterError(f"{replica.name} not ready after {timeout_s} s:\n{replica.output()[-3000:]}")


@contextlib.contextmanager
def running_replicas(
    count: int, env: dict[str, str], root: Path, ports: Sequence[int] | None = None
) -> Iterator[list[Replica]]:
    """``count`` replicas started together, each waited for; all stopped on the way out."""
    replicas: list[Replica] = []
    try:
        for i in range(count):
            port = ports[i] if ports else None
            replicas.append(start_replica(f"replica{i + 1}", env, root / f"replica{i + 1}", port))
        for replica in replicas:
            wait_ready(replica)
        yield replicas
    finally:
        for replica in replicas:
            replica.stop()


# ---------------------------------------------------------------------------- nginx


@dataclass
class Nginx:
    http_port: int
    https_port: int
    process: subprocess.Popen[bytes]
    root: Path
    cert: Path

    @property
    def url(self) -> str:
        return f"https://{HOST}:{self.https_port}"

    def client(self, **kwargs: object) -> httpx.Client:
        """An HTTPS client that trusts the fleet's self-signed certificate."""
        return httpx.Client(base_url=self.url, verify=str(self.cert), **kwargs)  # type: ignore[arg-type]

    def error_log(self) -> str:
        path = self.root / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""


def make_cert(directory: Path) -> Path:
    subprocess.run(
        ["bash", str(NGINX_DIR / "make-cert.sh"), str(directory)], check=True, capture_output=True
    )
    return directory / "tls.crt"


@contextlib.contextmanager
def running_nginx(
    root: Path,
    upstreams: Sequence[str],
    max_upload_mb: int = 16,
    fail_timeout_s: int = 5,
    watch_interval_s: float | None = None,
) -> Iterator[Nginx]:
    """nginx with deploy/nginx/render.py's configuration in front of ``upstreams``;
    ``watch_interval_s``: with deploy/nginx/health_watch.py polling /health/ready that often."""
    root.mkdir(parents=True, exist_ok=True)
    cert = make_cert(root / "tls")
    http_port, https_port = free_port(), free_port()
    argv: list[str] = []
    for upstream in upstreams:
        argv += ["--upstream", upstream]
    argv += [
        "--cert", str(cert), "--key", str(root / "tls" / "tls.key"),
        "--max-upload-mb", str(max_upload_mb), "--listen", HOST,
        "--http-port", str(http_port), "--https-port", str(https_port),
        "--prefix", str(root), "--error-log", str(root / "error.log"),
        "--access-log", str(root / "access.log"), "--workers", "1",
        "--fail-timeout-s", str(fail_timeout_s),
    ]  # fmt: skip
    if os.geteuid() == 0:
        argv += ["--user", "root"]  # workers must write temp files under a root-only tmp dir
    conf = root / "nginx.conf"
    render = [sys.executable, str(NGINX_DIR / "render.py"), *argv]
    conf.write_text(subprocess.run(render, check=True, capture_output=True, text=True).stdout)
    nginx = _which("nginx") or "nginx"
    # -e: the start-up error log too (the default, /var/log/nginx, needs root)
    base = [nginx, "-e", str(root / "error.log"), "-p", str(root), "-c", str(conf)]
    check = subprocess.run([*base, "-t"], capture_output=True)
    if check.returncode != 0:
        raise ClusterError(f"nginx -t refused the configuration:\n{check.stderr.decode()}")
    process = subprocess.Popen(
        [*base, "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=(root / "stderr.log").open("wb"),
        start_new_session=True,
    )
    watcher: subprocess.Popen[bytes] | None = None
    try:
        _wait_port(https_port, 15, process)
        if watch_interval_s is not None:
            watch = [sys.executable, str(NGINX_DIR / "health_watch.py"), "--conf", str(conf)]
            watch += ["--interval", str(watch_interval_s), "--timeout", "0.5", "--nginx", nginx]
            watcher = subprocess.Popen(
                [*watch, "--", *argv],
                stdout=(root / "health_watch.log").open("wb"),
                stderr=subprocess.STDOUT,
            )
        yield Nginx(http_port, https_port, process, root, cert)
    finally:
        if watcher is not None:
            watcher.terminate()
            watcher.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGQUIT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
