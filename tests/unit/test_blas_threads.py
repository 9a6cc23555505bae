"""The server's matrix products run on one BLAS thread (the workers already use a core each)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("threadpoolctl")

PROBE = (
    "import app, numpy, threadpoolctl; "
    "print(max(p['num_threads'] for p in threadpoolctl.threadpool_info() "
    "if p['user_api'] == 'blas'))"
)


def blas_threads(**env: str) -> int:
    clean = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip())


def test_importing_the_app_first_gives_numpy_one_blas_thread() -> None:
    assert blas_threads() == 1


def test_the_environment_still_decides() -> None:
    assert blas_threads(OPENBLAS_NUM_THREADS="2") == min(2, os.cpu_count() or 2)
