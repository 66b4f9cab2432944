"""The offline batch job (``orchestrator batch``) over echo experts: every line gets a result or
an explicit error, queries are grouped by expert and routed in batches."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest
from typer.testing import CliRunner

from orchestrator.batch import count_lines, run_batch
from orchestrator.cli import app
from orchestrator.config import OrchestratorConfig, load_config
from orchestrator.errors import ConfigError
from orchestrator.types import Decision, Query
from tests.fakes import KeywordStrategy

EXPERTS = [
    {"name": "alpha", "backend": "echo", "model": "x", "memory_gb": 1},
    {"name": "beta", "backend": "echo", "model": "x", "memory_gb": 1},
    {"name": "gamma", "backend": "echo", "model": "x", "memory_gb": 1},
    {"name": "broken", "backend": "echo", "model": "x", "memory_gb": 1, "engine": {"fail": True}},
]
RECORDING = "tests.unit.test_schedule_batchjob:RecordingStrategy"


class RecordingStrategy(KeywordStrategy):
    """The keyword strategy, remembering the size of every batch it routed."""

    calls: ClassVar[list[int]] = []

    def route(self, queries: Sequence[Query]) -> list[Decision]:
        RecordingStrategy.calls.append(len(queries))
        return super().route(queries)


def make_config(**kw: Any) -> OrchestratorConfig:
    routing = {"default_strategy": RECORDING, **kw.pop("routing", {})}
    return load_config(
        None,
        experts=kw.pop("experts", EXPERTS),
        routing=routing,
        scheduler=kw.pop("scheduler", {"memory_budget_gb": 1, "max_batch_size": 64}),
        **kw,
    )


def request_line(custom_id: str, content: str, model: str = "auto", **body: Any) -> str:
    return json.dumps(
        {
            "custom_id": custom_id,
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": content}], **body},
        }
    )


def read(path: Path) -> dict[str | None, dict[str, Any]]:
    out: dict[str | None, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        assert set(row) == {"id", "custom_id", "response", "error"}
        assert row["id"].startswith("batch_req_")
        out[row["custom_id"]] = row
    return out


def content(row: dict[str, Any]) -> str:
    assert row["error"] is None and row["response"]["status_code"] == 200, row
    text: str = row["response"]["body"]["choices"][0]["message"]["content"]
    return text


async def test_every_line_gets_an_answer_or_an_explicit_error(tmp_path: Path) -> None:
    lines = [
        request_line("ok-direct", "hello beta", model="beta"),
        request_line("ok-routed", "please gamma"),
        "{not json",
        json.dumps({"method": "POST", "url": "/v1/chat/completions", "body": {}}),
        request_line("ok-direct", "again"),  # repeated custom_id
        json.dumps({"custom_id": "emb", "method": "POST", "url": "/v1/embeddings", "body": {}}),
        json.dumps({"custom_id": "get", "method": "GET", "url": "/v1/chat/completions"}),
        json.dumps({"custom_id": "nobody", "method": "POST", "url": "/v1/chat/completions"}),
        json.dumps({"custom_id": "nomsg", "url": "/v1/chat/completions", "body": {"model": "a"}}),
        request_line("toolong", "x", max_tokens=10**6),
        request_line("badstrategy", "x", strategy="nope"),
        request_line("fails", "x", model="broken"),
        "",  # blank lines are not requests
        "[1, 2]",
    ]
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_bytes("\n".join(lines).encode() + b"\n\xff\xfe\n")
    summary = await run_batch(make_config(), src, dst)
    rows = dst.read_text().splitlines()
    assert len(rows) == count_lines(src) == 14 and summary.lines == 14
    assert (summary.ok, summary.failed) == (2, 12)
    by_id = read(dst)
    assert content(by_id["ok-direct"]) == "hello beta"
    assert content(by_id["ok-routed"]) == "please gamma"
    assert by_id["ok-routed"]["response"]["body"]["routing"]["answered_by"] == ["gamma"]
    codes = sorted(json.loads(r)["error"]["code"] for r in rows if json.loads(r)["error"])
    assert codes == sorted(
        [
            "invalid_json",
            "missing_custom_id",
            "duplicate_custom_id",
            "invalid_url",
            "invalid_method",
            "missing_body",
            "invalid_request",
            "invalid_encoding",
        ]
    )
    for cid, status, param in [
        ("nomsg", 400, "messages"),
        ("toolong", 400, "max_tokens"),
        ("badstrategy", 400, "strategy"),
        ("fails", 502, None),
    ]:
        response = by_id[cid]["response"]
        assert response["status_code"] == status, cid
        assert set(response["body"]["error"]) == {"message", "type", "param", "code"}
        assert response["body"]["error"]["param"] == param


async def test_groups_by_expert_and_routes_in_one_batch(tmp_path: Path) -> None:
    RecordingStrategy.calls.clear()
    names = ["alpha", "beta", "gamma"]
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(request_line(f"q{i}", f"to {names[i % 3]}") + "\n" for i in range(30)))
    summary = await run_batch(make_config(), src, dst)
    by_id = read(dst)
    assert summary.ok == 30
    for i in range(30):
        assert content(by_id[f"q{i}"]) == f"to {names[i % 3]}"
        assert by_id[f"q{i}"]["response"]["body"]["model"] == names[i % 3]
    assert RecordingStrategy.calls == [30]  # routed as one batch
    assert dict(summary.residency.loads_by_expert) == {n: 1 for n in names}
    assert summary.residency.max_resident_experts == 1
    assert sorted(summary.scheduler.batch_sizes.elements()) == [10, 10, 10]


async def test_chunks_keep_the_resident_expert_between_windows(tmp_path: Path) -> None:
    names = ["alpha", "beta", "gamma"]
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(request_line(f"q{i}", f"to {names[i % 3]}") + "\n" for i in range(30)))
    summary = await run_batch(make_config(), src, dst, chunk_lines=10)
    assert summary.ok == 30 and summary.scheduler.rounds == 3
    # 3 loads in the first window, then the expert left resident goes first: 2 per window.
    assert summary.residency.loads == 3 + 2 + 2


async def test_fallback_and_aggregation_run_in_later_rounds(tmp_path: Path) -> None:
    cfg = make_config(
        routing={"strategies": {RECORDING: {"k": 2, "aggregator": "gamma"}}, "max_fallbacks": 2}
    )
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text(request_line("agg", "alpha and beta") + "\n" + request_line("fb", "broken"))
    summary = await run_batch(cfg, src, dst)
    by_id = read(dst)
    assert summary.ok == 2 and summary.scheduler.rounds >= 2
    agg = by_id["agg"]["response"]["body"]
    assert agg["routing"]["answered_by"] == ["alpha", "beta"]
    assert "Several experts answered" in content(by_id["agg"])  # gamma echoed its prompt
    fb = by_id["fb"]["response"]["body"]["routing"]
    assert fb["experts"] == ["broken", "alpha"] and fb["fallback"] is True
    assert ("broken", "error") in {(a["expert"], a["status"]) for a in fb["attempts"]}
    assert sorted(fb["answered_by"]) == ["alpha", "beta"]  # beta stood in for broken


async def test_strategy_option_replaces_the_default(tmp_path: Path) -> None:
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text(request_line("q", "to gamma") + "\n")
    cfg = make_config(routing={"default_strategy": "direct"})
    await run_batch(cfg, src, dst, strategy=RECORDING)
    assert read(dst)["q"]["response"]["body"]["model"] == "gamma"
    with pytest.raises(ConfigError, match="unknown strategy 'nope'"):
        await run_batch(cfg, src, dst, strategy="nope")


def test_cli_writes_results_and_reports_loads(tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        json.dumps(
            {
                "experts": EXPERTS,
                "routing": {"default_strategy": "tests.fakes:KeywordStrategy"},
                "scheduler": {"max_resident_experts": 1},
            }
        )
    )
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(request_line(f"q{i}", f"beta {i}") + "\n" for i in range(5)) + "oops\n")
    result = CliRunner().invoke(
        app, ["batch", str(src), "-o", str(dst), "-c", str(cfg), "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    assert len(dst.read_text().splitlines()) == 6
    assert "6 lines: 5 ok, 1 failed" in result.output
    assert "1 loads (beta 1)" in result.output
    missing = CliRunner().invoke(app, ["batch", str(tmp_path / "no.jsonl"), "-o", str(dst)])
    assert missing.exit_code == 2
