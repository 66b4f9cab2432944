"""The ``config`` part of the chart's values.schema.json, generated from the config models.

``values.config`` is the orchestrator config file, so its schema is ``OrchestratorConfig``'s JSON
schema (``orchestrator config schema``) minus the settings the chart owns: ``redis_url`` and
``artifacts_dir`` (set from redis/externalRedis and artifacts) and ``server.api_keys`` (set from
apiKeys, whose values come from a Secret). ``helm install`` then rejects a misspelt or misplaced
setting before anything reaches the cluster. The rest of values.schema.json is written by hand.

After changing orchestrator/config.py, regenerate:

    python -m tests.integration.helm.values_schema --write
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

from orchestrator.config import dump_schema

SCHEMA_PATH = (
    Path(__file__).resolve().parents[3] / "helm" / "expert-orchestrator" / "values.schema.json"
)
# Settings the chart fills in itself, by model ("" is the top level) and field.
CHART_OWNED: dict[str, tuple[str, ...]] = {
    "": ("redis_url", "artifacts_dir"),
    "ServerConfig": ("api_keys",),
}
CONFIG_DESCRIPTION = (
    "The orchestrator config file (orchestrator/config.py), mounted at "
    "/etc/orchestrator/config.yaml. The chart sets redis_url, artifacts_dir and "
    "server.api_keys itself."
)


def _refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"].rsplit("/", 1)[-1]} if isinstance(node.get("$ref"), str) else set()
        for value in node.values():
            found |= _refs(value)
        return found
    if isinstance(node, list):
        return set().union(*(_refs(v) for v in node)) if node else set()
    return set()


def config_schema() -> tuple[dict[str, Any], dict[str, Any]]:
    """(the schema of values.config, the $defs it refers to)."""
    schema = copy.deepcopy(dump_schema())
    defs: dict[str, Any] = schema.pop("$defs", {})
    for model, fields in CHART_OWNED.items():
        target = schema if model == "" else defs[model]
        for name in fields:
            target["properties"].pop(name)
            if name in target.get("required", []):
                target["required"].remove(name)
    schema.pop("title", None)
    schema["description"] = CONFIG_DESCRIPTION
    # Keep only the definitions still reachable once the chart-owned fields are gone.
    reachable: set[str] = set()
    todo = _refs(schema)
    while todo:
        name = todo.pop()
        if name not in reachable:
            reachable.add(name)
            todo |= _refs(defs[name])
    return schema, {name: defs[name] for name in sorted(reachable)}


ANNOTATIONS = frozenset({"description", "title", "default", "examples"})
NAMED_SCHEMAS = frozenset({"properties", "patternProperties", "$defs", "definitions"})


def validating_part(node: Any) -> Any:
    """``node`` without annotation keywords: what decides whether values are accepted. A
    reworded description does not make the chart's copy stale; a new or changed setting does."""
    if isinstance(node, list):
        return [validating_part(v) for v in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in NAMED_SCHEMAS and isinstance(value, dict):
            # Keys here are names (a setting may be called "description"), not keywords.
            out[key] = {name: validating_part(v) for name, v in value.items()}
        elif key not in ANNOTATIONS:
            out[key] = validating_part(value)
    return out


def is_current(values_schema: dict[str, Any]) -> bool:
    return validating_part(generate(values_schema)) == validating_part(values_schema)


def generate(values_schema: dict[str, Any]) -> dict[str, Any]:
    """values_schema with its config part regenerated."""
    out = copy.deepcopy(values_schema)
    out["properties"]["config"], out["$defs"] = config_schema()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite values.schema.json")
    args = parser.parse_args(argv)
    current = json.loads(SCHEMA_PATH.read_text())
    fresh = generate(current)
    if args.write:
        SCHEMA_PATH.write_text(json.dumps(fresh, indent=2) + "\n")
        print(f"wrote {SCHEMA_PATH}")
        return 0
    if not is_current(current):
        print(
            f"{SCHEMA_PATH} is stale; run: python -m tests.integration.helm.values_schema --write"
        )
        return 1
    print(f"{SCHEMA_PATH} is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
