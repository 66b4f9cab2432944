"""Strategies trained on recorded outcomes: the ``fit`` hook, artifacts, and model→expert maps.

A :class:`TrainableStrategy` learns from a
:class:`~orchestrator.evaluation.datasets.RoutingDataset` (prompts, categories, what each
recorded model scored and cost) and routes among the *recorded models*; at serve time each
recorded model is mapped to an expert of the pool. Lifecycle:

1. ``fit(train, options) -> FitResult`` (a classmethod: no pool needed) returns the state
   (numpy arrays, lists, scikit-learn estimators) and training metrics;
   :meth:`TrainableStrategy.train` saves it as a versioned artifact (:mod:`routers.artifacts`).
2. The server constructs the strategy with its options; :meth:`setup` loads the artifact that
   ``options.artifact`` names ('latest', a version, or a folder) from ``artifacts_dir``, maps
   recorded models to experts and calls :meth:`load_state`. The evaluation harness skips
   the disk and hands an in-memory artifact to :meth:`use_artifact`.
3. :meth:`route` runs as for any strategy; every decision carries the artifact's version.

A recorded model maps to the expert that names it in ``options.experts`` (recorded → expert),
else the expert whose ``engine.model``, ``model`` or ``name`` equals it. Recorded models
without an expert are never chosen; at least one must map.

``knob`` names the option swept for the cost–quality curve (``orchestrator eval``), and
:meth:`knob_values` the values swept; changing it needs no retraining.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from orchestrator.config import ExpertConfig
from orchestrator.errors import ConfigError
from orchestrator.evaluation.datasets import RoutingDataset
from orchestrator.types import Candidate, Decision
from routers.artifacts import Artifact, ArtifactStore, describe
from routers.base import Strategy, StrategyOptions
from routers.embeddings import Embedder, get_embedder


class TrainableOptions(StrategyOptions):
    artifact: str = Field(
        "latest",
        description="Trained state to serve: 'latest', a version ('v0003') under "
        "artifacts_dir/<strategy>/, or a path to a version folder.",
    )
    experts: dict[str, str] = Field(
        default_factory=dict,
        description="Recorded model name → expert name, where an expert's engine.model/model/"
        "name does not already equal the recorded name.",
    )
    embedding_model: str | None = Field(
        None, description="A local sentence-transformers folder; default MiniLM."
    )
    valid_fraction: float = Field(
        0.2, gt=0, lt=1, description="Training: share held out (by prompt hash) to choose maps."
    )
    seed: int = Field(0, description="Training: salt of the validation split.")


@dataclass
class FitResult:
    """What ``fit`` returns: the state to save and metrics measured while training."""

    state: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)


class TrainableStrategy(Strategy):
    Options: ClassVar[type[StrategyOptions]] = TrainableOptions
    knob: ClassVar[str | None] = None
    """The option swept for the cost–quality curve (None: one operating point)."""

    def __init__(
        self,
        experts: Sequence[ExpertConfig],
        options: StrategyOptions | dict[str, Any] | None = None,
        *,
        artifacts_dir: Path | None = None,
    ) -> None:
        super().__init__(experts, options, artifacts_dir=artifacts_dir)
        self.artifact: Artifact | None = None
        self.models: list[str] = []
        self.expert_of: list[str | None] = []
        self.served: np.ndarray = np.zeros(0, dtype=np.int64)

    # -- training ------------------------------------------------------------------------------

    @classmethod
    @abstractmethod
    def fit(cls, data: RoutingDataset, options: StrategyOptions) -> FitResult:
        """Learn routing state from recorded outcomes. ``data`` is the training split only;
        anything chosen on validation data is carved from it (``options.valid_fraction``)."""

    @classmethod
    def knob_values(cls, state: dict[str, Any]) -> list[float]:
        """The values of :attr:`knob` swept by ``orchestrator eval``."""
        return []

    @classmethod
    def eval_variants(cls, options: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Named option overrides that ``orchestrator eval`` also measures on test, at the
        chosen knob, as descriptions (never used to choose anything). None by default."""
        return {}

    @classmethod
    def train(
        cls,
        data: RoutingDataset,
        options: StrategyOptions | dict[str, Any] | None = None,
        store: ArtifactStore | None = None,
    ) -> Artifact:
        """Fit on ``data`` and return the artifact: saved as a new version in ``store``, or
        kept in memory (version 'unsaved') without one."""
        opts = (
            options
            if isinstance(options, StrategyOptions)
            else cls.Options.model_validate(options or {})
        )
        result = cls.fit(data, opts)
        result.state.setdefault("models", list(data.models))
        dumped = opts.model_dump(mode="json")
        extra = {"models": list(result.state["models"]), "knob": cls.knob}
        if store is not None:
            return store.save(
                cls.name,
                result.state,
                options=dumped,
                dataset=data.describe(),
                metrics=result.metrics,
                extra=extra,
            )
        meta = describe(cls.name, "unsaved", dumped, data.describe(), result.metrics, extra)
        return Artifact(cls.name, "unsaved", meta, result.state)

    # -- serving -------------------------------------------------------------------------------

    def setup(self) -> None:
        if self.artifact is not None:
            return
        opts: TrainableOptions = self.options  # type: ignore[assignment]
        store = ArtifactStore(self.artifacts_dir or Path("artifacts"))
        self.use_artifact(store.load(self.name, opts.artifact))

    def use_artifact(self, artifact: Artifact) -> None:
        """Serve ``artifact``: map its recorded models to experts, then :meth:`load_state`."""
        if artifact.strategy != self.name:
            raise ConfigError(
                f"strategy '{self.name}' cannot serve a '{artifact.strategy}' artifact"
            )
        self.models = list(artifact.state["models"])
        self.expert_of = [self._expert_for(m) for m in self.models]
        self.served = np.array([j for j, e in enumerate(self.expert_of) if e], dtype=np.int64)
        if len(self.served) == 0:
            raise ConfigError(
                f"strategy '{self.name}': none of the artifact's recorded models "
                f"({', '.join(self.models)}) maps to an expert of the pool "
                f"({', '.join(self.expert_names())}); set the experts' engine.model, or map "
                f"them in routing.strategies.{self.name}.experts"
            )
        self.load_state(artifact.state)
        self.artifact = artifact

    @abstractmethod
    def load_state(self, state: dict[str, Any]) -> None:
        """Prepare routing from a trained state (called after the model→expert map is set)."""

    @property
    def version(self) -> str | None:
        return self.artifact.version if self.artifact is not None else None

    def ensure_ready(self) -> None:
        if self.artifact is None:
            self.setup()

    def _expert_for(self, model: str) -> str | None:
        opts: TrainableOptions = self.options  # type: ignore[assignment]
        names = set(self.expert_names())
        mapped = opts.experts.get(model)
        if mapped is not None:
            if mapped not in names:
                raise ConfigError(
                    f"routing.strategies.{self.name}.experts maps '{model}' to '{mapped}', "
                    f"which is no expert; valid: {', '.join(sorted(names))}"
                )
            return mapped
        for e in self.experts:
            if e.engine.get("model") == model:
                return e.name
        for e in self.experts:
            if model in (e.model, e.name):
                return e.name
        return None

    def model_for(self, name: str) -> int | None:
        """The recorded-model index of an expert or recorded-model name, if it is served."""
        for j in self.served.tolist():
            if name in (self.models[j], self.expert_of[j]):
                return int(j)
        return None

    # -- helpers for subclasses ----------------------------------------------------------------

    def embedder(self) -> Embedder:
        opts: TrainableOptions = self.options  # type: ignore[assignment]
        return get_embedder(opts.embedding_model)

    def decision(
        self,
        order: Sequence[int],
        scores: Sequence[float] | np.ndarray,
        reason: str,
        details: dict[str, object] | None = None,
    ) -> Decision:
        """A decision choosing ``order[0]`` (recorded-model indices, best first; unserved
        models are skipped) with candidate scores taken from ``scores`` (by model index)."""
        candidates = tuple(
            Candidate(e, float(scores[j])) for j in order if (e := self.expert_of[j]) is not None
        )
        return Decision(
            strategy=self.name,
            experts=(candidates[0].expert,),
            candidates=candidates,
            reason=reason,
            version=self.version,
            details=details or {},
        )


def embed(texts: Sequence[str], embedding_model: str | None = None) -> np.ndarray:
    """Embeddings for training (the shared, cached embedder)."""
    return get_embedder(embedding_model).encode(list(texts))


def utility_order(
    quality: np.ndarray, cost: np.ndarray, cost_weight: float, cost_scale: float, served: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the served models best first by ``quality − cost_weight · cost / cost_scale``
    (ties: cheaper first), and the utilities. ``quality``/``cost``: (rows, models)."""
    utility = quality - cost_weight * cost / max(cost_scale, 1e-12)
    u = utility[:, served]
    # lexsort sorts by the last key first: utility descending, then cost ascending
    order = (
        np.stack([served[np.lexsort((cost[r, served], -u[r]))] for r in range(u.shape[0])])
        if u.shape[0]
        else np.zeros((0, len(served)), dtype=np.int64)
    )
    return order, utility


def pick_fallback(quality: np.ndarray, cost: np.ndarray) -> int:
    """The most accurate model (cheaper on ties): the default strong fallback."""
    return int(np.lexsort((cost, -quality))[0])


COST_WEIGHTS: tuple[float, ...] = (0.0, *np.round(np.logspace(-3, 2, 26), 6).tolist())
"""Cost-weight grid swept by eval for utility-based strategies (CoE, kNN)."""
