"""After a burst the classifier gives back what its CPU arena grew to (issue 16: the idle server
stayed 141-156 MB above its pre-burst RSS). The real bundled model, in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import ctypes, json, numpy as np, psutil
from app.config import default_model_path
from app.inference.classifier import Classifier

def rss():
    return psutil.Process().memory_info().rss / 2**20

c = Classifier(default_model_path(), "cpu", threads=1)
c.run(np.zeros((1, *c.input_shape), np.float32))
loaded = rss()
c.run(np.zeros((32, *c.input_shape), np.float32))  # the batcher's largest batch
grown = rss()
if RELEASE:
    c.release_memory()
ctypes.CDLL("libc.so.6").malloc_trim(0)
after = rss()
c.run(np.zeros((4, *c.input_shape), np.float32))  # and it still runs
print(json.dumps({"loaded": loaded, "grown": grown, "after": after}))
"""


def memory(release: bool) -> dict[str, float]:
    code = PROBE.replace("RELEASE", str(release))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_classifier_release_memory_gives_back_the_arena_a_big_batch_grew() -> None:
    kept = memory(release=False)  # trimming the heap alone: the arena keeps its regions
    released = memory(release=True)
    assert kept["grown"] - kept["loaded"] > 20, kept  # a big batch does grow the arena
    assert kept["after"] - kept["loaded"] > 0.5 * (kept["grown"] - kept["loaded"]), kept
    assert released["after"] - released["loaded"] < 0.5 * (
        released["grown"] - released["loaded"]
    ), released
