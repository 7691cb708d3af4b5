{{/* Names, labels and images shared by the templates. */}}

{{- define "bav.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* <release>-<chart>, or the release name alone when it already contains the chart name. */}}
{{- define "bav.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The operator's Deployment, Service, ClusterRole and leader Lease. */}}
{{- define "bav.operatorName" -}}
{{- printf "%s-operator" (include "bav.fullname" .) }}
{{- end }}

{{/* The external metrics API's Service and TLS Secret prefix. */}}
{{- define "bav.metricsApiName" -}}
{{- printf "%s-metrics-api" (include "bav.fullname" .) }}
{{- end }}

{{- define "bav.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "bav.operatorName" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "bav.selectorLabels" -}}
app.kubernetes.io/name: {{ include "bav.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "bav.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "bav.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: bucket-av-scanner
{{- end }}

{{/* image reference: repository@digest, or repository:tag (tag defaults to appVersion). */}}
{{- define "bav.image" -}}
{{- $image := index . 0 }}
{{- $root := index . 1 }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) }}
{{- end }}
{{- end }}

{{/*
The operator's rules (operator/deploy/rbac.yaml, explained rule by rule in operator/README.md),
plus autoscaling: server-side apply of each policy's HPA, and `get` on Deployments for the
replicas handover. The same rules go into a ClusterRole or, with watchNamespace, a Role.
*/}}
{{- define "bav.operatorRules" -}}
# Watch policies, add/remove the finalizer, write the status.
- apiGroups: [bucketav.dev]
  resources: [bucketscanpolicies]
  verbs: [get, list, watch, patch]
- apiGroups: [bucketav.dev]
  resources: [bucketscanpolicies/status]
  verbs: [patch]
# The worker Deployment, its metrics Service and the clamd sidecar's ConfigMap (server-side apply).
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch]
- apiGroups: [""]
  resources: [services]
  verbs: [create, patch]
# The workers' HorizontalPodAutoscaler (server-side apply; delete when autoscaling is off).
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [create, patch, delete]
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, create, patch, delete]
# The RabbitMQ URL, MinIO credentials and CA bundles a policy names; reconcile when they change.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, watch]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end }}
