"""APP_PROVIDERS on a real GPU: `auto` takes CUDA, and CUDA answers like the CPU.

Runs only where onnxruntime-gpu sees a GPU (the `gpu` extra on a CUDA machine); everywhere
else the whole module is skipped with that reason. Only numpy, OpenCV, onnxruntime and the
app's inference package are imported, so it runs on a bare GPU box without the web stack.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from app.config import default_model_path
from app.inference.classifier import Classifier, choose_providers
from app.inference.preprocess import preprocess

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        "CUDAExecutionProvider" not in ort.get_available_providers(),
        reason="onnxruntime has no CUDAExecutionProvider here (needs the gpu extra and a GPU)",
    ),
]


@pytest.fixture(scope="module")
def batch(fixture_images: list[tuple[Path, str]]) -> np.ndarray:
    cpu = Classifier(default_model_path(), "cpu")
    return np.stack([preprocess(p.read_bytes(), cpu.spec) for p, _ in fixture_images])


def test_auto_chooses_cuda_and_logs_it(caplog: pytest.LogCaptureFixture) -> None:
    assert choose_providers("auto")[0] == "CUDAExecutionProvider"
    with caplog.at_level(logging.INFO, logger="app.inference.classifier"):
        classifier = Classifier(default_model_path(), "auto")
    # ORT silently falls back to the CPU when the CUDA libraries fail to load: check the session.
    assert classifier.providers[0] == "CUDAExecutionProvider"
    assert "on CUDAExecutionProvider" in caplog.text


def test_cuda_matches_cpu_on_real_images(batch: np.ndarray) -> None:
    cpu = Classifier(default_model_path(), "cpu").run(batch)
    cuda = Classifier(default_model_path(), "cuda").run(batch)
    assert cuda.shape == cpu.shape == (len(batch), 7)
    print(f"max |CUDA - CPU| = {np.abs(cuda - cpu).max():.2e}")
    # TF32 is off (PROVIDER_OPTIONS): with it on, an H100 differed by up to 4e-3.
    np.testing.assert_allclose(cuda, cpu, atol=1e-4)
    assert (cuda.argmax(1) == cpu.argmax(1)).all()


def test_cuda_batches_equal_single_images(batch: np.ndarray) -> None:
    cuda = Classifier(default_model_path(), "cuda")
    together = cuda.run(batch)
    alone = np.concatenate([cuda.run(batch[i : i + 1]) for i in range(len(batch))])
    print(f"max |batched - single| on CUDA = {np.abs(together - alone).max():.2e}")
    np.testing.assert_allclose(together, alone, atol=1e-4)


LOAD_WITHOUT_GPU = """
import logging, sys
logging.basicConfig(level=logging.INFO)
from app.config import default_model_path
from app.inference.classifier import Classifier, ModelLoadError
try:
    print("ON", Classifier(default_model_path(), sys.argv[1]).providers[0])
except ModelLoadError as exc:
    print("REFUSED", exc)
"""


@pytest.mark.parametrize("requested", ["auto", "cuda"])
def test_gpu_hidden_auto_falls_back_and_cuda_refuses(requested: str) -> None:
    # onnxruntime-gpu still lists CUDAExecutionProvider when no GPU is visible (a CUDA image
    # started without --gpus): `auto` must serve on the CPU, `cuda` must refuse to start.
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run(
        [sys.executable, "-c", LOAD_WITHOUT_GPU, requested],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    print(out.stdout, out.stderr[-2000:])
    if requested == "auto":
        assert "ON CPUExecutionProvider" in out.stdout
        assert "falling back to the CPU" in out.stderr or "failed to start" in out.stderr
    else:
        assert "REFUSED" in out.stdout
