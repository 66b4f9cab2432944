"""``symbolic-moe``: Symbolic Mixture-of-Experts — recruit k experts by the skills a query needs,
let each answer, and have an aggregator expert synthesize the final answer.

After Chen et al., *Symbolic Mixture-of-Experts: Adaptive Skill-based Routing for
Heterogeneous Reasoning* (2025). Per query:

1. **Skills** (:mod:`routers.skills`): weighted skills of a vocabulary, by MiniLM embedding
   match (``skill_method: embedding``) or by a small LLM listing keywords that are snapped to
   the vocabulary (``skill_method: llm``, SmolLM2 in-process by default). Cached per query.
2. **Relevance** of each expert = its competence on those skills, weighted by skill weight.
   A model's *competence on a skill* is its mean recorded score on the training prompts that
   carry the skill (weighted by how strongly they carry it), smoothed toward the model's
   *global competence* (its overall mean score) with ``prior_rows`` pseudo-rows — so a rare
   skill falls back to the global prior. (The paper adds +1/−1 per correct/wrong answer; the
   smoothed mean is the same signal, 2·accuracy − 1, without favouring frequent skills.)
   Relevance is thus a predicted accuracy of each expert on this query.
3. **Recruiting**: the relevance distribution is softmax(relevance / ``temperature``) over the
   served experts; ``k`` experts are taken best first (``selection: topk``) or by seeded
   sampling without replacement from the distribution (``selection: sample``, as the paper;
   the seed is ``seed`` + the query text, so a query always recruits the same experts).
   **Adaptive k** (``adaptive``): the fewest experts, between ``min_k`` and ``k``, whose
   relevance mass reaches ``mass`` — one expert when it clearly dominates, more when the
   router is unsure. ``mass`` is the knob ``orchestrator eval`` sweeps (0 = always ``min_k``,
   1 = always ``k``).
4. **Aggregator**: one expert for every query (the paper's aggregator is chosen per task, not
   per instance), chosen by its *aggregation profile* on validation data carved from the
   training split: recruit experts for each validation prompt with profiles fitted on the
   rest; on the prompts where the recruited experts *disagree* (some scored well, some not),
   the aggregation ability of a model is its own mean score there — a model that solves the
   contested questions itself can tell which of the offered answers is right. Highest ability
   wins (cheaper on ties); ``aggregator`` overrides. A single recruited expert needs no
   aggregator (``Decision.aggregator`` is then None).

The pipeline calls each recruited expert, then the aggregator with
:func:`orchestrator.aggregate.synthesis_query`; ``orchestrator batch`` groups the recruited
experts' calls by expert in one round and the aggregator's calls in the next.

Without a trained artifact (``profiles: experts``, or ``auto`` when none is saved), profiles
come from the experts' declared ``skills`` and ``categories``: competence 1 on a declared
skill, 0 elsewhere, and a flat global prior; the aggregator is ``aggregator`` or the expert
declaring the most skills (pool order on ties).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from orchestrator.config import ExpertConfig
from orchestrator.errors import ConfigError
from orchestrator.evaluation.datasets import RoutingDataset, hash_unit
from orchestrator.types import Candidate, Decision, Query
from routers.base import StrategyOptions
from routers.skills import (
    EmbeddingSkills,
    LLMSkills,
    SkillInference,
    SkillLLM,
    Skills,
    SkillVocabulary,
    backend_llm,
    build_vocabulary,
    category_name,
    declared_vocabulary,
    skill_llm_expert,
)
from routers.trainable import FitResult, TrainableOptions, TrainableStrategy, embed

log = logging.getLogger(__name__)

MASS_VALUES: tuple[float, ...] = (0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
"""Relevance-mass grid swept by ``orchestrator eval`` (0: always min_k; 1: always k)."""


class SymbolicMoEOptions(TrainableOptions):
    k: int = Field(3, ge=1, description="Experts recruited per query (the most, when adaptive).")
    min_k: int = Field(1, ge=1, description="Adaptive k: the fewest experts recruited.")
    adaptive: bool = Field(
        True, description="Recruit the fewest experts (min_k..k) covering `mass` of relevance."
    )
    mass: float = Field(
        0.8, ge=0, le=1, description="Adaptive k: relevance mass the recruited experts cover."
    )
    selection: Literal["topk", "sample"] = Field(
        "topk", description="Most relevant first, or seeded sampling from the relevance softmax."
    )
    temperature: float = Field(
        0.05, gt=0, description="Softmax temperature of the relevance distribution."
    )
    profiles: Literal["auto", "artifact", "experts"] = Field(
        "auto",
        description="Model profiles from a trained artifact, from the experts' declared "
        "skills, or auto: the artifact when one is saved, else the declared skills.",
    )
    skill_method: Literal["embedding", "llm"] = Field(
        "embedding", description="Skill inference: MiniLM match, or a small LLM's keywords."
    )
    skill_llm: str = Field(
        "smollm2",
        description="skill_method llm: an expert of the pool, or a model for the transformers "
        "backend (a local folder or 'smollm2'), run in this process.",
    )
    skills_per_query: int = Field(5, ge=1, description="At most this many skills per query.")
    min_similarity: float = Field(
        0.2, ge=-1, le=1, description="Embedding method: least cosine for a skill to count."
    )
    aggregator: str | None = Field(
        None, description="Aggregator expert (or recorded model); default: the profiled one."
    )
    cache_size: int = Field(50_000, ge=0, description="Queries whose skills are cached.")
    max_keywords: int = Field(
        200, ge=0, description="Training: keywords mined from prompts for the vocabulary."
    )
    min_df: int = Field(5, ge=1, description="Training: prompts a keyword must occur in.")
    prior_rows: float = Field(
        10.0, ge=0, description="Training: pseudo-rows smoothing skill competence to global."
    )

    @model_validator(mode="after")
    def _k_range(self) -> SymbolicMoEOptions:
        if self.min_k > self.k:
            raise ValueError(f"min_k ({self.min_k}) must not exceed k ({self.k})")
        return self


# -- profiles --------------------------------------------------------------------------------


def skill_matrix(skills: Sequence[Skills], n_skills: int) -> np.ndarray:
    """Rows × skills weights (dense: vocabularies are a few hundred skills)."""
    w = np.zeros((len(skills), n_skills), dtype=np.float64)
    for i, row in enumerate(skills):
        for j, weight in row:
            w[i, j] = weight
    return w


def fit_profiles(
    weights: np.ndarray, scores: np.ndarray, prior_rows: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(competence skills × models, evidence per skill, global competence per model).

    competence[s, m] = (Σ_i w_is · score_im + prior_rows · global_m) / (Σ_i w_is + prior_rows)
    """
    s = np.nan_to_num(scores, nan=0.0)
    global_ = s.mean(axis=0) if len(s) else np.zeros(scores.shape[1])
    evidence = weights.sum(axis=0)
    numerator = weights.T @ s + prior_rows * global_[None, :]
    denominator = np.maximum(evidence + prior_rows, 1e-12)[:, None]
    competence = np.where(evidence[:, None] + prior_rows > 0, numerator / denominator, 0.0)
    return competence, evidence, global_


def relevance(weights: np.ndarray, competence: np.ndarray, global_: np.ndarray) -> np.ndarray:
    """Rows × models: skill-weighted competence (the global prior where a row has no skill)."""
    total = weights.sum(axis=1, keepdims=True)
    local = (weights @ competence) / np.maximum(total, 1e-12)
    return np.where(total > 0, local, global_[None, :])


def softmax(x: np.ndarray, temperature: float) -> np.ndarray:
    z = (x - x.max()) / temperature
    e = np.exp(z)
    return np.asarray(e / e.sum())


def adaptive_k(p_sorted: np.ndarray, mass: float, min_k: int, k: int) -> int:
    """The fewest experts (min_k..k) whose relevance mass, best first, reaches ``mass``."""
    k = min(k, len(p_sorted))
    need = int(np.searchsorted(np.cumsum(p_sorted), mass - 1e-9) + 1)
    return int(min(max(need, min_k), k))


def vote_weights(predicted_accuracy: np.ndarray) -> np.ndarray:
    """Vote weights of recruited experts, normalised to sum 1: log(a / (1 − a)) of each one's
    predicted accuracy a (its relevance) — the optimal weighted majority for independent voters
    (Nitzan & Paroush, 1982). An expert predicted no better than chance keeps a token weight."""
    a = np.clip(np.asarray(predicted_accuracy, dtype=np.float64), 0.01, 0.99)
    w = np.maximum(np.log(a / (1 - a)), 0.01)
    return np.asarray(w / w.sum())


def _query_seed(seed: int, text: str) -> list[int]:
    return [seed, int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")]


def recruit(
    rel: np.ndarray,
    served: np.ndarray,
    cost: np.ndarray,
    *,
    k: int,
    min_k: int,
    adaptive: bool,
    mass: float,
    selection: str,
    temperature: float,
    rng: np.random.Generator | None = None,
) -> tuple[list[int], np.ndarray, np.ndarray]:
    """(recruited model indices, ranking of served models best first, relevance
    probabilities over all models — 0 for unserved ones)."""
    p = np.zeros(len(rel))
    p[served] = softmax(rel[served], temperature)
    ranking = served[np.lexsort((cost[served], -rel[served]))]
    n = adaptive_k(p[ranking], mass, min_k, k) if adaptive else min(k, len(ranking))
    if selection == "sample" and n < len(ranking):
        rng = rng or np.random.default_rng(0)
        # Gumbel top-n: sampling n without replacement with probabilities p
        keys = np.log(np.maximum(p[ranking], 1e-300)) + rng.gumbel(size=len(ranking))
        picked = ranking[np.argsort(-keys, kind="stable")[:n]]
        order = {int(j): r for r, j in enumerate(ranking)}
        recruited = sorted((int(j) for j in picked), key=order.__getitem__)
    else:
        recruited = [int(j) for j in ranking[:n]]
    return recruited, ranking, p


def aggregation_profile(
    recruited: Sequence[Sequence[int]], scores: np.ndarray
) -> tuple[np.ndarray, int]:
    """Per model, its mean score on the rows whose recruited experts disagree; and how many
    such (contested) rows there were. Without any, the models' overall mean scores."""
    s = np.nan_to_num(scores, nan=0.0)
    contested = [i for i, r in enumerate(recruited) if len(r) > 1 and np.ptp(s[i, list(r)]) > 1e-9]
    if not contested:
        return s.mean(axis=0), 0
    return s[contested].mean(axis=0), len(contested)


# -- the strategy ----------------------------------------------------------------------------


class SymbolicMoEStrategy(TrainableStrategy):
    name = "symbolic-moe"
    Options = SymbolicMoEOptions
    knob: ClassVar[str | None] = "mass"

    def __init__(
        self,
        experts: Sequence[ExpertConfig],
        options: StrategyOptions | dict[str, Any] | None = None,
        *,
        artifacts_dir: Path | None = None,
    ) -> None:
        super().__init__(experts, options, artifacts_dir=artifacts_dir)
        self.profile_source: str | None = None
        self.inference: SkillInference | None = None
        self._skill_llm: SkillLLM | None = None
        self._setup_lock = threading.Lock()

    # -- training ------------------------------------------------------------------------------

    @classmethod
    def fit(cls, data: RoutingDataset, options: StrategyOptions) -> FitResult:
        opts: SymbolicMoEOptions = options  # type: ignore[assignment]
        from routers.embeddings import get_embedder

        embedder = get_embedder(opts.embedding_model)
        vocab = build_vocabulary(
            data.prompts,
            data.categories,
            embedder,
            max_keywords=opts.max_keywords,
            min_df=opts.min_df,
        )
        matcher = EmbeddingSkills(
            vocab, embedder, top=opts.skills_per_query, min_similarity=opts.min_similarity
        )
        skills = matcher.from_vectors(embed(data.prompts, opts.embedding_model))
        weights = skill_matrix(skills, len(vocab))
        cost = data.costs.mean(axis=0)

        # Aggregation profile: recruit on a validation part with profiles fitted on the rest.
        # the same rule as datasets.split: by hash of the prompt's group key
        salt = f"symbolic-valid:{opts.seed}"
        is_valid = np.array(
            [hash_unit(data.group_key(i), salt) < opts.valid_fraction for i in range(len(data))],
            dtype=bool,
        )
        if is_valid.any() and (~is_valid).any():
            competence, _, global_ = fit_profiles(
                weights[~is_valid], data.scores[~is_valid], opts.prior_rows
            )
            rel = relevance(weights[is_valid], competence, global_)
            served = np.arange(len(data.models))
            recruited = [
                recruit(
                    r,
                    served,
                    cost,
                    k=max(opts.k, 2),
                    min_k=max(opts.k, 2),
                    adaptive=False,
                    mass=1.0,
                    selection="topk",
                    temperature=opts.temperature,
                )[0]
                for r in rel
            ]
            ability, contested = aggregation_profile(recruited, data.scores[is_valid])
            valid_rows = int(is_valid.sum())
        else:
            ability, contested = np.nan_to_num(data.scores, nan=0.0).mean(axis=0), 0
            valid_rows = 0
        aggregator = int(np.lexsort((cost, -ability))[0])

        competence, evidence, global_ = fit_profiles(weights, data.scores, opts.prior_rows)
        state = {
            "models": list(data.models),
            "vocabulary": vocab.as_state(),
            "competence": competence.astype(np.float32),
            "evidence": evidence.astype(np.float32),
            "global": global_,
            "cost": cost,
            "aggregator": aggregator,
            "aggregation_ability": ability,
            "contested_rows": contested,
            "skill_options": {
                "skills_per_query": opts.skills_per_query,
                "min_similarity": opts.min_similarity,
            },
        }
        kinds = vocab.kinds
        metrics = {
            "skills": len(vocab),
            "category_skills": kinds.count("category"),
            "keyword_skills": kinds.count("keyword"),
            "mean_skills_per_prompt": round(float(np.mean([len(s) for s in skills])), 2),
            "aggregator": data.models[aggregator],
            "aggregator_contested_accuracy": round(float(ability[aggregator]), 4),
            "contested_valid_rows": contested,
            "valid_rows": valid_rows,
        }
        return FitResult(state, metrics)

    @classmethod
    def knob_values(cls, state: dict[str, Any]) -> list[float]:
        return list(MASS_VALUES)

    @classmethod
    def eval_variants(cls, options: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Fixed k (1, 2, k: the effect of adaptive k) and sampled recruiting, for the report."""
        opts = SymbolicMoEOptions.model_validate(options)
        out: dict[str, dict[str, Any]] = {"fixed k=1": {"adaptive": False, "k": 1, "min_k": 1}}
        for k in sorted({2, opts.k}):
            if k > 1:
                out[f"fixed k={k}"] = {"adaptive": False, "k": k, "min_k": min(opts.min_k, k)}
        if opts.k > 1:
            out[f"fixed k={opts.k}, sampled"] = {"adaptive": False, "selection": "sample"}
            out["adaptive, sampled"] = {"adaptive": True, "selection": "sample"}
        return out

    # -- serving -------------------------------------------------------------------------------

    def set_skill_llm(self, llm: SkillLLM) -> None:
        """Inject the LLM that lists skills (``skill_method: llm``); by default one is built
        from ``skill_llm`` on first use."""
        self._skill_llm = llm
        if isinstance(self.inference, LLMSkills):
            self.inference.llm = llm

    def setup(self) -> None:
        with self._setup_lock:
            if self.profile_source is not None:
                return
            opts: SymbolicMoEOptions = self.options  # type: ignore[assignment]
            if opts.profiles == "experts":
                self._use_declared()
                return
            try:
                super().setup()
            except ConfigError as e:
                if opts.profiles == "auto" and any(x.skills for x in self.experts):
                    log.info("symbolic-moe: %s; using the experts' declared skills", e.message)
                    self._use_declared()
                    return
                raise

    def ensure_ready(self) -> None:
        if self.profile_source is None:
            self.setup()

    def load_state(self, state: dict[str, Any]) -> None:
        vocab = SkillVocabulary.from_state(state["vocabulary"])
        self._load(
            vocab,
            np.asarray(state["competence"], dtype=np.float64),
            np.asarray(state["global"], dtype=np.float64),
            np.asarray(state["cost"], dtype=np.float64),
        )
        self._ability = np.asarray(state["aggregation_ability"], dtype=np.float64)
        trained = int(state["aggregator"])
        self._aggregator = self._pick_aggregator(trained if trained in self.served else None)
        self.profile_source = "artifact"

    def _use_declared(self) -> None:
        """Profiles from the experts' declared skills and categories (no artifact)."""
        vocab = declared_vocabulary(self.experts, self.embedder())
        competence = np.zeros((len(vocab), len(self.experts)))
        for m, e in enumerate(self.experts):
            for s in [*e.skills, *e.categories]:
                name = category_name(s)
                if name in vocab.names:
                    competence[vocab.names.index(name), m] = 1.0
        self.models = self.expert_names()
        self.expert_of = list(self.models)
        self.served = np.arange(len(self.experts), dtype=np.int64)
        cost = np.array([e.price.input_per_1m + e.price.output_per_1m for e in self.experts])
        self._load(vocab, competence, np.full(len(self.experts), 0.5), cost)
        self._ability = competence.sum(axis=0)
        most = int(np.argmax(self._ability))  # first expert with the most declared skills
        self._aggregator = self._pick_aggregator(most)
        self.profile_source = "experts"

    def _load(
        self, vocab: SkillVocabulary, competence: np.ndarray, global_: np.ndarray, cost: np.ndarray
    ) -> None:
        opts: SymbolicMoEOptions = self.options  # type: ignore[assignment]
        self._vocab = vocab
        self._competence = competence
        self._global = global_
        self._cost = cost
        embedder = self.embedder()
        matcher = EmbeddingSkills(
            vocab,
            embedder,
            top=opts.skills_per_query,
            min_similarity=opts.min_similarity,
            cache_size=opts.cache_size,
        )
        if opts.skill_method == "llm":
            self.inference = LLMSkills(
                vocab,
                embedder,
                self._skill_llm or self._lazy_llm,
                fallback=matcher,
                top=opts.skills_per_query,
                cache_size=opts.cache_size,
            )
        else:
            self.inference = matcher

    def _lazy_llm(self, prompts: Sequence[str]) -> list[str]:
        if self._skill_llm is None:
            opts: SymbolicMoEOptions = self.options  # type: ignore[assignment]
            self._skill_llm = backend_llm(skill_llm_expert(opts.skill_llm, self.experts))
        return self._skill_llm(prompts)

    def _pick_aggregator(self, default: int | None) -> int:
        opts: SymbolicMoEOptions = self.options  # type: ignore[assignment]
        if opts.aggregator is not None:
            j = self.model_for(opts.aggregator)
            if j is None:
                raise ConfigError(
                    f"routing.strategies.symbolic-moe.aggregator: '{opts.aggregator}' is "
                    f"neither a served expert nor a recorded model ({', '.join(self.models)})"
                )
            return j
        if default is not None:
            return default
        served = self.served
        return int(served[np.lexsort((self._cost[served], -self._ability[served]))[0]])

    @property
    def aggregator(self) -> str:
        """The aggregator expert's name."""
        self.ensure_ready()
        name = self.expert_of[self._aggregator]
        assert name is not None
        return name

    def skills_of(self, queries: Sequence[Query]) -> list[list[tuple[str, float]]]:
        """The inferred (skill, weight) pairs of each query."""
        self.ensure_ready()
        assert self.inference is not None
        names = self._vocab.names
        return [
            [(names[j], round(w, 4)) for j, w in s]
            for s in self.inference.infer([q.text for q in queries])
        ]

    def route(self, queries: Sequence[Query]) -> list[Decision]:
        self.ensure_ready()
        assert self.inference is not None
        opts: SymbolicMoEOptions = self.options  # type: ignore[assignment]
        texts = [q.text for q in queries]
        skills = self.inference.infer(texts)
        rel = relevance(skill_matrix(skills, len(self._vocab)), self._competence, self._global)
        decisions = []
        for query, text, row, found in zip(queries, texts, rel, skills, strict=True):
            k = opts.k if query.options.k is None else max(1, min(opts.k, query.options.k))
            recruited, ranking, p = recruit(
                row,
                self.served,
                self._cost,
                k=k,
                min_k=min(opts.min_k, k),
                adaptive=opts.adaptive,
                mass=opts.mass,
                selection=opts.selection,
                temperature=opts.temperature,
                rng=np.random.default_rng(_query_seed(opts.seed, text)),
            )
            decisions.append(self._decision(text, row, p, recruited, ranking, found))
        return decisions

    def _decision(
        self,
        text: str,
        rel: np.ndarray,
        p: np.ndarray,
        recruited: list[int],
        ranking: np.ndarray,
        skills: Skills,
    ) -> Decision:
        opts: SymbolicMoEOptions = self.options  # type: ignore[assignment]
        names = [self.expert_of[j] or "" for j in recruited]
        order = recruited + [int(j) for j in ranking if int(j) not in recruited]
        candidates = tuple(
            Candidate(e, float(rel[j])) for j in order if (e := self.expert_of[j]) is not None
        )
        aggregator = self.expert_of[self._aggregator] if len(recruited) > 1 else None
        skill_names = [self._vocab.names[j] for j, _ in skills]
        weights = vote_weights(rel[recruited])
        details: dict[str, object] = {
            "skills": skill_names,
            "skill_method": self.inference.method if self.inference else opts.skill_method,
            "profiles": self.profile_source,
            "k": len(recruited),
            "recruited": {
                n: {
                    "relevance": round(float(rel[j]), 4),
                    "p": round(float(p[j]), 4),
                    "weight": round(float(w), 4),
                }
                for n, j, w in zip(names, recruited, weights, strict=True)
            },
            "adaptive": opts.adaptive,
            "mass": opts.mass,
            "selection": opts.selection,
        }
        if isinstance(self.inference, LLMSkills):
            details["keywords"] = self.inference.keywords_of(text)
        shown = ", ".join(skill_names[:3]) or "none"
        listed = ", ".join(f"{n} ({rel[j]:.2f})" for n, j in zip(names, recruited, strict=True))
        reason = f"skills {shown} → recruited {listed}"
        if aggregator is not None:
            reason += f"; aggregator {aggregator}"
        return Decision(
            strategy=self.name,
            experts=tuple(names),
            candidates=candidates,
            reason=reason,
            aggregator=aggregator,
            version=self.version,
            details=details,
        )
