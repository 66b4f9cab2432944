"""``mot``: Mixture of Thoughts served through the pipeline as ``router/mot``.

Serving splits MoT along the project's one-word-one-meaning line: a *strategy* picks, a
*backend* generates. The MoT model — frozen members, router and interaction layers — runs as
one expert of the pool with ``backend: mot`` (:mod:`workers.mot_backend`), because its single
pass needs every selected member's states inside one forward, which no per-expert backend
call can provide. This strategy is the model's routing face:

* every decision sends the query to that MoT expert (``Decision.experts``);
* it evaluates the *same* router from the *same* artifact (numpy, no torch here) and reports
  its choice — primary, peers, every member's probability — in the reason and ``details``;
* the candidates after the MoT expert are the members that are also experts of the pool,
  primary first, so if the MoT expert fails the pipeline falls back to the primary alone.

The backend recomputes the selection from the query text with the same weights (both are
deterministic), so the trace and the generation agree as long as both load one artifact:
:meth:`MoTStrategy.load_state` checks that the MoT expert's artifact is the strategy's and
fails at setup, naming both, when they differ.

Training (:meth:`MoTStrategy.fit`, i.e. ``orchestrator train mot``) lives in
:mod:`routers.mot.training`; options are :class:`routers.mot.options.MoTOptions`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from orchestrator.config import ExpertConfig
from orchestrator.errors import ConfigError
from orchestrator.evaluation.datasets import RoutingDataset
from orchestrator.types import Candidate, Decision, Query
from routers.artifacts import Artifact, ArtifactStore
from routers.base import StrategyOptions
from routers.embeddings import get_embedder
from routers.mot.options import MoTOptions
from routers.mot.router import router_logits, select
from routers.trainable import FitResult, TrainableStrategy

DEFAULT_ARTIFACTS_DIR = "artifacts"


class MoTStrategy(TrainableStrategy):
    name = "mot"
    Options: ClassVar[type[StrategyOptions]] = MoTOptions
    knob = None

    def __init__(
        self,
        experts: Sequence[ExpertConfig],
        options: StrategyOptions | dict[str, Any] | None = None,
        *,
        artifacts_dir: Path | None = None,
    ) -> None:
        super().__init__(experts, options, artifacts_dir=artifacts_dir)
        self.network: dict[str, np.ndarray] = {}
        self.members: list[str] = []
        self.leaders: list[int] = []
        self.k = 1
        self.embedding_model: str | None = None
        self.mot_expert = ""

    # -- training -------------------------------------------------------------------------------

    @classmethod
    def fit(cls, data: RoutingDataset, options: StrategyOptions) -> FitResult:
        """Train router + interaction layers on ``data``'s questions and answers (a held-out
        part is carved inside and reported in the metrics), with a progress bar."""
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        from routers.mot.training import fit_mot

        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=Console(stderr=True)) as bar:
            tasks: dict[str, Any] = {}

            def progress(phase: str, done: int, total: int) -> None:
                if phase not in tasks:
                    tasks[phase] = bar.add_task(phase, total=total)
                bar.update(tasks[phase], completed=done)

            state, metrics = fit_mot(data, options, progress)  # type: ignore[arg-type]
        return FitResult(state, metrics)

    # -- serving --------------------------------------------------------------------------------

    def use_artifact(self, artifact: Artifact) -> None:
        """Serve ``artifact``. Unlike recorded-outcome strategies, members need not be pool
        experts: those that are become fallback candidates."""
        if artifact.strategy != self.name or artifact.state.get("kind") != "mot":
            raise ConfigError(
                f"strategy 'mot' cannot serve a '{artifact.strategy}' artifact "
                f"({artifact.path or artifact.version})"
            )
        self.models = list(artifact.state["members"])
        self.expert_of = [self._member_expert(m) for m in self.models]
        self.served = np.array([j for j, e in enumerate(self.expert_of) if e], dtype=np.int64)
        self.artifact = artifact
        self.load_state(artifact.state)

    def _member_expert(self, member: str) -> str | None:
        for e in self.experts:
            if e.backend != "mot" and member in (e.model, e.name, e.engine.get("model")):
                return e.name
        return None

    def load_state(self, state: dict[str, Any]) -> None:
        self.network = state["network"]
        self.members = list(state["members"])
        self.leaders = [i for i, g in enumerate(state["generative"]) if g]
        self.k = int(state["k"])
        self.embedding_model = state.get("embedding_model")
        self.mot_expert = self._find_mot_expert()
        self._check_expert_artifact()

    def _find_mot_expert(self) -> str:
        opts = self.options
        wanted = getattr(opts, "expert", None)
        mots = [e for e in self.experts if e.backend == "mot"]
        if wanted is not None:
            if not any(e.name == wanted for e in mots):
                raise ConfigError(
                    f"routing.strategies.mot.expert: '{wanted}' is no expert with backend 'mot'; "
                    f"those are: {', '.join(e.name for e in mots) or 'none'}"
                )
            return str(wanted)
        if len(mots) != 1:
            raise ConfigError(
                "strategy 'mot' needs exactly one expert with backend: mot (the model that runs "
                f"the mixture), found {len(mots)}; add one, e.g. {{name: mot, backend: mot, "
                "model: latest}, or name it in routing.strategies.mot.expert (`orchestrator "
                "train mot` needs --no-evaluate: a MoT is evaluated by its held-out loss while it "
                "trains, not by replaying recorded outcomes)"
            )
        return mots[0].name

    def _check_expert_artifact(self) -> None:
        """The MoT expert must serve the artifact this strategy routes with."""
        if self.artifact is None or self.artifact.path is None:
            return
        expert = next(e for e in self.experts if e.name == self.mot_expert)
        root = expert.engine.get("artifacts_dir", DEFAULT_ARTIFACTS_DIR)
        try:
            theirs = ArtifactStore(root).resolve(self.name, expert.model)
        except ConfigError as e:
            raise ConfigError(f"expert '{expert.name}' (backend mot): {e.message}") from None
        if theirs.resolve() != self.artifact.path.resolve():
            raise ConfigError(
                f"strategy 'mot' routes with {self.artifact.path} but expert '{expert.name}' "
                f"serves {theirs}; point routing.strategies.mot.artifact and the expert's model "
                "(and engine.artifacts_dir) at the same version"
            )

    def route(self, queries: Sequence[Query]) -> list[Decision]:
        self.ensure_ready()
        embeddings = get_embedder(self.embedding_model).encode([q.text for q in queries])
        logits = router_logits(self.network, embeddings)
        out = []
        for row in logits:
            s = select(row, self.leaders, self.k)
            members = s.experts
            fallback = [
                Candidate(e, s.probs[j])
                for j in (*members, *sorted(range(len(self.members)), key=lambda j: -s.probs[j]))
                if (e := self.expert_of[j]) is not None
            ]
            seen: set[str] = set()
            candidates = [Candidate(self.mot_expert, sum(s.probs[j] for j in members))]
            for c in fallback:
                if c.expert not in seen:
                    seen.add(c.expert)
                    candidates.append(c)
            peers = ", ".join(
                f"{self.members[j]} (w {w:.2f})"
                for j, w in zip(s.peers, s.peer_weights, strict=True)
            )
            out.append(
                Decision(
                    strategy=self.name,
                    experts=(self.mot_expert,),
                    candidates=tuple(candidates),
                    reason=f"MoT: primary {self.members[s.primary]} "
                    f"(p {s.probs[s.primary]:.2f})"
                    + (f" with peers {peers}" if peers else "")
                    + "; one pass with latent interaction",
                    version=self.version,
                    details={
                        "primary": self.members[s.primary],
                        "peers": [self.members[j] for j in s.peers],
                        "peer_weights": [round(w, 4) for w in s.peer_weights],
                        "probs": {
                            m: round(p, 4) for m, p in zip(self.members, s.probs, strict=True)
                        },
                        "k": self.k,
                    },
                )
            )
        return out
