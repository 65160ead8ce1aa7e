{{/*
The labels Helm adds: the release that owns an object, and the chart and version that
made it.
*/}}
{{- define "nodeguard.helmLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}

{{/*
The labels of deploy/base's objects that carry app.kubernetes.io/name, with Helm's.
The selectors use app.kubernetes.io/name alone, as deploy/base does.
*/}}
{{- define "nodeguard.labels" -}}
app.kubernetes.io/name: nodeguard
{{ include "nodeguard.helmLabels" . }}
{{- end }}

{{/*
The image: repository@digest when a digest is set, else repository:tag (the chart's
appVersion unless set).
*/}}
{{- define "nodeguard.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end }}

{{/*
The serving Certificate's DNS names: the Service, as the API server calls it.
*/}}
{{- define "nodeguard.dnsNames" -}}
- nodeguard.{{ .Release.Namespace }}.svc
- nodeguard.{{ .Release.Namespace }}.svc.cluster.local
{{- end }}
