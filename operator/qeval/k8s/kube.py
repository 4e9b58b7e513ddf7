"""The few Kubernetes API calls qeval makes (the official client), with 404/409 handled.

Used by the operator (from threads, through ``asyncio.to_thread``) and by stage pods
publishing their results.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, cast

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from qeval.k8s.manifests import GROUP, VERSION

PLURALS = {"EvalRun": "evalruns", "QuantizedModel": "quantizedmodels"}


def api_client() -> client.ApiClient:
    """A client for the cluster this runs in (service account) or of $KUBECONFIG."""
    configuration = client.Configuration()
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=configuration)
    else:
        path = os.environ.get("KUBECONFIG", str(Path.home() / ".kube" / "config"))
        config.load_kube_config(config_file=path, client_configuration=configuration)
    return client.ApiClient(configuration)


class Kube:
    """Create-if-absent and status writes, idempotent under retries and restarts."""

    def __init__(self, api: client.ApiClient, timeout: float = 30.0):
        self.apps = client.AppsV1Api(api)
        self.batch = client.BatchV1Api(api)
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
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
