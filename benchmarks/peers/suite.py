"""Peers suite: the service, a bare ASGI floor, BentoML and PyTriton serving the same model with
the same OpenCV preprocessing, measured in interleaved rounds on the same cores.

Each peer runs from its own venv under ``benchmarks/.work/peers/<name>/``, built from the pinned
requirement file ``benchmarks/peers/<name>.txt`` (``<name>.in`` holds the loose intent the pins
were frozen from). A full run builds a missing venv; ``--quick`` builds nothing and skips a peer
whose venv is missing, saying so. The peers import ``app.inference`` from this checkout
(PYTHONPATH), so decode, preprocessing and the ORT session are the service's own code.
``floor_gated`` is the floor's venv and app running the service's input gate too: the service
against it is the HTTP stack's cost, and it against the floor is the gate's.

Every round starts each server cold (its cold start is one sample), sends every image once for
the parity check in the first round, then measures latency at concurrency 1 and throughput at
concurrency 8, and stops it. Rounds run A…D then D…A, so the VM's drift and the other
engineers' load on these two cores fall on every server alike; ratios are taken within a round
and their median over rounds is reported.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
from tqdm import tqdm

from benchmarks.artifacts import ModelSet
from benchmarks.footprint import (
    app_bytes,
    closure,
    dist_bytes,
    empty_venv_bytes,
    serving_requirements,
    tree_bytes,
)
from benchmarks.images import Sample, upload_images
from benchmarks.load import multipart_body, run_load
from benchmarks.markdown import fmt, median, table
from benchmarks.results import SuiteResult
from benchmarks.server import (
    HOST,
    REPO,
    RunningServer,
    ServerError,
    Target,
    free_port,
    service_target,
    with_api_auth,
)
from benchmarks.stats import Figure
from benchmarks.suite import Suite
from benchmarks.targets import Verdict, check, fig

if TYPE_CHECKING:
    from app.inference.spec import ModelSpec

log = logging.getLogger(__name__)

PEERS_DIR = Path(__file__).resolve().parent
WORK = REPO / "benchmarks" / ".work" / "peers"
MB = 1e6
# The order of a round (reversed every other round). The service first: it is the reference.
NAMES = ("service", "service_noauth", "floor", "floor_gated", "bentoml", "pytriton")
SERVICES = ("service", "service_noauth")  # this project's server, with and without API auth
# The floor with the service's input gate: same venv and app as the floor, PEER_GATE set.
VENV_OF = {"floor_gated": "floor"}
# The per-round ratios recorded and reported: each service over every other server, and the
# floor with the gate over the floor (what the gate costs, on its own).
RATIOS = [(s, n) for s in SERVICES for n in NAMES if n not in (s, "service")] + [
    ("floor_gated", "floor")
]


def venv_of(name: str) -> str:
    """The venv (and pins file) a server runs from: its own, or the one it shares."""
    return VENV_OF.get(name, name)


LABELS = {
    "floor": "bare ASGI + ORT, 1 process × 2 threads (floor)",
    "floor_gated": "the floor + the service's input gate (quality and distribution checks)",
    "bentoml": "BentoML, 1 worker × 2 threads",
    "pytriton": "PyTriton (bundled Triton), 2 instances, dynamic batching",
}


@dataclass(frozen=True, slots=True)
class Peer:
    """How to send one upload to a server and read its top class back."""

    target: Target
    encode: Callable[[Sample], tuple[bytes, dict[str, str]]]
    top_class: Callable[[bytes], str]
    venv: Path | None  # None: the service, from this venv
    # One process whose main thread runs the event loop (the service, the floors): its
    # threads' CPU splits into the loop's and the workers'. BentoML and PyTriton serve from
    # child processes.
    loop_in_main: bool = True


def venv_python(name: str) -> Path:
    return WORK / venv_of(name) / "bin" / "python"


def ensure_venv(name: str, build: bool) -> Path | None:
    """The peer's venv, built from its pinned requirements when missing and ``build`` is set.

    A venv is rebuilt when its pins changed (the stamp holds the requirement file's text).
    """
    pins = PEERS_DIR / f"{name}.txt"
    root = WORK / name
    stamp = root / ".pins"
    if stamp.is_file() and stamp.read_text() == pins.read_text():
        return root
    if not build:
        return None
    log.info("building the %s venv from %s (a few minutes, once)", name, pins.name)
    shutil.rmtree(root, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, timeout=300)
    subprocess.run(
        [
            str(root / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "--no-deps",  # the file pins the whole closure
            "-r",
            str(pins),
        ],
        check=True,
        timeout=1800,
    )
    stamp.write_text(pins.read_text())
    return root


def _json_label(body: bytes) -> str:
    return str(json.loads(body)["label"])


def _multipart(field_name: str) -> Callable[[Sample], tuple[bytes, dict[str, str]]]:
    from benchmarks.load import BOUNDARY

    headers = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}
    return lambda sample: (multipart_body(field_name, sample), headers)


def triton_body(sample: Sample) -> tuple[bytes, dict[str, str]]:
    """A KServe v2 request with the JPEG as one BYTES element, in Triton's binary extension."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [1, 1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(sample.data) + 4},
                }
            ],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": False}}],
        }
    ).encode()
    body = header + struct.pack("<I", len(sample.data)) + sample.data
    return body, {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(header)),
    }


def triton_label(labels: list[str]) -> Callable[[bytes], str]:
    def parse(body: bytes) -> str:
        probs = json.loads(body)["outputs"][0]["data"]
        return labels[int(np.argmax(probs))]

    return parse


def peer_env(model: Path, name: str) -> dict[str, str]:
    python = venv_python(name)
    libdir = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return {
        "PEER_MODEL": str(model),
        "PEER_THREADS": "2",
        "PYTHONPATH": str(REPO),
        "VIRTUAL_ENV": str(WORK / name),
        "PATH": f"{WORK / name / 'bin'}:{os.environ.get('PATH', '')}",
        # PyTriton's bundled Python backend stub links libpython dynamically.
        "LD_LIBRARY_PATH": f"{libdir}:{os.environ.get('LD_LIBRARY_PATH', '')}",
        "BENTOML_DO_NOT_TRACK": "true",
        "BENTOML_HOME": str(WORK / "bentoml-home"),
        "PYTHONUNBUFFERED": "1",
    }


def make_peer(name: str, models: ModelSet, data_dir: Path, labels: list[str]) -> Peer:
    assert models.serving is not None
    if name == "service":
        # Every feature on, as deployed: the API asks for a bearer token.
        target, token = with_api_auth(service_target(models, data_dir))
        multipart = _multipart("image")

        def with_token(sample: Sample) -> tuple[bytes, dict[str, str]]:
            body, headers = multipart(sample)
            return body, {**headers, "authorization": f"Bearer {token}"}

        return Peer(target, with_token, _json_label, None)
    if name == "service_noauth":
        # The same server without the token check: what the auth guard costs, by difference.
        target = dataclasses.replace(
            service_target(models, data_dir.with_name("data-noauth")),
            name=name,
            description="the same, API auth off (APP_API_AUTH=0)",
        )
        return Peer(target, _multipart("image"), _json_label, None)
    python, port = str(venv_python(name)), free_port()
    env = peer_env(models.serving, venv_of(name))
    if name == "floor_gated":
        env["PEER_GATE"] = str(_gate_file(models.serving))
    if name in ("floor", "floor_gated"):
        argv: tuple[str, ...] = (
            python, "-m", "uvicorn", "floor_app:app", "--app-dir", str(PEERS_DIR),
            "--host", HOST, "--port", str(port), "--loop", "uvloop", "--http", "httptools",
            "--no-access-log", "--log-level", "warning",
        )  # fmt: skip
        target = Target(name, argv, env, port, "/predict", "image", LABELS[name], PEERS_DIR)
        return Peer(target, _multipart("image"), _json_label, WORK / venv_of(name))
    if name == "bentoml":
        argv = (
            python, "-m", "bentoml", "serve", "bentoml_service:SkinLesion",
            "--host", HOST, "--port", str(port),
        )  # fmt: skip
        target = Target(
            name, argv, env, port, "/predict", "image", LABELS[name], PEERS_DIR, "/readyz"
        )
        return Peer(target, _multipart("image"), _json_label, WORK / name, loop_in_main=False)
    argv = (
        python, str(PEERS_DIR / "pytriton_server.py"), "--http-port", str(port),
        "--grpc-port", str(free_port()), "--metrics-port", str(free_port()),
    )  # fmt: skip
    target = Target(
        name, argv, env, port, "/v2/models/skin/infer", "image", LABELS[name], PEERS_DIR,
        "/v2/models/skin/ready",
    )  # fmt: skip
    return Peer(target, triton_body, triton_label(labels), WORK / name, loop_in_main=False)


REFUSED = "refused"


def top_classes(peer: Peer, samples: list[Sample]) -> list[str]:
    """Each image once, in order: the server's top class, or ``refused <status>``."""
    url = peer.target.base_url + peer.target.predict_path
    out = []
    with httpx.Client(timeout=30.0) as client:
        for sample in samples:
            body, headers = peer.encode(sample)
            response = client.post(url, content=body, headers=headers)
            if 400 <= response.status_code < 500 and response.status_code not in (401, 403, 404):
                # The service refuses what its input gate takes for no skin lesion (422).
                out.append(f"{REFUSED} {response.status_code}")
                continue
            if response.status_code != 200:
                raise ServerError(
                    f"{peer.target.name}: {response.status_code} {response.text[:200]}"
                )
            out.append(peer.top_class(response.content))
    return out


@dataclass
class Rounds:
    """What each server measured, round by round."""

    p50: dict[str, list[float]] = field(default_factory=dict)
    p99: dict[str, list[float]] = field(default_factory=dict)
    rps: dict[str, list[float]] = field(default_factory=dict)
    ready: dict[str, list[float]] = field(default_factory=dict)
    rss: dict[str, list[float]] = field(default_factory=dict)
    peak: dict[str, list[float]] = field(default_factory=dict)
    server_cpu: dict[str, list[float]] = field(default_factory=dict)
    # At c=8, per request: the event loop's CPU ms, the other threads' CPU ms, and how often
    # the other threads blocked (voluntary context switches); with the cores kept busy, where
    # a server's throughput goes (see ThreadUse).
    loop_cpu: dict[str, list[float]] = field(default_factory=dict)
    worker_cpu: dict[str, list[float]] = field(default_factory=dict)
    worker_waits: dict[str, list[float]] = field(default_factory=dict)
    busy_cores: dict[str, list[float]] = field(default_factory=dict)
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    failed_starts: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, what: str, value: float) -> None:
        getattr(self, what).setdefault(name, []).append(value)


START_ATTEMPTS = 3


@contextlib.contextmanager
def start(peer: Peer, rounds: Rounds) -> Iterator[RunningServer]:
    """Start ``peer`` cold and wait until it is ready; the ready time is one cold-start sample.

    A start that dies before ready is retried (and counted): PyTriton 0.7's model stub waits a
    hard-coded 1 s for its handshake socket, which a loaded 2-core machine sometimes misses.
    """
    name = peer.target.name
    for attempt in range(1, START_ATTEMPTS + 1):
        server = RunningServer(peer.target, ready_timeout_s=180)
        try:
            ready = server.wait_ready()
        except ServerError:
            server.stop()
            rounds.failed_starts[name] = rounds.failed_starts.get(name, 0) + 1
            if attempt == START_ATTEMPTS:
                raise
            log.warning("%s did not start (attempt %d), retrying", name, attempt)
            continue
        rounds.add(name, "ready", ready)
        with server:
            yield server
        return


def measure(
    peer: Peer,
    samples: list[Sample],
    sizes: tuple[int, int],
    cap: float,
    rounds: Rounds,
    parity: dict[str, list[str]] | None,
    all_samples: list[Sample],
) -> None:
    """One cold start of ``peer``: parity (if asked), c=1 latency, c=8 throughput, memory.

    ``samples`` is the load set. With ``parity``, every image in ``all_samples`` is sent once
    first; when the service refuses some (its input gate), they leave the load set in place,
    for every server, so all of them do the same work.
    """
    url = peer.target.base_url + peer.target.predict_path
    name = peer.target.name
    with start(peer, rounds) as server:
        if parity is not None:
            parity[name] = top_classes(peer, all_samples)
            if name in SERVICES:
                refused = {
                    s.name
                    for s, c in zip(all_samples, parity[name], strict=True)
                    if c.startswith(REFUSED)
                }
                samples[:] = [s for s in samples if s.name not in refused]
        encoded = [peer.encode(s) for s in samples]
        bodies = [b for b, _ in encoded]
        per_body = [h for _, h in encoded]  # Triton's header length varies per body
        one = run_load(url, bodies, 1, sizes[0], cap, headers=per_body)
        eight = run_load(
            url, bodies, 8, sizes[1], cap, server_pid=server.proc.pid, headers=per_body
        )
        rss, peak = server.rss_bytes()
    for result in (one, eight):
        if result.errors:
            rounds.errors[name] = rounds.errors.get(name, 0) + result.errors
            log.warning("%s: non-2xx answers %s", name, dict(result.statuses))
    if not one.ok_latencies_ms or not eight.ok:
        raise ServerError(f"{name}: no request answered ({dict(one.statuses)})")
    rounds.add(name, "p50", float(np.percentile(one.ok_latencies_ms, 50)))
    rounds.add(name, "p99", float(np.percentile(one.ok_latencies_ms, 99)))
    rounds.add(name, "rps", eight.rps)
    rounds.add(name, "rss", rss / MB)
    rounds.add(name, "peak", peak / MB)
    ms = eight.cpu_ms_per_request("server")
    if ms is not None:
        rounds.add(name, "server_cpu", ms)
        if eight.server_cpu_s is not None:
            rounds.add(name, "busy_cores", eight.server_cpu_s / eight.duration_s)
    if peer.loop_in_main:
        for what, field_name in (
            ("main_cpu_s", "loop_cpu"),
            ("other_cpu_s", "worker_cpu"),
            ("other_waits", "worker_waits"),
        ):
            value = eight.per_request(what)
            if value is not None:
                rounds.add(name, field_name, value)
    rounds.latencies.setdefault(name, []).extend(one.ok_latencies_ms)


def service_install_mb(workdir: Path) -> float:
    """The serving install as ``pip install .`` makes it: empty venv + dependency closure + app
    (the footprint suite's closure method; this venv also holds the test tools)."""
    dists, _ = closure(serving_requirements())
    return (
        empty_venv_bytes(workdir) + sum(dist_bytes(d) for d in dists.values()) + app_bytes()
    ) / MB


def peers_suite(
    models: ModelSet,
    quick: bool = False,
    rounds: int | None = None,
    requests: int | None = None,
    build: bool | None = None,
    only: tuple[str, ...] = NAMES,
) -> SuiteResult:
    """The service against the floor, BentoML and PyTriton; see the module docstring."""
    suite = SuiteResult("peers", quick)
    n_rounds = rounds or (1 if quick else 6)
    c1 = requests or (30 if quick else 300)
    c8 = 2 * c1 if quick else 4 * c1
    cap = 20.0 if quick else 60.0
    build = (not quick) if build is None else build
    samples, source = upload_images()
    suite.params = {
        "images": f"{len(samples)} JPEGs 600x450 from {source}",
        "rounds": n_rounds,
        "requests_c1": c1,
        "requests_c8": c8,
        "order": "A…D then D…A, alternating; each server started cold in every round",
        "client": "aiohttp.ClientSession, keep-alive, in the same machine (one process)",
        "servers": {},
        "pins": {},
    }
    if models.serving is None:
        suite.skip("all", "no model to serve")
        return suite
    labels = _labels(models.serving)
    names = []
    for name in only:
        if name in SERVICES:
            names.append(name)
            continue
        try:
            venv = ensure_venv(venv_of(name), build)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
            suite.skip(name, f"building its venv failed: {exc}")
            continue
        if venv is None:
            suite.skip(
                name,
                f"no venv at {venv_python(name).parent.parent.relative_to(REPO)} and --quick "
                "builds nothing (a full run builds it)",
            )
            continue
        names.append(name)
        pins = PEERS_DIR / f"{venv_of(name)}.txt"
        suite.params["pins"][name] = pins.read_text().splitlines()
    measured = Rounds()
    load_set = list(samples)  # less what the service's input gate refuses, if anything
    parity: dict[str, list[str]] = {}
    failed: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp:
        peers = {n: make_peer(n, models, Path(tmp) / "data", labels) for n in names}
        for name, peer in peers.items():
            suite.params["servers"][name] = peer.target.description
        for r in tqdm(range(n_rounds), desc="peer rounds", unit="round"):
            order = names if r % 2 == 0 else names[::-1]
            for name in order:
                if name in failed:
                    continue
                try:
                    measure(
                        peers[name],
                        load_set,
                        (c1, c8),
                        cap,
                        measured,
                        parity if r == 0 else None,
                        samples,
                    )
                except (ServerError, httpx.HTTPError, TimeoutError) as exc:
                    failed.add(name)
                    suite.skip(name, f"round {r + 1}: {str(exc).splitlines()[0]}")
        sizes = {"service": service_install_mb(Path(tmp))}
    sizes["service_noauth"] = sizes["service"]
    for name in names:
        if name not in SERVICES and name not in failed:
            sizes[name] = tree_bytes(WORK / venv_of(name)) / MB
    _record(suite, measured, parity, sizes, names, failed)
    refused = [s.name for s in samples if s not in load_set]
    suite.params["refused_by_service"] = refused
    suite.params["load_images"] = len(load_set)
    if refused:
        suite.notes.append(
            f"the service's input gate refused {len(refused)} of {len(samples)} images "
            f"({', '.join(refused)}); every server's load used the other {len(load_set)}"
        )
    return suite


@functools.cache  # one ORT session for the labels and the gate file, not one each
def _spec(model: Path) -> ModelSpec:
    from app.inference.classifier import Classifier

    return Classifier(model, "cpu", 1).spec


def _labels(model: Path) -> list[str]:
    return list(_spec(model).labels)


def _gate_file(model: Path) -> Path:
    """The served model's gate file, as the service finds it."""
    from app.inference.gate import gate_path

    return gate_path(model, _spec(model))


def _record(
    suite: SuiteResult,
    m: Rounds,
    parity: dict[str, list[str]],
    sizes: dict[str, float],
    names: list[str],
    failed: set[str],
) -> None:
    ok = [n for n in names if n not in failed and m.rps.get(n)]
    for name in ok:
        suite.add(f"{name}/p50_c1", Figure.of(m.p50[name], "ms"))
        suite.add(f"{name}/p99_c1", Figure.of(m.p99[name], "ms"))
        suite.add(f"{name}/rps_c8", Figure.of(m.rps[name], "req/s"))
        suite.add(f"{name}/ready_s", Figure.of(m.ready[name], "s"))
        suite.add(f"{name}/rss_after_load", Figure.of(m.rss[name], "MB"))
        suite.add(f"{name}/rss_peak", Figure.of(m.peak[name], "MB"))
        if m.server_cpu.get(name):
            suite.add(f"{name}/server_cpu_ms_c8", Figure.of(m.server_cpu[name], "ms CPU"))
        for key, values, unit in (
            ("busy_cores_c8", m.busy_cores, "cores"),
            ("loop_cpu_ms_c8", m.loop_cpu, "ms CPU"),
            ("worker_cpu_ms_c8", m.worker_cpu, "ms CPU"),
            ("worker_waits_c8", m.worker_waits, "per request"),
        ):
            if values.get(name):
                suite.add(f"{name}/{key}", Figure.of(values[name], unit))
        if name in sizes:
            suite.add(f"{name}/venv_mb", Figure.value(sizes[name], "MB"))
        suite.distributions[f"{name}/c1/latency"] = [
            round(float(v), 4) for v in np.percentile(m.latencies[name], np.linspace(0, 100, 101))
        ]
        if name in parity and "service" in parity:
            # Over the images the service answers: a refusal is not a class to agree with.
            pairs = [
                (a, b)
                for a, b in zip(parity[name], parity["service"], strict=True)
                if not b.startswith(REFUSED)
            ]
            same = sum(a == b for a, b in pairs)
            suite.add(f"{name}/parity_top_class", Figure.value(same, "images", len(pairs)))
    for subject, name in (p for p in RATIOS if set(p) <= set(ok)):
        key = f"ratio/{subject}_vs_{name}"
        p50 = zip(m.p50[subject], m.p50[name], strict=False)
        suite.add(f"{key}/p50_c1", Figure.of([s / p for s, p in p50], "x"))
        rps = zip(m.rps[subject], m.rps[name], strict=False)
        suite.add(f"{key}/rps_c8", Figure.of([s / p for s, p in rps], "x"))
    suite.params["errors"] = m.errors
    suite.params["failed_starts"] = m.failed_starts
    for name, count in m.failed_starts.items():
        suite.notes.append(f"{name}: {count} start(s) died before ready and were retried")
    suite.params["per_round"] = {
        "p50_c1_ms": m.p50,
        "p99_c1_ms": m.p99,
        "rps_c8": m.rps,
        "ready_s": m.ready,
    }
    suite.params["venv_method"] = (
        "peers: directory walk of their venv (pip install --no-deps -r the pins); the service: "
        "the footprint suite's closure (empty venv + serving dependency closure + app/)"
    )
    suite.params["rss"] = "after the c=8 load, summed over the server and its child processes"


# RESULTS.md section and targets (benchmarks.suite.Suite)


def _peers_section(run: dict[str, Any]) -> list[str]:
    suite = run.get("suites", {}).get("peers", {})
    figs = suite.get("figures", {})
    if not figs:
        reasons = "; ".join(f"{k}: {v}" for k, v in suite.get("skipped", {}).items())
        return [f"_Peers suite not run{': ' + reasons if reasons else ''}._", ""]
    params = suite.get("params", {})
    servers = params.get("servers", {})
    rows = []
    for name in NAMES:
        if f"{name}/rps_c8" not in figs:
            continue
        parity = figs.get(f"{name}/parity_top_class", {})
        rows.append(
            [
                servers.get(name, name),
                fmt(median(figs, f"{name}/p50_c1")),
                fmt(median(figs, f"{name}/p99_c1")),
                fmt(median(figs, f"{name}/rps_c8"), 1),
                fmt(median(figs, f"{name}/rss_after_load"), 0),
                fmt(median(figs, f"{name}/ready_s")),
                fmt(median(figs, f"{name}/venv_mb"), 0),
                fmt(median(figs, f"{name}/server_cpu_ms_c8")),
                f"{parity.get('median', 0):.0f}/{parity.get('n', 0)}" if parity else "—",
            ]
        )
    breakdown = [
        [
            servers.get(name, name),
            fmt(median(figs, f"{name}/rps_c8"), 1),
            fmt(median(figs, f"{name}/busy_cores_c8")),
            fmt(median(figs, f"{name}/server_cpu_ms_c8")),
            fmt(median(figs, f"{name}/loop_cpu_ms_c8")),
            fmt(median(figs, f"{name}/worker_cpu_ms_c8")),
            fmt(median(figs, f"{name}/worker_waits_c8"), 1),
        ]
        for name in NAMES
        if f"{name}/loop_cpu_ms_c8" in figs
    ]
    ratios = []
    for subject, name in RATIOS:
        p50 = figs.get(f"ratio/{subject}_vs_{name}/p50_c1")
        rps = figs.get(f"ratio/{subject}_vs_{name}/rps_c8")
        if p50 and rps:
            ratios.append(
                [
                    f"{subject} / {name}",
                    f"{p50['median']:.2f} ({p50['min']:.2f}–{p50['max']:.2f})",
                    f"{rps['median']:.2f} ({rps['min']:.2f}–{rps['max']:.2f})",
                    str(rps["n"]),
                ]
            )
    skipped = suite.get("skipped", {})
    return [
        f"Same model, same {params.get('images')}, same decode and OpenCV preprocessing "
        "(the peers import `app.inference` from this checkout), each peer from its own venv "
        "built from the pins in `benchmarks/peers/*.txt`. "
        f"{params.get('rounds')} interleaved rounds ({params.get('order')}); per round "
        f"{params.get('requests_c1')} requests at c=1 and {params.get('requests_c8')} at c=8 "
        f"after a warm-up; client: {params.get('client')}. Figures are medians over rounds; "
        "other engineers' work shares these 2 cores, so compare the per-round ratios below, "
        "not absolute times across runs.",
        "",
        *table(
            [
                "server",
                "p50 c=1 ms",
                "p99 c=1 ms",
                "req/s c=8",
                "RSS MB",
                "cold start s",
                "venv MB",
                "server CPU ms/req c=8",
                "same top class",
            ],
            rows,
        ),
        f"RSS: {params.get('rss')}. venv MB: {params.get('venv_method')}. Same top class: "
        "images (of those sent) on which the server's top class equals the service's.",
        "",
        "Median per-round ratios, the service (with API auth, and without it) over each other "
        "server (range over rounds): p50 below 1 and req/s above 1 mean the service is ahead. "
        "The floor with the gate shares the service's model-side work, so the service over it "
        "is what the HTTP stack costs, and it over the floor is what the gate costs.",
        "",
        *table(["ratio", "p50 c=1", "req/s c=8", "rounds"], ratios),
        *(
            [
                "Where the throughput at c=8 goes, for the servers that run one process with its "
                "event loop on the main thread (medians over rounds; per answered request; read "
                "from /proc around the recorded requests): the cores the server kept busy, its "
                "CPU split into the event loop's and the other threads' (decode, inference, "
                "ORT), and how often the other threads blocked (voluntary context switches: on "
                "an empty work queue, or waiting for the GIL). With the same work per request, "
                "fewer busy cores and more waits mean the threads spent the difference waiting.",
                "",
                *table(
                    [
                        "server",
                        "req/s c=8",
                        "cores busy",
                        "server CPU ms/req",
                        "event loop ms/req",
                        "other threads ms/req",
                        "other threads' waits /req",
                    ],
                    breakdown,
                ),
            ]
            if breakdown
            else []
        ),
        "The changes tried to close the gap to the floor (the issue's candidates: one pool hop, "
        "the multipart path, the response encoder, a second header pass, both cores busy), each "
        "an A/B of two checkouts with `python -m benchmarks.ab`, kept or not: *Floor gap: "
        "candidates* below.",
        "",
        *(
            ["Not measured: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()) + ".", ""]
            if skipped
            else []
        ),
    ]


# Issue 13: ahead of what users would pick instead, and close to the bare floor. Each is the
# median of the per-round ratios (service / peer), so drift falls on both sides alike.
PEER_TARGETS = (
    ("bentoml", "rps_c8", "BentoML", "req/s at c=8", 1.5, True),
    ("bentoml", "p50_c1", "BentoML", "p50 at c=1", 0.7, False),
    ("pytriton", "rps_c8", "PyTriton", "req/s at c=8", 1.5, True),
    ("pytriton", "p50_c1", "PyTriton", "p50 at c=1", 0.7, False),
    ("floor", "p50_c1", "the bare ASGI floor", "p50 at c=1", 1.05, False),
    ("floor", "rps_c8", "the bare ASGI floor", "req/s at c=8", 0.95, True),
)


def _peer_targets(run: dict[str, Any]) -> list[Verdict]:
    out = []
    for peer, measure, who, what, bound, at_least in PEER_TARGETS:
        key = f"ratio/service_vs_{peer}/{measure}"
        value = fig(run, "peers", key)
        low, high = fig(run, "peers", key, "min"), fig(run, "peers", key, "max")
        n = run.get("suites", {}).get("peers", {}).get("figures", {}).get(key, {}).get("n")
        ok = value is not None and (value >= bound if at_least else value <= bound)
        spread = f" (rounds: {n}, {low:.2f}–{high:.2f}×)" if low is not None and high else ""
        out.append(
            check(
                f"{what} vs {who}",
                "peers #13",
                f"{'≥' if at_least else '≤'} {bound}×",
                value,
                ok,
                "{:.2f}×" + spread,
            )
        )
    return out


def _run(models: ModelSet, args: argparse.Namespace) -> SuiteResult:
    return peers_suite(models, args.quick, args.rounds, args.requests, args.build)


SUITE = Suite(
    name="peers",
    help="the service vs BentoML, PyTriton and a bare ASGI floor, interleaved rounds",
    run=_run,
    title="Peers",
    section=_peers_section,
    targets=_peer_targets,
)
