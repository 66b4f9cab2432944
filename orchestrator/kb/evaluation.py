"""Evaluation of ExpertRAG's retrieval gate and of retrieval end to end (``orchestrator eval-rag``).

**The labelled set.** Questions that need the knowledge store (``retrieve: true``: about a
made-up corpus, ``docs/examples/kb``, so no model knows the answers) and questions that do not
(``retrieve: false``: general knowledge and reasoning written beside them, some on the corpus'
own topics — pH, lux, IP ratings — plus real prompts from the shared recorded-outcome data,
LLMRouter's tasks, read through :func:`~orchestrator.evaluation.datasets.load_llmrouter`).

**No leakage.** The test split holds out whole *documents*: every question about a held-out
document is a test question, so the gate is tested on documents none of whose questions it was
trained on (the documents themselves are in the store: retrieval needs them). Negatives are
split by the hash of their text. The gate's threshold is chosen on out-of-fold predictions of
the training split only.

**Gate metrics** on the test split: precision and recall of "retrieve" against the label, F1,
the retrieval rate (overall, on positives, on each kind of negative), against two baselines —
always retrieve (standard RAG), and a threshold on the best passage's cosine alone (chosen for
the best F1 on the training split).

**End to end** (optional, slow: a real CPU model): each test question is answered by the real
expert pool three ways through the real dispatcher — no retrieval (``gate: never``), the
trained gate, always retrieve — with greedy decoding; an answer is correct when it contains
one of the question's accepted answers (numbers compared without thousands separators).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.evaluation.datasets import hash_unit

GENERAL_TASKS: tuple[str, ...] = (
    "natural_qa",
    "trivia_qa",
    "commonsense_qa",
    "arc_challenge",
    "mmlu",
    "gsm8k",
    "math",
    "mbpp",
)
"""LLMRouter tasks whose prompts serve as "no retrieval needed" questions."""


@dataclass(frozen=True)
class Labelled:
    """One labelled question. ``group``: the document a positive needs, or the kind of a
    negative (general, reasoning, topic, or ``llmrouter:<task>``)."""

    question: str
    retrieve: bool
    group: str
    answer: str | None = None
    aliases: tuple[str, ...] = ()

    @property
    def split_key(self) -> str:
        return f"doc:{self.group}" if self.retrieve else f"q:{self.question}"


def load_labelled(path: str | Path) -> list[Labelled]:
    """Read a JSONL of ``{"question", "retrieve", "group"?, "answer"?, "aliases"?}``."""
    out = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            out.append(
                Labelled(
                    str(row["question"]),
                    bool(row["retrieve"]),
                    str(row.get("group") or ("kb" if row["retrieve"] else "general")),
                    row.get("answer"),
                    tuple(str(a) for a in row.get("aliases") or ()),
                )
            )
        except (KeyError, TypeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}:{n}: not a labelled question ({e})") from None
    return out


def general_from_llmrouter(
    path: str | Path, per_task: int, *, seed: int = 0, max_chars: int = 1500
) -> list[Labelled]:
    """``per_task`` prompts of each of :data:`GENERAL_TASKS` (chosen by hash), as negatives."""
    from orchestrator.evaluation.datasets import load_llmrouter

    data = load_llmrouter(path)
    by_task: dict[str, list[int]] = {}
    for i, task in enumerate(data.categories):
        if task in GENERAL_TASKS and len(data.prompts[i]) <= max_chars:
            by_task.setdefault(task, []).append(i)
    out = []
    for task in GENERAL_TASKS:
        rows = sorted(
            by_task.get(task, []), key=lambda i: hash_unit(data.prompts[i], f"rag:{seed}")
        )
        for i in rows[:per_task]:
            # graded only where the reference is a short answer text (not an option letter)
            graded = task in ("natural_qa", "trivia_qa") and data.answers is not None
            answer = data.answers[i] if graded and data.answers is not None else None
            out.append(Labelled(data.prompts[i], False, f"llmrouter:{task}", answer))
    return out


def split_labelled(
    items: Sequence[Labelled], test_fraction: float, *, seed: int = 0
) -> tuple[list[Labelled], list[Labelled]]:
    """(train, test): whole documents held out for positives (at least one, never all),
    negatives by the hash of their text."""
    docs = sorted({x.group for x in items if x.retrieve}, key=lambda g: hash_unit(g, f"doc:{seed}"))
    n_test = min(max(1, round(test_fraction * len(docs))), max(len(docs) - 1, 0))
    test_docs = set(docs[:n_test])
    train: list[Labelled] = []
    test: list[Labelled] = []
    for x in items:
        held = (
            x.group in test_docs
            if x.retrieve
            else hash_unit(x.question, f"neg:{seed}") < test_fraction
        )
        (test if held else train).append(x)
    return train, test


# -- correctness -------------------------------------------------------------------------------

_THOUSANDS = re.compile(r"(?<=\d)[,\u202f ](?=\d{3}\b)")


def normalize_answer(text: str) -> str:
    return " ".join(_THOUSANDS.sub("", text.lower()).split())


def is_correct(text: str, item: Labelled) -> bool | None:
    """Whether ``text`` contains one of the accepted answers (None: the item has none)."""
    accepted = [a for a in (*item.aliases, *([item.answer] if item.answer else [])) if a.strip()]
    if not accepted:
        return None
    got = normalize_answer(text)
    return any(normalize_answer(a) in got for a in accepted)


# -- gate metrics ------------------------------------------------------------------------------


@dataclass
class GateMetrics:
    n: int
    positives: int
    precision: float
    recall: float
    f1: float
    retrieval_rate: float
    retrieval_rate_positives: float
    retrieval_rate_negatives: float
    threshold: float
    by_group: dict[str, float] = field(default_factory=dict)


def gate_metrics(
    predicted: Sequence[bool], items: Sequence[Labelled], threshold: float
) -> GateMetrics:
    from routers.expertrag import precision_recall

    pred = np.asarray(predicted, dtype=bool)
    y = np.asarray([x.retrieve for x in items], dtype=bool)
    prec, rec = precision_recall(pred, y)
    kinds: dict[str, list[bool]] = {}
    for p, x in zip(pred.tolist(), items, strict=True):
        kind = "kb" if x.retrieve else x.group
        kinds.setdefault(kind, []).append(p)
    return GateMetrics(
        n=len(items),
        positives=int(y.sum()),
        precision=round(prec, 4),
        recall=round(rec, 4),
        f1=round(2 * prec * rec / (prec + rec) if prec + rec else 0.0, 4),
        retrieval_rate=round(float(pred.mean()) if len(pred) else 0.0, 4),
        retrieval_rate_positives=round(float(pred[y].mean()) if y.any() else 0.0, 4),
        retrieval_rate_negatives=round(float(pred[~y].mean()) if (~y).any() else 0.0, 4),
        threshold=round(threshold, 4),
        by_group={k: round(float(np.mean(v)), 4) for k, v in sorted(kinds.items())},
    )


def evaluate_gate(
    strategy: Any,
    train: Sequence[Labelled],
    test: Sequence[Labelled],
    *,
    C: float = 0.5,
    seed: int = 0,
) -> dict[str, Any]:
    """Train ``strategy``'s gate (an :class:`~routers.expertrag.ExpertRAGStrategy` whose
    knowledge store holds the corpus) on ``train`` and measure it and the baselines on
    ``test``."""
    from orchestrator.types import Message, Query
    from routers.expertrag import best_f1_threshold

    start = time.perf_counter()
    artifact = strategy.train_gate(
        [x.question for x in train],
        [x.retrieve for x in train],
        [x.split_key for x in train],
        C=C,
        seed=seed,
        dataset={"name": "eval-rag", "rows": len(train)},
    )
    train_s = time.perf_counter() - start
    probes_train = strategy.probe([Query(messages=(Message("user", x.question),)) for x in train])
    probes = strategy.probe([Query(messages=(Message("user", x.question),)) for x in test])
    start = time.perf_counter()
    p = strategy.gate.probability(strategy.features(probes))
    gate_ms = (time.perf_counter() - start) * 1000 / max(len(test), 1)
    # batch timings (the inner strategy embeds the queries; the probe reuses its embeddings)
    timings = probes[0].timings_ms if probes else {}
    per_query = {k: round(v / max(len(test), 1), 3) for k, v in timings.items()}
    gated = p >= strategy.threshold
    # baseline: the best passage's cosine alone, its threshold chosen on the training split
    best_train = np.asarray([pr.scores[0] for pr in probes_train])
    sim_t, _ = best_f1_threshold(best_train, np.asarray([x.retrieve for x in train]))
    best_test = np.asarray([pr.scores[0] for pr in probes])
    cost = cost_summary(
        strategy.route([Query(messages=(Message("user", x.question),)) for x in test])
    )
    return {
        "train": {"n": len(train), "positives": sum(x.retrieve for x in train)},
        "cost": cost,
        "training_metrics": artifact.meta.get("metrics", {}),
        "train_s": round(train_s, 2),
        "ms_per_query": {**per_query, "gate": round(gate_ms, 3)},
        "gate": asdict(gate_metrics(gated.tolist(), test, strategy.threshold)),
        "similarity_only": asdict(gate_metrics((best_test >= sim_t).tolist(), test, sim_t)),
        "always": asdict(gate_metrics([True] * len(test), test, 0.0)),
        "p_retrieve": [round(float(v), 4) for v in p],
    }


def cost_summary(decisions: Sequence[Any]) -> dict[str, float]:
    """Totals over ``decisions`` of the cost terms ExpertRAG puts in each trace (USD and the
    passages' prompt tokens): expected, always-retrieve, realised, saved."""
    costs = [d.details["retrieval"]["cost"] for d in decisions]
    total = {
        k: float(sum(c[k] for c in costs))
        for k in (
            "expected_usd",
            "always_retrieve_usd",
            "cost_usd",
            "saved_usd",
            "expected_saved_usd",
            "context_tokens_saved",
        )
    }
    total["context_tokens_if_always"] = float(sum(c["context_tokens"] for c in costs))
    total["queries"] = float(len(costs))
    return total


# -- end to end --------------------------------------------------------------------------------


@dataclass
class Answer:
    question: str
    retrieve: bool
    group: str
    condition: str
    retrieved: bool
    text: str
    correct: bool | None
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    expert: str
    cited: bool


async def answer_all(
    pool: Any,
    strategies: dict[str, Any],
    items: Sequence[Labelled],
    *,
    max_tokens: int = 48,
    concurrency: int = 8,
    on_answer: Callable[[Answer], None] | None = None,
) -> list[Answer]:
    """Answer every item under every condition (name → strategy) through the real dispatcher
    (:class:`~orchestrator.dispatch.Dispatcher`: the decision's context reaches the expert as
    it does when serving)."""
    from orchestrator.dispatch import Dispatcher
    from orchestrator.types import Message, Query, SamplingParams

    dispatcher = Dispatcher(pool)
    slots = asyncio.Semaphore(concurrency)

    async def one(condition: str, strategy: Any, item: Labelled) -> Answer:
        query = Query(
            messages=(Message("user", item.question),),
            sampling=SamplingParams(max_tokens=max_tokens, temperature=0.0),
        )
        async with slots:
            start = time.perf_counter()
            (decision,) = await asyncio.to_thread(strategy.route, [query])
            [(expert, gen)], _ = await dispatcher.generate(decision, query)
            ms = (time.perf_counter() - start) * 1000
        retrieved = bool(decision.context)
        answer = Answer(
            item.question,
            item.retrieve,
            item.group,
            condition,
            retrieved,
            gen.text,
            is_correct(gen.text, item),
            gen.usage.prompt_tokens,
            gen.usage.completion_tokens,
            round(ms, 1),
            expert,
            bool(re.search(r"\[\d+\]", gen.text)),
        )
        if on_answer is not None:
            on_answer(answer)
        return answer

    jobs = [one(c, s, x) for x in items for c, s in strategies.items()]
    return list(await asyncio.gather(*jobs))


def summarize_answers(answers: Sequence[Answer]) -> dict[str, Any]:
    """Per condition and kind of question (kb / general): correct, retrieval rate, tokens."""
    out: dict[str, Any] = {}
    for condition in dict.fromkeys(a.condition for a in answers):
        rows = [a for a in answers if a.condition == condition]
        part: dict[str, Any] = {}
        for kind, sel in (("kb", True), ("general", False)):
            mine = [a for a in rows if a.retrieve is sel]
            graded = [a for a in mine if a.correct is not None]
            part[kind] = {
                "n": len(mine),
                "graded": len(graded),
                "correct": sum(bool(a.correct) for a in graded),
                "retrieval_rate": round(np.mean([a.retrieved for a in mine]), 4) if mine else 0.0,
                "mean_prompt_tokens": round(np.mean([a.prompt_tokens for a in mine]), 1)
                if mine
                else 0.0,
                "mean_latency_ms": round(np.mean([a.latency_ms for a in mine]), 1) if mine else 0.0,
                "cited": sum(a.cited for a in mine),
            }
        out[condition] = part
    return out
