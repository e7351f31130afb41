"""Pacing for Stack Exchange API calls: a requests/s ceiling and per-method ``backoff`` deadlines.

The API bans an address that sends more than 30 requests/s, and a response's ``backoff`` field
forbids calling *that method* again for N seconds. Both limits belong to the address, not to one
client object, so governors live in a process-wide registry keyed by base URL (and clock, so that
tests with separate fake clocks never share state).
"""

from __future__ import annotations

import threading
import time
import weakref
from typing import Protocol

from cv_pipeline.sources.base import SourceConfigError


class Clock(Protocol):
    """Time as epoch seconds, plus a way to wait; injected so tests never really sleep."""

    def now(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """Wall-clock time: deadlines and ``resume_at`` must be epoch seconds a person can read."""

    def now(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


#: The one system clock every real client shares, so they also share one governor per URL.
SYSTEM_CLOCK = SystemClock()


class FakeClock:
    """A clock for tests: ``sleep`` advances time at once and is recorded in ``sleeps``."""

    def __init__(self, start: float = 1_700_000_000.0):
        self._now = float(start)
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self._now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if seconds > 0:
            self._now += seconds

    def advance(self, seconds: float) -> None:
        self._now += seconds

    @property
    def slept(self) -> float:
        return sum(s for s in self.sleeps if s > 0)


def check_rate(requests_per_second: float) -> None:
    if not 0 < requests_per_second < 30:
        raise SourceConfigError(
            f"requests_per_second={requests_per_second} must be above 0 and under 30 "
            "(the API bans addresses above 30/s); the default is 10"
        )


class RequestGovernor:
    """Decides when the next request may go: after the rate slot and after its method's backoff."""

    def __init__(self, clock: Clock, requests_per_second: float = 10.0):
        check_rate(requests_per_second)
        self.clock = clock
        self.requests_per_second = float(requests_per_second)
        self._lock = threading.Lock()
        self._next_slot = float("-inf")
        self._backoff_until: dict[str, float] = {}
        self.requests_sent = 0

    @property
    def min_interval(self) -> float:
        return 1.0 / self.requests_per_second

    def lower_rate(self, requests_per_second: float) -> None:
        """A second client asking for a lower ceiling on the same address gets it (never higher)."""
        with self._lock:
            self.requests_per_second = min(self.requests_per_second, float(requests_per_second))

    def note_backoff(self, method: str, seconds: float) -> None:
        """Remember that ``method`` may not be called for ``seconds`` from now (longest wins)."""
        if seconds <= 0:
            return
        with self._lock:
            deadline = self.clock.now() + float(seconds)
            self._backoff_until[method] = max(self._backoff_until.get(method, deadline), deadline)

    def backoff_remaining(self, method: str) -> float:
        with self._lock:
            return max(0.0, self._backoff_until.get(method, 0.0) - self.clock.now())

    def wait_turn(self, method: str) -> float:
        """Block until a request to ``method`` is allowed, claim that slot, return seconds waited."""
        with self._lock:
            # Claim the slot under the lock, sleep outside it: concurrent callers queue up in
            # order instead of all waking at the same instant.
            now = self.clock.now()
            start = max(now, self._next_slot, self._backoff_until.get(method, now))
            self._next_slot = start + self.min_interval
            self.requests_sent += 1
        wait = start - now
        if wait > 0:
            self.clock.sleep(wait)
        return wait


_REGISTRY: weakref.WeakKeyDictionary[object, dict[str, RequestGovernor]] = weakref.WeakKeyDictionary()
_REGISTRY_LOCK = threading.Lock()


def governor_for(base_url: str, clock: Clock | None = None, requests_per_second: float = 10.0) -> RequestGovernor:
    """The process-wide governor for ``base_url`` on ``clock`` (created on first use)."""
    check_rate(requests_per_second)
    clock = clock or SYSTEM_CLOCK
    key = base_url.rstrip("/").lower()
    with _REGISTRY_LOCK:
        per_clock = _REGISTRY.setdefault(clock, {})
        governor = per_clock.get(key)
        if governor is None:
            governor = per_clock[key] = RequestGovernor(clock, requests_per_second)
        else:
            governor.lower_rate(requests_per_second)
        return governor
