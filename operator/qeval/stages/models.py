"""Turning a model reference into a directory the stage can load, and measuring it."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from qeval.api.common import VOLUMES_ROOT, ModelSource, model_kind, volume_path
from qeval.stages.envelope import StageError

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


def resolve(source: ModelSource, local_only: bool = False) -> Path:
    """A local directory holding the model, or StageError(ModelNotFound) saying why not.

    ``local_only``: never download or build; a model not already here is not found.
    """
    kind = model_kind(source.uri)
    if kind == "demo":
        from qeval.demo.model import demo_model_path

        try:
            return demo_model_path(build=not local_only)
        except FileNotFoundError as e:
            raise StageError("ModelNotFound", str(e)) from e
    if kind == "local":
        path = Path(source.uri).expanduser()
    elif kind == "pvc":
        root = os.environ.get("QEVAL_VOLUMES", str(VOLUMES_ROOT))
        path = Path(volume_path(source.uri, PurePosixPath(root)))
    elif kind == "huggingface":
        from huggingface_hub import snapshot_download

        repo = source.uri.removeprefix("hf://")
        try:
            return Path(
                snapshot_download(repo, revision=source.revision, local_files_only=local_only)
            )
        except Exception as e:  # offline, gated, or missing
            raise StageError(
                "ModelNotFound",
                f"cannot get {repo!r} from the Hugging Face hub or its local cache ({e}); "
                "check the id, the revision and the token, or point spec.model.uri at a path",
            ) from e
    else:
        raise StageError(
            "UnsupportedModelSource",
            f"{source.uri}: {kind} models must be copied to a volume first",
        )
    check_model_dir(path)
    return path


def check_model_dir(path: Path) -> None:
    """Raise StageError(ModelNotFound) unless ``path`` is a readable model directory."""
    if not path.is_dir():
        raise StageError("ModelNotFound", f"{path}: no such directory; fix spec.model.uri")
    if not (path / "config.json").is_file():
        raise StageError(
            "ModelNotFound", f"{path}: no config.json, so not a Hugging Face model directory"
        )
    if not os.access(path / "config.json", os.R_OK):
        raise StageError("ModelNotFound", f"{path}/config.json is not readable")


def size_on_disk(path: Path) -> int:
    """Bytes of the weight files in a model directory (what compression shrinks)."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.suffix in WEIGHT_SUFFIXES)
