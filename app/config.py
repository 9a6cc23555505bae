"""Typed, frozen settings read once from ``APP_*`` environment variables."""

from __future__ import annotations

import base64
import ipaddress
import json
import logging
import math
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Literal, TypeVar

from app.errors import ConfigError as ConfigError  # a leaf, so storage can raise it too
from app.files import atomic_write
from app.storage import private_dir

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent
# The bundled models live beside the package in a source checkout and inside it in a wheel.
_MODEL_DIRS = (PACKAGE_DIR.parent / "models", PACKAGE_DIR / "models")

Providers = Literal["auto", "cpu", "cuda"]
# Names both ``logging.basicConfig`` and uvicorn accept (uvicorn has no WARN, FATAL or NOTSET).
LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")
_MIB = 1024 * 1024

Number = TypeVar("Number", int, float)


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def _falsy(value: str | None) -> bool:
    """Explicitly off: for settings that are on unless turned off."""
    return (value or "").strip().lower() in {"0", "false", "no", "off"}


def usable_cpus() -> int:
    """CPUs this process may really use: affinity mask and cgroup quota, not the host's count."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cpus = min(cpus, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def cpu_model_and_flags() -> tuple[str, set[str]]:
    """The CPU's model name and instruction flags from /proc/cpuinfo ("" and none elsewhere):
    what decides INT8 and FP32 speed, recorded beside every figure."""
    model, flags = "", set[str]()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not model:
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return model, flags


def default_model_path() -> Path:
    """The model that ``models/manifest.json`` marks as preferred (FP32 or INT8)."""
    for directory in _MODEL_DIRS:
        manifest = directory / "manifest.json"
        if manifest.is_file():
            preferred: str = json.loads(manifest.read_text())["preferred"]
            return directory / preferred
    return _MODEL_DIRS[0] / "skin_lesion.onnx"


REGISTRATION_MODES = ("open", "invite", "closed")
STORAGE_BACKENDS = ("filesystem", "database")


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    # A second port that answers only /health/live and /health/ready (plain HTTP), for a
    # kubelet's probes: under a flood of uploads a probe on the main port queues behind a
    # thousand new connections. None: probes use the main port. Needs APP_WORKERS=1.
    health_port: int | None = None
    data_dir: Path = Path("data")
    database_url: str | None = None
    secret_key: str | None = None
    storage_key: str | None = None
    model_path: Path = field(default_factory=default_model_path)
    providers: Providers = "auto"
    ort_threads: int = field(default_factory=usable_cpus)
    # A lone request's model run uses ort_threads cores (a second session), as nothing else
    # needs them; under load each run keeps one thread (InferenceService, MicroBatcher).
    solo_run: bool = True
    # The decode and inference threads' niceness above the server's: when the cores are short,
    # the event loop (refusals, health probes) runs first. 0 turns it off (lower_worker_priority).
    worker_nice: int = 10
    dev: bool = False
    batch_max: int = 32
    max_upload_bytes: int = 16 * _MIB
    max_pixels: int = 40_000_000
    # 0 (APP_MICROBATCH_MAX=auto): chosen at start-up on this CPU by choose_max_batch. Batching
    # pays on some CPUs and not on others (a batch of 4 cost 4 % more CPU per image than 4
    # single runs on an Intel Xeon, less on an AMD EPYC): measured, not guessed.
    microbatch_max: int = 0
    # 0: batch what queued during the previous run, never wait for more. Measured on 2 CPU
    # cores at concurrency 8: 262 vs 249 req/s against 2 ms (10 alternating rounds). A GPU,
    # where bigger batches pay (tests/gpu, benchmarks.providers), may want a few ms.
    microbatch_wait_ms: float = 0.0
    queue_max: int = 64
    # API uploads in flight (read, decoded, queued or running) before more get 503 without
    # their body being read. At 1,000 clients on 2 cores, 16 instead of 64 cut the 200s'
    # latency and peak RSS (by 40 to 130 MB), but the saturated event loop then fed the decode
    # and inference threads too slowly: 35 to 50 % fewer 200s (benchmarks/RESULTS.md,
    # "Overload"). Lower it on a small-memory device.
    uploads_max: int = 64
    session_idle_minutes: int = 30
    api_auth: bool = True
    log_level: str = "INFO"
    log_format: str = "text"  # or json: one object per line
    # open: anyone may create an account; invite: only an administrator (`python -m app
    # create-user`); closed: no new accounts. "" means invite, or open in dev mode.
    registration: str = ""
    # A request body must keep arriving: at most body_idle_s between chunks and body_deadline_s
    # in all (408 after), so slow or stalled clients cannot hold connections and upload slots.
    body_idle_s: float = 10.0
    body_deadline_s: float = 120.0
    # Where the encrypted images and reports live: "filesystem" (APP_DATA_DIR/images) or
    # "database" (the stored_blob table, shared by every replica; app/db/blobs.py).
    storage: str = "filesystem"
    # Redis/Valkey for the login throttle (redis://host:6379/0); unset: the database.
    redis_url: str | None = None
    # Addresses (or networks, comma-separated) whose X-Forwarded-For/-Proto uvicorn believes:
    # the reverse proxies in front. "none" believes nobody. uvicorn's own default, 127.0.0.1.
    trusted_proxies: str = "127.0.0.1"

    @property
    def registration_mode(self) -> str:
        return self.registration or ("open" if self.dev else "invite")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read ``APP_*`` variables; tests pass their own mapping instead of ``os.environ``."""
        env = os.environ if environ is None else environ
        base = cls()

        def get(name: str) -> str | None:
            value = env.get(f"APP_{name}")
            return value if value not in (None, "") else None

        def number(
            name: str, default: Number, kind: type[Number], low: Number, high: Number | None = None
        ) -> Number:
            """``APP_<name>`` as a finite ``kind`` in ``low..high``, or a ConfigError naming it."""
            raw = get(name)
            if raw is None:
                return default
            bounds = f"from {low:g} to {high:g}" if high is not None else f"of at least {low:g}"
            refusal = ConfigError(
                f"APP_{name} must be {'an integer' if kind is int else 'a number'} {bounds}, "
                f"got {raw!r}"
            )
            try:
                value = kind(raw)
            except ValueError:
                raise refusal from None
            # NaN passes every comparison, so finiteness is checked on its own.
            if not math.isfinite(value) or value < low or (high is not None and value > high):
                raise refusal
            return value

        providers = (get("PROVIDERS") or base.providers).lower()
        if providers not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"APP_PROVIDERS must be auto, cpu or cuda, got {providers!r}")
        raw_level = get("LOG_LEVEL") or base.log_level
        log_level = raw_level.strip().upper()
        if log_level not in LOG_LEVELS:
            raise ConfigError(
                f"APP_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, got {raw_level!r}"
            )
        model = get("MODEL_PATH")
        log_format = (get("LOG_FORMAT") or base.log_format).strip().lower()
        if log_format not in ("text", "json"):
            raise ConfigError(f"APP_LOG_FORMAT must be text or json, got {log_format!r}")
        registration = (get("REGISTRATION") or "").strip().lower()
        if registration not in ("", *REGISTRATION_MODES):
            raise ConfigError(
                f"APP_REGISTRATION must be one of {', '.join(REGISTRATION_MODES)}, "
                f"got {registration!r}"
            )
        storage = (get("STORAGE") or base.storage).strip().lower()
        if storage not in STORAGE_BACKENDS:
            raise ConfigError(
                f"APP_STORAGE must be one of {', '.join(STORAGE_BACKENDS)}, got {storage!r}"
            )
        redis_url = get("REDIS_URL")
        if redis_url and not redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError("APP_REDIS_URL must be redis://host:port/db, rediss:// or unix://")
        trusted = ",".join(
            p.strip() for p in (get("TRUSTED_PROXIES") or base.trusted_proxies).split(",")
        )
        for part in trusted.split(","):
            if part in ("*", "none") or part.startswith("unix:"):
                continue
            try:
                ipaddress.ip_network(part, strict=False)
            except ValueError:
                raise ConfigError(
                    "APP_TRUSTED_PROXIES must be addresses or networks separated by commas, "
                    f"'*' or 'none', got {part!r}"
                ) from None
        port = number("PORT", base.port, int, 1, 65535)
        workers = number("WORKERS", base.workers, int, 1)
        health_port = number("HEALTH_PORT", 0, int, 0, 65535) or None
        if health_port is not None and health_port == port:
            raise ConfigError(f"APP_HEALTH_PORT must differ from APP_PORT ({port})")
        if health_port is not None and workers > 1:
            raise ConfigError("APP_HEALTH_PORT needs APP_WORKERS=1 (one process owns the port)")
        return cls(
            host=get("HOST") or base.host,
            port=port,
            workers=workers,
            data_dir=Path(get("DATA_DIR") or base.data_dir),
            database_url=get("DATABASE_URL"),
            secret_key=get("SECRET_KEY"),
            storage_key=get("STORAGE_KEY"),
            model_path=Path(model) if model else base.model_path,
            providers=providers,  # type: ignore[arg-type]
            ort_threads=number("ORT_THREADS", base.ort_threads, int, 1),
            solo_run=not _falsy(get("SOLO_RUN")),
            worker_nice=number("WORKER_NICE", base.worker_nice, int, 0, 19),
            dev=_truthy(get("DEV")),
            batch_max=number("BATCH_MAX", base.batch_max, int, 1),
            max_upload_bytes=number("MAX_UPLOAD_MB", base.max_upload_bytes // _MIB, int, 1) * _MIB,
            max_pixels=number("MAX_PIXELS", base.max_pixels, int, 1),
            microbatch_max=0
            if (get("MICROBATCH_MAX") or "").strip().lower() == "auto"
            else number("MICROBATCH_MAX", base.microbatch_max, int, 1),
            microbatch_wait_ms=number(
                "MICROBATCH_WAIT_MS", base.microbatch_wait_ms, float, 0.0, 1000.0
            ),
            queue_max=number("QUEUE_MAX", base.queue_max, int, 1),
            uploads_max=number("UPLOADS_MAX", base.uploads_max, int, 1),
            session_idle_minutes=number("SESSION_IDLE_MINUTES", base.session_idle_minutes, int, 1),
            api_auth=not _falsy(get("API_AUTH")),
            log_level=log_level,
            log_format=log_format,
            registration=registration,
            body_idle_s=number("BODY_IDLE_S", base.body_idle_s, float, 0.1, 3600.0),
            body_deadline_s=number("BODY_DEADLINE_S", base.body_deadline_s, float, 0.1, 86400.0),
            storage=storage,
            redis_url=redis_url,
            trusted_proxies=trusted,
            health_port=health_port,
        )

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "app.sqlite3"

    @property
    def images_dir(self) -> Path:
        return self.data_dir / "images"

    def with_secrets(self) -> Settings:
        """Return settings with both secrets present, or refuse outside dev mode.

        In dev mode missing secrets are generated once into ``data_dir/secrets.json`` (0600),
        so restarts keep sessions and stored images readable.
        """
        if self.secret_key and self.storage_key:
            return self
        if not self.dev:
            missing = [
                n
                for n, v in (
                    ("APP_SECRET_KEY", self.secret_key),
                    ("APP_STORAGE_KEY", self.storage_key),
                )
                if not v
            ]
            raise ConfigError(f"{', '.join(missing)} must be set outside dev mode (APP_DEV=1)")

        private_dir(self.data_dir)  # created 0700: it will hold the secrets
        path = self.data_dir / "secrets.json"
        if not path.is_file():
            fresh = {
                "secret_key": secrets.token_urlsafe(48),
                "storage_key": base64.urlsafe_b64encode(os.urandom(32)).decode(),
            }
            try:
                # Never replaces: when several workers start at once, the first one's secrets
                # win and every worker reads those, so all encrypt with one key.
                atomic_write(path, json.dumps(fresh), 0o600, overwrite=False)
                log.warning(
                    "dev mode: generated secrets into %s (keep it; it decrypts stored images)",
                    path,
                )
            except FileExistsError:
                pass
        stored: dict[str, str] = json.loads(path.read_text())
        absent = [k for k in ("secret_key", "storage_key") if not stored.get(k)]
        if absent:
            raise ConfigError(f"{path} lacks {', '.join(absent)}; restore it or delete it")
        return replace(
            self,
            secret_key=self.secret_key or stored["secret_key"],
            storage_key=self.storage_key or stored["storage_key"],
        )


def environment_help() -> str:
    """The ``APP_*`` variables with their defaults, for ``python -m app serve --help``."""
    defaults = Settings()
    lines = ["environment (APP_*; see the README's Configuration table):"]
    for f in fields(Settings):
        value = getattr(defaults, f.name)
        name = f.name.upper()
        if f.name == "max_upload_bytes":  # set in MB
            name, value = "MAX_UPLOAD_MB", value // _MIB
        shown = "-" if value in ("", None) else value
        lines.append(f"  APP_{name:<22} default: {shown}")
    return "\n".join(lines)
