"""Kube's retry policy on its own: which failures are retried, how long it waits, how often,
and what it reports (the fault tests, tests/test_faults.py, run it against the real API
server through a fault-injecting proxy)."""

from __future__ import annotations

import random
from typing import Any

import pytest
import urllib3
from kubernetes.client.rest import ApiException
from prometheus_client import generate_latest

from qeval.k8s.kube import Kube, RetryPolicy, transient
from qeval.k8s.metrics import Metrics


def api_error(status: int, headers: dict[str, str] | None = None) -> ApiException:
    e = ApiException(status=status, reason="injected")
    e.headers = headers or {}
    return e


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (api_error(429), "429"),
        (api_error(500), "500"),
        (api_error(502), "502"),
        (api_error(503), "503"),
        (api_error(504), "504"),
        (ApiException(status=0, reason="SSLError\nEOF occurred in violation"), "SSLError"),
        (urllib3.exceptions.ProtocolError("Connection aborted."), "ProtocolError"),
        (urllib3.exceptions.ReadTimeoutError(None, "/", "read timed out"), "ReadTimeoutError"),
        (
            urllib3.exceptions.MaxRetryError(None, "/", ConnectionResetError(104, "reset")),
            "ConnectionResetError",
        ),
        (ConnectionRefusedError(111, "refused"), "ConnectionRefusedError"),
        (api_error(400), None),
        (api_error(403), None),
        (api_error(404), None),
        (api_error(409), None),
        (api_error(422), None),
        (ValueError("a bug"), None),
    ],
)
def test_transient_failures_are_named_and_answers_are_not(
    error: BaseException, reason: str | None
) -> None:
    assert transient(error) == reason


def test_backoff_doubles_to_the_cap_with_full_jitter_and_honours_retry_after() -> None:
    policy = RetryPolicy(retries=6, base=0.5, cap=4.0)
    assert policy.backoffs() == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    random.seed(3)
    waits = [policy.delay(3) for _ in range(500)]
    assert 0 <= min(waits) < 0.5 and 3.5 < max(waits) <= 4.0  # spread over [0, cap]
    assert all(policy.delay(0, retry_after=2.0) >= 2.0 for _ in range(50))
    assert policy.delay(0, retry_after=60.0) <= 4.0  # a Retry-After past the cap: the cap


class FlakyCore:
    """A CoreV1Api double whose create fails with ``errors`` first, then answers."""

    def __init__(self, errors: list[BaseException]):
        self.errors, self.calls = list(errors), 0
        self.api_client = None

    def create_namespaced_config_map(self, namespace: str, body: Any, **_: Any) -> dict[str, Any]:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return {"metadata": body["metadata"]}


def kube_with(core: FlakyCore, retries: int = 3) -> tuple[Kube, Metrics]:
    from kubernetes import client

    metrics = Metrics()
    kube = Kube(
        client.ApiClient(), retry=RetryPolicy(retries, 0.001, 0.002), on_retry=metrics.api_retry
    )
    kube.core._api = core  # the double in place of the client's CoreV1Api
    return kube, metrics


CM = {"metadata": {"name": "result", "namespace": "ns"}}


def counted(metrics: Metrics) -> str:
    return generate_latest(metrics.registry).decode()


def test_a_transient_failure_is_retried_and_counted_then_the_call_succeeds() -> None:
    core = FlakyCore([api_error(503), api_error(429, {"Retry-After": "0"}), ConnectionResetError()])
    kube, metrics = kube_with(core)
    assert kube.create_configmap(CM) is True
    assert core.calls == 4
    text = counted(metrics)
    for reason in ("503", "429", "ConnectionResetError"):
        line = f'qeval_api_retries_total{{reason="{reason}",resource="configmaps",verb="create"}}'
        assert f"{line} 1.0" in text


def test_a_create_whose_first_answer_was_lost_finds_it_exists() -> None:
    core = FlakyCore([urllib3.exceptions.ProtocolError("lost"), api_error(409)])
    kube, _ = kube_with(core)
    assert kube.create_configmap(CM) is False  # exists: created by the first attempt
    assert core.calls == 2


def test_answers_are_not_retried_and_retries_are_bounded() -> None:
    core = FlakyCore([api_error(422)])
    kube, metrics = kube_with(core)
    with pytest.raises(ApiException) as refused:
        kube.create_configmap(CM)
    assert refused.value.status == 422 and core.calls == 1
    assert "qeval_api_retries_total{" not in counted(metrics)

    core = FlakyCore([api_error(500)] * 10)
    kube, metrics = kube_with(core, retries=3)
    with pytest.raises(ApiException):
        kube.create_configmap(CM)
    assert core.calls == 4  # the first attempt and 3 retries
    assert 'reason="500",resource="configmaps",verb="create"} 3.0' in counted(metrics)
