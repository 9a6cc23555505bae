"""What the numbers were measured on: CPU, flags, usable cores, library versions, git commit."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import psutil

from app.config import cpu_model_and_flags, usable_cpus

REPO = Path(__file__).resolve().parent.parent
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
LIBRARIES = (
    "onnxruntime",
    "numpy",
    "opencv-python-headless",
    "opencv-python",
    "tensorflow",
    "tensorflow-cpu",
    "keras",
    "litestar",
    "uvicorn",
    "flask",
    "pillow",
    "httpx",
    "aiohttp",
)


def cpu_info() -> dict[str, Any]:
    """CPU model and the SIMD flags that decide INT8 and FP32 speed."""
    model, flags = cpu_model_and_flags()
    return {
        "model": model or platform.processor() or "unknown",
        "arch": platform.machine(),
        "flags": {flag: flag in flags for flag in CPU_FLAGS},
        "usable_cores": usable_cpus(),
        "host_cores": os.cpu_count() or 1,
    }


def versions() -> dict[str, str | None]:
    """Installed versions of the libraries the figures depend on; None when not installed."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def git_state() -> dict[str, Any]:
    """Short sha and whether tracked files had uncommitted changes (read-only git calls)."""

    def git(*args: str) -> str:
        try:
            result = subprocess.run(
                ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return result.stdout.strip() if result.returncode == 0 else ""

    sha = git("rev-parse", "--short", "HEAD") or "nogit"
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    return {"sha": sha, "dirty": dirty}


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages: a busy machine explains noisy absolute times."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def describe() -> dict[str, Any]:
    return {
        "cpu": cpu_info(),
        "os": platform.platform(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
    }
