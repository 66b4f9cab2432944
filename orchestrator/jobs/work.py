"""What a training run does — the one code path of ``orchestrator train`` and of a job.

:func:`train_router`, in order:

1. load the dataset (a recorded-outcome loader, or JSONL of your own prompts with labels and
   outcomes: :func:`parse_jsonl`) and take the ``limit`` sample by hash;
2. drop rows with a missing outcome and cut the same hash split as ``orchestrator eval``
   (:class:`~orchestrator.evaluation.harness.Harness`): train side and held-out side;
3. embed every prompt once (MiniLM, shared cache; the bulk of the time);
4. fit the strategy on the train side (or on everything, ``split="all"``) in memory;
5. evaluate it on the held-out side with the evaluation harness (accuracy, cost, the
   cost–quality curve over its knob, AIQ, best single model, oracle);
6. save it as a new artifact version whose ``meta.json`` holds the training *and* evaluation
   metrics, then write ``evaluation.json`` and the PNG plots into the version's folder.

A failure at any step leaves no new version behind. :func:`run_job` wraps it for a job: it runs
in its own process (``python -m orchestrator.jobs.child``) or a Ray task and reports progress
and the result into Redis through :class:`~orchestrator.jobs.queue.JobReporter`.
"""

from __future__ import annotations

import json
import logging
import math
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from rich.progress import Progress, TaskID

from orchestrator.errors import ConfigError
from orchestrator.evaluation.harness import Harness, StrategyResult

if TYPE_CHECKING:
    from orchestrator.evaluation.datasets import RoutingDataset
    from orchestrator.evaluation.harness import EvalResult
    from routers.artifacts import Artifact, ArtifactStore
    from routers.trainable import TrainableStrategy

log = logging.getLogger(__name__)

PLOT_FILE = "cost_quality.png"
EVALUATION_FILE = "evaluation.json"


# -- JSONL datasets ----------------------------------------------------------------------------


def parse_jsonl(text: str, name: str = "jsonl", source: str = "upload") -> RoutingDataset:
    """Your own routing data: one JSON object per line::

        {"prompt": "Solve 2x+3=11", "category": "math",
         "scores": {"big-model": 1, "small-model": 0},
         "costs": {"big-model": 0.002, "small-model": 0.0001}, "id": "optional"}

    ``category`` is the label (CoE learns prompt → category; default "default"); ``scores`` the
    recorded outcome per model in [0, 1] (null = not recorded); ``costs`` USD per prompt
    (default 0). Models missing from a line count as not recorded there. Blank lines are
    skipped. Raises :class:`ConfigError` naming the line and the field.
    """
    from orchestrator.evaluation.datasets import RoutingDataset

    prompts: list[str] = []
    categories: list[str] = []
    ids: list[str] = []
    rows: list[tuple[dict[str, float], dict[str, float]]] = []
    models: dict[str, None] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"line {n}: not valid JSON ({e.msg})") from None
        if not isinstance(item, dict):
            raise ConfigError(f"line {n}: expected a JSON object")
        prompt = item.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ConfigError(f"line {n}: 'prompt' must be a non-empty string")
        category = item.get("category", "default")
        if not isinstance(category, str) or not category:
            raise ConfigError(f"line {n}: 'category' must be a non-empty string")
        scores = _numbers(item.get("scores"), n, "scores", low=0.0, high=1.0, required=True)
        costs = _numbers(item.get("costs", {}), n, "costs", low=0.0, high=math.inf)
        unknown = sorted(set(costs) - set(scores))
        if unknown:
            raise ConfigError(f"line {n}: 'costs' names models without a score: {unknown}")
        models.update(dict.fromkeys(scores))
        prompts.append(prompt)
        categories.append(category)
        ids.append(str(item.get("id", f"{name}:{n}")))
        rows.append((scores, costs))
    if len(prompts) < 2:
        raise ConfigError(f"{source}: needs at least 2 prompts, found {len(prompts)}")
    names = list(models)
    score_matrix = np.array(
        [[s.get(m, math.nan) for m in names] for s, _ in rows], dtype=np.float64
    )
    cost_matrix = np.array([[c.get(m, 0.0) for m in names] for _, c in rows], dtype=np.float64)
    return RoutingDataset(
        name=name,
        prompts=prompts,
        categories=categories,
        models=names,
        scores=score_matrix,
        costs=cost_matrix,
        ids=ids,
        cost_source="as given in the JSONL 'costs' (USD per prompt; 0 where absent)",
        source=source,
    )


def _numbers(
    value: Any, line: int, key: str, *, low: float, high: float, required: bool = False
) -> dict[str, float]:
    if not isinstance(value, dict) or (required and not value):
        raise ConfigError(f"line {line}: '{key}' must be an object of model → number")
    out: dict[str, float] = {}
    for model, v in value.items():
        if v is None:
            out[model] = math.nan
            continue
        if isinstance(v, bool) or not isinstance(v, int | float) or not low <= v <= high:
            bounds = f"in [{low:g}, {high:g}]" if high < math.inf else f">= {low:g}"
            raise ConfigError(f"line {line}: {key}.{model} must be a number {bounds}, got {v!r}")
        out[model] = float(v)
    return out


def load_data(
    dataset: str,
    path: str | Path | None = None,
    *,
    data_dir: str | Path | None = None,
    label: str | None = None,
    limit: int | None = None,
    seed: int = 0,
) -> RoutingDataset:
    """A recorded dataset by name (from ``path`` or ``<data_dir>/<name>``), or a ``jsonl``
    file; then at most ``limit`` rows, sampled by hash. Raises :class:`ConfigError`."""
    from orchestrator.evaluation.datasets import load_dataset, sample

    if dataset == "jsonl":
        if path is None:
            raise ConfigError("dataset 'jsonl' needs a path to a .jsonl file")
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"dataset 'jsonl': {p} is not a file")
        data = parse_jsonl(p.read_text(encoding="utf-8"), label or "jsonl", str(p))
    else:
        data = load_dataset(dataset, path, data_dir=data_dir)
    return sample(data, limit, seed=seed)


# -- progress ----------------------------------------------------------------------------------

STAGES: dict[str, tuple[float, float]] = {
    "loading data": (0.0, 0.03),
    "embedding prompts": (0.03, 0.65),
    "training": (0.65, 0.8),
    "evaluating": (0.8, 0.93),
    "saving": (0.93, 1.0),
}
"""Each stage's share of a run's progress (embedding dominates: ≈30 long prompts/s on 2 cores)."""


class Reporter:
    """Receives a run's progress. The CLI draws it; a job writes it into Redis. No-ops here."""

    def stage(self, name: str, fraction: float) -> None:
        """Entered or advanced within stage ``name``; ``fraction`` is the whole run's, 0..1."""

    def log(self, message: str) -> None:
        """A line for the run's log."""

    def embedding_progress(self) -> Progress:
        """The rich Progress :func:`~orchestrator.evaluation.harness.warm_embeddings` reports
        into; by default an invisible one that forwards to :meth:`stage`."""
        return _EmbeddingProgress(self)


class ConsoleReporter(Reporter):
    """``orchestrator train``'s progress: one bar for the run, one for the embedding, and
    log lines printed above them."""

    def __init__(self, progress: Progress, title: str) -> None:
        self.progress = progress
        self.task = progress.add_task(title, total=1.0)
        self.title = title

    def stage(self, name: str, fraction: float) -> None:
        self.progress.update(self.task, completed=fraction, description=f"{self.title}: {name}")

    def log(self, message: str) -> None:
        self.progress.console.print(f"[dim]{message}[/dim]", highlight=False)

    def embedding_progress(self) -> Progress:
        return self.progress


def _stage(reporter: Reporter, name: str, within: float = 0.0) -> None:
    start, end = STAGES[name]
    reporter.stage(name, start + (end - start) * min(max(within, 0.0), 1.0))


class _EmbeddingProgress(Progress):
    """Invisible; each advance of the embedding task moves the run's progress."""

    def __init__(self, reporter: Reporter) -> None:
        super().__init__(disable=True)
        self.reporter = reporter

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        task = next((t for t in self.tasks if t.id == task_id), None)
        if task is not None and task.total:
            _stage(self.reporter, "embedding prompts", task.completed / task.total)


# -- training ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainSpec:
    """One training run (what a job's request becomes, or ``orchestrator train``'s options)."""

    strategy: str
    dataset: str
    options: dict[str, Any] = field(default_factory=dict)
    path: str | None = None
    data_dir: str | None = None
    label: str | None = None
    split: Literal["train", "all"] = "train"
    test_fraction: float = 0.3
    seed: int = 0
    limit: int | None = None
    evaluate: bool = True
    embedding_cache_dir: str | None = None
    job: str | None = None
    """The job's id, recorded in the artifact's meta.json."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainOutcome:
    artifact: Artifact
    trained_rows: int
    dropped: int
    metrics: dict[str, Any]
    """The evaluation's headline numbers (empty without evaluation)."""
    train_metrics: dict[str, Any]
    """What ``fit`` measured while training."""
    plots: list[Path]


def trainable_class(name: str) -> type[TrainableStrategy]:
    """The registered trainable strategy ``name``; :class:`ConfigError` lists the valid ones."""
    from routers import get_strategy_class, list_strategies
    from routers.trainable import TrainableStrategy

    cls = get_strategy_class(name)
    if not issubclass(cls, TrainableStrategy):
        raise ConfigError(
            f"strategy '{name}' is not trainable; trainable: {', '.join(trainable_strategies())}"
            if name in list_strategies()
            else f"{name} is not a TrainableStrategy"
        )
    return cls


def trainable_strategies() -> list[str]:
    from routers import STRATEGIES, list_strategies
    from routers.trainable import TrainableStrategy

    return [n for n in list_strategies() if issubclass(STRATEGIES.get(n), TrainableStrategy)]


def train_router(
    spec: TrainSpec, store: ArtifactStore, reporter: Reporter | None = None
) -> TrainOutcome:
    """Train, evaluate and save one router version (see the module docstring for the order).

    Raises :class:`ConfigError` for a bad strategy, options or dataset, ``ValueError`` for data
    too small to split; nothing is saved then.
    """
    from orchestrator.evaluation.harness import warm_embeddings

    reporter = reporter or Reporter()
    cls = trainable_class(spec.strategy)
    options = cls.Options.model_validate(spec.options)  # ValidationError names the field
    _stage(reporter, "loading data")
    data = load_data(
        spec.dataset,
        spec.path,
        data_dir=spec.data_dir,
        label=spec.label,
        limit=spec.limit,
        seed=spec.seed,
    )
    harness = _ArtifactHarness(
        data,
        cls,
        spec.options,
        test_fraction=spec.test_fraction,
        seed=spec.seed,
        options={spec.strategy: dict(spec.options)},
    )
    train = harness.train if spec.split == "train" else harness.data
    reporter.log(
        f"{data.name} ({data.fingerprint()}): {len(harness.data)} complete rows "
        f"({harness.dropped} dropped); training on {len(train)} ({spec.split}), "
        f"{len(harness.test)} held out"
    )
    _stage(reporter, "embedding prompts")
    cache = Path(spec.embedding_cache_dir) if spec.embedding_cache_dir else None
    embed_model = getattr(options, "embedding_model", None)
    seconds = warm_embeddings(harness.data, embed_model, cache, reporter.embedding_progress())
    reporter.log(f"embedded {len(harness.data)} prompts in {seconds:.1f} s")
    _stage(reporter, "training")
    start = time.perf_counter()
    trained = cls.train(train, options)  # in memory: saved below, after the evaluation
    reporter.log(f"trained {cls.name} in {time.perf_counter() - start:.1f} s")
    metrics: dict[str, Any] = {}
    result = None
    if spec.evaluate:
        _stage(reporter, "evaluating")
        harness.artifact = trained
        result = harness.run([spec.strategy])
        metrics = headline_metrics(result, result.strategy(spec.strategy), len(train), spec.split)
        reporter.log(
            f"held-out accuracy {metrics['accuracy']:.3f} at ${metrics['mean_cost_usd']:.6f}/query "
            f"(best single {metrics['best_single']}: {metrics['best_single_accuracy']:.3f}, "
            f"oracle {metrics['oracle_accuracy']:.3f})"
        )
    _stage(reporter, "saving")
    meta = trained.meta
    artifact = store.save(
        cls.name,
        trained.state,
        options=meta["options"],
        dataset=meta["dataset"],
        metrics={**meta.get("metrics", {}), **({"evaluation": metrics} if metrics else {})},
        extra={
            "models": meta["models"],
            "knob": meta["knob"],
            "split": spec.split,
            "test_fraction": spec.test_fraction,
            "seed": spec.seed,
            **({"job": spec.job} if spec.job else {}),
        },
    )
    plots: list[Path] = []
    if result is not None and artifact.path is not None:
        from orchestrator.evaluation.report import plot, write_json

        write_json(result, artifact.path / EVALUATION_FILE)
        plots = plot(result, artifact.path)
    reporter.log(f"saved {cls.name} {artifact.version} at {artifact.path}")
    reporter.stage("saving", 1.0)
    return TrainOutcome(
        artifact, len(train), harness.dropped, metrics, dict(meta.get("metrics", {})), plots
    )


def headline_metrics(
    result: EvalResult, s: StrategyResult, trained_rows: int, split: str
) -> dict[str, Any]:
    best = result.singles[result.best_single]
    return {
        "test_rows": result.splits["test"],
        "train_rows": trained_rows,
        "test_seen_in_training": split == "all",
        "accuracy": s.headline.accuracy,
        "mean_cost_usd": s.headline.mean_cost,
        "total_cost_usd": s.headline.total_cost,
        "knob": s.knob,
        "knob_value": s.chosen_knob,
        "aiq": s.aiq,
        "cost_to_target_usd": s.cost_to_target,
        "target_accuracy": result.target_accuracy,
        "best_single": result.best_single,
        "best_single_accuracy": best.accuracy,
        "best_single_mean_cost_usd": best.mean_cost,
        "singles_aiq": result.singles_aiq,
        "oracle_accuracy": result.oracle.accuracy,
        "oracle_mean_cost_usd": result.oracle.mean_cost,
        "decisions_per_s": s.timings.get("decisions_per_s"),
    }


class _ArtifactHarness(Harness):
    """The evaluation harness run on an artifact trained beforehand: no knob selection (the
    run's options fix the knob); the curve over the knob's grid is still swept for AIQ."""

    def __init__(
        self,
        data: RoutingDataset,
        cls: type[TrainableStrategy],
        strategy_options: dict[str, Any],
        **kwargs: Any,
    ) -> None:
        super().__init__(data, **kwargs)
        self.cls = cls
        self.strategy_options = dict(strategy_options)
        self.artifact: Artifact | None = None

    def evaluate_strategy(self, name: str) -> StrategyResult:
        from orchestrator.evaluation.metrics import operating_point

        cls, artifact = self.cls, self.artifact
        assert artifact is not None, "set .artifact before run()"
        options = self.strategy_options
        knob_value = None
        if cls.knob is not None:
            knob_value = float(getattr(cls.Options.model_validate(options), cls.knob))
        curve = (
            self.sweep(cls, options, artifact, self.test, cls.knob_values(artifact.state))
            if cls.knob is not None
            else []
        )
        strategy = cls(self.experts, options)
        strategy.use_artifact(artifact)
        choice, seconds = self.choices(strategy, self.test)
        headline = operating_point(choice, self.test.scores, self.test.costs, knob_value)
        return StrategyResult(
            name,
            cls.knob,
            headline,
            curve or [headline],
            chosen_knob=knob_value,
            train_metrics=artifact.meta.get("metrics", {}),
            timings={
                "route_s": round(seconds, 4),
                "decisions_per_s": round(len(self.test) / max(seconds, 1e-9), 1),
            },
        )


# -- a job's process ---------------------------------------------------------------------------


class RedisReporter(Reporter):
    """Writes progress into the job's hash at most every ``interval_s`` (and on each new
    stage), and log lines into its log list."""

    def __init__(self, job: Any, interval_s: float = 0.5) -> None:
        self.job = job
        self.interval_s = interval_s
        self._last = (0.0, "")

    def stage(self, name: str, fraction: float) -> None:
        now = time.monotonic()
        last_time, last_stage = self._last
        if name == last_stage and now - last_time < self.interval_s:
            return
        self._last = (now, name)
        self.job.update(
            log=name if name != last_stage else "", progress=f"{fraction:.3f}", stage=name
        )

    def log(self, message: str) -> None:
        log.info("%s", message)
        self.job.update(log=message)


def run_job(payload: dict[str, Any]) -> int:
    """Run one job attempt and record its result in Redis; returns a process exit code.

    ``payload``: ``job``, ``attempt``, ``redis_url``, ``namespace``, ``artifacts_dir``,
    ``jobs`` (the JobsConfig as a dict) and ``spec`` (a :class:`TrainSpec` as a dict).
    """
    from orchestrator.config import JobsConfig
    from orchestrator.jobs.queue import JobReporter
    from routers.artifacts import ArtifactStore

    config = JobsConfig.model_validate(payload["jobs"])
    job = JobReporter(
        payload["redis_url"], payload["namespace"], payload["job"], payload["attempt"], config
    )
    reporter = RedisReporter(job)
    spec = TrainSpec(**payload["spec"])
    try:
        job.update(log=f"attempt {payload['attempt']} started", stage="starting")
        outcome = train_router(spec, ArtifactStore(payload["artifacts_dir"]), reporter)
    except Exception as e:
        message = e.message if isinstance(e, ConfigError) else f"{type(e).__name__}: {e}"
        for line in traceback.format_exc().strip().splitlines()[-8:]:
            job.update(log=line)
        job.finish("failed", f"failed: {message}", error=message)
        job.close()
        return 1
    artifact = outcome.artifact
    plot = next((p for p in outcome.plots if p.name == PLOT_FILE), None)
    job.finish(
        "succeeded",
        f"succeeded: {artifact.strategy} {artifact.version}",
        progress="1",
        version=artifact.version,
        artifact_path=str(artifact.path),
        plot=str(plot) if plot else "",
        metrics={**outcome.metrics, "train": outcome.train_metrics},
    )
    job.close()
    return 0


def ray_task(num_cpus: float) -> Any:
    """:func:`run_job` as a Ray remote function reserving ``num_cpus``."""
    import ray

    return ray.remote(num_cpus=num_cpus, max_retries=0)(run_job)
