"""python -m app [serve|migrate] — the service's command line."""

from __future__ import annotations

import argparse
import logging
import sys

from app.config import ConfigError, Settings


def serve(settings: Settings) -> int:
    """Run the server with uvicorn + uvloop (measured against granian in benchmarks/)."""
    import uvicorn

    from app.inference.classifier import Classifier, ModelLoadError

    # Refuse to start with a one-line reason before binding the port.
    try:
        Classifier(settings.model_path, settings.providers, 1)
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"Serving on http://{settings.host}:{settings.port}  (model {settings.model_path})",
          flush=True)
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        loop="uvloop",
        http="httptools",
        log_level=settings.log_level.lower(),
        access_log=False,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app", description="Skin lesion service")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="serve HTTP (default)")
    sub.add_parser("migrate", help="apply database migrations")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "migrate":
        from app.db.migrate import migrate

        migrate(settings)
        return 0
    return serve(settings)


if __name__ == "__main__":
    raise SystemExit(main())
