"""``expertrag``: retrieval gated per query, coupled with expert routing (after ExpertRAG).

ExpertRAG (Gumaan, 2025, arXiv:2504.08744) treats two choices as latent decisions made per
query: whether to consult an external knowledge store, and which experts to use, so that
retrieval is paid for only when the parametric experts are unlikely to know the answer. This
strategy makes both decisions explicitly and puts both in the routing trace:

1. **Expert choice.** An inner strategy (``inner``: ``semantic`` by default, or ``coe`` or any
   registered one) routes the query as usual; its confidence in the chosen expert (the
   decision's ``details.confidence`` when it reports one, CoE's category probability; else the
   top candidate's score, ``semantic``'s cosine) and its margin over the runner-up are kept.
2. **Probe.** The query's MiniLM embedding is compared with every chunk of the knowledge store
   (:mod:`orchestrator.kb.store`: Redis-backed, an in-memory matrix per process): the top
   ``top_k`` cosines. This costs one GET (the index version) and a matrix product; no text is
   read and no prompt grows.
3. **Retrieval gate.** A trained classifier — scikit-learn ``LogisticRegression`` on
   standardised features [query embedding (384), best / mean / spread of the top-k cosines,
   expert confidence, expert margin] — estimates P(retrieval helps | query). At or above
   ``threshold`` (chosen when training: the best F1 of out-of-fold predictions) the gate
   opens: the passages scoring ≥ ``min_score`` are read from Redis and go to the expert as a
   system message of numbered passages ("[1] (title) text"; the expert is asked to cite them
   as [1]) through :attr:`~orchestrator.types.Decision.context`. Closed, nothing is read and
   the expert's prompt is unchanged. ``gate: always`` / ``never`` give the always-on RAG and
   the no-retrieval baselines.
4. **Coupling.** The gate sees the expert's confidence (a confident specialist needs no
   passages), and with ``retrieval_expert`` set, an opened gate hands the query to that expert
   (e.g. one with a long context) instead of the inner choice.

**Cost, per query** (``details.retrieval.cost``; the form of the paper's expected-cost
analysis, with this system's terms)::

    C_context   = context_tokens × price.input_per_1m / 1e6      (the passages as prompt tokens)
    C_retrieval = retrieval_cost_usd                             (a per-retrieval price; 0 for
                                                                  our own Redis)
    C_expert    = (prompt_tokens × input_per_1m + completion_tokens × output_per_1m) / 1e6
    E[C]        = P(retrieve) · (C_retrieval + C_context) + C_expert
    always-RAG  = C_retrieval + C_context + C_expert
    E[saved]    = always-RAG − E[C] = (1 − P(retrieve)) · (C_retrieval + C_context)
    saved       = C_retrieval + C_context if the gate closed, else 0   (realised)

Token counts are estimates (characters / 4); ``context_tokens`` of a closed gate is what the
passages it would have added measure. Prices are the routed expert's ``price``.

**What differs from the paper.** The paper's experts are feed-forward experts inside one
model, its gate a learned function trained with the model (end to end or by REINFORCE) and its
decisions latent variables marginalised over. Here the experts are whole LLMs chosen by an
inner strategy, the gate is a separate supervised classifier trained on queries labelled
"needs the knowledge store" / "does not" (``orchestrator kb train-gate``), and the decision is
hard (a threshold on P), so a closed gate really costs no retrieval. The paper's retriever is
unspecified; here it is dense MiniLM cosine over chunks. The paper's capacity analysis of
sparse top-k experts is out of scope (one expert answers).

Serving needs ``redis_url`` (the knowledge store) and a trained gate under
``artifacts_dir/expertrag/`` (``gate: trained``). With Redis down, routing through this
strategy answers 503 naming the knowledge store; other strategies keep serving.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field, model_validator

from orchestrator.config import ExpertConfig, OrchestratorConfig
from orchestrator.errors import ConfigError
from orchestrator.types import Candidate, Decision, Message, Query
from routers.artifacts import Artifact, ArtifactStore, describe
from routers.base import Strategy, StrategyOptions

if TYPE_CHECKING:
    from orchestrator.kb.store import Hit, IndexSnapshot, KnowledgeStore, Passage

log = logging.getLogger(__name__)

NAME = "expertrag"
CHARS_PER_TOKEN = 4.0
FEATURE_NAMES: tuple[str, ...] = (
    "best_score",
    "mean_top_k_score",
    "top_k_spread",
    "expert_confidence",
    "expert_margin",
)
"""The scalar gate features, after the query embedding."""

DEFAULT_INSTRUCTIONS = (
    "Use the numbered passages below to answer when they are relevant, and cite the passage "
    "you used like [1]. If they do not contain the answer, answer from what you know."
)


class ExpertRAGOptions(StrategyOptions):
    inner: str = Field(
        "semantic",
        description="The strategy that picks the expert (semantic, coe, or any registered one).",
    )
    inner_options: dict[str, Any] | None = Field(
        None,
        description="Options of the inner strategy; default routing.strategies.<inner>.",
    )
    gate: Literal["trained", "always", "never"] = Field(
        "trained",
        description="trained: the classifier decides; always: every query retrieves (standard "
        "RAG); never: none does (the inner strategy alone).",
    )
    artifact: str = Field(
        "latest",
        description="The trained gate: 'latest', a version under artifacts_dir/expertrag/, or "
        "a version folder (train one with `orchestrator kb train-gate`).",
    )
    threshold: float | None = Field(
        None, ge=0, le=1, description="P(retrieve) at which the gate opens; default: trained."
    )
    top_k: int = Field(3, ge=1, le=20, description="Passages probed and (gate open) added.")
    min_score: float = Field(
        0.0,
        ge=-1,
        le=1,
        description="Passages below this cosine never go into a prompt (0: the top_k, as "
        "standard RAG adds them).",
    )
    max_context_chars: int = Field(
        2000, ge=200, description="The passages message is cut to this many characters."
    )
    retrieval_expert: str | None = Field(
        None, description="An expert that answers whenever the gate opens (default: inner's)."
    )
    retrieval_cost_usd: float = Field(
        0.0, ge=0, description="C_retrieval: a price per retrieval (0 for our own Redis)."
    )
    completion_tokens: int = Field(
        128, ge=1, description="Expected completion tokens, for C_expert in the cost estimate."
    )
    instructions: str = Field(
        DEFAULT_INSTRUCTIONS, min_length=1, description="Heads the passages message."
    )

    @model_validator(mode="after")
    def _inner_known(self) -> ExpertRAGOptions:
        from routers import get_strategy_class, list_strategies

        if self.inner == NAME:
            raise ValueError("inner: expertrag cannot wrap itself; use semantic, coe, …")
        if self.inner not in list_strategies() and ":" not in self.inner:
            raise ValueError(
                f"inner: unknown strategy '{self.inner}'; valid: "
                f"{', '.join(s for s in list_strategies() if s != NAME)}"
            )
        if self.inner_options is not None:
            try:
                get_strategy_class(self.inner).Options.model_validate(self.inner_options)
            except Exception as e:
                raise ValueError(f"inner_options (for {self.inner}): {e}") from None
        return self


@dataclass
class RetrievalGate:
    """The trained gate: a scikit-learn pipeline over :func:`gate_features`, and the threshold."""

    model: Any
    threshold: float
    inner: str
    top_k: int
    embedder: str

    def probability(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict_proba(features)[:, 1], dtype=np.float64)

    def state(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "threshold": self.threshold,
            "inner": self.inner,
            "top_k": self.top_k,
            "embedder": self.embedder,
            "features": ["embedding", *FEATURE_NAMES],
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> RetrievalGate:
        return cls(
            state["model"],
            float(state["threshold"]),
            state["inner"],
            state["top_k"],
            state["embedder"],
        )


@dataclass
class Probe:
    """What the gate sees for one query (also what training records)."""

    decision: Decision
    vector: np.ndarray
    hits: list[Hit]
    scores: np.ndarray
    """Top-k cosines, best first, padded with 0 (an empty store probes all zeros)."""
    confidence: float
    margin: float
    index_version: int = 0
    index_chunks: int = 0
    timings_ms: dict[str, float] = field(default_factory=dict)


def gate_features(
    vectors: np.ndarray, scores: np.ndarray, confidence: np.ndarray, margin: np.ndarray
) -> np.ndarray:
    """Rows of [query embedding, best, mean and spread of the top-k cosines, expert confidence,
    expert margin] — the same at training and serving time."""
    scores = np.asarray(scores, dtype=np.float64).reshape(len(vectors), -1)
    scalars = np.stack(
        [
            scores[:, 0],
            scores.mean(axis=1),
            scores[:, 0] - scores[:, -1],
            np.asarray(confidence, dtype=np.float64),
            np.asarray(margin, dtype=np.float64),
        ],
        axis=1,
    )
    return np.hstack([np.asarray(vectors, dtype=np.float64), scalars])


def expert_confidence(decision: Decision) -> tuple[float, float]:
    """The inner strategy's confidence in its choice, and the margin over the runner-up."""
    scores = [c.score for c in decision.candidates]
    reported = decision.details.get("confidence")
    top = float(reported) if isinstance(reported, int | float) else (scores[0] if scores else 0.0)
    margin = scores[0] - scores[1] if len(scores) > 1 else 0.0
    return top, float(margin)


def context_message(
    passages: Sequence[Passage], instructions: str, max_chars: int
) -> Message | None:
    """The system message of numbered passages ("[n] (title) text"), at most ``max_chars``."""
    if not passages:
        return None
    lines = [instructions, ""]
    size = len(instructions) + 1
    for n, p in enumerate(passages, 1):
        text = p.text if not p.title or p.text.startswith(p.title) else f"({p.title}) {p.text}"
        line = f"[{n}] {text}"
        if size + len(line) + 1 > max_chars:
            line = line[: max(0, max_chars - size - 1)]
            if len(line) > 20:
                lines.append(line)
            break
        lines.append(line)
        size += len(line) + 1
    return Message("system", "\n".join(lines))


class ExpertRAGStrategy(Strategy):
    name = NAME
    Options = ExpertRAGOptions

    def __init__(
        self,
        experts: Sequence[ExpertConfig],
        options: StrategyOptions | dict[str, Any] | None = None,
        *,
        artifacts_dir: Path | None = None,
    ) -> None:
        super().__init__(experts, options, artifacts_dir=artifacts_dir)
        opts = self.opts
        if opts.retrieval_expert is not None and opts.retrieval_expert not in self.expert_names():
            raise ConfigError(
                f"routing.strategies.expertrag.retrieval_expert: '{opts.retrieval_expert}' is no "
                f"expert; valid: {', '.join(self.expert_names())}"
            )
        self._config: OrchestratorConfig | None = None
        self.knowledge: KnowledgeStore | None = None
        self.inner: Strategy | None = None
        self.gate: RetrievalGate | None = None
        self.artifact: Artifact | None = None

    @property
    def opts(self) -> ExpertRAGOptions:
        return self.options  # type: ignore[return-value]

    # -- lifecycle -------------------------------------------------------------------------------

    def bind(self, config: OrchestratorConfig) -> None:
        self._config = config

    def use_knowledge(self, knowledge: KnowledgeStore) -> None:
        """Search ``knowledge`` instead of the store :meth:`bind`'s config names (tests, eval)."""
        self.knowledge = knowledge

    def use_gate(self, gate: RetrievalGate | None, artifact: Artifact | None = None) -> None:
        """Serve ``gate`` (in memory, e.g. just trained) instead of loading an artifact."""
        self.gate = gate
        self.artifact = artifact

    def setup(self) -> None:
        opts = self.opts
        self._setup_services(need_knowledge=opts.gate != "never")
        if opts.gate == "trained" and self.gate is None:
            store = ArtifactStore(self.artifacts_dir or Path("artifacts"))
            try:
                artifact = store.load(NAME, opts.artifact)
            except ConfigError as e:
                raise ConfigError(
                    f"routing.strategies.expertrag: no retrieval gate to serve ({e.message}); "
                    "train one with `orchestrator kb train-gate QUESTIONS.jsonl`, or set "
                    "gate: always | never"
                ) from None
            self.use_gate(RetrievalGate.from_state(artifact.state), artifact)
        if self.gate is not None and self.gate.inner != opts.inner:
            raise ConfigError(
                f"routing.strategies.expertrag: the gate {self.version} was trained with inner "
                f"strategy '{self.gate.inner}', not '{opts.inner}' (its expert-confidence "
                "feature means something else); retrain with `orchestrator kb train-gate` or "
                f"set inner: {self.gate.inner}"
            )

    def _setup_services(self, *, need_knowledge: bool) -> None:
        """The knowledge store (from the bound config's redis_url) and the inner strategy."""
        if self.knowledge is None and need_knowledge:
            if self._config is None:
                raise ConfigError(
                    "expertrag needs the knowledge store: serve it from a config with redis_url, "
                    "or hand it one with use_knowledge()"
                )
            if self._config.redis_url is None:
                raise ConfigError(
                    "routing.strategies.expertrag: the knowledge store lives in Redis; set "
                    "redis_url (or ORCHESTRATOR_REDIS_URL)"
                )
            from orchestrator.kb.store import KnowledgeStore
            from orchestrator.store import RedisStore

            self.knowledge = KnowledgeStore(
                RedisStore(self._config.redis_url), self._config.knowledge
            )
        if self.inner is None:
            self.inner = self._build_inner()

    def _build_inner(self) -> Strategy:
        from routers import create_strategy

        opts = self.opts
        options = opts.inner_options
        if options is None and self._config is not None:
            options = dict(self._config.routing.strategies.get(opts.inner, {}))
        inner = create_strategy(
            opts.inner, self.experts, options or {}, artifacts_dir=self.artifacts_dir
        )
        if self._config is not None:
            inner.bind(self._config)
        inner.setup()
        return inner

    @property
    def version(self) -> str | None:
        return self.artifact.version if self.artifact is not None else None

    @property
    def threshold(self) -> float:
        if self.opts.threshold is not None:
            return self.opts.threshold
        return self.gate.threshold if self.gate is not None else 0.5

    # -- routing ---------------------------------------------------------------------------------

    def probe(self, queries: Sequence[Query]) -> list[Probe]:
        """Route with the inner strategy and probe the knowledge store (no passage text)."""
        if self.inner is None:
            self.setup()
        assert self.inner is not None
        t0 = time.perf_counter()
        decisions = self.inner.route(queries)
        t1 = time.perf_counter()
        k = self.gate.top_k if self.gate is not None else self.opts.top_k
        snap: IndexSnapshot | None = None
        if self.knowledge is not None and self.opts.gate != "never":
            snap = self.knowledge.snapshot()
            vectors = self.knowledge.embedder.encode([q.text for q in queries])
            hits = snap.search(vectors, k)
        else:
            vectors = np.zeros((len(queries), 0), np.float32)
            hits = [[] for _ in queries]
        t2 = time.perf_counter()
        timings = {"inner": _ms(t1 - t0), "probe": _ms(t2 - t1)}
        probes = []
        for d, v, h in zip(decisions, vectors, hits, strict=True):
            scores = np.zeros(k)
            scores[: len(h)] = [x.score for x in h]
            conf, margin = expert_confidence(d)
            probes.append(
                Probe(
                    d,
                    v,
                    h,
                    scores,
                    conf,
                    margin,
                    snap.version if snap else 0,
                    len(snap) if snap else 0,
                    timings,
                )
            )
        return probes

    @staticmethod
    def features(probes: Sequence[Probe]) -> np.ndarray:
        return gate_features(
            np.stack([p.vector for p in probes]),
            np.stack([p.scores for p in probes]),
            np.asarray([p.confidence for p in probes]),
            np.asarray([p.margin for p in probes]),
        )

    def route(self, queries: Sequence[Query]) -> list[Decision]:
        opts = self.opts
        probes = self.probe(queries)
        if opts.gate == "trained":
            assert self.gate is not None
            p_retrieve = self.gate.probability(self.features(probes))
        else:
            p_retrieve = np.full(len(probes), 1.0 if opts.gate == "always" else 0.0)
        threshold = self.threshold if opts.gate == "trained" else 0.5
        opened = [i for i, p in enumerate(p_retrieve.tolist()) if p >= threshold and probes[i].hits]
        # one Redis round trip for every opened query's passages
        wanted = {
            i: [h for h in probes[i].hits[: opts.top_k] if h.score >= opts.min_score]
            for i in opened
        }
        start = time.perf_counter()
        fetched: list[Passage] = []
        if self.knowledge is not None and any(wanted.values()):
            fetched = self.knowledge.passages([h for i in opened for h in wanted[i]])
        fetch_ms = _ms(time.perf_counter() - start)
        by_chunk = {p.chunk_id: p for p in fetched}
        decisions = []
        for i, (q, probe) in enumerate(zip(queries, probes, strict=True)):
            passages = [by_chunk[h.chunk_id] for h in wanted.get(i, []) if h.chunk_id in by_chunk]
            decisions.append(
                self._decide(
                    q,
                    probe,
                    float(p_retrieve[i]),
                    threshold,
                    i in wanted,
                    passages,
                    fetch_ms if i in wanted else 0.0,
                )
            )
        return decisions

    def _decide(
        self,
        query: Query,
        probe: Probe,
        p: float,
        threshold: float,
        opened: bool,
        passages: list[Passage],
        fetch_ms: float,
    ) -> Decision:
        opts = self.opts
        inner = probe.decision
        message = context_message(passages, opts.instructions, opts.max_context_chars)
        experts, candidates = inner.experts, inner.candidates
        if opened and message is not None and opts.retrieval_expert is not None:
            experts = (opts.retrieval_expert,)
            candidates = (
                Candidate(opts.retrieval_expert, max((c.score for c in candidates), default=1.0)),
                *(c for c in candidates if c.expert != opts.retrieval_expert),
            )
        expert = self._expert(experts[0])
        # what the passages cost (or would have): measured when fetched, else from chunk sizes
        if message is not None:
            context_chars = len(message.content)
        else:
            would = [h for h in probe.hits[: opts.top_k] if h.score >= opts.min_score]
            context_chars = (
                len(opts.instructions) + sum(h.chars + 12 for h in would) if would else 0
            )
        cost = _costs(expert, query, context_chars, p, message is not None, opts)
        best = float(probe.scores[0]) if len(probe.scores) else 0.0
        if message is not None:
            docs = ", ".join(dict.fromkeys(x.doc_id for x in passages))
            verdict = (
                f"retrieval on (P={p:.2f} ≥ {threshold:.2f}): {len(passages)} passages from {docs}"
            )
        elif opened:
            verdict = (
                f"retrieval on (P={p:.2f} ≥ {threshold:.2f}) but no passage scored ≥ "
                f"{opts.min_score} (best {best:.2f})"
            )
        elif opts.gate == "never":
            verdict = "retrieval off (gate: never)"
        else:
            verdict = f"retrieval off (P={p:.2f} < {threshold:.2f}; best passage {best:.2f})"
        retrieval: dict[str, object] = {
            "decision": "retrieve" if message is not None else "skip",
            "gate": opts.gate,
            "p_retrieve": round(p, 4),
            "threshold": round(threshold, 4),
            "best_score": round(best, 4),
            "top_k_scores": [round(float(s), 4) for s in probe.scores],
            "index_version": probe.index_version,
            "index_chunks": probe.index_chunks,
            "passages": [
                {
                    "ref": n,
                    "doc_id": x.doc_id,
                    "chunk_id": x.chunk_id,
                    "title": x.title,
                    "score": round(x.score, 4),
                }
                for n, x in enumerate(passages, 1)
            ],
            "cost": cost,
            "latency_ms": {**probe.timings_ms, "fetch": fetch_ms},
        }
        return Decision(
            strategy=self.name,
            experts=experts,
            candidates=candidates,
            reason=f"{verdict}; expert {', '.join(experts)} via {inner.strategy}: {inner.reason}",
            aggregator=inner.aggregator,
            version=self.version,
            details={
                "retrieval": retrieval,
                "expert": {
                    "strategy": inner.strategy,
                    "experts": list(inner.experts),
                    "reason": inner.reason,
                    "confidence": round(probe.confidence, 4),
                    "margin": round(probe.margin, 4),
                    "version": inner.version,
                    "details": _plain(inner.details),
                },
            },
            context=(*inner.context, message) if message is not None else inner.context,
        )

    def _expert(self, name: str) -> ExpertConfig:
        for e in self.experts:
            if e.name == name:
                return e
        raise KeyError(name)

    # -- training --------------------------------------------------------------------------------

    @classmethod
    def fit_gate(
        cls,
        features: np.ndarray,
        labels: np.ndarray,
        groups: Sequence[str],
        *,
        C: float = 0.5,
        seed: int = 0,
    ) -> tuple[Any, float, dict[str, Any]]:
        """Fit the gate's classifier; choose the threshold with the best F1 on out-of-fold
        probabilities (grouped folds: questions about one document never straddle a fold).

        Returns (model fitted on every row, threshold, metrics)."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import GroupKFold
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        y = np.asarray(labels, dtype=np.int64)
        if len(set(y.tolist())) < 2:
            raise ValueError("the gate needs both labels: questions that need retrieval and not")

        def model() -> Any:
            return make_pipeline(
                StandardScaler(),
                LogisticRegression(C=C, class_weight="balanced", max_iter=5000, random_state=seed),
            )

        oof = np.full(len(y), np.nan)
        n_groups = len(set(groups))
        if n_groups >= 3:
            folds = GroupKFold(n_splits=min(5, n_groups))
            for train, valid in folds.split(features, y, np.asarray(groups)):
                if len(set(y[train].tolist())) < 2:
                    continue
                oof[valid] = (
                    model().fit(features[train], y[train]).predict_proba(features[valid])[:, 1]
                )
        known = ~np.isnan(oof)
        threshold, f1 = best_f1_threshold(oof[known], y[known]) if known.any() else (0.5, 0.0)
        final = model().fit(features, y)
        prec, rec = precision_recall(oof[known] >= threshold, y[known])
        metrics = {
            "rows": len(y),
            "positives": int(y.sum()),
            "groups": n_groups,
            "threshold": round(threshold, 4),
            "oof_f1": round(f1, 4),
            "oof_precision": round(prec, 4),
            "oof_recall": round(rec, 4),
            "C": C,
        }
        return final, threshold, metrics

    def train_gate(
        self,
        questions: Sequence[str],
        labels: Sequence[bool],
        groups: Sequence[str],
        *,
        store: ArtifactStore | None = None,
        dataset: dict[str, Any] | None = None,
        C: float = 0.5,
        seed: int = 0,
    ) -> Artifact:
        """Train the gate on labelled questions (True: needs the knowledge store) against the
        store's current contents, serve it, and save it as a version when ``store`` is given."""
        self._setup_services(need_knowledge=True)
        if self.opts.gate != "trained" or self.knowledge is None:
            raise ConfigError("train_gate trains the gate of a strategy with gate: trained")
        queries = [Query(messages=(Message("user", q),)) for q in questions]
        probes = self.probe(queries)
        x = self.features(probes)
        model, threshold, metrics = self.fit_gate(
            x, np.asarray(labels, dtype=np.int64), groups, C=C, seed=seed
        )
        gate = RetrievalGate(
            model, threshold, self.opts.inner, len(probes[0].scores), self.knowledge.embedder.key
        )
        metrics["index_chunks"] = probes[0].index_chunks
        data = dataset or {
            "name": "labelled questions",
            "rows": len(questions),
            "fingerprint": _fingerprint(questions, labels),
        }
        options = self.opts.model_dump(mode="json")
        extra = {"inner": self.opts.inner}
        if store is not None:
            artifact = store.save(
                NAME, gate.state(), options=options, dataset=data, metrics=metrics, extra=extra
            )
        else:
            meta = describe(NAME, "unsaved", options, data, metrics, extra)
            artifact = Artifact(NAME, "unsaved", meta, gate.state())
        self.use_gate(gate, artifact)
        return artifact


def best_f1_threshold(p: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """The threshold on ``p`` with the best F1 for labels ``y`` (ties: the higher threshold,
    so fewer retrievals), placed halfway to the next lower score for a margin."""
    order = np.unique(p)[::-1]
    best_t, best_f1 = 0.5, -1.0
    for i, t in enumerate(order):
        prec, rec = precision_recall(p >= t, y)
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        if f1 > best_f1 + 1e-12:
            lower = order[i + 1] if i + 1 < len(order) else 0.0
            best_t, best_f1 = float((t + lower) / 2), f1
    return best_t, max(best_f1, 0.0)


def precision_recall(predicted: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    predicted = np.asarray(predicted, dtype=bool)
    truth = np.asarray(y, dtype=bool)
    tp = int((predicted & truth).sum())
    prec = tp / int(predicted.sum()) if predicted.any() else 0.0
    rec = tp / int(truth.sum()) if truth.any() else 0.0
    return prec, rec


def _costs(
    expert: ExpertConfig,
    query: Query,
    context_chars: int,
    p: float,
    retrieved: bool,
    opts: ExpertRAGOptions,
) -> dict[str, object]:
    price = expert.price
    context_tokens = round(context_chars / CHARS_PER_TOKEN)
    prompt_chars = sum(len(m.content) for m in query.messages) + len(expert.system_prompt or "")
    prompt_tokens = round(prompt_chars / CHARS_PER_TOKEN)
    c_context = price.cost_usd(context_tokens, 0)
    c_retrieval = opts.retrieval_cost_usd
    c_expert = price.cost_usd(prompt_tokens, opts.completion_tokens)
    always = c_retrieval + c_context + c_expert
    expected = p * (c_retrieval + c_context) + c_expert
    return {
        "p_retrieve": round(p, 4),
        "context_tokens": context_tokens,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": opts.completion_tokens,
        "c_retrieval_usd": c_retrieval,
        "c_context_usd": c_context,
        "c_expert_usd": c_expert,
        "expected_usd": expected,
        "always_retrieve_usd": always,
        "expected_saved_usd": always - expected,
        "cost_usd": c_expert + (c_retrieval + c_context if retrieved else 0.0),
        "saved_usd": 0.0 if retrieved else c_retrieval + c_context,
        "context_tokens_saved": 0 if retrieved else context_tokens,
        "formula": "E[C] = P(retrieve)·(C_retrieval + C_context) + C_expert",
    }


def _plain(value: Any) -> Any:
    """``value`` with numpy scalars turned into Python ones (the trace is JSON)."""
    return json.loads(
        json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o))
    )


def _fingerprint(questions: Sequence[str], labels: Sequence[bool]) -> str:
    from hashlib import sha256

    h = sha256()
    for q, y in zip(questions, labels, strict=True):
        h.update(f"{int(bool(y))}\t{q}\n".encode())
    return h.hexdigest()[:16]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)
