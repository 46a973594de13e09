{{- define "ferrokv-operator.name" -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ferrokv-operator.labels" -}}
app.kubernetes.io/name: ferrokv-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "ferrokv-operator.selector" -}}
app.kubernetes.io/name: ferrokv-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
