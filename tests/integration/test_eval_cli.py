"""``orchestrator train`` and ``orchestrator eval`` end to end on a small RouterBench sample."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from orchestrator.cli import app


def test_eval_writes_table_json_and_plots(shared_data, tmp_path):
    out, artifacts = tmp_path / "results", tmp_path / "artifacts"
    result = CliRunner().invoke(
        app,
        [
            "eval",
            "--dataset",
            "routerbench",
            "--data-dir",
            str(shared_data),
            "--limit",
            "240",
            "--strategies",
            "coe,knn,threshold,random",
            "--out",
            str(out),
            "--artifacts-dir",
            str(artifacts),
            "--no-cache",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "gpt-4-1106-preview" in result.output and "best single model" in result.output
    assert "oracle" in result.output and "AIQ" in result.output
    data = json.loads((out / "routerbench" / "results.json").read_text())
    assert [s["name"] for s in data["strategies"]] == ["coe", "knn", "threshold", "random"]
    assert data["dataset"]["cost_source"].startswith("recorded")
    for png in ("cost_quality.png", "hulls.png"):
        assert (out / "routerbench" / png).stat().st_size > 10_000
    assert (artifacts / "coe" / "v0001" / "meta.json").is_file()


def test_train_saves_a_new_version(shared_data, tmp_path):
    args = [
        "train",
        "coe",
        "--dataset",
        "routerbench",
        "--data-dir",
        str(shared_data),
        "--limit",
        "150",
        "--artifacts-dir",
        str(tmp_path),
        "--no-cache",
    ]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    second = CliRunner().invoke(app, [*args, "--option", "coe.min_confidence=0.5"])
    assert second.exit_code == 0, second.output
    meta = json.loads((tmp_path / "coe" / "v0002" / "meta.json").read_text())
    assert meta["options"]["min_confidence"] == 0.5
    assert meta["dataset"]["name"] == "routerbench" and meta["metrics"]["categories"] == 3
