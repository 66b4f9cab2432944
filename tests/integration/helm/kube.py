"""Offline validation of rendered Kubernetes objects against real schemas.

- Built-in kinds: Kubernetes' own OpenAPI schemas, strict (unknown fields are errors, as with
  ``kubectl apply``'s default server-side field validation), via ``kubernetes-validate``.
- KubeRay kinds (RayService, RayCluster, RayJob): the CRDs' ``openAPIV3Schema`` turned into JSON
  Schema the way the API server reads a structural schema: an object's unknown fields are errors
  unless it carries ``x-kubernetes-preserve-unknown-fields`` (or an ``additionalProperties``
  schema), ``nullable`` admits null, int32/int64 formats are range-checked. Metadata is checked
  against ObjectMeta, and names against KubeRay's own limits. CEL rules
  (``x-kubernetes-validations``) cannot be evaluated offline; the chart sets none of the
  fields that carry them (only ``managedBy`` and the immutability of the GCS FT backend do).
- ServiceMonitor (prometheus-operator): the typed models generated from its CRD
  (cloudcoil-models-prometheus-operator); a field the models do not know is an error.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml
from kubernetes_validate.utils import schema_contents
from referencing import Registry, Resource

# KubeRay derives cluster, service and pod names from these; its controllers reject longer ones
# (MaxRayServiceNameLength / MaxRayJobNameLength = 53 - 6) and non-DNS-1035 names.
KUBERAY_MAX_NAME = {"RayService": 47, "RayJob": 47, "RayCluster": 53}
# libyaml when present: the three CRDs are 3 MB of YAML (≈1 s with it, ≈10 s without).
SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}


def cached_json(name: str, source: bytes, produce: Callable[[], Any]) -> Any:
    """``produce()``, kept as JSON in the cache under ``name`` + the hash of ``source``."""
    digest = hashlib.sha256(source).hexdigest()[:16]
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    path = base / "expert-orchestrator" / "k8s-schemas" / f"{name}-{digest}.json"
    if path.is_file():
        return json.loads(path.read_text())
    value = produce()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    partial.write_text(json.dumps(value))
    partial.replace(path)
    return value


class InvalidObject(AssertionError):
    """A rendered object that the cluster would reject."""


def describe(obj: dict[str, Any]) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def _format_checker() -> jsonschema.FormatChecker:
    checker = jsonschema.FormatChecker()
    for name, (low, high) in INT_RANGES.items():

        def check(value: object, low: int = low, high: int = high) -> bool:
            return not isinstance(value, int) or low <= value <= high

        checker.checks(name)(check)
    return checker


def structural_to_jsonschema(node: Any) -> Any:
    """A CRD's openAPIV3Schema as JSON Schema with the API server's reading of it."""
    if isinstance(node, list):
        return [structural_to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: structural_to_jsonschema(v) for k, v in node.items()}
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    preserve = out.pop("x-kubernetes-preserve-unknown-fields", False)
    is_object = out.get("type") == "object" or "properties" in out
    if is_object and not preserve and "additionalProperties" not in out:
        # A structural schema prunes (and strict field validation rejects) unknown fields.
        out["additionalProperties"] = False
    # Pure annotations for the API server; JSON Schema ignores unknown keywords anyway, but
    # dropping them keeps error messages readable.
    for key in [k for k in out if k.startswith("x-kubernetes-")]:
        if key != "x-kubernetes-validations":
            out.pop(key)
    return out


class KubeValidator:
    """Validates rendered objects; ``validate`` raises :class:`InvalidObject`."""

    def __init__(self, crd_dir: Path, k8s_versions: Iterable[str]) -> None:
        self.k8s_versions = list(k8s_versions)
        self._checker = _format_checker()
        self._crds: dict[tuple[str, str], dict[str, Any]] = {}
        for path in sorted(crd_dir.glob("*.yaml")):
            text = path.read_bytes()
            for api_version, kind, schema in cached_json(
                f"crd-{path.stem}", text, lambda text=text: _crd_schemas(text)
            ):
                self._crds[(api_version, kind)] = schema
        if not self._crds:
            raise FileNotFoundError(f"no CustomResourceDefinition found in {crd_dir}")
        latest = kubernetes_validate.latest_version()
        definitions = schema_contents(
            f"kubernetes-json-schema/v{latest}-local-strict/_definitions.json", latest
        )
        self._registry: Registry[Any] = Resource.from_contents(definitions) @ Registry()
        self._object_meta_ref = f"{definitions['$id']}#/$defs/{OBJECT_META}"
        # Kinds whose schema comes from typed models generated from their CRD, made on first use.
        self._models: dict[tuple[str, str], tuple[str, Callable[[], dict[str, Any]]]] = {
            ("monitoring.coreos.com/v1", "ServiceMonitor"): (
                "cloudcoil-models-prometheus-operator",
                _service_monitor_schema,
            ),
        }

    @property
    def crd_kinds(self) -> set[tuple[str, str]]:
        return set(self._crds)

    def kind_of(self, obj: dict[str, Any]) -> str:
        """'builtin', 'crd' or 'model': which check an object gets."""
        key = (obj["apiVersion"], obj["kind"])
        if key in self._crds:
            return "crd"
        if key in self._models:
            return "model"
        return "builtin"

    def validate(self, obj: dict[str, Any]) -> None:
        key = (obj.get("apiVersion", ""), obj.get("kind", ""))
        if key in self._models and key not in self._crds:
            package, produce = self._models[key]
            version = importlib.metadata.version(package).encode()
            self._crds[key] = cached_json(f"{key[1].lower()}-{package}", version, produce)
        if key in self._crds:
            self._validate_crd(obj, self._crds[key])
        else:
            self._validate_builtin(obj)

    def _validate_builtin(self, obj: dict[str, Any]) -> None:
        for version in self.k8s_versions:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.SchemaNotFoundError as e:
                # No silent pass: a kind without a schema is a failure, not a skip.
                raise InvalidObject(f"{describe(obj)}: {e.message}") from None
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                raise InvalidObject(
                    f"{describe(obj)} is invalid on Kubernetes {e.version} at {path}: {e.message}"
                ) from None

    def _validate_crd(self, obj: dict[str, Any], converted: dict[str, Any]) -> None:
        schema = dict(converted)
        schema["properties"] = dict(schema["properties"])
        # The API server checks metadata itself (the CRD schema only says "object").
        schema["properties"]["metadata"] = {"$ref": self._object_meta_ref}
        validator = jsonschema.Draft202012Validator(
            schema, registry=self._registry, format_checker=self._checker
        )
        errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
        if errors:
            lines = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:10]]
            raise InvalidObject(
                f"{describe(obj)} does not match its schema:\n  " + "\n  ".join(lines)
            )
        name = obj["metadata"].get("name", "")
        limit = KUBERAY_MAX_NAME.get(obj["kind"])
        if limit is not None and (len(name) > limit or not DNS1035.match(name)):
            raise InvalidObject(
                f"{describe(obj)}: KubeRay wants a DNS-1035 name of at most {limit} characters"
            )


def _crd_schemas(text: bytes) -> list[tuple[str, str, dict[str, Any]]]:
    """(apiVersion, kind, JSON Schema) of each served version of a CRD file."""
    crd = yaml.load(text, Loader=SafeLoader)
    if crd.get("kind") != "CustomResourceDefinition":
        return []
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    return [
        (f"{group}/{v['name']}", kind, structural_to_jsonschema(v["schema"]["openAPIV3Schema"]))
        for v in crd["spec"]["versions"]
        if v.get("served", True)
    ]


def _service_monitor_schema() -> dict[str, Any]:
    """ServiceMonitor's JSON Schema from the models generated from its CRD; slow to import
    (≈10 s), hence cached. Unknown fields become errors, as for a CRD."""
    from cloudcoil.models.prometheus_operator.v1 import ServiceMonitor

    schema = ServiceMonitor.model_json_schema(by_alias=True)
    return structural_to_jsonschema(schema)  # type: ignore[no-any-return]
