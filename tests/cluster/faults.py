"""Faults between a client (the operator) and the API server, at a rate, seeded.

Two proxies in a chain: ``client -> Toxiproxy (TCP) -> FaultyApi (HTTP) -> kube-apiserver``.

* ``Toxiproxy``: Shopify's toxiproxy (``tests/cluster/build-toxiproxy.sh`` builds it from its
  Go module), for what happens to TCP connections: latency, resets (``reset_peer``), stalls
  that end in a close (``timeout``), data cut into small pieces (``slicer``) or cut off
  (``limit_data``). Each toxic applies to a share of the connections (its ``toxicity``);
  TLS passes through.
* ``FaultyApi``: a small HTTP proxy that terminates TLS (a serving certificate issued by
  the control plane's own ``Authority``) and forwards every request to the API server with
  the client's ``Authorization`` header (the operator's ServiceAccount token), so the API
  server authenticates and authorizes the operator itself. A seeded random picks a share
  (``rate``) of the requests for a fault, counted per kind in ``counts``:

  - ``429`` (with ``Retry-After: 1``), ``500``, ``503``: answered without forwarding, as an
    overloaded or restarting API server answers (its priority-and-fairness 429, an etcd
    timeout's 500, an unavailable aggregated API's 503);
  - ``reset``: the connection closed before the request is forwarded;
  - ``lost``: the request is forwarded (the server acts on it) and the connection closed
    before the answer: the client does not know whether a create or patch happened;
  - ``409``: only on a create, forwarded first (the object is created) and then answered
    409 AlreadyExists, which is what a client sees when its first attempt's answer was lost
    and its retry arrives; a real server never answers 409 on a create of an object that does
    not exist, so that is never faked;
  - on watches: ``cut`` (the stream relayed for a moment, then closed mid-stream, no final
    chunk) and ``410`` (a watch answered with the ERROR event a real server sends for a
    resourceVersion compacted away: ``Expired``, code 410), besides 429/500/503 at the start.
    No other ERROR event is ever sent on a watch: a real server sends only 410s there.

``faulty_kubeconfig`` writes a copy of a kubeconfig that reaches the API server through both.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import random
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from tests.cluster.controlplane import ControlPlane, ControlPlaneError, free_port

HERE = Path(__file__).resolve().parent
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "host",
    "content-length",
}
REQUEST_FAULTS = ("429", "500", "503", "reset", "lost", "409")
WATCH_FAULTS = ("429", "500", "503", "cut", "410")
STATUS_REASONS = {
    409: ("AlreadyExists", "already exists"),
    429: ("TooManyRequests", "the server has received too many requests (injected)"),
    500: ("InternalError", "an error on the server (injected) has prevented the request"),
    503: ("ServiceUnavailable", "the server is currently unable to handle the request"),
}


def toxiproxy_server() -> Path:
    """The toxiproxy-server binary, built once per machine (cached)."""
    done = subprocess.run(
        ["bash", str(HERE / "build-toxiproxy.sh")], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise ControlPlaneError(f"building toxiproxy failed:\n{done.stderr}")
    return Path(done.stdout.strip().splitlines()[-1])


def status_body(code: int, message: str | None = None) -> bytes:
    reason, text = STATUS_REASONS[code]
    return json.dumps(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message or text,
            "reason": reason,
            "code": code,
        }
    ).encode()


GONE_EVENT = {
    "type": "ERROR",
    "object": {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "too old resource version: 1 (2)",
        "reason": "Expired",
        "code": 410,
    },
}


class FaultyApi:
    """The HTTP-level fault proxy in front of ``cluster``'s API server (see the module)."""

    def __init__(self, cluster: ControlPlane, rate: float = 0.1, seed: int = 14):
        self.cluster, self.rate = cluster, rate
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()  # faults injected, by kind
        self.requests: Counter[str] = Counter()  # requests seen: "watch", "list", "create", ...
        self.gone_once: set[str] = set()  # resources ("evalruns") whose next watch gets a 410
        self.lists: Counter[str] = Counter()  # list requests, by resource (relists show here)
        self.by_client: Counter[tuple[str, str]] = Counter()  # ("operator/client", "429")
        self.names: dict[str, str] = {}  # "Bearer <token>" -> who (``name``)
        self.connections = 0  # TCP connections accepted
        self.watching: set[_Handler] = set()  # watches being relayed now
        self.listen_port = free_port()
        cert, key = cluster.authority.issue("faulty-api", "faulty-api", hosts=("127.0.0.1",))
        self.server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.server_context.load_cert_chain(cert, key)
        self.upstream_context = ssl.create_default_context(cafile=str(cluster.ca_file))
        proxy = self

        class Handler(_Handler):
            owner = proxy

        self.httpd = _TlsServer(("127.0.0.1", self.listen_port), Handler, self.server_context)
        self.httpd.owner = self
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FaultyApi:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def name(self, kubeconfig: Path, who: str) -> None:
        """Count the faults on requests with ``kubeconfig``'s token as ``who``'s, by client:
        ``who/kopf`` (kopf's aiohttp) or ``who/client`` (the kubernetes client: ``Kube``)."""
        config = yaml.safe_load(kubeconfig.read_text())
        token = config["users"][0]["user"]["token"]
        self.names[f"Bearer {token}"] = who

    def choose(self, kinds: tuple[str, ...], who: str) -> str | None:
        with self.lock:
            if self.random.random() >= self.rate:
                return None
            kind = self.random.choice(kinds)
            self.counts[kind] += 1
            self.by_client[(who, kind)] += 1
            return kind

    def uncount(self, kind: str, who: str) -> None:
        with self.lock:
            self.counts[kind] -= 1
            self.by_client[(who, kind)] -= 1

    def cut_watches(self) -> int:
        """Close every watch being relayed now (its client reconnects); returns how many."""
        with self.lock:
            watching = list(self.watching)
        for handler in watching:
            handler._drop()
        return len(watching)

    def count(self, what: str) -> None:
        with self.lock:
            self.requests[what] += 1

    def upstream(self) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(
            "127.0.0.1", self.cluster.port, context=self.upstream_context, timeout=400
        )


class _TlsServer(ThreadingHTTPServer):
    daemon_threads = True
    owner: FaultyApi

    def __init__(self, address: Any, handler: Any, context: ssl.SSLContext):
        self.context = context
        super().__init__(address, handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        with self.owner.lock:
            self.owner.connections += 1
        try:  # the handshake in the request's thread, not the accepting one
            tls = self.context.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError):
            return
        super().finish_request(tls, client_address)


class _Handler(BaseHTTPRequestHandler):
    owner: FaultyApi
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self._proxy()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_GET

    def _classify(self) -> tuple[str, str]:
        """(what, resource): what is watch, list, get, create, patch, ...; resource the
        plural the path names (``evalruns``, ``jobs``)."""
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        parts = [p for p in url.path.split("/") if p]
        if "namespaces" in parts and len(parts) > parts.index("namespaces") + 2:
            rest = parts[parts.index("namespaces") + 2 :]
        else:
            rest = parts[3:] if parts[:1] == ["apis"] else parts[2:]
        resource = rest[0] if rest else ""
        named = len(rest) > 1
        if self.command == "GET":
            if query.get("watch", [""])[0] in ("true", "1"):
                return "watch", resource
            return ("get" if named else "list"), resource
        verbs = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
        return verbs.get(self.command, self.command.lower()), resource

    def _answer(self, code: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _proxy(self) -> None:
        owner = self.owner
        what, resource = self._classify()
        owner.count(what)
        length = int(self.headers.get("Content-Length") or 0)  # (no client sends chunked)
        body = self.rfile.read(length) if length else None
        if what == "list":
            with owner.lock:
                owner.lists[resource] += 1
        if what == "watch" and resource in owner.gone_once:
            with owner.lock:
                owner.gone_once.discard(resource)
                owner.counts["410"] += 1
            return self._stream_gone()
        kinds = WATCH_FAULTS if what == "watch" else REQUEST_FAULTS
        if what != "create":
            kinds = tuple(k for k in kinds if k != "409")
        agent = "kopf" if self.headers.get("User-Agent", "").startswith("kopf") else "client"
        who = f"{owner.names.get(self.headers.get('Authorization', ''), 'other')}/{agent}"
        fault = owner.choose(kinds, who)
        if fault in ("429", "500", "503"):
            code = int(fault)
            return self._answer(
                code, status_body(code), {"Retry-After": "1"} if code == 429 else {}
            )
        if fault == "reset":
            return self._drop()
        if fault == "410":
            return self._stream_gone()
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        conn = owner.upstream()
        try:
            conn.request(self.command, self.path, body=body, headers=headers)
            response = conn.getresponse()
            if what == "watch":
                return self._stream(response, cut=fault == "cut")
            data = response.read()
        except OSError:
            return self._drop()
        finally:
            conn.close()
        if fault == "lost":
            return self._drop()
        if fault == "409" and response.status == 201:
            return self._answer(409, status_body(409))
        if fault == "409":  # the create was refused anyway: no fault, uncounted
            owner.uncount("409", who)
        self.send_response(response.status)
        for k, v in response.getheaders():
            if k.lower() not in HOP_BY_HOP:
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _stream_gone(self) -> None:
        """What a real API server sends for a watch from a compacted resourceVersion."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self._chunk(json.dumps(GONE_EVENT).encode() + b"\n")
        self.wfile.write(b"0\r\n\r\n")

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _stream(self, response: http.client.HTTPResponse, cut: bool) -> None:
        """Relay a watch as it comes; ``cut``: close it mid-stream after a moment."""
        self.send_response(response.status)
        for k, v in response.getheaders():
            if k.lower() not in HOP_BY_HOP:
                self.send_header(k, v)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        cutter = None
        if cut:  # both ends closed a moment from now, wherever the relay is
            with self.owner.lock:
                delay = self.owner.random.uniform(0.2, 3.0)
            cutter = threading.Timer(delay, lambda: (self._drop(), response.close()))
            cutter.start()
        with self.owner.lock:
            self.owner.watching.add(self)
        try:
            while data := response.read1(65536):
                self._chunk(data)
            self.wfile.write(b"0\r\n\r\n")
        except (OSError, http.client.HTTPException, ValueError, AttributeError):
            self._drop()
        finally:
            with self.owner.lock:
                self.owner.watching.discard(self)
            if cutter is not None:
                cutter.cancel()
            response.close()


class Toxiproxy:
    """A toxiproxy-server with one proxy, ``listen`` -> ``upstream``; toxics by its HTTP API."""

    def __init__(self, upstream: tuple[str, int], log: Path):
        self.api_port, self.listen_port = free_port(), free_port()
        self.upstream, self.log = upstream, log
        self.process: subprocess.Popen[bytes] | None = None
        self.toxics: dict[str, dict[str, Any]] = {}  # in place now
        self.toxics_used: dict[str, dict[str, Any]] = {}  # ever

    def __enter__(self) -> Toxiproxy:
        binary = toxiproxy_server()
        self.process = subprocess.Popen(
            [str(binary), "-host", "127.0.0.1", "-port", str(self.api_port)],
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                self._call("GET", "/version")
                break
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    text = self.log.read_text()
                    raise ControlPlaneError(f"toxiproxy did not start: {text}") from None
                time.sleep(0.05)
        self._call(
            "POST",
            "/proxies",
            {
                "name": "apiserver",
                "listen": f"127.0.0.1:{self.listen_port}",
                "upstream": f"{self.upstream[0]}:{self.upstream[1]}",
                "enabled": True,
            },
        )
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.api_port}{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as response:
            text = response.read().decode()
            try:
                return json.loads(text) if text.strip() else None
            except ValueError:  # /version: plain text
                return text

    def toxic(
        self, name: str, kind: str, toxicity: float, stream: str = "downstream", **attributes: Any
    ) -> None:
        """Add a toxic to a share (``toxicity``) of the proxy's connections."""
        spec = {
            "name": name,
            "type": kind,
            "stream": stream,
            "toxicity": toxicity,
            "attributes": attributes,
        }
        self._call("POST", "/proxies/apiserver/toxics", spec)
        self.toxics[name] = self.toxics_used[name] = spec

    def remove_toxics(self) -> None:
        for name in list(self.toxics):
            self._call("DELETE", f"/proxies/apiserver/toxics/{name}")
            del self.toxics[name]

    def connections_toxics(self, rate: float) -> None:
        """The TCP faults of the fault tests, each on ``rate`` of the connections: latency,
        resets, stalls ending in a close, sliced data and data cut off."""
        self.toxic("latency", "latency", rate, latency=50, jitter=30)
        self.toxic("reset", "reset_peer", rate, timeout=1500)
        self.toxic("stall", "timeout", rate / 2, timeout=2000)
        self.toxic("slicer", "slicer", rate, average_size=128, size_variation=64, delay=200)
        self.toxic("limit", "limit_data", rate / 2, bytes=262144)


def faulty_kubeconfig(source: Path, server: str, out: Path) -> Path:
    """A copy of kubeconfig ``source`` whose cluster's server is ``server``."""
    config = yaml.safe_load(source.read_text())
    for cluster in config["clusters"]:
        cluster["cluster"]["server"] = server
    out.write_text(yaml.safe_dump(config))
    return out


@contextlib.contextmanager
def faulty_path(
    cluster: ControlPlane, kubeconfig: Path, rate: float = 0.1, seed: int = 14
) -> Iterator[tuple[Path, FaultyApi, Toxiproxy]]:
    """``kubeconfig``'s identity reaching ``cluster`` through toxiproxy and FaultyApi, with
    TCP and HTTP faults at ``rate``; yields (the new kubeconfig, the two proxies)."""
    with FaultyApi(cluster, rate, seed) as api:
        log = cluster.dir / "logs" / f"toxiproxy-{api.listen_port}.log"
        with Toxiproxy(("127.0.0.1", api.listen_port), log) as toxi:
            if rate:
                toxi.connections_toxics(rate)
            out = kubeconfig.with_name(f"faulty-{api.listen_port}.kubeconfig")
            yield (
                faulty_kubeconfig(kubeconfig, f"https://127.0.0.1:{toxi.listen_port}", out),
                api,
                toxi,
            )
