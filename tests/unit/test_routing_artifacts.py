"""Versioned artifacts: save, list, load 'latest' or a version or a folder; loud failures."""

from __future__ import annotations

import json

import numpy as np
import pytest

from orchestrator.errors import ConfigError
from routers.artifacts import ArtifactStore


def save(store: ArtifactStore, value: float) -> str:
    art = store.save(
        "coe",
        {"models": ["a", "b"], "table": np.array([value, 1.0])},
        options={"cost_weight": value},
        dataset={"name": "routerbench", "fingerprint": "abc"},
        metrics={"acc": value},
    )
    return art.version


def test_versions_increase_and_latest_is_the_newest(tmp_path):
    store = ArtifactStore(tmp_path)
    assert [save(store, 0.1), save(store, 0.2)] == ["v0001", "v0002"]
    assert store.versions("coe") == ["v0001", "v0002"]
    latest = store.load("coe")
    assert latest.version == "v0002"
    assert latest.state["table"].tolist() == [0.2, 1.0]
    assert store.load("coe", "v0001").state["table"][0] == 0.1
    by_path = store.load("coe", str(tmp_path / "coe" / "v0001"))
    assert by_path.version == "v0001"


def test_meta_records_strategy_options_data_metrics_and_checksums(tmp_path):
    store = ArtifactStore(tmp_path)
    save(store, 0.3)
    meta = json.loads((tmp_path / "coe" / "v0001" / "meta.json").read_text())
    assert meta["strategy"] == "coe"
    assert meta["options"] == {"cost_weight": 0.3}
    assert meta["dataset"]["fingerprint"] == "abc"
    assert meta["metrics"] == {"acc": 0.3}
    assert set(meta["files"]) == {"state.joblib"}
    assert "numpy" in meta["libraries"] and meta["created_at"]


def test_missing_artifacts_name_the_fix(tmp_path):
    store = ArtifactStore(tmp_path)
    with pytest.raises(ConfigError, match="orchestrator train coe"):
        store.load("coe")
    save(store, 0.1)
    with pytest.raises(ConfigError, match="saved versions: v0001"):
        store.load("coe", "v0009")


def test_a_tampered_state_file_is_refused(tmp_path):
    store = ArtifactStore(tmp_path)
    save(store, 0.1)
    (tmp_path / "coe" / "v0001" / "state.joblib").write_bytes(b"not the saved state")
    with pytest.raises(ConfigError, match="checksum"):
        store.load("coe")


def test_an_artifact_of_another_strategy_is_refused(tmp_path):
    store = ArtifactStore(tmp_path)
    save(store, 0.1)
    with pytest.raises(ConfigError, match="holds a 'coe' artifact"):
        store.load("knn", str(tmp_path / "coe" / "v0001"))
