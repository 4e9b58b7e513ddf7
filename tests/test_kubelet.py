"""The kubelet stand-in (tests/cluster/kubelet.py): its pure parts as data, then pods on the
real control plane, where the real scheduler places them and the real Job and Deployment
controllers read the status the stand-in reports."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from tests.cluster.kubelet import (
    NET,
    SITECUSTOMIZE,
    TOKEN_DIR,
    ConfigError,
    Kubelet,
    Probe,
    backoff,
    container_port,
    cpu_node,
    expand,
    gpu_node,
    hosts_file,
    log_tail,
    mount_argv,
    pod_ip,
    pv_for_claim,
    resolve_env,
    resource_value,
    service_addresses,
)

if TYPE_CHECKING:
    from tests.cluster.controlplane import ControlPlane

T = TypeVar("T")


def wait_for(check: Callable[[], T], timeout: float, what: str, every: float = 0.1) -> T:
    """``check()`` once it is truthy; fails with ``what`` and the last value at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} within {timeout} s; last: {value!r}")
        time.sleep(every)


# --- pure parts --------------------------------------------------------------------------------


def test_expand_follows_kubernetes_rules() -> None:
    env = {"A": "x", "B": "$(A)"}
    assert expand("$(A)-$(B)", env) == "x-$(A)"  # values are not expanded twice
    assert expand("$$(A) $(MISSING) $(A", env) == "$(A) $(MISSING) $(A"
    assert expand("cost $5 and $", env) == "cost $5 and $"


def _pod(**spec: Any) -> dict[str, Any]:
    container = {"name": "main", "image": "python:3.11"} | spec.pop("container", {})
    return {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u-1", "labels": {"app": "web"}},
        "spec": {"nodeName": "gpu-0", "containers": [container]} | spec,
        "status": {"podIP": "127.0.10.1", "hostIP": "127.0.0.1"},
    }


def test_resolve_env_as_the_kubelet_does() -> None:
    data = {("secret", "s"): {"token": "t0k"}, ("configmap", "c"): {"LEVEL": "info", "X": "1"}}
    container = {
        "name": "main",
        "resources": {"requests": {"cpu": "250m", "memory": "1Gi"}},
        "envFrom": [{"configMapRef": {"name": "c"}, "prefix": "CM_"}],
        "env": [
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "token"}}},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "URL", "value": "http://$(IP):8000/$(POD)"},
            {
                "name": "GONE",
                "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k", "optional": True}},
            },
            {"name": "CPUS", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
            {
                "name": "MEM_MI",
                "valueFrom": {
                    "resourceFieldRef": {"resource": "requests.memory", "divisor": "1Mi"}
                },
            },
        ],
    }
    pod = _pod(container=container)
    env = resolve_env(
        pod,
        container,
        lambda kind, name: data.get((kind, name)),
        allocatable={"cpu": "16"},
        service_env={"KUBERNETES_SERVICE_HOST": "127.0.0.1"},
    )
    assert env == {
        "KUBERNETES_SERVICE_HOST": "127.0.0.1",
        "CM_LEVEL": "info",
        "CM_X": "1",
        "TOKEN": "t0k",
        "POD": "p",
        "APP": "web",
        "IP": "127.0.10.1",
        "NODE": "gpu-0",
        "URL": "http://127.0.10.1:8000/p",
        "CPUS": "16",  # no limit: the node's allocatable, as the kubelet does
        "MEM_MI": "1024",
    }
    missing = {
        "name": "main",
        "env": [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "x", "key": "k"}}}],
    }
    with pytest.raises(ConfigError, match='secret "x" not found'):
        resolve_env(pod, missing, lambda kind, name: None)


def test_resource_value_rounds_cpu_up() -> None:
    container = {"resources": {"limits": {"cpu": "1500m"}}}
    assert resource_value(container, {"resource": "limits.cpu"}, {}) == "2"
    assert resource_value(container, {"resource": "requests.cpu", "divisor": "1m"}, {}) == "1500"


def test_gpu_node_is_shaped_like_a_real_one() -> None:
    node = gpu_node("gpu-0")
    labels = node["metadata"]["labels"]
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert labels["nvidia.com/gpu.memory"] == "81559"
    assert labels["nvidia.com/gpu.compute.major"] == "9"
    assert labels["nvidia.com/gpu.count"] == "8"
    assert labels["kubernetes.io/hostname"] == "gpu-0"
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "8"
    assert node["spec"]["taints"] == [
        {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
    ]
    ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
    assert ready[0]["status"] == "True"
    assert node["status"]["nodeInfo"]["kubeletVersion"] == "v1.35.4"
    assert "taints" not in gpu_node("gpu-1", tainted=False)["spec"]
    assert "nvidia.com/gpu" not in cpu_node("cpu-0")["status"]["capacity"]


def test_pod_ips_are_unique_loopback_addresses() -> None:
    ips = [pod_ip(n) for n in range(600)]
    assert len(set(ips)) == 600
    # Never the host's 127.0.x.y (127.0.0.1, Debian's 127.0.1.1, the Services' 127.0.9.N).
    assert all(ip.startswith("127.") and not ip.startswith("127.0.") for ip in ips)
    assert pod_ip(0, net=12) == "127.12.0.1"
    assert pod_ip(254, net=12) == "127.12.1.1"


def _ready(name: str, ns: str, ip: str, labels: dict[str, str], ready: bool = True) -> dict:
    status = "True" if ready else "False"
    return {
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": status}]},
    }


def test_services_resolve_to_a_ready_pod_and_hosts_name_them() -> None:
    services = [
        {"metadata": {"name": "web", "namespace": "a"}, "spec": {"selector": {"app": "web"}}},
        {"metadata": {"name": "db", "namespace": "b"}, "spec": {"selector": {"app": "db"}}},
        {"metadata": {"name": "ext", "namespace": "a"}, "spec": {"type": "ExternalName"}},
    ]
    pods = [
        _ready("web-2", "a", "127.0.10.3", {"app": "web"}),
        _ready("web-1", "a", "127.0.10.2", {"app": "web"}, ready=False),
        _ready("db-1", "b", "127.0.10.4", {"app": "db", "x": "y"}),
        _ready("other", "b", "127.0.10.5", {"app": "web"}),  # another namespace
    ]
    addresses = service_addresses(services, pods)
    assert addresses == {("a", "web"): "127.0.10.3", ("b", "db"): "127.0.10.4"}
    text = hosts_file(
        _pod() | {"metadata": {"name": "p", "namespace": "a"}}, "127.0.10.9", addresses, "127.0.9.7"
    )
    lines = text.splitlines()
    assert "127.0.10.9\tp" in lines
    assert "127.0.10.3\tweb web.a web.a.svc web.a.svc.cluster.local" in lines
    assert "127.0.10.4\tdb.b db.b.svc db.b.svc.cluster.local" in lines  # no short name
    assert "127.0.9.7\tkubernetes.default kubernetes.default.svc" in text


def test_probe_defaults_and_ports() -> None:
    probe = Probe.parse({"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 5})
    assert probe == Probe({"httpGet": {"path": "/health", "port": "http"}}, period=5)
    assert Probe.parse(None) is None
    container = {"name": "c", "ports": [{"name": "http", "containerPort": 8000}]}
    assert container_port("http", container) == 8000
    assert container_port(9000, container) == 9000
    with pytest.raises(ValueError, match="metrics"):
        container_port("metrics", container)


def test_log_tail_and_backoff() -> None:
    data = b"".join(b"line %d\n" % i for i in range(100))
    tail = log_tail(data)
    assert tail.splitlines()[0] == "line 20" and tail.splitlines()[-1] == "line 99"
    assert len(log_tail(b"x" * 10_000)) == 4096
    assert [backoff(1, n) for n in range(7)] == [1, 2, 4, 8, 16, 30, 30]


def test_pv_for_claim_is_prebound() -> None:
    claim = {
        "metadata": {"name": "data", "namespace": "ns", "uid": "abc"},
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "5Gi"}}},
    }
    pv = pv_for_claim(claim, Path("/r/volumes/ns/data"))
    assert pv["spec"]["claimRef"]["uid"] == "abc"
    assert pv["spec"]["capacity"] == {"storage": "5Gi"}
    assert pv["spec"]["hostPath"]["path"] == "/r/volumes/ns/data"


def test_mount_namespace_binds_read_only(tmp_path: Path) -> None:
    """The mount script for real: a bind mount seen inside only, read-only when asked."""
    source, hosts = tmp_path / "src", tmp_path / "hosts"
    source.mkdir()
    (source / "f").write_text("hello\n")
    hosts.write_text("127.0.10.7 web\n")
    target = tmp_path / "mnt"
    target.mkdir()
    script = "cat f; touch g 2>/dev/null || echo read-only; getent hosts web; hostname"
    stage = tmp_path / "stage"
    stage.mkdir()
    argv = mount_argv(
        [(str(source), str(target), True), (str(hosts), "/etc/hosts", False)],
        "pod-a",
        str(target),
        ["sh", "-c", script],
        stage=str(stage),
    )
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True)
    assert done.stdout.split() == ["hello", "read-only", "127.0.10.7", "web", "pod-a"]
    assert not any(target.iterdir())  # nothing leaked to the host
    assert socket.gethostname() != "pod-a"


def test_a_mount_over_the_checkouts_parent_keeps_the_checkout(tmp_path: Path) -> None:
    """An emptyDir on /tmp must not hide the checkout (the image's filesystem) under /tmp."""
    parent, empty, stage = tmp_path / "tmp", tmp_path / "empty-dir", tmp_path / "stage"
    (parent / "checkout").mkdir(parents=True)
    (parent / "checkout" / "marker").write_text("image\n")
    (parent / "host-file").write_text("host")
    empty.mkdir()
    stage.mkdir()
    script = f"cat {parent}/checkout/marker; ls {parent}"
    argv = mount_argv(
        [(str(empty), str(parent), False)],
        "pod-b",
        "/",
        ["sh", "-c", script],
        stage=str(stage),
        keep=[str(parent / "checkout")],
    )
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True)
    assert done.stdout.split() == ["image", "checkout"]  # the host's other files are hidden


def test_network_shim_binds_to_the_pod_ip(tmp_path: Path) -> None:
    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE)
    code = (
        "import socket\n"
        "a = socket.socket(); a.bind(('0.0.0.0', 0)); print(a.getsockname()[0])\n"
        "b = socket.socket(socket.AF_INET6); b.bind(('::', 0)); print(b.getsockname()[0])\n"
    )
    env = dict(os.environ, PYTHONPATH=str(tmp_path), QEVAL_STANDIN_POD_IP="127.0.10.42")
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.stdout.split() == ["127.0.10.42", "::ffff:127.0.10.42"], done.stderr


# --- on the real control plane -----------------------------------------------------------------

GPU_NODE, CPU_NODE = "standin-gpu-0", "standin-cpu-0"
RESTRICTED = {
    "runAsNonRoot": True,  # not enforced: the stand-in runs processes as the current user
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


@pytest.fixture(scope="module")
def kubelet(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Kubelet]:
    nodes = [gpu_node(GPU_NODE), cpu_node(CPU_NODE)]
    had_token_dir = Path(TOKEN_DIR).exists()  # e.g. when the tests themselves run in a pod
    with Kubelet(
        control_plane, nodes, tmp_path_factory.mktemp("kubelet"), backoff_base=0.5, grace_cap=3
    ) as k:
        yield k
    # stop() leaves nothing running and removes the mount points it made on the host
    assert k.processes and all(p.poll() is not None for p in k.processes)
    assert not any(t.is_alive() for t in k.threads)
    assert not k.created and Path(TOKEN_DIR).exists() == had_token_dir


class Api:
    """JSON requests as the cluster admin, failing on an unexpected status."""

    def __init__(self, cp: ControlPlane, ns: str):
        self.cp, self.ns = cp, ns

    def __call__(self, method: str, path: str, body: Any = None, ok: tuple = (200, 201)) -> Any:
        status, text = self.cp.request(method, path.format(ns=self.ns), body)
        assert status in ok, f"{method} {path}: {status} {text}"
        return json.loads(text) if text else None

    def get(self, path: str) -> Any:
        status, text = self.cp.request("GET", path.format(ns=self.ns))
        return json.loads(text) if status == 200 else None


@pytest.fixture
def api(control_plane: ControlPlane, namespace: str) -> Api:
    return Api(control_plane, namespace)


def container(name: str, command: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "image": "python:3.11-slim",
        "command": command,
        "securityContext": RESTRICTED,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    } | extra


def pod_spec(*containers: dict[str, Any], node: str = CPU_NODE, **extra: Any) -> dict[str, Any]:
    return {
        "nodeSelector": {"kubernetes.io/hostname": node},
        "containers": list(containers),
        "terminationGracePeriodSeconds": 30,
    } | extra


def job(name: str, code: str, backoff_limit: int = 0, **spec: Any) -> dict[str, Any]:
    template = pod_spec(container("main", ["python", "-c", code]), restartPolicy="Never", **spec)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {"backoffLimit": backoff_limit, "template": {"spec": template}},
    }


def condition(obj: Any, kind: str) -> dict[str, Any] | None:
    for c in (obj or {}).get("status", {}).get("conditions", []):
        if c["type"] == kind and c["status"] == "True":
            return c
    return None


def job_pods(api: Api, name: str) -> list[dict[str, Any]]:
    return api("GET", "/api/v1/namespaces/{ns}/pods?labelSelector=" + f"job-name%3D{name}")["items"]


def test_job_completes_through_the_job_controller(api: Api, kubelet: Kubelet) -> None:
    began = time.monotonic()
    api("POST", "/apis/batch/v1/namespaces/{ns}/jobs", job("ok", "print('hello from a pod')"))
    done = wait_for(
        lambda: condition(api.get("/apis/batch/v1/namespaces/{ns}/jobs/ok"), "Complete"),
        90,
        "Complete",
    )
    assert done["reason"] == "CompletionsReached"
    (pod,) = job_pods(api, "ok")
    assert pod["spec"]["nodeName"] == CPU_NODE  # the real scheduler placed it
    assert pod["status"]["phase"] == "Succeeded"
    (status,) = pod["status"]["containerStatuses"]
    assert status["state"]["terminated"]["exitCode"] == 0
    assert status["state"]["terminated"]["reason"] == "Completed"
    assert status["image"] == "python:3.11-slim"
    assert pod["status"]["podIP"].startswith(f"127.{NET}.")
    ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
    assert kubelet.logs(ns, name, "main") == "hello from a pod\n"
    print(f"Job Complete in {time.monotonic() - began:.1f} s")


def test_failing_job_exceeds_its_backoff_limit(api: Api, kubelet: Kubelet) -> None:
    code = "import sys; print('about to fail'); sys.exit(3)"
    api("POST", "/apis/batch/v1/namespaces/{ns}/jobs", job("bad", code))
    failed = wait_for(
        lambda: condition(api.get("/apis/batch/v1/namespaces/{ns}/jobs/bad"), "Failed"),
        90,
        "Failed",
    )
    assert failed["reason"] == "BackoffLimitExceeded"
    (pod,) = job_pods(api, "bad")
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 3 and terminated["reason"] == "Error"
    assert terminated["message"] == "about to fail"  # FallbackToLogsOnError
    assert pod["status"]["phase"] == "Failed"


def test_env_from_a_secret_a_field_ref_and_the_service_account(api: Api, kubelet: Kubelet) -> None:
    api(
        "POST",
        "/api/v1/namespaces/{ns}/secrets",
        {"metadata": {"name": "creds"}, "stringData": {"token": "s3cret"}},
    )
    code = (
        "import os, kubernetes as k\n"
        "print(os.environ['TOKEN'], os.environ['POD'], os.environ['IP'], os.environ['APP'])\n"
        "sa = '/var/run/secrets/kubernetes.io/serviceaccount'\n"
        "print(open(sa + '/namespace').read())\n"
        "k.config.load_incluster_config()\n"
        "try:\n"
        "    k.client.CoreV1Api().list_namespaced_secret(os.environ['NS'])\n"
        "except k.client.ApiException as e:\n"
        "    print(e.status, 'system:serviceaccount:' in e.body)\n"
    )
    env = [
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
    ]
    body = {
        "metadata": {"name": "env", "labels": {"app": "env-test"}},
        "spec": pod_spec(container("main", ["python", "-c", code], env=env), restartPolicy="Never"),
    }
    api("POST", "/api/v1/namespaces/{ns}/pods", body)
    pod = wait_for(
        lambda: (
            (p := api.get("/api/v1/namespaces/{ns}/pods/env"))
            and p["status"].get("phase") in ("Succeeded", "Failed")
            and p
        ),
        60,
        "finished",
    )
    logs = kubelet.logs(api.ns, "env", "main")
    assert pod["status"]["phase"] == "Succeeded", logs
    lines = logs.splitlines()
    assert lines[0] == f"s3cret env {pod['status']['podIP']} env-test"
    assert lines[1] == api.ns
    assert lines[2] == "403 True"  # a real bound token, authenticated as the pod's SA


def test_a_claim_is_one_folder_shared_by_pods(api: Api, kubelet: Kubelet) -> None:
    api(
        "POST",
        "/api/v1/namespaces/{ns}/persistentvolumeclaims",
        {
            "metadata": {"name": "data"},
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    )

    def run(name: str, code: str, read_only: bool = False) -> dict[str, Any]:
        mount = {"name": "data", "mountPath": "/mnt/volumes/data", "readOnly": read_only}
        spec = pod_spec(
            container("main", ["python", "-c", code], volumeMounts=[mount]),
            restartPolicy="Never",
            volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
        )
        api("POST", "/api/v1/namespaces/{ns}/pods", {"metadata": {"name": name}, "spec": spec})
        return wait_for(
            lambda: (
                (p := api.get(f"/api/v1/namespaces/{{ns}}/pods/{name}"))
                and p["status"].get("phase") in ("Succeeded", "Failed")
                and p
            ),
            60,
            f"{name} finished",
        )

    writer = run("writer", "open('/mnt/volumes/data/result.txt', 'w').write('42')")
    assert writer["status"]["phase"] == "Succeeded", kubelet.logs(api.ns, "writer", "main")
    code = (
        "print(open('/mnt/volumes/data/result.txt').read())\n"
        "try:\n    open('/mnt/volumes/data/other', 'w')\nexcept OSError as e:\n    print(e.errno)\n"
    )
    reader = run("reader", code, read_only=True)
    assert reader["status"]["phase"] == "Succeeded", kubelet.logs(api.ns, "reader", "main")
    assert kubelet.logs(api.ns, "reader", "main").split() == ["42", "30"]  # EROFS
    assert (kubelet.claim_dir(api.ns, "data") / "result.txt").read_text() == "42"
    claim = api("GET", "/api/v1/namespaces/{ns}/persistentvolumeclaims/data")
    assert claim["status"]["phase"] == "Bound"


def test_a_gpu_pod_without_the_toleration_stays_pending(api: Api, kubelet: Kubelet) -> None:
    gpu = {"resources": {"limits": {"nvidia.com/gpu": "1"}}}
    code = "import os; print(os.environ.get('NVIDIA_VISIBLE_DEVICES', 'none'))"
    untolerated = pod_spec(container("main", ["python", "-c", code], **gpu), node=GPU_NODE)
    api(
        "POST",
        "/api/v1/namespaces/{ns}/pods",
        {"metadata": {"name": "no-toleration"}, "spec": untolerated},
    )
    tolerated = pod_spec(
        container("main", ["python", "-c", code], **gpu),
        node=GPU_NODE,
        restartPolicy="Never",
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    )
    api(
        "POST",
        "/api/v1/namespaces/{ns}/pods",
        {"metadata": {"name": "tolerated"}, "spec": tolerated},
    )

    def unschedulable() -> dict[str, Any] | None:
        pod = api.get("/api/v1/namespaces/{ns}/pods/no-toleration")
        for c in (pod or {}).get("status", {}).get("conditions", []):
            if c["type"] == "PodScheduled" and c["status"] == "False":
                return c
        return None

    cond = wait_for(unschedulable, 60, "marked unschedulable by the scheduler")
    assert cond["reason"] == "Unschedulable"
    # 1.35's message names no taint: the tolerated twin below, on the same node, shows which.
    assert "untolerated taint" in cond["message"]
    events = wait_for(
        lambda: [
            e
            for e in api("GET", "/api/v1/namespaces/{ns}/events")["items"]
            if e["reason"] == "FailedScheduling" and e["involvedObject"]["name"] == "no-toleration"
        ],
        30,
        "a FailedScheduling event",
    )
    assert "untolerated taint" in events[0]["message"]
    pod = wait_for(
        lambda: (
            (p := api.get("/api/v1/namespaces/{ns}/pods/tolerated"))
            and p["status"].get("phase") == "Succeeded"
            and p
        ),
        60,
        "the tolerated pod Succeeded",
    )
    assert pod["spec"]["nodeName"] == GPU_NODE
    still = api("GET", "/api/v1/namespaces/{ns}/pods/no-toleration")
    assert still["status"]["phase"] == "Pending" and "nodeName" not in still["spec"]


def test_deployment_becomes_available_and_its_service_resolves(api: Api, kubelet: Kubelet) -> None:
    began = time.monotonic()
    labels = {"app": "web"}
    server = container(
        "server",
        ["python", "-m", "http.server", "8000", "--bind", "0.0.0.0", "--directory", "/srv"],
        ports=[{"name": "http", "containerPort": 8000}],
        readinessProbe={"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
        livenessProbe={"tcpSocket": {"port": 8000}, "periodSeconds": 2},
        volumeMounts=[{"name": "site", "mountPath": "/srv"}],
    )
    init = container(
        "site",
        ["sh", "-c", "echo served-by-the-stand-in > /srv/index.html"],
        volumeMounts=[{"name": "site", "mountPath": "/srv"}],
    )
    spec = pod_spec(server, initContainers=[init], volumes=[{"name": "site", "emptyDir": {}}])
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": spec},
        },
    }
    api("POST", "/apis/apps/v1/namespaces/{ns}/deployments", deployment)
    service = {
        "metadata": {"name": "web"},
        "spec": {"selector": labels, "ports": [{"name": "http", "port": 8000}]},
    }
    api("POST", "/api/v1/namespaces/{ns}/services", service)
    wait_for(
        lambda: (
            (api.get("/apis/apps/v1/namespaces/{ns}/deployments/web") or {})
            .get("status", {})
            .get("availableReplicas")
            == 1
        ),
        90,
        "available",
    )
    available = time.monotonic() - began
    code = (
        "import urllib.request as u\n"
        "for host in ('web', 'web.' + __import__('os').environ['NS'] + '.svc.cluster.local'):\n"
        "    print(u.urlopen(f'http://{host}:8000/', timeout=10).read().decode().strip())\n"
    )
    env = [{"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}]
    client = pod_spec(container("main", ["python", "-c", code], env=env), restartPolicy="Never")
    api("POST", "/api/v1/namespaces/{ns}/pods", {"metadata": {"name": "client"}, "spec": client})
    pod = wait_for(
        lambda: (
            (p := api.get("/api/v1/namespaces/{ns}/pods/client"))
            and p["status"].get("phase") in ("Succeeded", "Failed")
            and p
        ),
        60,
        "the client finished",
    )
    logs = kubelet.logs(api.ns, "client", "main")
    assert pod["status"]["phase"] == "Succeeded", logs
    assert logs.split() == ["served-by-the-stand-in"] * 2
    print(f"Deployment available in {available:.1f} s")


def test_deleting_a_pod_kills_its_process(api: Api, kubelet: Kubelet) -> None:
    code = "import time\nprint('up', flush=True)\ntime.sleep(600)"
    spec = pod_spec(container("main", ["python", "-c", code]), restartPolicy="Always")
    pod = api(
        "POST", "/api/v1/namespaces/{ns}/pods", {"metadata": {"name": "sleeper"}, "spec": spec}
    )
    uid = pod["metadata"]["uid"]
    wait_for(
        lambda: (
            (api.get("/api/v1/namespaces/{ns}/pods/sleeper") or {}).get("status", {}).get("phase")
            == "Running"
        ),
        60,
        "Running",
    )
    process = wait_for(lambda: kubelet.pods[uid].apps[0].process, 10, "a process")
    began = time.monotonic()
    api("DELETE", "/api/v1/namespaces/{ns}/pods/sleeper")
    wait_for(lambda: api.get("/api/v1/namespaces/{ns}/pods/sleeper") is None, 30, "deleted")
    assert process.poll() is not None
    assert time.monotonic() - began < 10  # python exits on SIGTERM: no 30 s grace wait


def events(api: Api, pod: str, reason: str) -> list[dict[str, Any]]:
    items = api("GET", "/api/v1/namespaces/{ns}/events")["items"]
    return [e for e in items if e["reason"] == reason and e["involvedObject"]["name"] == pod]


def finished(api: Api, name: str) -> Callable[[], dict[str, Any] | None]:
    def check() -> dict[str, Any] | None:
        pod = api.get(f"/api/v1/namespaces/{{ns}}/pods/{name}")
        phase = (pod or {}).get("status", {}).get("phase")
        return pod if phase in ("Succeeded", "Failed") else None

    return check


def test_on_failure_restarts_with_backoff(api: Api, kubelet: Kubelet) -> None:
    code = (
        "import os, sys\n"
        "f = '/scratch/runs'\n"
        "n = len(open(f).read()) if os.path.exists(f) else 0\n"
        "open(f, 'a').write('x')\n"
        "print('run', n, flush=True)\n"
        "sys.exit(0 if n >= 2 else 1)\n"
    )
    mount = [{"name": "scratch", "mountPath": "/scratch"}]
    spec = pod_spec(
        container("main", ["python", "-c", code], volumeMounts=mount),
        restartPolicy="OnFailure",
        volumes=[{"name": "scratch", "emptyDir": {"medium": "Memory"}}],
    )
    api("POST", "/api/v1/namespaces/{ns}/pods", {"metadata": {"name": "flaky"}, "spec": spec})
    pod = wait_for(finished(api, "flaky"), 60, "finished")
    (status,) = pod["status"]["containerStatuses"]
    assert pod["status"]["phase"] == "Succeeded"
    assert status["restartCount"] == 2
    assert status["lastState"]["terminated"]["exitCode"] == 1
    assert kubelet.logs(api.ns, "flaky", "main").split("\n")[:3] == ["run 0", "run 1", "run 2"]
    assert len(events(api, "flaky", "BackOff")) == 2  # reported CrashLoopBackOff meanwhile


def test_a_failing_liveness_probe_restarts_the_container(api: Api, kubelet: Kubelet) -> None:
    code = "import time\nprint('start', flush=True)\ntime.sleep(600)"
    probe = {"tcpSocket": {"port": 9}, "periodSeconds": 1, "failureThreshold": 2}
    spec = pod_spec(container("main", ["python", "-c", code], livenessProbe=probe))
    api("POST", "/api/v1/namespaces/{ns}/pods", {"metadata": {"name": "unhealthy"}, "spec": spec})

    def restarted() -> dict[str, Any] | None:
        pod = api.get("/api/v1/namespaces/{ns}/pods/unhealthy") or {}
        statuses = pod.get("status", {}).get("containerStatuses") or [{}]
        running = "running" in statuses[0].get("state", {})
        return statuses[0] if running and statuses[0].get("restartCount", 0) >= 1 else None

    status = wait_for(restarted, 60, "restarted after its liveness probe failed")
    assert status["lastState"]["terminated"]["exitCode"] == 143  # SIGTERM
    assert events(api, "unhealthy", "Killing")
    assert "Liveness probe failed" in events(api, "unhealthy", "Unhealthy")[0]["message"]
    # The restarted container writes its first line soon after its restart is reported.
    wait_for(
        lambda: kubelet.logs(api.ns, "unhealthy", "main").startswith("start\nstart\n"),
        10,
        "the restarted container's first line",
    )


def test_exec_readiness_probe_runs_inside_the_pods_mounts(api: Api, kubelet: Kubelet) -> None:
    code = "import time\ntime.sleep(1)\nopen('/state/ready', 'w')\ntime.sleep(600)"
    probe = {"exec": {"command": ["test", "-f", "/state/ready"]}, "periodSeconds": 1}
    startup = {"exec": {"command": ["true"]}, "periodSeconds": 1}
    spec = pod_spec(
        container(
            "main",
            ["python", "-c", code],
            readinessProbe=probe,
            startupProbe=startup,
            volumeMounts=[{"name": "state", "mountPath": "/state"}],
        ),
        volumes=[{"name": "state", "emptyDir": {}}],
    )
    api("POST", "/api/v1/namespaces/{ns}/pods", {"metadata": {"name": "slow"}, "spec": spec})
    wait_for(
        lambda: condition(api.get("/api/v1/namespaces/{ns}/pods/slow"), "ContainersReady"),
        60,
        "ready",
    )
    # The probe saw the file inside the mount namespace; on the host, /state is only the
    # (empty) mount point the stand-in made, removed when it stops.
    assert not Path("/state/ready").exists()


def test_missing_config_map_is_a_failed_mount_until_it_exists(api: Api, kubelet: Kubelet) -> None:
    code = (
        "print(open('/etc/app/greeting').read())\n"
        "open('/dev/termination-log', 'w').write('all done')\n"
    )
    spec = pod_spec(
        container(
            "main",
            ["python", "-c", code],
            volumeMounts=[{"name": "config", "mountPath": "/etc/app", "readOnly": True}],
        ),
        restartPolicy="Never",
        volumes=[{"name": "config", "configMap": {"name": "app"}}],
    )
    api("POST", "/api/v1/namespaces/{ns}/pods", {"metadata": {"name": "configured"}, "spec": spec})
    (event,) = wait_for(lambda: events(api, "configured", "FailedMount"), 60, "FailedMount")
    assert 'configmap "app" not found' in event["message"]
    pod = api("GET", "/api/v1/namespaces/{ns}/pods/configured")
    waiting = pod["status"]["containerStatuses"][0]["state"]["waiting"]
    assert pod["status"]["phase"] == "Pending" and waiting["reason"] == "ContainerCreating"
    api(
        "POST",
        "/api/v1/namespaces/{ns}/configmaps",
        {"metadata": {"name": "app"}, "data": {"greeting": "hello"}},
    )
    pod = wait_for(finished(api, "configured"), 60, "finished")
    assert pod["status"]["phase"] == "Succeeded", kubelet.logs(api.ns, "configured", "main")
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["message"] == "all done"  # terminationMessagePath, written by the container
    assert kubelet.logs(api.ns, "configured", "main") == "hello\n"
