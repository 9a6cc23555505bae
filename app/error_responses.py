"""Any exception -> what the client is told: status, code, detail, headers. One mapping,
shared by the exception handler and the metrics."""

from __future__ import annotations

import errno
import logging
import sqlite3
from dataclasses import dataclass
from typing import Any

from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from app.errors import (
    AppError,
    ClientDisconnectedError,
    DatabaseUnavailableError,
    StorageFullError,
    StorageReadOnlyError,
)
from app.inference.gate import ImageRejectedError
from app.page_helpers import html_error, wants_html

log = logging.getLogger(__name__)


# What Litestar's request.stream() raises (as a 500) on an http.disconnect mid-body.
_LITESTAR_DISCONNECT = "client disconnected prematurely"


def _is_client_disconnect(exc: Exception) -> bool:
    """Whether ``exc`` is Litestar reporting that the client left while its body was read."""
    return isinstance(exc, HTTPException) and exc.detail == _LITESTAR_DISCONNECT


# asyncpg exception classes (by name: a SQLite process never imports asyncpg) that mean the
# server is down, unreachable, shutting down, out of connections or cancelled our statement
# (statement_timeout), not that a query is wrong.
_PG_OUTAGES = {
    "PostgresConnectionError",  # ConnectionDoesNotExistError, ConnectionFailureError...
    "OperatorInterventionError",  # CannotConnectNowError, AdminShutdownError, QueryCanceledError
    "InsufficientResourcesError",  # TooManyConnectionsError
}
_SQLITE_OUTAGES = ("database is locked", "unable to open database file", "disk I/O error")
_DATABASE_MODULES = ("asyncpg", "piccolo", "aiosqlite", "sqlite3")


def _raised_by_the_database(exc: BaseException) -> bool:
    """Whether ``exc`` was raised inside the database stack (driver, pool, ORM)."""
    tb = exc.__traceback__
    while tb is not None:
        module = str(tb.tb_frame.f_globals.get("__name__", ""))
        if module.split(".")[0] in _DATABASE_MODULES:
            return True
        tb = tb.tb_next
    return False


def _is_database_outage(exc: BaseException) -> bool:
    """The database cannot answer now (down, frozen, locked, unreachable): a 503, not a 500."""
    pg = {t.__name__ for t in type(exc).__mro__ if t.__module__.startswith("asyncpg")}
    if pg & _PG_OUTAGES:
        return True
    if "InterfaceError" in pg and "closed" in str(exc):  # a pooled connection that dropped
        return True
    # A pooled connection the server terminated mid-operation (PostgreSQL restarted under
    # load, issue 18's failover test) can be handed out once more in this state before the
    # pool drops it: the database's outage, not the request's fault.
    if "InternalClientError" in pg and "another operation" in str(exc):
        return True
    if isinstance(exc, sqlite3.OperationalError):
        return any(reason in str(exc) for reason in _SQLITE_OUTAGES)
    # Connection refused or reset, a connect or pool-acquire timeout: only from the database.
    return isinstance(exc, OSError | TimeoutError) and _raised_by_the_database(exc)


# Litestar answers any multipart parser limit as 400 "Request Entity Too Large" (its FIXME for
# 3.0), which reads as a size problem; the parser's own message, kept as the context, says
# which limit it was.
_MULTIPART_LIMITS = {
    "Maximum segment count exceeded": "the form has too many parts (files and fields)",
    "Maximum segment header length exceeded": (
        "a form part's header is over 4 KB: is a file name that long?"
    ),
    "Maximum segment header count exceeded": "a form part has too many headers",
}


def _multipart_limit(exc: Exception) -> str | None:
    """What a multipart limit that Litestar reported as "Request Entity Too Large" was."""
    if not (isinstance(exc, HTTPException) and exc.detail == "Request Entity Too Large"):
        return None
    context = exc.__context__
    if type(context).__name__ != "ParserLimitReached":
        return None
    reason = str(context)
    return _MULTIPART_LIMITS.get(reason, f"the form is over a multipart limit ({reason})")


def _storage_failure(exc: BaseException) -> AppError | None:
    """A full or read-only disk (files or the SQLite database): the operator's to fix."""
    full = "nothing was saved: the server's disk is full; tell the administrator"
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFullError(full)
    if isinstance(exc, OSError) and exc.errno == errno.EROFS:
        return StorageReadOnlyError(
            "nothing was saved: the server's disk is read-only; tell the administrator"
        )
    if isinstance(exc, sqlite3.OperationalError) and "database or disk is full" in str(exc):
        return StorageFullError(full)
    return None


def error_body(code: str, detail: str) -> dict[str, str]:
    """The one JSON error shape: ``{"error": code, "detail": text}``."""
    return {"error": code, "detail": detail}


def _code_for_status(status: int) -> str:
    return {
        400: "bad_request",
        401: "unauthorized",
        403: "forbidden",
        404: "not_found",
        405: "method_not_allowed",
        408: "request_timeout",
        413: "payload_too_large",
        415: "unsupported_media_type",
        422: "validation_error",
        429: "too_many_requests",
        503: "unavailable",
    }.get(status, "error")


@dataclass(frozen=True, slots=True)
class ErrorAnswer:
    status: int
    code: str
    detail: str
    headers: dict[str, str] | None = None
    extra: dict[str, Any] | None = None  # more fields for the JSON body (a gate's reasons)


def answer_for(exc: Exception) -> ErrorAnswer:
    """What a client is told for ``exc``: the one mapping, shared by the handler and metrics."""
    if _is_client_disconnect(exc):
        # Also a form read by Litestar itself (CSRF middleware, page routes), not only the API's.
        exc = ClientDisconnectedError("the client disconnected before sending the whole body")
    if isinstance(exc, AppError):
        extra = {"reasons": exc.reasons} if isinstance(exc, ImageRejectedError) else None
        return ErrorAnswer(exc.status, exc.code, str(exc), getattr(exc, "headers", None), extra)
    storage = _storage_failure(exc)
    if storage is not None:
        log.error("storage failure: %s: %s", type(exc).__name__, exc)
        return ErrorAnswer(storage.status, storage.code, storage.detail, {"Retry-After": "60"})
    if _is_database_outage(exc):
        log.warning("database unavailable: %s: %s", type(exc).__name__, exc)
        return ErrorAnswer(
            DatabaseUnavailableError.status,
            DatabaseUnavailableError.code,
            "the database is not answering; try again shortly",
            {"Retry-After": "5"},
        )
    if isinstance(exc, UnicodeDecodeError):
        # Litestar's form parser (run by the CSRF middleware, before any handler) decodes text
        # fields as UTF-8: a client's bad bytes, not a server fault.
        return ErrorAnswer(400, "bad_request", "a form field is not valid UTF-8 text")
    limit = _multipart_limit(exc)
    if limit is not None:
        return ErrorAnswer(400, "bad_request", limit)
    if isinstance(exc, HTTPException):
        status = exc.status_code
        return ErrorAnswer(
            status, _code_for_status(status), str(exc.detail), dict(exc.headers or {}) or None
        )
    return ErrorAnswer(HTTP_500_INTERNAL_SERVER_ERROR, "internal_error", "internal error")


def exception_to_response(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """Map any exception to the JSON error shape (HTML for page routes); never leak a trace."""
    answer = answer_for(exc)
    if answer.code == ClientDisconnectedError.code:
        log.info("client disconnected during %s %s", request.method, request.url.path)
    elif answer.status == HTTP_500_INTERNAL_SERVER_ERROR:
        log.exception("unhandled error on %s %s", request.method, request.url.path)

    if wants_html(request):
        return html_error(request, answer.status, answer.code, answer.detail, answer.headers)
    return Response(
        {**error_body(answer.code, answer.detail), **(answer.extra or {})},
        status_code=answer.status,
        media_type=MediaType.JSON,
        headers=answer.headers,
    )
