{{/* The chart's name, cut to a DNS label. */}}
{{- define "berth.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The name of every object: the release, and the chart's name unless the release holds it. */}}
{{- define "berth.fullname" -}}
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

{{- define "berth.selectorLabels" -}}
app.kubernetes.io/name: {{ include "berth.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "berth.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "berth.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* "true" when blobs are in S3 and metadata in PostgreSQL: replicas share nothing local. */}}
{{- define "berth.scaleOut" -}}
{{- if and (eq .Values.storage.backend "s3") (eq .Values.meta.backend "postgres") }}true{{ end }}
{{- end }}

{{/* The Secret holding the BERTH_* variables that carry secrets. */}}
{{- define "berth.secretName" -}}
{{- default (printf "%s-secret" (include "berth.fullname" .)) .Values.existingSecret }}
{{- end }}

{{/* Refuses values that cannot work; included by the workload. */}}
{{- define "berth.validate" -}}
{{- if not (has .Values.storage.backend (list "filesystem" "s3")) }}
{{- fail (printf "storage.backend must be filesystem or s3, not %q" .Values.storage.backend) }}
{{- end }}
{{- if not (has .Values.meta.backend (list "sqlite" "postgres")) }}
{{- fail (printf "meta.backend must be sqlite or postgres, not %q" .Values.meta.backend) }}
{{- end }}
{{- if and (gt (int .Values.replicaCount) 1) (not (include "berth.scaleOut" .)) }}
{{- fail (printf "replicaCount=%d needs the scale-out stores (storage.backend=s3 and meta.backend=postgres): the embedded SQLite database and blob files belong to one process" (int .Values.replicaCount)) }}
{{- end }}
{{- if and (eq .Values.storage.backend "s3") (not .Values.storage.s3.bucket) }}
{{- fail "storage.backend=s3 needs storage.s3.bucket" }}
{{- end }}
{{- if and (eq .Values.meta.backend "postgres") (not .Values.meta.url) (not .Values.existingSecret) }}
{{- fail "meta.backend=postgres needs meta.url, or existingSecret with BERTH_META__URL" }}
{{- end }}
{{- end }}
