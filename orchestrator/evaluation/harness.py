"""The evaluation harness: train strategies on a train split, measure them on a held-out one.

No leakage, by construction:

* **Test split by hash of the prompt's group key** (:func:`~.datasets.split`; the normalised
  prompt text, or the question text for MMLU-Pro): identical prompts always fall on the same
  side, so no test prompt is seen in training under another row.
* **Everything learned comes from the train split only**: classifiers, kNN indexes, category
  maps, strong/weak picks. MiniLM itself is pre-trained and fixed (nothing is fitted to data).
* **Knobs are chosen on validation data carved from train** (another hash salt): the strategy
  is first fitted on train-minus-validation, its knob swept on validation, and the knob with
  the best validation accuracy (cheapest within 0.5 point) becomes its reported operating
  point; then it is refitted on the whole train split and evaluated once on test at that knob,
  plus over its whole knob grid for the cost–quality curve (a description, not a choice).
* Strategies that choose things internally (CoE's category map, kNN's k, the threshold
  router's knob grid) carve their own validation part from whatever training data they get.

Every strategy is run through its real ``route()`` — the code path the server runs — with one
replay expert per recorded model; the harness maps each decision back to the recorded model.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import Progress, TaskID

from orchestrator.config import ExpertConfig
from orchestrator.evaluation.datasets import RoutingDataset, split
from orchestrator.evaluation.ensemble import ensemble_point, recorded_choices
from orchestrator.evaluation.metrics import (
    Point,
    aiq,
    choose_knob,
    cost_to_reach,
    nondecreasing_hull,
    operating_point,
    oracle_choices,
)
from orchestrator.types import Decision, Message, Query
from routers import get_strategy_class
from routers.artifacts import ArtifactStore
from routers.base import Strategy
from routers.embeddings import get_embedder
from routers.trainable import TrainableStrategy

DEFAULT_STRATEGIES = ("coe", "knn", "threshold", "random", "symbolic-moe")
TARGET_SHARE = 0.95


@dataclass
class StrategyResult:
    name: str
    knob: str | None
    headline: Point
    curve: list[Point]
    chosen_knob: float | None = None
    valid_curve: list[Point] = field(default_factory=list)
    aiq: float | None = None
    cost_to_target: float | None = None
    artifact: dict[str, Any] = field(default_factory=dict)
    train_metrics: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    hull: list[list[float]] = field(default_factory=list)
    variants: dict[str, Point] = field(default_factory=dict)
    """Named option overrides measured on test as descriptions (e.g. Symbolic-MoE's fixed k)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "knob": self.knob,
            "chosen_knob": self.chosen_knob,
            "headline": self.headline.as_dict(),
            "aiq": self.aiq,
            "cost_to_target": self.cost_to_target,
            "curve": [p.as_dict() for p in self.curve],
            "valid_curve": [p.as_dict() for p in self.valid_curve],
            "hull": self.hull,
            "artifact": self.artifact,
            "train_metrics": self.train_metrics,
            "timings": self.timings,
            **(
                {"variants": {k: p.as_dict() for k, p in self.variants.items()}}
                if self.variants
                else {}
            ),
        }


@dataclass
class EvalResult:
    dataset: dict[str, Any]
    splits: dict[str, int]
    singles: dict[str, Point]
    oracle: Point
    strategies: list[StrategyResult]
    best_single: str
    target_accuracy: float
    c_max: float
    singles_aiq: float
    singles_hull: list[list[float]]
    singles_cost_to_target: float | None
    settings: dict[str, Any]

    def strategy(self, name: str) -> StrategyResult:
        for s in self.strategies:
            if s.name == name:
                return s
        raise KeyError(name)

    def as_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "splits": self.splits,
            "settings": self.settings,
            "best_single": self.best_single,
            "target_accuracy": self.target_accuracy,
            "c_max": self.c_max,
            "oracle": self.oracle.as_dict(),
            "singles": {m: p.as_dict() for m, p in self.singles.items()},
            "singles_aiq": self.singles_aiq,
            "singles_hull": self.singles_hull,
            "singles_cost_to_target": self.singles_cost_to_target,
            "strategies": [s.as_dict() for s in self.strategies],
        }


def expert_name(model: str) -> str:
    """A valid expert name for a recorded model ('meta/llama-2-70b' → 'meta-llama-2-70b')."""
    return re.sub(r"[^A-Za-z0-9._:-]", "-", model).lstrip("-._:") or "model"


def replay_experts(data: RoutingDataset, path: str | None = None) -> list[ExpertConfig]:
    """One replay expert per recorded model of ``data``."""
    engine: dict[str, Any] = {"dataset": data.name}
    if path is not None:
        engine["path"] = path
    return [
        ExpertConfig(
            name=expert_name(m),
            backend="replay",
            model=m,
            engine={**engine, "model": m},
            description=f"{m} as recorded in {data.name}",
        )
        for m in data.models
    ]


def warm_embeddings(
    data: RoutingDataset,
    embedding_model: str | None = None,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
) -> float:
    """Embed every prompt of ``data`` once (a disk cache under ``cache_dir`` when given), so
    strategies find them in the shared embedder's cache. Returns the seconds spent."""
    start = time.perf_counter()
    embedder = get_embedder(embedding_model)
    file = None
    if cache_dir is not None:
        key = hashlib.sha256(f"{embedder.key}|{data.fingerprint()}".encode()).hexdigest()[:20]
        file = Path(cache_dir) / f"{data.name}-{key}.npy"
        if file.is_file():
            vectors = np.load(file)
            if vectors.shape[0] == len(data):
                embedder.prime(data.prompts, vectors)
                return time.perf_counter() - start
    task: TaskID | None = None
    if progress is not None:
        task = progress.add_task(f"embedding {len(data)} {data.name} prompts", total=len(data))

    def advance(n: int) -> None:
        if progress is not None and task is not None:
            progress.advance(task, n)

    vectors = embedder.encode(data.prompts, progress=advance)
    if progress is not None and task is not None:
        progress.update(task, completed=len(data))
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        np.save(file, vectors)
    return time.perf_counter() - start


class Harness:
    """Evaluates strategies and baselines on one dataset."""

    def __init__(
        self,
        data: RoutingDataset,
        *,
        test_fraction: float = 0.3,
        valid_fraction: float = 0.2,
        seed: int = 0,
        store: ArtifactStore | None = None,
        options: dict[str, dict[str, Any]] | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.full = data
        self.data, self.dropped = data.complete()
        self.train, self.test = split(self.data, test_fraction, seed=seed, salt="test")
        self.fit_part, self.valid = split(self.train, valid_fraction, seed=seed, salt="select")
        if min(len(self.test), len(self.valid), len(self.fit_part)) == 0:
            raise ValueError(
                f"{data.name}: {len(self.data)} rows are too few for train/valid/test splits"
            )
        self.settings = {
            "test_fraction": test_fraction,
            "valid_fraction": valid_fraction,
            "seed": seed,
            "target_share": TARGET_SHARE,
        }
        self.store = store
        self.options = options or {}
        self.progress = progress
        self.experts = replay_experts(data)
        self.expert_models = {e.name: i for i, e in enumerate(self.experts)}
        self._parsed: dict[str, np.ndarray | None] = {}

    # -- running strategies ----------------------------------------------------------------------

    def decide(self, strategy: Strategy, data: RoutingDataset) -> tuple[list[Decision], float]:
        """The strategy's decisions on ``data``, and the routing seconds."""
        queries = [Query(messages=(Message("user", p),)) for p in data.prompts]
        start = time.perf_counter()
        decisions = strategy.route(queries)
        return decisions, time.perf_counter() - start

    def choices(self, strategy: Strategy, data: RoutingDataset) -> tuple[np.ndarray, float]:
        """The recorded-model index each decision picks on ``data``, and the routing seconds."""
        decisions, seconds = self.decide(strategy, data)
        return np.array([self.expert_models[d.experts[0]] for d in decisions]), seconds

    def measure(
        self, strategy: Strategy, data: RoutingDataset, knob: float | None
    ) -> tuple[Point, float]:
        """The operating point on ``data`` and the routing seconds. Decisions that call several
        experts, or recruit a varying number (``details['recruited']``: Symbolic-MoE), are
        scored by the weighted-vote approximation of their aggregator, with its cost
        (:mod:`orchestrator.evaluation.ensemble`)."""
        decisions, seconds = self.decide(strategy, data)
        if any(len(d.experts) > 1 or "recruited" in d.details for d in decisions):
            point, _ = ensemble_point(
                decisions, self.expert_models, data, knob, self._recorded_choices(data)
            )
            return point, seconds
        choice = np.array([self.expert_models[d.experts[0]] for d in decisions])
        return operating_point(choice, data.scores, data.costs, knob), seconds

    def _recorded_choices(self, data: RoutingDataset) -> np.ndarray | None:
        key = data.fingerprint()
        if key not in self._parsed:
            self._parsed[key] = recorded_choices(data)
        return self._parsed[key]

    def point(self, strategy: Strategy, data: RoutingDataset, knob: float | None) -> Point:
        return self.measure(strategy, data, knob)[0]

    def _instance(
        self,
        cls: type[TrainableStrategy],
        options: dict[str, Any],
        artifact: Any,
        knob: float | None,
    ) -> TrainableStrategy:
        opts = dict(options)
        if cls.knob is not None and knob is not None:
            opts[cls.knob] = knob
        strategy = cls(self.experts, opts)
        strategy.use_artifact(artifact)
        return strategy

    def sweep(
        self,
        cls: type[TrainableStrategy],
        options: dict[str, Any],
        artifact: Any,
        data: RoutingDataset,
        values: Sequence[float],
    ) -> list[Point]:
        return [self.point(self._instance(cls, options, artifact, v), data, v) for v in values]

    def evaluate_strategy(self, name: str) -> StrategyResult:
        cls = get_strategy_class(name)
        options = dict(self.options.get(name, {}))
        if "seed" in cls.Options.model_fields:  # reproducible runs: the split's seed by default
            options.setdefault("seed", self.settings["seed"])
        task = None
        if self.progress is not None:
            task = self.progress.add_task(f"{name}: training and sweeping", total=3)
        if not issubclass(cls, TrainableStrategy):
            strategy = cls(self.experts, options)
            strategy.setup()
            headline, seconds = self.measure(strategy, self.test, None)
            self._done(task)
            return StrategyResult(
                name,
                None,
                headline,
                [headline],
                timings={
                    "route_s": seconds,
                    "decisions_per_s": len(self.test) / max(seconds, 1e-9),
                },
            )
        chosen: float | None = None
        valid_curve: list[Point] = []
        start = time.perf_counter()
        if cls.knob is not None:
            probe = cls.train(self.fit_part, options)
            valid_curve = self.sweep(cls, options, probe, self.valid, cls.knob_values(probe.state))
            chosen = choose_knob(valid_curve)
        self._advance(task)
        artifact = cls.train(self.train, options, self.store)
        fit_s = time.perf_counter() - start
        self._advance(task)
        curve = (
            self.sweep(cls, options, artifact, self.test, cls.knob_values(artifact.state))
            if cls.knob is not None
            else []
        )
        strategy = self._instance(cls, options, artifact, chosen)
        headline, seconds = self.measure(strategy, self.test, chosen)
        variants = {
            label: self.point(
                self._instance(cls, {**options, **override}, artifact, chosen), self.test, chosen
            )
            for label, override in cls.eval_variants(options).items()
        }
        self._done(task)
        return StrategyResult(
            name,
            cls.knob,
            headline,
            curve or [headline],
            chosen_knob=chosen,
            valid_curve=valid_curve,
            artifact={
                "version": artifact.version,
                "path": str(artifact.path) if artifact.path else None,
                "fingerprint": artifact.meta["dataset"]["fingerprint"],
            },
            train_metrics=artifact.meta.get("metrics", {}),
            variants=variants,
            timings={
                "fit_s": round(fit_s, 3),
                "route_s": round(seconds, 4),
                "decisions_per_s": round(len(self.test) / max(seconds, 1e-9), 1),
            },
        )

    def _advance(self, task: TaskID | None) -> None:
        if self.progress is not None and task is not None:
            self.progress.advance(task)

    def _done(self, task: TaskID | None) -> None:
        if self.progress is not None and task is not None:
            self.progress.update(task, completed=3)

    # -- the whole evaluation --------------------------------------------------------------------

    def run(self, strategies: Sequence[str] = DEFAULT_STRATEGIES) -> EvalResult:
        test = self.test
        singles = {
            m: operating_point(np.full(len(test), j), test.scores, test.costs)
            for j, m in enumerate(test.models)
        }
        oracle = operating_point(oracle_choices(test.scores, test.costs), test.scores, test.costs)
        results = [self.evaluate_strategy(s) for s in strategies]
        best_single = max(singles, key=lambda m: (singles[m].accuracy, -singles[m].total_cost))
        target = TARGET_SHARE * singles[best_single].accuracy
        c_max = max(
            [p.total_cost for p in singles.values()]
            + [p.total_cost for r in results for p in r.curve]
        )
        for r in results:
            hull = nondecreasing_hull([(p.total_cost, p.accuracy) for p in r.curve])
            r.hull = hull.tolist()
            r.aiq = aiq(hull, c_max)
            r.cost_to_target = cost_to_reach(r.curve, target)
        singles_hull = nondecreasing_hull([(p.total_cost, p.accuracy) for p in singles.values()])
        dataset = self.full.describe()
        dataset["dropped_incomplete_rows"] = self.dropped
        return EvalResult(
            dataset=dataset,
            splits={
                "rows": len(self.data),
                "train": len(self.train),
                "fit": len(self.fit_part),
                "valid": len(self.valid),
                "test": len(self.test),
            },
            singles=singles,
            oracle=oracle,
            strategies=results,
            best_single=best_single,
            target_accuracy=target,
            c_max=c_max,
            singles_aiq=aiq(singles_hull, c_max),
            singles_hull=singles_hull.tolist(),
            singles_cost_to_target=cost_to_reach(list(singles.values()), target),
            settings=self.settings,
        )
