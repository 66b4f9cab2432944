"""Ingress stage: a wire request becomes a :class:`Query` and a routing target.

Here live the request limits (message count, max_tokens cap) and the model-name policy:
an expert's name goes to that expert; ``auto`` and ``router/<strategy>`` are routed; any other
name follows ``routing.unknown_model`` (default: routed as ``auto``) after the alias map.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from orchestrator.config import OrchestratorConfig
from orchestrator.errors import InvalidRequestError, ModelNotFoundError
from orchestrator.protocol import ChatCompletionRequest, ChatMessageIn
from orchestrator.types import Message, Query, RoutingOptions, SamplingParams

log = logging.getLogger(__name__)

ROUTER_PREFIX = "router/"
Resolution = Literal["expert", "routed", "alias", "unknown"]


@dataclass(frozen=True, slots=True)
class Target:
    """Where a request goes: one named expert, or a strategy."""

    expert: str | None
    strategy: str | None
    resolution: Resolution


def resolve_model(model: str, config: OrchestratorConfig, strategies: list[str]) -> Target:
    experts = {e.name for e in config.experts}
    resolution: Resolution = "expert"
    name = model
    if name not in experts and name != "auto" and not name.startswith(ROUTER_PREFIX):
        if name in config.routing.aliases:
            name, resolution = config.routing.aliases[name], "alias"
        elif config.routing.unknown_model == "route":
            name, resolution = "auto", "unknown"
        else:
            valid = sorted(experts) + ["auto"] + [ROUTER_PREFIX + s for s in strategies]
            raise ModelNotFoundError(model, valid)
    if name in experts:
        return Target(name, None, resolution)
    if resolution == "expert":
        resolution = "routed"
    if name == "auto":
        return Target(None, config.routing.default_strategy, resolution)
    strategy = name[len(ROUTER_PREFIX) :]
    if strategy not in strategies:
        valid = sorted(experts) + ["auto"] + [ROUTER_PREFIX + s for s in strategies]
        raise ModelNotFoundError(model, valid)
    return Target(None, strategy, resolution)


def _content(message: ChatMessageIn, index: int) -> str:
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for j, part in enumerate(content):
        if part.type != "text" or part.text is None:
            raise InvalidRequestError(
                f"messages[{index}].content[{j}] has type '{part.type}'; only text parts are "
                "supported by these experts",
                param=f"messages[{index}].content[{j}].type",
            )
        texts.append(part.text)
    return "\n".join(texts)


def to_query(request: ChatCompletionRequest, config: OrchestratorConfig) -> Query:
    """Validate limits and convert; raises :class:`InvalidRequestError` naming the field."""
    limits = config.server
    if request.model_extra:
        log.debug("ignoring unknown request fields: %s", sorted(request.model_extra))
    if len(request.messages) > limits.max_messages:
        raise InvalidRequestError(
            f"{len(request.messages)} messages exceed the limit of {limits.max_messages}",
            param="messages",
        )
    if request.n not in (None, 1):
        raise InvalidRequestError("only n=1 is supported", param="n")
    max_tokens = request.max_completion_tokens or request.max_tokens or limits.default_max_tokens
    if max_tokens > limits.max_tokens_cap:
        field = "max_completion_tokens" if request.max_completion_tokens else "max_tokens"
        raise InvalidRequestError(
            f"{field}={max_tokens} exceeds the cap of {limits.max_tokens_cap}", param=field
        )
    messages = []
    for i, m in enumerate(request.messages):
        role = "tool" if m.role == "function" else m.role
        messages.append(Message(role, _content(m, i), m.name))
    if not any(m.content.strip() for m in messages):
        raise InvalidRequestError("every message is empty", param="messages")
    stop = (request.stop,) if isinstance(request.stop, str) else tuple(request.stop or ())
    if len(stop) > 4:
        raise InvalidRequestError("at most 4 stop sequences", param="stop")
    sampling = SamplingParams(
        max_tokens=max_tokens,
        temperature=(
            limits.default_temperature if request.temperature is None else request.temperature
        ),
        top_p=1.0 if request.top_p is None else request.top_p,
        stop=stop,
        seed=request.seed,
    )
    options = RoutingOptions(
        strategy=request.strategy,
        k=request.k,
        max_cost_usd=request.max_cost_usd,
        max_latency_ms=request.max_latency_ms,
        max_energy_j=request.max_energy_j,
    )
    return Query(tuple(messages), sampling, options)


BUDGET_FIELDS = ("max_latency_ms", "max_energy_j", "max_cost_usd")


def with_key_budgets(
    request: ChatCompletionRequest, config: OrchestratorConfig, key_name: str | None
) -> ChatCompletionRequest:
    """The request with its API key's default budgets (``server.api_keys[].budgets``) filled
    in where it sets none, field by field; unchanged without a key or key budgets."""
    if key_name is None:
        return request
    key = next((k for k in config.server.api_keys if k.name == key_name), None)
    if key is None:
        return request
    update = {
        f: getattr(key.budgets, f)
        for f in BUDGET_FIELDS
        if getattr(request, f) is None and getattr(key.budgets, f) is not None
    }
    return request.model_copy(update=update) if update else request
