"""Small recorded-outcome data for routing tests: synthetic datasets with fake embeddings (unit
tier: no model is loaded) and writers of tiny files in each real format (loader tests)."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
from pathlib import Path

import numpy as np

from orchestrator.evaluation.datasets import RoutingDataset
from routers.embeddings import get_embedder

FAKE_EMBEDDER = "unit-test-fake-embedder"
"""An embedding_model name whose embedder is never loaded: every text it sees is primed."""

CATEGORIES = ("math", "code", "chat")
MODELS = ("big", "mathy", "cody")


def synthetic(n_per_category: int = 40, seed: int = 0) -> RoutingDataset:
    """Three categories × three models with a clear best cheap model per category.

    ``big`` costs 10× and is right on 75% of math and code and 90% of chat; ``mathy`` is
    always right on math, ``cody`` always on code; both are poor elsewhere.
    """
    rng = np.random.default_rng(seed)
    prompts, cats, scores, costs = [], [], [], []
    good = {"math": (0.75, 1.0, 0.1), "code": (0.75, 0.1, 1.0), "chat": (0.9, 0.1, 0.1)}
    for c in CATEGORIES:
        for i in range(n_per_category):
            prompts.append(f"{c} question number {i}: please answer")
            cats.append(c)
            scores.append([float(rng.random() < p) for p in good[c]])
            costs.append([0.010, 0.001, 0.001])
    data = RoutingDataset(
        name="routerbench",
        prompts=prompts,
        categories=cats,
        models=list(MODELS),
        scores=np.array(scores),
        costs=np.array(costs),
        ids=[f"synthetic:{i}" for i in range(len(prompts))],
        cost_source="synthetic",
    )
    prime(data.prompts)
    return data


def fake_vector(text: str) -> np.ndarray:
    """A unit vector: the category's axis plus a little text-dependent noise."""
    rng = np.random.default_rng(int(hashlib.sha256(text.encode()).hexdigest()[:8], 16))
    v = rng.normal(0, 0.15, 8)
    for k, c in enumerate(CATEGORIES):
        if text.startswith(c):
            v[k] += 1.0
    return (v / np.linalg.norm(v)).astype(np.float32)


def prime(texts: list[str]) -> None:
    get_embedder(FAKE_EMBEDDER).prime(texts, np.stack([fake_vector(t) for t in texts]))


# -- tiny files in the real formats ---------------------------------------------------------------


def write_routerbench(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    models = ["gpt-4-1106-preview", "mistralai/mistral-7b-chat"]
    header = ["", "sample_id", "prompt", "eval_name", *models]
    header += [f"{m}|model_response" for m in models] + [f"{m}|total_cost" for m in models]
    header += ["oracle_model_to_route_to"]
    rows = [
        [
            "0",
            "mbpp.1",
            "['Write a function to add two numbers.']",
            "mbpp",
            "1.0",
            "0.0",
            "['def add(a, b):\\n    return a + b']",
            "['def add(a,b): return a-b']",
            "0.002",
            "0.0001",
            "gpt-4-1106-preview",
        ],
        [
            "1",
            "mbpp.2",
            "['Write a function to reverse a string.']",
            "mbpp",
            "1.0",
            "1.0",
            "['def rev(s): return s[::-1]']",
            "['def rev(s): return s[::-1]']",
            "0.003",
            "0.0002",
            "mistralai/mistral-7b-chat",
        ],
        [
            "2",
            "mbpp.3",
            "['Write a function to sort a list.']",
            "mbpp",
            "1.0",
            "",
            "['sorted']",
            "",
            "0.001",
            "",
            "gpt-4-1106-preview",
        ],
    ]
    path = folder / "mbpp_train.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def write_llmrouter(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    prices = {
        "small-7b": {"size": "7B", "input_price": 0.2, "output_price": 0.2},
        "large-70b": {"size": "70B", "input_price": 0.9, "output_price": 0.9},
    }
    (folder / "default_llm.json").write_text(json.dumps(prices))
    with open(folder / "train_flat.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["question", "task_name", "ground_truth", "score::small-7b", "score::large-70b"])
        w.writerow(["What is 2+2?", "gsm8k", "4", "1.0", "1.0"])
        w.writerow(["Name the capital of France.", "natural_qa", "Paris", "0.0", "1.0"])
        w.writerow(
            ["Write a poem about cats using: cat, mat, hat", "commongen", "", "0.57", "0.66"]
        )
    items = [
        {"question": "What is 2+2?", "scores": {"small-7b": 1.0, "large-70b": 1.0}, "cluster_id": 3}
    ]
    (folder / "dcrouter_train.json").write_text(json.dumps(items))
    return folder


def write_mmlu_pro(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)

    def write(name: str, header: list[str], rows: list[list[str]]) -> None:
        with gzip.open(folder / f"{name}.csv.gz", "wt", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(header)
            w.writerows(rows)

    write(
        "questions",
        ["question_id", "category", "src", "answer", "question", "options"],
        [
            ["1", "math", "ori", "B", "What is 1+1?", json.dumps(["1", "2", "3"])],
            ["2", "law", "ori", "A", "Is a contract binding?", json.dumps(["Yes", "No"])],
        ],
    )
    models = ["Llama-2-7b-hf", "Meta-Llama-3_1-70B-Instruct"]
    write("correct", ["question_id", *models], [["1", "0", "1"], ["2", "1", ""]])
    write("output_chars", ["question_id", *models], [["1", "400", "800"], ["2", "40", ""]])
    return folder
