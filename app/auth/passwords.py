"""argon2id password hashing, always off the event loop (≈90 ms and 64 MiB per hash)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

MIN_PASSWORD_LENGTH = 10

# Verified against when the username is unknown, so both failures cost the same time.
_DUMMY_PASSWORD = "not-a-real-password-0000"


def default_hasher() -> PasswordHasher:
    """argon2-cffi's defaults (argon2id, t=3, 64 MiB, p=4); tests inject cheaper ones."""
    return PasswordHasher()


def password_problem(username: str, password: str) -> str | None:
    """Why a new password is refused, or None when it is acceptable."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"The password must be at least {MIN_PASSWORD_LENGTH} characters long."
    if password.casefold() == username.casefold():
        return "The password must differ from the username."
    return None


async def hash_password(hasher: PasswordHasher, password: str) -> str:
    return await asyncio.to_thread(hasher.hash, password)


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    new_hash: str | None = None  # set when the stored hash used older parameters


@functools.lru_cache(maxsize=8)
def _dummy_hash(hasher: PasswordHasher) -> str:
    # Made once per hasher, so an unknown user costs one verify, exactly like a known one.
    return hasher.hash(_DUMMY_PASSWORD)


def _verify(hasher: PasswordHasher, stored: str | None, password: str) -> VerifyResult:
    if stored is None:
        with contextlib.suppress(VerificationError):
            hasher.verify(_dummy_hash(hasher), password)
        return VerifyResult(False)
    try:
        hasher.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return VerifyResult(False)
    if hasher.check_needs_rehash(stored):
        return VerifyResult(True, hasher.hash(password))
    return VerifyResult(True)


async def verify_password(
    hasher: PasswordHasher, stored: str | None, password: str
) -> VerifyResult:
    """Check a password; ``stored=None`` (unknown user) burns the same time and fails."""
    return await asyncio.to_thread(_verify, hasher, stored, password)
