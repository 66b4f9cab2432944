"""Ray Serve wiring: the same pipeline, spread over deployments. No business logic lives here.

The deployment graph (one Serve application)::

    HTTP proxy ─▶ ingress ──handle──▶ router                (StrategySet: strategies, embedders)
                     │
                     └──────handle──▶ expert-<group> × N    (the real backends: vllm, transformers…)

- ``ingress`` serves the FastAPI app of :func:`orchestrator.api.build_app` (``@serve.ingress``)
  around an :class:`~orchestrator.pipeline.Orchestrator` whose pool holds one
  :class:`RemoteBackend` per expert and whose strategies are a :class:`RemoteStrategySet`.
  So ingress, routing, dispatch with fallback, aggregation and the trace are the in-process
  code, unchanged: when an expert replica errors, times out or dies, the call raises in the
  ingress and dispatch falls back to the next candidate, as in one process.
- ``router`` holds the strategies (their models load once, there, not in every ingress replica).
  A request that names an expert never calls it.
- ``expert-<group>``: one deployment per expert, or per ``resources.group`` (experts sharing a
  group share a replica, and thus a vLLM engine or a transformers model when they name the same
  model). Its replicas take the group's ``resources`` (the largest of its members' values):
  ``num_cpus``, ``num_gpus``, ``memory_gb``, ``num_replicas`` (or ``"auto"`` →
  ``autoscaling_config`` from ``min_replicas``/``max_replicas``); ``max_ongoing_requests`` is the
  sum of the members' ``max_concurrency``. Ingress and router reserve no CPU and take at least
  256 requests at once (:func:`front_options`). An expert that fails to load leaves its replica up
  and reports itself unavailable, as in one process; Serve's health check replaces a replica
  only when a loaded backend turns unhealthy (a dead engine).

Entry points: ``orchestrator serve --ray`` (:func:`run_local`), and
``orchestrator.ray_app:app_builder`` — Serve's app-builder convention, for ``serve run``,
``serve deploy`` and KubeRay — whose args are ``{"config_path": "/path/config.yaml"}`` (without
it, the embedded demo pool). ``orchestrator serve-config`` writes a Serve config file for it
(:func:`serve_config`).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve import Application, Deployment
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from orchestrator.api import build_app
from orchestrator.config import ExpertConfig, OrchestratorConfig, load_config
from orchestrator.dispatch import ExpertPool
from orchestrator.errors import ExpertUnavailableError, OrchestratorError
from orchestrator.ingress import Target
from orchestrator.pipeline import Orchestrator
from orchestrator.route import StrategySet
from orchestrator.types import Decision, Delta, Generation, GenerationRequest, Query
from workers import Backend, create_backend

log = logging.getLogger(__name__)

APP_NAME = "orchestrator"
IMPORT_PATH = "orchestrator.ray_app:app_builder"
GiB = 2**30
# Ingress and router do little CPU work per request; reserving none lets them share the node
# with experts (each Serve replica otherwise reserves a whole CPU).
LIGHT_ACTOR = {"num_cpus": 0}
MIN_FRONT_ONGOING = 256


def front_options(config: OrchestratorConfig) -> dict[str, Any]:
    """Options of the ingress and the router: no CPU reserved, and room for every request the
    experts can take at once (Serve's default of 5 in flight per replica would queue a gateway;
    per-expert limits are enforced by the ingress's pool)."""
    total = sum(e.max_concurrency for e in config.experts)
    return {
        "ray_actor_options": dict(LIGHT_ACTOR),
        "max_ongoing_requests": max(MIN_FRONT_ONGOING, total),
    }


class AppArgs(BaseModel):
    """The args of :func:`app_builder` (the ``args:`` of a Serve config application)."""

    model_config = ConfigDict(extra="forbid")

    config_path: str | None = Field(
        None, description="Orchestrator YAML config; without it, the embedded demo pool."
    )


# -- the graph ------------------------------------------------------------------------------


def group_of(expert: ExpertConfig) -> str:
    """The deployment an expert lives in: ``expert-<resources.group or name>``."""
    return f"expert-{expert.resources.group or expert.name}"


def expert_groups(config: OrchestratorConfig) -> dict[str, list[ExpertConfig]]:
    groups: dict[str, list[ExpertConfig]] = {}
    for e in config.experts:
        groups.setdefault(group_of(e), []).append(e)
    return groups


def deployment_options(members: Sequence[ExpertConfig]) -> dict[str, Any]:
    """Serve deployment options for one expert group, from its members' ``resources``."""
    res = [e.resources for e in members]
    actor: dict[str, Any] = {
        "num_cpus": max(r.num_cpus for r in res),
        "num_gpus": max(r.num_gpus for r in res),
    }
    memory = [r.memory_gb for r in res if r.memory_gb is not None]
    if memory:
        actor["memory"] = int(max(memory) * GiB)
    options: dict[str, Any] = {
        "ray_actor_options": actor,
        "max_ongoing_requests": sum(e.max_concurrency for e in members),
    }
    if any(r.num_replicas == "auto" for r in res):
        options["autoscaling_config"] = {
            "min_replicas": max(r.min_replicas for r in res),
            "max_replicas": max(r.max_replicas for r in res),
        }
    else:
        options["num_replicas"] = max(int(r.num_replicas) for r in res)
    return options


def build_application(config: OrchestratorConfig) -> Application:
    """The Serve application for ``config``: ingress, router and one deployment per group.

    The validated config object travels to every replica, so replicas on other nodes need no
    copy of the YAML file.
    """
    experts = {
        name: _deployment(ExpertGroup)
        .options(name=name, **deployment_options(members))
        .bind(config, [m.name for m in members])
        for name, members in expert_groups(config).items()
    }
    front = front_options(config)
    router = _deployment(Router).options(name="router", **front).bind(config)
    return _deployment(Ingress).options(name="ingress", **front).bind(config, router, experts)


def _deployment(decorated: object) -> Deployment:
    """The classes below are Serve deployments at run time (``@serve.deployment``); type
    checkers see the classes."""
    return cast(Deployment, decorated)


def app_builder(args: dict[str, Any]) -> Application:
    """Serve's app builder: ``serve run orchestrator.ray_app:app_builder config_path=...``.

    ``args`` is validated as :class:`AppArgs`; the config is loaded and checked here, once, so a
    bad file fails the deploy with the setting and its fix named.
    """
    parsed = AppArgs.model_validate(args or {})
    return build_application(load_config(parsed.config_path))


# -- deployments ----------------------------------------------------------------------------


@serve.deployment
class ExpertGroup:
    """The real backends of one expert group. Methods take the expert's name first."""

    async def __init__(self, config: OrchestratorConfig, experts: list[str]) -> None:  # type: ignore[misc]  # Serve awaits async constructors
        self.backends: dict[str, Backend] = {n: create_backend(config.expert(n)) for n in experts}
        self.errors: dict[str, str] = {}
        for name, backend in self.backends.items():
            try:
                await backend.load()
            except Exception as e:
                log.exception("expert %s failed to load", name)
                self.errors[name] = f"{type(e).__name__}: {e}"

    def _backend(self, expert: str) -> Backend:
        backend = self.backends.get(expert)
        if backend is None or expert in self.errors:
            reason = self.errors.get(expert, "not in this deployment")
            raise ExpertUnavailableError(f"expert '{expert}' is not loaded ({reason})")
        return backend

    async def ensure(self, expert: str) -> None:
        """Return when ``expert`` is ready; raise :class:`ExpertUnavailableError` if it failed."""
        self._backend(expert)

    async def generate(self, expert: str, requests: list[GenerationRequest]) -> list[Generation]:
        return await self._backend(expert).generate(requests)

    async def generate_one(self, expert: str, request: GenerationRequest) -> Generation:
        return await self._backend(expert).generate_one(request)

    async def stream(self, expert: str, request: GenerationRequest) -> AsyncIterator[Delta]:
        async for delta in self._backend(expert).stream(request):
            yield delta

    async def health(self, expert: str) -> bool:
        return await self._backend(expert).health()

    async def check_health(self) -> None:
        """Serve's health check: a loaded backend that turned unhealthy fails the replica."""
        for name, backend in self.backends.items():
            if name not in self.errors and backend.loaded and not await backend.health():
                raise RuntimeError(f"expert '{name}' is unhealthy")

    async def __del__(self) -> None:
        for backend in self.backends.values():
            try:
                await backend.unload()
            except Exception:
                log.exception("unloading %s failed", backend.expert.name)


@serve.deployment
class Router:
    """The routing strategies, set up once here (embedders, trained artifacts)."""

    def __init__(self, config: OrchestratorConfig) -> None:
        self.strategies = StrategySet(config)
        self.strategies.warm([config.routing.default_strategy])

    async def decide(self, query: Query, target: Target) -> Decision:
        return await self.strategies.decide(query, target)

    async def decide_batch(self, queries: list[Query], name: str) -> list[Decision]:
        return await self.strategies.decide_batch(queries, name)


@serve.deployment
@serve.ingress()
class Ingress:
    """The HTTP API (orchestrator.api) around an Orchestrator whose experts are remote."""

    def __init__(
        self,
        config: OrchestratorConfig,
        router: DeploymentHandle[Any],
        experts: dict[str, DeploymentHandle[Any]],
    ) -> None:
        pool = ExpertPool(config, backend_factory=lambda e: RemoteBackend(e, experts[group_of(e)]))
        self.orchestrator = Orchestrator(
            config, pool=pool, strategies=RemoteStrategySet(config, router)
        )

    def __serve_build_asgi_app__(self) -> FastAPI:
        # The app's lifespan starts the orchestrator: it waits for every expert deployment.
        return build_app(self.orchestrator)


# -- the ingress side of the handles --------------------------------------------------------


async def _result(response: Any) -> Any:
    """Await a DeploymentResponse, re-raising an orchestrator error raised in the replica as
    itself (Ray wraps it), so dispatch sees e.g. a 400 as a 400 and does not fall back."""
    try:
        return await response
    except Exception as e:
        raise _unwrap(e) from e


def _unwrap(e: BaseException) -> BaseException:
    cause = getattr(e, "cause", None)
    return cause if isinstance(cause, OrchestratorError) else e


def _replica_lost(e: BaseException) -> bool:
    """The replica serving a call died or vanished (killed, node lost, scaled in)."""
    from ray.exceptions import RayActorError
    from ray.serve.exceptions import DeploymentUnavailableError, ReplicaUnavailableError

    return isinstance(e, RayActorError | ReplicaUnavailableError | DeploymentUnavailableError)


class RemoteBackend(Backend):
    """A backend whose expert lives in an ``expert-<group>`` deployment.

    ``load`` waits until the remote expert is ready (a vLLM engine may take a minute);
    ``unload`` only forgets it here: the deployment owns the engine, and Ray owns the
    deployment's replicas (count, autoscaling, restarts).

    When a call finds its replica dead, the expert counts as not loaded until a replica answers
    again (a background probe): meanwhile dispatch sees it unavailable and falls back at once,
    instead of queueing behind Serve's replacement of the replica (≈5–30 s; a vLLM replica
    takes its cold start).
    """

    name = "ray"

    def __init__(self, expert: ExpertConfig, handle: DeploymentHandle[Any]) -> None:
        super().__init__(expert)
        self.handle = handle
        self._probe: asyncio.Task[None] | None = None

    async def load(self) -> None:
        await _result(self.handle.ensure.remote(self.expert.name))
        self.loaded = True

    async def unload(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
        self.loaded = False

    async def _call(self, response: Any) -> Any:
        try:
            return await response
        except Exception as e:
            self._check_replica(e)
            raise _unwrap(e) from e

    def _check_replica(self, e: BaseException) -> None:
        if _replica_lost(e) and self.loaded:
            log.warning(
                "expert %s lost its replica; falling back until it is back", self.expert.name
            )
            self.loaded = False
            self._probe = asyncio.ensure_future(self._await_replica())

    async def _await_replica(self) -> None:
        while True:
            try:
                await self.handle.ensure.remote(self.expert.name)
            except Exception as e:
                if not _replica_lost(e):
                    log.warning("expert %s stays unavailable: %s", self.expert.name, e)
                    return
                await asyncio.sleep(0.5)
                continue
            self.loaded = True
            return

    async def generate(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        result: list[Generation] = await self._call(
            self.handle.generate.remote(self.expert.name, list(requests))
        )
        return result

    async def generate_one(self, request: GenerationRequest) -> Generation:
        result: Generation = await self._call(
            self.handle.generate_one.remote(self.expert.name, request)
        )
        return result

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        responses = cast(
            DeploymentResponseGenerator[Delta],
            self.handle.options(stream=True).stream.remote(self.expert.name, request),
        )
        try:
            async for delta in responses:
                yield delta
        except Exception as e:
            self._check_replica(e)
            raise _unwrap(e) from e
        finally:
            responses.cancel()  # type: ignore[no-untyped-call]  # a client that went away stops the remote generation too

    async def health(self) -> bool:
        if not self.loaded:
            return False
        healthy: bool = await self._call(self.handle.health.remote(self.expert.name))
        return healthy


class RemoteStrategySet(StrategySet):
    """Strategies that run in the ``router`` deployment; named experts resolve locally."""

    def __init__(self, config: OrchestratorConfig, handle: DeploymentHandle[Any]) -> None:
        super().__init__(config)
        self.handle = handle

    def warm(self, names: Sequence[str]) -> None:
        """Nothing to warm here: the router deployment warmed its strategies at start."""

    async def decide(self, query: Query, target: Target) -> Decision:
        if target.expert is not None:
            return await super().decide(query, target)
        decision: Decision = await _result(self.handle.decide.remote(query, target))
        return decision

    async def decide_batch(self, queries: Sequence[Query], name: str) -> list[Decision]:
        decisions: list[Decision] = await _result(
            self.handle.decide_batch.remote(list(queries), name)
        )
        return decisions


# -- running it -----------------------------------------------------------------------------


@contextmanager
def local_serve(host: str = "127.0.0.1", port: int = 8000) -> Iterator[None]:
    """A Ray cluster on this machine with no dashboard, and Serve's HTTP proxy on ``host:port``.
    Shuts both down on exit.

    The node listens on loopback only when ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` was set before
    ``ray`` was first imported (Ray reads it at import; ``orchestrator serve --ray`` and the
    tests set it), since Ray otherwise rewrites ``_node_ip_address`` to the machine's address.
    """
    import ray

    ray.init(
        address="local",
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        configure_logging=False,
        log_to_driver=False,
    )
    try:
        serve.start(http_options={"host": host, "port": port})
        yield
    finally:
        try:
            serve.shutdown()  # type: ignore[no-untyped-call]
        finally:
            ray.shutdown()


def run_local(config: OrchestratorConfig, host: str, port: int) -> None:
    """``orchestrator serve --ray``: deploy ``config`` on a local Ray cluster; block until
    Ctrl-C or SIGTERM, then shut everything down."""
    stop = threading.Event()
    with local_serve(host, port):
        signal.signal(signal.SIGTERM, lambda *_: stop.set())  # after ray.init, which sets its own
        serve.run(build_application(config), name=APP_NAME, route_prefix="/")
        try:
            while not stop.wait(1.0):
                pass
        except KeyboardInterrupt:
            pass


def serve_config(
    config: OrchestratorConfig,
    config_path: str | None,
    *,
    host: str = "0.0.0.0",
    port: int = 8000,
    name: str = APP_NAME,
) -> dict[str, Any]:
    """A Serve config file (``serve deploy``, KubeRay's ``serveConfigV2``) for ``config``.

    The application is ``import_path: orchestrator.ray_app:app_builder`` with
    ``args: {config_path}``; its ``deployments`` list the options :func:`build_application`
    sets, so an operator can tune replicas and resources in the file. ``config_path`` must name
    the same config on the cluster (the deployments' names come from it).
    """
    deployments: list[dict[str, Any]] = [
        {"name": "ingress", **front_options(config)},
        {"name": "router", **front_options(config)},
    ]
    for group, members in expert_groups(config).items():
        deployments.append({"name": group, **deployment_options(members)})
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": host, "port": port},
        "applications": [
            {
                "name": name,
                "route_prefix": "/",
                "import_path": IMPORT_PATH,
                "args": {"config_path": config_path} if config_path else {},
                "deployments": deployments,
            }
        ],
    }


__all__ = [
    "AppArgs",
    "ExpertGroup",
    "Ingress",
    "RemoteBackend",
    "RemoteStrategySet",
    "Router",
    "app_builder",
    "build_application",
    "local_serve",
    "run_local",
    "serve_config",
]
