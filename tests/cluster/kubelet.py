"""A kubelet stand-in: runs the pods the real kube-scheduler binds to registered Node objects
as local processes of the test machine, and reports their status to the real API server.

There is no container runtime and no Docker engine here, so this is a stand-in, named so in
its logs and in everything it writes. What it does, as a kubelet does, per node identity
(``system:node:<node>`` in ``system:nodes``, so the Node authorizer and NodeRestriction
limit it to its own Node, its own pods and what they reference):

* registers Node objects shaped like GPU nodes (:func:`gpu_node`, :func:`cpu_node`):
  capacity, the labels GPU feature discovery sets, the ``nvidia.com/gpu`` taint, Ready;
* watches the pods bound to each node and runs init containers in order, then the
  containers, as processes: the real ``command`` + ``args`` (``$(VAR)`` expanded), the env a
  kubelet resolves (values, secret/configMap keys, fieldRef, resourceFieldRef, envFrom,
  ``KUBERNETES_SERVICE_HOST/PORT``), with ``PATH`` starting at this interpreter's ``bin``
  (the venv, where ``qeval`` lives). The image is recorded in the status, never pulled;
* volumes in a mount namespace per container (``unshare -m``): a PVC to
  ``<root>/volumes/<namespace>/<claim>``, emptyDir to a folder per pod (medium ``Memory``
  too: a folder, not a tmpfs), configMap, secret, downwardAPI and projected volumes (the
  ServiceAccount token comes from the TokenRequest API, bound to the pod), hostPath,
  ``subPath``, ``readOnly`` (a read-only bind mount), the termination-message file and a
  per-pod ``/etc/hosts``. Mount points missing on the host (``/mnt/volumes/<claim>``,
  ``/var/run/secrets/kubernetes.io/serviceaccount``, ``/dev/termination-log``) are created
  there and removed at :meth:`Kubelet.stop` when the stand-in created them and they are empty;
* pod status (phase, IPs, conditions, container states, restart counts, termination
  messages with ``FallbackToLogsOnError``), restarts with exponential back-off (base 1 s by
  default instead of the kubelet's 10 s, a constructor parameter) reported as
  CrashLoopBackOff, startup/readiness/liveness probes (httpGet, tcpSocket, exec) run for
  real, graceful deletion (SIGTERM, grace period capped, SIGKILL, then the final delete with
  the pod's uid as precondition), events (FailedMount, Started, Unhealthy, Killing, BackOff);
* networking stand-in: pods share the host's network namespace, each with its own loopback
  address (127.N.X.Y, N per test process) as pod IP; a ``sitecustomize.py`` shim (on
  ``PYTHONPATH``) rewrites Python binds to 0.0.0.0 / :: into binds to that IP. Service
  names resolve through the per-pod ``/etc/hosts`` (a stand-in for CoreDNS + kube-proxy):
  ``svc``, ``svc.ns``, ``svc.ns.svc`` and ``svc.ns.svc.cluster.local`` map to a ready pod
  of the Service's selector, like a headless Service, so the Service's ``targetPort`` is
  assumed equal to its ``port``; the ``kubernetes`` Service (``kubernetes.default.svc``, and
  ``KUBERNETES_SERVICE_HOST``/``PORT``) is 127.0.9.N:443, where a kube-proxy stand-in
  (the control plane's ``ServiceProxy``) forwards to the API server;
* a local-path provisioner stand-in (the control plane runs no PV controller): every
  unbound PVC gets a hostPath PV on its folder and both are bound at once (also for
  ``WaitForFirstConsumer`` classes).

What it cannot do: pull or run images (the image's filesystem, entrypoint and ENV do not
exist: a container without ``command`` runs its ``args``; ``extra_env`` plays an image's
ENV), enforce resources (no cgroups: requests and limits only feed the scheduler and
resourceFieldRef), OOM kills, user and group IDs, securityContext, seccomp, capabilities,
read-only root filesystems (processes run as the current user, root here, on the host's
filesystem), network isolation, ports other than the pod IP's, non-Python programs binding
0.0.0.0 (the shim is Python's), service environment variables other than the
``kubernetes`` Service's, Service ``targetPort`` mapping, ClusterIPs, sidecar (restartable
init) containers, ephemeral containers, gRPC probes, lifecycle hooks, readiness gates,
configMap/secret updates after start, image pull secrets, and node heartbeats (the node
lifecycle controller is off).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import itertools
import json
import logging
import math
import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger("kubelet-standin")

KUBELET_VERSION = "v1.35.4"
STANDIN = "kubelet stand-in"
GPU = "nvidia.com/gpu"
TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
BIN_DIR = str(Path(sys.executable).parent)
Obj = dict[str, Any]


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- nodes -------------------------------------------------------------------------------------


def cpu_node(name: str, cpu: str = "16", memory: str = "64Gi", pods: int = 110) -> Obj:
    """A Node as a kubelet registers it (metadata, spec and the status it reports)."""
    resources = {"cpu": cpu, "memory": memory, "pods": str(pods), "ephemeral-storage": "500Gi"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "beta.kubernetes.io/os": "linux",
                "beta.kubernetes.io/arch": "amd64",
            },
            "annotations": {"qeval.dev/standin": STANDIN},
        },
        "spec": {},
        "status": {
            "capacity": dict(resources),
            "allocatable": dict(resources),
            "conditions": [
                _condition(t, "False", r, m)
                for t, r, m in (
                    ("MemoryPressure", "KubeletHasSufficientMemory", "sufficient memory"),
                    ("DiskPressure", "KubeletHasNoDiskPressure", "no disk pressure"),
                    ("PIDPressure", "KubeletHasSufficientPID", "sufficient PID"),
                )
            ]
            + [_condition("Ready", "True", "KubeletReady", f"{STANDIN} is posting ready status")],
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": uuid.uuid5(uuid.NAMESPACE_DNS, name).hex,
                "systemUUID": str(uuid.uuid5(uuid.NAMESPACE_URL, name)),
                "bootID": str(uuid.uuid4()),
                "kernelVersion": os.uname().release,
                "osImage": f"{STANDIN} (processes on the test machine)",
                "containerRuntimeVersion": "standin://0",
                "kubeletVersion": KUBELET_VERSION,
                "kubeProxyVersion": KUBELET_VERSION,
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        },
    }


def gpu_node(
    name: str,
    gpus: int = 8,
    product: str = "NVIDIA-H100-80GB-HBM3",
    memory_mib: int = 81559,
    compute_major: int = 9,
    compute_minor: int = 0,
    tainted: bool = True,
    cpu: str = "192",
    memory: str = "2048Gi",
) -> Obj:
    """A GPU node: ``nvidia.com/gpu`` capacity, GPU feature discovery's labels and (if
    ``tainted``) the ``nvidia.com/gpu=present:NoSchedule`` taint the GPU operator advises."""
    node = cpu_node(name, cpu=cpu, memory=memory)
    node["metadata"]["labels"] |= {
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.product": product,
        "nvidia.com/gpu.memory": str(memory_mib),
        "nvidia.com/gpu.count": str(gpus),
        "nvidia.com/gpu.compute.major": str(compute_major),
        "nvidia.com/gpu.compute.minor": str(compute_minor),
        "nvidia.com/gpu.family": "hopper" if compute_major == 9 else "ampere",
    }
    for key in ("capacity", "allocatable"):
        node["status"][key][GPU] = str(gpus)
    if tainted:
        node["spec"]["taints"] = [{"key": GPU, "value": "present", "effect": "NoSchedule"}]
    return node


def _condition(kind: str, status: str, reason: str = "", message: str = "") -> Obj:
    c = {"type": kind, "status": status, "lastTransitionTime": now(), "lastHeartbeatTime": now()}
    return c | ({"reason": reason} if reason else {}) | ({"message": message} if message else {})


# --- env, as the kubelet resolves it -----------------------------------------------------------


class ConfigError(Exception):
    """A container's env or volume cannot be resolved yet (CreateContainerConfigError)."""


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: defined names are replaced, ``$$`` escapes ``$``,
    undefined references stay as written (k8s.io/kubernetes third_party/forked/golang)."""
    out, i = [], 0
    while i < len(text):
        ch = text[i]
        if ch != "$" or i + 1 >= len(text):
            out.append(ch)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "(":
            end = text.find(")", i + 2)
            if end < 0:
                out.append("$(")
                i += 2
            else:
                name = text[i + 2 : end]
                out.append(env.get(name, f"$({name})"))
                i = end + 1
        else:
            out.append("$" + nxt)
            i += 2
    return "".join(out)


_SUBSCRIPT = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


def field_value(pod: Obj, path: str) -> str:
    """A downward-API ``fieldRef`` value of ``pod``."""
    meta, spec, status = pod["metadata"], pod.get("spec", {}), pod.get("status", {})
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        "status.podIP": status.get("podIP"),
        "status.hostIP": status.get("hostIP"),
        "status.podIPs": ",".join(p["ip"] for p in status.get("podIPs", [])),
        "status.hostIPs": ",".join(p["ip"] for p in status.get("hostIPs", [])),
    }
    if path in simple:
        return simple[path] or ""
    if m := _SUBSCRIPT.match(path):
        return (meta.get(m[1]) or {}).get(m[2], "")
    if path in ("metadata.labels", "metadata.annotations"):
        items = sorted((meta.get(path.split(".")[1]) or {}).items())
        return "\n".join(f'{k}="{v}"' for k, v in items)
    raise ConfigError(f"unsupported fieldPath {path!r}")


def resource_value(container: Obj, ref: Obj, allocatable: Mapping[str, str]) -> str:
    """A ``resourceFieldRef`` value: limits default to the node's allocatable, as the kubelet
    does; cpu rounds up to the divisor (default 1), memory and storage likewise (bytes)."""
    from kubernetes.utils import parse_quantity

    kind, resource = ref["resource"].split(".", 1)
    resources = container.get("resources", {})
    quantity = (resources.get(kind) or {}).get(resource)
    if quantity is None and kind == "requests":
        quantity = (resources.get("limits") or {}).get(resource)
    if quantity is None:
        quantity = allocatable.get(resource, "0") if kind == "limits" else "0"
    divisor = parse_quantity(str(ref.get("divisor") or "1"))
    return str(math.ceil(parse_quantity(str(quantity)) / divisor))


Fetch = Callable[[str, str], "dict[str, str] | None"]  # (secret|configmap, name) -> data


def _key(fetch: Fetch, kind: str, ref: Obj) -> str | None:
    data = fetch(kind, ref["name"])
    optional = ref.get("optional", False)
    if data is None:
        if optional:
            return None
        raise ConfigError(f'{kind} "{ref["name"]}" not found')
    if ref["key"] not in data:
        if optional:
            return None
        raise ConfigError(f"couldn't find key {ref['key']} in {kind} {ref['name']}")
    return data[ref["key"]]


def resolve_env(
    pod: Obj,
    container: Obj,
    fetch: Fetch,
    allocatable: Mapping[str, str] | None = None,
    service_env: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The container's env as the kubelet builds it: service variables, then ``envFrom`` in
    order, then ``env`` in order, each value ``$(VAR)``-expanded against what precedes it."""
    env = dict(service_env or {})
    for source in container.get("envFrom", []):
        kind, ref = (
            ("secret", source["secretRef"])
            if "secretRef" in source
            else ("configmap", source["configMapRef"])
        )
        data = fetch(kind, ref["name"])
        if data is None:
            if ref.get("optional"):
                continue
            raise ConfigError(f'{kind} "{ref["name"]}" not found')
        env |= {source.get("prefix", "") + k: v for k, v in data.items()}
    for var in container.get("env", []):
        if "value" in var or "valueFrom" not in var:
            env[var["name"]] = expand(var.get("value", ""), env)
            continue
        source = var["valueFrom"]
        if "fieldRef" in source:
            value: str | None = field_value(pod, source["fieldRef"]["fieldPath"])
        elif "resourceFieldRef" in source:
            ref = source["resourceFieldRef"]
            named = ref.get("containerName") or container["name"]
            target = next(
                (c for c in _all_containers(pod) if c["name"] == named),
                container,
            )
            value = resource_value(target, ref, allocatable or {})
        elif "secretKeyRef" in source:
            value = _key(fetch, "secret", source["secretKeyRef"])
        elif "configMapKeyRef" in source:
            value = _key(fetch, "configmap", source["configMapKeyRef"])
        else:
            raise ConfigError(f"unsupported valueFrom in env {var['name']}")
        if value is not None:
            env[var["name"]] = value
    return env


def _all_containers(pod: Obj) -> list[Obj]:
    return pod["spec"].get("initContainers", []) + pod["spec"]["containers"]


def service_env(host: str, port: int) -> dict[str, str]:
    """The ``kubernetes`` Service's variables (its address: the proxy stand-in's)."""
    return {
        "KUBERNETES_SERVICE_HOST": host,
        "KUBERNETES_SERVICE_PORT": str(port),
        "KUBERNETES_SERVICE_PORT_HTTPS": str(port),
        "KUBERNETES_PORT": f"tcp://{host}:{port}",
        f"KUBERNETES_PORT_{port}_TCP": f"tcp://{host}:{port}",
        f"KUBERNETES_PORT_{port}_TCP_PROTO": "tcp",
        f"KUBERNETES_PORT_{port}_TCP_PORT": str(port),
        f"KUBERNETES_PORT_{port}_TCP_ADDR": host,
    }


# --- networking stand-in -----------------------------------------------------------------------

_addresses = itertools.count()
_addresses_lock = threading.Lock()


# The second octet of this process's pod IPs: two test processes (each with its own
# stand-in) never hand out the same address (127.0.x.y is the host's and the Services').
NET = 10 + os.getpid() % 240


def pod_ip(n: int, net: int | None = None) -> str:
    """The ``n``-th pod IP: 127.NET.X.Y, Y in 1..254; Linux routes all of 127/8 to ``lo``."""
    x, y = divmod(n, 254)
    if x > 255:
        raise RuntimeError("the kubelet stand-in ran out of loopback pod IPs")
    return f"127.{NET if net is None else net}.{x}.{1 + y}"


def next_pod_ip() -> str:
    with _addresses_lock:
        return pod_ip(next(_addresses))


def service_names(name: str, namespace: str, pod_namespace: str) -> list[str]:
    """The names a pod in ``pod_namespace`` resolves a Service by (its DNS search path)."""
    names = [
        f"{name}.{namespace}",
        f"{name}.{namespace}.svc",
        f"{name}.{namespace}.svc.cluster.local",
    ]
    return ([name] if namespace == pod_namespace else []) + names


def service_addresses(services: Iterable[Obj], pods: Iterable[Obj]) -> dict[tuple[str, str], str]:
    """(namespace, service) -> the IP of a ready pod its selector picks (the first by name)."""
    ready: dict[str, list[Obj]] = {}
    for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
        status = pod.get("status", {})
        is_ready = any(
            c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", [])
        )
        if is_ready and status.get("podIP") and not pod["metadata"].get("deletionTimestamp"):
            ready.setdefault(pod["metadata"]["namespace"], []).append(pod)
    found = {}
    for svc in services:
        meta, selector = svc["metadata"], (svc.get("spec") or {}).get("selector")
        if not selector:
            continue
        for pod in ready.get(meta["namespace"], []):
            labels = pod["metadata"].get("labels") or {}
            if all(labels.get(k) == v for k, v in selector.items()):
                found[(meta["namespace"], meta["name"])] = pod["status"]["podIP"]
                break
    return found


def hosts_file(
    pod: Obj, ip: str, services: Mapping[tuple[str, str], str], api_ip: str = "127.0.0.1"
) -> str:
    """The pod's ``/etc/hosts``: as the kubelet writes it, plus the Services it can resolve
    (the stand-in for cluster DNS) and ``kubernetes.default.svc`` -> the API server."""
    meta, spec = pod["metadata"], pod["spec"]
    ns, host = meta["namespace"], spec.get("hostname") or meta["name"]
    own = [host]
    if spec.get("subdomain"):
        own.insert(0, f"{host}.{spec['subdomain']}.{ns}.svc.cluster.local")
    lines = [
        f"# Kubernetes-managed hosts file ({STANDIN}: also stands in for cluster DNS).",
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        f"{ip}\t{' '.join(own)}",
        f"{api_ip}\t" + " ".join(service_names("kubernetes", "default", ns)),
    ]
    for alias in spec.get("hostAliases") or []:
        lines.append(f"{alias['ip']}\t{' '.join(alias.get('hostnames', []))}")
    for (svc_ns, name), address in sorted(services.items()):
        lines.append(f"{address}\t{' '.join(service_names(name, svc_ns, ns))}")
    return "\n".join(lines) + "\n"


SITECUSTOMIZE = '''\
"""kubelet stand-in network shim (written by tests/cluster/kubelet.py, never shipped).

Pods share the host's network namespace, each with its own loopback address as pod IP
(QEVAL_STANDIN_POD_IP): a bind to 0.0.0.0, '' or :: becomes a bind to that address, so two
pods can both listen on port 8000 as two real pods can.
"""
import os
import socket

_ip = os.environ.get("QEVAL_STANDIN_POD_IP")
if _ip:
    _bind = socket.socket.bind

    def bind(self, address):
        if isinstance(address, tuple) and address:
            host = address[0]
            if self.family == socket.AF_INET and host in ("", "0.0.0.0"):
                address = (_ip, *address[1:])
            elif self.family == socket.AF_INET6 and host in ("", "::", "::0"):
                try:
                    self.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                except OSError:
                    pass
                address = ("::ffff:" + _ip, *address[1:])
        return _bind(self, address)

    socket.socket.bind = bind
'''


# --- probes, logs, restarts --------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """A probe with the API's defaults."""

    action: Obj
    initial_delay: float = 0
    period: float = 10
    timeout: float = 1
    success_threshold: int = 1
    failure_threshold: int = 3

    @classmethod
    def parse(cls, spec: Obj | None) -> Probe | None:
        if not spec:
            return None
        action = {k: spec[k] for k in ("httpGet", "tcpSocket", "exec", "grpc") if k in spec}
        return cls(
            action=action,
            initial_delay=spec.get("initialDelaySeconds", 0),
            period=spec.get("periodSeconds", 10),
            timeout=spec.get("timeoutSeconds", 1),
            success_threshold=spec.get("successThreshold", 1),
            failure_threshold=spec.get("failureThreshold", 3),
        )


def container_port(port: int | str, container: Obj) -> int:
    """A probe's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for p in container.get("ports", []):
        if p.get("name") == port:
            return int(p["containerPort"])
    raise ValueError(f"port {port!r} is not among container {container['name']}'s ports")


def log_tail(data: bytes, lines: int = 80, limit: int = 4096) -> str:
    """The termination message FallbackToLogsOnError takes: the last 80 lines, at most 4 KiB."""
    text = b"\n".join(data.rstrip(b"\n").split(b"\n")[-lines:])[-limit:]
    return text.decode(errors="replace")


def backoff(base: float, restarts: int, cap_factor: float = 30) -> float:
    """The delay before restart number ``restarts + 1``: base, 2 base, 4 base, ... capped
    at 30 base (the kubelet's 10 s .. 300 s, scaled)."""
    return min(base * 2**restarts, base * cap_factor)


# Inside a pod's mount namespace the host's tree as it was, recursively bound here before
# the pod's own mounts: a pod that mounts over /tmp (an emptyDir) must not hide its other
# volumes' sources, which live under the stand-in's folder (often itself under /tmp).
STAGE = "/.qeval-standin-host"


# What stands for the image's filesystem: this checkout (the editable package) and the
# Python running it. A pod mounting over one of their parents (an emptyDir on /tmp, when the
# checkout is under /tmp) gets them bound back in, as an image would still have them.
KEEP = tuple(sorted({str(Path(__file__).resolve().parents[2]), sys.prefix, sys.base_prefix}))


def mount_argv(
    mounts: Iterable[tuple[str, str, bool]],
    hostname: str,
    workdir: str,
    argv: list[str],
    stage: str = STAGE,
    keep: Iterable[str] = KEEP,
) -> list[str]:
    """``argv`` in a new mount (and UTS) namespace with ``mounts`` (source, target, read
    only) bound in, parents before children, each source read through ``stage`` (the host's
    tree as it was: an existing directory); ``keep`` paths that a mount hides are bound
    back in; the namespace dies with its processes."""
    mounts = sorted(mounts, key=lambda m: m[1].count("/"))
    steps = ["set -e", f"mount --rbind / {shlex.quote(stage)}"]
    for source, target, read_only in mounts:
        steps.append(f"mount --bind {shlex.quote(stage + source)} {shlex.quote(target)}")
        if read_only:
            steps.append(f"mount -o remount,bind,ro {shlex.quote(target)}")
    targets = [t.rstrip("/") + "/" for _, t, _ in mounts]
    for path in keep:
        if any(path.startswith(t) for t in targets):
            q = shlex.quote(path)
            steps.append(f"mkdir -p {q}; mount --bind {shlex.quote(stage + path)} {q}")
    steps += [f"hostname {shlex.quote(hostname)} 2>/dev/null || true", f"cd {shlex.quote(workdir)}"]
    script = "; ".join(steps) + '; exec "$@"'
    return ["unshare", "-m", "-u", "--propagation", "private", "sh", "-c", script, "sh", *argv]


def pv_for_claim(claim: Obj, path: Path) -> Obj:
    """A hostPath PersistentVolume pre-bound to ``claim`` (the provisioner stand-in's)."""
    meta, spec = claim["metadata"], claim.get("spec", {})
    size = ((spec.get("resources") or {}).get("requests") or {}).get("storage", "1Gi")
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": f"pvc-{meta['uid']}",
            "annotations": {
                "pv.kubernetes.io/provisioned-by": "qeval.dev/local-path-standin",
                "pv.kubernetes.io/bound-by-controller": "yes",
            },
        },
        "spec": {
            "capacity": {"storage": size},
            "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": spec.get("storageClassName") or "",
            "volumeMode": spec.get("volumeMode", "Filesystem"),
            "hostPath": {"path": str(path), "type": "DirectoryOrCreate"},
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": meta["namespace"],
                "name": meta["name"],
                "uid": meta["uid"],
            },
        },
    }


# --- the runtime -------------------------------------------------------------------------------


def _api(kubeconfig: Path) -> Any:
    from kubernetes import client, config

    configuration = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    configuration.connection_pool_maxsize = 64
    return client.CoreV1Api(client.ApiClient(configuration))


def _raw(response: Any) -> Any:
    return json.loads(response.data)


def _why(e: Exception) -> str:
    """An API error in one line: its code and the server's message."""
    try:
        return f"{e.status} {json.loads(e.body)['message']}"  # type: ignore[attr-defined]
    except Exception:
        return str(e).splitlines()[0] if str(e) else type(e).__name__


@dataclass
class _Container:
    spec: Obj
    init: bool
    restarts: int = 0
    state: Obj = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: Obj = field(default_factory=dict)
    started: bool = False
    ready: bool = False
    done: bool = False
    process: subprocess.Popen[bytes] | None = None
    container_id: str = ""
    kill_reason: str = ""
    env: dict[str, str] = field(default_factory=dict)
    log_offset: int = 0

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    def status(self) -> Obj:
        image = self.spec.get("image", "")
        out = {
            "name": self.name,
            "image": image,
            "imageID": f"standin://{image}",
            "ready": self.ready,
            "started": self.started,
            "restartCount": self.restarts,
            "state": self.state,
            "lastState": self.last_state,
        }
        return out | ({"containerID": self.container_id} if self.container_id else {})


class _Pod(threading.Thread):
    """One pod on one node: its volumes, containers, probes and status."""

    def __init__(self, kubelet: Kubelet, node: str, api: Any, pod: Obj):
        meta = pod["metadata"]
        super().__init__(name=f"standin-pod-{meta['namespace']}/{meta['name']}", daemon=True)
        self.k, self.node, self.api, self.pod = kubelet, node, api, pod
        self.ns, self.pod_name, self.uid = meta["namespace"], meta["name"], meta["uid"]
        self.ip = next_pod_ip()
        self.dir = kubelet.root / "pods" / self.uid
        self.hosts = self.dir / "etc-hosts"
        spec = pod["spec"]
        self.policy = spec.get("restartPolicy", "Always")
        self.inits = [_Container(c, True) for c in spec.get("initContainers", [])]
        self.apps = [_Container(c, False) for c in spec["containers"]]
        for c in self.apps if self.inits else []:
            c.state = {"waiting": {"reason": "PodInitializing"}}
        self.lock = threading.RLock()
        self.changed = threading.Event()
        self.stopping = threading.Event()  # deletion or kubelet stop: kill everything
        self.delete_grace: float | None = None  # set on graceful deletion
        self.volumes: dict[str, tuple[Path, bool]] = {}
        self.sandbox = self.initialized = False
        self.start_time = now()
        self.transitions: dict[str, tuple[str, str]] = {}
        self.sent: Obj | None = None
        self.phase = "Pending"
        self.reported_events: set[str] = set()
        self.threads: list[threading.Thread] = []

    # -- lifecycle --

    def run(self) -> None:
        try:
            self._run()
        except Exception:
            log.exception("%s: pod %s/%s failed", STANDIN, self.ns, self.pod_name)
        finally:
            self._teardown()

    def _run(self) -> None:
        self.report()
        while not self.stopping.is_set():
            try:
                self._prepare_volumes()
                break
            except ConfigError as e:
                self.event("FailedMount", f"MountVolume.SetUp failed: {e}", "Warning", once=True)
                self.stopping.wait(1)
        if self.stopping.is_set():
            return
        self.write_hosts(self.k.resolve_services())  # fresh: not the last refresh's
        self.sandbox = True
        for c in self.inits:
            self._container_loop(c)
            if self.stopping.is_set():
                return
            if c.state.get("terminated", {}).get("exitCode") != 0:
                self._finish("Failed")
                return
        self.initialized = True
        self.threads = [
            threading.Thread(target=self._container_loop, args=(c,), daemon=True) for c in self.apps
        ]
        for t in self.threads:
            t.start()
        while not self.stopping.is_set():
            self.changed.wait(0.5)
            self.changed.clear()
            if all(c.done for c in self.apps):
                failed = any(c.state["terminated"]["exitCode"] != 0 for c in self.apps)
                self._finish("Failed" if failed else "Succeeded")
                return
            self.report()

    def _finish(self, phase: str) -> None:
        self.phase = phase
        self.report()
        self.stopping.wait()

    def terminate(self, grace: float | None) -> None:
        """Graceful deletion (``grace``: the pod's deletionGracePeriodSeconds) or, with
        ``None``, the kubelet stopping: kill at once, delete nothing."""
        with self.lock:
            if grace is not None and self.delete_grace is None:
                self.delete_grace = min(grace, self.k.grace_cap)
            self.stopping.set()
            self.changed.set()

    def _teardown(self) -> None:
        self.stopping.set()
        grace = self.delete_grace if self.delete_grace is not None else 0.5
        for c in self.inits + self.apps:
            if c.process is not None:
                self.kill(c, grace, "")
        for t in self.threads:
            t.join(timeout=5)
        if self.delete_grace is not None:
            # As the kubelet does, a deleted pod ends in a terminal phase before it goes.
            if self.phase not in ("Succeeded", "Failed"):
                codes = [c.state.get("terminated", {}).get("exitCode", 1) for c in self.apps]
                ran = self.initialized and all(code == 0 for code in codes)
                self.phase = "Succeeded" if ran else "Failed"
            self.report()
            try:
                self.api.delete_namespaced_pod(
                    self.pod_name,
                    self.ns,
                    # in the body: with a body, the API server ignores the query parameters
                    body={"gracePeriodSeconds": 0, "preconditions": {"uid": self.uid}},
                )
            except Exception as e:  # gone already, or the uid is another pod's now
                log.info("%s: final delete of %s/%s: %s", STANDIN, self.ns, self.pod_name, _why(e))
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- volumes --

    def fetch(self, kind: str, name: str) -> dict[str, str] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            if kind == "secret":
                obj = _raw(self.api.read_namespaced_secret(name, self.ns, _preload_content=False))
                data = obj.get("data") or {}
                return {k: base64.b64decode(v).decode(errors="replace") for k, v in data.items()}
            obj = _raw(self.api.read_namespaced_config_map(name, self.ns, _preload_content=False))
            binary = obj.get("binaryData") or {}
            decoded = {k: base64.b64decode(v).decode(errors="replace") for k, v in binary.items()}
            return (obj.get("data") or {}) | decoded
        except ApiException as e:
            if e.status == 404:
                return None
            raise ConfigError(f"{kind} {name}: {e.status} {e.reason}") from e

    def _prepare_volumes(self) -> None:
        from kubernetes.client.exceptions import ApiException

        for volume in self.pod["spec"].get("volumes", []):
            name = volume["name"]
            if name in self.volumes:
                continue
            target, read_only = self.dir / "volumes" / name, False
            if "persistentVolumeClaim" in volume:
                source = volume["persistentVolumeClaim"]
                claim = source["claimName"]
                try:
                    self.api.read_namespaced_persistent_volume_claim(claim, self.ns)
                except ApiException as e:
                    if e.status == 404:
                        raise ConfigError(f'persistentvolumeclaim "{claim}" not found') from e
                    raise ConfigError(f"persistentvolumeclaim {claim}: {e.status}") from e
                target, read_only = self.k.claim_dir(self.ns, claim), source.get("readOnly", False)
                target.mkdir(parents=True, exist_ok=True)
            elif "emptyDir" in volume:
                target.mkdir(parents=True, exist_ok=True)
            elif "hostPath" in volume:
                target = Path(volume["hostPath"]["path"])
                if volume["hostPath"].get("type") == "DirectoryOrCreate":
                    target.mkdir(parents=True, exist_ok=True)
            elif any(k in volume for k in ("configMap", "secret", "downwardAPI", "projected")):
                self._write_files(volume, target)
                read_only = True
            else:
                raise ConfigError(f"volume {name}: its type is not supported by the {STANDIN}")
            self.volumes[name] = (target, read_only)

    def _write_files(self, volume: Obj, target: Path) -> None:
        kind = next(k for k in ("projected", "configMap", "secret", "downwardAPI") if k in volume)
        sources = volume[kind].get("sources") or [volume]
        mode = volume[kind].get("defaultMode", 0o644)
        files: dict[str, str] = {}
        for source in sources:
            files |= self._source_files(source)
        target.mkdir(parents=True, exist_ok=True)
        for path, text in files.items():
            dest = target / path
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(text)
            dest.chmod(mode)

    def _source_files(self, source: Obj) -> dict[str, str]:
        if "serviceAccountToken" in source:
            return {source["serviceAccountToken"].get("path", "token"): self._token(source)}
        if "downwardAPI" in source:
            out = {}
            for item in source["downwardAPI"].get("items", []):
                if "fieldRef" in item:
                    out[item["path"]] = field_value(self.pod, item["fieldRef"]["fieldPath"])
                else:
                    ref = item["resourceFieldRef"]
                    spec = next(
                        c for c in _all_containers(self.pod) if c["name"] == ref["containerName"]
                    )
                    out[item["path"]] = resource_value(spec, ref, self.k.allocatable[self.node])
            return out
        kind = "secret" if "secret" in source else "configmap"
        ref = source.get("secret") or source.get("configMap") or {}
        name = ref.get("secretName") or ref.get("name")
        data = self.fetch(kind, name)
        if data is None and name == "kube-root-ca.crt":
            data = {"ca.crt": self.k.cp.ca_file.read_text()}
        if data is None:
            if ref.get("optional"):
                return {}
            raise ConfigError(f'{kind} "{name}" not found')
        items = ref.get("items")
        if not items:
            return dict(data)
        out = {}
        for item in items:
            if item["key"] in data:
                out[item["path"]] = data[item["key"]]
            elif not ref.get("optional"):
                raise ConfigError(f"configmap references non-existent config key: {item['key']}")
        return out

    def _token(self, source: Obj) -> str:
        spec = source["serviceAccountToken"]
        request: Obj = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "expirationSeconds": spec.get("expirationSeconds", 3607),
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": self.pod_name,
                    "uid": self.uid,
                },
            },
        }
        if spec.get("audience"):
            request["spec"]["audiences"] = [spec["audience"]]
        account = self.pod["spec"].get("serviceAccountName") or "default"
        response = self.api.create_namespaced_service_account_token(
            account, self.ns, request, _preload_content=False
        )
        return str(_raw(response)["status"]["token"])

    def mounts(self, c: _Container) -> list[tuple[str, str, bool]]:
        out = []
        for m in c.spec.get("volumeMounts", []):
            source, read_only = self.volumes[m["name"]]
            sub = m.get("subPath") or expand(m.get("subPathExpr", ""), c.env)
            if sub:
                source = source / sub
                if not source.exists():
                    source.mkdir(parents=True)
            out.append((str(source), m["mountPath"], read_only or m.get("readOnly", False)))
        if not any(m[1] == "/etc/hosts" for m in out):
            out.append((str(self.hosts), "/etc/hosts", False))
        path = c.spec.get("terminationMessagePath", "/dev/termination-log")
        out.append((str(self._termination_file(c)), path, False))
        for source, target, _ in out:
            self.k.mount_point(Path(target), directory=Path(source).is_dir())
        return out

    def _termination_file(self, c: _Container) -> Path:
        return self.dir / "termination" / c.name

    def write_hosts(self, services: Mapping[tuple[str, str], str]) -> None:
        text = hosts_file(self.pod, self.ip, services, self.k.cp.service_host)
        if self.hosts.exists() and self.hosts.read_text() == text:
            return
        self.hosts.parent.mkdir(parents=True, exist_ok=True)
        with self.hosts.open("a+") as f:  # in place: bind mounts hold the inode
            f.seek(0)
            f.truncate()
            f.write(text)

    # -- containers --

    def _container_loop(self, c: _Container) -> None:
        while not self.stopping.is_set():
            try:
                self._start(c)
            except ConfigError as e:
                c.state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(e)}}
                self.changed.set()
                self.event("Failed", f"Error: {e}", "Warning", once=True)
                self.stopping.wait(1)
                continue
            code = self._wait(c)
            finished = now()
            message = self._message(c, code)
            terminated = {
                "exitCode": code,
                "reason": "Completed" if code == 0 else "Error",
                "startedAt": c.state.get("running", {}).get("startedAt", finished),
                "finishedAt": finished,
                "containerID": c.container_id,
            }
            with self.lock:
                c.state = {"terminated": terminated | ({"message": message} if message else {})}
                c.ready = c.started = False
                c.process = None
            self.changed.set()
            if self.stopping.is_set():
                return
            restart = (
                (code != 0 and self.policy != "Never")
                if c.init
                else (self.policy == "Always" or (self.policy == "OnFailure" and code != 0))
            )
            if not restart:
                c.done = True
                self.changed.set()
                return
            delay = backoff(self.k.backoff_base, c.restarts)
            with self.lock:
                c.last_state, c.restarts = dict(c.state), c.restarts + 1
                reason = (
                    f"back-off {delay:g}s restarting failed container={c.name} pod={self.pod_name}"
                )
                c.state = {"waiting": {"reason": "CrashLoopBackOff", "message": reason}}
            self.event("BackOff", "Back-off restarting failed container " + c.name, "Warning")
            self.changed.set()
            self.stopping.wait(delay)

    def _start(self, c: _Container) -> None:
        spec = c.spec
        c.env = resolve_env(
            self.pod_now(),
            spec,
            self.fetch,
            self.k.allocatable[self.node],
            service_env(self.k.cp.service_host, self.k.cp.service_port),
        )
        argv = [expand(a, c.env) for a in spec.get("command", []) + spec.get("args", [])]
        if not argv:
            raise ConfigError(f"container {c.name} has no command: the {STANDIN} has no image")
        env = dict(self.k.base_env) | c.env
        # The container's PATH, else the image's (extra_env), else this process's.
        env["PATH"] = BIN_DIR + os.pathsep + env.get("PATH", os.environ.get("PATH", ""))
        # The shim through the stage: a pod's own mount over its folder cannot hide it.
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (STAGE + str(self.k.shim_dir), c.env.get("PYTHONPATH")) if p
        )
        env |= {"QEVAL_STANDIN_POD_IP": self.ip, "HOSTNAME": self.pod_name}
        c.env = env
        workdir = spec.get("workingDir") or "/"
        self.k.mount_point(Path(workdir), directory=True)
        self.k.mount_point(Path(STAGE), directory=True)
        termination = self._termination_file(c)
        termination.parent.mkdir(parents=True, exist_ok=True)
        termination.write_bytes(b"")
        logs = self.k.log_file(self.ns, self.pod_name, c.name)
        logs.parent.mkdir(parents=True, exist_ok=True)
        with logs.open("ab") as out:
            c.log_offset = out.tell()
            command = mount_argv(self.mounts(c), self.pod_name, workdir, argv)
            if "/" not in argv[0] and shutil.which(argv[0], path=env["PATH"]) is None:
                command = ["sh", "-c", f"echo {shlex.quote(argv[0])}: not found >&2; exit 128"]
            process = subprocess.Popen(
                command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd="/",
            )
        self.k.processes.append(process)
        with self.lock:
            c.process, c.container_id = process, f"standin://{uuid.uuid4().hex}"
            c.state = {"running": {"startedAt": now()}}
            c.kill_reason = ""
        log.info(
            "%s: started %s/%s %s pid %d", STANDIN, self.ns, self.pod_name, c.name, process.pid
        )
        self.event("Started", f"Started container {c.name} (image {spec.get('image')} not pulled)")
        threading.Thread(target=self._probe, args=(c, process), daemon=True).start()
        self.changed.set()

    def _wait(self, c: _Container) -> int:
        process = c.process
        assert process is not None
        with contextlib.suppress(ChildProcessError):  # wait, but reap after killing the group
            os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        code = process.wait()
        return 128 - code if code < 0 else code

    def kill(self, c: _Container, grace: float, reason: str) -> None:
        process = c.process
        if process is None or process.poll() is not None:
            return
        if reason:
            c.kill_reason = reason
            self.event("Killing", f"Stopping container {c.name}: {reason}")
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)

    def _message(self, c: _Container, code: int) -> str:
        written = self._termination_file(c)
        if written.exists() and written.stat().st_size:
            return written.read_bytes()[:4096].decode(errors="replace")
        policy = c.spec.get("terminationMessagePolicy", "File")
        if code != 0 and policy == "FallbackToLogsOnError":
            with self.k.log_file(self.ns, self.pod_name, c.name).open("rb") as f:
                f.seek(c.log_offset)
                return log_tail(f.read())
        return ""

    # -- probes --

    def _probe(self, c: _Container, process: subprocess.Popen[bytes]) -> None:
        startup = Probe.parse(c.spec.get("startupProbe"))
        readiness = Probe.parse(c.spec.get("readinessProbe"))
        liveness = Probe.parse(c.spec.get("livenessProbe"))
        alive = lambda: c.process is process and not self.stopping.is_set()  # noqa: E731
        began = time.monotonic()
        if startup and not self._until(c, startup, alive, began, "Startup"):
            return
        with self.lock:
            c.started = True
            c.ready = readiness is None and not c.init
        self.changed.set()
        probes = [(p, kind) for p, kind in ((readiness, "Readiness"), (liveness, "Liveness")) if p]
        due = {kind: began + p.initial_delay for p, kind in probes}
        counts = {kind: [0, 0] for _, kind in probes}  # successes, failures in a row
        while probes and alive():
            kind = min(due, key=due.__getitem__)
            probe = next(p for p, k in probes if k == kind)
            if self.stopping.wait(max(0.0, due[kind] - time.monotonic())) or not alive():
                return
            ok, detail = self.check(c, probe)
            due[kind] = time.monotonic() + probe.period
            run = counts[kind]
            run[0], run[1] = (run[0] + 1, 0) if ok else (0, run[1] + 1)
            if not ok:
                self.event("Unhealthy", f"{kind} probe failed: {detail}", "Warning")
            if kind == "Readiness":
                if ok and run[0] >= probe.success_threshold and not c.ready:
                    c.ready = True
                    self.changed.set()
                elif not ok and run[1] >= probe.failure_threshold and c.ready:
                    c.ready = False
                    self.changed.set()
            elif run[1] >= probe.failure_threshold:
                self.kill(c, self.k.grace_cap, f"failed liveness probe, {detail}")
                return

    def _until(
        self, c: _Container, probe: Probe, alive: Callable[[], bool], began: float, kind: str
    ) -> bool:
        """Run the startup probe until it succeeds (True) or fails its threshold (kill)."""
        if self.stopping.wait(probe.initial_delay):
            return False
        failures = 0
        while alive():
            ok, detail = self.check(c, probe)
            if ok:
                return True
            failures += 1
            self.event("Unhealthy", f"{kind} probe failed: {detail}", "Warning")
            if failures >= probe.failure_threshold:
                self.kill(c, self.k.grace_cap, f"failed startup probe, {detail}")
                return False
            if self.stopping.wait(probe.period):
                return False
        return False

    def check(self, c: _Container, probe: Probe) -> tuple[bool, str]:
        """Run one probe; returns (success, what failed)."""
        action = probe.action
        try:
            if "httpGet" in action:
                get = action["httpGet"]
                host, port = get.get("host") or self.ip, container_port(get["port"], c.spec)
                if get.get("scheme", "HTTP").upper() == "HTTPS":
                    context = ssl._create_unverified_context()
                    conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                        host, port, timeout=probe.timeout, context=context
                    )
                else:
                    conn = http.client.HTTPConnection(host, port, timeout=probe.timeout)
                headers = {h["name"]: h["value"] for h in get.get("httpHeaders", [])}
                headers.setdefault("User-Agent", f"kube-probe/{KUBELET_VERSION[1:5]}")
                try:
                    conn.request("GET", get.get("path", "/"), headers=headers)
                    status = conn.getresponse().status
                finally:
                    conn.close()
                return 200 <= status < 400, f"HTTP probe failed with statuscode: {status}"
            if "tcpSocket" in action:
                tcp = action["tcpSocket"]
                port = container_port(tcp["port"], c.spec)
                with socket.create_connection((tcp.get("host") or self.ip, port), probe.timeout):
                    return True, ""
            if "exec" in action:
                process = c.process
                if process is None:
                    return False, "container not running"
                argv = ["nsenter", "-t", str(process.pid), "-m", "-u"]
                argv += [f"--wd={c.spec.get('workingDir') or '/'}", "--"]
                done = subprocess.run(
                    argv + action["exec"]["command"],
                    env=c.env,
                    capture_output=True,
                    timeout=probe.timeout,
                    check=False,
                )
                return done.returncode == 0, done.stdout.decode(errors="replace")[-512:]
            return False, f"the {STANDIN} runs no gRPC probes"
        except (OSError, ValueError, http.client.HTTPException, subprocess.TimeoutExpired) as e:
            return False, str(e) or type(e).__name__

    # -- status and events --

    def pod_now(self) -> Obj:
        """The pod with the IPs it has now (fieldRefs to status.podIP see them)."""
        status = dict(self.pod.get("status") or {})
        status |= {"podIP": self.ip, "podIPs": [{"ip": self.ip}], "hostIP": "127.0.0.1"}
        status["hostIPs"] = [{"ip": "127.0.0.1"}]
        return self.pod | {"status": status}

    def _cond(self, kind: str, ok: bool, reason: str = "", message: str = "") -> Obj:
        status = "True" if ok else "False"
        previous = self.transitions.get(kind)
        if previous is None or previous[0] != status:
            self.transitions[kind] = (status, now())
        cond = {"type": kind, "status": status, "lastTransitionTime": self.transitions[kind][1]}
        if not ok and reason:
            cond |= {"reason": reason, "message": message}
        return cond

    def status(self) -> Obj:
        with self.lock:
            apps = self.apps
            terminal = self.phase in ("Succeeded", "Failed")
            if not terminal and self.initialized:
                ran = any(c.restarts or "waiting" not in c.state for c in apps)
                self.phase = "Running" if ran else "Pending"
            unready = [c.name for c in apps if not c.ready]
            not_init = [
                c.name for c in self.inits if c.state.get("terminated", {}).get("exitCode") != 0
            ]
            reason = "PodCompleted" if terminal else "ContainersNotReady"
            message = f"containers with unready status: [{' '.join(unready)}]"
            conditions = [
                self._cond("PodReadyToStartContainers", self.sandbox),
                self._cond(
                    "Initialized",
                    self.initialized or not self.inits,
                    "ContainersNotInitialized",
                    f"containers with incomplete status: [{' '.join(not_init)}]",
                ),
                self._cond("ContainersReady", not unready, reason, message),
                self._cond("Ready", not unready, reason, message),
            ]
            status: Obj = {
                "phase": self.phase,
                "hostIP": "127.0.0.1",
                "hostIPs": [{"ip": "127.0.0.1"}],
                "startTime": self.start_time,
                "conditions": conditions,
                "containerStatuses": [c.status() for c in apps],
                "observedGeneration": self.pod["metadata"].get("generation", 1),
            }
            if self.sandbox:
                status |= {"podIP": self.ip, "podIPs": [{"ip": self.ip}]}
            if self.inits:
                status["initContainerStatuses"] = [c.status() for c in self.inits]
            return status

    def report(self) -> None:
        status = self.status()
        if status == self.sent:
            return
        try:
            self.api.patch_namespaced_pod_status(self.pod_name, self.ns, {"status": status})
            self.sent = status
        except Exception as e:  # the next change retries
            log.warning("%s: status of %s/%s: %s", STANDIN, self.ns, self.pod_name, _why(e))

    def event(self, reason: str, message: str, kind: str = "Normal", once: bool = False) -> None:
        if once and f"{reason}:{message}" in self.reported_events:
            return
        self.reported_events.add(f"{reason}:{message}")
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{self.pod_name}.{uuid.uuid4().hex[:16]}", "namespace": self.ns},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": self.pod_name,
                "namespace": self.ns,
                "uid": self.uid,
            },
            "reason": reason,
            "message": message,
            "type": kind,
            "source": {"component": "kubelet", "host": self.node},
            "reportingComponent": "kubelet",
            "reportingInstance": self.node,
            "firstTimestamp": stamp[:19] + "Z",
            "lastTimestamp": stamp[:19] + "Z",
            "count": 1,
        }
        try:
            self.api.create_namespaced_event(self.ns, body)
        except Exception as e:  # e.g. 403 in a namespace being deleted: as the kubelet, go on
            log.info("%s: event %s for %s/%s: %s", STANDIN, reason, self.ns, self.pod_name, _why(e))


class Kubelet:
    """The kubelet stand-in for ``nodes`` (Node dicts from :func:`gpu_node`/:func:`cpu_node`)
    of the control plane ``cp``; ``root_dir`` holds claims, pod folders and logs.

    ``backoff_base``: the first restart delay (the kubelet's is 10 s); ``grace_cap``: the most
    a deletion waits after SIGTERM; ``extra_env``: what an image's ENV would set;
    ``delete_nodes``: delete at stop the Nodes it registered (not those that existed).

        with Kubelet(cp, [gpu_node("gpu-0"), cpu_node("cpu-0")], tmp_path) as kubelet:
            ...  # create Jobs/Deployments; the real scheduler binds, the stand-in runs
            kubelet.logs("ns", "pod", "container")
    """

    def __init__(
        self,
        cp: Any,
        nodes: list[Obj],
        root_dir: Path,
        *,
        backoff_base: float = 1.0,
        grace_cap: float = 5.0,
        refresh: float = 0.5,
        extra_env: Mapping[str, str] | None = None,
        delete_nodes: bool = True,
    ):
        self.cp, self.nodes, self.root = cp, nodes, Path(root_dir)
        self.backoff_base, self.grace_cap, self.refresh = backoff_base, grace_cap, refresh
        self.delete_nodes = delete_nodes
        self.base_env = {"HOME": str(Path.home()), "LANG": "C.UTF-8"} | dict(extra_env or {})
        self.api_port = int(cp.server.rsplit(":", 1)[1])
        self.shim_dir = self.root / "standin-shim"
        self.allocatable = {n["metadata"]["name"]: n["status"]["allocatable"] for n in nodes}
        self.pods: dict[str, _Pod] = {}
        self.finished: set[str] = set()  # uids whose worker ended: never run twice
        self.created: list[Path] = []
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.threads: list[threading.Thread] = []
        self.apis: dict[str, Any] = {}
        self.registered: list[str] = []  # the Nodes it created, deleted again at stop
        self.processes: list[subprocess.Popen[bytes]] = []  # every container it started

    def __enter__(self) -> Kubelet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def claim_dir(self, namespace: str, claim: str) -> Path:
        return self.root / "volumes" / namespace / claim

    def log_file(self, namespace: str, pod: str, container: str) -> Path:
        return self.root / "logs" / namespace / pod / f"{container}.log"

    def logs(self, namespace: str, pod: str, container: str) -> str:
        """A container's stdout and stderr so far (all its restarts)."""
        path = self.log_file(namespace, pod, container)
        return path.read_text(errors="replace") if path.exists() else ""

    def mount_point(self, path: Path, directory: bool) -> None:
        """Create a missing mount point on the host, remembering it for :meth:`stop`."""
        with self.lock:
            if path.exists() or path.is_symlink():
                return
            missing = [p for p in [path, *path.parents] if not p.exists()]
            if directory:
                path.mkdir(parents=True, exist_ok=True)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()
            self.created.extend(reversed(missing))

    def start(self) -> Kubelet:
        self.shim_dir.mkdir(parents=True, exist_ok=True)
        (self.shim_dir / "sitecustomize.py").write_text(SITECUSTOMIZE)
        self.admin = _api(self.cp.kubeconfig)
        for node in self.nodes:
            name = node["metadata"]["name"]
            api = self.apis[name] = _api(
                self.cp.client_kubeconfig(f"system:node:{name}", ["system:nodes"])
            )
            self._register(api, node)
            self._spawn(f"standin-watch-{name}", self._watch, name, api)
        self._spawn("standin-cluster", self._cluster_loop)
        log.info("%s: nodes %s registered", STANDIN, ", ".join(self.apis))
        return self

    def _spawn(self, name: str, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self.threads.append(thread)

    def _register(self, api: Any, node: Obj) -> None:
        from kubernetes.client.exceptions import ApiException

        body = {k: v for k, v in node.items() if k != "status"}
        try:
            api.create_node(body)
            self.registered.append(node["metadata"]["name"])
        except ApiException as e:
            if e.status != 409:  # registered before (e.g. by a fixture): keep it
                raise
        name = node["metadata"]["name"]
        api.patch_node_status(name, {"status": node["status"]})
        # TaintNodesByCondition registered it not-ready; the control plane lifts that taint
        # as the node lifecycle controller would (NodeRestriction forbids the node itself).
        self.cp.lift_not_ready_taint(name)

    def stop(self) -> None:
        """Kill every pod's processes, remove the mount points it created, deregister."""
        self.stopped.set()
        with self.lock:
            pods = list(self.pods.values())
        for pod in pods:
            pod.terminate(None)
        for pod in pods:
            pod.join(timeout=self.grace_cap + 10)
        for thread in self.threads:
            thread.join(timeout=10)
        for path in reversed(self.created):
            with contextlib.suppress(OSError):
                if path.is_dir():
                    path.rmdir()
                elif path.stat().st_size == 0:
                    path.unlink()
        self.created.clear()
        if self.delete_nodes:
            for name in self.registered:
                with contextlib.suppress(Exception):
                    self.admin.delete_node(name)

    # -- watches --

    def _watch(self, node: str, api: Any) -> None:
        from kubernetes import watch

        selector = f"spec.nodeName={node}"
        while not self.stopped.is_set():
            try:
                listed = _raw(
                    api.list_pod_for_all_namespaces(field_selector=selector, _preload_content=False)
                )
                seen = set()
                for pod in listed["items"]:
                    seen.add(pod["metadata"]["uid"])
                    self._sync(node, api, pod)
                with self.lock:
                    gone = [p for uid, p in self.pods.items() if p.node == node and uid not in seen]
                for p in gone:
                    p.terminate(None)
                stream = watch.Watch().stream(
                    api.list_pod_for_all_namespaces,
                    field_selector=selector,
                    resource_version=listed["metadata"]["resourceVersion"],
                    timeout_seconds=2,
                    allow_watch_bookmarks=True,
                    _request_timeout=15,
                )
                for event in stream:
                    if self.stopped.is_set():
                        break
                    pod = event["raw_object"]
                    if event["type"] == "DELETED":
                        with self.lock:
                            gone_pod = self.pods.get(pod["metadata"]["uid"])
                        if gone_pod:
                            gone_pod.terminate(None)
                    elif event["type"] in ("ADDED", "MODIFIED"):
                        self._sync(node, api, pod)
            except Exception as e:
                if not self.stopped.is_set():
                    log.warning("%s: watch of node %s: %s", STANDIN, node, _why(e))
                    self.stopped.wait(0.5)

    def _sync(self, node: str, api: Any, pod: Obj) -> None:
        meta = pod["metadata"]
        with self.lock:
            if self.stopped.is_set():
                return
            worker = self.pods.get(meta["uid"])
            if worker is None:
                if meta.get("deletionTimestamp"):
                    with contextlib.suppress(Exception):
                        api.delete_namespaced_pod(
                            meta["name"],
                            meta["namespace"],
                            # in the body: with a body, the API server ignores the query parameters
                            body={"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}},
                        )
                    return
                if meta["uid"] in self.finished:
                    return
                if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                    return
                worker = self.pods[meta["uid"]] = _Pod(self, node, api, pod)
                worker.start()
        if meta.get("deletionTimestamp"):
            worker.terminate(float(meta.get("deletionGracePeriodSeconds") or 0))

    def _cluster_loop(self) -> None:
        """The stand-ins for cluster DNS (hosts files) and a local-path provisioner."""
        while not self.stopped.wait(self.refresh):
            try:
                self._bind_claims()
                with self.lock:
                    self.finished |= {u for u, p in self.pods.items() if not p.is_alive()}
                    self.pods = {u: p for u, p in self.pods.items() if p.is_alive()}
                    pods = list(self.pods.values())
                if not pods:
                    continue
                services = self.resolve_services()
                for pod in pods:
                    if pod.sandbox:
                        pod.write_hosts(services)
            except Exception as e:
                if not self.stopped.is_set():
                    log.warning("%s: cluster loop: %s", STANDIN, _why(e))

    def resolve_services(self) -> dict[tuple[str, str], str]:
        """Every Service with a ready pod: (namespace, name) -> that pod's IP, as listed now."""
        services = _raw(self.admin.list_service_for_all_namespaces(_preload_content=False))
        pods = _raw(self.admin.list_pod_for_all_namespaces(_preload_content=False))
        return service_addresses(services["items"], pods["items"])

    def _bind_claims(self) -> None:
        from kubernetes.client.exceptions import ApiException

        claims = _raw(
            self.admin.list_persistent_volume_claim_for_all_namespaces(_preload_content=False)
        )["items"]
        for claim in claims:
            meta, spec = claim["metadata"], claim.get("spec", {})
            if spec.get("volumeName") or meta.get("deletionTimestamp"):
                continue
            path = self.claim_dir(meta["namespace"], meta["name"])
            path.mkdir(parents=True, exist_ok=True)
            pv = pv_for_claim(claim, path)
            with contextlib.suppress(ApiException):
                self.admin.create_persistent_volume(pv)
            name = pv["metadata"]["name"]
            bound = {"pv.kubernetes.io/bind-completed": "yes"}
            bound["pv.kubernetes.io/bound-by-controller"] = "yes"
            self.admin.patch_namespaced_persistent_volume_claim(
                meta["name"],
                meta["namespace"],
                {"metadata": {"annotations": bound}, "spec": {"volumeName": name}},
            )
            self.admin.patch_persistent_volume_status(name, {"status": {"phase": "Bound"}})
            status = {
                "phase": "Bound",
                "accessModes": pv["spec"]["accessModes"],
                "capacity": pv["spec"]["capacity"],
            }
            self.admin.patch_namespaced_persistent_volume_claim_status(
                meta["name"], meta["namespace"], {"status": status}
            )
