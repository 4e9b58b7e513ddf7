"""The result cache: a content key over what determines a result, and a store on disk.

A result is reused only under the same key. For an evaluation (one model on one task)
the key covers the model's identity (the sha256 of its files' contents, or a Hugging
Face id at a pinned commit), the task (name, shots, limit, and the contents of the task
folders that can define it), the harness version, the backend with its settings and
library versions, and the seed. For a quantization it covers the base model's identity,
the recipe, the calibration data, the output folder and the quantizer's versions.

Keys are sha256 hex (64 characters).

On disk (``<root>`` is ``<workdir>/cache`` under ``qeval run``)::

    <root>/evaluate/<key[:2]>/<key>/entry.json     the task's slice of lm-eval's results
    <root>/evaluate/<key[:2]>/<key>/samples/*.jsonl its per-sample logs
    <root>/quantize/<key>.json                     a quantize result and its output digest
    <root>/judge/<key[:2]>/<key>.json              a candidate's judgements on a judged set
    <root>/digests/<hash of path>.json             content digests, remembered per folder

Content digests are remembered with each file's size, mtime, ctime and inode: a file
rewritten in place changes its ctime (which no user call can set back), so a stale
digest is never used.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

CACHE_FORMAT = 1  # bump when what an entry holds changes
_CHUNK = 1 << 20

# lm-eval results keys that map a task name to something about that task.
PER_TASK_KEYS = (
    "results",
    "groups",
    "group_subtasks",
    "configs",
    "versions",
    "n-shot",
    "higher_is_better",
    "n-samples",
)


def canonical(value: Any) -> str:
    """A JSON text that is the same for equal values (sorted keys, no spaces)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def key_of(fields: Any) -> str:
    """The sha256 hex of the canonical form of ``fields`` (any JSON-able value)."""
    return hashlib.sha256(canonical(fields).encode()).hexdigest()


def installed_version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def evaluation_fields(
    *,
    model: str,
    task: str,
    num_fewshot: int | None,
    limit: int | float | None,  # a count, or a fraction of the documents (0.1 is not 1)
    task_config: str | None,
    harness_version: str | None,
    backend: str,
    backend_config: Mapping[str, Any],
    seed: int,
    prompt: Mapping[str, Any] | None = None,
    task_metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What determines one model's result on one task (what its cache key hashes). The
    prompt settings and the tasks' metadata count where they are set (lm-eval's defaults
    leave the key as it was)."""
    return {
        **({"prompt": dict(prompt)} if prompt else {}),
        **({"taskMetadata": dict(task_metadata)} if task_metadata else {}),
        "format": CACHE_FORMAT,
        "kind": "evaluate",
        "model": model,
        "task": {"name": task, "numFewshot": num_fewshot, "limit": limit},
        "taskConfig": task_config,
        "harness": harness_version,
        "backend": {"name": backend, **backend_config},
        "seed": seed,
    }


def quantization_fields(
    *,
    model: str,
    recipe: str,
    scheme: str,
    calibration: Mapping[str, Any] | None,
    output_dir: str,
    seed: int,
    libraries: Mapping[str, str | None],
) -> dict[str, Any]:
    """What determines a quantized model (what its cache key hashes)."""
    return {
        "format": CACHE_FORMAT,
        "kind": "quantize",
        "model": model,
        "recipe": recipe,
        "scheme": scheme,
        "calibration": calibration,
        "output": output_dir,
        "seed": seed,
        "libraries": dict(libraries),
    }


# --- content identity ------------------------------------------------------------------


def _files(root: Path) -> list[Path]:
    """Regular files under ``root`` in a stable order, skipping hidden ones and bytecode."""
    out = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
        out += [Path(folder) / n for n in sorted(names) if not n.startswith(".")]
    return out


def _signature(root: Path, files: list[Path]) -> list[list[Any]]:
    sig = []
    for f in files:
        st = f.stat()
        sig.append(
            [str(f.relative_to(root)), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        )
    return sig


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def tree_digest(root: Path, memo: Path | None = None) -> str:
    """sha256 over the relative paths and contents of every file under ``root``.

    With ``memo`` (a folder), the digest is remembered with each file's size, mtime,
    ctime and inode, and recomputed only when one of those changes.
    """
    root = root.resolve()
    files = _files(root)
    sig = _signature(root, files)
    memo_file = None
    if memo is not None:
        memo_file = memo / f"{hashlib.sha256(str(root).encode()).hexdigest()[:32]}.json"
        try:
            saved = json.loads(memo_file.read_text())
            if saved.get("signature") == sig and saved.get("path") == str(root):
                return str(saved["digest"])
        except (OSError, ValueError):
            pass
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.relative_to(root)}\0{_file_sha256(f)}\0".encode())
    digest = h.hexdigest()
    if memo_file is not None:
        _write_json(memo_file, {"path": str(root), "signature": sig, "digest": digest})
    return digest


def hub_identity(repo: str, revision: str | None) -> str:
    """A Hugging Face model's identity: its id at a revision (best a commit hash)."""
    return f"hf:{repo.removeprefix('hf://')}@{revision or 'main'}"


def weights_identity(uri: str, revision: str | None, path: Path, memo: Path | None = None) -> str:
    """Identity of the model at ``path`` (resolved from ``uri``): for a Hugging Face
    snapshot its id at the snapshot's commit, else the digest of the folder's contents."""
    from qeval.api.common import model_kind

    if model_kind(uri) == "huggingface" and path.parent.name == "snapshots":
        return hub_identity(uri, path.name)
    return f"sha256:{tree_digest(path, memo)}"


def task_config_digest(folders: Iterable[Path], memo: Path | None = None) -> str:
    """One digest over the task folders on lm-eval's include path (a task's YAML, data
    and helpers can be anywhere in them, so all of their contents count)."""
    return key_of([tree_digest(f, memo) for f in folders if f.is_dir()])


# --- lm-eval results, one task at a time -----------------------------------------------


def members(results: Mapping[str, Any], task: str) -> list[str]:
    """``task`` and, for a group, every task below it."""
    out = [task]
    for sub in results.get("group_subtasks", {}).get(task, []):
        out += members(results, sub)
    return out


def task_slice(results: Mapping[str, Any], task: str) -> dict[str, Any]:
    """The part of an lm-eval results document about ``task`` (and its subtasks)."""
    names = set(members(results, task))
    out: dict[str, Any] = {}
    for key, value in results.items():
        if key == "samples":
            continue
        if key in PER_TASK_KEYS and isinstance(value, dict):
            out[key] = {k: v for k, v in value.items() if k in names}
        else:
            out[key] = value
    return out


# --- the store -------------------------------------------------------------------------


def _write_json(path: Path, doc: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True))
    tmp.replace(path)  # readers never see half a document


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class CachedTask:
    """One evaluation found in the cache: its slice of lm-eval's results and sample logs."""

    key: str
    task: str
    results: dict[str, Any]
    samples: dict[str, Path]  # leaf task -> JSONL file in the cache
    primary: dict[str, str] = field(default_factory=dict)  # judged task -> metric,filter


class ResultCache:
    """Evaluations and quantizations stored under their keys in a folder."""

    def __init__(self, root: Path):
        self.root = Path(root)

    @property
    def digests(self) -> Path:
        return self.root / "digests"

    def _entry_dir(self, key: str) -> Path:
        return self.root / "evaluate" / key[:2] / key

    def get_task(self, key: str) -> CachedTask | None:
        """The evaluation stored under ``key``, if it is there and whole."""
        folder = self._entry_dir(key)
        try:
            entry = json.loads((folder / "entry.json").read_text())
            samples = {name: folder / "samples" / f"{name}.jsonl" for name in entry["samples"]}
            if entry["key"] != key or not all(p.is_file() for p in samples.values()):
                return None
            primary = entry.get("primary") or {}
            return CachedTask(key, entry["task"], entry["results"], samples, dict(primary))
        except (OSError, ValueError, KeyError, TypeError):  # damaged: a miss, recomputed
            return None

    def put_task(
        self,
        key: str,
        task: str,
        fields: Mapping[str, Any],
        results: Mapping[str, Any],
        samples: Mapping[str, Path],
        source: str | None = None,
        primary: Mapping[str, str] | None = None,
    ) -> None:
        """Store one evaluation (replacing an older entry under the same key), with the
        metric each of its judged tasks is scored on (``primary``)."""
        final = self._entry_dir(key)
        tmp = final.with_name(f".{key}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "samples").mkdir(parents=True)
        for name, path in samples.items():
            shutil.copyfile(path, tmp / "samples" / f"{name}.jsonl")
        entry = {
            "key": key,
            "task": task,
            "fields": dict(fields),
            "results": dict(results),
            "samples": sorted(samples),
            "primary": dict(primary or {}),
            "created": _now(),
            "source": source,
        }
        (tmp / "entry.json").write_text(json.dumps(entry, indent=1, sort_keys=True))
        old = final.with_name(f".{key}.{os.getpid()}.old")
        if final.exists():
            final.replace(old)
        tmp.replace(final)
        shutil.rmtree(old, ignore_errors=True)

    def get_quantization(self, key: str) -> dict[str, Any] | None:
        try:
            entry = json.loads((self.root / "quantize" / f"{key}.json").read_text())
        except (OSError, ValueError):
            return None
        ok = isinstance(entry, dict) and entry.get("key") == key and "outputDigest" in entry
        return entry if ok else None

    def put_quantization(
        self, key: str, fields: Mapping[str, Any], result: Mapping[str, Any], output_digest: str
    ) -> None:
        _write_json(
            self.root / "quantize" / f"{key}.json",
            {
                "key": key,
                "fields": dict(fields),
                "result": dict(result),
                "outputDigest": output_digest,
                "created": _now(),
            },
        )

    def get_judgements(self, key: str) -> dict[str, Any] | None:
        """One candidate's judgements on a judged set, stored under ``key``, if whole."""
        try:
            entry = json.loads((self.root / "judge" / key[:2] / f"{key}.json").read_text())
        except (OSError, ValueError):
            return None
        ok = isinstance(entry, dict) and entry.get("key") == key and "judgements" in entry
        return entry if ok else None

    def put_judgements(self, key: str, fields: Mapping[str, Any], entry: Mapping[str, Any]) -> None:
        _write_json(
            self.root / "judge" / key[:2] / f"{key}.json",
            {"key": key, "fields": dict(fields), **entry, "created": _now()},
        )
