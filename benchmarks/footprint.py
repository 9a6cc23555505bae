"""Footprint suite: disk size of the serving install against the upstream dependency set.

No wheels can be downloaded for this, so two methods, both recorded:
- ``closure``: the files (per RECORD) of every distribution in the dependency closure, read
  from the current virtualenv's metadata, plus an empty venv, the app and the model; offline,
  always available.
- ``install``: wheels repacked from the current virtualenv's installed files, then a real
  ``pip install --no-index --find-links`` into a fresh venv, measured with a directory walk.
  This also proves the requirement pins resolve against what was installed. Full runs only.
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import importlib.metadata as md
import io
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from tqdm import tqdm

from benchmarks.artifacts import ModelSet
from benchmarks.markdown import fmt, median, table
from benchmarks.results import SuiteResult
from benchmarks.stats import Figure, ratio
from benchmarks.suite import Suite

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
MB = 1e6
UPSTREAM_REQUIREMENTS = ("flask", "tensorflow-cpu", "pillow")
# python:3.11-slim (Debian bookworm), uncompressed, as published; not measurable here.
SLIM_BASE_IMAGE_MB = 130.0


def serving_requirements() -> list[str]:
    """``[project].dependencies`` of pyproject.toml: what ``pip install .`` installs."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return list(project["dependencies"])


def closure(requirements: list[str]) -> tuple[dict[str, md.Distribution], list[str]]:
    """Installed distributions needed by ``requirements`` (markers and extras applied).

    Returns the distributions by canonical name and the requirements that are not installed.
    """
    found: dict[str, md.Distribution] = {}
    missing: list[str] = []
    queue: list[tuple[Requirement, frozenset[str]]] = [
        (Requirement(r), frozenset()) for r in requirements
    ]
    seen_extras: dict[str, set[str]] = {}
    while queue:
        req, parent_extras = queue.pop()
        env_ok = req.marker is None or any(
            req.marker.evaluate({"extra": e}) for e in (parent_extras or {""})
        )
        if not env_ok:
            continue
        name = canonicalize_name(req.name)
        extras = set(req.extras)
        if name in found and extras <= seen_extras.get(name, set()):
            continue
        try:
            dist = found.get(name) or md.distribution(req.name)
        except md.PackageNotFoundError:
            missing.append(str(req))
            continue
        found[name] = dist
        seen_extras.setdefault(name, set()).update(extras)
        for sub in dist.requires or []:
            queue.append((Requirement(sub), frozenset(extras)))
    return found, sorted(set(missing))


def dist_bytes(dist: md.Distribution, include_pyc: bool = False) -> int:
    total = 0
    for file in dist.files or []:
        if not include_pyc and (file.suffix == ".pyc" or "__pycache__" in file.parts):
            continue
        path = Path(str(dist.locate_file(file)))
        if path.is_file():
            total += path.stat().st_size
    return total


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def app_bytes() -> int:
    """The ``app`` package as ``pip install .`` copies it (sources and package data)."""
    return sum(
        p.stat().st_size
        for p in (REPO / "app").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    )


def empty_venv_bytes(workdir: Path) -> int:
    """A fresh venv with pip, as ``python -m venv`` makes it (ensurepip, offline)."""
    target = workdir / "empty-venv"
    subprocess.run([sys.executable, "-m", "venv", str(target)], check=True, timeout=300)
    return tree_bytes(target)


def _wheel_name(dist: md.Distribution) -> str:
    wheel = dist.read_text("WHEEL") or ""
    tags = [line.split(":", 1)[1].strip() for line in wheel.splitlines() if line.startswith("Tag:")]
    tag = tags[0] if tags else "py3-none-any"
    # A wheel holding several tags names them compressed: py2.py3-none-any.
    if len(tags) > 1:
        parts = [t.split("-") for t in tags]
        tag = "-".join(".".join(dict.fromkeys(p[i] for p in parts)) for i in range(3))
    name = re.sub(r"[-_.]+", "_", dist.metadata["Name"])
    return f"{name}-{dist.version}-{tag}.whl"


def repack_wheel(dist: md.Distribution, out_dir: Path) -> Path:
    """Rebuild a wheel from an installed distribution's RECORD (bytecode left out)."""
    target = out_dir / _wheel_name(dist)
    if target.exists():
        return target
    records: list[tuple[str, str, str]] = []
    record_name = ""
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as whl:
        for file in dist.files or []:
            arc = str(file)
            if arc.endswith("RECORD") and ".dist-info/" in arc:
                record_name = arc
                continue
            if file.suffix == ".pyc" or "__pycache__" in file.parts or arc.endswith("INSTALLER"):
                continue
            path = Path(str(dist.locate_file(file)))
            if arc.startswith("../") or not path.is_file():
                continue  # console scripts: pip regenerates them from entry_points.txt
            data = path.read_bytes()
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            whl.writestr(arc, data)
            records.append((arc, f"sha256={digest}", str(len(data))))
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerows([*records, (record_name, "", "")])
        whl.writestr(record_name, buf.getvalue())
    return target


def real_install(
    dists: dict[str, md.Distribution],
    requirements: list[str],
    workdir: Path,
    label: str,
    with_app: bool,
    problems: list[str],
) -> int:
    """Install ``requirements`` into a fresh venv from wheels repacked from this venv, offline.

    When the requirements do not resolve offline, the problem is appended to ``problems`` and
    the repacked wheels are installed with ``--no-deps``. The project itself is copied rather
    than built: its build backend (setuptools>=77) need
    not be installed here, and ``app/`` is pure Python, so the bytes are the same.
    """
    wheels = workdir / f"{label}-wheels"
    wheels.mkdir()
    for dist in tqdm(list(dists.values()), desc=f"repack {label}", unit="wheel"):
        repack_wheel(dist, wheels)
    venv = workdir / f"{label}-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    pip = [
        str(venv / "bin" / "python"),
        "-m",
        "pip",
        "install",
        "-q",
        "--isolated",
        "--no-index",
        "--disable-pip-version-check",
        "--no-compile",
        "--find-links",
        str(wheels),
    ]
    resolved = subprocess.run(
        [*pip, *requirements], timeout=1200, capture_output=True, text=True, env=env, check=False
    )
    if resolved.returncode != 0:
        # The pins do not resolve against what is installed here: say so, and still measure
        # the same files by installing every repacked wheel as it is.
        lines = resolved.stderr.strip().splitlines()
        problems.append(lines[-1] if lines else f"pip exited {resolved.returncode}")
        subprocess.run(
            [*pip, "--no-deps", *map(str, sorted(wheels.glob("*.whl")))],
            check=True,
            timeout=1200,
            capture_output=True,
            text=True,
            env=env,
        )
    if with_app:
        site = next((venv / "lib").glob("python3*/site-packages"))
        shutil.copytree(
            REPO / "app", site / "app", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    return tree_bytes(venv)


def footprint_suite(
    models: ModelSet, quick: bool = False, install: bool | None = None
) -> SuiteResult:
    """Serving install vs flask + tensorflow-cpu + pillow, on disk, plus a Docker estimate."""
    suite = SuiteResult("footprint", quick)
    install = (not quick) if install is None else install
    serving_reqs = serving_requirements()
    sets = {
        "service": (serving_reqs, models.serving),
        "baseline": (list(UPSTREAM_REQUIREMENTS), models.keras),
    }
    with tempfile.TemporaryDirectory(prefix="bench-footprint-") as tmp:
        work = Path(tmp)
        empty = empty_venv_bytes(work)
        suite.add("empty_venv", Figure.value(empty / MB, "MB"))
        totals: dict[str, float] = {}
        for name, (reqs, model) in sets.items():
            dists, missing = closure(reqs)
            packages = sum(dist_bytes(d) for d in dists.values())
            own = app_bytes() if name == "service" else 0
            model_bytes = model.stat().st_size if model else 0
            suite.add(f"{name}/packages", Figure.value(packages / MB, "MB", len(dists)))
            suite.add(f"{name}/model", Figure.value(model_bytes / MB, "MB"))
            total = empty + packages + own + model_bytes
            suite.add(f"{name}/venv_closure_total", Figure.value(total / MB, "MB", len(dists)))
            totals[name] = total
            biggest = sorted(dists.values(), key=dist_bytes, reverse=True)[:6]
            suite.params[f"{name}_largest"] = {
                d.metadata["Name"]: round(dist_bytes(d) / MB, 1) for d in biggest
            }
            suite.params[f"{name}_distributions"] = len(dists)
            if missing:
                suite.notes.append(f"{name}: not installed here, so not counted: {missing}")
            if model is None:
                suite.notes.append(f"{name}: no model file found; its size is counted as 0")
            if install:
                try:
                    problems: list[str] = []
                    size = real_install(dists, reqs, work, name, name == "service", problems)
                    for problem in problems:
                        suite.notes.append(
                            f"{name}: the requirements do not resolve against "
                            f"the installed versions: {problem}"
                        )
                    suite.add(
                        f"{name}/venv_install_total",
                        Figure.value((size + model_bytes) / MB, "MB", len(dists)),
                    )
                except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
                    detail = getattr(exc, "stderr", "") or str(exc)
                    suite.skip(
                        f"{name}/venv_install_total",
                        f"offline install from repacked wheels failed: "
                        f"{detail.strip().splitlines()[-1] if detail.strip() else exc}",
                    )
            else:
                suite.skip(
                    f"{name}/venv_install_total",
                    "quick run: closure method only" if quick else "--no-install given",
                )
        if "baseline" in totals:
            suite.add(
                "ratio/baseline_vs_service",
                Figure.value(ratio(totals["baseline"], totals["service"]), "x"),
            )
        # The image ships every ONNX form of the model (FP32 and INT8), not only the served one.
        onnx_files = {p for p in (models.fp32, models.int8, models.serving) if p is not None}
        shipped = sum(p.stat().st_size for p in onnx_files)
        serving_model = models.serving.stat().st_size if models.serving else 0
        image = SLIM_BASE_IMAGE_MB + (totals["service"] - serving_model + shipped) / MB
        suite.add("service/docker_image_estimate", Figure.value(image, "MB"))
    suite.params.update(
        {
            "serving_requirements": serving_reqs,
            "baseline_requirements": list(UPSTREAM_REQUIREMENTS),
            "closure_method": "sum of RECORD files (no .pyc, as --no-compile) of the dependency "
            "closure installed in this venv + empty venv + app/ + model",
            "install_method": "wheels repacked from this venv's installed files, then pip install "
            "--no-index --no-compile of the requirements into a fresh venv, app/ "
            "copied in (the build backend, setuptools>=77, is not installed "
            "here), directory walk"
            if install
            else "not run",
            "docker_estimate": f"python:3.11-slim base taken as {SLIM_BASE_IMAGE_MB:.0f} MB "
            "(published size, not measured: no Docker engine here) + the "
            "closure venv + app + the FP32 and INT8 models; an estimate, not a build",
        }
    )
    return suite


# RESULTS.md section and targets (benchmarks.suite.Suite)


def _footprint_section(run: dict[str, Any]) -> list[str]:
    suite = run.get("suites", {}).get("footprint", {})
    figs = suite.get("figures", {})
    if not figs:
        return ["_Footprint suite not run._", ""]
    params = suite.get("params", {})
    rows = []
    for target in ("service", "baseline"):
        rows.append(
            [
                target,
                fmt(figs.get(f"{target}/packages", {}).get("median"), 0),
                str(figs.get(f"{target}/packages", {}).get("n", "—")),
                fmt(figs.get(f"{target}/model", {}).get("median"), 1),
                fmt(figs.get(f"{target}/venv_closure_total", {}).get("median"), 0),
                fmt(figs.get(f"{target}/venv_install_total", {}).get("median"), 0),
            ]
        )
    skipped = suite.get("skipped", {})
    lines = [
        f"Closure method: {params.get('closure_method')}. Install method: "
        f"{params.get('install_method')}.",
        "",
        *table(
            [
                "set",
                "packages MB",
                "distributions",
                "model MB",
                "venv total MB (closure)",
                "venv total MB (real offline install)",
            ],
            rows,
        ),
        f"Ratio baseline / service: {fmt(median(figs, 'ratio/baseline_vs_service'))}×. "
        f"Docker image estimate: **{fmt(median(figs, 'service/docker_image_estimate'), 0)} MB**"
        f" — {params.get('docker_estimate')}.",
        "",
        f"Largest serving packages: {_sizes(params.get('service_largest'))}. "
        f"Largest baseline packages: {_sizes(params.get('baseline_largest'))}.",
        "",
    ]
    if skipped:
        lines += [
            "Real-install figures not measured: "
            + "; ".join(f"{k}: {v}" for k, v in skipped.items())
            + ".",
            "",
        ]
    return lines


def _sizes(largest: Any) -> str:
    if not isinstance(largest, dict):
        return "—"
    return ", ".join(f"{name} {size:.0f} MB" for name, size in largest.items())


def _run(models: ModelSet, args: argparse.Namespace) -> SuiteResult:
    return footprint_suite(models, args.quick, args.install)


SUITE = Suite(
    name="footprint",
    help="disk size of the serving install vs flask + tensorflow-cpu + pillow",
    run=_run,
    title="Footprint on disk",
    section=_footprint_section,
)
