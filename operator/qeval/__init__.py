"""qeval: measure what quantization costs (accuracy) and buys (size, speed).

This package is all of qeval (it lives under the design card's top-level ``operator/``);
``qeval.k8s`` is the Kubernetes operator, one of its two executors. By responsibility:

* ``qeval.api``     pydantic models of QuantizedModel and EvalRun (the single source of truth)
* ``qeval.plan``    pure: spec + Layout -> the DAG of stages both executors run unedited
* ``qeval.engine``  pure: which stage runs, is skipped or is done (one engine for both)
* ``qeval.reasons`` condition types and reasons, each defined once with its meaning
* ``qeval.stages``  the worker code each stage runs, and its versioned documents
* ``qeval.results`` lm-eval output, the recovery statistics, the result cache
* ``qeval.status``  resource status from stage result documents
* ``qeval.local``   the local executor behind ``qeval run``
* ``qeval.k8s``     the operator: Job builders, observation, reconcile, the controller
* ``qeval.report``  the run report
* ``qeval.demo``    the small model and offline tasks qeval builds for itself

One result from spec to status, in both executors: ``docs/architecture.md``.
"""

__version__ = "0.1.0"
