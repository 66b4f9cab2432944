"""Cost–quality metrics: operating points, the non-decreasing hull, AIQ, cost to a target."""

from __future__ import annotations

import numpy as np
import pytest

from orchestrator.evaluation.metrics import (
    Point,
    aiq,
    choose_knob,
    cost_to_reach,
    nondecreasing_hull,
    operating_point,
    oracle_choices,
)


def test_operating_point_counts_missing_records_as_wrong():
    scores = np.array([[1.0, 0.0], [np.nan, 1.0]])
    costs = np.array([[2.0, 1.0], [2.0, 1.0]])
    p = operating_point(np.array([0, 0]), scores, costs, knob=0.5)
    assert (p.accuracy, p.total_cost, p.mean_cost, p.n, p.knob) == (0.5, 4.0, 2.0, 2, 0.5)


def test_oracle_picks_the_cheapest_best_model():
    scores = np.array([[1, 1, 0], [0, 0, 0], [0, 1, 1]], dtype=float)
    costs = np.array([[3, 1, 0.5], [3, 2, 1], [1, 5, 4]], dtype=float)
    assert oracle_choices(scores, costs).tolist() == [1, 2, 2]


def test_hull_drops_dominated_points_and_stops_at_the_best():
    pts = [(0, 0.5), (1, 0.6), (2, 0.9), (3, 0.8), (4, 0.9), (1, 0.4)]
    hull = nondecreasing_hull(pts)
    # (1, 0.6) lies under the chord (0,0.5)-(2,0.9): a mix of those two beats it
    assert hull.tolist() == [[0.0, 0.5], [2.0, 0.9]]


def test_hull_keeps_concave_vertices():
    hull = nondecreasing_hull([(0, 0.0), (1, 0.8), (2, 0.9)])
    assert hull.tolist() == [[0, 0.0], [1, 0.8], [2, 0.9]]


def test_aiq_of_a_flat_line_is_its_height_and_starts_at_the_first_point():
    assert aiq(np.array([[0.0, 0.7]]), 10.0) == pytest.approx(0.7)
    # from cost 5 on at 0.8: the first half of the axis contributes nothing
    assert aiq(np.array([[5.0, 0.8]]), 10.0) == pytest.approx(0.4)
    # a ramp from (0,0) to (10,1): area 5 over a range of 10
    assert aiq(np.array([[0.0, 0.0], [10.0, 1.0]]), 10.0) == pytest.approx(0.5)


def test_cost_to_reach_and_knob_choice():
    pts = [Point(0.0, 0.9, 10, 1, 10), Point(1.0, 0.895, 4, 0.4, 10), Point(2.0, 0.7, 1, 0.1, 10)]
    assert cost_to_reach(pts, 0.85) == 4
    assert cost_to_reach(pts, 0.95) is None
    assert choose_knob(pts) == 1.0  # within half a point of the best, and cheaper
    assert choose_knob(pts, tolerance=0.0) == 0.0
