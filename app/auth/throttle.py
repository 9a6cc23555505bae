"""Login throttling: failures within a window, counted per (account, address), per account,
per address and overall; any count at its limit blocks further tries.

- (account, address): a person mistyping; 5 failures.
- account: one account guessed from many addresses; 20 failures.
- address: many accounts (fresh usernames) guessed from one address; 20 failures.
- overall: a flood from many addresses; 300 failures in the window stop every login until it
  passes, which an administrator sees in the audit log (``login_throttled``).

Per process and in memory: with several workers each keeps its own counts, which still bounds
guessing to workers x N per window.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable

Key = tuple[str, ...]


class LoginThrottle:
    def __init__(
        self,
        max_failures: int = 5,
        window_s: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
        per_account: int = 20,
        per_address: int = 20,
        overall: int = 300,
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self._limits = {"pair": max_failures, "account": per_account, "address": per_address}
        self._limits["overall"] = overall
        self._clock = clock
        self._failures: dict[Key, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    @staticmethod
    def _keys(account: str, address: str) -> list[Key]:
        name = account.casefold()
        return [("pair", name, address), ("account", name), ("address", address), ("overall",)]

    def _prune(self, key: Key) -> deque[float]:
        entries = self._failures[key]
        cutoff = self._clock() - self.window_s
        while entries and entries[0] < cutoff:
            entries.popleft()
        if not entries:
            del self._failures[key]  # fresh usernames must not grow the table for ever
            return deque()
        return entries

    def retry_after(self, account: str, address: str) -> int:
        """Seconds until another try is allowed; 0 when not blocked."""
        wait = 0.0
        with self._lock:
            for key in self._keys(account, address):
                entries = self._prune(key)
                limit = self._limits[key[0]]
                if len(entries) >= limit:
                    # free again when the oldest failure that keeps it at the limit expires
                    wait = max(wait, entries[-limit] + self.window_s - self._clock())
        return max(1, int(wait) + 1) if wait > 0 else 0

    def failed(self, account: str, address: str) -> None:
        now = self._clock()
        with self._lock:
            for key in self._keys(account, address):
                self._prune(key)
                self._failures[key].append(now)

    def succeeded(self, account: str, address: str) -> None:
        """A right password clears that person's own mistakes, not the wider counts."""
        with self._lock:
            self._failures.pop(("pair", account.casefold(), address), None)
