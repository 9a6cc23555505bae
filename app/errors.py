"""The error classes a client may see, each with its HTTP status and code on the class.

A leaf: no web framework and nothing of the app, so the inference layer and the offline tools
raise these too. ``app/error_responses.py`` maps any exception to a response, in one place.
"""

from __future__ import annotations


class AppError(Exception):
    """Base for errors a client may see; subclasses set ``status`` and ``code``."""

    status = 400
    code = "bad_request"
    headers: dict[str, str] | None = None

    def __init__(self, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if headers:
            self.headers = headers


class NotFoundError(AppError):
    status = 404
    code = "not_found"


class OverloadedError(AppError):
    status = 503
    code = "overloaded"


class NotReadyError(AppError):
    status = 503
    code = "not_ready"


class DatabaseUnavailableError(AppError):
    status = 503
    code = "database_unavailable"


class StorageFullError(AppError):
    """The disk is full: nothing was saved (write-then-rename leaves no partial file)."""

    status = 507
    code = "storage_full"


class StorageReadOnlyError(AppError):
    status = 503
    code = "storage_read_only"


class ClientDisconnectedError(AppError):
    """The client hung up before its request body arrived: its doing, so no 5xx is counted."""

    status = 499  # nginx's "client closed request"
    code = "client_disconnected"


class ConfigError(RuntimeError):
    """A setting is missing or invalid; the service must not start."""
