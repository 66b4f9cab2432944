"""Prometheus metrics, in a registry of the app's own (no process-global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "orchestrator_requests",
            "Chat requests by strategy, expert and status",
            ["strategy", "expert", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "orchestrator_request_latency_seconds",
            "End-to-end request latency",
            ["strategy", "stream"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.expert_latency = Histogram(
            "orchestrator_expert_latency_seconds",
            "Latency of one expert call",
            ["expert"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.route_latency = Histogram(
            "orchestrator_routing_latency_seconds",
            "Time to reach a routing decision",
            ["strategy"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "orchestrator_tokens",
            "Tokens by expert and kind (prompt/completion)",
            ["expert", "kind"],
            registry=r,
        )
        self.decisions = Counter(
            "orchestrator_routing_decisions",
            "Routing decisions by strategy and chosen expert",
            ["strategy", "expert"],
            registry=r,
        )
        self.fallbacks = Counter(
            "orchestrator_fallbacks",
            "Requests that fell back to another expert",
            ["from_expert", "to_expert"],
            registry=r,
        )
        self.errors = Counter(
            "orchestrator_errors", "Errors returned to clients by type", ["type"], registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
