"""The loaders on the real recorded outcomes in ../shared/data."""

from __future__ import annotations

import numpy as np

from orchestrator.evaluation.datasets import load_dataset, split


def test_routerbench(shared_data):
    data = load_dataset("routerbench", shared_data / "routerbench")
    assert len(data) == 1039 + 299 + 887 and len(data.models) == 11
    assert set(data.categories) == {"arc-challenge", "mbpp", "winogrande"}
    assert "gpt-4-1106-preview" in data.models
    gpt4, mistral = (
        data.model_index("gpt-4-1106-preview"),
        data.model_index("mistralai/mistral-7b-chat"),
    )
    mbpp = np.array([c == "mbpp" for c in data.categories])
    assert data.costs[mbpp, gpt4].mean() > 50 * data.costs[mbpp, mistral].mean()
    assert data.response(0, gpt4)  # real answer text
    assert data.row_of(data.prompts[10]) == 10


def test_llmrouter(shared_data):
    data = load_dataset("llmrouter", shared_data / "llmrouter")
    assert len(data) == 5608 and len(data.models) == 9
    assert len(set(data.categories)) == 14
    assert np.isfinite(data.scores).all() and (data.costs > 0).all()


def test_mmlu_pro(shared_data):
    data = load_dataset("mmlu_pro", shared_data / "mmlu_pro")
    assert len(data) == 9623 and len(data.models) == 29
    assert len(set(data.categories)) == 14
    complete, dropped = data.complete()
    assert dropped > 0 and not np.isnan(complete.scores).any()
    assert data.choices is not None and data.answers is not None
    assert any("ASSUMED" in n for n in data.notes)
    train, test = split(complete, 0.3)
    groups = {complete.group_key(i) for i in range(len(complete))}
    assert len(train) + len(test) == len(complete) and len(groups) < len(complete)
    train_q = {train.group_key(i) for i in range(len(train))}
    assert not train_q & {test.group_key(i) for i in range(len(test))}
