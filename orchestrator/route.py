"""Route stage: the configured strategies, built lazily, turn a query into a :class:`Decision`.

Strategies run off the event loop (they embed, classify); a named expert bypasses them.

Hot swap of trained versions (docs/training-jobs.md): with a ``redis_url``, a strategy is built
with the version promoted for it in Redis (:mod:`orchestrator.jobs.promotion`), else with its
configured ``artifact``. At most every ``jobs.promotion_poll_s`` a request starts a background
:meth:`StrategySet.refresh`, which re-reads the promotions, builds and warms each changed
strategy in a worker thread, then swaps the reference under the lock. A request holds the
instance it started with, so in-flight requests finish on the old version and none fails.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING

from orchestrator.config import OrchestratorConfig
from orchestrator.errors import InvalidRequestError
from orchestrator.ingress import Target
from orchestrator.microbatch import MicroBatcher
from orchestrator.types import Decision, Message, Query
from routers import Strategy, create_strategy, list_strategies
from routers.direct import DirectStrategy

if TYPE_CHECKING:
    from orchestrator.jobs.promotion import PromotedVersions

log = logging.getLogger(__name__)


class StrategySet:
    """Every strategy the server can use, each constructed and set up on first use."""

    def __init__(self, config: OrchestratorConfig) -> None:
        self.config = config
        self._strategies: dict[str, Strategy] = {}
        self._lock = threading.Lock()
        self._direct = DirectStrategy(config.experts)
        self._promoted: PromotedVersions | None = None
        if config.redis_url is not None:
            from orchestrator.jobs.promotion import PromotedVersions

            self._promoted = PromotedVersions(config.redis_url)
        self._built_for: dict[str, str | None] = {}  # the promoted version each was built for
        self._failed: dict[str, str | None] = {}  # a promotion that failed to build: not retried
        self._refresh_lock = threading.Lock()
        self._next_check = 0.0
        self._refreshing: asyncio.Future[list[str]] | None = None
        self._batchers: weakref.WeakKeyDictionary[Strategy, MicroBatcher[Query, Decision]] = (
            weakref.WeakKeyDictionary()
        )

    def names(self) -> list[str]:
        return list_strategies()

    def get(self, name: str) -> Strategy:
        with self._lock:
            strategy = self._strategies.get(name)
            if strategy is None:
                promoted = self._read_promoted()
                version = promoted.get(name) if promoted else None
                try:
                    strategy = self._build(name, version)
                except Exception:
                    if version is None:
                        raise
                    # A promotion this replica cannot build (say, its artifact is missing on
                    # this volume) must not stop routing: serve the configured one meanwhile.
                    log.exception("strategy %s: cannot build promoted %s", name, version)
                    self._failed[name] = version
                    version = None
                    strategy = self._build(name, None)
                self._strategies[name] = strategy
                self._built_for[name] = version
            return strategy

    def _build(self, name: str, version: str | None) -> Strategy:
        """A set-up strategy: with ``version`` (a promotion) instead of its configured artifact."""
        options = dict(self.config.routing.strategies.get(name, {}))
        if version is not None:
            options["artifact"] = version
        strategy = create_strategy(
            name, self.config.experts, options, artifacts_dir=self.config.artifacts_dir
        )
        strategy.bind(self.config)
        strategy.setup()
        return strategy

    def _read_promoted(self) -> dict[str, str] | None:
        return self._promoted.read() if self._promoted is not None else None

    def serving(self) -> dict[str, str | None]:
        """The version (``Decision.version``) each built strategy routes with now."""
        with self._lock:
            return {n: getattr(s, "version", None) for n, s in self._strategies.items()}

    def refresh(self) -> list[str]:
        """Swap in the promoted version of every built strategy whose promotion changed;
        returns the names swapped. Blocking (reads Redis, loads artifacts, embeds a warm-up
        query): call it off the event loop. The old instance serves until the new one is
        ready; a version that fails to build is logged, skipped and not retried until the
        promotion changes again. With Redis unreadable nothing changes."""
        with self._refresh_lock:
            promoted = self._read_promoted()
            if promoted is None:
                return []
            with self._lock:
                built = dict(self._built_for)
            swapped = []
            for name, have in built.items():
                want = promoted.get(name)
                if want == have or (name in self._failed and self._failed[name] == want):
                    continue
                try:
                    strategy = self._build(name, want)
                    # Load what the first query would (the embedder), here and not in a request.
                    strategy.route([Query(messages=(Message("user", "warm-up"),))])
                except Exception:
                    log.exception("strategy %s: cannot switch to version %s", name, want)
                    self._failed[name] = want
                    continue
                with self._lock:
                    old = self._strategies.get(name)
                    self._strategies[name] = strategy
                    self._built_for[name] = want
                self._failed.pop(name, None)
                swapped.append(name)
                log.info(
                    "strategy %s: now serving %s (was %s)",
                    name,
                    getattr(strategy, "version", want),
                    getattr(old, "version", have),
                )
            return swapped

    def _poll(self) -> None:
        """Start a background :meth:`refresh` when the last check is older than the TTL."""
        if self._promoted is None or time.monotonic() < self._next_check:
            return
        if self._refreshing is not None and not self._refreshing.done():
            return
        self._next_check = time.monotonic() + self.config.jobs.promotion_poll_s
        self._refreshing = asyncio.ensure_future(asyncio.to_thread(self.refresh))

    def warm(self, names: Sequence[str]) -> None:
        for n in names:
            self.get(n)

    async def decide(self, query: Query, target: Target) -> Decision:
        if target.expert is not None:
            return self._direct.route_to(target.expert)
        self._poll()
        name = query.options.strategy or target.strategy or self.config.routing.default_strategy
        # Outside code ("pkg.mod:Class") only as configured: a request never names a module.
        configured = {self.config.routing.default_strategy, *self.config.routing.strategies}
        if name not in self.names() and name not in configured:
            raise InvalidRequestError(
                f"unknown strategy '{name}'; valid: {', '.join(self.names())}", param="strategy"
            )
        strategy = self._strategies.get(name)
        if strategy is None:
            strategy = await asyncio.to_thread(self.get, name)
        batcher = self._batchers.get(strategy)
        if batcher is None:
            batcher = MicroBatcher(partial(_route_off_loop, strategy), max_batch_size=64)
            self._batchers[strategy] = batcher
        # Concurrent queries to one strategy are routed as one batch (one embedding pass).
        return await batcher.submit(query)

    async def decide_batch(self, queries: Sequence[Query], name: str) -> list[Decision]:
        self._poll()
        strategy = await asyncio.to_thread(self.get, name)
        return await asyncio.to_thread(strategy.route, list(queries))


async def _route_off_loop(strategy: Strategy, queries: Sequence[Query]) -> list[Decision]:
    return await asyncio.to_thread(strategy.route, list(queries))
