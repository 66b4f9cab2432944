"""Fixtures for the Helm chart tests: a real Helm, the KubeRay CRDs, cached renders.

Nothing here needs a cluster: the chart is rendered with ``helm template`` and every object is
checked offline (tests/integration/helm/kube.py). The CRDs are read from
``$ORCHESTRATOR_K8S_CRDS`` (default ``<repo>/../shared/k8s/crds``), never copied into the repo.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.helm.fetch_helm import helm_binary
from tests.integration.helm.kube import KubeValidator

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "helm" / "expert-orchestrator"
PROFILES = {"cpu-demo": [], "gpu-production": [CHART / "values-gpu-production.yaml"]}
CRD_DIR = Path(os.environ.get("ORCHESTRATOR_K8S_CRDS", ROOT.parent / "shared" / "k8s" / "crds"))
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest known.
K8S_VERSIONS = ("1.25", "1.37")
RELEASE = "eo"
NAMESPACE = "llm"


@dataclass
class Rendered:
    """The objects of one ``helm template`` run."""

    docs: list[dict[str, Any]]
    text: str
    values: dict[str, Any] = field(default_factory=dict)

    def kinds(self) -> list[str]:
        return sorted(d["kind"] for d in self.docs)

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str, name_suffix: str = "") -> dict[str, Any]:
        found = [d for d in self.all(kind) if d["metadata"]["name"].endswith(name_suffix)]
        assert len(found) == 1, f"expected one {kind} *{name_suffix}, got {len(found)}"
        return found[0]

    @property
    def rayservice(self) -> dict[str, Any]:
        return self.one("RayService")

    @property
    def config_text(self) -> str:
        text: str = self.one("ConfigMap", "-config")["data"]["config.yaml"]
        return text

    def worker_groups(self) -> dict[str, dict[str, Any]]:
        groups = self.rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"]
        return {g["groupName"]: g for g in groups}

    def secret_data(self) -> dict[str, dict[str, str]]:
        """Decoded data of the Secrets the chart renders, by name."""
        return {
            s["metadata"]["name"]: {
                k: base64.b64decode(v).decode() for k, v in (s.get("data") or {}).items()
            }
            for s in self.all("Secret")
        }


class HelmError(Exception):
    pass


def run_helm(*args: str | Path) -> str:
    result = subprocess.run(
        [str(helm_binary()), *map(str, args)], capture_output=True, text=True, timeout=120
    )
    if result.returncode != 0:
        raise HelmError(result.stderr.strip() or result.stdout.strip())
    return result.stdout


def merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Helm's merge of values files: maps merge, anything else (lists too) replaces."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


@pytest.fixture(scope="session")
def helm() -> Path:
    return helm_binary()


@pytest.fixture(scope="session")
def kube() -> KubeValidator:
    if not CRD_DIR.is_dir():
        pytest.fail(
            f"KubeRay CRDs not found at {CRD_DIR}: set ORCHESTRATOR_K8S_CRDS to the folder "
            "holding ray.io_rayservices.yaml (shared/k8s/crds)"
        )
    return KubeValidator(CRD_DIR, K8S_VERSIONS)


@pytest.fixture(scope="session")
def render(helm: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Rendered]:
    """``render(profile, overrides)``: ``helm template`` of a profile with a values overlay,
    rendered once per session and argument set."""
    cache: dict[str, Rendered] = {}
    tmp = tmp_path_factory.mktemp("helm-values")

    def _render(profile: str, overrides: dict[str, Any] | None = None) -> Rendered:
        key = json.dumps([profile, overrides], sort_keys=True)
        if key not in cache:
            files = list(PROFILES[profile])
            if overrides:
                extra = tmp / f"values-{len(cache)}.yaml"
                extra.write_text(yaml.safe_dump(overrides))
                files.append(extra)
            args: list[str | Path] = ["template", RELEASE, CHART, "--namespace", NAMESPACE]
            for f in files:
                args += ["-f", f]
            text = run_helm(*args)
            values = yaml.safe_load((CHART / "values.yaml").read_text())
            for f in files:
                values = merged(values, yaml.safe_load(Path(f).read_text()))
            docs = [d for d in yaml.safe_load_all(text) if d]
            cache[key] = Rendered(docs=docs, text=text, values=values)
        return cache[key]

    return _render


def pod_environment(
    container: dict[str, Any],
    rendered: Rendered,
    existing_secrets: dict[str, dict[str, str]],
) -> dict[str, str]:
    """The environment Kubernetes gives ``container``: literal values with $(VAR) expanded,
    secretKeyRefs resolved from the rendered Secrets or from ``existing_secrets`` (those an
    operator creates beforehand). A missing Secret or key fails, as the pod would not start."""
    secrets = {**existing_secrets, **rendered.secret_data()}
    env: dict[str, str] = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = re.sub(
                r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), var["value"]
            )
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            assert ref["name"] in secrets, f"{var['name']}: no Secret {ref['name']}"
            assert ref["key"] in secrets[ref["name"]], f"{var['name']}: no key {ref['key']}"
            env[var["name"]] = secrets[ref["name"]][ref["key"]]
    return env
