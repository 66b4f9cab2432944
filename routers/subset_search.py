"""Choosing a subset of experts under budgets: branch and bound over a monotone objective.

The problem (MoE², second level): given per-expert values ``v_i ∈ [0, 1]`` (the gate-trusted
probability that expert i answers correctly) and per-expert resources for this query (latency
``l_i`` in ms, energy ``e_i`` in J, cost ``c_i`` in USD), find

    maximise   Q(S) = 1 − Π_{i∈S} (1 − v_i)          (probability some member is right)
    subject to latency(S) = max_{i∈S} l_i  (+ overhead.latency_ms if |S| ≥ 2) ≤ max_latency_ms
               energy(S)  = Σ_{i∈S} e_i    (+ overhead.energy_j   if |S| ≥ 2) ≤ max_energy_j
               cost(S)    = Σ_{i∈S} c_i    (+ overhead.cost_usd   if |S| ≥ 2) ≤ max_cost_usd
               1 ≤ |S| ≤ max_experts

Members run in parallel, so latency is the slowest member's; an aggregator that synthesises
the final answer (``overhead``) runs after them, so its latency adds, as do its energy and
cost. Every resource is monotone in S (adding a member never lowers it) and so is Q: the
problem is a discrete *monotonic* optimization, as in the MoE² paper.

How it is solved (:func:`branch_and_bound`):

* ``Q`` is monotone in ``G(S) = Σ_{i∈S} g_i`` with ``g_i = −log(1 − v_i)`` (``Q = 1 − e^{−G}``),
  so maximising Q is maximising an additive score.
* The latency constraint of a parallel subset only removes members that are too slow *alone*
  (max over members ≤ budget ⇔ each member ≤ budget); likewise members whose energy or cost
  alone exceeds the budget. Members with ``v_i = 0`` can never raise Q and are dropped.
* What remains is a 0/1 knapsack with two capacities (energy, cost) and a cardinality
  limit. Depth-first search, include branch first, over members sorted by ``g`` per unit of
  budget-normalised resource (``e_i/E + c_i/C``; plain ``g`` without those budgets) — the
  order in which the LP relaxation fills the knapsack, so the first dive finds a near-optimal
  incumbent (Horowitz–Sahni). A branch is pruned when its upper bound cannot beat the
  incumbent. The bound is the tightest of: the sum of every ``g`` left; the ``max_experts −
  |S|`` largest ``g`` that still fit (cardinality); and the fractional (LP-relaxed) knapsack on
  energy and on cost separately. Infeasible branches (a budget already exceeded) are never
  entered. ``python -m bench.moe2_search`` measures nodes and time on 8–32 experts.
* With an aggregator overhead, singletons (no aggregation) and subsets of two or more (budgets
  reduced by the overhead) are solved separately and the better one kept.

Ties in Q are broken by lower cost, then lower energy, then fewer members (:func:`exhaustive`,
the 2^n reference the tests compare against, also breaks them by latency and indices: exact
ties beyond cost and energy are vanishingly rare with real-valued inputs).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

_EPS = 1e-12
_MAX_V = 1.0 - 1e-12


@dataclass(frozen=True, slots=True)
class Budget:
    """Limits for one request; ``None`` = unlimited."""

    max_latency_ms: float | None = None
    max_energy_j: float | None = None
    max_cost_usd: float | None = None
    max_experts: int | None = None

    def as_dict(self) -> dict[str, float | int | None]:
        return {
            "max_latency_ms": self.max_latency_ms,
            "max_energy_j": self.max_energy_j,
            "max_cost_usd": self.max_cost_usd,
            "max_experts": self.max_experts,
        }


@dataclass(frozen=True, slots=True)
class Overhead:
    """What combining two or more answers adds (an aggregator expert's own call)."""

    latency_ms: float = 0.0
    energy_j: float = 0.0
    cost_usd: float = 0.0

    @property
    def zero(self) -> bool:
        return self.latency_ms == 0 and self.energy_j == 0 and self.cost_usd == 0


NO_OVERHEAD = Overhead()


@dataclass(frozen=True, slots=True)
class Selection:
    """The chosen subset (indices into the inputs, by value descending) and what it costs.

    ``members`` is empty when no single expert fits the budget. ``nodes`` counts search nodes
    visited (the exhaustive reference counts every subset, 2^n)."""

    members: tuple[int, ...]
    quality: float
    latency_ms: float
    energy_j: float
    cost_usd: float
    nodes: int

    @property
    def feasible(self) -> bool:
        return bool(self.members)


def _fits(value: float, limit: float | None) -> bool:
    return limit is None or value <= limit + _EPS + 1e-9 * abs(limit)


def subset_quality(values: Sequence[float], members: Sequence[int]) -> float:
    """``1 − Π(1 − v_i)`` over ``members``: 0 for the empty set."""
    prod = 1.0
    for i in members:
        prod *= 1.0 - min(max(values[i], 0.0), 1.0)
    return 1.0 - prod if members else 0.0


def subset_resources(
    latency: Sequence[float],
    energy: Sequence[float],
    cost: Sequence[float],
    members: Sequence[int],
    overhead: Overhead = NO_OVERHEAD,
) -> tuple[float, float, float]:
    """(latency ms, energy J, cost USD) of running ``members`` in parallel, plus the
    aggregation overhead when there are two or more."""
    if not members:
        return 0.0, 0.0, 0.0
    extra = overhead if len(members) >= 2 else NO_OVERHEAD
    return (
        max(latency[i] for i in members) + extra.latency_ms,
        sum(energy[i] for i in members) + extra.energy_j,
        sum(cost[i] for i in members) + extra.cost_usd,
    )


def is_feasible(
    latency: Sequence[float],
    energy: Sequence[float],
    cost: Sequence[float],
    members: Sequence[int],
    budget: Budget,
    overhead: Overhead = NO_OVERHEAD,
) -> bool:
    if not members or (budget.max_experts is not None and len(members) > budget.max_experts):
        return False
    lat, en, co = subset_resources(latency, energy, cost, members, overhead)
    return (
        _fits(lat, budget.max_latency_ms)
        and _fits(en, budget.max_energy_j)
        and _fits(co, budget.max_cost_usd)
    )


def _key(
    quality: float, resources: tuple[float, float, float], members: Sequence[int]
) -> tuple[float, ...]:
    """Sort key of a subset, smaller is better: quality first, then cheaper, then fewer."""
    lat, en, co = resources
    return (-round(quality, 12), round(co, 15), round(en, 12), round(lat, 9), len(members))


def _selection(
    values: Sequence[float],
    latency: Sequence[float],
    energy: Sequence[float],
    cost: Sequence[float],
    members: Sequence[int],
    overhead: Overhead,
    nodes: int,
) -> Selection:
    ordered = tuple(sorted(members, key=lambda i: (-values[i], i)))
    lat, en, co = subset_resources(latency, energy, cost, ordered, overhead)
    return Selection(ordered, subset_quality(values, ordered), lat, en, co, nodes)


def exhaustive(
    values: Sequence[float],
    latency: Sequence[float],
    energy: Sequence[float],
    cost: Sequence[float],
    budget: Budget,
    overhead: Overhead = NO_OVERHEAD,
) -> Selection:
    """The optimum by enumerating all 2^n subsets (the reference for small pools)."""
    n = len(values)
    best: tuple[tuple[float, ...], tuple[int, ...]] | None = None
    for size in range(1, n + 1):
        for members in itertools.combinations(range(n), size):
            if not is_feasible(latency, energy, cost, members, budget, overhead):
                continue
            q = subset_quality(values, members)
            key = (*_key(q, subset_resources(latency, energy, cost, members, overhead), members),)
            if best is None or (key, members) < best:
                best = (key, members)
    members = best[1] if best is not None else ()
    return _selection(values, latency, energy, cost, members, overhead, 2**n)


class _Search:
    """One branch-and-bound run: members sorted by g descending, budgets as plain floats."""

    def __init__(
        self,
        g: list[float],
        energy: list[float],
        cost: list[float],
        max_energy: float,
        max_cost: float,
        max_count: int,
    ) -> None:
        self.g, self.e, self.c = g, energy, cost
        self.max_e, self.max_c, self.max_k = max_energy, max_cost, max_count
        n = len(g)
        # Orders for the fractional-knapsack bounds: best g per unit of resource first.
        self.by_e = sorted(range(n), key=lambda j: -(g[j] / energy[j]) if energy[j] > 0 else -1e300)
        self.by_c = sorted(range(n), key=lambda j: -(g[j] / cost[j]) if cost[j] > 0 else -1e300)
        self.by_g = sorted(range(n), key=lambda j: -g[j])
        self.suffix = [sum(g[j:]) for j in range(n + 1)]  # cheapest bound: all that is left
        self.best_g = -1.0
        self.best_key: tuple[float, ...] = ()
        self.best: list[int] = []
        self.nodes = 0
        self.chosen: list[int] = []

    def _bound(self, i: int, e_rem: float, c_rem: float, k_rem: int, need: float) -> float:
        """An upper bound on the g still addable from members ``i:``; stops early once a
        relaxation proves it below ``need`` (then the branch is pruned anyway)."""
        g, e, c = self.g, self.e, self.c
        bound, count = 0.0, 0
        for j in self.by_g:  # the k_rem largest g among the members left that fit
            if j >= i and e[j] <= e_rem + _EPS and c[j] <= c_rem + _EPS:
                bound += g[j]
                count += 1
                if count == k_rem:
                    break
        if bound < need:
            return bound
        for order, weight, cap in ((self.by_e, e, e_rem), (self.by_c, c, c_rem)):
            if math.isinf(cap):
                continue
            total, room = 0.0, cap
            for j in order:
                if j < i or e[j] > e_rem + _EPS or c[j] > c_rem + _EPS:
                    continue
                if weight[j] <= room:
                    total += g[j]
                    room -= weight[j]
                else:
                    total += g[j] * room / weight[j]
                    break
            if total < bound:
                bound = total
                if bound < need:
                    return bound
        return bound

    def run(self) -> None:
        self._visit(0, 0.0, 0.0, 0.0)

    def _visit(self, i: int, g_sum: float, e_sum: float, c_sum: float) -> None:
        self.nodes += 1
        k = len(self.chosen)
        if k:
            key = (-g_sum, c_sum, e_sum, float(k))
            if g_sum > self.best_g + 1e-12 or (
                abs(g_sum - self.best_g) <= 1e-12 and key < self.best_key
            ):
                self.best_g, self.best_key, self.best = g_sum, key, list(self.chosen)
        n = len(self.g)
        if i >= n or k >= self.max_k:
            return
        e_rem, c_rem = self.max_e - e_sum, self.max_c - c_sum
        # Ties must still be explored (a cheaper subset of equal quality wins), hence "<".
        need = self.best_g - 1e-12 - g_sum
        if self.suffix[i] < need or self._bound(i, e_rem, c_rem, self.max_k - k, need) < need:
            return
        if self.e[i] <= e_rem + _EPS and self.c[i] <= c_rem + _EPS:
            self.chosen.append(i)
            self._visit(i + 1, g_sum + self.g[i], e_sum + self.e[i], c_sum + self.c[i])
            self.chosen.pop()
        self._visit(i + 1, g_sum, e_sum, c_sum)


def _solve(
    values: Sequence[float],
    latency: Sequence[float],
    energy: Sequence[float],
    cost: Sequence[float],
    budget: Budget,
    max_count: int,
) -> tuple[list[int], int]:
    """Branch and bound without overhead: (best members as input indices, nodes visited)."""
    n = len(values)
    keep = [
        i
        for i in range(n)
        if values[i] > 0
        and _fits(latency[i], budget.max_latency_ms)
        and _fits(energy[i], budget.max_energy_j)
        and _fits(cost[i], budget.max_cost_usd)
    ]
    if not keep or max_count < 1:
        return [], 1
    # Sort by g descending; among equal g, cheaper first (so the include-first search meets
    # the tie-break winner early), then by index.
    # Branch in order of value per unit of (budget-normalised) resource, the order in which
    # the LP relaxation fills the knapsack: the include-first dive then finds a near-optimal
    # incumbent at once and the bounds prune early (Horowitz–Sahni). Without energy and cost
    # budgets that is plain value order.
    e_cap = math.inf if budget.max_energy_j is None else max(budget.max_energy_j, _EPS)
    c_cap = math.inf if budget.max_cost_usd is None else max(budget.max_cost_usd, _EPS)

    def ratio(i: int) -> float:
        g_i = -math.log1p(-min(values[i], _MAX_V))
        used = energy[i] / e_cap + cost[i] / c_cap
        return g_i / used if used > 0 else math.inf

    keep.sort(key=lambda i: (-ratio(i), -values[i], cost[i], energy[i], latency[i], i))
    g = [-math.log1p(-min(values[i], _MAX_V)) for i in keep]
    inf = math.inf
    search = _Search(
        g,
        [energy[i] for i in keep],
        [cost[i] for i in keep],
        inf if budget.max_energy_j is None else budget.max_energy_j,
        inf if budget.max_cost_usd is None else budget.max_cost_usd,
        max_count,
    )
    search.run()
    return [keep[j] for j in search.best], search.nodes


def branch_and_bound(
    values: Sequence[float],
    latency: Sequence[float],
    energy: Sequence[float],
    cost: Sequence[float],
    budget: Budget,
    overhead: Overhead = NO_OVERHEAD,
) -> Selection:
    """The subset maximising ``Q`` within ``budget`` (empty when nothing fits); exact.

    Raises ``ValueError`` when the inputs differ in length or hold negative resources."""
    n = len(values)
    if not (len(latency) == len(energy) == len(cost) == n):
        raise ValueError("values, latency, energy and cost must have the same length")
    if any(x < 0 for x in itertools.chain(latency, energy, cost)):
        raise ValueError("resources must be non-negative")
    max_k = n if budget.max_experts is None else min(budget.max_experts, n)
    if overhead.zero or max_k <= 1:
        members, nodes = _solve(values, latency, energy, cost, budget, max_k)
        return _selection(values, latency, energy, cost, members, NO_OVERHEAD, nodes)
    single, nodes_1 = _solve(values, latency, energy, cost, budget, 1)

    def reduced(limit: float | None, extra: float) -> float | None:
        return None if limit is None else limit - extra

    shrunk = Budget(
        reduced(budget.max_latency_ms, overhead.latency_ms),
        reduced(budget.max_energy_j, overhead.energy_j),
        reduced(budget.max_cost_usd, overhead.cost_usd),
        max_k,
    )
    limits = (shrunk.max_latency_ms, shrunk.max_energy_j, shrunk.max_cost_usd)
    if any(x is not None and x < 0 for x in limits):
        return _selection(values, latency, energy, cost, single, overhead, nodes_1)
    many, nodes_k = _solve(values, latency, energy, cost, shrunk, max_k)
    # A singleton found under the reduced budgets is never better than `single`.
    best = single
    if len(many) >= 2:
        res = subset_resources(latency, energy, cost, many, overhead)
        if not single or _key(subset_quality(values, many), res, many) < _key(
            subset_quality(values, single),
            subset_resources(latency, energy, cost, single, overhead),
            single,
        ):
            best = many
    return _selection(values, latency, energy, cost, best, overhead, nodes_1 + nodes_k)
