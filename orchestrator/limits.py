"""Per-key rate and concurrency limits, kept in Redis so every replica shares them.

Rate: a fixed one-minute window per key (``INCR`` + ``EXPIRE`` in one Lua call); over the
limit → 429 with ``Retry-After`` = seconds left in the window. Concurrency: a counter per key
incremented on admission and decremented when the response (or stream) ends; over the limit →
429. The counter carries a TTL refreshed on every admission, so a crashed replica cannot leak
slots forever. When Redis is down the limits are not enforced (serving continues) and
``/ready`` says so.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from orchestrator.config import OrchestratorConfig
from orchestrator.errors import RateLimitError
from orchestrator.store import RedisStore

log = logging.getLogger(__name__)

# KEYS[1] window counter, KEYS[2] concurrency counter; ARGV rpm, max_concurrent, window_s, ttl_s
# (0 = no limit). Returns {code, retry_after_s}: 0 admitted, 1 rate limited, 2 too many in flight.
_ADMIT = """
local rpm = tonumber(ARGV[1]); local conc = tonumber(ARGV[2])
if rpm > 0 then
  local n = redis.call('INCR', KEYS[1])
  if n == 1 then redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3])) end
  if n > rpm then return {1, redis.call('TTL', KEYS[1])} end
end
if conc > 0 then
  local c = redis.call('INCR', KEYS[2])
  redis.call('EXPIRE', KEYS[2], tonumber(ARGV[4]))
  if c > conc then redis.call('DECR', KEYS[2]); return {2, 1} end
end
return {0, 0}
"""
WINDOW_S = 60
INFLIGHT_TTL_S = 600


class Limiter:
    def __init__(self, config: OrchestratorConfig, store: RedisStore) -> None:
        self.store = store
        server = config.server
        self._limits: dict[str, tuple[int, int]] = {}
        self._default = (server.requests_per_minute or 0, server.max_concurrent or 0)
        for k in server.api_keys:
            self._limits[k.name] = (
                k.requests_per_minute or self._default[0],
                k.max_concurrent or self._default[1],
            )

    @property
    def enabled(self) -> bool:
        return self.store.configured and (
            any(self._default) or any(any(v) for v in self._limits.values())
        )

    def limits_for(self, key_name: str | None) -> tuple[int, int]:
        return self._limits.get(key_name or "", self._default)

    @asynccontextmanager
    async def admit(self, key_name: str | None) -> AsyncIterator[None]:
        """Hold one admission for ``key_name`` for the duration of the block."""
        rpm, conc = self.limits_for(key_name)
        if not (rpm or conc) or not self.store.available:
            yield
            return
        import redis

        name = key_name or "anonymous"
        window = int(time.time()) // WINDOW_S
        inflight_key = self.store.key("inflight", name)
        try:
            code, retry_after = await self.store.client.eval(
                _ADMIT,
                2,
                self.store.key("rate", name, str(window)),
                inflight_key,
                rpm,
                conc,
                WINDOW_S,
                INFLIGHT_TTL_S,
            )
        except (redis.RedisError, OSError) as e:
            self.store.mark_down(e)
            yield  # degraded: not enforced
            return
        self.store.mark_up()
        if code == 1:
            raise RateLimitError(
                f"rate limit of {rpm} requests per minute reached for this key",
                retry_after_s=max(1, int(retry_after)),
                code="rate_limited",
            )
        if code == 2:
            raise RateLimitError(
                f"{conc} requests already in flight for this key",
                retry_after_s=1,
                code="too_many_concurrent",
            )
        try:
            yield
        finally:
            if conc:
                try:
                    await self.store.client.decr(inflight_key)
                except (redis.RedisError, OSError) as e:
                    self.store.mark_down(e)
