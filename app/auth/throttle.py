"""Login throttling: N failures within a window per (account, address) blocks further tries.

Per process and in memory: with several workers each keeps its own count, which still bounds
guessing to workers × N per window.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable


class LoginThrottle:
    def __init__(
        self,
        max_failures: int = 5,
        window_s: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self._clock = clock
        self._failures: dict[tuple[str, str], deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def _prune(self, key: tuple[str, str]) -> deque[float]:
        entries = self._failures[key]
        cutoff = self._clock() - self.window_s
        while entries and entries[0] < cutoff:
            entries.popleft()
        return entries

    def retry_after(self, account: str, address: str) -> int:
        """Seconds until another try is allowed; 0 when not blocked."""
        key = (account.casefold(), address)
        with self._lock:
            entries = self._prune(key)
            if len(entries) < self.max_failures:
                return 0
            return max(1, int(entries[0] + self.window_s - self._clock()) + 1)

    def failed(self, account: str, address: str) -> None:
        key = (account.casefold(), address)
        with self._lock:
            self._prune(key).append(self._clock())

    def succeeded(self, account: str, address: str) -> None:
        with self._lock:
            self._failures.pop((account.casefold(), address), None)
