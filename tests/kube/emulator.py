"""A realistic Kubernetes API server for tests and benchmarks, built on kmock's emulator.

``Cluster`` runs it in a background thread (with its own asyncio loop) on 127.0.0.1 and
writes a kubeconfig for it, so that the ``kubernetes`` client, kopf and the real kubectl
(see ``tests.kube.binaries``) all talk to it over HTTP, as they would to a cluster::

    with Cluster() as cluster:
        cluster.apply_crds(Path("crds"))
        cluster.kubectl("apply", "-f", "examples/evalrun.yaml")  # the real kubectl
        cluster.get("qeval.dev/v1alpha1/evalruns", "default", "demo")  # the stored object

What kmock 0.8 gives and is kept: the aiohttp request handling and its DSL (reactions that a
test adds with ``cluster.emulator[...] << ...`` still take precedence over the emulation,
e.g. to inject a 500), the request log, the object store with every object's history
(``cluster.emulator.objects[...]``), the watch buses, discovery of groups, Status errors.

What ``KubeEmulator`` adds (each was needed by kopf, the python client or kubectl 1.35):

* object lifecycle: ``uid``, one global increasing ``resourceVersion``, ``generation`` (bumped
  only when something outside ``metadata`` and ``status`` changes), ``creationTimestamp``,
  ``generateName``, the namespace taken from the URL, ``kind``/``apiVersion`` filled, 201 on
  create, 409 AlreadyExists, 404 NotFound with proper Status bodies, no-op writes that change
  nothing and emit no event (as etcd-backed servers do);
* the status subresource: create resets ``status`` (as the real strategies do: a test sets
  it with a status patch), writes to the main resource keep it, writes to ``/status`` change
  only ``status``; PUT with a stale ``resourceVersion`` (or a patch that carries one)
  is a 409 Conflict; PUT without one is refused for custom resources (as a real server does);
* patches: RFC 7386 merge-patch (null deletes, kmock's merge raises on type changes),
  JSON-patch (a failed ``test`` is a 422, which kopf relies on), strategic-merge-patch for
  built-in types (approximated: lists merged by the known merge keys such as ``name`` and
  ``type``, ``$patch``/``$setElementOrder``/``$retainKeys`` directives; refused with 415 for
  custom resources, as a real server does) and server-side apply (approximated as a merge
  patch that creates the object when absent; no field ownership);
* lists with ``kind: <Kind>List``, the list ``resourceVersion``, ``limit``/``continue``, label
  selectors (``=``, ``==``, ``!=``, ``in``, ``notin``, ``key``, ``!key``) and field selectors
  (any dotted field, e.g. ``metadata.name``), cluster-wide and per namespace;
* watches that honour ``resourceVersion`` (replay from a bounded history, 410 Expired when it
  is too old), label and field selectors (objects that stop or start matching are sent as
  DELETED/ADDED), ``sendInitialEvents`` with the ``k8s.io/initial-events-end`` bookmark that
  kubectl 1.35 waits for, ``timeoutSeconds``, ``application/json`` streams, DELETED events with
  the last state; watches end when the cluster stops;
* deletion: finalizers (``deletionTimestamp`` set, the object kept until they are gone, no new
  finalizers once deleting), preconditions, ``propagationPolicy`` (Orphan strips the owner
  references; Background and Foreground both delete the dependents in the background) and
  **garbage collection**: when an object is gone, every object whose ``ownerReferences`` all
  point to gone owners is deleted (recursively), dangling references to gone owners are
  removed; an object created with only dangling owners is collected too;
* namespaces: ``default``, ``kube-system``, ``kube-public`` and ``kube-node-lease`` exist;
  creating in a missing namespace is a 404, in a terminating one a 403; deleting a namespace
  deletes its contents, then the namespace;
* CRDs: creating a CustomResourceDefinition serves its resources at once (every served
  version, sharing one storage; kind, list kind, scope, short names, categories, the status
  subresource, printer columns) and reports it Established; deleting it removes its objects;
* discovery of every served resource with kinds, verbs, scope and subresources
  (``jobs/status``...), the built-in types of a real cluster (from kmock's bundled list);
* ``/version`` (v1.35), ``/healthz``, ``/livez``, ``/readyz``; ``/openapi/v3`` documents that
  declare the ``fieldValidation`` parameter, so kubectl's default (strict) validation is left
  to the server (which does not validate) and ``kubectl apply`` works with no flags;
  ``/openapi/v2`` answers 406 to protobuf (kubectl then does without it);
* ``meta.k8s.io/v1`` Tables (``Accept: ...;as=Table``) for get, list and watch, built from a
  CRD's ``additionalPrinterColumns`` (simple JSONPaths, ``date`` columns as ages), so
  ``kubectl get evalruns`` shows its columns; built-in resources show NAME, AGE and, for
  pods, jobs, events and namespaces, a few simpler columns than a real server's;
* counters of the requests served, per verb and resource (for benchmarks).

What it still lacks:

* protobuf and CBOR request bodies (answered 415 with an explanation; responses are always
  JSON, which every client accepts). kubectl's typed commands send protobuf: ``kubectl create
  configmap|namespace|deployment ...``, ``kubectl auth can-i`` fail; ``kubectl apply|create|
  replace -f`` work. So does ``helm template | kubectl apply -f -``, but not ``helm install``
  (helm writes its release Secret with a typed client);
* schema validation (OpenAPI, CEL), admission, defaulting (no ``default`` ServiceAccount per
  namespace either), authentication and authorization (any token is accepted), field
  managers and real server-side-apply ownership, ``kubectl explain`` (no schemas);
* controllers: Jobs never run and pods are never scheduled (a test plays the controllers by
  patching status); foreground deletion is background deletion;
* conversion (all versions of a CRD share the objects, only ``apiVersion`` differs), periodic
  watch bookmarks, and exact/consistent reads at a given ``resourceVersion`` (lists are always
  of the current state).

Built on kmock 0.8 internals (``kmock._internal``): pinned in pyproject.toml.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import collections
import contextlib
import copy
import dataclasses
import datetime
import json
import os
import random
import re
import shutil
import subprocess
import tempfile
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import aiohttp.web
import attrs
import jsonpatch
import jsonpointer
import kmock
import yaml
from kmock._internal import apps, enums, rendering

from tests.kube import binaries

T = TypeVar("T")
JSON = dict[str, Any]

SERVER_VERSION: JSON = {
    "major": "1",
    "minor": "35",
    "emulationMajor": "1",
    "emulationMinor": "35",
    "minCompatibilityMajor": "1",
    "minCompatibilityMinor": "34",
    "gitVersion": "v1.35.0+emulated",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2025-12-17T00:00:00Z",
    "goVersion": "go1.25.5",
    "compiler": "gc",
    "platform": "linux/amd64",
}
DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
STANDARD_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
SUBRESOURCE_VERBS = ("get", "patch", "update")
# Served by aggregated API servers or by CRDs in a real cluster, not by kube-apiserver itself.
NOT_BUILT_IN = {"metrics.k8s.io", "gateway.networking.k8s.io"}
INITIAL_EVENTS_END = "k8s.io/initial-events-end"
NAME_DESCRIPTION = (
    "Name must be unique within a namespace. Is required when creating resources, although "
    "some resources may allow a client to request the generation of an appropriate name "
    "automatically. Name is primarily intended for creation idempotence and configuration "
    "definition. Cannot be updated. More info: "
    "https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names"
)
GENERATE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # as the apiserver's name generator

# --- small helpers ---------------------------------------------------------------------------


def now_rfc3339() -> str:
    """The time as the API server writes it: RFC 3339, UTC, seconds."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def clone(value: Any) -> Any:
    """A deep copy of JSON-like data (several times faster than ``copy.deepcopy``)."""
    if isinstance(value, dict):
        return {k: clone(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clone(v) for v in value]
    return value


def truthy(value: str | None) -> bool:
    """Go's strconv.ParseBool, as the API server parses boolean query parameters."""
    return value is not None and value in ("1", "t", "T", "true", "TRUE", "True")


def version_priority(version: str) -> tuple[int, int, int, str]:
    """The order Kubernetes sorts API versions by: GA, then beta, then alpha, newest first."""
    m = re.fullmatch(r"v(\d+)(?:(alpha|beta)(\d+))?", version)
    if m is None:
        return (0, 0, 0, version)
    rank = {None: 3, "beta": 2, "alpha": 1}[m.group(2)]
    return (rank, int(m.group(1)), int(m.group(3) or 0), "")


def human_duration(seconds: float) -> str:
    """The age kubectl prints (k8s.io/apimachinery/pkg/util/duration.HumanDuration)."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes, hours, days = s // 60, s // 3600, s // 86400
    if minutes < 10:
        return f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    if hours < 24 * 365 * 2:
        return f"{days}d"
    if hours < 24 * 365 * 8:
        return f"{days // 365}y{days % 365}d" if days % 365 else f"{days // 365}y"
    return f"{days // 365}y"


def age(timestamp: str | None) -> str | None:
    if not timestamp:
        return None
    try:
        then = datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    return human_duration((datetime.datetime.now(datetime.UTC) - then).total_seconds())


def api_error(
    code: int, reason: str, message: str, details: JSON | None = None
) -> kmock.KubernetesError:
    """An error that is rendered as a ``Status`` object, as the API server sends them."""
    return kmock.KubernetesError(status=code, reason=reason, message=message, details=details)


class Reply(Exception):  # noqa: N818  (control flow, not an error)
    """Carries a finished response out of kmock's reaction machinery (see ``_handle``)."""

    def __init__(self, response: aiohttp.web.StreamResponse):
        super().__init__()
        self.response = response


def reply(payload: Any, status: int = 200) -> Reply:
    text = json.dumps(payload, separators=(",", ":"))
    return Reply(aiohttp.web.Response(text=text, status=status, content_type="application/json"))


# --- selectors -------------------------------------------------------------------------------

Predicate = Callable[[Mapping[str, Any]], bool]

_SELECTOR_TERM = re.compile(
    r"""^\s*(?:
        !\s*(?P<absent>[^\s=!,()]+)
      | (?P<key>[^\s=!,()<>]+)\s*(?:
            (?P<op>==|=|!=)\s*(?P<value>[^\s,()=!]*)
          | \s+(?P<setop>in|notin)\s*\((?P<values>[^()]*)\)
          | (?P<cmp>[<>])\s*(?P<number>-?\d+)
        )?
    )\s*$""",
    re.VERBOSE,
)


def _split_terms(selector: str) -> list[str]:
    terms, depth, current = [], 0, ""
    for char in selector:
        depth += char == "("
        depth -= char == ")"
        if char == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += char
    terms.append(current)
    return [t for t in terms if t.strip()]


def parse_label_selector(selector: str | None) -> Predicate:
    """A predicate on a labels dict; ValueError on a malformed selector."""
    checks: list[Predicate] = []
    for term in _split_terms(selector or ""):
        m = _SELECTOR_TERM.match(term)
        if m is None:
            raise ValueError(f"unable to parse requirement: {term.strip()!r}")
        key = m["key"] or m["absent"]
        if m["absent"]:
            checks.append(partial(_absent, key))
        elif m["op"]:
            checks.append(partial(_equal, key, {m["value"]}, m["op"] != "!="))
        elif m["setop"]:
            values = {v.strip() for v in m["values"].split(",") if v.strip()}
            checks.append(partial(_equal, key, values, m["setop"] == "in"))
        elif m["cmp"]:
            checks.append(partial(_compare, key, int(m["number"]), m["cmp"] == ">"))
        else:
            checks.append(partial(_exists, key))
    return partial(_all, checks)


def _all(checks: list[Predicate], value: Mapping[str, Any]) -> bool:
    return all(check(value) for check in checks)


def _absent(key: str, labels: Mapping[str, Any]) -> bool:
    return key not in labels


def _exists(key: str, labels: Mapping[str, Any]) -> bool:
    return key in labels


def _equal(key: str, values: set[str], wanted: bool, labels: Mapping[str, Any]) -> bool:
    return (labels.get(key) in values) == wanted  # `!=` and `notin` match absent keys too


def _compare(key: str, n: int, greater: bool, labels: Mapping[str, Any]) -> bool:
    try:
        value = int(labels[key])
    except (KeyError, ValueError):
        return False
    return value > n if greater else value < n


def _field(obj: Mapping[str, Any], path: str) -> str | None:
    value: Any = obj
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    if isinstance(value, bool):
        return str(value).lower()
    return None if value is None else str(value)


def parse_field_selector(selector: str | None) -> Predicate:
    """A predicate on an object; only ``=``, ``==`` and ``!=`` exist for fields."""
    checks: list[Predicate] = []
    for term in _split_terms(selector or ""):
        m = re.fullmatch(r"\s*([^\s=!]+)\s*(==|=|!=)\s*([^\s]*)\s*", term)
        if m is None:
            raise ValueError(f"invalid field selector: {term.strip()!r}")
        path, op, value = m.groups()
        checks.append(partial(_field_equal, path, value, op != "!="))
    return partial(_all, checks)


def _field_equal(path: str, value: str, wanted: bool, obj: Mapping[str, Any]) -> bool:
    return ((_field(obj, path) or "") == value) == wanted


def labels_selector(labels: Mapping[str, str] | None) -> str | None:
    return ",".join(f"{k}={v}" for k, v in labels.items()) if labels else None


# --- patches ---------------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch. Unchanged subtrees are shared with ``target``, not copied."""
    if not isinstance(patch, dict):
        return clone(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# patchMergeKey of the built-in types' lists, by field name (strategic merge patch).
MERGE_KEYS = {
    "conditions": "type",
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "imagePullSecrets": "name",
    "ownerReferences": "uid",
    "hostAliases": "ip",
    "topologySpreadConstraints": "topologyKey",
    "resourceClaims": "name",
    "secrets": "name",
}
MERGED_PRIMITIVE_LISTS = {"finalizers"}  # patchStrategy=merge on a list of strings


def _strip_directives(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_directives(v) for k, v in value.items() if not k.startswith("$")}
    if isinstance(value, list):
        return [_strip_directives(v) for v in value]
    return value


def _merge_key(field: str, items: list[Any], order: list[Any] | None) -> str | None:
    if field == "ports":  # container ports merge on containerPort, service ports on port
        sample = [x for x in [*items, *(order or [])] if isinstance(x, dict)]
        return "containerPort" if any("containerPort" in x for x in sample) else "port"
    if field in MERGE_KEYS:
        return MERGE_KEYS[field]
    if order and all(isinstance(x, dict) and len(x) == 1 for x in order):
        return next(iter(order[0]))  # kubectl's $setElementOrder names the merge key
    return None


def _reorder(items: list[Any], order: list[Any], key: str | None) -> list[Any]:
    def ident(x: Any) -> str:
        return json.dumps(x.get(key) if key and isinstance(x, dict) else x, sort_keys=True)

    position = {ident(x): i for i, x in enumerate(order)}
    indexed = sorted(enumerate(items), key=lambda p: (position.get(ident(p[1]), len(order)), p[0]))
    return [x for _, x in indexed]


def _merge_list(field: str, old: Any, new: list[Any], order: list[Any] | None) -> list[Any]:
    old = old if isinstance(old, list) else []
    key = _merge_key(field, new, order)
    if key is None and field not in MERGED_PRIMITIVE_LISTS and order is None:
        return _strip_directives(new)  # atomic lists are replaced
    if key is None:  # a merged list of primitives
        merged = [*old, *(x for x in new if x not in old)]
    else:
        merged = list(old)
        for item in new:
            if not isinstance(item, dict):
                continue
            index = next((i for i, x in enumerate(merged) if x.get(key) == item.get(key)), None)
            if item.get("$patch") == "delete":
                if index is not None:
                    del merged[index]
            elif index is None:
                merged.append(strategic_merge_patch({}, item))
            else:
                merged[index] = strategic_merge_patch(merged[index], item)
    return _reorder(merged, order, key) if order else merged


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """Strategic merge patch, approximated without schemas (see MERGE_KEYS)."""
    if not isinstance(patch, dict):
        return _strip_directives(patch)
    if patch.get("$patch") == "replace":
        return _strip_directives(patch)
    result = dict(target) if isinstance(target, dict) else {}
    orders = {k.split("/", 1)[1]: v for k, v in patch.items() if k.startswith("$setElementOrder/")}
    for key, value in patch.items():
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            if isinstance(result.get(field), list):
                result[field] = [x for x in result[field] if x not in value]
        elif key.startswith("$"):
            continue
        elif value is None or (isinstance(value, dict) and value.get("$patch") == "delete"):
            result.pop(key, None)
        elif isinstance(value, list):
            result[key] = _merge_list(key, result.get(key), value, orders.get(key))
        elif isinstance(value, dict):
            result[key] = strategic_merge_patch(result.get(key), value)
        else:
            result[key] = value
    for field, order in orders.items():
        if field not in patch and isinstance(result.get(field), list):
            result[field] = _reorder(result[field], order, _merge_key(field, [], order))
    if isinstance(patch.get("$retainKeys"), list):
        result = {k: v for k, v in result.items() if k in patch["$retainKeys"]}
    return result


# --- printer columns -------------------------------------------------------------------------

_JSONPATH_STEP = re.compile(
    r"""\.(?P<field>[A-Za-z0-9_\-$]+)
      | \[(?P<index>-?\d+|\*)\]
      | \[\?\(@\.(?P<fpath>[A-Za-z0-9_.\-]+)\s*(?P<fop>==|!=)\s*
            (?:"(?P<dq>[^"]*)"|'(?P<sq>[^']*)'|(?P<bare>[^)\s]+))\s*\)\]
      | \[['"](?P<quoted>[^'"]+)['"]\]""",
    re.VERBOSE,
)


def jsonpath(obj: Any, path: str) -> list[Any]:
    """The results of a simple JSONPath, as CRD printer columns use them."""
    path = path.strip()
    if path.startswith("{") and path.endswith("}"):
        path = path[1:-1]
    path = path.removeprefix("$")
    values, pos = [obj], 0
    while pos < len(path):
        m = _JSONPATH_STEP.match(path, pos)
        if m is None:
            raise ValueError(f"unsupported JSONPath {path!r} at {pos}")
        pos = m.end()
        found: list[Any] = []
        for value in values:
            field = m["field"] or m["quoted"]
            if field is not None:
                if isinstance(value, dict) and field in value:
                    found.append(value[field])
            elif m["index"] is not None and isinstance(value, list):
                found.extend(value if m["index"] == "*" else value[int(m["index"]) :][:1])
            elif m["fpath"] is not None and isinstance(value, list):
                wanted = next(v for v in (m["dq"], m["sq"], m["bare"]) if v is not None)
                for item in value:
                    actual = _field(item, m["fpath"]) if isinstance(item, dict) else None
                    if (actual == wanted) == (m["fop"] == "=="):
                        found.append(item)
        values = found
    return values


def _cell(column: Mapping[str, Any], obj: Mapping[str, Any]) -> Any:
    try:
        results = jsonpath(obj, column.get("jsonPath", ""))
    except ValueError:
        return None
    if not results or results[0] is None:
        return None
    value, kind = results[0], column.get("type", "string")
    if kind == "date":
        return age(value) if isinstance(value, str) else None
    if kind == "integer":
        return value if isinstance(value, int) else None
    if kind == "number":
        return value if isinstance(value, int | float) else None
    if kind == "boolean":
        return value if isinstance(value, bool) else None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value).lower()
    return json.dumps(value, separators=(",", ":")) if isinstance(value, dict | list) else value


AGE_COLUMN: JSON = {
    "name": "Age",
    "type": "date",
    "jsonPath": ".metadata.creationTimestamp",
    "description": "CreationTimestamp of the object.",
}
PHASE_COLUMN: JSON = {"name": "Status", "type": "string", "jsonPath": ".status.phase"}
BUILT_IN_COLUMNS: dict[tuple[str, str], tuple[JSON, ...]] = {  # simpler than a real server's
    ("", "namespaces"): (PHASE_COLUMN, AGE_COLUMN),
    ("", "pods"): (PHASE_COLUMN, AGE_COLUMN),
    ("batch", "jobs"): tuple(
        {"name": name, "type": "integer", "jsonPath": f".status.{name.lower()}"}
        for name in ("Active", "Succeeded", "Failed")
    )
    + (AGE_COLUMN,),
    ("", "events"): (
        {"name": "Type", "type": "string", "jsonPath": ".type"},
        {"name": "Reason", "type": "string", "jsonPath": ".reason"},
        {"name": "Object", "type": "string", "jsonPath": ".involvedObject.name"},
        {"name": "Message", "type": "string", "jsonPath": ".message"},
        AGE_COLUMN,
    ),
}


# --- resources -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ResourceType:
    """One served resource: a group/version/plural and what discovery says about it."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    singular: str = ""
    list_kind: str = ""
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    verbs: tuple[str, ...] = STANDARD_VERBS
    subresources: tuple[str, ...] = ()
    columns: tuple[JSON, ...] = (AGE_COLUMN,)
    storage_version: str = ""  # all served versions share the objects of this version
    crd: str | None = None  # the defining CRD's name, for custom resources

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def storage_api_version(self) -> str:
        version = self.storage_version or self.version
        return f"{self.group}/{version}" if self.group else version

    @property
    def resource(self) -> kmock.resource:
        return kmock.resource(group=self.group, version=self.version, plural=self.plural)

    @property
    def storage(self) -> kmock.resource:
        version = self.storage_version or self.version
        return kmock.resource(group=self.group, version=version, plural=self.plural)

    @property
    def has_status(self) -> bool:
        return "status" in self.subresources

    @property
    def group_resource(self) -> str:
        """As error messages name it: ``jobs.batch``, ``pods``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def error_details(self, name: str | None) -> JSON:
        return {"name": name, "group": self.group, "kind": self.plural}


def built_in_types() -> list[ResourceType]:
    """The built-in resources of a real cluster, from kmock's bundled discovery data."""
    bundled = kmock.ResourcesArray()
    bundled.load_bundled()
    versions: dict[tuple[str, str], list[str]] = collections.defaultdict(list)
    for res in bundled:
        versions[res.group or "", res.plural or ""].append(res.version or "")
    types = []
    for res in bundled:
        info = bundled[res]
        group, plural = res.group or "", res.plural or ""
        if group in NOT_BUILT_IN or not info.kind:
            continue
        storage = max(versions[group, plural], key=version_priority)
        types.append(
            ResourceType(
                group=group,
                version=res.version or "",
                plural=plural,
                kind=info.kind,
                namespaced=bool(info.namespaced),
                singular=info.singular or info.kind.lower(),
                list_kind=f"{info.kind}List",
                short_names=tuple(sorted(info.shortnames)),
                categories=tuple(sorted(info.categories)),
                verbs=tuple(sorted(info.verbs)),
                subresources=tuple(sorted(info.subresources)),
                columns=BUILT_IN_COLUMNS.get((group, plural), (AGE_COLUMN,)),
                storage_version=storage,
            )
        )
    return types


def crd_types(crd: Mapping[str, Any]) -> list[ResourceType]:
    """The resources a CustomResourceDefinition serves; ValueError when it is malformed."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    group, plural, kind = spec.get("group"), names.get("plural"), names.get("kind")
    versions = spec.get("versions") or []
    if not (group and plural and kind and versions):
        raise ValueError("spec.group, spec.names.plural, spec.names.kind, spec.versions required")
    if crd.get("metadata", {}).get("name") != f"{plural}.{group}":
        raise ValueError("metadata.name: Invalid value: must be spec.names.plural+'.'+spec.group")
    if spec.get("scope") not in ("Namespaced", "Cluster"):
        raise ValueError("spec.scope: Unsupported value: must be Namespaced or Cluster")
    storage = [v["name"] for v in versions if v.get("storage")]
    if len(storage) != 1:
        raise ValueError("spec.versions: Invalid value: must have exactly one storage version")
    types = []
    for v in versions:
        if not v.get("served", True):
            continue
        subresources = sorted(v.get("subresources") or spec.get("subresources") or {})
        columns = v.get("additionalPrinterColumns") or spec.get("additionalPrinterColumns")
        types.append(
            ResourceType(
                group=group,
                version=v["name"],
                plural=plural,
                kind=kind,
                namespaced=spec["scope"] == "Namespaced",
                singular=names.get("singular") or kind.lower(),
                list_kind=names.get("listKind") or f"{kind}List",
                short_names=tuple(names.get("shortNames") or ()),
                categories=tuple(names.get("categories") or ()),
                subresources=tuple(subresources),
                columns=tuple(columns) if columns else (AGE_COLUMN,),
                storage_version=storage[0],
                crd=crd["metadata"]["name"],
            )
        )
    return types


# --- requests --------------------------------------------------------------------------------


def parse_path(path: str) -> tuple[str, str | None, str | None, str | None, str | None, str | None]:
    """(group, version, plural, namespace, name, subresource) of an API path.

    kmock 0.8's parser fails on ``/api/v1/namespaces`` and reads ``/api/v1/namespaces/x`` as a
    namespace with no resource: namespaces are resources too.
    """
    parts = [p for p in path.split("/") if p]
    group: str = "" if parts[0] == "api" else parts[1]
    version: str | None = parts[1] if parts[0] == "api" else (parts[2] if len(parts) > 2 else None)
    rest = parts[2:] if parts[0] == "api" else parts[3:]
    namespace = None
    if (
        len(rest) >= 3
        and rest[0] == "namespaces"
        and not (len(rest) == 3 and rest[2] in ("status", "finalize"))
    ):
        namespace, rest = rest[1], rest[2:]
    plural = rest[0] if rest else None
    name = rest[1] if len(rest) > 1 else None
    subresource = "/".join(rest[2:]) or None
    return group, version, plural, namespace, name, subresource


def _action(method: str, name: str | None, query: Mapping[str, str]) -> enums.action | None:
    if method == "GET":
        if truthy(query.get("watch")):
            return enums.action.WATCH
        return enums.action.FETCH if name else enums.action.LIST
    if name is None:
        return enums.action.CREATE if method == "POST" else None
    return {"PATCH": enums.action.UPDATE, "PUT": enums.action.UPDATE}.get(
        method, enums.action.DELETE if method == "DELETE" else None
    )


async def parse_request(raw: aiohttp.web.BaseRequest, id: int) -> rendering.Request:
    """kmock's request, parsed with ``parse_path`` and with YAML bodies (server-side apply)."""
    body = await raw.read()
    text = body.decode("utf-8", errors="replace")
    data: Any = None
    if body:
        try:
            data = json.loads(body)
        except ValueError:
            with contextlib.suppress(yaml.YAMLError):
                data = yaml.safe_load(text)
    query = dict(raw.query)
    fields: JSON = {}
    parts = [p for p in raw.path.split("/") if p]
    if parts[:1] in (["api"], ["apis"]) and len(parts) >= 2:
        group, version, plural, namespace, name, subresource = parse_path(raw.path)
        fields = {
            "resource": kmock.resource(group=group, version=version, plural=plural),
            "namespace": namespace,
            "name": name,
            "subresource": subresource,
            "action": _action(raw.method, name, query) if plural else None,
        }
    return rendering.Request(
        id=id,
        raw_request=raw,
        url=raw.url,
        method=raw.method,
        params=query,
        headers=dict(raw.headers),
        cookies=dict(raw.cookies),
        body=body,
        text=text,
        data=data,
        **fields,
    )


def _verb(request: rendering.Request) -> str:
    """``"patch batch/v1/jobs/status"``, ``"GET /apis"``: what ``request_counts`` counts."""
    res, method = request.resource, request.method.value
    if res is None or res.plural is None:
        return f"{method} {request.url.path}"
    if method == "GET":
        watch = request.action == enums.action.WATCH
        verb = "watch" if watch else "get" if request.name else "list"
    else:
        verb = {
            "POST": "create",
            "PUT": "update",
            "PATCH": "patch",
            "DELETE": "delete" if request.name else "deletecollection",
        }.get(method, method.lower())
    target = "/".join(p for p in (res.group, res.version, res.plural, request.subresource) if p)
    return f"{verb} {target}"


# --- the emulator ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Event:
    """A change, as watches replay it: the object after it, and before it (for selectors)."""

    rv: int
    type: str
    storage: kmock.resource
    obj: JSON
    prev: JSON | None


STOP = object()  # put on the buses to end the watches when the server stops


@attrs.define(kw_only=True)
class KubeEmulator(kmock.KubernetesEmulator):
    """kmock's KubernetesEmulator with the API server behaviour listed in the module doc."""

    history_limit: int = 20_000  # watch events kept for resourceVersion replay, then 410
    keep_history: bool = True  # keep every version of every object (kmock's .history)
    namespaces: tuple[str, ...] = DEFAULT_NAMESPACES

    request_count: int = attrs.field(default=0, init=False)
    request_counts: collections.Counter[str] = attrs.field(factory=collections.Counter, init=False)
    _rv: int = attrs.field(default=0, init=False)
    _types: dict[tuple[str, str, str], ResourceType] = attrs.field(factory=dict, init=False)
    _history: collections.deque[Event] = attrs.field(factory=collections.deque, init=False)
    _compacted_rv: int = attrs.field(default=0, init=False)
    _gc_task: asyncio.Task[None] | None = attrs.field(default=None, init=False)
    _gc_wanted: bool = attrs.field(default=False, init=False)
    _terminating: set[str] = attrs.field(factory=set, init=False)
    _closing: bool = attrs.field(default=False, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        # Ahead of kmock's own fallbacks, behind any reaction a test adds.
        (self.fallback**1) << self._serve
        for rtype in built_in_types():
            self._register(rtype)

    # -- kmock plumbing --

    async def __aenter__(self) -> KubeEmulator:
        await super().__aenter__()
        async with self._lock:
            namespaces = self._type("", "v1", "namespaces")
            for name in self.namespaces:
                if self._find(namespaces, None, name) is None:
                    await self._store_new(namespaces, {"metadata": {"name": name}})
        return self

    async def close(self) -> None:
        """End the watches (they would hold the server's shutdown) and the collector."""
        self._closing = True
        for bus in list(self._buses.values()):
            await bus.put(STOP)
        if self._gc_task is not None:
            self._gc_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._gc_task

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        # As kmock's RawHandler.__call__, with our own request parser.
        raw_response: aiohttp.web.StreamResponse | None = None
        try:
            if self.limit is not None and len(self._requests) >= self.limit:
                raise kmock.KMockError("Too many requests have been served so far.")
            request = await parse_request(raw_request, id=len(self._requests))
            self._requests.append(request)
            self.request_count += 1
            self.request_counts[_verb(request)] += 1
            try:
                return await self._handle(request)
            except rendering.StreamingError as e:
                raw_response = e.args[0]
                raise e.__cause__ or e from None
        except Exception as e:
            if not self._errors:
                raise
            self._errors[-1].append(e)
            if raw_response is None or not raw_response.prepared:
                return await self._render_error(e)
            await self._stream_error(e, raw_response)
            await raw_response.write_eof()
            return raw_response

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        # kmock's KubernetesEmulator._handle changes its store before any reaction runs; here
        # the changes happen in the fallback (_serve), so that an injected error prevents
        # them, as a failing API server would. API errors are answers, not server errors.
        try:
            return await apps.RawHandler._handle(self, request)
        except Reply as r:
            return r.response
        except kmock.KubernetesError as e:
            return await self._render_error(e)

    async def _render_error(self, exc: Exception) -> aiohttp.web.StreamResponse:
        if not isinstance(exc, kmock.KubernetesError):
            return await super()._render_error(exc)
        status: JSON = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": exc.message,
            "reason": exc.reason,
            "code": exc.status,
        }
        if exc.details:
            status["details"] = exc.details
        return reply(status, exc.status).response

    def _get_resources(self) -> list[kmock.resource]:
        return [rtype.resource for rtype in self._types.values()]

    # -- the served types --

    def _register(self, rtype: ResourceType) -> None:
        self._types[rtype.group, rtype.version, rtype.plural] = rtype
        self._resources[rtype.resource] = kmock.ResourceInfo(
            namespaced=rtype.namespaced,
            kind=rtype.kind,
            singular=rtype.singular,
            verbs=rtype.verbs,
            shortnames=rtype.short_names,
            categories=rtype.categories,
            subresources=rtype.subresources,
        )

    def _unregister(self, rtype: ResourceType) -> None:
        self._types.pop((rtype.group, rtype.version, rtype.plural), None)
        if rtype.resource in self._resources:
            del self._resources[rtype.resource]

    def _type(self, group: str, version: str, plural: str) -> ResourceType:
        return self._types[group, version, plural]

    def find_type(self, gvr: str) -> ResourceType:
        """The served type for ``"batch/v1/jobs"``, ``"v1/configmaps"``, ``"jobs.v1.batch"``."""
        res = kmock.resource(gvr)
        key = (res.group or "", res.version or "", res.plural or "")
        if key not in self._types:
            raise KeyError(f"{gvr!r} is not served (apply its CRD first?)")
        return self._types[key]

    # -- the store (call with the lock held) --

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _find(self, rtype: ResourceType, namespace: str | None, name: str) -> JSON | None:
        key = (rtype.storage, namespace if rtype.namespaced else None, name)
        if key not in self._objects or self._objects[key].deleted:
            return None
        return self._objects[key].last.raw

    def _all(self, rtype: ResourceType, namespace: str | None = None) -> Iterator[JSON]:
        storage = rtype.storage
        for (res, ns, _), obj in list(self._objects.items()):
            if res == storage and (namespace is None or ns == namespace) and not obj.deleted:
                yield obj.last.raw

    def _live(self) -> Iterator[tuple[ResourceType, JSON]]:
        storages = {rtype.storage: rtype for rtype in self._types.values()}
        for (res, _, _), obj in list(self._objects.items()):
            if not obj.deleted and res in storages:
                yield storages[res], obj.last.raw

    def _put(self, rtype: ResourceType, obj: JSON, new: bool) -> None:
        meta = obj["metadata"]
        key = (rtype.storage, meta.get("namespace"), meta["name"])
        if key not in self._objects:
            self._objects[key] = obj
            return
        stored = self._objects[key]
        if new:
            stored.create(obj)
        else:
            stored.history.append(obj)
        if not self.keep_history:
            del stored.history[:-1]

    async def _emit(self, type_: str, rtype: ResourceType, obj: JSON, prev: JSON | None) -> None:
        if len(self._history) >= self.history_limit:
            self._compacted_rv = self._history.popleft().rv
        event = Event(int(obj["metadata"]["resourceVersion"]), type_, rtype.storage, obj, prev)
        self._history.append(event)
        await self._buses[rtype.storage].put(event)

    async def _store_new(self, rtype: ResourceType, body: JSON) -> JSON:
        obj = {"apiVersion": rtype.storage_api_version, "kind": rtype.kind, **body}
        obj["apiVersion"], obj["kind"] = rtype.storage_api_version, rtype.kind
        meta = obj["metadata"] = dict(obj.get("metadata") or {})
        meta.update(
            uid=str(uuid.uuid4()),
            resourceVersion=self._next_rv(),
            generation=1,
            creationTimestamp=now_rfc3339(),
        )
        for field in ("deletionTimestamp", "deletionGracePeriodSeconds", "managedFields"):
            meta.pop(field, None)
        _drop_empty(meta)
        self._initialize(rtype, obj)
        self._put(rtype, obj, new=True)
        await self._emit("ADDED", rtype, obj, None)
        if meta.get("ownerReferences"):
            self._collect_garbage()  # its owners may be gone already
        return obj

    def _initialize(self, rtype: ResourceType, obj: JSON) -> None:
        """What the API server's strategies set on create."""
        if rtype.has_status:
            obj.pop("status", None)
            if not rtype.crd:
                obj["status"] = {}
        if _is(rtype, "", "namespaces"):
            name = obj["metadata"]["name"]
            obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = name
            obj["spec"] = {"finalizers": ["kubernetes"]}
            obj["status"] = {"phase": "Active"}
        elif _is(rtype, "", "pods"):
            obj["status"] = {"phase": "Pending"}
        elif _is_crd(rtype):
            obj["status"] = _crd_status(obj)

    async def _store_update(
        self, rtype: ResourceType, cur: JSON, new: JSON, sub: str | None
    ) -> JSON:
        """Write ``new`` over ``cur``: the status subresource rules, system fields, generation."""
        if not isinstance(new, dict) or not isinstance(new.get("metadata") or {}, dict):
            raise api_error(422, "Invalid", "the object must be a JSON object with metadata")
        cur_meta = cur["metadata"]
        if sub == "status":  # only the status changes
            result = dict(cur)
            result.pop("status", None)
            if "status" in new:
                result["status"] = new["status"]
            meta = dict(cur_meta)
        else:  # anything but the status (when it is a subresource) and the system fields
            result = dict(new)
            if rtype.has_status:
                result.pop("status", None)
                if "status" in cur:
                    result["status"] = cur["status"]
            meta = dict(new.get("metadata") or {})
            for field in SYSTEM_FIELDS:
                if field in cur_meta:
                    meta[field] = cur_meta[field]
                else:
                    meta.pop(field, None)
            meta.pop("managedFields", None)
            _drop_empty(meta)
        deleting = bool(cur_meta.get("deletionTimestamp"))
        if deleting and not set(meta.get("finalizers", [])) <= set(cur_meta.get("finalizers", [])):
            raise api_error(
                422,
                "Invalid",
                f'{rtype.kind} "{meta["name"]}" is invalid: metadata.finalizers: Forbidden: '
                "no new finalizers can be added if the object is being deleted",
            )
        result["metadata"] = meta
        result["apiVersion"], result["kind"] = rtype.storage_api_version, rtype.kind
        if _without(result, rtype, version=True) == _without(cur, rtype, version=True):
            return cur  # nothing changed: no new resourceVersion, no event
        if _without(result, rtype, meta=True) != _without(cur, rtype, meta=True):
            meta["generation"] = int(cur_meta.get("generation") or 0) + 1
        if _is_crd(rtype) and sub is None:
            self._sync_crd(result)  # ValueError for a CRD that makes no sense: 422
            status = dict(result.get("status") or {})
            status.update({k: v for k, v in _crd_status(result).items() if k != "conditions"})
            result["status"] = status
        meta["resourceVersion"] = self._next_rv()
        self._put(rtype, result, new=False)
        await self._emit("MODIFIED", rtype, result, cur)
        if deleting and not meta.get("finalizers") and not _is(rtype, "", "namespaces"):
            await self._remove(rtype, result)
        elif meta.get("ownerReferences") != cur_meta.get("ownerReferences"):
            self._collect_garbage()
        return result

    async def _remove(self, rtype: ResourceType, obj: JSON) -> JSON:
        """Gone for good: a DELETED event with the last state, then what depended on it."""
        meta = obj["metadata"]
        key = (rtype.storage, meta.get("namespace"), meta["name"])
        final = dict(obj, metadata=dict(meta, resourceVersion=self._next_rv()))
        if self.keep_history:
            self._objects[key].history.append(final)
            self._objects[key].delete()
        else:
            del self._objects[key]
        await self._emit("DELETED", rtype, final, obj)
        if _is_crd(rtype):
            await self._drop_crd(final)
        self._collect_garbage()
        return final

    async def _delete(self, rtype: ResourceType, obj: JSON, policy: str | None) -> JSON:
        """A DELETE: mark it while finalizers or a namespace's content remain, else remove."""
        meta = obj["metadata"]
        if meta.get("deletionTimestamp"):
            return obj
        if policy == "Orphan":
            await self._orphan(meta["uid"])
        is_namespace = _is(rtype, "", "namespaces")
        if meta.get("finalizers") or is_namespace:
            marked = dict(obj, metadata=dict(meta, deletionTimestamp=now_rfc3339()))
            marked["metadata"]["deletionGracePeriodSeconds"] = 0
            marked["metadata"]["generation"] = int(meta.get("generation") or 0) + 1
            marked["metadata"]["resourceVersion"] = self._next_rv()
            if is_namespace:
                marked["status"] = {"phase": "Terminating"}
                self._terminating.add(meta["name"])
                self._collect_garbage()  # the namespace controller's work runs with the GC
            self._put(rtype, marked, new=False)
            await self._emit("MODIFIED", rtype, marked, obj)
            return marked
        return await self._remove(rtype, obj)

    async def _orphan(self, uid: str) -> None:
        for rtype, obj in list(self._live()):
            refs = obj["metadata"].get("ownerReferences") or []
            if any(ref.get("uid") == uid for ref in refs):
                kept = [ref for ref in refs if ref.get("uid") != uid]
                new = dict(obj, metadata=dict(obj["metadata"], ownerReferences=kept))
                await self._store_update(rtype, obj, new, None)

    # -- the garbage collector and the namespace controller (background, as in a cluster) --

    def _collect_garbage(self) -> None:
        self._gc_wanted = True
        if not self._closing and (self._gc_task is None or self._gc_task.done()):
            self._gc_task = asyncio.get_running_loop().create_task(self._run_gc())

    async def _run_gc(self) -> None:
        while self._gc_wanted:
            self._gc_wanted = False
            await asyncio.sleep(0)  # after the response to the request that caused it
            async with self._lock:
                await self._gc_pass()

    async def _gc_pass(self) -> None:
        live = list(self._live())
        uids = {obj["metadata"].get("uid") for _, obj in live}
        for rtype, obj in live:
            meta = obj["metadata"]
            current = self._find(rtype, meta.get("namespace"), meta["name"])
            if current is None or current["metadata"] != meta:
                continue  # changed by this pass already
            refs = meta.get("ownerReferences") or []
            gone = [ref for ref in refs if ref.get("uid") not in uids]
            if meta.get("namespace") in self._terminating or (refs and len(gone) == len(refs)):
                await self._delete(rtype, obj, "Background")
            elif gone:
                kept = [ref for ref in refs if ref.get("uid") in uids]
                await self._store_update(
                    rtype, obj, dict(obj, metadata=dict(meta, ownerReferences=kept)), None
                )
        namespaces = self._type("", "v1", "namespaces")
        for name in sorted(self._terminating):
            if any(ns == name for (_, ns, _), o in self._objects.items() if not o.deleted):
                continue
            self._terminating.discard(name)
            namespace = self._find(namespaces, None, name)
            if namespace is not None:
                await self._remove(namespaces, namespace)

    # -- CRDs --

    def _sync_crd(self, crd: JSON) -> None:
        """Serve what the CRD defines now (raises ValueError, answered as 422 Invalid)."""
        types = crd_types(crd)
        for rtype in list(self._types.values()):
            if rtype.crd == crd["metadata"]["name"]:
                self._unregister(rtype)
        for rtype in types:
            self._register(rtype)

    async def _drop_crd(self, crd: JSON) -> None:
        name = crd["metadata"]["name"]
        types = [t for t in self._types.values() if t.crd == name]
        for rtype in types[:1]:
            for obj in list(self._all(rtype)):
                await self._remove(rtype, obj)
        for rtype in types:
            self._unregister(rtype)

    # -- serving --

    async def _serve(self, request: rendering.Request) -> None:
        """The fallback for every request; raises Reply, an API error, or passes it on."""
        path = request.url.path
        if request.resource is not None and request.resource.plural is not None:
            await self._serve_resource(request)
        elif path.rstrip("/") in ("/healthz", "/livez", "/readyz") or path.startswith(
            ("/healthz/", "/livez/", "/readyz/")
        ):
            raise Reply(aiohttp.web.Response(text="ok", content_type="text/plain"))
        elif path.startswith("/openapi/"):
            self._serve_openapi(request)
        raise NotImplementedError  # discovery, /version: kmock's scaffold (overridden below)

    async def _serve_resource(self, request: rendering.Request) -> None:
        res = request.resource
        assert res is not None
        rtype = self._types.get((res.group or "", res.version or "", res.plural or ""))
        ns, name, sub = request.namespace, request.name, request.subresource
        not_found = api_error(404, "NotFound", "the server could not find the requested resource")
        if rtype is None or (ns is not None and not rtype.namespaced):
            raise not_found
        if sub is not None and (sub not in rtype.subresources or sub != "status"):
            raise not_found
        method = request.method.value
        if method == "GET":
            watch = truthy(request.params.get("watch"))
            verb = "watch" if watch else "get" if name is not None else "list"
        else:
            verb = {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method, "")
            if method == "DELETE":
                verb = "delete" if name is not None else "deletecollection"
        content_type = request.headers.get("Content-Type", "")
        if request.body and ("protobuf" in content_type or "cbor" in content_type):
            raise api_error(
                415,
                "UnsupportedMediaType",
                f"the emulated API server reads JSON and YAML only, not {content_type}: kubectl's "
                "typed commands (create <generator>, auth can-i, ...) send protobuf; use "
                "kubectl create/apply -f with a manifest",
            )
        allowed = SUBRESOURCE_VERBS if sub else rtype.verbs
        on_collection = verb in ("list", "create", "deletecollection")
        if verb not in allowed or (verb != "watch" and (name is None) != on_collection):
            raise api_error(405, "MethodNotAllowed", "the server does not allow this method")
        if rtype.namespaced and ns is None and verb not in ("list", "watch", "deletecollection"):
            raise not_found
        if verb == "watch":
            await self._watch(request, rtype)
        elif verb == "list":
            await self._list(request, rtype)
        elif verb == "get":
            async with self._lock:
                obj = self._find(rtype, ns, name or "")
            if obj is None:
                raise self._not_found(rtype, name)
            raise reply(self._present(request, rtype, obj))
        elif verb == "create":
            await self._create(request, rtype)
        elif verb in ("update", "patch"):
            await self._update(request, rtype, verb)
        elif verb == "delete":
            await self._delete_one(request, rtype)
        elif verb == "deletecollection":
            await self._delete_collection(request, rtype)

    def _not_found(self, rtype: ResourceType, name: str | None) -> kmock.KubernetesError:
        message = f'{rtype.group_resource} "{name}" not found'
        return api_error(404, "NotFound", message, rtype.error_details(name))

    def _conflict(self, rtype: ResourceType, name: str, why: str) -> kmock.KubernetesError:
        message = f'Operation cannot be fulfilled on {rtype.group_resource} "{name}": {why}'
        return api_error(409, "Conflict", message, rtype.error_details(name))

    def _present(self, request: rendering.Request, rtype: ResourceType, obj: JSON) -> JSON:
        """The object as this version and representation (Table) of the request show it."""
        if obj.get("apiVersion") != rtype.api_version:
            obj = dict(obj, apiVersion=rtype.api_version)
        if _wants_table(request):
            return self._table(request, rtype, [obj])
        return obj

    def _selectors(self, request: rendering.Request) -> Callable[[JSON], bool]:
        try:
            labels = parse_label_selector(request.params.get("labelSelector"))
            fields = parse_field_selector(request.params.get("fieldSelector"))
        except ValueError as e:
            raise api_error(400, "BadRequest", str(e)) from None
        ns, name = request.namespace, request.name

        def match(obj: JSON) -> bool:
            meta = obj.get("metadata") or {}
            return (
                (ns is None or meta.get("namespace") == ns)
                and (name is None or meta.get("name") == name)
                and labels(meta.get("labels") or {})
                and fields(obj)
            )

        return match

    async def _list(self, request: rendering.Request, rtype: ResourceType) -> None:
        match = self._selectors(request)
        async with self._lock:
            items = [obj for obj in self._all(rtype, request.namespace) if match(obj)]
            rv = str(self._rv)
        items.sort(key=lambda o: (o["metadata"].get("namespace") or "", o["metadata"]["name"]))
        meta: JSON = {"resourceVersion": rv}
        start = 0
        if request.params.get("continue"):
            try:
                token = json.loads(base64.urlsafe_b64decode(request.params["continue"]))
                start, meta["resourceVersion"] = int(token["start"]), str(token["rv"])
            except (ValueError, KeyError, TypeError):
                raise api_error(400, "BadRequest", "invalid continue token") from None
        limit = int(request.params.get("limit") or 0)
        page = items[start : start + limit] if limit > 0 else items[start:]
        if limit > 0 and start + limit < len(items):
            token = {"start": start + limit, "rv": meta["resourceVersion"]}
            meta["continue"] = base64.urlsafe_b64encode(json.dumps(token).encode()).decode()
            meta["remainingItemCount"] = len(items) - start - limit
        if rtype.api_version != rtype.storage_api_version:
            page = [dict(o, apiVersion=rtype.api_version) for o in page]
        if _wants_table(request):
            table = self._table(request, rtype, page)
            table["metadata"] = meta
            raise reply(table)
        kind = rtype.list_kind or f"{rtype.kind}List"
        body = {"kind": kind, "apiVersion": rtype.api_version, "metadata": meta, "items": page}
        raise reply(body)

    async def _create(self, request: rendering.Request, rtype: ResourceType) -> None:
        body = request.data
        if not isinstance(body, dict):
            raise api_error(400, "BadRequest", "the body of the request must be a JSON object")
        obj = clone(body)
        self._check_kind(rtype, obj)
        obj["apiVersion"], obj["kind"] = rtype.storage_api_version, rtype.kind
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise api_error(400, "BadRequest", "metadata must be an object")
        ns = request.namespace
        if rtype.namespaced:
            if meta.get("namespace") and meta["namespace"] != ns:
                raise api_error(
                    400,
                    "BadRequest",
                    "the namespace of the provided object does not match the namespace sent "
                    "on the request",
                )
            meta["namespace"] = ns
        else:
            meta.pop("namespace", None)
        if not meta.get("name") and not meta.get("generateName"):
            raise api_error(
                422,
                "Invalid",
                f"{rtype.kind}.{rtype.group or 'core'} is invalid: metadata.name: Required value: "
                "name or generateName is required",
            )
        dry_run = bool(request.params.get("dryRun"))
        async with self._lock:
            if rtype.namespaced:
                self._check_namespace(ns)
            if not meta.get("name"):
                while True:
                    suffix = "".join(random.choices(GENERATE_ALPHABET, k=5))
                    meta["name"] = f"{meta['generateName']}{suffix}"
                    if self._find(rtype, ns, meta["name"]) is None:
                        break
            if self._find(rtype, ns, meta["name"]) is not None:
                message = f'{rtype.group_resource} "{meta["name"]}" already exists'
                raise api_error(409, "AlreadyExists", message, rtype.error_details(meta["name"]))
            if _is_crd(rtype):
                try:
                    crd_types(obj)
                except ValueError as e:
                    message = f"CustomResourceDefinition is invalid: {e}"
                    raise api_error(422, "Invalid", message) from None
            if dry_run:
                raise reply(self._present(request, rtype, obj), 201)
            created = await self._store_new(rtype, obj)
            if _is_crd(rtype):
                self._sync_crd(created)
        raise reply(self._present(request, rtype, created), 201)

    def _check_kind(self, rtype: ResourceType, obj: JSON) -> None:
        kind, api_version = obj.get("kind"), obj.get("apiVersion")
        versions = {t.api_version for t in self._types.values() if t.storage == rtype.storage}
        if (kind and kind != rtype.kind) or (api_version and api_version not in versions):
            raise api_error(
                400,
                "BadRequest",
                f"the API version in the data ({api_version}) and kind ({kind}) do not match "
                f"the resource {rtype.api_version}, Kind={rtype.kind}",
            )

    def _check_namespace(self, ns: str | None) -> None:
        namespace = self._find(self._type("", "v1", "namespaces"), None, ns or "")
        if namespace is None:
            raise api_error(
                404,
                "NotFound",
                f'namespaces "{ns}" not found',
                {"name": ns, "kind": "namespaces"},
            )
        if namespace["metadata"].get("deletionTimestamp"):
            raise api_error(
                403,
                "Forbidden",
                f"unable to create new content in namespace {ns} because it is being terminated",
            )

    async def _update(self, request: rendering.Request, rtype: ResourceType, verb: str) -> None:
        ns, name, sub = request.namespace, request.name or "", request.subresource
        body = request.data
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        apply = verb == "patch" and content_type == "application/apply-patch+yaml"
        async with self._lock:
            cur = self._find(rtype, ns, name)
            if cur is None and apply and sub is None:
                raise Reply(await self._apply_create(request, rtype))
            if cur is None:
                raise self._not_found(rtype, name)
            if verb == "update":
                new = self._replacement(rtype, cur, body, name)
            else:
                new = self._patched(rtype, cur, body, content_type, sub)
                wanted = (new.get("metadata") or {}).get("resourceVersion")
                if wanted and wanted != cur["metadata"].get("resourceVersion"):
                    raise self._conflict(rtype, name, _MODIFIED)
            if request.params.get("dryRun"):
                raise reply(self._present(request, rtype, new))
            try:
                result = await self._store_update(rtype, cur, new, sub)
            except ValueError as e:  # a CRD that does not make sense
                raise api_error(422, "Invalid", f"{rtype.kind} is invalid: {e}") from None
        raise reply(self._present(request, rtype, result))

    def _replacement(self, rtype: ResourceType, cur: JSON, body: Any, name: str) -> JSON:
        if not isinstance(body, dict) or not isinstance(body.get("metadata", {}), dict):
            raise api_error(400, "BadRequest", "the body of the request must be a JSON object")
        new = clone(body)
        self._check_kind(rtype, new)
        meta = new.setdefault("metadata", {})
        if meta.get("name") and meta["name"] != name:
            raise api_error(
                400,
                "BadRequest",
                f"the name of the object ({meta['name']}) does not match the name on the URL "
                f"({name})",
            )
        wanted = meta.get("resourceVersion")
        if wanted and wanted != cur["metadata"].get("resourceVersion"):
            raise self._conflict(rtype, name, _MODIFIED)
        if not wanted and (rtype.crd or _is_crd(rtype)):
            raise api_error(
                422,
                "Invalid",
                f'{rtype.kind}.{rtype.group} "{name}" is invalid: metadata.resourceVersion: '
                "Invalid value: 0x0: must be specified for an update",
            )
        return new

    def _patched(
        self, rtype: ResourceType, cur: JSON, patch: Any, content_type: str, sub: str | None
    ) -> JSON:
        if content_type in ("application/merge-patch+json", "application/apply-patch+yaml"):
            if not isinstance(patch, dict):
                raise api_error(400, "BadRequest", "a merge patch must be a JSON object")
            return merge_patch(cur, patch)  # type: ignore[no-any-return]
        if content_type == "application/strategic-merge-patch+json" and rtype.crd is None:
            if not isinstance(patch, dict):
                raise api_error(400, "BadRequest", "a strategic merge patch must be an object")
            return strategic_merge_patch(cur, patch)  # type: ignore[no-any-return]
        if content_type == "application/json-patch+json":
            if not isinstance(patch, list):
                raise api_error(400, "BadRequest", "a JSON patch must be a list of operations")
            try:
                return jsonpatch.apply_patch(cur, patch)  # type: ignore[no-any-return]
            except jsonpatch.InvalidJsonPatch as e:
                raise api_error(400, "BadRequest", str(e)) from None
            except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as e:
                raise api_error(422, "Invalid", f"the server rejected our request: {e}") from None
        accepted = "application/json-patch+json, application/merge-patch+json, "
        accepted += "application/apply-patch+yaml"
        if rtype.crd is None:
            accepted += ", application/strategic-merge-patch+json"
        raise api_error(
            415,
            "UnsupportedMediaType",
            f"the body of the request was in an unknown format - accepted media types include: "
            f"{accepted}",
        )

    async def _apply_create(self, request: rendering.Request, rtype: ResourceType) -> Any:
        body = request.data
        if not isinstance(body, dict):
            raise api_error(400, "BadRequest", "the applied configuration must be an object")
        obj = _strip_directives(clone(body))
        self._check_kind(rtype, obj)
        obj["apiVersion"], obj["kind"] = rtype.storage_api_version, rtype.kind
        meta = obj.setdefault("metadata", {})
        meta["name"] = request.name
        if rtype.namespaced:
            meta["namespace"] = request.namespace
            self._check_namespace(request.namespace)
        if _is_crd(rtype):
            try:
                crd_types(obj)
            except ValueError as e:
                message = f"CustomResourceDefinition is invalid: {e}"
                raise api_error(422, "Invalid", message) from None
        created = await self._store_new(rtype, obj)
        if _is_crd(rtype):
            self._sync_crd(created)
        return reply(self._present(request, rtype, created), 201).response

    async def _delete_one(self, request: rendering.Request, rtype: ResourceType) -> None:
        options = request.data if isinstance(request.data, dict) else {}
        policy = _propagation(options, request.params)
        name = request.name or ""
        async with self._lock:
            cur = self._find(rtype, request.namespace, name)
            if cur is None:
                raise self._not_found(rtype, name)
            preconditions = options.get("preconditions") or {}
            for field in ("uid", "resourceVersion"):
                wanted = preconditions.get(field)
                if wanted and wanted != cur["metadata"].get(field):
                    raise self._conflict(
                        rtype,
                        name,
                        f"Precondition failed: {field} in precondition: {wanted}, "
                        f"{field} in object meta: {cur['metadata'].get(field)}",
                    )
            if options.get("dryRun") or request.params.get("dryRun"):
                raise reply(self._present(request, rtype, cur))
            result = await self._delete(rtype, cur, policy)
        raise reply(self._present(request, rtype, result))

    async def _delete_collection(self, request: rendering.Request, rtype: ResourceType) -> None:
        options = request.data if isinstance(request.data, dict) else {}
        policy = _propagation(options, request.params)
        match = self._selectors(request)
        async with self._lock:
            items = [o for o in self._all(rtype, request.namespace) if match(o)]
            if not (options.get("dryRun") or request.params.get("dryRun")):
                items = [await self._delete(rtype, obj, policy) for obj in items]
            rv = str(self._rv)
        kind = rtype.list_kind or f"{rtype.kind}List"
        body = {"kind": kind, "apiVersion": rtype.api_version, "metadata": {"resourceVersion": rv}}
        raise reply(dict(body, items=items))

    async def _watch(self, request: rendering.Request, rtype: ResourceType) -> None:
        params = request.params
        match = self._selectors(request)
        timeout = float(params["timeoutSeconds"]) if params.get("timeoutSeconds") else None
        table = _wants_table(request)
        since = params.get("resourceVersion") or ""
        initial: list[JSON] = []
        expired = False
        bus = self._buses[rtype.storage]
        async with self._lock:
            marker = await bus.mark()
            if truthy(params.get("sendInitialEvents")):
                if params.get("resourceVersionMatch") != "NotOlderThan":
                    await bus.unmark(marker)
                    raise api_error(
                        422,
                        "Invalid",
                        "resourceVersionMatch: Forbidden: sendInitialEvents requires setting "
                        "resourceVersionMatch to NotOlderThan",
                    )
                initial = [{"type": "ADDED", "object": o} for o in self._all(rtype) if match(o)]
                bookmark = {
                    "kind": rtype.kind,
                    "apiVersion": rtype.api_version,
                    "metadata": {
                        "resourceVersion": str(self._rv),
                        "annotations": {INITIAL_EVENTS_END: "true"},
                    },
                }
                initial.append({"type": "BOOKMARK", "object": bookmark})
            elif since in ("", "0"):
                initial = [{"type": "ADDED", "object": o} for o in self._all(rtype) if match(o)]
            else:
                try:
                    start = int(since)
                except ValueError:
                    await bus.unmark(marker)
                    message = f"invalid resourceVersion {since!r}"
                    raise api_error(400, "BadRequest", message) from None
                if start < self._compacted_rv:
                    expired = True
                    initial = [_expired(start, self._compacted_rv)]
                else:
                    for event in self._history:
                        if event.rv > start and event.storage == rtype.storage:
                            initial.extend(_filtered(event, match))

        response = aiohttp.web.StreamResponse(
            status=200, headers={"Content-Type": "application/json"}
        )
        response.enable_chunked_encoding()
        assert request._raw_request is not None
        headers_sent = False

        async def send(event: JSON) -> None:
            nonlocal headers_sent
            obj = event["object"]
            if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                if table:  # a real server sends the column definitions once
                    obj = self._table(request, rtype, [obj], headers=not headers_sent)
                    headers_sent = True
                elif obj.get("apiVersion") != rtype.api_version:
                    obj = dict(obj, apiVersion=rtype.api_version)
            line = json.dumps({"type": event["type"], "object": obj}, separators=(",", ":"))
            await response.write(line.encode() + b"\n")

        try:
            await response.prepare(request._raw_request)
            for each in initial:
                await send(each)
            if not expired and not self._closing:
                async with (
                    asyncio.timeout(timeout),
                    contextlib.aclosing(bus.stream(since=marker)) as stream,  # type: ignore[type-var]
                ):
                    async for item in stream:
                        if item is STOP:
                            break
                        for each in _filtered(item, match):
                            await send(each)
        except (TimeoutError, ConnectionError):
            pass
        finally:
            with contextlib.suppress(ValueError):
                await bus.unmark(marker)
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
        raise Reply(response)

    def _table(
        self,
        request: rendering.Request,
        rtype: ResourceType,
        objs: list[JSON],
        headers: bool = True,
    ) -> JSON:
        """A meta.k8s.io/v1 Table of the objects, with the type's printer columns."""
        include = request.params.get("includeObject") or "PartialObjectMetadata"
        rows = []
        for obj in objs:
            cells = [obj["metadata"]["name"], *(_cell(c, obj) for c in rtype.columns)]
            row: JSON = {"cells": cells}
            if include == "Object":
                row["object"] = dict(obj, apiVersion=rtype.api_version)
            elif include != "None":
                row["object"] = {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": obj["metadata"],
                }
            rows.append(row)
        columns = [
            {
                "name": "Name",
                "type": "string",
                "format": "name",
                "description": NAME_DESCRIPTION,
                "priority": 0,
            }
        ] + [
            {
                "name": c["name"],
                "type": c.get("type", "string"),
                "format": c.get("format", ""),
                "description": c.get("description", ""),
                "priority": c.get("priority", 0),
            }
            for c in rtype.columns
        ]
        table: JSON = {
            "kind": "Table",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": {"resourceVersion": str(self._rv)},
            "columnDefinitions": columns if headers else [],
            "rows": rows,
        }
        return table

    # -- discovery and the rest (kmock's scaffold routes these here) --

    async def _serve_server_version(self, request: rendering.Request) -> rendering.Payload:
        return dict(SERVER_VERSION)

    def _groups(self) -> dict[str, list[str]]:
        groups: dict[str, set[str]] = collections.defaultdict(set)
        for group, version, _ in self._types:
            if group:
                groups[group].add(version)
        return {g: sorted(vs, key=version_priority, reverse=True) for g, vs in groups.items()}

    def _group(self, name: str, versions: list[str]) -> JSON:
        listed = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
        return {"name": name, "versions": listed, "preferredVersion": listed[0]}

    async def _serve_apis(self, request: rendering.Request) -> rendering.Payload:
        groups = [self._group(g, vs) for g, vs in sorted(self._groups().items())]
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}

    async def _serve_group(self, request: rendering.Request) -> rendering.Payload:
        assert request.resource is not None
        versions = self._groups().get(request.resource.group or "")
        if not versions:
            raise api_error(404, "NotFound", "the server could not find the requested resource")
        return dict(self._group(request.resource.group or "", versions), kind="APIGroup")

    async def _serve_version(self, request: rendering.Request) -> rendering.Payload:
        assert request.resource is not None
        group, version = request.resource.group or "", request.resource.version or ""
        types = sorted(
            (t for t in self._types.values() if (t.group, t.version) == (group, version)),
            key=lambda t: t.plural,
        )
        if not types:
            raise api_error(404, "NotFound", "the server could not find the requested resource")
        resources = []
        for t in types:
            resources.append(
                {
                    "name": t.plural,
                    "singularName": t.singular,
                    "namespaced": t.namespaced,
                    "kind": t.kind,
                    "verbs": list(t.verbs),
                    **({"shortNames": list(t.short_names)} if t.short_names else {}),
                    **({"categories": list(t.categories)} if t.categories else {}),
                }
            )
            for sub in t.subresources:
                resources.append(
                    {
                        "name": f"{t.plural}/{sub}",
                        "singularName": "",
                        "namespaced": t.namespaced,
                        "kind": t.kind,
                        "verbs": list(SUBRESOURCE_VERBS),
                    }
                )
        group_version = f"{group}/{version}" if group else version
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": group_version,
            "resources": resources,
        }

    def _serve_openapi(self, request: rendering.Request) -> None:
        path = request.url.path
        if path == "/openapi/v2":
            accept = request.headers.get("Accept", "")
            if "protobuf" in accept and "json" not in accept:
                raise api_error(406, "NotAcceptable", "only application/json is served")
            info = {"title": "Kubernetes", "version": SERVER_VERSION["gitVersion"]}
            raise reply({"swagger": "2.0", "info": info, "paths": {}, "definitions": {}})
        gvs = sorted({(t.group, t.version) for t in self._types.values()})
        names = {(g, v): f"apis/{g}/{v}" if g else f"api/{v}" for g, v in gvs}
        if path == "/openapi/v3":
            paths = {
                name: {"serverRelativeURL": f"/openapi/v3/{name}?hash={self._rv:016X}"}
                for name in names.values()
            }
            raise reply({"paths": paths})
        wanted = path.removeprefix("/openapi/v3/")
        for (group, version), name in names.items():
            if name == wanted:
                gv = (group, version)
                types = [t for t in self._types.values() if (t.group, t.version) == gv]
                raise reply(_openapi_document(types))
        raise api_error(404, "NotFound", "the server could not find the requested resource")


SYSTEM_FIELDS = (
    "uid",
    "name",
    "namespace",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "generation",
)
_MODIFIED = (
    "the object has been modified; please apply your changes to the latest version and try again"
)


def _drop_empty(meta: JSON) -> None:
    """Go's omitempty: empty labels, annotations, finalizers, owner references are absent."""
    for field in ("labels", "annotations", "finalizers", "ownerReferences"):
        if field in meta and not meta[field]:
            del meta[field]


def _without(obj: JSON, rtype: ResourceType, *, meta: bool = False, version: bool = False) -> JSON:
    """The object less what a comparison ignores: all metadata, or only its resourceVersion."""
    result = dict(obj)
    if meta:
        result.pop("metadata", None)
        if rtype.has_status:
            result.pop("status", None)
    elif version:
        result["metadata"] = {
            k: v for k, v in (obj.get("metadata") or {}).items() if k != "resourceVersion"
        }
    return result


def _is(rtype: ResourceType, group: str, plural: str) -> bool:
    return rtype.crd is None and (rtype.group, rtype.plural) == (group, plural)


def _is_crd(rtype: ResourceType) -> bool:
    return _is(rtype, "apiextensions.k8s.io", "customresourcedefinitions")


def _propagation(options: Mapping[str, Any], params: Mapping[str, str]) -> str | None:
    policy = options.get("propagationPolicy") or params.get("propagationPolicy")
    orphan = options.get("orphanDependents") or truthy(params.get("orphanDependents"))
    if policy is None and orphan:
        policy = "Orphan"
    return policy  # type: ignore[no-any-return]


def _wants_table(request: rendering.Request) -> bool:
    accept = request.headers.get("Accept", "")
    return "as=Table" in accept and "g=meta.k8s.io" in accept


def _expired(start: int, compacted: int) -> JSON:
    return {
        "type": "ERROR",
        "object": {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": f"too old resource version: {start} ({compacted + 1})",
            "reason": "Expired",
            "code": 410,
        },
    }


def _filtered(event: Event, match: Callable[[JSON], bool]) -> list[JSON]:
    """The event as a watch with selectors sees it (objects that stop matching are DELETED)."""
    now = match(event.obj)
    before = event.prev is not None and match(event.prev)
    if event.type == "MODIFIED" and now != before:
        if now:
            return [{"type": "ADDED", "object": event.obj}]
        version = event.obj["metadata"]["resourceVersion"]
        assert event.prev is not None
        prev = dict(event.prev, metadata=dict(event.prev["metadata"], resourceVersion=version))
        return [{"type": "DELETED", "object": prev}]
    return [{"type": event.type, "object": event.obj}] if now else []


def _crd_status(crd: JSON) -> JSON:
    spec = crd.get("spec") or {}
    now = now_rfc3339()
    storage = [v.get("name") for v in spec.get("versions") or [] if v.get("storage")]

    def condition(type_: str, reason: str, message: str) -> JSON:
        return {
            "type": type_,
            "status": "True",
            "lastTransitionTime": now,
            "reason": reason,
            "message": message,
        }

    return {
        "conditions": [
            condition("NamesAccepted", "NoConflicts", "no conflicts found"),
            condition("Established", "InitialNamesAccepted", "the initial names are accepted"),
        ],
        "acceptedNames": spec.get("names") or {},
        "storedVersions": storage,
    }


def _openapi_document(types: Iterable[ResourceType]) -> JSON:
    """An OpenAPI v3 document without schemas: the PATCH operations and their parameters.

    kubectl checks here whether the server validates fields itself (``fieldValidation``);
    if it does, kubectl does not validate on the client, which would need the schemas. The
    patch operations declare no request body: kubectl then builds strategic merge patches
    from its compiled-in types, and JSON merge patches for custom resources.
    """
    paths: JSON = {}
    for t in types:
        base = f"/apis/{t.group}/{t.version}" if t.group else f"/api/{t.version}"
        ns = "/namespaces/{namespace}" if t.namespaced else ""
        gvk = {"group": t.group, "version": t.version, "kind": t.kind}
        parameters = [
            {"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": True}}
            for name in ("dryRun", "fieldManager", "fieldValidation", "force")
        ]
        for suffix in ("", *(f"/{s}" for s in t.subresources)):
            paths[f"{base}{ns}/{t.plural}/{{name}}{suffix}"] = {
                "patch": {
                    "operationId": f"patch{t.kind}{suffix.replace('/', '_')}",
                    "x-kubernetes-action": "patch",
                    "x-kubernetes-group-version-kind": gvk,
                    "parameters": parameters,
                    "responses": {"200": {"description": "OK"}},
                }
            }
    info = {"title": "Kubernetes", "version": SERVER_VERSION["gitVersion"]}
    return {"openapi": "3.0.0", "info": info, "paths": paths, "components": {"schemas": {}}}


# --- the cluster: the emulator served from a thread ------------------------------------------


class Cluster:
    """The emulator on 127.0.0.1 (a random port), served from a background thread.

    Everything here is synchronous and thread-safe. ``get``/``list`` read the store directly
    (they are not API requests and do not count in ``request_count``); ``apply_crds`` and
    ``kubectl`` go through HTTP as any client does. Do not call these from inside the
    emulator's own loop (e.g. from a kmock reaction): they wait on that loop.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        history_limit: int = 20_000,
        keep_history: bool = True,
    ):
        self.host = host
        self._port = port
        self._options = {"history_limit": history_limit, "keep_history": keep_history}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stopping: asyncio.Event | None = None
        self._failure: BaseException | None = None
        self._emulator: KubeEmulator | None = None
        self._dir: Path | None = None

    # -- lifecycle --

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Cluster:
        if self._thread is not None:
            raise RuntimeError("the cluster is started already")
        self._dir = Path(tempfile.mkdtemp(prefix="kube-emulator-"))
        self._ready.clear()
        self._failure = None
        self._thread = threading.Thread(target=self._run, name="kube-emulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout=30):
            raise RuntimeError("the emulated API server did not start in 30 s")
        if self._failure is not None:
            self._thread.join()
            raise RuntimeError("the emulated API server failed to start") from self._failure
        self._write_kubeconfig()
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        if self._loop is not None and self._stopping is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(timeout=30)
        alive, self._thread = self._thread.is_alive(), None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
        if alive:
            raise RuntimeError("the emulated API server did not stop in 30 s")
        if self._failure is not None:
            raise RuntimeError("the emulated API server failed") from self._failure

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as e:  # reported by start() or stop()
            self._failure = e
        finally:
            self._ready.set()
            self._loop.close()

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        emulator = KubeEmulator(**self._options)  # type: ignore[arg-type]
        server = aiohttp.web.Server(emulator, handler_cancellation=True, access_log=None)
        runner = aiohttp.web.ServerRunner(server, shutdown_timeout=5)
        async with emulator:
            await runner.setup()
            try:
                site = aiohttp.web.TCPSite(runner, self.host, self._port)
                await site.start()
                self._port = runner.addresses[0][1]
                self._emulator = emulator
                self._ready.set()
                await self._stopping.wait()
                await emulator.close()
            finally:
                await runner.cleanup()

    # -- addresses --

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self._port}"

    @property
    def kubeconfig(self) -> Path:
        """A kubeconfig for the emulator: context ``emulator``, namespace ``default``."""
        assert self._dir is not None, "start the cluster first"
        return self._dir / "kubeconfig"

    def _write_kubeconfig(self) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "emulator", "user": {"token": "emulator-token"}}],
            "contexts": [
                {
                    "name": "emulator",
                    "context": {"cluster": "emulator", "user": "emulator", "namespace": "default"},
                }
            ],
            "current-context": "emulator",
        }
        self.kubeconfig.write_text(yaml.safe_dump(config, sort_keys=False))

    @property
    def emulator(self) -> KubeEmulator:
        """The kmock handler: reactions (``emulator[...] << 500``), ``objects``, ``requests``."""
        assert self._emulator is not None, "start the cluster first"
        return self._emulator

    # -- calls into the loop --

    def call(self, fn: Callable[[], Coroutine[Any, Any, T]], timeout: float = 30) -> T:
        """Run a coroutine function in the emulator's loop and wait for its result."""
        assert self._loop is not None, "start the cluster first"
        return asyncio.run_coroutine_threadsafe(fn(), self._loop).result(timeout)

    def get(self, gvr: str, namespace: str | None, name: str) -> JSON | None:
        """The stored object (a copy), or None. ``gvr``: ``"batch/v1/jobs"``, ``"v1/pods"``."""

        async def read() -> JSON | None:
            rtype = self.emulator.find_type(gvr)
            async with self.emulator._lock:
                obj = self.emulator._find(rtype, namespace, name)
            return clone(self.emulator._present(_PLAIN, rtype, obj)) if obj else None

        return self.call(read)

    def list(
        self, gvr: str, namespace: str | None = None, labels: Mapping[str, str] | None = None
    ) -> builtins.list[JSON]:
        """Stored objects (copies) in a namespace or all, with these labels, by namespace/name."""
        match = parse_label_selector(labels_selector(labels))

        async def read() -> builtins.list[JSON]:
            rtype = self.emulator.find_type(gvr)
            async with self.emulator._lock:
                found = [
                    clone(self.emulator._present(_PLAIN, rtype, obj))
                    for obj in self.emulator._all(rtype, namespace)
                    if match(obj["metadata"].get("labels") or {})
                ]
            return sorted(found, key=lambda o: (o["metadata"].get("namespace") or "", _name(o)))

        return self.call(read)

    @property
    def request_count(self) -> int:
        """The number of HTTP requests served so far (watches count once, when they start)."""
        return self.emulator.request_count

    @property
    def request_counts(self) -> collections.Counter[str]:
        """Requests by verb and resource: ``{"patch qeval.dev/v1alpha1/evalruns/status": 3}``."""
        return collections.Counter(self.emulator.request_counts)

    def reset_request_count(self) -> int:
        """Zero the request counters; returns the count before."""
        emulator = self.emulator

        async def reset() -> int:
            count = emulator.request_count
            emulator.request_count = 0
            emulator.request_counts.clear()
            return count

        return self.call(reset)

    @property
    def errors(self) -> builtins.list[Exception]:
        """Unexpected server-side exceptions (bugs of the emulator or of a reaction), not 4xx."""
        return list(self.emulator._errors[-1]) if self.emulator._errors else []

    # -- clients --

    def request(
        self, method: str, path: str, body: Any = None, content_type: str | None = None
    ) -> tuple[int, Any]:
        """One HTTP request to the API; returns the status and the decoded JSON body.

        PATCH bodies go as merge patches (JSON patches when ``body`` is a list) unless
        ``content_type`` says otherwise.
        """
        data = None if body is None else json.dumps(body).encode()
        if content_type is None and method.upper() == "PATCH":
            json_patch = isinstance(body, list)
            content_type = f"application/{'json-patch' if json_patch else 'merge-patch'}+json"
        headers = {"Content-Type": content_type or "application/json", "Accept": "application/json"}
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def apply_crds(self, path: Path | str) -> builtins.list[str]:
        """Create (or replace) every CustomResourceDefinition in a YAML file or a directory."""
        path = Path(path)
        files = [path]
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml", ".json"))
        names = []
        base = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
        for file in files:
            for doc in yaml.safe_load_all(file.read_text()):
                if not doc or doc.get("kind") != "CustomResourceDefinition":
                    continue
                name = doc["metadata"]["name"]
                status, body = self.request("POST", base, doc)
                if status == 409:
                    _, current = self.request("GET", f"{base}/{name}")
                    doc = copy.deepcopy(doc)
                    doc["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
                    status, body = self.request("PUT", f"{base}/{name}", doc)
                if status >= 300:
                    raise RuntimeError(f"CRD {name} ({file}) refused: {status} {body}")
                names.append(name)
        return names

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run the real kubectl against this cluster (its own discovery cache, no ~/.kube)."""
        assert self._dir is not None, "start the cluster first"
        command = [
            str(binaries.kubectl()),
            f"--kubeconfig={self.kubeconfig}",
            f"--cache-dir={self._dir / 'kubectl-cache'}",
            *args,
        ]
        env = dict(os.environ, KUBECONFIG=str(self.kubeconfig))
        result = subprocess.run(
            command, input=input, capture_output=True, text=True, timeout=timeout, env=env
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed ({result.returncode}):\n"
                f"{result.stdout}\n{result.stderr}"
            )
        return result


def _name(obj: JSON) -> str:
    return str(obj["metadata"]["name"])


_PLAIN = rendering.Request()  # a request with no Accept header: objects as they are
