"""The two resources of API group qeval.dev/v1alpha1, as pydantic models.

These models are the single source of truth: the CRDs in ``crds/`` are generated from
them (``qeval.api.crd``), the operator and ``qeval run`` validate with them.
"""

from qeval.api.common import API_VERSION, GROUP, VERSION, Condition, ModelSource, Scheduling
from qeval.api.documents import SpecError, load_documents
from qeval.api.evalrun import Backend, Candidate, EvalRun, EvalRunSpec, Task
from qeval.api.evalrun_status import EvalRunStatus
from qeval.api.quantizedmodel import (
    Algorithm,
    QuantizedModel,
    QuantizedModelSpec,
    QuantizedModelStatus,
    Scheme,
)

__all__ = [
    "API_VERSION",
    "GROUP",
    "VERSION",
    "Algorithm",
    "Backend",
    "Candidate",
    "Condition",
    "EvalRun",
    "EvalRunSpec",
    "EvalRunStatus",
    "ModelSource",
    "QuantizedModel",
    "QuantizedModelSpec",
    "QuantizedModelStatus",
    "Scheduling",
    "Scheme",
    "SpecError",
    "Task",
    "load_documents",
]
