"""Scoring multi-expert decisions (Symbolic-MoE) on recorded outcomes.

On recorded data no LLM aggregator can run, so the aggregator is **approximated by a weighted
vote over the recruited experts' recorded answers** (weights: the strategy's vote weights of
the recruited experts, ``Decision.details['recruited'][expert]['weight']`` — for Symbolic-MoE
the log-odds of each one's predicted accuracy; equal weights without them):

* **Parsed vote** — where the chosen option can be read from the recorded response texts
  (RouterBench's ARC and Winogrande: ``<model>|model_response`` holds "C", "B\\n", "A)" …):
  the option with the most weight wins (ties: the option of the higher-ranked expert) and the
  row scores as the recorded score of the experts who chose it. Experts whose response names
  no valid option abstain.
* **Correctness majority** — elsewhere (MMLU-Pro records correctness but not the chosen
  letter; MBPP's answers are programs; LLMRouter records scores only), or where every recruited
  expert abstained: the *weighted lower median* of the recruited experts' recorded scores, which
  on 0/1 correctness means "correct iff the experts who were right hold more than half of the
  weight". This treats all wrong answers as one answer, so it is a *lower bound* of a
  plurality vote over the real answers (wrong answers that differ split their votes).
* **Upper bound** — the best recorded score among the recruited experts: an aggregator that
  always recognises a right answer when one is offered.

A real LLM aggregator can land anywhere between (or outside) these, so they approximate it;
they are reported as such. **Cost** of a row = the recruited experts' recorded costs plus, when
more than one was recruited, the aggregator's recorded cost of answering the question itself
(an approximation too: its synthesis prompt also carries the k answers).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from orchestrator.evaluation.datasets import RoutingDataset
from orchestrator.evaluation.metrics import Point
from orchestrator.types import Decision

_LETTERS_IN_PROMPT = re.compile(r'from\s+((?:"[A-Z]"(?:\s*or\s*)?){2,})')
_OPTION_LINE = re.compile(r"^([A-Z])\)\s", re.MULTILINE)
_LEADING = re.compile(r"^\s*[\(\[]?([A-Z])(?:[\)\].:,\s]|$)")
_STATED = re.compile(r"(?:answer|choice|option)\s*(?:is|:)?\s*[\(\[]?([A-Z])\b", re.IGNORECASE)


def option_letters(prompt: str) -> str:
    """The option letters the *last* question of ``prompt`` offers ('' if it offers none)."""
    found = _LETTERS_IN_PROMPT.findall(prompt[-600:])
    if found:
        return "".join(re.findall(r'"([A-Z])"', found[-1]))
    tail = prompt[-2000:].split("\n\n")[-1]
    return "".join(_OPTION_LINE.findall(tail))


def parse_choice(response: str | None, letters: str) -> str | None:
    """The option a response chose ('C', 'B\\n', '(A)', 'The answer is D'), if it names one of
    ``letters``; None otherwise."""
    if not response or not letters:
        return None
    text = response.strip()
    m = _LEADING.match(text)
    if m and m.group(1) in letters:
        return m.group(1)
    m = _STATED.search(text)
    if m and m.group(1).upper() in letters:
        return m.group(1).upper()
    return None


def recorded_choices(data: RoutingDataset) -> np.ndarray | None:
    """Rows × models of parsed options (None where none), or None without response texts."""
    if data.responses is None:
        return None
    out = np.full((len(data), len(data.models)), None, dtype=object)
    for i, prompt in enumerate(data.prompts):
        letters = option_letters(prompt)
        if not letters:
            continue
        for j in range(len(data.models)):
            out[i, j] = parse_choice(data.response(i, j), letters)
    return out


def weighted_lower_median(values: np.ndarray, weights: np.ndarray) -> float:
    order = np.argsort(values, kind="stable")
    cum = np.cumsum(weights[order]) / max(float(weights.sum()), 1e-12)
    return float(values[order][int(np.searchsorted(cum, 0.5 - 1e-12))])


@dataclass
class EnsembleRow:
    vote: float
    upper: float
    cost: float
    parsed: bool


def score_row(
    scores: np.ndarray,
    costs: np.ndarray,
    recruited: Sequence[int],
    weights: np.ndarray,
    aggregator: int | None,
    choices: np.ndarray | None,
) -> EnsembleRow:
    """One row: the vote estimate, the upper bound, the cost, and whether options were parsed.
    ``recruited`` are model indices best first; ``choices`` that row's parsed options."""
    idx = list(recruited)
    s = np.nan_to_num(scores[idx], nan=0.0)
    w = np.asarray(weights, dtype=np.float64)
    cost = float(costs[idx].sum())
    if len(idx) > 1 and aggregator is not None:
        cost += float(costs[aggregator])
    if len(idx) == 1:
        return EnsembleRow(float(s[0]), float(s[0]), cost, False)
    if choices is not None:
        votes: dict[str, float] = {}
        first: dict[str, int] = {}
        for r, j in enumerate(idx):
            c = choices[j]
            if c is not None:
                votes[c] = votes.get(c, 0.0) + float(w[r])
                first.setdefault(c, r)
        if votes:
            winner = max(votes, key=lambda c: (votes[c], -first[c]))
            chosen = [r for r, j in enumerate(idx) if choices[j] == winner]
            return EnsembleRow(float(s[chosen].mean()), float(s.max()), cost, True)
    return EnsembleRow(weighted_lower_median(s, w), float(s.max()), cost, False)


@dataclass
class EnsembleSummary:
    """What an ensemble point adds to accuracy and cost."""

    mean_experts: float
    upper_accuracy: float
    parsed_share: float
    k_counts: dict[int, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "mean_experts": round(self.mean_experts, 4),
            "upper_accuracy": round(self.upper_accuracy, 4),
            "parsed_share": round(self.parsed_share, 4),
            "k_counts": {str(k): v for k, v in sorted(self.k_counts.items())},
        }


def decision_weights(decision: Decision) -> np.ndarray:
    """The recruited experts' vote weights (relevance weights; equal when not given)."""
    recruited = decision.details.get("recruited")
    if isinstance(recruited, dict):
        w = [float(recruited.get(e, {}).get("weight", 0.0)) for e in decision.experts]
        if sum(w) > 0:
            return np.array(w)
    return np.ones(len(decision.experts))


def ensemble_point(
    decisions: Sequence[Decision],
    model_of: dict[str, int],
    data: RoutingDataset,
    knob: float | None = None,
    choices: np.ndarray | None = None,
) -> tuple[Point, EnsembleSummary]:
    """The operating point of (possibly multi-expert) decisions on ``data``: accuracy by the
    weighted-vote approximation of the aggregator, cost with the aggregator's call."""
    rows = [
        score_row(
            data.scores[i],
            data.costs[i],
            [model_of[e] for e in d.experts],
            decision_weights(d),
            model_of.get(d.aggregator) if d.aggregator else None,
            None if choices is None else choices[i],
        )
        for i, d in enumerate(decisions)
    ]
    n = max(len(rows), 1)
    vote = float(sum(r.vote for r in rows) / n)
    total = float(sum(r.cost for r in rows))
    ks = [len(d.experts) for d in decisions]
    counts: dict[int, int] = {}
    for k in ks:
        counts[k] = counts.get(k, 0) + 1
    summary = EnsembleSummary(
        mean_experts=float(np.mean(ks)) if ks else 0.0,
        upper_accuracy=float(sum(r.upper for r in rows) / n),
        parsed_share=float(sum(r.parsed for r in rows) / n),
        k_counts=counts,
    )
    point = Point(
        knob,
        vote,
        total,
        total / n,
        len(rows),
        experts_per_query=summary.mean_experts,
        upper_accuracy=summary.upper_accuracy,
    )
    return point, summary


def print_ensembles(result: Any, console: Any) -> None:
    """A table per multi-expert strategy of an :class:`~.harness.EvalResult`: its headline,
    its test curve over the knob and its variants, with experts per query and the bounds."""
    from rich.table import Table

    for r in result.strategies:
        points = [p for p in [r.headline, *r.curve, *r.variants.values()] if p.experts_per_query]
        if not points:
            continue
        table = Table(
            title=f"{result.dataset['name']} · {r.name}: recruiting on test (accuracy = weighted "
            "vote over recorded answers, approximating the aggregator)",
            title_justify="left",
        )
        for col in ("setting", "experts/query", "accuracy", "upper bound", "total $", "$/query"):
            table.add_column(col, justify="left" if col == "setting" else "right")

        def add(label: str, p: Point, table: Table = table) -> None:
            table.add_row(
                label,
                f"{p.experts_per_query or 1:.2f}",
                f"{p.accuracy:.4f}",
                f"{p.upper_accuracy:.4f}" if p.upper_accuracy is not None else "",
                f"{p.total_cost:.4f}",
                f"{p.mean_cost:.6f}",
            )

        add(f"chosen: {r.knob}={r.chosen_knob}", r.headline)
        for label, p in r.variants.items():
            add(label, p)
        table.add_section()
        for p in r.curve:
            add(f"{r.knob}={p.knob}", p)
        console.print(table)
        metrics = r.train_metrics
        if "aggregator" in metrics:
            console.print(
                f"[dim]{r.name} aggregator: {metrics['aggregator']} (accuracy "
                f"{metrics.get('aggregator_contested_accuracy')} on "
                f"{metrics.get('contested_valid_rows')} contested validation prompts); "
                f"{metrics.get('skills')} skills[/dim]"
            )
