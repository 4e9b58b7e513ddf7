"""The few Kubernetes API calls qeval makes (the official client), with 404/409 handled
and transient failures retried.

Used by the operator (from threads, through ``asyncio.to_thread``) and by stage pods
publishing their results.

Every call of the client's API objects goes through ``RetryPolicy``: a 429 (after its
Retry-After), 500, 502, 503, 504, a reset or refused connection, a timeout or a TLS error
(the client's ApiException with status 0) is retried with exponential backoff and full
jitter, a bounded number of times; any other answer (400, 403, 404, 409, 422) is the API
server's answer and goes to the caller at once. Retrying is safe for every call made here:
a create that reached the server before its connection broke answers 409 the second time
(handled as "exists"), a delete 404 (handled as "gone"), a merge patch of a status sets the
same fields again, and a list only reads.

The loop is our own, not urllib3's ``Retry`` on the client's pool manager: that one sees
neither the verb nor the resource (so cannot count retries by them), does not retry POST or
PATCH by default, and is silent; tenacity would fit, but for these few lines it would be a
dependency of every stage image.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import urllib3
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from qeval.api.common import GROUP, VERSION

PLURALS = {"EvalRun": "evalruns", "QuantizedModel": "quantizedmodels"}
# The list calls of the built-in kinds the operator lists: (API, in a namespace, in all).
LISTS = {
    "jobs": ("batch", "list_namespaced_job", "list_job_for_all_namespaces"),
    "deployments": ("apps", "list_namespaced_deployment", "list_deployment_for_all_namespaces"),
    "configmaps": ("core", "list_namespaced_config_map", "list_config_map_for_all_namespaces"),
}
TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})
VERBS = ("create", "delete", "patch", "list", "read", "replace")
# Called on every retry with (verb, resource, reason): e.g. Metrics.api_retry.
OnRetry = Callable[[str, str, str], None]


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry a transient API failure: up to ``retries`` more
    attempts, the n-th after a random wait in [0, min(cap, base * 2**n)] seconds (full
    jitter), or after the server's Retry-After (at most ``cap``) if that is longer."""

    retries: int = 8
    base: float = 0.5
    cap: float = 30.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        wait = random.uniform(0, min(self.cap, self.base * 2**attempt))
        return max(wait, min(retry_after, self.cap)) if retry_after else wait

    def backoffs(self) -> list[float]:
        """The upper bounds of the waits, in order (for clients with their own loop)."""
        return [min(self.cap, self.base * 2**n) for n in range(self.retries)]


def transient(error: BaseException) -> str | None:
    """Why ``error`` is worth retrying (an HTTP status or an exception class name: a bounded
    set), or None if it is an answer to give the caller."""
    if isinstance(error, ApiException):
        if error.status in TRANSIENT_STATUSES:
            return str(error.status)
        if error.status == 0:  # the client wraps TLS errors so: "SSLError\n..."
            return str(error.reason or "").split("\n", 1)[0].split(":", 1)[0] or "ApiException"
        return None
    if isinstance(error, urllib3.exceptions.MaxRetryError) and error.reason is not None:
        return type(error.reason).__name__
    if isinstance(error, urllib3.exceptions.HTTPError | ConnectionError | TimeoutError):
        return type(error).__name__
    return None


def _retry_after(error: BaseException) -> float | None:
    value = (getattr(error, "headers", None) or {}).get("Retry-After")
    try:
        return float(value) if value else None
    except (TypeError, ValueError):  # an HTTP date: not sent by the API server
        return None


def _resource(method: str, args: tuple[Any, ...]) -> tuple[str, str]:
    """(verb, resource) of a client method: ``create_namespaced_job`` -> (create, jobs);
    custom objects by their plural argument (``.../status`` for the status subresource)."""
    verb, _, rest = method.partition("_")
    verb = verb if verb in VERBS else "other"
    cluster = rest.startswith("cluster_")  # list_cluster_custom_object(group, version, plural)
    rest = rest.removeprefix("namespaced_").removeprefix("cluster_")
    rest = rest.removesuffix("_for_all_namespaces")
    if rest.startswith("custom_object"):
        at = 2 if cluster else 3
        plural = str(args[at]) if len(args) > at else "customobjects"
        return verb, plural + ("/status" if rest.endswith("_status") else "")
    return verb, rest.replace("_", "") + ("" if rest.endswith("s") else "s")


class _Retrying:
    """One of the client's API objects (CoreV1Api, ...) whose calls retry transient errors."""

    def __init__(self, api: Any, policy: RetryPolicy, on_retry: OnRetry | None):
        self._api, self._policy, self._on_retry = api, policy, on_retry

    @property
    def api_client(self) -> Any:
        return self._api.api_client

    def __getattr__(self, method: str) -> Callable[..., Any]:
        call = getattr(self._api, method)

        def retrying(*args: Any, **kwargs: Any) -> Any:
            verb, resource = _resource(method, args)
            attempt = 0
            while True:
                try:
                    return call(*args, **kwargs)
                except Exception as e:
                    reason = transient(e)
                    if reason is None or attempt >= self._policy.retries:
                        raise
                    if self._on_retry is not None:
                        self._on_retry(verb, resource, reason)
                    time.sleep(self._policy.delay(attempt, _retry_after(e)))
                    attempt += 1

        return retrying


def api_client() -> client.ApiClient:
    """A client for the cluster this runs in (service account) or of $KUBECONFIG."""
    configuration = client.Configuration()
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=configuration)
    else:
        path = os.environ.get("KUBECONFIG", str(Path.home() / ".kube" / "config"))
        config.load_kube_config(config_file=path, client_configuration=configuration)
    configuration.retries = False  # urllib3 retries nothing: Kube's policy (counted) does
    return client.ApiClient(configuration)


class Kube:
    """Create-if-absent and status writes, idempotent under retries and restarts.

    ``retry``: how transient failures are retried; ``on_retry``: told of each retry."""

    def __init__(
        self,
        api: client.ApiClient,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        on_retry: OnRetry | None = None,
    ):
        policy = retry or RetryPolicy()
        self.apps: Any = _Retrying(client.AppsV1Api(api), policy, on_retry)
        self.batch: Any = _Retrying(client.BatchV1Api(api), policy, on_retry)
        self.core: Any = _Retrying(client.CoreV1Api(api), policy, on_retry)
        self.custom: Any = _Retrying(client.CustomObjectsApi(api), policy, on_retry)
        self.timeout = timeout

    def create_job(self, manifest: dict[str, Any]) -> bool:
        """Create the Job; False if it already exists (a retry or a restarted operator)."""
        ns = manifest["metadata"]["namespace"]
        try:
            self.batch.create_namespaced_job(ns, cast(Any, manifest), _request_timeout=self.timeout)
        except ApiException as e:
            if e.status == 409:
                return False
            raise
        return True

    def create_server(self, deployment: dict[str, Any], service: dict[str, Any]) -> bool:
        """Create a model server's Service and Deployment; False if the Deployment existed."""
        ns = deployment["metadata"]["namespace"]
        try:
            self.core.create_namespaced_service(
                ns, cast(Any, service), _request_timeout=self.timeout
            )
        except ApiException as e:
            if e.status != 409:
                raise
        try:
            self.apps.create_namespaced_deployment(
                ns, cast(Any, deployment), _request_timeout=self.timeout
            )
        except ApiException as e:
            if e.status == 409:
                return False
            raise
        return True

    def delete_server(self, namespace: str, name: str) -> None:
        """Delete a model server's Deployment (its pods with it) and Service; gone is fine."""
        for delete in (self.apps.delete_namespaced_deployment, self.core.delete_namespaced_service):
            try:
                delete(
                    name,
                    namespace,
                    propagation_policy="Background",
                    _request_timeout=self.timeout,
                )
            except ApiException as e:
                if e.status != 404:
                    raise

    def patch_status(self, kind: str, namespace: str, name: str, status: dict[str, Any]) -> None:
        """Merge-patch the status subresource (keys set to None are removed)."""
        self.custom.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            namespace,
            PLURALS[kind],
            name,
            {"status": status},
            _request_timeout=self.timeout,
        )

    def pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        """Pods matching a label selector, as plain dicts."""
        response = self.core.list_namespaced_pod(
            namespace, label_selector=selector, _request_timeout=self.timeout
        )
        return [self.core.api_client.sanitize_for_serialization(p) for p in response.items]

    def pages(
        self,
        resource: tuple[str, str, str] | tuple[str, str],
        namespace: str | None,
        selector: str,
        limit: int,
    ) -> Iterator[list[dict[str, Any]]]:
        """The objects of ``resource`` ((group, version, plural), or (version, plural) for the
        core API) matching a label selector, in one namespace or all (None), as plain dicts,
        a page of at most ``limit`` at a time. A continue token that expired (410) starts
        the list again: a page may then be seen twice, so callers must be idempotent."""
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {
                "label_selector": selector,
                "limit": limit,
                "_preload_content": False,
                "_request_timeout": self.timeout,
            }
            if token:
                kwargs["_continue"] = token
            plural = resource[-1]
            if plural in LISTS:
                api, in_namespace, in_all = LISTS[plural]
                call = getattr(getattr(self, api), in_namespace if namespace else in_all)
                args: tuple[Any, ...] = (namespace,) if namespace else ()
            elif namespace:
                call = self.custom.list_namespaced_custom_object
                args = (resource[0], resource[1], namespace, plural)
            else:
                call, args = self.custom.list_cluster_custom_object, tuple(resource)
            try:
                page = json.loads(call(*args, **kwargs).data)
            except ApiException as e:
                if e.status == 410 and token:  # the token expired: list again
                    token = None
                    continue
                raise
            yield page.get("items") or []
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return

    def configmap(self, namespace: str, name: str, selector: str) -> dict[str, Any] | None:
        """The ConfigMap ``name`` if it matches the label selector, as a plain dict (raw
        JSON, as the watches give it); None if there is none. A list by name (the verb the
        watches need already), not a get the operator would be granted for this alone."""
        response = self.core.list_namespaced_config_map(
            namespace,
            field_selector=f"metadata.name={name}",
            label_selector=selector,
            _preload_content=False,
            _request_timeout=self.timeout,
        )
        items = json.loads(response.data).get("items") or []
        return cast(dict[str, Any], items[0]) if items else None

    def create_configmap(self, manifest: dict[str, Any]) -> bool:
        """Create the ConfigMap; False if it exists. Result ConfigMaps are immutable and
        written once: a stage retried by its Job, or a record written again by a reconcile
        that ran before the watch showed it, keeps the first document."""
        meta = manifest["metadata"]
        try:
            self.core.create_namespaced_config_map(
                meta["namespace"], cast(Any, manifest), _request_timeout=self.timeout
            )
        except ApiException as e:
            if e.status == 409:
                return False
            raise
        return True
