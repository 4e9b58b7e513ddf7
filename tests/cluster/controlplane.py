"""A real Kubernetes control plane on 127.0.0.1: etcd, kube-apiserver, kube-controller-manager
and kube-scheduler, the binaries ``tests/cluster/build.sh`` builds from Go modules.

Configured as a small real cluster is, less what needs kubelets and a network:

* TLS everywhere with a CA generated per control plane; every component and every client
  authenticates with a client certificate (admin: ``system:masters``), pods with
  service-account tokens the API server signs (TokenRequest, bound to the pod);
* authorization ``Node,RBAC``; the default admission plugins (PodSecurity and
  ValidatingAdmissionPolicy among them) plus ``NodeRestriction`` and
  ``OwnerReferencesPermissionEnforcement`` (OpenShift has it on);
* an audit log (JSON lines, level Metadata: who did which verb on what, with the code);
* the controllers a cluster without kubelets can use: jobs, deployments and replica sets,
  garbage collection, namespaces, service accounts and their tokens, the root CA
  publisher, cluster-role aggregation, endpoint slices, TTL after finished, pod GC. Node
  lifecycle is off (nothing heartbeats: see ``tests/cluster/kubelet.py``, the stand-in).

Everything listens on loopback ports chosen at start; ``stop()`` leaves nothing running
and removes the folder. Typical start: a few seconds.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from tests.kube import binaries

HERE = Path(__file__).resolve().parent
SERVICE_RANGE = "10.96.0.0/24"  # allocated, never routed: there is no kube-proxy
ISSUER = "https://kubernetes.default.svc.cluster.local"
CONTROLLERS = (
    "job-controller",
    "resourcequota-controller",
    "deployment-controller",
    "replicaset-controller",
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "clusterrole-aggregation-controller",
    "endpointslice-controller",
    "ttl-after-finished-controller",
    "pod-garbage-collector-controller",
    "persistentvolume-binder-controller",
    "persistentvolume-protection-controller",
    "persistentvolumeclaim-protection-controller",
    "endpoints-controller",
    "validatingadmissionpolicy-status-controller",
)
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [{"level": "Metadata"}],
}


class ControlPlaneError(RuntimeError):
    """A component did not build, start or become ready; the message says which and why."""


@cache
def binaries_dir() -> Path:
    """The folder with the four binaries, built once per machine by build.sh (cached)."""
    try:
        done = subprocess.run(
            ["bash", str(HERE / "build.sh")], capture_output=True, text=True, check=False
        )
    except FileNotFoundError as e:  # pragma: no cover - bash is everywhere here
        raise ControlPlaneError(f"cannot run {HERE / 'build.sh'}: {e}") from e
    if done.returncode != 0:
        raise ControlPlaneError(
            f"building the control plane failed (bash tests/cluster/build.sh):\n{done.stderr}"
        )
    return Path(done.stdout.strip().splitlines()[-1])


def _collection(gvr: str, namespace: str | None) -> str:
    """The URL path of a collection: ``"batch/v1/jobs"`` or ``"v1/pods"`` in ``namespace``."""
    *group_version, plural = gvr.split("/")
    base = "/api/v1" if group_version == ["v1"] else "/apis/" + "/".join(group_version)
    return f"{base}/namespaces/{namespace}/{plural}" if namespace else f"{base}/{plural}"


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the test process dies (even by SIGKILL), so
    an interrupted run leaves no control plane behind (Linux's PR_SET_PDEATHSIG)."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServiceProxy:
    """A stand-in for kube-proxy, for the ``kubernetes`` Service only: a loopback address
    of its own (127.0.9.N) on port 443, forwarding every connection to the API server, so a
    client that knows only ``https://kubernetes.default.svc`` (kopf's service-account login)
    reaches it as in a cluster (the serving certificate names kubernetes.default.svc)."""

    PORT = 443

    def __init__(self) -> None:
        self.target: tuple[str, int] | None = None  # set once the API server has a port
        self.stopped = threading.Event()
        self.sock = socket.socket()
        for n in random_order(range(1, 255)):
            try:
                self.sock.bind((f"127.0.9.{n}", self.PORT))
                break
            except OSError:  # taken by another control plane's proxy
                continue
        else:
            raise RuntimeError("no free 127.0.9.N:443 for the kubernetes Service stand-in")
        self.host = self.sock.getsockname()[0]
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.thread = threading.Thread(target=self._accept, name="standin-proxy", daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                client, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            try:
                assert self.target is not None
                upstream = socket.create_connection(self.target, timeout=10)
            except (OSError, AssertionError):
                client.close()
                continue
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            source.settimeout(None)
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)
        self.sock.close()


def random_order(values: Iterable[int]) -> list[int]:
    order = list(values)
    random.shuffle(order)
    return order


# --- certificates ------------------------------------------------------------------------------


@dataclass
class Authority:
    """A certificate authority that signs the control plane's serving and client certificates."""

    dir: Path
    key: Any = field(init=False)
    cert: Any = field(init=False)

    def __post_init__(self) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "qeval-test-ca")])
        self.cert = (
            self._builder(name, self.key.public_key())
            .issuer_name(name)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, _sha256())
        )
        _write_pem(self.dir / "ca.crt", self.cert)
        _write_key(self.dir / "ca.key", self.key)

    @property
    def cert_file(self) -> Path:
        return self.dir / "ca.crt"

    @staticmethod
    def _builder(subject: Any, public_key: Any) -> Any:
        from cryptography import x509

        now = datetime.datetime.now(datetime.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
        )

    def issue(
        self,
        stem: str,
        common_name: str,
        organizations: tuple[str, ...] = (),
        hosts: tuple[str, ...] = (),
    ) -> tuple[Path, Path]:
        """A key and a certificate for a client (organizations: its groups) or a server
        (hosts: its DNS names and IP addresses); returns their paths."""
        from cryptography import x509
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
        usage = ExtendedKeyUsageOID.SERVER_AUTH if hosts else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            self._builder(x509.Name(attributes), key.public_key())
            .issuer_name(self.cert.subject)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if hosts:
            names: list[x509.GeneralName] = []
            for host in hosts:
                try:
                    names.append(x509.IPAddress(ipaddress.ip_address(host)))
                except ValueError:
                    names.append(x509.DNSName(host))
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, _sha256())
        cert_file, key_file = self.dir / f"{stem}.crt", self.dir / f"{stem}.key"
        _write_pem(cert_file, cert)
        _write_key(key_file, key)
        return cert_file, key_file


def _sha256() -> Any:
    from cryptography.hazmat.primitives import hashes

    return hashes.SHA256()


def _write_pem(path: Path, cert: Any) -> None:
    from cryptography.hazmat.primitives import serialization

    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _write_key(path: Path, key: Any) -> None:
    from cryptography.hazmat.primitives import serialization

    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


# --- the control plane -------------------------------------------------------------------------


class ControlPlane:
    """etcd and the three control-plane components, started in a temporary folder."""

    def __init__(self, *, root: Path | None = None, keep_audit: bool = True):
        self.dir = Path(root or tempfile.mkdtemp(prefix="qeval-control-plane-"))
        self.keep_audit = keep_audit
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.port = 0
        self.started_seconds = 0.0
        self.proxy: ServiceProxy | None = None

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- paths and clients --

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def service_host(self) -> str:
        """The ``kubernetes`` Service's address, as pods see it (the proxy stand-in's)."""
        assert self.proxy is not None, "start the control plane first"
        return self.proxy.host

    service_port = ServiceProxy.PORT

    @property
    def ca_file(self) -> Path:
        return self.dir / "pki" / "ca.crt"

    @property
    def kubeconfig(self) -> Path:
        """An admin kubeconfig (group ``system:masters``)."""
        return self.dir / "admin.kubeconfig"

    @property
    def audit_log(self) -> Path:
        return self.dir / "audit.log"

    def client_kubeconfig(self, user: str, groups: list[str] | tuple[str, ...] = ()) -> Path:
        """A kubeconfig authenticating as ``user`` in ``groups`` with a client certificate."""
        stem = user.replace(":", "-")
        path = self.dir / f"{stem}.kubeconfig"
        if not path.exists():
            cert, key = self.authority.issue(stem, user, tuple(groups))
            self._write_kubeconfig(path, user, cert, key)
        return path

    def token_kubeconfig(self, name: str, token: str) -> Path:
        """A kubeconfig that authenticates with a bearer token (e.g. a ServiceAccount's)."""
        path = self.dir / f"{name}.kubeconfig"
        config = self._kubeconfig_doc(name, {"token": token})
        path.write_text(yaml.safe_dump(config))
        return path

    def _kubeconfig_doc(self, user: str, credentials: dict[str, str]) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "qeval-test",
                    "cluster": {"server": self.server, "certificate-authority": str(self.ca_file)},
                }
            ],
            "users": [{"name": user, "user": credentials}],
            "contexts": [
                {"name": "qeval-test", "context": {"cluster": "qeval-test", "user": user}}
            ],
            "current-context": "qeval-test",
        }

    def _write_kubeconfig(self, path: Path, user: str, cert: Path, key: Path) -> None:
        credentials = {"client-certificate": str(cert), "client-key": str(key)}
        path.write_text(yaml.safe_dump(self._kubeconfig_doc(user, credentials)))

    # -- lifecycle --

    def start(self) -> ControlPlane:
        began = time.monotonic()
        bins = binaries_dir()
        (self.dir / "pki").mkdir(parents=True, exist_ok=True)
        (self.dir / "logs").mkdir(exist_ok=True)
        self.authority = Authority(self.dir / "pki")
        try:
            self.proxy = ServiceProxy()
            self._start_etcd(bins)
            self._start_apiserver(bins)
            self._wait_for("/readyz", lambda body: body.strip() == "ok")
            # The components read the API's own configuration at start: after it is ready.
            self._start_controller_manager(bins)
            self._start_scheduler(bins)
            # The service-account controller has run once it made the default namespace's SA.
            self._wait_for(
                "/api/v1/namespaces/default/serviceaccounts/default", lambda body: "uid" in body
            )
        except BaseException:
            self.stop()
            raise
        self.started_seconds = time.monotonic() - began
        return self

    def stop(self) -> None:
        for name in reversed(list(self.processes)):
            process = self.processes[name]
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 3  # a test cluster: no graceful drain worth waiting for
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)
        self.processes.clear()
        if self.proxy is not None:
            self.proxy.stop()
            self.proxy = None
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- restarts (the fault tests) --

    def _restart(self, name: str) -> None:
        """Stop one component (SIGTERM, then SIGKILL) and start it again, same flags, same
        data and ports."""
        process = self.processes[name]
        argv = [str(a) for a in process.args]  # type: ignore[union-attr]
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)
        log = self.dir / "logs" / f"{name}.log"
        if log.exists():  # keep the first life's log beside the new one
            log.rename(log.with_suffix(f".{int(time.time() * 1000)}.log"))
        self._spawn(name, argv)

    def restart_apiserver(self) -> float:
        """Restart kube-apiserver (same port, etcd keeps the state); returns the seconds
        until it was ready (/readyz) again."""
        began = time.monotonic()
        self._restart("kube-apiserver")
        self._wait_for("/readyz", lambda body: body.strip() == "ok")
        return time.monotonic() - began

    def restart_etcd(self) -> float:
        """Restart etcd (same data dir and ports); returns the seconds until the API server
        was ready (/readyz, which checks etcd) again."""
        began = time.monotonic()
        self._restart("etcd")
        self._wait_for("/readyz", lambda body: body.strip() == "ok")
        return time.monotonic() - began

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = (self.dir / "logs" / f"{name}.log").open("wb")
        self.processes[name] = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=self.dir,
            preexec_fn=_die_with_parent,
        )

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.dir / "logs" / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def _start_etcd(self, bins: Path) -> None:
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        self._spawn(
            "etcd",
            [
                str(bins / "etcd"),
                f"--data-dir={self.dir / 'etcd'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=default=http://127.0.0.1:{peer}",
                "--unsafe-no-fsync",  # a test cluster: speed over durability
                "--log-level=warn",
            ],
        )

    def _start_apiserver(self, bins: Path) -> None:
        pki = self.dir / "pki"
        self.port = free_port()
        assert self.proxy is not None
        self.proxy.target = ("127.0.0.1", self.port)
        serving = self.authority.issue(
            "apiserver",
            "kube-apiserver",
            hosts=(
                "127.0.0.1",
                self.service_host,  # the `kubernetes` Service's address, as in a cluster
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ),
        )
        self._generate_service_account_key(pki)
        (self.dir / "audit-policy.yaml").write_text(yaml.safe_dump(AUDIT_POLICY))
        admin_cert, admin_key = self.authority.issue("admin", "qeval-admin", ("system:masters",))
        self._write_kubeconfig(self.kubeconfig, "qeval-admin", admin_cert, admin_key)
        self._spawn(
            "kube-apiserver",
            [
                str(bins / "kube-apiserver"),
                f"--etcd-servers={self.etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.port}",
                f"--tls-cert-file={serving[0]}",
                f"--tls-private-key-file={serving[1]}",
                f"--client-ca-file={self.ca_file}",
                f"--service-account-issuer={ISSUER}",
                f"--api-audiences={ISSUER}",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_RANGE}",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction,OwnerReferencesPermissionEnforcement",
                # The endpoint reconciler would publish 127.0.0.1 as the `kubernetes`
                # Service's endpoint, which validation refuses (loopback): pods reach the
                # API through KUBERNETES_SERVICE_HOST instead (the kubelet stand-in sets it).
                "--endpoint-reconciler-type=none",
                f"--audit-policy-file={self.dir / 'audit-policy.yaml'}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-format=json",
                "--audit-log-maxsize=0",
                "--allow-privileged=false",
                "--profiling=false",
                "--v=0",
            ],
        )

    def _generate_service_account_key(self, pki: Path) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _write_key(pki / "sa.key", key)
        (pki / "sa.pub").write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def _component_flags(self, user: str) -> list[str]:
        kubeconfig = self.client_kubeconfig(user)
        return [
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={free_port()}",
            "--leader-elect=false",
            "--v=0",
        ]

    def _start_controller_manager(self, bins: Path) -> None:
        pki = self.dir / "pki"
        self._spawn(
            "kube-controller-manager",
            [
                str(bins / "kube-controller-manager"),
                *self._component_flags("system:kube-controller-manager"),
                f"--controllers={','.join(CONTROLLERS)}",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={self.ca_file}",
                "--use-service-account-credentials=true",
                # Pods whose node is gone are not evicted (no node lifecycle), and a
                # terminated pod is collected soon, as on a busy cluster.
                "--terminated-pod-gc-threshold=500",
                # Faster than a production cluster, so tests wait less on controllers.
                "--concurrent-job-syncs=10",
                "--concurrent-deployment-syncs=10",
                "--concurrent-gc-syncs=10",
            ],
        )

    def _start_scheduler(self, bins: Path) -> None:
        self._spawn(
            "kube-scheduler",
            [str(bins / "kube-scheduler"), *self._component_flags("system:kube-scheduler")],
        )

    def _wait_for(self, path: str, ok: Callable[[str], bool], timeout: float = 90) -> None:
        """Poll ``path`` as the admin until ``ok(body)``; fail early when a component exits."""
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise ControlPlaneError(
                        f"{name} exited with {process.returncode}:\n{self.log_tail(name)}"
                    )
            try:
                status, last = self.request("GET", path)
                if status == 200 and ok(last):
                    return
            except (OSError, urllib.error.URLError) as e:
                last = str(e)
            if time.monotonic() > deadline:
                raise ControlPlaneError(
                    f"the control plane was not ready in {timeout:.0f} s ({path}: {last})\n"
                    f"{self.log_tail('kube-apiserver')}"
                )
            time.sleep(0.1)

    # -- requests as the admin --

    @cache  # noqa: B019  (one context per control plane, which lives for a whole session)
    def _ssl(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        context.load_cert_chain(self.dir / "pki" / "admin.crt", self.dir / "pki" / "admin.key")
        return context

    def request(
        self, method: str, path: str, body: Any = None, content_type: str | None = None
    ) -> tuple[int, str]:
        """One request as the admin; returns the status and the body's text."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": content_type or "application/json", "Accept": "application/json"}
        req = urllib.request.Request(self.server + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30, context=self._ssl()) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def get(self, gvr: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """One object as the admin reads it, or None (``gvr``: ``"batch/v1/jobs"``)."""
        status, text = self.request("GET", f"{_collection(gvr, namespace)}/{name}")
        if status == 404:
            return None
        if status != 200:
            raise ControlPlaneError(f"GET {gvr} {namespace}/{name}: {status} {text}")
        return dict(json.loads(text))

    def list(
        self, gvr: str, namespace: str | None = None, labels: Mapping[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """Objects in a namespace (or all) with these labels, sorted by namespace and name."""
        path = _collection(gvr, namespace)
        if labels:
            selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
            path += "?labelSelector=" + urllib.parse.quote(selector)
        status, text = self.request("GET", path)
        if status != 200:
            raise ControlPlaneError(f"LIST {gvr} in {namespace}: {status} {text}")
        items = json.loads(text)["items"]
        return sorted(
            items, key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"])
        )

    def audit_events(self) -> Iterator[dict[str, Any]]:
        """The audit log's events so far (ResponseComplete and Panic stages)."""
        if not self.audit_log.exists():
            return
        with self.audit_log.open() as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)

    def kubectl(
        self,
        *args: str,
        check: bool = True,
        input: str | None = None,
        timeout: float = 120,
        kubeconfig: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """The real kubectl against this control plane (as the admin unless ``kubeconfig``)."""
        config = kubeconfig or self.kubeconfig
        command = [
            str(binaries.kubectl()),
            f"--kubeconfig={config}",
            f"--cache-dir={self.dir / 'kubectl-cache'}",
            *args,
        ]
        env = dict(os.environ, KUBECONFIG=str(config))
        done = subprocess.run(
            command, input=input, capture_output=True, text=True, timeout=timeout, env=env
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed ({done.returncode}):\n"
                f"{done.stdout}\n{done.stderr}"
            )
        return done

    def helm(
        self, *args: str, check: bool = True, timeout: float = 180
    ) -> subprocess.CompletedProcess[str]:
        """The real helm against this control plane, as the admin, with its own caches."""
        home = self.dir / "helm"
        env = dict(
            os.environ,
            KUBECONFIG=str(self.kubeconfig),
            HELM_CACHE_HOME=str(home / "cache"),
            HELM_CONFIG_HOME=str(home / "config"),
            HELM_DATA_HOME=str(home / "data"),
        )
        done = subprocess.run(
            [str(binaries.helm()), *args], capture_output=True, text=True, timeout=timeout, env=env
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"helm {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
            )
        return done

    def token(self, namespace: str, service_account: str, seconds: int = 7200) -> str:
        """A token for a ServiceAccount, from the TokenRequest API (what a kubelet mounts)."""
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"audiences": [ISSUER], "expirationSeconds": seconds},
        }
        path = f"/api/v1/namespaces/{namespace}/serviceaccounts/{service_account}/token"
        status, text = self.request("POST", path, body)
        if status != 201:
            raise ControlPlaneError(f"token for {namespace}/{service_account}: {status} {text}")
        return str(json.loads(text)["status"]["token"])

    def service_account_kubeconfig(self, namespace: str, service_account: str) -> Path:
        """A kubeconfig that authenticates as the ServiceAccount (a TokenRequest token)."""
        token = self.token(namespace, service_account)
        return self.token_kubeconfig(f"sa-{namespace}-{service_account}", token)

    def provide_volume(self, namespace: str, claim: str, size: str = "200Gi") -> Path:
        """A hostPath PersistentVolume made for ``namespace/claim`` (pre-bound by claimRef;
        the real PV binder binds them): the folder a claim's pods see as their volume."""
        folder = self.dir / "volumes" / namespace / claim
        folder.mkdir(parents=True, exist_ok=True)
        pv = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": f"{namespace}-{claim}"[:253]},
            "spec": {
                "capacity": {"storage": size},
                "accessModes": ["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "",
                "hostPath": {"path": str(folder), "type": "Directory"},
                "claimRef": {"namespace": namespace, "name": claim},
            },
        }
        status, text = self.request("POST", "/api/v1/persistentvolumes", pv)
        if status not in (201, 409):
            raise ControlPlaneError(f"volume for {namespace}/{claim}: {status} {text}")
        return folder

    def register_node(self, node: dict[str, Any]) -> None:
        """Register a Node object (spec and status) as the admin, Ready and schedulable.

        The TaintNodesByCondition admission plugin gives every new Node the
        ``node.kubernetes.io/not-ready`` taint, which the node lifecycle controller lifts once
        the node reports Ready; that controller is off here, so this lifts it in its place."""
        name = node["metadata"]["name"]
        body = {k: v for k, v in node.items() if k != "status"}
        status, text = self.request("POST", "/api/v1/nodes", body)
        if status not in (201, 409):
            raise ControlPlaneError(f"node {name}: {status} {text}")
        merge = "application/merge-patch+json"
        status, text = self.request(
            "PATCH", f"/api/v1/nodes/{name}/status", {"status": node["status"]}, merge
        )
        if status != 200:
            raise ControlPlaneError(f"node {name} status: {status} {text}")
        self.lift_not_ready_taint(name)

    def lift_not_ready_taint(self, name: str) -> None:
        """Do what the (disabled) node lifecycle controller does for a Ready node: remove
        the ``node.kubernetes.io/not-ready`` taint (a node may not change its own taints)."""
        current = self.get("v1/nodes", None, name) or {}
        taints = current.get("spec", {}).get("taints") or []
        keep = [t for t in taints if t["key"] != "node.kubernetes.io/not-ready"]
        if keep != taints:
            merge = "application/merge-patch+json"
            self.request("PATCH", f"/api/v1/nodes/{name}", {"spec": {"taints": keep}}, merge)

    def create_namespace(self, name: str, pod_security: str | None = "restricted") -> str:
        """A namespace (Pod Security ``enforce`` at ``pod_security``), once its default
        ServiceAccount exists, as pods there need."""
        labels = {"kubernetes.io/metadata.name": name}
        if pod_security:
            labels |= {
                "pod-security.kubernetes.io/enforce": pod_security,
                "pod-security.kubernetes.io/enforce-version": "latest",
            }
        body = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": labels},
        }
        status, text = self.request("POST", "/api/v1/namespaces", body)
        if status not in (201, 409):
            raise ControlPlaneError(f"namespace {name}: {status} {text}")
        deadline = time.monotonic() + 30
        while self.request("GET", f"/api/v1/namespaces/{name}/serviceaccounts/default")[0] != 200:
            if time.monotonic() > deadline:
                raise ControlPlaneError(f"namespace {name} got no default ServiceAccount in 30 s")
            time.sleep(0.05)
        return name
