"""The layers import one way: the inference layer and the offline tools never load the web
framework (issue 14's first step: the error classes are a leaf)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_inference_and_conversion_do_not_import_litestar() -> None:
    code = (
        "import sys\n"
        "import app.inference.service, app.inference.explain, app.inference.gate\n"
        "import conversion.cam, conversion.gate, conversion.gradcam, conversion.verify\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'litestar')\n"
        "print(loaded[:5])\n"
        "raise SystemExit(1 if loaded else 0)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_an_image_error_is_an_app_error() -> None:
    from app.errors import AppError
    from app.inference.preprocess import ImageError

    assert issubclass(ImageError, AppError)


def _imports(package: str) -> dict[str, set[str]]:
    """Module -> the project modules it imports, at any level (function-level ones included)."""
    import ast

    modules: dict[str, Path] = {}
    for path in (REPO / package).rglob("*.py"):
        rel = path.relative_to(REPO).parts
        if "piccolo_migrations" in rel or any(part.startswith(".") for part in rel):
            continue  # generated migrations; benchmarks/.work holds the peers' venvs
        parts = path.relative_to(REPO).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            graph[module] |= {n for n in names if n != module and n.split(".")[0] in TOP}
    return graph


TOP = {"app", "conversion", "benchmarks", "training"}


def test_no_import_cycle_inside_app() -> None:
    imports = _imports("app")
    graph = {m: {t for t in ts if t in imports} for m, ts in imports.items()}
    seen: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        seen[module] = 1
        for target in sorted(graph[module]):
            if seen.get(target) == 1:
                cycle = [*path[path.index(target) :], target] if target in path else [target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in seen:
                visit(target, [*path, target])
        seen[module] = 2

    for module in sorted(graph):
        if module not in seen:
            visit(module, [module])


def test_the_tools_import_only_downwards() -> None:
    # benchmarks -> conversion -> app.inference; training -> conversion -> app.inference
    allowed = {
        "app": {"app"},
        "conversion": {"conversion", "app"},
        "training": {"training", "conversion", "app"},
        "benchmarks": {"benchmarks", "conversion", "app"},
    }
    for package, may in allowed.items():
        for module, targets in _imports(package).items():
            wrong = sorted(t for t in targets if t.split(".")[0] not in may)
            assert not wrong, f"{module} imports {wrong}"
