"""What the operator sees of its children and of the QuantizedModels, held in memory.

The decisions read the operator's stage Jobs, model servers' Deployments and result
ConfigMaps, and the QuantizedModels, by owner (``Store``). The store is the operator's own,
not kopf's indexes: kopf makes every handler of every object wait until each object of an
indexed kind has been indexed, and each object that is done wakes all that wait, so a
start among n objects costs O(n²) wake-ups (10⁸ with 1,000 runs and their 10,000 results;
the operator never settled). Instead:

* at startup, before kopf watches anything, ``prime`` lists each kind once (only the
  operator's own children, by label selector, in pages of ``LIST_CHUNK``) and fills the
  store: the first reconcile already sees every child that exists;
* then kopf's watches (label-selected too) keep it current: ``Store.update`` with each
  event; the handlers reconcile an owner when what the store holds of it changed.

Each index maps one key (an owner's uid, a QuantizedModel's name, a reuse key) to the
entries of the objects under it, an object's entry replaced by its next event and dropped
with its deletion. The entries are slim projections (what the decisions read), never the
objects.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from qeval.api.common import GROUP, VERSION
from qeval.k8s import manifests as m
from qeval.k8s.observe import JobState, ServerState, job_state, result_document, server_state
from qeval.k8s.reuse import LABEL_REUSE_KEY, Reused
from qeval.k8s.settings import OperatorSettings
from qeval.stages.envelope import StageResult, StageStatus

K = TypeVar("K")
V = TypeVar("V")
Body = Mapping[str, Any]
ModelRecord = tuple[dict[str, Any], str | None, str]  # a QuantizedModel's spec, phase, message

CHILDREN = {m.MANAGED_BY: m.MANAGER}
RESULTS = {m.MANAGED_BY: m.MANAGER, m.LABEL_RESULT: "true"}
LIST_CHUNK = 500  # objects per page of a list (one page in memory at a time)
# The stage kinds whose result the decisions read (a quantized model's size and scheme, the
# run's status from the aggregate); an evaluation's scores are read by the aggregate stage
# from the claim, never by the operator.
RESULT_READ = frozenset({"quantize", "aggregate"})


def selector(labels: Mapping[str, str]) -> str:
    """A label selector, as the API server takes it: ``a=b,c=d``."""
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))


class Index(Generic[K, V]):
    """Entries by key, kept per object (its uid): an object's entries are replaced by its
    next event and dropped with it; ``get(key)`` is what every object has under ``key``."""

    def __init__(self) -> None:
        self._entries: dict[str, dict[K, V]] = {}
        self._by_key: dict[K, dict[str, V]] = {}

    def put(self, obj: str, entries: Mapping[K, V] | None) -> bool:
        """Set ``obj``'s entries (None: it has none); True if that changed anything."""
        new = dict(entries or {})
        if self._entries.get(obj, {}) == new:
            return False
        self.drop(obj)
        if new:
            self._entries[obj] = new
            for key, value in new.items():
                self._by_key.setdefault(key, {})[obj] = value
        return True

    def drop(self, obj: str) -> bool:
        """Forget ``obj``'s entries; True if it had any."""
        old = self._entries.pop(obj, None)
        for key in old or ():
            under = self._by_key[key]
            del under[obj]
            if not under:
                del self._by_key[key]
        return old is not None

    def get(self, key: K, default: Collection[V] = ()) -> Collection[V]:
        found = self._by_key.get(key)
        return list(found.values()) if found else default

    def __len__(self) -> int:
        return len(self._entries)


# --- what each kind's object contributes (pure functions of the object) -------------------


def _labels(body: Body) -> Mapping[str, str]:
    return body.get("metadata", {}).get("labels") or {}


def slim(doc: StageResult) -> StageResult:
    """What reconcile reads of a result document: its status, reason, message and times,
    and the result itself only where a decision reads it (``RESULT_READ``)."""
    keep = doc.kind in RESULT_READ
    return doc.model_copy(update={"versions": {}, "result": doc.result if keep else None})


def index_jobs(body: Body) -> dict[str, JobState] | None:
    uid = _labels(body).get(m.LABEL_OWNER_UID)
    return {uid: job_state(body)} if uid else None


def index_servers(body: Body) -> dict[str, ServerState] | None:
    uid = _labels(body).get(m.LABEL_OWNER_UID)
    return {uid: server_state(body)} if uid else None


def index_results(body: Body) -> dict[str, StageResult] | None:
    uid = _labels(body).get(m.LABEL_OWNER_UID)
    doc = result_document(body) if uid else None
    return {uid: slim(doc)} if uid and doc else None


def index_result_paths(body: Body) -> dict[str, tuple[str, str]] | None:
    """Where the files of a run's copies of reused evaluations are: (stage, path)."""
    uid = _labels(body).get(m.LABEL_OWNER_UID)
    path = (body.get("metadata", {}).get("annotations") or {}).get(m.ANNOTATION_RESULT_PATH)
    doc = result_document(body) if uid and path else None
    return {uid: (doc.stage, str(path))} if uid and doc else None


def index_reusable(body: Body, config: OperatorSettings) -> dict[tuple[str, str], Reused] | None:
    """Succeeded evaluations by reuse key, with where their result documents are."""
    meta = body.get("metadata", {})
    key = _labels(body).get(LABEL_REUSE_KEY)
    owners = meta.get("ownerReferences") or [{}]
    run = owners[0].get("name") if owners[0].get("kind") == "EvalRun" else None
    doc = result_document(body) if key and run else None
    if doc is None or doc.status != StageStatus.SUCCEEDED:
        return None
    path = str(m.cluster_layout(config, meta["namespace"], str(run)).result_path(doc.stage))
    return {(meta["namespace"], str(key)): Reused(doc, path, _labels(body).get(m.LABEL_OWNER_UID))}


def index_models(body: Body) -> dict[tuple[str, str], ModelRecord]:
    meta, status = body["metadata"], body.get("status") or {}
    conditions: list[dict[str, Any]] = status.get("conditions") or []
    ready = next((c for c in conditions if c.get("type") == "Ready"), {})
    record = (dict(body.get("spec") or {}), status.get("phase"), ready.get("message", ""))
    return {(meta["namespace"], meta["name"]): record}


def index_runs_by_model(body: Body) -> dict[tuple[str, str], str]:
    """The QuantizedModels a run names (their events reconcile it)."""
    meta = body["metadata"]
    candidates = (body.get("spec") or {}).get("candidates") or []
    return {
        (meta["namespace"], str(c["quantizedModel"])): meta["uid"]
        for c in candidates
        if isinstance(c, dict) and c.get("quantizedModel")
    }


# --- the store ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    """One kind the operator watches: its API resource, the labels its objects carry (the
    watch's selector) and what each object contributes to which index."""

    resource: tuple[str, str, str] | tuple[str, str]  # (group, version, plural) / (v1, plural)
    labels: Mapping[str, str]
    indexes: tuple[str, ...]


JOBS = Kind(("batch", "v1", "jobs"), CHILDREN, ("jobs",))
SERVERS = Kind(("apps", "v1", "deployments"), CHILDREN, ("servers",))
RESULT_MAPS = Kind(("v1", "configmaps"), RESULTS, ("results", "result_paths", "reusable"))
MODELS = Kind((GROUP, VERSION, "quantizedmodels"), {}, ("models",))
RUNS = Kind((GROUP, VERSION, "evalruns"), {}, ("runs_by_model",))
PRIMED = (JOBS, SERVERS, RESULT_MAPS, MODELS)  # what ``prime`` lists before the watches start


@dataclass
class Store:
    """The indexes the decisions read, by owner (or name, or reuse key)."""

    config: OperatorSettings
    jobs: Index[str, JobState] = field(default_factory=Index)  # owner uid -> its stage Jobs
    servers: Index[str, ServerState] = field(default_factory=Index)  # -> its model servers
    results: Index[str, StageResult] = field(default_factory=Index)  # -> its result documents
    # owner uid -> (stage, path) of its copies of reused evaluations, where their files are
    result_paths: Index[str, tuple[str, str]] = field(default_factory=Index)
    models: Index[tuple[str, str], ModelRecord] = field(default_factory=Index)  # (ns, name)
    # (namespace, reuse key) -> succeeded results with that key
    reusable: Index[tuple[str, str], Reused] = field(default_factory=Index)
    # (namespace, QuantizedModel) -> uids of the runs that name it
    runs_by_model: Index[tuple[str, str], str] = field(default_factory=Index)

    def entry(self, index: str, body: Body) -> Mapping[Any, Any] | None:
        functions: dict[str, Callable[[Body], Mapping[Any, Any] | None]] = {
            "jobs": index_jobs,
            "servers": index_servers,
            "results": index_results,
            "result_paths": index_result_paths,
            "reusable": lambda b: index_reusable(b, self.config),
            "models": index_models,
            "runs_by_model": index_runs_by_model,
        }
        return functions[index](body)

    def update(self, kind: Kind, body: Body, deleted: bool = False) -> bool:
        """Take in an object of ``kind`` (listed, added, modified or deleted); True if what
        the store holds changed."""
        uid = body["metadata"]["uid"]
        changed = False
        for name in kind.indexes:
            index: Index[Any, Any] = getattr(self, name)
            changed |= index.drop(uid) if deleted else index.put(uid, self.entry(name, body))
        return changed

    def prime(self, pages: Callable[[Kind], Iterator[list[Body]]]) -> dict[str, int]:
        """Fill the store from a list of each kind in ``PRIMED`` (``pages`` yields a kind's
        objects a page at a time); returns how many objects of each kind it took."""
        counts = {}
        for kind in PRIMED:
            counts[kind.resource[-1]] = 0
            for page in pages(kind):
                for body in page:
                    self.update(kind, body)
                counts[kind.resource[-1]] += len(page)
        return counts


def watched(namespace: str, namespaces: Collection[str]) -> bool:
    """Whether the operator watches ``namespace`` (``namespaces``: names or glob patterns,
    as kopf takes them; none: every namespace)."""
    return not namespaces or any(fnmatch.fnmatchcase(namespace, p) for p in namespaces)
