"""A hub model is downloaded as transformers and vLLM load it, not as a whole repository:
Llama-3.1's original/*.pth (16 GB) and Mistral's consolidated.safetensors (14.5 GB) would
double the download. The patterns are applied by huggingface_hub's own filter (the one
snapshot_download uses) to the repositories' published file lists."""

from __future__ import annotations

from pathlib import Path

import pytest
from huggingface_hub.utils import filter_repo_objects

from qeval.api.common import ModelSource
from qeval.stages import models
from qeval.stages.envelope import StageError
from qeval.stages.models import download_patterns

LLAMA_31_8B_INSTRUCT = [
    ".gitattributes",
    "LICENSE",
    "README.md",
    "USE_POLICY.md",
    "config.json",
    "generation_config.json",
    "model-00001-of-00004.safetensors",
    "model-00002-of-00004.safetensors",
    "model-00003-of-00004.safetensors",
    "model-00004-of-00004.safetensors",
    "model.safetensors.index.json",
    "original/consolidated.00.pth",
    "original/params.json",
    "original/tokenizer.model",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
]
MISTRAL_7B_INSTRUCT_V03 = [
    ".gitattributes",
    "README.md",
    "config.json",
    "consolidated.safetensors",
    "generation_config.json",
    "model-00001-of-00003.safetensors",
    "model-00002-of-00003.safetensors",
    "model-00003-of-00003.safetensors",
    "model.safetensors.index.json",
    "params.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer.model.v3",
    "tokenizer_config.json",
]
# A repository with PyTorch pickles only, in the layout of facebook/opt-125m.
PICKLES_ONLY = [
    "LICENSE.md",
    "README.md",
    "config.json",
    "flax_model.msgpack",
    "generation_config.json",
    "merges.txt",
    "pytorch_model.bin",
    "special_tokens_map.json",
    "tf_model.h5",
    "tokenizer_config.json",
    "vocab.json",
]


def downloaded(files: list[str]) -> set[str]:
    return set(filter_repo_objects(files, allow_patterns=download_patterns(files)))


def test_llama_31_downloads_its_safetensors_and_tokenizer_not_the_original_weights():
    assert downloaded(LLAMA_31_8B_INSTRUCT) == {
        "config.json",
        "generation_config.json",
        "model-00001-of-00004.safetensors",
        "model-00002-of-00004.safetensors",
        "model-00003-of-00004.safetensors",
        "model-00004-of-00004.safetensors",
        "model.safetensors.index.json",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    }


def test_mistral_downloads_the_shards_not_the_consolidated_copy():
    assert downloaded(MISTRAL_7B_INSTRUCT_V03) == {
        "config.json",
        "generation_config.json",
        "model-00001-of-00003.safetensors",
        "model-00002-of-00003.safetensors",
        "model-00003-of-00003.safetensors",
        "model.safetensors.index.json",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer.model",
        "tokenizer_config.json",
    }


def test_a_repository_without_safetensors_falls_back_to_its_pytorch_weights():
    assert downloaded(PICKLES_ONLY) == {
        "config.json",
        "generation_config.json",
        "merges.txt",
        "pytorch_model.bin",
        "special_tokens_map.json",
        "tokenizer_config.json",
        "vocab.json",
    }
    sharded = ["config.json", "pytorch_model-00001-of-00002.bin"]
    sharded += ["pytorch_model-00002-of-00002.bin", "pytorch_model.bin.index.json"]
    assert downloaded(sharded) == set(sharded)


def test_safetensors_win_where_a_repository_has_both():
    both = ["config.json", "model.safetensors", "pytorch_model.bin"]
    assert downloaded(both) == {"config.json", "model.safetensors"}


def test_a_repository_without_loadable_weights_is_refused_saying_what_it_has():
    with pytest.raises(StageError) as e:
        download_patterns(["config.json", "model-q4_k_m.gguf", "README.md"])
    assert e.value.reason == "ModelNotFound"
    assert "model-q4_k_m.gguf" in str(e.value) and "spec.model.uri" in str(e.value)


def test_resolve_downloads_with_the_patterns_of_the_repositorys_listing(monkeypatch, tmp_path):
    """The wiring, with the hub played by a stand-in: the listing comes from HfApi, the
    download gets the patterns chosen from it."""
    import huggingface_hub
    from huggingface_hub import constants

    calls: list[dict] = []

    def list_repo_files(self, repo_id, revision=None, **_):
        assert (repo_id, revision) == ("meta-llama/Llama-3.1-8B-Instruct", "abc")
        return LLAMA_31_8B_INSTRUCT

    def snapshot_download(repo_id, **kwargs):
        calls.append({"repo_id": repo_id, **kwargs})
        return str(tmp_path)

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", list_repo_files)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    source = ModelSource(uri="meta-llama/Llama-3.1-8B-Instruct", revision="abc")
    assert models.resolve(source) == Path(tmp_path)
    [call] = calls
    chosen = set(filter_repo_objects(LLAMA_31_8B_INSTRUCT, allow_patterns=call["allow_patterns"]))
    assert "original/consolidated.00.pth" not in chosen
    assert {"model-00004-of-00004.safetensors", "tokenizer.json"} <= chosen
    assert call["local_files_only"] is False
