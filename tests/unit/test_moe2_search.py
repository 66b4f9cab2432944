"""MoE²'s subset search: branch and bound against exhaustive enumeration on random instances."""

from __future__ import annotations

import random

import pytest

from routers.subset_search import (
    Budget,
    Overhead,
    branch_and_bound,
    exhaustive,
    is_feasible,
    subset_quality,
)


def instance(rng: random.Random, n: int) -> tuple[list[float], ...]:
    values = [rng.random() ** 2 for _ in range(n)]  # skewed: a few strong experts
    latency = [rng.uniform(50, 3000) for _ in range(n)]
    energy = [rng.uniform(0.1, 10) for _ in range(n)]
    cost = [rng.uniform(1e-5, 1e-2) for _ in range(n)]
    return values, latency, energy, cost


def random_budget(rng: random.Random, n: int) -> Budget:
    return Budget(
        rng.choice([None, rng.uniform(100, 3000)]),
        rng.choice([None, rng.uniform(0.5, 3 * n)]),
        rng.choice([None, rng.uniform(1e-4, 3e-3 * n)]),
        rng.choice([None, 1, 2, 3, n]),
    )


@pytest.mark.parametrize("seed", range(8))
def test_branch_and_bound_finds_the_exhaustive_optimum(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(60):
        n = rng.randint(1, 11)
        values, latency, energy, cost = instance(rng, n)
        budget = random_budget(rng, n)
        overhead = rng.choice(
            [Overhead(), Overhead(rng.uniform(0, 500), rng.uniform(0, 3), rng.uniform(0, 2e-3))]
        )
        bnb = branch_and_bound(values, latency, energy, cost, budget, overhead)
        ref = exhaustive(values, latency, energy, cost, budget, overhead)
        assert bnb.quality == pytest.approx(ref.quality, abs=1e-12)
        assert bnb.members == ref.members  # real-valued inputs: no ties
        assert (bnb.latency_ms, bnb.energy_j, bnb.cost_usd) == pytest.approx(
            (ref.latency_ms, ref.energy_j, ref.cost_usd)
        )
        if bnb.members:
            assert is_feasible(latency, energy, cost, bnb.members, budget, overhead)
            assert bnb.nodes < 2 * 2 ** (n + 1)  # two searches when an aggregator adds overhead
        assert ref.nodes == 2**n


def test_latency_of_a_parallel_subset_is_its_slowest_member() -> None:
    values = [0.9, 0.8, 0.7]
    latency = [1000.0, 300.0, 200.0]
    zero = [0.0, 0.0, 0.0]
    picked = branch_and_bound(values, latency, zero, zero, Budget(max_latency_ms=500))
    assert picked.members == (1, 2)  # the best expert is too slow; the other two run in parallel
    assert picked.latency_ms == 300.0
    assert picked.quality == pytest.approx(1 - 0.2 * 0.3)
    alone = branch_and_bound(values, latency, zero, zero, Budget(max_latency_ms=500, max_experts=1))
    assert alone.members == (1,)


def test_energy_and_cost_add_up_and_the_aggregator_counts_when_two_or_more() -> None:
    values = [0.6, 0.6, 0.6]
    latency = [100.0, 100.0, 100.0]
    energy = [4.0, 4.0, 4.0]
    cost = [0.0, 0.0, 0.0]
    two = branch_and_bound(values, latency, energy, cost, Budget(max_energy_j=9.0))
    assert len(two.members) == 2 and two.energy_j == 8.0
    synth = Overhead(latency_ms=400.0, energy_j=2.0)
    one = branch_and_bound(values, latency, energy, cost, Budget(max_energy_j=9.0), synth)
    assert len(one.members) == 1  # 4 + 4 + 2 J for the aggregator exceeds 9 J
    both = branch_and_bound(values, latency, energy, cost, Budget(max_energy_j=10.0), synth)
    assert len(both.members) == 2 and both.energy_j == 10.0 and both.latency_ms == 500.0


def test_nothing_fits_gives_an_empty_selection() -> None:
    picked = branch_and_bound([0.9, 0.5], [800.0, 900.0], [1.0, 1.0], [0.0, 0.0], Budget(100.0))
    assert not picked.feasible and picked.members == () and picked.quality == 0.0


def test_useless_members_are_never_added() -> None:
    picked = branch_and_bound([0.7, 0.0, 0.0], [1.0] * 3, [0.0] * 3, [0.0] * 3, Budget())
    assert picked.members == (0,)


def test_quality_is_monotone_and_the_bound_prunes_on_larger_pools() -> None:
    rng = random.Random(7)
    values, latency, energy, cost = instance(rng, 24)
    budget = Budget(max_latency_ms=2000, max_energy_j=12.0, max_cost_usd=0.01, max_experts=4)
    picked = branch_and_bound(values, latency, energy, cost, budget)
    assert picked.feasible and picked.nodes < 2**24 // 100
    for j in range(24):
        if j not in picked.members:
            grown = [*picked.members, j]
            assert subset_quality(values, grown) >= picked.quality
            # The optimum is maximal: adding any other expert breaks a budget.
            assert not is_feasible(latency, energy, cost, grown, budget)


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="same length"):
        branch_and_bound([0.5], [1.0, 2.0], [0.0], [0.0], Budget())
    with pytest.raises(ValueError, match="non-negative"):
        branch_and_bound([0.5], [-1.0], [0.0], [0.0], Budget())
