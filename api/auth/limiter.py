"""Log-in rate limit: failed attempts per user name and per client address, in a sliding window.

Only failures count, so a person logging in normally is never slowed; after ``per_user`` failures
for one name (from anywhere) or ``per_address`` failures from one address (for any names) within
``window_s``, further attempts answer 429 with ``Retry-After`` until the oldest failure leaves the
window. Memory stays bounded: at most ``max_keys`` names and addresses are tracked (the quietest go
first). One process's memory: behind several API processes the limit applies per process.

>>> t = [0.0]
>>> lim = LoginLimiter(per_user=2, per_address=5, window_s=60, clock=lambda: t[0])
>>> lim.failed("bob", "10.0.0.1"); lim.failed("bob", "10.0.0.2"); lim.retry_after("bob", "10.0.0.3")
60
>>> t[0] = 61.0; lim.retry_after("bob", "10.0.0.3") is None
True
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable


class LoginLimiter:
    def __init__(
        self,
        *,
        per_user: int = 5,
        per_address: int = 20,
        window_s: float = 300.0,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_user = per_user
        self.per_address = per_address
        self.window_s = window_s
        self.max_keys = max_keys
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _wait(self, key: str, limit: int, now: float) -> float:
        times = self._failures.get(key)
        if not times:
            return 0.0
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if len(times) < limit:
            return 0.0
        return times[-limit] + self.window_s - now

    def retry_after(self, username: str, address: str) -> int | None:
        """Seconds to wait before another attempt, or ``None`` when one may be made now."""
        now = self._clock()
        with self._lock:
            wait = max(
                self._wait(f"u:{username}", self.per_user, now),
                self._wait(f"a:{address}", self.per_address, now),
            )
        return max(1, math.ceil(wait)) if wait > 0 else None

    def failed(self, username: str, address: str) -> None:
        now = self._clock()
        with self._lock:
            if len(self._failures) >= self.max_keys:
                oldest = sorted(
                    self._failures, key=lambda k: self._failures[k][-1] if self._failures[k] else 0
                )
                for key in oldest[: self.max_keys // 10 or 1]:
                    del self._failures[key]
            for key in (f"u:{username}", f"a:{address}"):
                self._failures.setdefault(key, deque(maxlen=max(self.per_user, self.per_address))).append(now)

    def succeeded(self, username: str) -> None:
        """A right password clears the name's failures (not the address's)."""
        with self._lock:
            self._failures.pop(f"u:{username}", None)
