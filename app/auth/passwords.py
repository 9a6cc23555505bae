"""argon2id password hashing, always off the event loop, with a bound on how many run at once."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

USERNAME_RE = re.compile(r"^[A-Za-z0-9_.@-]{3,64}$")
MIN_PASSWORD_LENGTH = 12
MIN_PASSWORD_SCORE = 3  # zxcvbn's 0-4 scale: 3 is 'safely unguessable' online

# Verified against when the username is unknown, so both failures cost the same time.
_DUMMY_PASSWORD = "not-a-real-password-0000"


# OWASP's minimum for argon2id (m=19 MiB, t=2, p=1): measured 26 ms and 19 MiB per verify on a
# 2-core AMD EPYC, against 360 ms and 64 MiB for argon2-cffi's defaults (t=3, 64 MiB, p=4),
# which let 8 clients posting fresh usernames hold both cores and 800 MB. Hashes made with
# the old parameters are rehashed at the next login.
ARGON2_TIME_COST = 2
ARGON2_MEMORY_KIB = 19 * 1024
ARGON2_PARALLELISM = 1
# At most this many verifications at once; more are refused at once (429), not queued.
MAX_VERIFICATIONS_IN_FLIGHT = 2


def default_hasher() -> PasswordHasher:
    """argon2id at the parameters above; tests inject cheaper ones."""
    return PasswordHasher(
        time_cost=ARGON2_TIME_COST,
        memory_cost=ARGON2_MEMORY_KIB,
        parallelism=ARGON2_PARALLELISM,
    )


class VerificationSlots:
    """Counts password verifications in flight on this event loop (no lock needed)."""

    def __init__(self, limit: int = MAX_VERIFICATIONS_IN_FLIGHT) -> None:
        self.limit = limit
        self.in_flight = 0

    @contextlib.contextmanager
    def take(self) -> Iterator[bool]:
        """Yields True with a slot held, or False when all are busy (refuse the request)."""
        if self.in_flight >= self.limit:
            yield False
            return
        self.in_flight += 1
        try:
            yield True
        finally:
            self.in_flight -= 1


def password_problem(username: str, password: str) -> str | None:
    """Why a new password is refused, or None when it is acceptable.

    At least 12 characters, and not guessable: zxcvbn (which ships its dictionaries) must
    score it 3 of 4 or more, with the username among the words it tries, so "password12",
    "1234567890" or the username plus a digit are refused.
    """
    from zxcvbn import zxcvbn  # ~0.1 s to import its dictionaries: only when someone registers

    if len(password) < MIN_PASSWORD_LENGTH:
        return f"The password must be at least {MIN_PASSWORD_LENGTH} characters long."
    if password.casefold() == username.casefold():
        return "The password must differ from the username."
    verdict = zxcvbn(password[:100], user_inputs=[username])  # its cost grows with length
    if verdict["score"] < MIN_PASSWORD_SCORE:
        hint = verdict["feedback"]["warning"] or "it is too easy to guess"
        return f"Choose a harder password: {hint.rstrip('.')}. A few unrelated words work well."
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
