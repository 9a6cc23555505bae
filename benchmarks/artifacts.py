"""Which model files a run measures: read from the manifest, overridable on the command line."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.inference.spec import ModelSpec

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
MANIFEST_CANDIDATES = (
    REPO / "models" / "manifest.json",
    REPO / "models" / "upstream" / "manifest.json",
)
MODEL_SUFFIXES = (".onnx", ".h5", ".keras")
# Where a manifest's source HDF5 may live when it records only the file name and sha256.
SOURCE_DIRS = (
    REPO / "models",
    REPO / "models" / "upstream",
    REPO / "training" / "runs" / "final",
    REPO / "tests" / "fixtures",
    REPO.parent / "shared" / "models" / "seed",
)


@dataclass(frozen=True, slots=True)
class ModelSet:
    """The same model as Keras source, FP32 ONNX and INT8 ONNX, plus the one the server loads."""

    manifest: Path | None
    keras: Path | None
    fp32: Path | None
    int8: Path | None
    serving: Path | None

    def describe(self) -> dict[str, Any]:
        from app.inference.classifier import file_sha256

        out: dict[str, Any] = {"manifest": _rel(self.manifest)}
        for name in ("keras", "fp32", "int8", "serving"):
            path: Path | None = getattr(self, name)
            out[name] = (
                {"path": _rel(path), "bytes": path.stat().st_size, "sha256": file_sha256(path)}
                if path
                else None
            )
        if self.int8 is not None:
            out["int8"]["quantization"] = quantization_scheme(self.int8)
        return out

    @property
    def any_onnx(self) -> Path | None:
        return self.serving or self.fp32 or self.int8

    def spec(self) -> ModelSpec:
        """The input contract, read from the ONNX metadata (the server reads the same)."""
        import onnx

        path = self.any_onnx
        if path is None:
            raise FileNotFoundError("no ONNX model found; run `python -m conversion build` first")
        props = {
            p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props
        }
        return ModelSpec.from_metadata(props)


def _rel(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def _walk(
    node: Any, keys: tuple[str, ...] = (), parent: dict[str, Any] | None = None
) -> Iterator[tuple[str, tuple[str, ...], dict[str, Any]]]:
    """Yield (string value, key path, the dict that holds it) for every string in ``node``."""
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, str):
                yield value, (*keys, str(key)), node
            else:
                yield from _walk(value, (*keys, str(key)), node)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            if isinstance(value, str):
                yield value, (*keys, str(i)), {}
            else:
                yield from _walk(value, (*keys, str(i)), {})


def _context(holder: dict[str, Any]) -> str:
    # The scalar values beside a path (precision, kind...), not other paths.
    return " ".join(
        str(v)
        for v in holder.values()
        if isinstance(v, str | int | float | bool) and not str(v).lower().endswith(MODEL_SUFFIXES)
    )


def _resolve(value: str, base: Path) -> Path | None:
    for root in (base, REPO, REPO / "models"):
        path = (root / value).resolve()
        if path.is_file():
            return path
    return None


def _affinity(a: Path, b: Path | None) -> tuple[int, int]:
    # Prefer files beside the preferred model and sharing the longest name prefix with it.
    if b is None:
        return (0, 0)
    shared = 0
    for x, y in zip(a.name, b.name, strict=False):
        if x != y:
            break
        shared += 1
    return (int(a.parent == b.parent), shared)


def read_manifest(manifest: Path) -> ModelSet:
    """Find Keras, FP32 and INT8 files in a manifest without depending on its exact layout."""
    data = json.loads(manifest.read_text())
    base = manifest.parent
    preferred = (
        _resolve(data["preferred"], base) if isinstance(data.get("preferred"), str) else None
    )
    onnx_fp32: list[Path] = []
    onnx_int8: list[Path] = []
    keras: list[Path] = []
    from app.inference.classifier import file_sha256

    for value, keys, holder in _walk(data):
        lowered = [k.lower() for k in keys]
        if not value.lower().endswith(MODEL_SUFFIXES) or any("triton" in k for k in lowered):
            continue
        if keys == ("preferred",):  # resolved above; its siblings describe the whole manifest
            continue
        path = _resolve(value, base)
        if path is None:
            continue
        if path.suffix != ".onnx":
            sha = holder.get("sha256")
            if not isinstance(sha, str) or file_sha256(path) == sha:
                keras.append(path)
        elif any("int8" in k for k in lowered):
            onnx_int8.append(path)
        elif any("fp32" in k for k in lowered):
            onnx_fp32.append(path)
        else:
            text = " ".join((_context(holder), path.name)).lower()
            (onnx_int8 if ("int8" in text or "quant" in text) else onnx_fp32).append(path)
    source = data.get("source")
    if not keras and isinstance(source, dict) and isinstance(source.get("file"), str):
        found = find_source(source["file"], source.get("sha256"), base)
        if found:
            keras.append(found)

    def best(paths: list[Path]) -> Path | None:
        unique = sorted(set(paths))
        return max(unique, key=lambda p: _affinity(p, preferred)) if unique else None

    fp32 = best([p for p in onnx_fp32 if p not in onnx_int8])
    return ModelSet(manifest, best(keras), fp32, best(onnx_int8), preferred or fp32)


def find_source(name: str, sha256: str | None, base: Path) -> Path | None:
    """The source HDF5 by name beside the manifest or in the usual places, checked by sha256."""
    from app.inference.classifier import file_sha256

    for folder in (base, *SOURCE_DIRS):
        path = folder / name
        if path.is_file() and (not sha256 or file_sha256(path) == sha256):
            return path.resolve()
    if sha256:  # renamed copies, e.g. tests/fixtures/upstream_skin.h5
        for folder in (base, *SOURCE_DIRS):
            for path in sorted(folder.glob("*.h5")) if folder.is_dir() else []:
                if file_sha256(path) == sha256:
                    return path.resolve()
    log.warning("source model %s (sha256 %s) not found; Keras figures need --keras", name, sha256)
    return None


def resolve_models(
    manifest: Path | None = None,
    keras: Path | None = None,
    fp32: Path | None = None,
    int8: Path | None = None,
    serving: Path | None = None,
) -> ModelSet:
    """The manifest's models with any explicit path taking precedence.

    ``serving`` defaults to ``APP_MODEL_PATH`` when set, else the manifest's preferred model,
    i.e. what ``python -m app`` would load.
    """
    found = ModelSet(None, None, None, None, None)
    candidates = (manifest,) if manifest else MANIFEST_CANDIDATES
    for candidate in candidates:
        if candidate and candidate.is_file():
            found = read_manifest(candidate.resolve())
            break
    else:
        if manifest:
            raise FileNotFoundError(f"manifest not found: {manifest}")
        log.warning("no models/manifest.json; only explicitly given model paths are measured")
    env_model = os.environ.get("APP_MODEL_PATH")
    chosen_serving = serving or (Path(env_model) if env_model else None) or found.serving
    models = ModelSet(
        manifest=found.manifest,
        keras=keras or found.keras,
        fp32=fp32 or found.fp32,
        int8=int8 or found.int8,
        serving=chosen_serving or fp32 or int8,
    )
    for name in ("keras", "fp32", "int8", "serving"):
        path = getattr(models, name)
        if path is not None and not path.is_file():
            raise FileNotFoundError(f"{name} model not found: {path}")
    return models


def quantization_scheme(path: Path) -> dict[str, list[str]]:
    """Integer types of a QDQ model's activations and weights, read from the graph.

    "INT8" files differ: the build keeps the best-agreeing attempt, which may have 16-bit
    activations (A16W8), and onnxruntime's CPU provider has no 16-bit integer kernels, so such
    a model runs as float convolutions between Q/DQ pairs. The report says which it timed.
    """
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    inits = {i.name: i for i in graph.initializer}

    def dtype(name: str) -> str:
        return str(onnx.TensorProto.DataType.Name(inits[name].data_type)).lower()

    activations = {
        dtype(n.input[2])
        for n in graph.node
        if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in inits
    }
    weights = {  # quantised kernels: multi-element initialisers of rank >= 2 behind a DQ
        dtype(n.input[0])
        for n in graph.node
        if n.op_type == "DequantizeLinear"
        and n.input[0] in inits
        and len(inits[n.input[0]].dims) > 1
        and math.prod(inits[n.input[0]].dims) > 1
    }
    return {"activations": sorted(activations), "weights": sorted(weights)}
