"""Calibration on a hub dataset: the split is always given, defaulted per dataset, and a
dataset that cannot be had fails as CalibrationDatasetFailed naming spec.calibration.dataset
or .split and the fix, not as a refused recipe.

llm-compressor 0.14 runs for real: its registry, its loader (``get_processed_dataset``, the
function ``oneshot`` calls) and `datasets`' ``load_dataset`` of the hub id, which in offline
mode finds the stand-in copy of HuggingFaceH4/ultrachat_200k (tests/doubles/hub_dataset)
with the dataset's real split names: train_sft, test_sft, train_gen, test_gen, no `train`."""

from __future__ import annotations

from pathlib import Path

import pytest

from qeval.api.quantizedmodel import CALIBRATION_ALIASES, CALIBRATION_DATASETS, Calibration
from qeval.stages.envelope import StageError
from tests.doubles.hub_dataset import ULTRACHAT_SPLITS, cache_hub_dataset, ultrachat_rows


@pytest.mark.parametrize(
    ("calibration", "registry_name", "split"),
    [
        ({"dataset": "ultrachat_200k"}, "ultrachat_200k", "train_sft[:512]"),
        ({"dataset": "ultrachat_200k", "numSamples": 64}, "ultrachat_200k", "train_sft[:64]"),
        ({"dataset": "HuggingFaceH4/ultrachat_200k"}, "ultrachat_200k", "train_sft[:512]"),
        ({"dataset": "ultrachat"}, "ultrachat_200k", "train_sft[:512]"),
        ({"dataset": "open_platypus", "numSamples": 128}, "open_platypus", "train[:128]"),
        ({}, "open_platypus", "train[:512]"),
        ({"dataset": "c4"}, "c4", "train[:512]"),
        ({"dataset": "ultrachat_200k", "split": "test_gen"}, "ultrachat_200k", "test_gen"),
        ({"dataset": "demo"}, None, None),
        ({"path": "/data/calib.jsonl"}, None, None),
    ],
)
def test_the_split_read_is_the_datasets_training_split_cut_to_num_samples(
    calibration, registry_name, split
):
    c = Calibration.model_validate(calibration)
    assert (c.registry_name, c.effective_split) == (registry_name, split)


@pytest.mark.parametrize(
    "split", ["train", "train_sft[:512]", "train[10%:20%]+test", "validation[-100:]", "a.b[3:]"]
)
def test_split_expressions_of_datasets_are_accepted(split):
    assert Calibration(dataset="ultrachat_200k", split=split).split == split


def test_the_known_datasets_are_llm_compressors_and_load_the_hub_ids_listed():
    """Each name (and alias) is in llm-compressor's real registry, and its entry loads the
    hub dataset the table says; gsm8k and wikitext set no hub config, hence ours."""
    from llmcompressor.args import DatasetArguments
    from llmcompressor.transformers.data import TextGenerationDataset

    for name in [*CALIBRATION_DATASETS, "ultrachat"]:
        known = CALIBRATION_DATASETS[CALIBRATION_ALIASES.get(name, name)]
        entry = TextGenerationDataset.load_from_registry(
            name, dataset_args=DatasetArguments(dataset=name), split=known.split, processor=None
        )
        assert entry.dataset_args.dataset == known.hub_id, name
        assert entry.split == known.split, name
        if known.config is not None:
            assert entry.dataset_args.dataset_config_name is None, name


@pytest.fixture
def ultrachat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The stand-in HuggingFaceH4/ultrachat_200k, 20 rows a split, in an empty datasets cache."""
    import datasets

    cache = tmp_path / "datasets"
    splits = {s: ultrachat_rows(s, 20) for s in ULTRACHAT_SPLITS}
    cache_hub_dataset(cache, "HuggingFaceH4/ultrachat_200k", splits)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(cache))
    return cache


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from qeval.demo.model import demo_model_path

    return AutoTokenizer.from_pretrained(demo_model_path())


def texts(dataset, tokenizer) -> list[str]:
    return [tokenizer.decode(ids) for ids in dataset["input_ids"]]


def test_llm_compressor_given_no_split_fails_on_ultrachat(ultrachat, tokenizer):
    """What qeval used to send: the dataset's name and no split."""
    from llmcompressor.args import DatasetArguments
    from llmcompressor.datasets import get_processed_dataset

    args = DatasetArguments(dataset="ultrachat_200k", max_seq_length=64)
    with pytest.raises(ValueError, match="No split specified and 'train' split not found"):
        get_processed_dataset(args, processor=tokenizer)


def test_calibration_reads_the_first_num_samples_rows_of_train_sft(ultrachat, tokenizer):
    from qeval.stages.quantize import calibration_dataset

    calibration = Calibration(dataset="ultrachat_200k", num_samples=8, max_seq_length=64)
    got = texts(calibration_dataset(calibration, tokenizer), tokenizer)
    assert len(got) == 8
    for i, text in enumerate(got):
        assert f"hello train_sft row {i}" in text, text


def test_a_named_split_of_the_hub_id_is_read(ultrachat, tokenizer):
    from qeval.stages.quantize import calibration_dataset

    calibration = Calibration(dataset="HuggingFaceH4/ultrachat_200k", split="test_gen[:3]")
    got = texts(calibration_dataset(calibration, tokenizer), tokenizer)
    assert len(got) == 3 and all("hello test_gen row" in t for t in got), got


def failure(calibration: Calibration, tokenizer) -> StageError:
    from qeval.stages.quantize import calibration_dataset

    with pytest.raises(StageError) as e:
        calibration_dataset(calibration, tokenizer)
    assert e.value.reason == "CalibrationDatasetFailed", str(e.value)
    return e.value


def test_a_split_the_dataset_lacks_names_spec_calibration_split_and_its_splits(
    ultrachat, tokenizer
):
    # llm-compressor maps a bare `train` to `train_sft` for ultrachat, not a sliced one.
    message = str(failure(Calibration(dataset="ultrachat_200k", split="train[:8]"), tokenizer))
    assert "spec.calibration.split 'train[:8]'" in message
    assert "train_sft" in message and "e.g. train_sft[:512]" in message


def test_a_name_llm_compressor_does_not_know_is_a_dataset_error(ultrachat, tokenizer):
    message = str(failure(Calibration(dataset="no_such_dataset"), tokenizer))
    assert "spec.calibration.dataset 'no_such_dataset'" in message
    assert "llm-compressor has no dataset named" in message
    assert "ultrachat_200k" in message and "spec.calibration.path" in message


def test_a_dataset_that_cannot_be_downloaded_is_a_dataset_error(ultrachat, tokenizer):
    # Offline, and open_platypus is not in the cache: what a pod without hub access meets.
    message = str(failure(Calibration(dataset="open_platypus"), tokenizer))
    assert "spec.calibration.dataset 'open_platypus' (garage-bAInd/Open-Platypus)" in message
    assert "could not be loaded" in message and "spec.hfTokenSecret" in message
