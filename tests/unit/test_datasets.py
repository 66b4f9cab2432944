"""Loaders of recorded outcomes (tiny files in each real format) and leakage-free splits."""

from __future__ import annotations

import math

import numpy as np
import pytest

from orchestrator.errors import ConfigError
from orchestrator.evaluation.datasets import (
    load_dataset,
    load_llmrouter,
    load_mmlu_pro,
    load_routerbench,
    price_from_params,
    sample,
    split,
)
from tests.routing_data import synthetic, write_llmrouter, write_mmlu_pro, write_routerbench


def test_routerbench_loader_reads_scores_costs_and_responses(tmp_path):
    data = load_routerbench(write_routerbench(tmp_path / "rb"))
    assert data.models == ["gpt-4-1106-preview", "mistralai/mistral-7b-chat"]
    assert data.prompts[0] == "Write a function to add two numbers."
    assert data.categories == ["mbpp"] * 3
    assert data.scores[0].tolist() == [1.0, 0.0]
    assert math.isnan(data.scores[2, 1])  # empty cell = no record
    assert data.costs[1].tolist() == pytest.approx([0.003, 0.0002])
    assert data.response(0, 0) == "def add(a, b):\n    return a + b"
    assert data.response(2, 1) is None
    assert "recorded" in data.cost_source


def test_routerbench_loader_accepts_a_folder_and_a_file(tmp_path):
    file = write_routerbench(tmp_path / "rb")
    assert len(load_routerbench(file)) == len(load_routerbench(file.parent)) == 3


def test_llmrouter_csv_prices_by_length_estimate(tmp_path):
    data = load_llmrouter(write_llmrouter(tmp_path / "lr"), completion_tokens=100)
    assert data.categories == ["gsm8k", "natural_qa", "commongen"]
    assert data.models == ["small-7b", "large-70b"]
    assert data.scores[2].tolist() == [0.57, 0.66]  # graded scores are kept
    prompt_tokens = math.ceil(len("What is 2+2?") / 4)
    assert data.costs[0, 1] == pytest.approx((0.9 * prompt_tokens + 0.9 * 100) / 1e6)
    assert data.answers == ["4", "Paris", ""]
    assert "price table" in data.cost_source


def test_llmrouter_json_uses_clusters_as_categories(tmp_path):
    folder = write_llmrouter(tmp_path / "lr")
    data = load_llmrouter(folder / "dcrouter_train.json")
    assert data.categories == ["cluster_3"]
    assert data.scores.tolist() == [[1.0, 1.0]]


def test_mmlu_pro_prices_from_parameter_count(tmp_path):
    data = load_mmlu_pro(write_mmlu_pro(tmp_path / "mp"))
    assert data.prompts[0] == "What is 1+1?\n\nA) 1\nB) 2\nC) 3"
    assert data.choices is not None and data.choices[0] == ["1", "2", "3"]
    assert data.answers == ["B", "A"]
    assert math.isnan(data.scores[1, 1])
    tokens = math.ceil(len(data.prompts[0]) / 4) + 800 / 4
    assert data.costs[0, 1] == pytest.approx(tokens * price_from_params(70.0) / 1e6)
    assert "DERIVED from parameter count" in data.cost_source
    complete, dropped = data.complete()
    assert (len(complete), dropped) == (1, 1)


def test_price_curve_matches_the_llmrouter_table_roughly():
    assert price_from_params(7) == pytest.approx(0.20)
    assert 0.7 < price_from_params(70) < 0.95
    assert 1.1 < price_from_params(141) < 1.3


def test_unknown_dataset_and_missing_path_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="valid: llmrouter, mmlu_pro, routerbench"):
        load_dataset("nope", tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_dataset("routerbench", tmp_path / "missing")


def test_split_keeps_identical_prompts_together_and_is_order_free():
    data = synthetic(20)
    doubled = data.subset(list(range(len(data))) * 2)  # every prompt twice
    train, test = split(doubled, 0.3, seed=1)
    assert not set(train.prompts) & set(test.prompts)
    assert len(test) > 0 and len(train) > 0
    shuffled = doubled.subset(np.random.default_rng(0).permutation(len(doubled)))
    _, test2 = split(shuffled, 0.3, seed=1)
    assert sorted(test.prompts) == sorted(test2.prompts)


def test_validation_split_is_carved_from_train_only():
    data = synthetic(30)
    train, test = split(data, 0.3, seed=0, salt="test")
    fit, valid = split(train, 0.2, seed=0, salt="select")
    assert set(fit.prompts) | set(valid.prompts) == set(train.prompts)
    assert not (set(valid.prompts) | set(fit.prompts)) & set(test.prompts)


def test_fingerprint_names_the_data():
    a, b = synthetic(10), synthetic(10)
    assert a.fingerprint() == b.fingerprint()
    assert a.subset(range(5)).fingerprint() != a.fingerprint()
    assert sample(a, 12).fingerprint() == sample(b, 12).fingerprint()
    assert len(sample(a, 12)) == 12


def test_row_lookup_is_exact_text():
    data = synthetic(5)
    assert data.row_of("  " + data.prompts[3] + "\n") == 3
    assert data.row_of("not a recorded prompt") is None
