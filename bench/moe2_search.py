"""MoE² subset search: branch and bound vs exhaustive enumeration, on random pools of 8–32
experts.

    python -m bench.moe2_search [--sizes 8,12,16,20,24,28,32] [--instances 40] [--exhaustive-up-to 16]

Each instance draws, per expert, a value v ∈ [0, 1) (skewed: v = u², a few strong experts), a
latency (50–3,000 ms), an energy (0.1–10 J) and a cost (1e-5–1e-2 USD); the budgets are the
40th percentile of the latencies, 25% of the total energy and 25% of the total cost. Three
regimes: at most 3 experts (the ensemble sizes one would serve); no cardinality limit (many
members fit at once); and "correlated" — no latency budget, values in [0.3, 0.7] and energy and
cost growing with value (plus noise), budgets at 30% of the totals: the strongly correlated
knapsack, the classic hard case for branch and bound.

Per pool size it prints: search nodes visited by branch and bound (mean, max) against the 2^n
subsets of exhaustive search, milliseconds per decision (mean, p95), and, up to
``--exhaustive-up-to`` experts, whether branch and bound found the exhaustive optimum on every
instance and how long enumeration took. A greedy baseline (add experts by g / (normalised
energy + cost) while they fit) shows what exactness buys: its mean shortfall in Q (expected
quality) and how often it misses the optimum. Prints numbers; asserts nothing. The machine's
load average is printed with them.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import time

from routers.subset_search import (
    Budget,
    Selection,
    branch_and_bound,
    exhaustive,
    is_feasible,
    subset_quality,
)


def draw(rng: random.Random, n: int, regime: str) -> tuple[list[list[float]], Budget]:
    """One random instance of a regime (see the module docstring)."""
    if regime == "correlated":
        u = [rng.random() for _ in range(n)]
        values = [0.3 + 0.4 * x for x in u]
        energy = [1 + 9 * x + rng.uniform(-0.5, 0.5) for x in u]
        cost = [(1 + 9 * x + rng.uniform(-0.5, 0.5)) * 1e-3 for x in u]
        latency = [rng.uniform(50, 3000) for _ in range(n)]
        return [values, latency, energy, cost], Budget(
            None, 0.3 * sum(energy), 0.3 * sum(cost), None
        )
    values = [rng.random() ** 2 for _ in range(n)]
    latency = [rng.uniform(50, 3000) for _ in range(n)]
    energy = [rng.uniform(0.1, 10) for _ in range(n)]
    cost = [rng.uniform(1e-5, 1e-2) for _ in range(n)]
    budget = Budget(
        sorted(latency)[int(0.4 * (n - 1))],
        0.25 * sum(energy),
        0.25 * sum(cost),
        3 if regime == "≤3 experts" else None,
    )
    return [values, latency, energy, cost], budget


def greedy(
    values: list[float],
    latency: list[float],
    energy: list[float],
    cost: list[float],
    budget: Budget,
) -> float:
    """Q of the greedy subset: best g per unit of (normalised) energy + cost first."""
    e_cap = budget.max_energy_j or math.inf
    c_cap = budget.max_cost_usd or math.inf
    g = [-math.log1p(-min(v, 1 - 1e-12)) for v in values]
    weight = [energy[i] / e_cap + cost[i] / c_cap + 1e-12 for i in range(len(values))]
    order = sorted(range(len(values)), key=lambda i: -g[i] / weight[i])
    chosen: list[int] = []
    for i in order:
        if values[i] > 0 and is_feasible(latency, energy, cost, [*chosen, i], budget):
            chosen.append(i)
    return subset_quality(values, chosen)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--sizes", default="8,12,16,20,24,28,32")
    parser.add_argument("--instances", type=int, default=40)
    parser.add_argument("--exhaustive-up-to", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average {load:.1f}; {args.instances} random instances per row\n")
    header = (
        f"{'regime':<12}{'n':>4}{'2^n':>15}{'B&B nodes mean':>16}{'max':>8}"
        f"{'ms/decision':>13}{'p95':>8}{'= exhaustive':>14}{'exh. ms':>10}"
        f"{'greedy gap':>12}{'greedy miss':>13}"
    )
    for label in ("≤3 experts", "no limit", "correlated"):
        print(header)
        for n in sizes:
            rng = random.Random(f"{args.seed}-{n}-{label}")
            nodes, times, gaps, misses = [], [], [], 0
            same, exh_times = 0, []
            for _ in range(args.instances):
                (v, lat, en, co), budget = draw(rng, n, label)
                start = time.perf_counter()
                best: Selection = branch_and_bound(v, lat, en, co, budget)
                times.append((time.perf_counter() - start) * 1000)
                nodes.append(best.nodes)
                q_greedy = greedy(v, lat, en, co, budget)
                gaps.append(best.quality - q_greedy)
                misses += best.quality - q_greedy > 1e-9
                if n <= args.exhaustive_up_to:
                    start = time.perf_counter()
                    ref = exhaustive(v, lat, en, co, budget)
                    exh_times.append((time.perf_counter() - start) * 1000)
                    same += abs(ref.quality - best.quality) < 1e-12 and ref.members == best.members
            p95 = sorted(times)[max(0, math.ceil(0.95 * len(times)) - 1)]
            check = f"{same}/{args.instances}" if exh_times else "—"
            exh = f"{statistics.mean(exh_times):.0f}" if exh_times else "—"
            print(
                f"{label:<12}{n:>4}{2**n:>15,}{statistics.mean(nodes):>16.1f}{max(nodes):>8}"
                f"{statistics.mean(times):>13.3f}{p95:>8.3f}{check:>14}{exh:>10}"
                f"{statistics.mean(gaps):>12.4f}{misses:>8}/{args.instances}"
            )
        print()


if __name__ == "__main__":
    main()
