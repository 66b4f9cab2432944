"""The shared Redis connection: namespaced keys, and graceful degradation when Redis is down.

Features that keep state in Redis (rate and concurrency limits, training jobs, the knowledge
store) share one :class:`RedisStore`. When Redis is unreachable, serving continues: each feature
asks :meth:`RedisStore.available` and either degrades (limits are not enforced) or raises
:class:`~orchestrator.errors.ServiceUnavailableError` naming what is unavailable; ``/ready``
lists the degraded features.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from orchestrator.errors import ServiceUnavailableError

log = logging.getLogger(__name__)

NAMESPACE = "eo"


class RedisStore:
    def __init__(self, url: str | None, namespace: str = NAMESPACE) -> None:
        self.url = url
        self.namespace = namespace
        self._client: Any = None
        self._down_since: float | None = None
        self.last_error: str | None = None

    @property
    def configured(self) -> bool:
        return self.url is not None

    def key(self, *parts: str) -> str:
        return ":".join((self.namespace, *parts))

    @property
    def client(self) -> Any:
        """The redis.asyncio client (short timeouts: a dead Redis must not stall requests)."""
        if self._client is None:
            if self.url is None:
                raise ServiceUnavailableError("no redis_url is configured")
            import redis.asyncio as aioredis

            self._client = aioredis.Redis.from_url(
                self.url, socket_timeout=0.5, socket_connect_timeout=0.5, decode_responses=True
            )
        return self._client

    def mark_down(self, error: BaseException) -> None:
        if self._down_since is None:
            log.warning("redis unavailable (%s); degraded features: rate limits", error)
            self._down_since = time.monotonic()
        self.last_error = f"{type(error).__name__}: {error}"

    def mark_up(self) -> None:
        if self._down_since is not None:
            log.info("redis is back")
        self._down_since = None
        self.last_error = None

    @property
    def available(self) -> bool:
        """False for a few seconds after a failure, so a dead Redis costs one timeout, not many."""
        if not self.configured:
            return False
        return self._down_since is None or time.monotonic() - self._down_since > 5.0

    async def ping(self) -> bool:
        if not self.configured:
            return False
        import redis

        try:
            await self.client.ping()
        except (redis.RedisError, OSError) as e:
            self.mark_down(e)
            return False
        self.mark_up()
        return True

    def status(self) -> str:
        if not self.configured:
            return "not configured"
        return "ok" if self._down_since is None else f"unavailable: {self.last_error}"

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
