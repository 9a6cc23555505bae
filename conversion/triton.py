"""Triton Inference Server model repository export (``platform: "onnxruntime_onnx"``).

Names, dtypes and dims come from the ONNX file itself, so the config cannot drift from the model.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import onnx

from app.inference.spec import ModelSpec
from conversion.errors import ConversionError
from conversion.files import atomic_path, write_text

TRITON_DTYPES = {
    onnx.TensorProto.FLOAT: "TYPE_FP32",
    onnx.TensorProto.FLOAT16: "TYPE_FP16",
    onnx.TensorProto.DOUBLE: "TYPE_FP64",
    onnx.TensorProto.UINT8: "TYPE_UINT8",
    onnx.TensorProto.INT8: "TYPE_INT8",
    onnx.TensorProto.INT32: "TYPE_INT32",
    onnx.TensorProto.INT64: "TYPE_INT64",
}


def _io_entries(values: Any) -> list[dict[str, Any]]:
    entries = []
    for value in values:
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
        if not dims or dims[0] != -1:
            raise ConversionError(f"{value.name}: Triton batching needs a dynamic first dimension")
        entries.append(
            {"name": value.name, "data_type": TRITON_DTYPES[tensor.elem_type], "dims": dims[1:]}
        )
    return entries


def triton_config(
    model: onnx.ModelProto,
    name: str,
    max_batch_size: int = 32,
    preferred_batch_sizes: tuple[int, ...] = (8,),
    max_queue_delay_us: int = 2000,
    instances: int = 1,
    threads: int = 1,
) -> str:
    """The ``config.pbtxt`` text for ``model``; the batch dimension is Triton's, not in ``dims``."""
    inputs = [
        v for v in model.graph.input if v.name not in {i.name for i in model.graph.initializer}
    ]

    def block(kind: str, entries: list[dict[str, Any]], labels: bool) -> str:
        items = []
        for e in entries:
            label = '\n    label_filename: "labels.txt"' if labels else ""
            items.append(
                f'  {{\n    name: "{e["name"]}"\n    data_type: {e["data_type"]}\n'
                f"    dims: [ {', '.join(str(d) for d in e['dims'])} ]{label}\n  }}"
            )
        return f"{kind} [\n" + ",\n".join(items) + "\n]\n"

    return (
        f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: {max_batch_size}\n'
        + block("input", _io_entries(inputs), False)
        + block("output", _io_entries(model.graph.output), True)
        + "dynamic_batching {\n"
        f"  preferred_batch_size: [ {', '.join(map(str, preferred_batch_sizes))} ]\n"
        f"  max_queue_delay_microseconds: {max_queue_delay_us}\n}}\n"
        f"instance_group [\n  {{\n    count: {instances}\n    kind: KIND_CPU\n  }}\n]\n"
        'parameters { key: "intra_op_thread_count" value: { string_value: "'
        f'{threads}" }} }}\n'
    )


def export_triton(model_path: Path, spec: ModelSpec, repo: Path, max_batch_size: int = 32) -> Path:
    """Write ``repo/<name>/1/model.onnx``, ``config.pbtxt`` and ``labels.txt`` (the model dir)."""
    model = onnx.load(str(model_path))
    target = repo / spec.name
    config = triton_config(model, spec.name, max_batch_size)
    (target / "1").mkdir(parents=True, exist_ok=True)
    with atomic_path(target / "1" / "model.onnx") as tmp:
        shutil.copyfile(model_path, tmp)
    write_text(target / "labels.txt", "\n".join(spec.labels) + "\n")
    write_text(target / "config.pbtxt", config)
    return target


_TOKEN = re.compile(r'\s*(?:(#[^\n]*)|("(?:[^"\\]|\\.)*")|([{}\[\]:,])|([^\s{}\[\]:,"]+))')


def parse_pbtxt(text: str) -> dict[str, Any]:
    """A small protobuf text-format reader, enough to check our configs against the model.

    Repeated fields become lists; ``key [ ... ]`` lists are flattened into the same list.
    """
    tokens: list[str] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            if text[pos:].strip():
                raise ValueError(f"cannot parse pbtxt at {pos}: {text[pos : pos + 20]!r}")
            break
        pos = m.end()
        if m.group(1) is None and (tok := m.group(2) or m.group(3) or m.group(4)):
            tokens.append(tok)

    def scalar(tok: str) -> Any:
        if tok.startswith('"'):
            return bytes(tok[1:-1], "utf-8").decode("unicode_escape")
        for cast in (int, float):
            try:
                return cast(tok)
            except ValueError:
                pass
        return tok  # enum identifier

    def value(i: int) -> tuple[Any, int]:
        if tokens[i] == "{":
            return message(i + 1, "}")
        if tokens[i] == "[":
            items: list[Any] = []
            i += 1
            while tokens[i] != "]":
                item, i = value(i)
                items.append(item)
                if tokens[i] == ",":
                    i += 1
            return items, i + 1
        return scalar(tokens[i]), i + 1

    def message(i: int, end: str | None) -> tuple[dict[str, Any], int]:
        out: dict[str, Any] = {}
        while i < len(tokens) and tokens[i] != end:
            key = tokens[i]
            i += 1
            if tokens[i] == ":":
                i += 1
            val, i = value(i)
            vals = val if isinstance(val, list) else [val]
            out.setdefault(key, []).extend(vals)
        return out, i + 1

    parsed, _ = message(0, None)
    return parsed
