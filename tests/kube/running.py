"""The qeval operator running in a thread of the test process, as ``qeval operator`` runs it."""

from __future__ import annotations

import os
import threading
import urllib.request

from tests.kube.play import free_port, wait_for


class Operator:
    """``qeval.k8s.handlers.run`` in a thread, as ``qeval operator`` runs it."""

    def __init__(self, metrics_port: int):
        self.metrics_port = metrics_port
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        from qeval.k8s.handlers import run

        try:
            run(stop_flag=self.stop, ready_flag=self.ready)
        except BaseException as e:  # surfaced by stop()
            self.error = e

    def start(self) -> Operator:
        # Read by the operator's startup handler, like every setting: fresh ports each time.
        os.environ["QEVAL_METRICS_PORT"] = str(self.metrics_port)
        os.environ["QEVAL_LIVENESS_ENDPOINT"] = f"http://127.0.0.1:{free_port()}/healthz"
        self.thread.start()
        wait_for(lambda: self.ready.is_set() or self.error, "the operator to be ready")
        assert self.error is None, self.error
        return self

    def stop_now(self) -> None:
        self.stop.set()
        self.thread.join(timeout=20)
        assert not self.thread.is_alive(), "the operator did not stop"
        assert self.error is None, self.error

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())

    def metrics_with(self, needle: str) -> str | None:
        text = self.metrics()
        return text if needle in text else None
