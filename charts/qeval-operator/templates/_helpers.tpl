{{/* Names, labels and the small decisions every template shares. */}}

{{- define "qeval.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* <release>-qeval-operator, or the release name if it already contains the chart name. */}}
{{- define "qeval.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "qeval.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "qeval.selectorLabels" -}}
app.kubernetes.io/name: {{ include "qeval.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of every object the chart makes. */}}
{{- define "qeval.labels" -}}
helm.sh/chart: {{ include "qeval.chart" . }}
{{ include "qeval.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: qeval
{{- end }}

{{- define "qeval.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "qeval.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag, or repository@digest when a digest is given. */}}
{{- define "qeval.image" -}}
{{- $image := index . 0 }}{{- $chart := index . 1 }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default $chart.AppVersion $image.tag) }}
{{- end }}
{{- end }}

{{/* True (non-empty) when the operator serves the whole cluster. */}}
{{- define "qeval.clusterwide" -}}
{{- if not .Values.watchNamespaces }}true{{- end }}
{{- end }}

{{/* Namespaces that get the stage ServiceAccount, Role and storage claim (a JSON list). */}}
{{- define "qeval.stageNamespaces" -}}
{{- $namespaces := .Values.stages.namespaces | default .Values.watchNamespaces | default (list .Release.Namespace) }}
{{- $namespaces | uniq | toJson }}
{{- end }}

{{/* The claim stage pods mount (QEVAL_STORAGE_CLAIM): the user's own, or the one the chart makes. */}}
{{- define "qeval.storageClaim" -}}
{{- default .Values.storage.claimName .Values.storage.existingClaim }}
{{- end }}

{{/* True (non-empty) when the chart creates the storage claim: not when one is brought. */}}
{{- define "qeval.createsClaim" -}}
{{- if and .Values.storage.create (not .Values.storage.existingClaim) }}true{{- end }}
{{- end }}

{{/* The Prometheus job of the metrics Service: a ServiceMonitor names it after the Service. */}}
{{- define "qeval.metricsService" -}}
{{- printf "%s-metrics" (include "qeval.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* What the operator calls on the API in each namespace it serves (RBAC rules). */}}
{{- define "qeval.operatorRules" -}}
# The two resources: kopf lists and watches them (the operator writes only their status; it
# keeps no finalizers or annotations on them). Nothing here reads one object by name: kopf
# and the operator only list and watch, so no rule grants get (the audit log shows none).
- apiGroups: [qeval.dev]
  resources: [quantizedmodels, evalruns]
  verbs: [list, watch]
# Their status: the operator merge-patches it.
- apiGroups: [qeval.dev]
  resources: [quantizedmodels/status, evalruns/status]
  verbs: [patch]
# Its children's owner references block the resource's foreground deletion, which needs
# this where OwnerReferencesPermissionEnforcement is on (OpenShift): no finalizer is set.
- apiGroups: [qeval.dev]
  resources: [quantizedmodels/finalizers, evalruns/finalizers]
  verbs: [update]
# Stage Jobs: created once each (never updated or deleted: owner references clean them up).
- apiGroups: [batch]
  resources: [jobs]
  verbs: [list, watch, create]
# Result ConfigMaps: those the stage pods publish, read; one per vLLM server (backend
# vllm-server), created by the operator itself (once: an existing one is left as it is).
- apiGroups: [""]
  resources: [configmaps]
  verbs: [list, watch, create]
# vLLM servers (backend vllm-server): a Deployment per model under evaluation, watched,
# deleted once the stages using it are done (never patched: nothing is changed in place).
- apiGroups: [apps]
  resources: [deployments]
  verbs: [list, watch, create, delete]
# ... and its Service (port `http`: the OpenAI API and vLLM's /metrics), deleted with it.
- apiGroups: [""]
  resources: [services]
  verbs: [create, delete]
# Pods of stage Jobs that cannot start (e.g. ImagePullBackOff): listed by label.
- apiGroups: [""]
  resources: [pods]
  verbs: [list]
# Events about the resources (kopf posts them; it never reads or patches them).
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end }}
