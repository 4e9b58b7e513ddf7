"""A stand-in for a hub dataset: the cache `datasets` leaves after ``load_dataset`` of a hub
id, built from local rows, so that in offline mode ``load_dataset("HuggingFaceH4/...")``
(llm-compressor's own call) finds it, with its real split names, as a pod with a warm cache
would. Nothing is downloaded."""

from __future__ import annotations

import shutil
from pathlib import Path

# HuggingFaceH4/ultrachat_200k's splits: no `train`.
ULTRACHAT_SPLITS = ("train_sft", "test_sft", "train_gen", "test_gen")


def ultrachat_rows(split: str, n: int) -> list[dict]:
    """Rows in ultrachat_200k's schema whose text says which split and row they are."""
    return [
        {
            "prompt": f"question {i}",
            "prompt_id": f"{split}-{i}",
            "messages": [
                {"role": "user", "content": f"hello {split} row {i}"},
                {"role": "assistant", "content": f"answer {i} " * (1 + i % 5)},
            ],
        }
        for i in range(n)
    ]


def cache_hub_dataset(cache: Path, repo_id: str, splits: dict[str, list[dict]]) -> Path:
    """Write ``splits`` into the `datasets` cache folder ``cache`` as the prepared copy of
    hub dataset ``repo_id`` (default config); returns its folder."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    namespace, name = repo_id.split("/")
    work = cache / ".build"
    files = {}
    for split, rows in splits.items():
        path = work / "data" / f"{split}-00000-of-00001.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), path)
        files[split] = str(path)
    from datasets.packaged_modules.parquet.parquet import Parquet

    # Named as the hub dataset, so its files are named as a hub download's (<name>-<split>).
    builder = Parquet(cache_dir=str(work / "prepared"), dataset_name=name, data_files=files)
    builder.download_and_prepare()
    built = Path(builder.cache_dir)  # <work>/prepared/<name>/<config id>/<version>
    # Where a hub download's copy lies: <namespace>___<name>/<config>/<version>/<hash>.
    dest = cache / f"{namespace}___{name}" / "default" / built.name / "stand-in"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(built, dest)
    shutil.rmtree(work)
    return dest
