"""qeval: measure what quantization costs (accuracy) and buys (size, speed).

The package is split by responsibility:

* ``qeval.api``     pydantic models of QuantizedModel and EvalRun (the single source of truth)
* ``qeval.plan``    pure functions: spec -> DAG of stages
* ``qeval.stages``  the worker code each stage runs (quantize, evaluate, aggregate)
* ``qeval.results`` parsing lm-eval output and the recovery statistics
* ``qeval.local``   the local executor behind ``qeval run``
* ``qeval.demo``    the small model and offline tasks qeval builds for itself
"""

__version__ = "0.1.0"
