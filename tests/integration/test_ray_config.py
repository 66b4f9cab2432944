"""The Serve config contract (no cluster needed): `orchestrator serve-config` output, the
committed deploy/serve-config.yaml, and how expert resources become deployment options.

The contract other tooling (the Helm chart, `serve deploy`) relies on: one application with
``import_path: orchestrator.ray_app:app_builder`` and ``args: {config_path: ...}``.
"""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from orchestrator.cli import app as cli
from orchestrator.config import ExpertConfig, load_config
from tests.conftest import ROOT

pytest.importorskip("ray.serve")

from orchestrator.ray_app import (
    AppArgs,
    deployment_options,
    expert_groups,
    serve_config,
)

EXAMPLE = ROOT / "examples" / "vllm-ray.yaml"
COMMITTED = ROOT / "deploy" / "serve-config.yaml"
CLUSTER_PATH = "/etc/orchestrator/config.yaml"


def test_committed_serve_config_is_the_generated_one() -> None:
    args = ["serve-config", "--config", "examples/vllm-ray.yaml", "--config-path", CLUSTER_PATH]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert result.stdout == COMMITTED.read_text(), (
        "deploy/serve-config.yaml is stale; regenerate it: orchestrator " + " ".join(args)
    )


def test_serve_config_is_valid_for_serve_and_names_the_builder() -> None:
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(yaml.safe_load(COMMITTED.read_text()))
    (application,) = schema.applications
    assert application.import_path == "orchestrator.ray_app:app_builder"
    assert application.args == {"config_path": CLUSTER_PATH}
    names = [d.name for d in application.deployments]
    assert names == ["ingress", "router", "expert-smollm2"]


def test_demo_pool_config_has_no_args() -> None:
    config = serve_config(load_config(None), None)
    (application,) = config["applications"]
    assert application["args"] == {}  # app_builder({}) serves the embedded demo pool
    assert AppArgs.model_validate(application["args"]).config_path is None
    with pytest.raises(ValueError, match="config_pth"):
        AppArgs.model_validate({"config_pth": "x"})


def _expert(name: str, **resources: object) -> ExpertConfig:
    return ExpertConfig(name=name, backend="echo", model="x", resources=resources)  # type: ignore[arg-type]


def test_groups_take_the_largest_member_resources() -> None:
    members = [
        _expert("a", group="g", num_cpus=1, memory_gb=2, num_replicas=2),
        _expert("b", group="g", num_gpus=1, memory_gb=3),
    ]
    options = deployment_options(members)
    assert options["ray_actor_options"] == {"num_cpus": 1, "num_gpus": 1, "memory": 3 * 2**30}
    assert options["num_replicas"] == 2 and options["max_ongoing_requests"] == 16


def test_auto_replicas_become_autoscaling() -> None:
    options = deployment_options(
        [_expert("a", num_replicas="auto", min_replicas=0, max_replicas=4)]
    )
    assert options["autoscaling_config"] == {"min_replicas": 0, "max_replicas": 4}
    assert "num_replicas" not in options


def test_example_groups() -> None:
    groups = expert_groups(load_config(EXAMPLE))
    assert {name: [e.name for e in members] for name, members in groups.items()} == {
        "expert-smollm2": ["general", "math", "code"]
    }
