{{/* Chart name, overridable. */}}
{{- define "weir.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Object name prefix: "<release>-weir", or the release name when it already says weir. */}}
{{- define "weir.fullname" -}}
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

{{- define "weir.operatorName" -}}
{{- printf "%s-operator" (include "weir.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object of the chart. */}}
{{- define "weir.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/part-of: weir
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}

{{/*
Selector labels of the operator pods. The name is `weir-operator`, not `weir`: job pods carry
`app.kubernetes.io/name: weir`, and the operator's watches select on it.
*/}}
{{- define "weir.operatorSelectorLabels" -}}
app.kubernetes.io/name: weir-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "weir.operatorLabels" -}}
{{ include "weir.labels" . }}
{{ include "weir.operatorSelectorLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "weir.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "weir.operatorName" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Namespaces where StreamJobs run: jobs.namespaces, else the watched ones, else the release's. */}}
{{- define "weir.jobNamespaces" -}}
{{- $namespaces := .Values.jobs.namespaces | default .Values.operator.watchNamespaces | default (list .Release.Namespace) }}
{{- toJson (uniq $namespaces) }}
{{- end }}

{{- define "weir.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
What the operator does in a namespace it watches, and nothing more (read operator/src/controller):
- streamjobs: list/watch (controller), patch (finalizers, merge patch);
  streamjobs/status: patch (server-side apply); streamjobs/finalizers: update, so the
  blockOwnerDeletion owner references on children pass OwnerReferencesPermissionEnforcement.
- deployments: get (observe), list/watch (owned), create+patch (server-side apply creates as
  `create`), delete (remove workloads on suspend).
- configmaps: list/watch (owned), create+patch (server-side apply).
- services: create+patch (server-side apply); never read.
- networkpolicies (with networkPolicy.enabled): create+patch (server-side apply); never read.
- events.k8s.io events: create, patch (kube's Recorder aggregates repeats into a series).
No Secrets, no Pods: job pods read S3 credentials through secretKeyRef.
*/}}
{{- define "weir.watchRules" -}}
- apiGroups: ["weir.dev"]
  resources: ["streamjobs"]
  verbs: ["list", "watch", "patch"]
- apiGroups: ["weir.dev"]
  resources: ["streamjobs/status"]
  verbs: ["patch"]
- apiGroups: ["weir.dev"]
  resources: ["streamjobs/finalizers"]
  verbs: ["update"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["create", "patch"]
{{- $secretVerbs := list }}
{{- if or .Values.operator.restAuth.enabled .Values.operator.peerTls.enabled }}
{{- $secretVerbs = append $secretVerbs "create" }}
{{- end }}
{{- if .Values.operator.restAuth.enabled }}
{{- $secretVerbs = append $secretVerbs "patch" }}
{{- end }}
{{- if $secretVerbs }}
# Each job's REST token Secret (server-side apply: create, patch; operator/src/rest_token.rs)
# and peer TLS Secret (create once; operator/src/peer_tls.rs). Never read: no get/list/watch.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: {{ toJson $secretVerbs }}
{{- end }}
{{- if .Values.networkPolicy.enabled }}
# Each job's own NetworkPolicy (server-side apply; operator/src/build.rs network_policy).
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["create", "patch"]
{{- end }}
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
