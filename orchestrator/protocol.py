"""OpenAI wire models: what clients send and receive.

Request models accept and keep unknown fields (clients send vendor extensions); the ingress
logs them at debug and ignores them. Routing options ride beside the OpenAI fields so a stock
``openai`` client sets them through ``extra_body``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class OpenAIBaseModel(BaseModel):
    model_config = ConfigDict(extra="allow")


class TextPart(OpenAIBaseModel):
    type: str
    text: str | None = None


class ChatMessageIn(OpenAIBaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class StreamOptions(OpenAIBaseModel):
    include_usage: bool = False


class ChatCompletionRequest(OpenAIBaseModel):
    model: str = Field(..., description="An expert name, 'auto', or 'router/<strategy>'.")
    messages: list[ChatMessageIn] = Field(..., min_length=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = Field(None, ge=1)
    user: str | None = None
    # Routing options (extra_body): beside the OpenAI fields.
    strategy: str | None = Field(None, description="Routing strategy for this request.")
    k: int | None = Field(None, ge=1, le=32, description="Experts to recruit (ensembles).")
    max_cost_usd: float | None = Field(None, ge=0, description="Budget: USD for this request.")
    max_latency_ms: float | None = Field(None, gt=0, description="Budget: latency, milliseconds.")
    max_energy_j: float | None = Field(None, gt=0, description="Budget: energy, joules.")


class CandidateOut(BaseModel):
    expert: str
    score: float


class AttemptOut(BaseModel):
    expert: str
    status: Literal["ok", "error", "timeout", "unavailable"]
    error: str | None = None
    latency_ms: float


class RoutingTrace(BaseModel):
    """Which expert answered and why; in every response (the first chunk of a stream)."""

    requested_model: str
    resolution: str = Field(
        ..., description="How `model` was read: expert, routed, alias, unknown."
    )
    strategy: str
    experts: list[str]
    candidates: list[CandidateOut]
    reason: str
    answered_by: list[str] = Field(default_factory=list)
    fallback: bool = False
    attempts: list[AttemptOut] = Field(default_factory=list)
    aggregator: str | None = None
    version: str | None = None
    details: dict[str, Any] = Field(default_factory=dict)
    timings_ms: dict[str, float] = Field(default_factory=dict)


class UsageOut(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChoiceOut(BaseModel):
    index: int = 0
    message: ChatMessageOut
    finish_reason: str


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChoiceOut]
    usage: UsageOut
    routing: RoutingTrace


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    kind: Literal["expert", "router"]
    description: str = ""


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo
