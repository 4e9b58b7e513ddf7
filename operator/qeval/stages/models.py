"""Turning a model reference into a directory the stage can load, and measuring it."""

from __future__ import annotations

import os
from collections.abc import Iterable
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath

from qeval.api.common import VOLUMES_ROOT, ModelSource, model_kind, volume_path
from qeval.stages.envelope import StageError

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")

# What a stage downloads of a hub model repository (fnmatch patterns, as huggingface_hub's
# allow_patterns): what transformers, vLLM and the tokenizers load, by the names they load
# it by, and no more. A whole repository can hold the weights twice over: Llama-3.1's
# original/consolidated.*.pth, Mistral's consolidated.safetensors.
MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",  # sentencepiece, at the top level (not original/tokenizer.model)
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "preprocessor_config.json",
    "processor_config.json",
    "recipe.yaml",  # llm-compressor's record in a compressed-tensors checkpoint
)
# The weights, in transformers' own file names: safetensors where the repository has them,
# else the PyTorch pickles.
SAFETENSORS_WEIGHTS = (
    "model.safetensors",
    "model-*-of-*.safetensors",
    "model.safetensors.index.json",
)
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model-*-of-*.bin", "pytorch_model.bin.index.json")


def download_patterns(files: Iterable[str]) -> list[str]:
    """The allow patterns for a hub repository holding ``files``: the model files and one
    set of weights (safetensors, else ``.bin``); StageError(ModelNotFound) when it holds
    weights in neither form."""
    files = list(files)
    for weights in (SAFETENSORS_WEIGHTS, PICKLE_WEIGHTS):
        if any(fnmatch(f, w) for f in files for w in weights if not w.endswith(".json")):
            return [*MODEL_FILES, *weights]
    found = sorted(f for f in files if f.endswith(WEIGHT_SUFFIXES + (".pth",)))
    raise StageError(
        "ModelNotFound",
        "the repository has no weights transformers loads (model*.safetensors or "
        f"pytorch_model*.bin; it has {', '.join(found[:5]) or 'none'}): point spec.model.uri "
        "at a Hugging Face format checkpoint",
    )


def resolve(source: ModelSource, local_only: bool = False, weights: bool = True) -> Path:
    """A local directory holding the model, or StageError(ModelNotFound) saying why not.

    ``local_only``: never download or build; a model not already here is not found.
    ``weights=False``: a hub model's files without its weights (its tokenizer and config).
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
        from huggingface_hub import HfApi, constants, snapshot_download

        repo = source.uri.removeprefix("hf://")
        try:
            patterns = None  # offline: the snapshot already in the cache, as it is
            if not (local_only or constants.HF_HUB_OFFLINE):
                if weights:
                    files = HfApi().list_repo_files(repo, revision=source.revision)
                    patterns = download_patterns(files)
                else:
                    patterns = list(MODEL_FILES)
            return Path(
                snapshot_download(
                    repo,
                    revision=source.revision,
                    allow_patterns=patterns,
                    local_files_only=local_only,
                )
            )
        except StageError as e:
            raise StageError(e.reason, f"{repo}: {e}") from e
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
