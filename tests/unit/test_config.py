from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.config import load_config
from orchestrator.errors import ConfigError


def write(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / "config.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


BASE = {"experts": [{"name": "a", "backend": "echo", "model": "x"}]}


def test_demo_config_has_a_pool_on_smollm2() -> None:
    cfg = load_config()
    assert len(cfg.experts) >= 3
    assert {e.model for e in cfg.experts} == {"smollm2"}
    assert cfg.routing.default_strategy == "semantic"
    assert cfg.server.host == "127.0.0.1" and cfg.server.port == 8000


def test_yaml_and_env_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, {**BASE, "server": {"port": 9100, "max_messages": 7}})
    assert load_config(path).server.port == 9100
    monkeypatch.setenv("ORCHESTRATOR_SERVER__PORT", "9200")
    monkeypatch.setenv("ORCHESTRATOR_REDIS_URL", "redis://127.0.0.1:1/0")
    cfg = load_config(path)
    assert cfg.server.port == 9200  # env beats the file
    assert cfg.server.max_messages == 7  # the rest of the section stays
    assert cfg.redis_url == "redis://127.0.0.1:1/0"


def test_env_overrides_the_demo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCHESTRATOR_SERVER__PORT", "9300")
    cfg = load_config()
    assert cfg.server.port == 9300
    assert cfg.server.default_temperature == 0.0


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (
            {"experts": [{"name": "a", "backend": "echo", "model": "x", "pirce": 1}]},
            "experts.0.pirce",
        ),
        ({"experts": [{"name": "a", "backend": "vlm", "model": "x"}]}, "experts.0.backend"),
        ({"experts": [{"name": "a", "backend": "openai", "model": "x"}]}, "experts.0.base_url"),
        ({**BASE, "routing": {"default_strategy": "nope"}}, "routing.default_strategy"),
        (
            {**BASE, "routing": {"strategies": {"semantic": {"bogus": 1}}}},
            "routing.strategies.semantic.bogus",
        ),
        ({**BASE, "routing": {"aliases": {"gpt-4o": "missing"}}}, "gpt-4o"),
        ({"experts": [{"name": "a", "backend": "echo", "model": "x"}] * 2}, "unique"),
        ({"experts": []}, "experts"),
        ({"experts": [{"name": "a", "backend": "echo"}]}, "experts.0.model: required"),
        ({**BASE, "server": {"port": -1}}, "server.port"),
        ({**BASE, "server": {"api_keys": [{"name": "k"}]}}, "key_env"),
    ],
)
def test_errors_name_the_field(tmp_path: Path, data: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, data))
    assert needle in info.value.message


def test_unknown_backend_lists_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"valid: echo, .*openai, .*transformers"):
        load_config(write(tmp_path, {"experts": [{"name": "a", "backend": "vlm", "model": "x"}]}))


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("experts: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_config_check_command(tmp_path: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(app, ["config", "check", str(write(tmp_path, BASE))])
    assert ok.exit_code == 0, ok.output
    bad = runner.invoke(
        app,
        [
            "config",
            "check",
            str(write(tmp_path, {"experts": [{"name": "a", "model": "x", "backend": "zz"}]})),
        ],
    )
    assert bad.exit_code == 2
    assert "experts.0.backend" in bad.output


def test_api_key_secret_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MY_KEY", "s3cret")
    cfg = load_config(
        write(tmp_path, {**BASE, "server": {"api_keys": [{"name": "k", "key_env": "MY_KEY"}]}})
    )
    assert cfg.server.api_keys[0].secret() == "s3cret"
    assert "s3cret" not in cfg.model_dump_json()
