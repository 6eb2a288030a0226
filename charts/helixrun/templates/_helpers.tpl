{{/*
Names and labels shared by every template (templates/monitoring/ included).
Selector labels for the operator: `helixrun.selectorLabels` plus
`app.kubernetes.io/component: operator`.
*/}}

{{- define "helixrun.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "helixrun.fullname" -}}
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

{{- define "helixrun.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "helixrun.selectorLabels" -}}
app.kubernetes.io/name: {{ include "helixrun.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "helixrun.labels" -}}
helm.sh/chart: {{ include "helixrun.chart" . }}
{{ include "helixrun.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: helixrun
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "helixrun.operator.selectorLabels" -}}
{{ include "helixrun.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "helixrun.operator.fullname" -}}
{{- printf "%s-operator" (include "helixrun.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "helixrun.operator.serviceAccountName" -}}
{{- default (include "helixrun.operator.fullname" .) .Values.operator.serviceAccount.name }}
{{- end }}

{{/* Several operator pods only ever run as a kopf peering. */}}
{{- define "helixrun.operator.peering" -}}
{{- if gt (int .Values.operator.replicas) 1 }}true{{ end }}
{{- end }}

{{- define "helixrun.operator.image" -}}
{{- printf "%s:%s" .Values.operator.image.repository (default .Chart.AppVersion .Values.operator.image.tag) }}
{{- end }}

{{- define "helixrun.trainer.image" -}}
{{- printf "%s:%s" .Values.trainer.image.repository (default .Chart.AppVersion .Values.trainer.image.tag) }}
{{- end }}

{{/* Namespaces that get the trainer ServiceAccount and Role, as a JSON list. */}}
{{- define "helixrun.trainer.namespaces" -}}
{{- $ns := .Values.trainer.namespaces | default .Values.operator.watchNamespaces | default (list .Release.Namespace) }}
{{- $ns | uniq | toJson }}
{{- end }}

{{- define "helixrun.pools.fullname" -}}
{{- printf "%s-pools" (include "helixrun.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
