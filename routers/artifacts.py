"""Trained strategy state as versioned artifacts on disk.

Layout: ``<artifacts_dir>/<strategy>/<version>/`` with ``meta.json`` (strategy, version,
creation time, options, the training data's name/fingerprint/models, metrics, library
versions, and the SHA-256 of every state file) and ``state.joblib`` (numpy arrays, lists and
scikit-learn estimators). Versions are ``v0001``, ``v0002``, …; ``latest`` is the highest.

A version folder is written under a temporary name and renamed into place, so a reader never
sees half an artifact and two trainers never claim one version. ``state.joblib`` is a pickle:
load artifacts you trained or trust, like any scikit-learn model file; its checksum is
verified against ``meta.json`` before it is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from orchestrator.errors import ConfigError

ARTIFACT_FORMAT = 1
STATE_FILE = "state.joblib"
META_FILE = "meta.json"
_VERSION = re.compile(r"^v(\d+)$")


@dataclass(frozen=True)
class Artifact:
    """One trained version: its metadata and its (loaded) state."""

    strategy: str
    version: str
    meta: dict[str, Any]
    state: dict[str, Any] = field(repr=False)
    path: Path | None = None


class ArtifactStore:
    """Versioned artifacts under ``root`` (the config's ``artifacts_dir``)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def versions(self, strategy: str) -> list[str]:
        """Saved versions of ``strategy``, oldest first."""
        folder = self.root / strategy
        if not folder.is_dir():
            return []
        found = [
            (int(m.group(1)), p.name)
            for p in folder.iterdir()
            if (m := _VERSION.match(p.name)) and (p / META_FILE).is_file()
        ]
        return [name for _, name in sorted(found)]

    def resolve(self, strategy: str, ref: str = "latest") -> Path:
        """The folder of ``ref``: 'latest', a version ('v0003') or a path to a version folder."""
        candidate = Path(ref).expanduser()
        if ref not in ("latest",) and not _VERSION.match(ref) and (candidate / META_FILE).is_file():
            return candidate
        if ref == "latest":
            versions = self.versions(strategy)
            if not versions:
                raise ConfigError(
                    f"no trained '{strategy}' artifact under {self.root / strategy}; "
                    "train one with "
                    f"`orchestrator train {strategy} --dataset ...` or set "
                    f"routing.strategies.{strategy}.artifact to a version folder"
                )
            return self.root / strategy / versions[-1]
        folder = self.root / strategy / ref
        if not (folder / META_FILE).is_file():
            raise ConfigError(
                f"artifact '{ref}' of strategy '{strategy}' not found at {folder}; "
                f"saved versions: {', '.join(self.versions(strategy)) or 'none'}"
            )
        return folder

    def load(self, strategy: str, ref: str = "latest") -> Artifact:
        import joblib

        folder = self.resolve(strategy, ref)
        meta = json.loads((folder / META_FILE).read_text())
        if meta.get("strategy") != strategy:
            raise ConfigError(
                f"{folder} holds a '{meta.get('strategy')}' artifact, not a '{strategy}' one"
            )
        if meta.get("format", 0) > ARTIFACT_FORMAT:
            raise ConfigError(f"{folder} has artifact format {meta['format']}; upgrade to read it")
        expected = meta.get("files", {}).get(STATE_FILE)
        state_path = folder / STATE_FILE
        if expected is not None and _sha256(state_path) != expected:
            raise ConfigError(f"{state_path} does not match the checksum in its meta.json")
        state = joblib.load(state_path)
        return Artifact(strategy, str(meta["version"]), meta, state, folder)

    def save(
        self,
        strategy: str,
        state: dict[str, Any],
        *,
        options: dict[str, Any],
        dataset: dict[str, Any],
        metrics: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Artifact:
        """Write a new version and return it (with ``path`` set)."""
        import joblib

        folder = self.root / strategy
        folder.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder))
        try:
            joblib.dump(state, tmp / STATE_FILE, compress=3)
            for _ in range(100):
                existing = self.versions(strategy)
                number = int(existing[-1][1:]) + 1 if existing else 1
                version = f"v{number:04d}"
                meta = describe(strategy, version, options, dataset, metrics, extra)
                meta["files"] = {STATE_FILE: _sha256(tmp / STATE_FILE)}
                (tmp / META_FILE).write_text(
                    json.dumps(meta, indent=2, sort_keys=True, default=str)
                )
                try:
                    os.rename(tmp, folder / version)  # atomic; fails if the version exists
                except OSError:
                    continue
                return Artifact(strategy, version, meta, state, folder / version)
            raise RuntimeError(f"could not claim a new version under {folder}")
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


def describe(
    strategy: str,
    version: str,
    options: dict[str, Any],
    dataset: dict[str, Any],
    metrics: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The metadata of an artifact, also used for in-memory (unsaved) ones."""
    import numpy

    libraries = {"python": platform.python_version(), "numpy": numpy.__version__}
    try:
        import sklearn

        libraries["scikit-learn"] = sklearn.__version__
    except ImportError:  # pragma: no cover - sklearn ships with the cpu extra
        pass
    return {
        "format": ARTIFACT_FORMAT,
        "strategy": strategy,
        "version": version,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "options": options,
        "dataset": dataset,
        "metrics": metrics or {},
        "libraries": libraries,
        **(extra or {}),
    }


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
