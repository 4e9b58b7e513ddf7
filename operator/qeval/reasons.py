"""Condition types and reasons: each defined once, with what it means.

A reason is one CamelCase word (Kubernetes' convention for ``Condition.reason`` and
``Event.reason``). The ones here are set by the executors and the status rules, which both
executors share. A stage's own failures (``ModelNotFound``, ``InvalidPrompts``, ...) are
raised by that stage as ``StageError(reason, message)``, documented where they are raised;
the Job's and the pod's come from Kubernetes (``BackoffLimitExceeded``, ``Unschedulable``).
"""

from __future__ import annotations

# --- condition types -------------------------------------------------------------------
ACCEPTED = "Accepted"  # the spec is valid (False: why not, or that it changed after a start)
READY = "Ready"  # a QuantizedModel's weights exist and can be evaluated
SUCCEEDED = "Succeeded"  # an EvalRun ended: True all stages succeeded, False it failed
QUANTIZING = "Quantizing"  # a QuantizedModel's quantize Job is underway
WAITING_FOR_MODELS = "WaitingForModels"  # an EvalRun waits for QuantizedModels to be Ready
# kstatus's abnormal-true condition: True while a started stage's pod does not run (not
# scheduled, image not pulled yet), with the scheduler's or the kubelet's reason.
STALLED = "Stalled"

# --- reasons: the spec ------------------------------------------------------------------
SPEC_VALID = "SpecValid"  # Accepted True
INVALID_SPEC = "InvalidSpec"  # refused: the message names the field and the fix
SPEC_CHANGED = "SpecChanged"  # changed after stages started: the run keeps its first spec
QUANTIZED_MODEL_NOT_FOUND = "QuantizedModelNotFound"  # a candidate names no QuantizedModel

# --- reasons: progress ------------------------------------------------------------------
MODELS_NOT_READY, MODELS_READY = "ModelsNotReady", "ModelsReady"
STAGES_RUNNING = "StagesRunning"  # something is underway
STAGES_PENDING = "StagesPending"  # nothing is underway yet, nothing failed
PODS_RUNNING = "PodsRunning"  # Stalled False
QUANTIZED = "Quantized"  # Ready True: the quantize stage succeeded
ALL_STAGES_SUCCEEDED = "AllStagesSucceeded"  # Succeeded True

# --- reasons: a stage that did not succeed ------------------------------------------------
STAGE_FAILED = "StageFailed"  # a failure without a reason of its own; or not every stage ran
DEPENDENCY_FAILED = "DependencyFailed"  # skipped: a stage it needs failed or was skipped
QUANTIZED_MODEL_FAILED = "QuantizedModelFailed"  # the QuantizedModel it evaluates failed
INVALID_INPUT = "InvalidInput"  # the stage could not read its input document
CRASHED = "Crashed"  # an unexpected exception in the stage (the traceback's tail is kept)
PROCESS_DIED = "ProcessDied"  # a local stage process exited without a result document
JOB_FAILED = "JobFailed"  # a stage Job failed without a reason of its own
NO_RESULT = "NoResult"  # a stage Job succeeded but published no result
UNREADABLE_RESULT = "UnreadableResult"  # a result document that does not parse (or is of
# another schema major: see ``qeval.stages.envelope``)
RESULT_TOO_LARGE = "ResultTooLarge"  # a result document over a ConfigMap's 1 MiB
OOM_KILLED = "OOMKilled"  # the kernel killed the stage's container for memory
SERVER_FAILED = "ServerFailed"  # a model server exited or failed while needed
SERVER_NOT_READY = "ServerNotReady"  # a model server not ready within its timeout

# --- event reasons ----------------------------------------------------------------------
JOB_CREATED = "JobCreated"
SERVER_CREATED, SERVER_DONE, SERVER_STOPPED = "ServerCreated", "ServerDone", "ServerStopped"
