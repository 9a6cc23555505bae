"""What handlers get from the application state, typed, each look-up written once.

Handlers take these as parameters (``Provide(deps.NAME, sync_to_thread=False)`` on their
controller or router) instead of reading ``app.state``.

``ready_service_or_none`` is the readiness rule every entry point shares: the model is loaded
and warmed (``state.ready``). ``ready_service`` answers 503 ``not_ready`` with Retry-After
otherwise; handlers that answer another way take the ``None`` (the WebSockets close with a
code, the probe says "starting", pages show no heat map, a form checks its fields first).
"""

from __future__ import annotations

from argon2 import PasswordHasher
from litestar.datastructures import State

from app.auth.passwords import VerificationSlots
from app.auth.throttle import Throttle
from app.auth.tokens import TokenCache
from app.config import Settings
from app.db.engine import DatabaseProbe
from app.errors import NotReadyError
from app.inference.service import InferenceService
from app.metrics import Metrics
from app.storage import EncryptedStore


def ready_service_or_none(state: State) -> InferenceService | None:
    """The inference service once it is loaded and warmed, else None."""
    service: InferenceService | None = state.get("inference")
    return service if service is not None and state.get("ready") else None


def require_ready(service: InferenceService | None) -> InferenceService:
    """``service``, or 503 ``not_ready`` (Retry-After: 1) while the model loads."""
    if service is None:
        raise NotReadyError("the model is still loading", headers={"Retry-After": "1"})
    return service


def ready_service(state: State) -> InferenceService:
    """The inference service, or 503 ``not_ready`` while the model loads."""
    return require_ready(ready_service_or_none(state))


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


def verification_slots(state: State) -> VerificationSlots:
    """The bound on password verifications in flight (argon2 is memory-hard)."""
    found: VerificationSlots = state["verification_slots"]
    return found


def token_cache(state: State) -> TokenCache:
    """The API tokens recently seen valid; cleared when one is revoked."""
    found: TokenCache = state["token_cache"]
    return found


def metrics(state: State) -> Metrics | None:
    """The Prometheus metrics, where the app keeps them."""
    found: Metrics | None = state.get("metrics")
    return found


def database_probe(state: State) -> DatabaseProbe | None:
    """The readiness probe's database check (SELECT 1 within 1 s), where there is a database."""
    found: DatabaseProbe | None = state.get("database_probe")
    return found
