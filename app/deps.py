"""What handlers get from the application state, each check written once.

``ready_service`` is the readiness rule every entry point shares: the model is loaded and
warmed (``state.ready``), else 503 ``not_ready`` with Retry-After, or ``None`` for callers
that answer otherwise (the WebSockets close with a code, the probe says "starting").
"""

from __future__ import annotations

from argon2 import PasswordHasher
from litestar.datastructures import State

from app.auth.throttle import Throttle
from app.config import Settings
from app.errors import NotReadyError
from app.inference.service import InferenceService
from app.storage import EncryptedStore


def ready_service_or_none(state: State) -> InferenceService | None:
    """The inference service once it is loaded and warmed, else None."""
    service: InferenceService | None = state.get("inference")
    return service if service is not None and state.get("ready") else None


def ready_service(state: State) -> InferenceService:
    """The inference service, or 503 ``not_ready`` while the model loads."""
    service = ready_service_or_none(state)
    if service is None:
        raise NotReadyError("the model is still loading", headers={"Retry-After": "1"})
    return service


def settings(state: State) -> Settings:
    """The settings the app was created with (``create_app``), read once at start-up."""
    found: Settings = state["settings"]
    return found


def store(state: State) -> EncryptedStore:
    """The encrypted file store (images, reports, sealed fields)."""
    found: EncryptedStore = state["store"]
    return found


def password_hasher(state: State) -> PasswordHasher:
    """The argon2 hasher (its parameters are the service's, see ``app.auth.passwords``)."""
    found: PasswordHasher = state["password_hasher"]
    return found


def login_throttle(state: State) -> Throttle:
    """The failed-login throttle every replica shares (database or Redis)."""
    found: Throttle = state["login_throttle"]
    return found
