"""When to retry a request, and how long to wait first.

Retried: HTTP 429 and 503 (honouring ``Retry-After``), and the network failures that mean the
request never reached a handler or the pooled connection died under it (connect errors and
timeouts, a dropped keep-alive connection). Not retried: read/write/pool timeouts (the caller's
time budget is spent; a retry would multiply it) and every other status (retrying a 400 or a
502 whose fallback chain is already exhausted does not change the answer).

The waits go through :func:`sleep` / :func:`asleep` so unit tests can record them.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

RETRYABLE_TRANSPORT_ERRORS: tuple[type[httpx.TransportError], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.RemoteProtocolError,  # the server closed a pooled connection before answering
)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, capped; ``Retry-After`` wins when the server sends one."""

    max_retries: int = 2
    """Retries after the first attempt (0 disables retrying)."""
    backoff_s: float = 0.5
    """Wait before the first retry; doubles per retry, up to ``max_backoff_s``."""
    max_backoff_s: float = 8.0
    max_retry_after_s: float = 60.0
    """A ``Retry-After`` longer than this is not waited out: the error is raised at once."""
    statuses: frozenset[int] = frozenset({429, 503})

    def delay_s(
        self, retries_done: int, status: int | None = None, headers: Mapping[str, str] | None = None
    ) -> float | None:
        """Seconds to wait before the next attempt, or None to stop and raise.

        ``status`` is None for a network failure. ``retries_done`` counts retries already made.
        """
        if retries_done >= self.max_retries:
            return None
        if status is not None and status not in self.statuses:
            return None
        after = parse_retry_after(headers) if headers is not None else None
        if after is not None:
            return after if after <= self.max_retry_after_s else None
        base = min(self.max_backoff_s, self.backoff_s * 2.0**retries_done)
        # Jitter in [base/2, base]: spreads clients that failed together, never waits ~0.
        return base * (0.5 + random.random() / 2)


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """``Retry-After`` in seconds (it may be a number or an HTTP date); None if absent/garbled."""
    value = headers.get("retry-after") or headers.get("Retry-After")
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def sleep(seconds: float) -> None:
    time.sleep(seconds)


async def asleep(seconds: float) -> None:
    await asyncio.sleep(seconds)
