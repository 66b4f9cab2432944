"""Aggregate stage: several experts' answers become one.

A single-expert decision passes its answer through. Multi-expert decisions name an aggregation
in ``Decision.aggregator``: ``first`` (the highest-ranked expert's answer), ``vote`` (the most
common answer, ties to rank), or another expert's name (that expert synthesizes a final answer
from the question and the candidates' answers, as Symbolic-MoE's aggregator does).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from orchestrator.types import Decision, Generation, Message, Query, Usage


def combine(decision: Decision, answers: Sequence[tuple[str, Generation]]) -> Generation:
    """Combine without another model call (``first`` / ``vote``)."""
    if len(answers) == 1:
        return answers[0][1]
    usage = sum((g.usage for _, g in answers), Usage())
    if decision.aggregator == "vote":
        counts = Counter(g.text.strip() for _, g in answers)
        best = max(answers, key=lambda a: counts[a[1].text.strip()])[1]
        return Generation(best.text, usage, best.finish_reason)
    best = answers[0][1]
    return Generation(best.text, usage, best.finish_reason)


def synthesis_query(query: Query, answers: Sequence[tuple[str, Generation]]) -> Query:
    """The aggregator's prompt: the question and each expert's answer, asking for one answer."""
    listed = "\n\n".join(f"Answer {i + 1}:\n{g.text.strip()}" for i, (_, g) in enumerate(answers))
    prompt = (
        f"Question:\n{query.text}\n\nSeveral experts answered:\n\n{listed}\n\n"
        "Write one final, correct answer to the question, using the best of these answers."
    )
    return Query((Message("user", prompt),), query.sampling, query.options)
