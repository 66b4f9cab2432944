"""Bounded load on loopback: 10,000 requests at concurrency 64, no errors, flat memory.

Slow tier (`make test-slow`); the same driver prints the numbers in `python -m bench.peers`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml

from bench.load import drive
from tests.integration.test_faults import server_pid
from tests.server import running_server


@pytest.mark.slow
@pytest.mark.parametrize("model", ["instant", "auto"])
def test_ten_thousand_requests(tmp_path: Path, model: str) -> None:
    cfg = {
        "experts": [
            {"name": "instant", "backend": "echo", "model": "x", "description": "anything"},
            {"name": "other", "backend": "echo", "model": "x", "description": "python code"},
        ],
        "routing": {"default_strategy": "semantic"},
        "server": {"log_level": "warning"},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with running_server(path) as url:
        body = {"model": model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}
        result = asyncio.run(
            drive(url + "/v1/chat/completions", body, 10_000, 64, [server_pid(url)])
        )
    print(result.line(model), result.rss_samples_mb)
    assert result.errors == 0, result.statuses
    assert result.server_rss_mb_before and result.server_rss_mb_after
    # Flat memory: growth over 10,000 requests stays small (no per-request leak).
    assert result.server_rss_mb_after - result.server_rss_mb_before < 64
