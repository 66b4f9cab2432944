"""Skill inference for Symbolic-MoE: which skills ("algebra", "molecular biology") a query needs.

A *skill vocabulary* is a list of skill names with two vectors each: the MiniLM embedding of
the name (``name_vectors``) and a *matching* vector (``vectors``). Built from training data
(:func:`build_vocabulary`) it holds the categories / task names and keywords mined from the
prompts (TF-IDF over the routed text of each prompt), and a skill's matching vector mixes its
name with the centroid of the training prompts that carry it, so that a query is matched to
the skills of the training prompts it resembles. Built from an expert pool
(:func:`declared_vocabulary`) it holds the experts' declared ``skills`` and ``categories``,
matched by name alone.

Two interchangeable methods map a query to weighted vocabulary skills:

* :class:`EmbeddingSkills` — the query's MiniLM embedding against every skill's matching vector;
  the ``top`` most similar skills above ``min_similarity`` (weight = cosine).
* :class:`LLMSkills` — a small LLM is asked to list the skills as keywords; each keyword is
  snapped to the vocabulary skill whose *name* is nearest (cosine ≥ ``min_similarity``). The
  LLM is any ``SkillLLM`` callable (prompts → completions); :func:`backend_llm` makes one from a
  worker backend in-process (the ``transformers`` backend on SmolLM2 by default). A query whose
  keywords snap to nothing falls back to the embedding method.

Both cache their answer per query text (:class:`SkillCache`), so a repeated query is neither
embedded nor sent to the LLM again.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from routers.embeddings import Embedder, routing_text

if TYPE_CHECKING:
    from orchestrator.config import ExpertConfig

SkillLLM = Callable[[Sequence[str]], list[str]]
"""Prompts in, one completion each out (in order). Blocking; called from a worker thread."""

Skills = tuple[tuple[int, float], ...]
"""Inferred skills of one query: (vocabulary index, weight > 0), strongest first."""

KEYWORD_PROMPT = (
    "List the skills or knowledge areas needed to answer the question below, as 1 to 5 short "
    "keywords (for example: algebra, molecular biology, python). Reply with the keywords only, "
    "separated by commas.\n\nQuestion: {question}"
)


@dataclass(frozen=True)
class SkillVocabulary:
    """Skill names with their name embeddings and matching vectors (unit rows)."""

    names: list[str]
    kinds: list[str]
    """Per skill: 'category', 'keyword' (mined from prompts) or 'declared' (an expert's)."""
    name_vectors: np.ndarray
    vectors: np.ndarray

    def __len__(self) -> int:
        return len(self.names)

    def as_state(self) -> dict[str, Any]:
        return {
            "names": list(self.names),
            "kinds": list(self.kinds),
            "name_vectors": self.name_vectors.astype(np.float32),
            "vectors": self.vectors.astype(np.float32),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> SkillVocabulary:
        return cls(
            list(state["names"]),
            list(state["kinds"]),
            np.asarray(state["name_vectors"], dtype=np.float32),
            np.asarray(state["vectors"], dtype=np.float32),
        )


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.asarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


def category_name(label: str) -> str:
    """A category label as a skill name: 'arc-challenge' → 'arc challenge'."""
    return " ".join(re.sub(r"[_\-:/]+", " ", label).split()).lower()


GENERIC_WORDS = frozenset(
    [
        "able",
        "best",
        "better",
        "came",
        "come",
        "comes",
        "did",
        "does",
        "doing",
        "different",
        "does",
        "done",
        "following",
        "given",
        "good",
        "got",
        "great",
        "just",
        "know",
        "like",
        "likely",
        "look",
        "make",
        "makes",
        "making",
        "many",
        "new",
        "person",
        "people",
        "really",
        "said",
        "say",
        "says",
        "small",
        "takes",
        "thing",
        "things",
        "think",
        "time",
        "times",
        "true",
        "use",
        "used",
        "uses",
        "using",
        "want",
        "wanted",
        "way",
        "went",
        "write",
    ]
)
"""Frequent words that name no skill (beyond scikit-learn's English stop words)."""


def _mostly_capitalized(term: str, texts: Sequence[str], share: float = 0.8) -> bool:
    """True for proper names: the term starts with a capital in ≥ ``share`` of occurrences."""
    pattern = re.compile(rf"\b{re.escape(term)}\b", re.IGNORECASE)
    found = [m.group(0) for t in texts for m in pattern.finditer(t)]
    return bool(found) and sum(f[0].isupper() for f in found) >= share * len(found)


def mine_keywords(texts: Sequence[str], max_keywords: int, min_df: int = 5) -> list[str]:
    """Distinctive words and word pairs of ``texts`` (TF-IDF, English stop words removed;
    terms in more than 10% of the texts are boilerplate, not skills), most weighty first."""
    if max_keywords <= 0 or not texts:
        return []
    from sklearn.feature_extraction.text import TfidfVectorizer

    min_df = max(1, min(min_df, len(texts) // 20 or 1))
    vectorizer = TfidfVectorizer(
        stop_words="english",
        ngram_range=(1, 2),
        min_df=min_df,
        max_df=0.1 if len(texts) >= 50 else 1.0,
        token_pattern=r"(?u)\b[a-zA-Z][a-zA-Z]{2,}\b",
        sublinear_tf=True,
        lowercase=True,
    )
    try:
        x = vectorizer.fit_transform(texts)
    except ValueError:  # no term survived the document-frequency limits
        return []
    weight = np.asarray(x.sum(axis=0)).ravel()
    terms = vectorizer.get_feature_names_out()
    order = np.argsort(-weight, kind="stable")
    chosen: list[str] = []
    for i in order:
        term = str(terms[i])
        # a pair adds nothing when one of its words is already a skill
        if " " in term and any(w in chosen for w in term.split()):
            continue
        if set(term.split()) & GENERIC_WORDS or _mostly_capitalized(term, texts):
            continue  # "given", "used"; "Monica", "Craig": words, not skills
        chosen.append(term)
        if len(chosen) >= max_keywords:
            break
    return chosen


def build_vocabulary(
    prompts: Sequence[str],
    categories: Sequence[str],
    embedder: Embedder,
    *,
    max_keywords: int = 200,
    min_df: int = 5,
    name_weight: float = 0.5,
) -> SkillVocabulary:
    """A vocabulary from training data: every category, plus keywords mined from the prompts.

    A skill's matching vector = unit(unit(centroid of its prompts) + ``name_weight`` × name
    embedding): the prompts that carry a skill say more about what it looks like in a query
    than its one or two words do.
    """
    texts = [routing_text(p) for p in prompts]
    prompt_vectors = embedder.encode(list(prompts))
    names: list[str] = []
    kinds: list[str] = []
    members: list[np.ndarray] = []
    labels = np.asarray(categories)
    for label in sorted(set(categories)):
        names.append(category_name(label))
        kinds.append("category")
        members.append(np.flatnonzero(labels == label))
    lowered = [t.lower() for t in texts]
    for term in mine_keywords(texts, max_keywords, min_df):
        if term in names:
            continue
        pattern = re.compile(rf"\b{re.escape(term)}\b")
        rows = np.array([i for i, t in enumerate(lowered) if pattern.search(t)], dtype=np.int64)
        if len(rows) == 0:
            continue
        names.append(term)
        kinds.append("keyword")
        members.append(rows)
    name_vectors = embedder.encode(names) if names else np.zeros((0, prompt_vectors.shape[1]))
    centroids = np.stack([prompt_vectors[rows].mean(axis=0) for rows in members])
    vectors = _unit(_unit(centroids) + name_weight * name_vectors)
    return SkillVocabulary(names, kinds, _unit(name_vectors), vectors)


def declared_vocabulary(experts: Sequence[ExpertConfig], embedder: Embedder) -> SkillVocabulary:
    """A vocabulary of the skills and categories the experts declare (no training data)."""
    names: list[str] = []
    for e in experts:
        for s in [*e.skills, *e.categories]:
            name = category_name(s)
            if name and name not in names:
                names.append(name)
    if not names:
        from orchestrator.errors import ConfigError

        raise ConfigError(
            "symbolic-moe without a trained artifact needs experts that declare `skills`; "
            "none does. Train one (`orchestrator train symbolic-moe --dataset ...`) or add "
            "skills to the experts"
        )
    vectors = _unit(embedder.encode(names))
    return SkillVocabulary(names, ["declared"] * len(names), vectors, vectors)


def top_skills(sims: np.ndarray, top: int, min_similarity: float) -> Skills:
    """The ``top`` most similar skills with similarity ≥ ``min_similarity`` (at least one)."""
    if sims.size == 0:
        return ()
    order = np.argsort(-sims, kind="stable")[: max(1, top)]
    picked = [(int(i), float(sims[i])) for i in order if sims[i] >= min_similarity]
    if not picked:
        i = int(order[0])
        picked = [(i, max(float(sims[i]), 1e-6))]
    return tuple(picked)


class SkillCache:
    """Inferred skills per query text (LRU, thread-safe)."""

    def __init__(self, size: int = 50_000) -> None:
        self.size = size
        self._data: OrderedDict[str, Skills] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, text: str) -> Skills | None:
        with self._lock:
            value = self._data.get(text)
            if value is None:
                self.misses += 1
                return None
            self.hits += 1
            self._data.move_to_end(text)
            return value

    def put(self, text: str, skills: Skills) -> None:
        with self._lock:
            self._data[text] = skills
            self._data.move_to_end(text)
            while len(self._data) > self.size:
                self._data.popitem(last=False)


class SkillInference:
    """Maps queries to weighted vocabulary skills, with a per-query cache."""

    method: str = "embedding"

    def __init__(self, vocabulary: SkillVocabulary, embedder: Embedder, cache_size: int) -> None:
        self.vocabulary = vocabulary
        self.embedder = embedder
        self.cache = SkillCache(cache_size)

    def infer(self, texts: Sequence[str]) -> list[Skills]:
        found: dict[str, Skills] = {}
        for t in texts:
            hit = self.cache.get(t)
            if hit is not None:
                found[t] = hit
        missing = list(dict.fromkeys(t for t in texts if t not in found))
        if missing:
            for t, skills in zip(missing, self._infer(missing), strict=True):
                self.cache.put(t, skills)
                found[t] = skills
        return [found[t] for t in texts]

    def _infer(self, texts: list[str]) -> list[Skills]:
        raise NotImplementedError


class EmbeddingSkills(SkillInference):
    """The query's embedding against every skill's matching vector."""

    method = "embedding"

    def __init__(
        self,
        vocabulary: SkillVocabulary,
        embedder: Embedder,
        *,
        top: int = 5,
        min_similarity: float = 0.2,
        cache_size: int = 50_000,
    ) -> None:
        super().__init__(vocabulary, embedder, cache_size)
        self.top = top
        self.min_similarity = min_similarity

    def from_vectors(self, query_vectors: np.ndarray) -> list[Skills]:
        """Skills of already-embedded queries (training uses this on cached embeddings)."""
        sims = query_vectors @ self.vocabulary.vectors.T
        return [top_skills(row, self.top, self.min_similarity) for row in np.asarray(sims)]

    def _infer(self, texts: list[str]) -> list[Skills]:
        return self.from_vectors(self.embedder.encode(texts))


def parse_keywords(text: str, limit: int = 5) -> list[str]:
    """Keywords from an LLM's reply: split on commas, semicolons and lines; bullets, numbers,
    quotes and trailing periods removed; at most four words each; no repeats."""
    out: list[str] = []
    for part in re.split(r"[,;\n]|\band\b", text):
        word = re.sub(r"^[\s\-*•\d.)(:]+", "", part).strip().strip("\"'`.").strip().lower()
        word = re.sub(r"^(keywords?|skills?)\s*:\s*", "", word)
        if not word or len(word.split()) > 4 or len(word) > 48 or word in out:
            continue
        out.append(word)
        if len(out) >= limit:
            break
    return out


class LLMSkills(SkillInference):
    """A small LLM lists the skills; its keywords are snapped to the vocabulary by name."""

    method = "llm"

    def __init__(
        self,
        vocabulary: SkillVocabulary,
        embedder: Embedder,
        llm: SkillLLM,
        *,
        fallback: EmbeddingSkills,
        top: int = 5,
        min_similarity: float = 0.35,
        cache_size: int = 50_000,
    ) -> None:
        super().__init__(vocabulary, embedder, cache_size)
        self.llm = llm
        self.fallback = fallback
        self.top = top
        self.min_similarity = min_similarity
        self.keywords: OrderedDict[str, list[str]] = OrderedDict()
        """The LLM's raw keywords of recent queries (for the decision's details)."""
        self._lock = threading.Lock()

    def _infer(self, texts: list[str]) -> list[Skills]:
        replies = self.llm([KEYWORD_PROMPT.format(question=routing_text(t)) for t in texts])
        if len(replies) != len(texts):
            raise RuntimeError(f"the skill LLM returned {len(replies)} replies for {len(texts)}")
        keywords = [parse_keywords(r, self.top) for r in replies]
        flat = sorted({k for ks in keywords for k in ks})
        sims = (
            self.embedder.encode(flat) @ self.vocabulary.name_vectors.T
            if flat
            else np.zeros((0, len(self.vocabulary)))
        )
        row = {k: i for i, k in enumerate(flat)}
        out: list[Skills] = []
        unmatched: list[int] = []
        for n, (text, ks) in enumerate(zip(texts, keywords, strict=True)):
            with self._lock:
                self.keywords[text] = ks
                while len(self.keywords) > 1000:
                    self.keywords.popitem(last=False)
            best: dict[int, float] = {}
            for k in ks:
                s = sims[row[k]]
                j = int(np.argmax(s))
                if s[j] >= self.min_similarity:
                    best[j] = max(best.get(j, 0.0), float(s[j]))
            if best:
                ranked = sorted(best.items(), key=lambda p: -p[1])[: self.top]
                out.append(tuple(ranked))
            else:
                out.append(())
                unmatched.append(n)
        if unmatched:
            fallback = self.fallback.infer([texts[n] for n in unmatched])
            for n, skills in zip(unmatched, fallback, strict=True):
                out[n] = skills
        return out

    def keywords_of(self, text: str) -> list[str] | None:
        with self._lock:
            return self.keywords.get(text)


def backend_llm(expert: ExpertConfig, *, max_tokens: int = 24) -> SkillLLM:
    """A :data:`SkillLLM` that runs ``expert``'s worker backend in this process.

    The backend is created and loaded on first use, on a private thread with its own event
    loop (so the callable works from any thread, inside a running event loop or not). Greedy
    decoding, ``max_tokens`` new tokens; the expert's system prompt is not used.
    """
    from orchestrator.types import GenerationRequest, Message, SamplingParams
    from workers import create_backend

    backend = create_backend(expert.model_copy(update={"system_prompt": None}))
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"skill-llm-{expert.name}")
    sampling = SamplingParams(max_tokens=max_tokens, temperature=0.0)

    def run(prompts: Sequence[str]) -> list[str]:
        requests = [GenerationRequest((Message("user", p),), sampling) for p in prompts]

        async def go() -> list[str]:
            if not backend.loaded:
                await backend.load()
            return [g.text for g in await backend.generate(requests)]

        return executor.submit(asyncio.run, go()).result()

    return run


def skill_llm_expert(source: str, experts: Sequence[ExpertConfig]) -> ExpertConfig:
    """The expert config a skill LLM runs as: the pool's expert named ``source``, else a
    ``transformers`` expert on the model ``source`` (a local folder or 'smollm2')."""
    from orchestrator.config import ExpertConfig

    for e in experts:
        if e.name == source:
            return e
    return ExpertConfig(name="skill-llm", backend="transformers", model=source)
