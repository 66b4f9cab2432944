"""``orchestrator profile``: timing streamed answers, RAPL energy counters (a fake sysfs tree),
and the profiled YAML (echo experts: no models)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import yaml
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.config import ExpertConfig, load_config
from orchestrator.profiling import measure_expert, profiled_config, rapl_zones, read_energy_j
from orchestrator.types import Delta, GenerationRequest
from workers.echo import EchoBackend


def fake_rapl(root: Path) -> Path:
    package = root / "intel-rapl:0"
    package.mkdir(parents=True)
    (package / "energy_uj").write_text("1000000\n")
    core = root / "intel-rapl:0:0"  # a sub-zone: part of the package, must not count twice
    core.mkdir()
    (core / "energy_uj").write_text("500000\n")
    (root / "intel-rapl:1").mkdir()  # unreadable/empty counter: skipped
    return package / "energy_uj"


def test_rapl_zones_are_package_counters_only(tmp_path: Path) -> None:
    counter = fake_rapl(tmp_path)
    assert rapl_zones(tmp_path) == [counter]
    assert read_energy_j([counter]) == 1.0
    assert rapl_zones(tmp_path / "absent") == [] and read_energy_j([]) is None


class MeteredEcho(EchoBackend):
    """Echo that 'spends' 0.5 J per word on a fake RAPL counter while it streams."""

    counter: Path

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        async for d in super().stream(request):
            if d.text:
                used = int(self.counter.read_text()) + 500_000
                self.counter.write_text(str(used))
            yield d


async def test_measure_expert_times_the_stream_and_divides_energy_by_tokens(
    tmp_path: Path,
) -> None:
    counter = fake_rapl(tmp_path)
    backend = MeteredEcho(
        ExpertConfig(name="e", backend="echo", model="x", engine={"reply": "a b c d e f g h"})
    )
    backend.counter = counter
    m = await measure_expert(backend, runs=3, max_tokens=8, zones=[counter])
    assert m.tokens == [8, 8, 8] and m.runs == 3
    assert m.ttft_ms >= 0 and m.ms_per_output_token >= 0
    assert m.energy_j_per_token == 0.5  # 3 runs × 8 words × 0.5 J / 24 tokens
    profile = m.profile({"energy_j_per_token": 9.0})
    assert profile["source"] == "measured" and profile["energy_source"] == "measured"
    assert profile["energy_j_per_token"] == 0.5


def test_without_a_counter_energy_stays_from_config() -> None:
    from orchestrator.profiling import Measured

    m = Measured("e", 12.0, 3.0, None, 2, [8, 8])
    raw = {"experts": [{"name": "e", "profile": {"energy_j_per_token": 0.7}}, {"name": "f"}]}
    out = profiled_config(raw, [m])
    assert out["experts"][0]["profile"] == {
        "ttft_ms": 12.0,
        "ms_per_output_token": 3.0,
        "energy_j_per_token": 0.7,
        "source": "measured",
        "energy_source": "config",
    }
    assert "profile" not in out["experts"][1] and "profile" not in raw["experts"][1]


def test_profile_command_writes_a_valid_profiled_config(tmp_path: Path) -> None:
    config = tmp_path / "pool.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "experts": [
                    {"name": "quick", "backend": "echo", "model": "x"},
                    {
                        "name": "slow",
                        "backend": "echo",
                        "model": "x",
                        "engine": {"delay_ms": 50},
                        "profile": {"ttft_ms": 1, "energy_j_per_token": 0.3},
                    },
                    {"name": "skipped", "backend": "echo", "model": "x"},
                ],
                "routing": {"default_strategy": "semantic"},
            }
        )
    )
    out = tmp_path / "profiled.yaml"
    args = ["profile", "-c", str(config), "-o", str(out), "-e", "quick", "-e", "slow"]
    result = CliRunner().invoke(app, [*args, "--runs", "2", "--max-tokens", "4"])
    assert result.exit_code == 0, result.output
    cfg = load_config(out)
    quick, slow, skipped = cfg.experts
    assert quick.profile.source == slow.profile.source == "measured"
    assert skipped.profile.source == "config"
    assert slow.profile.ttft_ms >= 50 > quick.profile.ttft_ms  # echo's delay_ms is real time
    energy = "measured" if rapl_zones() else "config"
    assert slow.profile.energy_source == energy
    if energy == "config":
        assert slow.profile.energy_j_per_token == 0.3
    bad = CliRunner().invoke(app, ["profile", "-c", str(config), "-e", "nobody"])
    assert bad.exit_code == 2 and "unknown expert" in bad.output
