"""Which trained version of each strategy serves: one Redis hash shared by every replica.

Keys (namespace ``eo``)::

    eo:routers:promoted            hash  strategy → promoted version ('v0003')
    eo:routers:history:<strategy>  list  promoted versions, newest first (the rollback stack)

Promote pushes a version on the stack and points the hash at it; rollback pops the stack and
points the hash at the version below (it needs two entries). Both are one Lua script each, so
concurrent admins cannot interleave a half-done change. Serving replicas never receive a
message: :class:`~orchestrator.route.StrategySet` re-reads the hash at most every
``jobs.promotion_poll_s`` seconds (:class:`PromotedVersions`), builds the new version off the
request path and swaps it in (docs/training-jobs.md). A strategy with nothing promoted serves
its configured ``artifact`` option.
"""

from __future__ import annotations

import logging
from typing import Any

from orchestrator.store import NAMESPACE, RedisStore

log = logging.getLogger(__name__)

MAX_HISTORY = 50

# KEYS: promoted, history.  ARGV: strategy, version, max_history.  Returns the previous version.
PROMOTE = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current ~= ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('LPUSH', KEYS[2], ARGV[2])
  redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[3]) - 1)
end
return current or ''
"""

# KEYS: promoted, history.  ARGV: strategy.  Returns {rolled back, now promoted} or nil.
ROLLBACK = """
if redis.call('LLEN', KEYS[2]) < 2 then return false end
local current = redis.call('LPOP', KEYS[2])
local previous = redis.call('LINDEX', KEYS[2], 0)
redis.call('HSET', KEYS[1], ARGV[1], previous)
return {current, previous}
"""


def promoted_key(namespace: str = NAMESPACE) -> str:
    return f"{namespace}:routers:promoted"


def history_key(strategy: str, namespace: str = NAMESPACE) -> str:
    return f"{namespace}:routers:history:{strategy}"


class Promotions:
    """The admin side (redis.asyncio): read, promote, roll back."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self.key = promoted_key(store.namespace)
        self._promote = store.client.register_script(PROMOTE)
        self._rollback = store.client.register_script(ROLLBACK)

    async def promoted(self) -> dict[str, str]:
        found: dict[str, str] = await self.store.client.hgetall(self.key)
        return found

    async def history(self, strategy: str) -> list[str]:
        key = history_key(strategy, self.store.namespace)
        found: list[str] = await self.store.client.lrange(key, 0, -1)
        return found

    async def promote(self, strategy: str, version: str) -> str | None:
        """Point ``strategy`` at ``version``; returns what was promoted before (or None)."""
        keys = [self.key, history_key(strategy, self.store.namespace)]
        previous = await self._promote(keys=keys, args=[strategy, version, MAX_HISTORY])
        return str(previous) or None

    async def rollback(self, strategy: str) -> tuple[str, str] | None:
        """Pop the current promotion: (rolled back, now promoted), or None with nothing
        earlier to return to."""
        keys = [self.key, history_key(strategy, self.store.namespace)]
        got = await self._rollback(keys=keys, args=[strategy])
        return (str(got[0]), str(got[1])) if got else None


class PromotedVersions:
    """The serving side: a synchronous read of the whole hash, called from worker threads.

    Returns None when Redis cannot be read, so the caller keeps what it serves (a Redis outage
    must not change or stop routing).
    """

    def __init__(self, url: str, namespace: str = NAMESPACE) -> None:
        self.url = url
        self.key = promoted_key(namespace)
        self._client: Any = None
        self._warned = False

    def read(self) -> dict[str, str] | None:
        import redis

        try:
            if self._client is None:
                self._client = redis.Redis.from_url(
                    self.url, socket_timeout=0.5, socket_connect_timeout=0.5, decode_responses=True
                )
            found: dict[str, str] = self._client.hgetall(self.key)
        except (redis.RedisError, OSError) as e:
            if not self._warned:
                log.warning("cannot read promoted router versions (%s); keeping the current", e)
                self._warned = True
            return None
        self._warned = False
        return found

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
