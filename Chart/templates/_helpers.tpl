{{/* The base of object names: "gpudock" for a release named gpudock (or one whose name
contains it), "<release>-gpudock" otherwise. */}}
{{- define "gpudock.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 57 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 57 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "gpudock.agentName" -}}
{{- printf "%s-agent" (include "gpudock.fullname" .) -}}
{{- end -}}

{{/* Labels every object carries. No Helm-only labels: manifests/ is this chart's output
with default values, applied without Helm. */}}
{{- define "gpudock.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{- define "gpudock.agentSelector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: agent
{{- end -}}

{{/* The host directories the agent must see to resolve hostPaths (each mounted into
its pod at the same path): a shared root itself; for a root per namespace
("/mynfs/{namespace}") the directory above the placeholder ("/mynfs"), which holds
every namespace's root. A JSON list, each directory once. */}}
{{- define "gpudock.hostPathMounts" -}}
{{- $dirs := list -}}
{{- range concat .Values.agent.allowedHostPaths .Values.agent.readOnlyHostPaths -}}
{{- if contains "{namespace}" . -}}
{{- $dirs = append $dirs (first (splitList "{namespace}" .) | dir) -}}
{{- else -}}
{{- $dirs = append $dirs . -}}
{{- end -}}
{{- end -}}
{{- $dirs | uniq | toJson -}}
{{- end -}}
