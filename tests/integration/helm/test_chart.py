"""The Helm chart (helm/expert-orchestrator), rendered by a real Helm and checked offline.

Both profiles (the CPU demo defaults, values-gpu-production.yaml) and the toggles (Redis in the
chart / external / none, Ingress, ServiceMonitor, training as RayJob / Job) lint strictly,
render, and every object validates: built-in kinds against Kubernetes' schemas, RayService and
RayJob against the KubeRay CRDs. On top: the config file the Serve application reads loads with
the real loader and matches the values, GPU expert groups map to worker groups with the GPUs
their replicas ask for, the serveConfigV2 is the one orchestrator.ray_app writes, and no
secret appears in plain text.
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.config import OrchestratorConfig, load_config
from tests.integration.helm import values_schema
from tests.integration.helm.conftest import (
    CHART,
    NAMESPACE,
    PROFILES,
    RELEASE,
    HelmError,
    Rendered,
    pod_environment,
    run_helm,
)
from tests.integration.helm.kube import InvalidObject, KubeValidator

FULLNAME = f"{RELEASE}-expert-orchestrator"
CONFIG_PATH = "/etc/orchestrator/config.yaml"
TRAIN = "orchestrator train coe --config $ORCHESTRATOR_CONFIG --data-dir /artifacts/data"
# Secrets an operator creates before installing (values-gpu-production.yaml names them).
EXISTING_SECRETS = {
    "orchestrator-api-keys": {"admin": "sk-prod-admin-0001", "web-app-key": "sk-prod-web-0002"},
    "orchestrator-redis": {"url": "rediss://:hunter2@redis.prod.internal:6380/1"},
    "huggingface": {"token": "hf_test_token"},
    "my-keys": {"ops-key": "sk-ops-0003"},
}
# name → (profile, values overlay). Between them every toggle is on in one and off in another.
SCENARIOS: dict[str, tuple[str, dict[str, Any]]] = {
    # Redis in the chart with a password, no ingress, no training, created API-key Secret.
    "cpu-demo": ("cpu-demo", {}),
    # External Redis from a Secret, ingress with TLS, ServiceMonitor, four GPU expert groups.
    "gpu-production": ("gpu-production", {}),
    "external-url-ingress-rayjob": (
        "cpu-demo",
        {
            "redis": {"enabled": False},
            "externalRedis": {"url": "redis://redis.shared.svc:6379/2"},
            "ingress": {"enabled": True, "className": "nginx"},
            "training": {"enabled": True, "kind": "RayJob", "entrypoint": TRAIN},
        },
    ),
    "no-redis-job-existing-secrets": (
        "cpu-demo",
        {
            "redis": {"enabled": False},
            "apiKeys": {
                "existingSecret": "my-keys",
                "keys": [{"name": "ops", "scopes": ["user", "admin"], "secretKey": "ops-key"}],
            },
            "artifacts": {"persistence": {"existingClaim": "shared-artifacts"}},
            "training": {"enabled": True, "kind": "Job", "suspend": True, "entrypoint": TRAIN},
            "metrics": {"serviceMonitor": {"enabled": True, "rayMetrics": False}},
        },
    ),
    "minimal": (
        "cpu-demo",
        {
            "apiKeys": {"keys": []},
            "redis": {"auth": {"enabled": False}},
            "artifacts": {"persistence": {"enabled": False}},
            "serviceAccount": {"create": False},
            "probes": {
                "readiness": {"enabled": False},
                "startup": {"enabled": False},
                "liveness": {"enabled": True},
            },
        },
    ),
}


@pytest.fixture(scope="module", params=sorted(SCENARIOS))
def scenario(request: pytest.FixtureRequest, render: Any) -> tuple[str, Rendered]:
    profile, overrides = SCENARIOS[request.param]
    return request.param, render(profile, overrides)


def ray_containers(r: Rendered) -> list[tuple[str, dict[str, Any]]]:
    """(group, container) of the head ("head") and every worker group."""
    cluster = r.rayservice["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    out = [("head", head)]
    for g in cluster["workerGroupSpecs"]:
        out.append((g["groupName"], g["template"]["spec"]["containers"][0]))
    return out


def effective_config(r: Rendered, tmp_path: Path, container: dict[str, Any]) -> Any:
    """The config the Serve app loads in ``container``: the ConfigMap's file under the pod's
    environment (API keys and Redis URL from Secrets), through the real loader."""
    path = tmp_path / "config.yaml"
    path.write_text(r.config_text)
    env = pod_environment(container, r, EXISTING_SECRETS)
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        return load_config(path), env


# -- Helm itself ----------------------------------------------------------------------------


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_lint_strict(helm: Path, profile: str) -> None:
    args: list[str | Path] = ["lint", "--strict", CHART, "--namespace", NAMESPACE]
    for f in PROFILES[profile]:
        args += ["-f", f]
    out = run_helm(*args)
    assert "1 chart(s) linted, 0 chart(s) failed" in out


def test_values_schema_config_part_is_generated_from_the_config_models() -> None:
    current = json.loads(values_schema.SCHEMA_PATH.read_text())
    assert values_schema.is_current(current), (
        "values.schema.json is stale; run: python -m tests.integration.helm.values_schema --write"
    )


# -- every object validates -----------------------------------------------------------------


def test_every_object_validates(scenario: tuple[str, Rendered], kube: KubeValidator) -> None:
    name, r = scenario
    assert r.docs, f"{name} rendered nothing"
    for obj in r.docs:
        kube.validate(obj)
    checked = {kube.kind_of(d) for d in r.docs}
    assert "crd" in checked and "builtin" in checked


def test_toggles_render_the_objects_they_promise(render: Any) -> None:
    def kinds(name: str) -> set[str]:
        profile, overrides = SCENARIOS[name]
        return set(render(profile, overrides).kinds())

    demo = kinds("cpu-demo")
    assert {"RayService", "ConfigMap", "Service", "StatefulSet", "PersistentVolumeClaim"} <= demo
    assert not demo & {"Ingress", "RayJob", "Job", "ServiceMonitor"}
    assert {"Ingress", "ServiceMonitor"} <= kinds("gpu-production")
    assert "StatefulSet" not in kinds("gpu-production")
    assert {"Ingress", "RayJob"} <= kinds("external-url-ingress-rayjob")
    assert {"Job", "ServiceMonitor"} <= kinds("no-redis-job-existing-secrets")
    assert "Secret" not in kinds("no-redis-job-existing-secrets")
    assert "PersistentVolumeClaim" not in kinds("no-redis-job-existing-secrets")
    assert "ServiceAccount" not in kinds("minimal")


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda o: o["spec"]["rayClusterConfig"]["workerGroupSpecs"][0].update(gpus=1), "gpus"),
        (
            lambda o: o["spec"]["rayClusterConfig"]["workerGroupSpecs"][0].pop("groupName"),
            "groupName",
        ),
        (lambda o: o["spec"]["rayClusterConfig"].update(enableInTreeAutoscaling="yes"), "boolean"),
        (lambda o: o["spec"].update(rayClusterDeletionDelaySeconds=2**40), "int32"),
        (lambda o: o["metadata"].update(name="x" * 48), "47"),
        (
            lambda o: o["metadata"].update(labels={"bad key!": "v"}) or o["metadata"].update(uid=1),
            "uid",
        ),
    ],
)
def test_crd_validation_rejects_what_the_api_server_would(
    render: Any, kube: KubeValidator, mutate: Any, expected: str
) -> None:
    obj = json.loads(json.dumps(render("cpu-demo").rayservice))
    kube.validate(obj)
    mutate(obj)
    with pytest.raises(InvalidObject, match=expected):
        kube.validate(obj)


def test_builtin_and_servicemonitor_validation_reject_unknown_fields(
    render: Any, kube: KubeValidator
) -> None:
    r = render(*SCENARIOS["gpu-production"])
    service = json.loads(json.dumps(r.one("Service", FULLNAME)))
    service["spec"]["selectr"] = {}
    with pytest.raises(InvalidObject, match="selectr"):
        kube.validate(service)
    monitor = json.loads(json.dumps(r.one("ServiceMonitor")))
    monitor["spec"]["endpoints"][0]["scrape_interval"] = "30s"
    with pytest.raises(InvalidObject, match="scrape_interval"):
        kube.validate(monitor)


# -- the config the Serve application reads -------------------------------------------------


def test_config_file_loads_and_matches_values(
    scenario: tuple[str, Rendered], tmp_path: Path
) -> None:
    _, r = scenario
    values = r.values
    cfg, env = effective_config(r, tmp_path, ray_containers(r)[-1][1])
    assert isinstance(cfg, OrchestratorConfig)
    # The experts, routing and server settings are the values' (through the real loader).
    from_values = OrchestratorConfig.model_validate(
        {**values["config"], "server": {**values["config"].get("server", {}), "api_keys": []}}
    )
    assert cfg.experts == from_values.experts
    assert cfg.routing == from_values.routing
    assert cfg.server.model_copy(update={"api_keys": []}) == from_values.server
    # API keys: named by key_env only, each resolving to the Secret's value in the pod.
    keys = values["apiKeys"]["keys"] or []
    assert [k.name for k in cfg.server.api_keys] == [k["name"] for k in keys]
    for key, spec in zip(cfg.server.api_keys, keys, strict=True):
        assert key.key is None and key.key_env is not None
        assert key.scopes == spec.get("scopes", ["user"])
        secret = values["apiKeys"]["existingSecret"] or f"{FULLNAME}-api-keys"
        secret_data = {**EXISTING_SECRETS, **r.secret_data()}[secret]
        assert key.secret() is None  # only the pod's environment holds it
        assert env[key.key_env] == secret_data[spec.get("secretKey") or spec["name"]]
    # Redis, as the pod sees it.
    redis, external = values["redis"], values["externalRedis"]
    if redis["enabled"] and redis["auth"]["enabled"]:
        password = r.secret_data()[f"{FULLNAME}-redis"]["redis-password"]
        assert len(password) == 32
        assert cfg.redis_url == f"redis://:{password}@{FULLNAME}-redis:6379/0"
        assert "redis_url" not in yaml.safe_load(r.config_text)
    elif redis["enabled"]:
        assert cfg.redis_url == f"redis://{FULLNAME}-redis:6379/0"
    elif external["existingSecret"]:
        expected = EXISTING_SECRETS[external["existingSecret"]][external["existingSecretKey"]]
        assert cfg.redis_url == expected
    else:
        assert cfg.redis_url == (external["url"] or None)
    persistence = values["artifacts"]["persistence"]
    assert (str(cfg.artifacts_dir) == values["artifacts"]["mountPath"]) == persistence["enabled"]


def test_every_ray_pod_mounts_the_config_and_gets_the_same_environment(
    scenario: tuple[str, Rendered],
) -> None:
    _, r = scenario
    envs = []
    for group, container in ray_containers(r):
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert mounts["/etc/orchestrator"]["readOnly"] is True, group
        if r.values["artifacts"]["persistence"]["enabled"]:
            assert mounts[r.values["artifacts"]["mountPath"]]["readOnly"] is True, group
        envs.append(container.get("env", []))
    assert all(e == envs[0] for e in envs)
    checksums = {
        g["template"]["metadata"]["annotations"]["checksum/config"]
        for g in [
            r.rayservice["spec"]["rayClusterConfig"]["headGroupSpec"],
            *r.worker_groups().values(),
        ]
    }
    # A config change changes the pods' template, so KubeRay rolls the cluster.
    assert checksums == {hashlib.sha256(r.config_text.encode()).hexdigest()}


def test_cpu_demo_serves_the_embedded_demo_pool(render: Any, tmp_path: Path) -> None:
    r = render("cpu-demo")
    cfg, _ = effective_config(r, tmp_path, ray_containers(r)[1][1])
    embedded = load_config(None)

    def pool(c: OrchestratorConfig) -> list[dict[str, Any]]:
        return [e.model_dump(exclude={"resources"}) for e in c.experts]

    assert pool(cfg) == pool(embedded)
    assert [e.name for e in cfg.experts] == ["general", "math", "code", "medical"]
    assert {(e.backend, e.model) for e in cfg.experts} == {("transformers", "smollm2")}
    assert cfg.routing.default_strategy == embedded.routing.default_strategy == "semantic"
    # On Ray the four share one replica (one copy of the weights), and no GPU anywhere.
    assert {e.resources.group for e in cfg.experts} == {"smollm2"}
    assert list(r.worker_groups()) == ["cpu"]
    assert "nvidia.com/gpu" not in r.text


# -- GPU expert groups → worker groups ------------------------------------------------------


def test_gpu_expert_groups_map_to_gpu_worker_groups(render: Any, tmp_path: Path) -> None:
    r = render("gpu-production")
    cfg, _ = effective_config(r, tmp_path, ray_containers(r)[1][1])
    gpu_values = r.values["ray"]["gpuWorkers"]
    groups: dict[str, list[Any]] = {}
    for e in cfg.experts:
        groups.setdefault(e.resources.group or e.name, []).append(e)
    workers = r.worker_groups()
    assert set(workers) == {"cpu"} | {f"gpu-{k}" for k in groups}
    for key, members in groups.items():
        res = [m.resources for m in members]
        gpus = math.ceil(max(x.num_gpus for x in res))
        assert gpus >= 1
        group = workers[f"gpu-{key}"]
        pod = group["template"]["spec"]
        limits = pod["containers"][0]["resources"]["limits"]
        assert limits["nvidia.com/gpu"] == gpus
        assert pod["containers"][0]["resources"]["requests"]["nvidia.com/gpu"] == gpus
        assert group["rayStartParams"]["num-gpus"] == str(gpus)
        assert (group["minReplicas"], group["maxReplicas"]) == (
            max(x.min_replicas for x in res),
            max(x.max_replicas for x in res),
        )
        # A pod fits one replica: its CPUs, and the memory Ray schedules (what the object
        # store leaves), cover the replica's ray_actor_options.
        assert _cpus(limits["cpu"]) >= max(x.num_cpus for x in res)
        memory = _bytes(limits["memory"]) - _object_store(group, limits)
        assert memory >= max(x.memory_gb or 0 for x in res) * 2**30
        placement = {**gpu_values["defaults"], **gpu_values["groups"].get(key, {})}
        assert pod["nodeSelector"] == placement["nodeSelector"]
        assert pod["tolerations"] == placement["tolerations"]
        labels = group["template"]["metadata"]["labels"]
        assert labels["expert-orchestrator/worker-group"] == f"gpu-{key}"
    # The 32B coder runs tensor parallel over two A100s; the others on one L4 each.
    coder = workers["gpu-qwen-coder-32b"]["template"]["spec"]
    assert coder["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert coder["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert "nvidia.com/gpu" not in json.dumps(workers["cpu"])


def _object_store(group: dict[str, Any], limits: dict[str, Any]) -> float:
    """Ray's object store size in a pod: rayStartParams, else 30% of its memory (Ray's
    default)."""
    explicit = group["rayStartParams"].get("object-store-memory")
    return float(explicit) if explicit else 0.3 * _bytes(limits["memory"])


def test_object_stores_fit_in_shared_memory(scenario: tuple[str, Rendered]) -> None:
    _, r = scenario
    shm = _bytes(r.values["ray"]["shmSizeLimit"])
    cluster = r.rayservice["spec"]["rayClusterConfig"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        pod = group["template"]["spec"]
        limits = pod["containers"][0]["resources"]["limits"]
        assert _object_store(group, limits) <= shm, group.get("groupName", "head")
        dshm = {v["name"]: v for v in pod["volumes"]}["dshm"]["emptyDir"]
        assert dshm == {"medium": "Memory", "sizeLimit": r.values["ray"]["shmSizeLimit"]}


def _cpus(q: str | int | float) -> float:
    s = str(q)
    return float(s[:-1]) / 1000 if s.endswith("m") else float(s)


def _bytes(q: str | int) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9}
    s = str(q)
    for suffix, factor in units.items():
        if s.endswith(suffix):
            return float(s[: -len(suffix)]) * factor
    return float(s)


def test_experts_of_one_group_share_a_worker_group(render: Any) -> None:
    experts = [
        {
            "name": "a",
            "model": "m",
            "backend": "vllm",
            "resources": {"num_gpus": 1, "group": "pair"},
        },
        {
            "name": "b",
            "model": "m",
            "backend": "vllm",
            "resources": {"num_gpus": 2, "group": "pair"},
        },
        {"name": "c", "model": "m", "backend": "echo"},
    ]
    r = render("cpu-demo", {"config": {"experts": experts}})
    workers = r.worker_groups()
    assert set(workers) == {"cpu", "gpu-pair"}
    limits = workers["gpu-pair"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == 2  # the largest member's, as the deployment asks


def test_gpu_groups_whose_names_collide_fail_the_render(helm: Path, tmp_path: Path) -> None:
    experts = [
        {"name": "a", "model": "m", "resources": {"num_gpus": 1, "group": "big.model"}},
        {"name": "b", "model": "m", "resources": {"num_gpus": 1, "group": "big_model"}},
    ]
    values = tmp_path / "v.yaml"
    values.write_text(yaml.safe_dump({"config": {"experts": experts}}))
    with pytest.raises(HelmError, match="gpu-big-model"):
        run_helm("template", RELEASE, CHART, "-f", values)


# -- Serve config, probes, Service ----------------------------------------------------------


def test_serve_config_is_the_one_ray_app_writes(
    scenario: tuple[str, Rendered], tmp_path: Path
) -> None:
    ray_app = pytest.importorskip("orchestrator.ray_app", reason="the Ray Serve wiring")
    _, r = scenario
    cfg, _ = effective_config(r, tmp_path, ray_containers(r)[1][1])
    port = r.values["serve"]["port"]
    expected = ray_app.serve_config(cfg, CONFIG_PATH, port=port)
    assert yaml.safe_load(r.rayservice["spec"]["serveConfigV2"]) == expected


def test_serve_config_sizes_mixed_groups_like_ray_app(render: Any, tmp_path: Path) -> None:
    """Groups whose members disagree: the largest value wins, autoscaling if any member is auto,
    memory only when some member sets it, fractional GPUs round up to whole GPUs per pod."""
    ray_app = pytest.importorskip("orchestrator.ray_app", reason="the Ray Serve wiring")
    experts = [
        {
            "name": "a",
            "model": "m",
            "backend": "echo",
            "max_concurrency": 3,
            "resources": {"group": "g1", "num_gpus": 0.5, "num_cpus": 1, "num_replicas": 2},
        },
        {
            "name": "b",
            "model": "m",
            "backend": "echo",
            "resources": {
                "group": "g1",
                "num_gpus": 1.5,
                "memory_gb": 1.3,
                "num_replicas": "auto",
                "min_replicas": 0,
                "max_replicas": 5,
            },
        },
        {"name": "c", "model": "m", "backend": "echo", "resources": {"num_replicas": 3}},
        {
            "name": "d",
            "model": "m",
            "backend": "echo",
            "memory_gb": 7,
            "resources": {"num_cpus": 0.25, "memory_gb": 0.75},
        },
    ]
    r = render("cpu-demo", {"config": {"experts": experts}, "serve": {"port": 8123}})
    cfg, _ = effective_config(r, tmp_path, ray_containers(r)[1][1])
    expected = ray_app.serve_config(cfg, CONFIG_PATH, port=8123)
    assert yaml.safe_load(r.rayservice["spec"]["serveConfigV2"]) == expected
    workers = r.worker_groups()
    assert set(workers) == {"cpu", "gpu-g1"}
    g1 = workers["gpu-g1"]
    assert g1["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert (g1["minReplicas"], g1["maxReplicas"]) == (1, 5)


def test_serve_config_matches_the_serve_config_command(render: Any, tmp_path: Path) -> None:
    exe = [sys.executable, "-m", "orchestrator"]
    probe = subprocess.run([*exe, "serve-config", "--help"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("`orchestrator serve-config` does not exist yet (the Ray Serve wiring adds it)")
    r = render(*SCENARIOS["gpu-production"])
    path = tmp_path / "config.yaml"
    path.write_text(r.config_text)
    out = subprocess.run(
        [*exe, "serve-config", "--config", str(path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    printed = yaml.safe_load(out)
    # The command names the file it was given; on the cluster that file is the mounted one.
    for app in printed["applications"]:
        assert app["args"]["config_path"] in (str(path), CONFIG_PATH)
        app["args"]["config_path"] = CONFIG_PATH
    assert printed == yaml.safe_load(r.rayservice["spec"]["serveConfigV2"])


def test_worker_probes_go_through_serve_and_the_head_keeps_kuberays(
    scenario: tuple[str, Rendered],
) -> None:
    _, r = scenario
    probes = r.values["probes"]
    port = r.values["serve"]["port"]
    for group, container in ray_containers(r):
        if group == "head":
            # KubeRay deploys the app once the head is ready: a head probe on /ready would wait
            # forever, so the head keeps KubeRay's own probes.
            assert not {"readinessProbe", "livenessProbe", "startupProbe"} & set(container)
            continue
        for kind, field in (
            ("readiness", "readinessProbe"),
            ("liveness", "livenessProbe"),
            ("startup", "startupProbe"),
        ):
            if probes[kind]["enabled"]:
                assert container[field]["httpGet"] == {"path": probes[kind]["path"], "port": port}
            else:
                assert field not in container
        serve_ports = [p for p in container["ports"] if p["name"] == "serve"]
        assert serve_ports == [{"name": "serve", "containerPort": port}]


def test_service_and_ingress_reach_the_workers_serve_port(render: Any) -> None:
    r = render(*SCENARIOS["gpu-production"])
    service = r.one("Service", FULLNAME)
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "ray-worker"
    assert service["spec"]["ports"][0]["targetPort"] == "serve"
    for _, template in [(g, w["template"]) for g, w in r.worker_groups().items()]:
        labels = template["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in service["spec"]["selector"].items())
    head_labels = r.rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["metadata"][
        "labels"
    ]
    assert not all(head_labels.get(k) == v for k, v in service["spec"]["selector"].items())
    ingress = r.one("Ingress")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": service["metadata"]["name"], "port": {"name": "http"}}
    assert ingress["spec"]["tls"][0]["secretName"] == "llm-example-com-tls"
    monitor = r.one("ServiceMonitor")
    ports = {p["name"] for p in service["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= ports
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )


# -- training -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["external-url-ingress-rayjob", "no-redis-job-existing-secrets"])
def test_training_mounts_the_artifacts_volume_writable(render: Any, name: str) -> None:
    profile, overrides = SCENARIOS[name]
    r = render(profile, overrides)
    kind = overrides["training"]["kind"]
    job = r.one(kind)
    assert len(job["metadata"]["name"]) <= 47
    if kind == "RayJob":
        assert job["spec"]["entrypoint"] == TRAIN
        assert job["spec"]["shutdownAfterJobFinishes"] is True
        pod = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    else:
        pod = job["spec"]["template"]["spec"]
        assert pod["containers"][0]["command"] == ["sh", "-c", TRAIN]
    assert job["spec"]["suspend"] is overrides["training"].get("suspend", False)
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["artifacts"]["readOnly"] is False
    claim = {v["name"]: v for v in pod["volumes"]}["artifacts"]["persistentVolumeClaim"]
    expected = overrides.get("artifacts", {}).get("persistence", {}).get("existingClaim")
    assert claim["claimName"] == (expected or f"{FULLNAME}-artifacts")


def test_training_needs_an_entrypoint(helm: Path) -> None:
    with pytest.raises(HelmError, match="entrypoint"):
        run_helm("template", RELEASE, CHART, "--set", "training.enabled=true")


# -- secrets --------------------------------------------------------------------------------


def test_no_secret_value_is_rendered_outside_a_secret(scenario: tuple[str, Rendered]) -> None:
    _, r = scenario
    values = [v for data in r.secret_data().values() for v in data.values()]
    values += [v for data in EXISTING_SECRETS.values() for v in data.values()]
    others = yaml.safe_dump_all([d for d in r.docs if d["kind"] != "Secret"])
    for value in values:
        assert value not in others
    for obj in r.all("Secret"):
        assert "stringData" not in obj
    for key in yaml.safe_load(r.config_text)["server"]["api_keys"]:
        assert set(key) == {"name", "key_env", "scopes"}


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (
            {
                "config": {
                    "experts": [{"name": "a", "model": "m"}],
                    "server": {"api_keys": [{"name": "x", "key": "sk-plain"}]},
                }
            },
            "api_keys",
        ),
        ({"apiKeys": {"keys": [{"name": "x", "key": "sk-plain"}]}}, "key"),
        ({"apiKeys": {"keys": [{"name": "x", "value": "sk-plain"}]}}, "value"),
        ({"redis": {"enabled": False}, "externalRedis": {"url": "redis://:pw@host:6379/0"}}, "url"),
        (
            {"config": {"experts": [{"name": "a", "model": "m"}], "redis_url": "redis://h"}},
            "redis_url",
        ),
    ],
)
def test_values_cannot_carry_secrets_in_plain_text(
    helm: Path, tmp_path: Path, values: dict[str, Any], expected: str
) -> None:
    path = tmp_path / "v.yaml"
    path.write_text(yaml.safe_dump(values))
    with pytest.raises(HelmError, match=expected):
        run_helm("template", RELEASE, CHART, "-f", path)
