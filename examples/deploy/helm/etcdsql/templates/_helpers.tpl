{{- define "etcdsql.name" -}}{{ .Release.Name }}-etcdsql{{- end -}}
{{- define "etcdsql.labels" -}}
app.kubernetes.io/name: etcdsql
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
{{- define "etcdsql.secret" -}}{{ default (include "etcdsql.name" .) .Values.existingSecret }}{{- end -}}
