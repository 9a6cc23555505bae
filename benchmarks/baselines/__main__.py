"""python -m benchmarks.baselines --model M.h5 --port P ...: serve the upstream-style baseline."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.baselines",
        description="Upstream-style Flask + Keras server (threaded werkzeug), for benchmarks only",
    )
    parser.add_argument("--model", type=Path, required=True, help="Keras .h5 model")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--width", type=int, required=True)
    parser.add_argument("--height", type=int, required=True)
    parser.add_argument("--scale", type=float, default=1.0, help="pixel * scale + offset")
    parser.add_argument("--offset", type=float, default=0.0)
    parser.add_argument("--upload-dir", type=Path, default=Path(tempfile.gettempdir()) / "uploads")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)

    from werkzeug.serving import make_server

    from benchmarks.baselines.upstream import create_app

    app = create_app(
        args.model, (args.width, args.height), args.scale, args.offset, args.upload_dir
    )
    server = make_server(args.host, args.port, app, threaded=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
