{{- define "llamarock.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "llamarock.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "llamarock.engineName" -}}
{{- printf "%s-%s" (include "llamarock.fullname" .root) .engine.name | trunc 52 | trimSuffix "-" -}}
{{- end -}}

{{- define "llamarock.databaseSecret" -}}
{{- if .Values.postgresql.existingSecret -}}{{ .Values.postgresql.existingSecret }}{{- else -}}{{ include "llamarock.fullname" . }}-database{{- end -}}
{{- end -}}

{{- define "llamarock.blobSecret" -}}
{{- if .Values.blobStore.existingSecret -}}{{ .Values.blobStore.existingSecret }}{{- else -}}{{ include "llamarock.fullname" . }}-blob-store{{- end -}}
{{- end -}}
