"""The real Prometheus (Debian's package) on 127.0.0.1, for tests of queries and alerts.

``Prometheus`` writes a config (static scrape targets, rule files), starts the binary with
a temporary data directory on a free port, and answers PromQL through the HTTP API. Waits
are bounded and wait on conditions (readiness, a series appearing), never on time alone.

Also here: the PromQL of the chart's dashboards, with Grafana's variables replaced as
Grafana would replace them when "All" is selected.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.kube.play import free_port, wait_for

Sample = dict[str, Any]  # {"metric": {labels}, "value": [t, "v"]}


def binary(name: str) -> str | None:
    """``prometheus`` or ``promtool`` from PATH (Debian installs them in /usr/bin)."""
    return shutil.which(name)


@dataclass(frozen=True)
class Target:
    """One static scrape target: ``job`` scrapes ``address`` and adds ``labels``.

    ``honor_labels``: a scraped label wins over a target label of the same name (as the
    chart's ServiceMonitor sets it, so the ``namespace`` of a qeval resource is kept).
    """

    job: str
    address: str
    labels: Mapping[str, str]
    honor_labels: bool = False


class Prometheus:
    """A Prometheus server scraping ``targets`` every ``interval``, evaluating ``rule_files``."""

    def __init__(
        self,
        targets: list[Target],
        rule_files: list[Path] | None = None,
        interval: str = "1s",
    ):
        self.targets = targets
        self.rule_files = rule_files or []
        self.interval = interval
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="prometheus-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> dict[str, Any]:
        jobs: dict[str, dict[str, Any]] = {}
        for t in self.targets:
            job = jobs.setdefault(
                t.job,
                {
                    "job_name": t.job,
                    "scrape_timeout": self.interval,
                    "honor_labels": t.honor_labels,
                    "static_configs": [],
                },
            )
            job["static_configs"].append({"targets": [t.address], "labels": dict(t.labels)})
        return {
            "global": {"scrape_interval": self.interval, "evaluation_interval": self.interval},
            "rule_files": [str(p) for p in self.rule_files],
            "scrape_configs": list(jobs.values()),
        }

    def start(self) -> Prometheus:
        exe = binary("prometheus")
        assert exe, "prometheus is not installed (apt-get install prometheus)"
        config = self.dir / "prometheus.yml"
        config.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        self.log = (self.dir / "log.txt").open("wb")
        self.process = subprocess.Popen(
            [
                exe,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-lifecycle",
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for(self._ready, "Prometheus to be ready")
        return self

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"prometheus exited: {self.logs()}")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, ConnectionError):
            return False

    def logs(self) -> str:
        return (self.dir / "log.txt").read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=15)
        self.process = None
        if hasattr(self, "log"):
            self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Prometheus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the HTTP API ---

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as e:
            body = json.loads(e.read() or b"{}")
            raise AssertionError(f"{path} {params}: {e.code} {body.get('error')}") from e
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[Sample]:
        """An instant query; the vector (or a scalar as a one-sample vector)."""
        data = self.api("query", query=expr)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def query_range(self, expr: str, seconds: float, step: str = "1s") -> list[Sample]:
        end = time.time()
        data = self.api(
            "query_range", query=expr, start=str(end - seconds), end=str(end), step=step
        )
        return list(data["result"])

    def label_values(self, label: str, match: str) -> list[str]:
        return list(self.api(f"label/{label}/values", **{"match[]": match}))

    def scraped(self, job: str) -> bool:
        """Whether every target of ``job`` has been scraped successfully at least once."""
        active = self.api("targets", state="active")["activeTargets"]
        mine = [t for t in active if t["labels"].get("job") == job]
        return bool(mine) and all(t["health"] == "up" for t in mine)

    def rules(self) -> list[dict[str, Any]]:
        return [r for g in self.api("rules")["groups"] for r in g["rules"]]


def finite(samples: list[Sample]) -> list[Sample]:
    """The samples whose value is a number (not NaN or ±Inf)."""
    out = []
    for s in samples:
        values = [s["value"]] if "value" in s else s.get("values", [])
        if any(math.isfinite(float(v)) for _, v in values):
            out.append(s)
    return out


# --- dashboards ------------------------------------------------------------------------------

# What Grafana puts for its built-in variables (a 1 s scrape interval, a recent range).
BUILTINS = {"__rate_interval": "15s", "__interval": "5s", "__range": "10m"}


def substitute(expr: str, variables: Mapping[str, str]) -> str:
    """Replace ``$var`` and ``${var}`` as Grafana does (longest names first)."""

    def one(match: re.Match[str]) -> str:
        name = match[1] or match[2]
        if name not in variables:
            raise KeyError(f"{name} is not a variable of the dashboard (in {expr!r})")
        return variables[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", one, expr)


def all_values(board: Mapping[str, Any]) -> dict[str, str]:
    """Every variable of a dashboard at "All" (its allValue), plus Grafana's built-ins."""
    out = dict(BUILTINS)
    for v in board["templating"]["list"]:
        if v["type"] == "datasource":
            continue
        assert v.get("includeAll"), f"variable {v['name']} has no All"
        out[v["name"]] = v.get("allValue") or ".*"
    return out


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel: str
    ref: str
    expr: str  # with the variables substituted
    legend: str


def panel_queries(path: Path, **selected: str) -> Iterator[PanelQuery]:
    """Every panel's PromQL, variables at All except those ``selected`` (name=value)."""
    board = json.loads(path.read_text())
    variables = all_values(board) | selected
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            yield PanelQuery(
                board["title"],
                panel["title"],
                target["refId"],
                substitute(target["expr"], variables),
                target.get("legendFormat", ""),
            )


def variable_queries(path: Path) -> Iterator[tuple[str, str, str]]:
    """(variable, label, series selector) of each ``label_values(selector, label)`` variable."""
    board = json.loads(path.read_text())
    variables = all_values(board)
    for v in board["templating"]["list"]:
        if v["type"] != "query":
            continue
        query = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        found = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
        assert found, f"{v['name']}: {query}"
        yield v["name"], found[2], substitute(found[1], variables)


def legend(format_: str, labels: Mapping[str, str]) -> str:
    """Grafana's legend: ``{{label}}`` replaced by the series' label values."""
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m[1], ""), format_)


# --- stand-in exporters ----------------------------------------------------------------------


class Exporter:
    """A prometheus_client registry served on 127.0.0.1 (what a scraped process exposes)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry

        self.registry = CollectorRegistry()
        self.port = free_port()
        self._server: Any = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Exporter:
        from prometheus_client import start_http_server

        self._server, _ = start_http_server(self.port, addr="127.0.0.1", registry=self.registry)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
