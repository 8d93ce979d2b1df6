{{/* vim: set filetype=mustache: */}}
{{/*
Expand the name of the chart.
*/}}
{{- define "conversion-relay.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Create a default fully qualified app name.
We truncate at 63 chars because some Kubernetes name fields are limited to this (by the DNS naming spec).
If the release name contains the chart name it is used as the full name.
*/}}
{{- define "conversion-relay.fullname" -}}
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

{{/*
Chart name and version as used by the chart label.
*/}}
{{- define "conversion-relay.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels.
*/}}
{{- define "conversion-relay.labels" -}}
helm.sh/chart: {{ include "conversion-relay.chart" . }}
{{ include "conversion-relay.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: conversion-relay
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels: name and instance only (never the version, which changes on upgrade).
*/}}
{{- define "conversion-relay.selectorLabels" -}}
app.kubernetes.io/name: {{ include "conversion-relay.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The label that tells the Deployments of splitByVendor apart.
*/}}
{{- define "conversion-relay.vendorLabelKey" -}}
conversion-relay/vendor
{{- end }}

{{/*
The name of the service account to use.
*/}}
{{- define "conversion-relay.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "conversion-relay.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The image reference: repository, then the digest if given, else the tag (default: appVersion).
*/}}
{{- define "conversion-relay.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion | toString) }}
{{- end }}
{{- end }}

{{/*
The Secret whose keys become environment variables (the config references them as ${KEY}),
or nothing when credentials come from extraEnv only.
*/}}
{{- define "conversion-relay.secretName" -}}
{{- if and .Values.existingSecret .Values.secret.create }}
{{- fail "existingSecret and secret.create are exclusive: use your own Secret or let the chart create one" }}
{{- end }}
{{- if .Values.existingSecret }}
{{- .Values.existingSecret }}
{{- else if .Values.secret.create }}
{{- include "conversion-relay.fullname" . }}
{{- end }}
{{- end }}

{{/*
The relay's HTTP port (config.http.port, default 8080).
*/}}
{{- define "conversion-relay.httpPort" -}}
{{- $http := .Values.config.http | default dict }}
{{- $http.port | default 8080 | int }}
{{- end }}

{{/*
The relay's drain grace on SIGTERM (config.pipeline.shutdown_grace_s, default 20).
*/}}
{{- define "conversion-relay.shutdownGrace" -}}
{{- $pipeline := .Values.config.pipeline | default dict }}
{{- $pipeline.shutdown_grace_s | default 20 | float64 | ceil | int }}
{{- end }}

{{/*
terminationGracePeriodSeconds: above the drain grace, so Kubernetes never kills a pod that is
still committing its offsets. Computed from the grace plus a margin, or validated when set.
*/}}
{{- define "conversion-relay.terminationGracePeriodSeconds" -}}
{{- $grace := include "conversion-relay.shutdownGrace" . | int }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add $grace (.Values.terminationGraceMarginSeconds | int) }}
{{- else if le (.Values.terminationGracePeriodSeconds | int) $grace }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be above config.pipeline.shutdown_grace_s (%d), or the relay is killed mid-drain" (.Values.terminationGracePeriodSeconds | int) $grace) }}
{{- else }}
{{- .Values.terminationGracePeriodSeconds | int }}
{{- end }}
{{- end }}

{{/*
Kafka consumer group prefix (config.kafka.group_prefix, default conversion-relay).
*/}}
{{- define "conversion-relay.groupPrefix" -}}
{{- $kafka := .Values.config.kafka | default dict }}
{{- $kafka.group_prefix | default "conversion-relay" }}
{{- end }}

{{/*
The enabled vendors (a vendor is enabled unless `enabled: false`), sorted, as a JSON list.
*/}}
{{- define "conversion-relay.enabledVendors" -}}
{{- $names := list }}
{{- range $name, $vendor := (.Values.config.vendors | default dict) }}
{{- if kindIs "map" $vendor }}
{{- if or (not (hasKey $vendor "enabled")) $vendor.enabled }}
{{- $names = append $names $name }}
{{- end }}
{{- end }}
{{- end }}
{{- if not $names }}
{{- fail "config.vendors: enable at least one vendor (see values.yaml for an example)" }}
{{- end }}
{{- toJson $names }}
{{- end }}

{{/*
The workloads to run, as a JSON list: one for the whole relay, or one per enabled vendor with
splitByVendor. Each has `vendor` ("" = all), `name`, `replicas` and `resources`.
*/}}
{{- define "conversion-relay.units" -}}
{{- $fullname := include "conversion-relay.fullname" . }}
{{- $units := list }}
{{- if and .Values.autoscaling.enabled .Values.keda.enabled }}
{{- fail "autoscaling.enabled and keda.enabled are exclusive: KEDA manages its own HorizontalPodAutoscaler" }}
{{- end }}
{{- range $vendor, $_ := (.Values.vendorOverrides | default dict) }}
{{- if not (hasKey ($.Values.config.vendors | default dict) $vendor) }}
{{- fail (printf "vendorOverrides.%s: no such vendor in config.vendors" $vendor) }}
{{- end }}
{{- end }}
{{- if .Values.splitByVendor }}
{{- range $vendor := include "conversion-relay.enabledVendors" . | fromJsonArray }}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9_]{0,38}[a-z0-9])?$" $vendor) }}
{{- fail (printf "config.vendors.%s: splitByVendor needs vendor names of at most 40 lower-case letters, digits, '-' and '_'" $vendor) }}
{{- end }}
{{- $override := get ($.Values.vendorOverrides | default dict) $vendor | default dict }}
{{- $suffix := $vendor | replace "_" "-" }}
{{- $name := printf "%s-%s" ($fullname | trunc (int (sub 62 (len $suffix)))) $suffix | trimSuffix "-" }}
{{- $units = append $units (dict "vendor" $vendor "name" $name "replicas" (get $override "replicaCount" | default $.Values.replicaCount) "resources" (get $override "resources" | default $.Values.resources)) }}
{{- end }}
{{- else }}
{{- $_ := include "conversion-relay.enabledVendors" . }}
{{- $units = append $units (dict "vendor" "" "name" $fullname "replicas" .Values.replicaCount "resources" .Values.resources) }}
{{- end }}
{{- toJson $units }}
{{- end }}

{{/*
Selector labels of one workload: the chart's, plus the vendor with splitByVendor.
Call with (dict "root" $ "unit" $unit).
*/}}
{{- define "conversion-relay.unitSelectorLabels" -}}
{{ include "conversion-relay.selectorLabels" .root }}
{{- if .unit.vendor }}
{{ include "conversion-relay.vendorLabelKey" .root }}: {{ .unit.vendor }}
{{- end }}
{{- end }}

{{/*
Bootstrap servers for the KEDA Kafka scaler (KEDA cannot resolve the relay's ${ENV} references).
*/}}
{{- define "conversion-relay.kedaBootstrapServers" -}}
{{- $kafka := .Values.config.kafka | default dict }}
{{- $servers := .Values.keda.bootstrapServers | default (join "," ($kafka.bootstrap_servers | default list)) }}
{{- if contains "${" $servers }}
{{- fail "keda.bootstrapServers: config.kafka.bootstrap_servers uses ${ENV} references, which KEDA cannot resolve; set keda.bootstrapServers" }}
{{- end }}
{{- $servers }}
{{- end }}
