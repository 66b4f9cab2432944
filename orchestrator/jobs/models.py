"""Wire models of the admin API (``/admin/jobs``, ``/admin/routers``): what the OpenAPI shows.

Requests forbid unknown fields (an admin's typo, ``"strategey"``, is a 400 naming it, not a
silently ignored setting); responses are plain data. The domain side of a job lives in Redis
(:mod:`orchestrator.jobs.queue`) and is turned into :class:`Job` on the way out.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
"""A job in one of these states never changes again (the SDK's ``JOB_TERMINAL_STATUSES``)."""

RECORDED_DATASETS = ("routerbench", "llmrouter", "mmlu_pro")
DATASET_FORMATS = (*RECORDED_DATASETS, "jsonl")


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetSpec(_Request):
    """Where a job's training data comes from."""

    name: Literal["routerbench", "llmrouter", "mmlu_pro", "jsonl"] = Field(
        ...,
        description="A recorded-outcome format: routerbench, llmrouter, mmlu_pro, or jsonl "
        "(your own prompts with labels and outcomes; see docs/training-jobs.md).",
    )
    path: str | None = Field(
        None,
        description="A file or folder the server (and its job workers) can read; default "
        "<jobs.data_dir>/<name>. For jsonl: a .jsonl file, unless `jsonl` carries the data.",
    )
    jsonl: str | None = Field(
        None,
        description='Uploaded JSONL text, one {"prompt", "category", "scores": {model: 0..1}, '
        '"costs": {model: usd}} per line (only with name "jsonl"; bounded by '
        "server.max_body_bytes).",
    )
    label: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="jsonl only: the dataset name recorded in the artifact (default 'jsonl').",
    )


class JobRequest(_Request):
    """``POST /admin/jobs``: train one strategy on one dataset, then evaluate it."""

    strategy: str = Field(..., description="A trainable strategy: coe, knn, threshold.")
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="The strategy's options (e.g. coe: cost_weight, min_confidence, C); checked "
        "against its option model at submission.",
    )
    dataset: str | DatasetSpec = Field(
        ..., description="A recorded dataset's name (routerbench, llmrouter, mmlu_pro) or a spec."
    )
    split: Literal["train", "all"] = Field(
        "train",
        description="train: fit on the train side of the hash split and evaluate on the held-out "
        "side (test_fraction); all: fit on every prompt (the evaluation then saw its data).",
    )
    test_fraction: float = Field(
        0.3, gt=0, lt=1, description="Share of prompts held out (by prompt hash) for evaluation."
    )
    seed: int = Field(0, description="Salt of the hash splits and of the limit sample.")
    limit: int | None = Field(
        None, ge=20, description="Use at most this many prompts (a stable sample by hash)."
    )

    def dataset_spec(self) -> DatasetSpec:
        if isinstance(self.dataset, DatasetSpec):
            return self.dataset
        return DatasetSpec.model_validate({"name": self.dataset})


class Job(BaseModel):
    """A training job as the admin API reports it."""

    object: Literal["training.job"] = "training.job"
    id: str
    status: JobStatus
    strategy: str
    progress: float = Field(0.0, description="Fraction done, 0..1.")
    stage: str = Field("", description="What the job is doing now.")
    metrics: dict[str, Any] = Field(
        default_factory=dict,
        description="Training metrics and the evaluation on the held-out split (accuracy, cost, "
        "AIQ, best single model, oracle) once it succeeded.",
    )
    version: str | None = Field(None, description="The router version it produced.")
    artifact_path: str | None = None
    plot_url: str | None = Field(None, description="GET it for the cost–quality PNG.")
    error: str | None = Field(None, description="Why it failed or was cancelled.")
    attempts: int = Field(0, description="Runs started (a run is repeated after a crash).")
    cancel_requested: bool = False
    request: dict[str, Any] = Field(default_factory=dict, description="What was submitted.")
    created_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    worker: str | None = Field(None, description="host:pid:tag of the process running it.")
    pid: int | None = Field(None, description="The job's own process id (local executor).")
    logs: list[str] = Field(default_factory=list, description="The newest log lines.")


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Job]


class PromoteRequest(_Request):
    version: str = Field(
        ..., description="A saved version ('v0003') or 'latest' (pinned to what it is now)."
    )


class Promotion(BaseModel):
    """The promoted version of one strategy after a promote or rollback."""

    strategy: str
    promoted: str
    previous: str | None = Field(None, description="What was promoted before this change.")
    history: list[str] = Field(
        default_factory=list, description="Promoted versions, newest first (rollback pops)."
    )


class RouterVersion(BaseModel):
    version: str
    created_at: str | None = None
    dataset: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    job: str | None = Field(None, description="The job that produced it, if any.")
    promoted: bool = False
    has_plot: bool = False


class Router(BaseModel):
    strategy: str
    configured_artifact: str = Field(
        ..., description="routing.strategies.<name>.artifact: served while nothing is promoted."
    )
    promoted: str | None = None
    history: list[str] = Field(default_factory=list, description="Newest first.")
    serving: str | None = Field(
        None, description="The version this replica routes with now (None: not built yet)."
    )
    versions: list[RouterVersion] = Field(default_factory=list, description="Oldest first.")


class RouterList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Router]
