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

import copy
import json
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
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}


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
            crd = yaml.safe_load(path.read_text())
            if crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                if version.get("served", True):
                    raw = version["schema"]["openAPIV3Schema"]
                    self._crds[(f"{group}/{version['name']}", kind)] = raw
        if not self._crds:
            raise FileNotFoundError(f"no CustomResourceDefinition found in {crd_dir}")
        latest = kubernetes_validate.latest_version()
        definitions = schema_contents(
            f"kubernetes-json-schema/v{latest}-local-strict/_definitions.json", latest
        )
        self._registry: Registry[Any] = Resource.from_contents(definitions) @ Registry()
        self._object_meta_ref = f"{definitions['$id']}#/$defs/{OBJECT_META}"
        self._custom: dict[tuple[str, str], Callable[[dict[str, Any]], None]] = {
            ("monitoring.coreos.com/v1", "ServiceMonitor"): _validate_service_monitor,
        }

    @property
    def crd_kinds(self) -> set[tuple[str, str]]:
        return set(self._crds)

    def kind_of(self, obj: dict[str, Any]) -> str:
        """'builtin', 'crd' or 'custom': which check an object gets."""
        key = (obj["apiVersion"], obj["kind"])
        if key in self._crds:
            return "crd"
        if key in self._custom:
            return "custom"
        return "builtin"

    def validate(self, obj: dict[str, Any]) -> None:
        key = (obj.get("apiVersion", ""), obj.get("kind", ""))
        if key in self._crds:
            self._validate_crd(obj, self._crds[key])
        elif key in self._custom:
            self._custom[key](obj)
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

    def _validate_crd(self, obj: dict[str, Any], raw: dict[str, Any]) -> None:
        schema = structural_to_jsonschema(copy.deepcopy(raw))
        # The API server checks metadata itself (the CRD schema only says "object").
        schema["properties"]["metadata"] = {"$ref": self._object_meta_ref}
        validator = jsonschema.Draft202012Validator(
            schema, registry=self._registry, format_checker=self._checker
        )
        errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
        if errors:
            lines = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:10]]
            raise InvalidObject(f"{describe(obj)} does not match its CRD:\n  " + "\n  ".join(lines))
        name = obj["metadata"].get("name", "")
        limit = KUBERAY_MAX_NAME.get(obj["kind"])
        if limit is not None and (len(name) > limit or not DNS1035.match(name)):
            raise InvalidObject(
                f"{describe(obj)}: KubeRay wants a DNS-1035 name of at most {limit} characters"
            )


def _dropped(sent: Any, kept: Any, path: str = "") -> list[str]:
    """Paths present in what was sent but missing from what the model kept."""
    if isinstance(sent, dict):
        if not isinstance(kept, dict):
            return [path or "<root>"]
        missing = []
        for key, value in sent.items():
            sub = f"{path}.{key}" if path else key
            missing += [sub] if key not in kept else _dropped(value, kept[key], sub)
        return missing
    if isinstance(sent, list) and isinstance(kept, list):
        return [
            m
            for i, (s, k) in enumerate(zip(sent, kept, strict=False))
            for m in _dropped(s, k, f"{path}[{i}]")
        ]
    return []


def _validate_service_monitor(obj: dict[str, Any]) -> None:
    import pydantic
    from cloudcoil.models.prometheus_operator.v1 import ServiceMonitor

    try:
        model = ServiceMonitor.model_validate(obj)
    except pydantic.ValidationError as e:
        raise InvalidObject(f"{describe(obj)}: {e}") from None
    kept = json.loads(model.model_dump_json(by_alias=True, exclude_unset=True))
    unknown = _dropped(obj, kept)
    if unknown:
        raise InvalidObject(f"{describe(obj)}: unknown fields {unknown}")
