"""The operator with seeded kill points: ``python -m tests.kube.crashing`` runs
``qeval operator`` after wrapping ``qeval.k8s.kube.Kube``'s creating calls so that, once a
real call has returned having created something, the process SIGKILLs itself with the
point's probability (``QEVAL_CRASH_POINTS``, e.g. ``create_job=0.1,create_configmap=0.6``;
a point not named is never a kill), seeded by ``QEVAL_CRASH_SEED``:

* after ``create_job``: between a Job's creation and the run's status write;
* after ``create_server``: between a server's Deployment and the status saying so;
* after ``create_configmap``: between a server's outcome record and the server's deletion
  (the operator records it, then deletes the server in the same reconcile).

Each kill is logged (one line, ``<method> <object>``) to ``QEVAL_CRASH_LOG`` first, so the
test knows where the operator died. No cleanup runs: SIGKILL, as an OOM kill does.
"""

from __future__ import annotations

import functools
import os
import random
import signal
import sys
from collections.abc import Callable
from typing import Any

POINTS = ("create_job", "create_server", "create_configmap")


def _name(args: tuple[Any, ...]) -> str:
    manifest = args[0] if args else {}
    return str(manifest.get("metadata", {}).get("name", "")) if isinstance(manifest, dict) else ""


def arm(probabilities: dict[str, float], seed: str, log: str | None) -> None:
    """Wrap the kill points of ``Kube`` (in this process)."""
    from qeval.k8s.kube import Kube

    rng = random.Random(seed)

    def wrap(method: str, real: Callable[..., Any], probability: float) -> Callable[..., Any]:
        @functools.wraps(real)
        def call(self: Kube, *args: Any, **kwargs: Any) -> Any:
            out = real(self, *args, **kwargs)  # the real call returned: it happened
            if out and rng.random() < probability:  # it created something
                if log:
                    with open(log, "a") as f:
                        f.write(f"{method} {_name(args)}\n")
                os.kill(os.getpid(), signal.SIGKILL)
            return out

        return call

    for method, probability in probabilities.items():
        assert method in POINTS, f"no kill point {method}"
        setattr(Kube, method, wrap(method, getattr(Kube, method), probability))


def points(text: str) -> dict[str, float]:
    """``create_job=0.1,create_configmap=0.6`` as a mapping."""
    pairs = (item.split("=") for item in text.split(",") if item)
    return {method.strip(): float(p) for method, p in pairs}


def main() -> int:
    arm(
        points(os.environ.get("QEVAL_CRASH_POINTS", "")),
        os.environ.get("QEVAL_CRASH_SEED", "0"),
        os.environ.get("QEVAL_CRASH_LOG"),
    )
    from qeval.cli import main as qeval

    return qeval(["operator"])


if __name__ == "__main__":
    sys.exit(main())
