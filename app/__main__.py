"""python -m app [serve|migrate] — the service's command line."""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from app.config import ConfigError, Settings, environment_help
from app.logs import configure_logging

# A live frame a little over the image limit still reaches the handler, which answers a JSON
# error; uvicorn closes the socket (1009) only on frames far beyond it, before buffering them.
WS_FRAME_MARGIN = 1024 * 1024


def early_answer_protocol() -> Any:
    """uvicorn's httptools protocol with the bounds of app.http_protocol, as a factory (imported
    only to serve: it loads uvicorn)."""
    from app.http_protocol import buffered_early_answer_protocol

    return buffered_early_answer_protocol


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run`` derived from the settings."""
    return {
        "host": settings.host,
        "port": settings.port,
        "loop": "uvloop",
        # httptools, bounding the body read after an early answer (AdmissionControl's 503s)
        "http": early_answer_protocol(),
        "lifespan": "on",
        "log_level": settings.log_level.lower(),
        "access_log": False,  # app.logs.AccessLog writes one line per request instead
        "log_config": None,  # create_app configures logging once, for uvicorn too
        # uvicorn's default (16 MiB) ignores APP_MAX_UPLOAD_MB.
        "ws_max_size": settings.max_upload_bytes + WS_FRAME_MARGIN,
        # X-Forwarded-For/-Proto count only from APP_TRUSTED_PROXIES (the client's address for
        # the login throttle and the audit log, https for Secure cookies and HSTS).
        "proxy_headers": settings.trusted_proxies != "none",
        "forwarded_allow_ips": settings.trusted_proxies
        if settings.trusted_proxies != "none"
        else "",
    }


def serve(settings: Settings) -> int:
    """Run the server with uvicorn + uvloop + httptools.

    Chosen over granian by measurement on the 2-core target (see benchmarks/ and the issue 5
    notes): equal or better on the predict path, and it lets this process hand its already
    loaded model to the app instead of loading it twice.
    """
    import uvicorn

    from app.db.drivers import hide_unused_postgres_driver
    from app.inference.classifier import ModelLoadError
    from app.inference.service import open_classifier

    hide_unused_postgres_driver(settings.database_url)
    from app.main import create_app

    # Refuse to start with a one-line reason before binding the port.
    try:
        classifier = open_classifier(settings)
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    options = uvicorn_options(settings)
    print(
        f"Serving on http://{settings.host}:{settings.port}  (model {settings.model_path})",
        flush=True,
    )
    if settings.workers > 1:
        # Each worker process loads its own copy; on 2 cores one worker is usually best.
        uvicorn.run("app.main:create_app", factory=True, workers=settings.workers, **options)
    else:
        try:
            app = create_app(settings, classifier)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        # uvicorn exits with status 3 itself when the lifespan start-up fails.
        from app.http_protocol import FairAcceptServer

        if settings.health_port is not None:
            probes = f"http://{settings.host}:{settings.health_port}/health/ready"
            print(f"Probes on {probes}", flush=True)
        FairAcceptServer(uvicorn.Config(app, **options), settings.health_port).run()
    return 0


def storage_check(settings: Settings, repair: bool, min_age_s: float) -> int:
    """``python -m app storage check``: 0 when the store and the database agree, else 1."""
    import asyncio

    from app.db.drivers import hide_unused_postgres_driver

    hide_unused_postgres_driver(settings.database_url)  # before Piccolo is imported
    from app.db import engine as db_engine
    from app.storage import check_storage

    async def run() -> int:
        engine = db_engine.make_engine(settings)
        db_engine.bind(engine)
        await db_engine.start(engine)
        try:
            if settings.storage == "database":
                from app.db.blobs import check_database_store

                problems = await check_database_store(repair, min_age_s)
                for line in problems:
                    print(line)
                print(f"{len(problems)} problem(s) in the database store")
                return 0 if all(p.endswith("(removed)") for p in problems) else 1
            check = await check_storage(settings.images_dir, repair, min_age_s)
        finally:
            await db_engine.stop(engine)
        for name in check.orphans:
            state = "removed" if name in check.removed else "kept"
            print(f"orphan file {name} ({state})")
        for name in check.temporaries:
            state = "removed" if name in check.removed else "kept"
            print(f"unfinished write {name} ({state})")
        for analysis_id, name in check.missing:
            print(f"analysis {analysis_id}: image {name} is missing")
        print(check.summary())
        return 0 if check.clean else 1

    return asyncio.run(run())


def storage_migrate(settings: Settings, target: str) -> int:
    """``python -m app storage migrate --to database``: copy the encrypted files of an install
    into the database (idempotent; no file is deleted). 0 when every image is there."""
    import asyncio

    from app.db.drivers import hide_unused_postgres_driver

    hide_unused_postgres_driver(settings.database_url)
    from app.db import engine as db_engine
    from app.db.blobs import DatabaseStore, migrate_to_database
    from app.db.migrate import pending_migrations
    from app.storage import StorageError, parse_key

    if target != "database":
        print(f"error: only --to database is supported, not {target!r}", file=sys.stderr)
        return 2
    settings = settings.with_secrets()  # the key that decrypts the files, checked per file

    async def run() -> int:
        engine = db_engine.make_engine(settings)
        db_engine.bind(engine)
        await db_engine.start(engine)
        try:
            if todo := await pending_migrations(engine):
                print(f"error: {len(todo)} migration(s) pending: run `python -m app migrate`")
                return 2
            store = DatabaseStore(settings.images_dir, parse_key(settings.storage_key or ""))
            try:
                moved = await migrate_to_database(store)
            except StorageError as exc:
                print(f"error: {exc}; nothing after it was copied", file=sys.stderr)
                return 1
        finally:
            await db_engine.stop(engine)
        for analysis_id, name in moved.missing_images:
            print(f"analysis {analysis_id}: image {name} is missing from {settings.images_dir}")
        print(moved.summary())
        if moved.complete:
            print("now set APP_STORAGE=database; the files were left in place")
        return 0 if moved.complete else 1

    return asyncio.run(run())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app", description="Skin lesion service")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser(
        "serve",
        help="serve HTTP (default)",
        epilog=environment_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub.add_parser("migrate", help="apply database migrations")
    tok = sub.add_parser("create-token", help="create an API token for a user (printed once)")
    tok.add_argument("username")
    tok.add_argument("--name", default="cli", help="a label to tell tokens apart")
    user = sub.add_parser(
        "create-user", help="create an account (the password is read from standard input)"
    )
    user.add_argument("username")
    user.add_argument("--role", choices=["clinician", "admin"], default="clinician")
    role = sub.add_parser("set-role", help="make a user a clinician or an admin")
    role.add_argument("username")
    role.add_argument("role", choices=["clinician", "admin"])
    store = sub.add_parser("storage", help="the encrypted file store")
    store_sub = store.add_subparsers(dest="storage_command", required=True)
    check = store_sub.add_parser(
        "check", help="report orphan files and analyses whose image file is missing"
    )
    check.add_argument(
        "--repair",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="remove orphan files and unfinished writes older than --min-age-minutes",
    )
    check.add_argument(
        "--min-age-minutes",
        type=float,
        default=60.0,
        help="younger files may be uploads in progress: never removed (default 60)",
    )
    move = store_sub.add_parser(
        "migrate",
        help="copy the encrypted images and reports from APP_DATA_DIR/images into the "
        "database (APP_STORAGE=database); idempotent, deletes no file",
    )
    move.add_argument("--to", required=True, choices=["database"], dest="target")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    if args.command == "migrate":
        from app.db.migrate import migrate

        migrate(settings)
        return 0
    if args.command == "storage" and args.storage_command == "migrate":
        return storage_migrate(settings, args.target)
    if args.command == "storage":
        return storage_check(settings, args.repair, args.min_age_minutes * 60)
    if args.command in ("create-token", "set-role", "create-user"):
        from app.auth.admin import AdminError, create_api_token, create_user, set_role

        try:
            if args.command == "create-user":
                password = (
                    getpass.getpass("Password: ") if sys.stdin.isatty() else sys.stdin.readline()
                ).rstrip("\n")
                create_user(settings, args.username, password, args.role)
                print(f"created {args.username} ({args.role})")
            elif args.command == "create-token":
                print(create_api_token(settings, args.username, args.name))
            else:
                set_role(settings, args.username, args.role)
                print(f"{args.username} is now {args.role}")
        except AdminError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    return serve(settings)


if __name__ == "__main__":
    raise SystemExit(main())
