{{/*
The serving part (`serve.enabled`): `fruitlens serve` as a Deployment behind a Service, scaled by a
HorizontalPodAutoscaler and kept available through voluntary disruptions by a PodDisruptionBudget.
Its own names and labels (component "serve"), so it never selects the job's driver or executors.
*/}}

{{/* `<fullname>-serve`, within a DNS label. */}}
{{- define "fruitlens.serve.fullname" -}}
{{- printf "%s-serve" (include "fruitlens.fullname" . | trunc 57 | trimSuffix "-") }}
{{- end }}

{{/* Labels selecting the serving pods. */}}
{{- define "fruitlens.serve.selectorLabels" -}}
{{ include "fruitlens.selectorLabels" . }}
app.kubernetes.io/component: serve
{{- end }}

{{/* Labels on the serving objects. */}}
{{- define "fruitlens.serve.labels" -}}
helm.sh/chart: {{ include "fruitlens.chart" . }}
{{ include "fruitlens.serve.selectorLabels" . }}
app.kubernetes.io/version: {{ (.Values.serve.image.tag | default .Chart.AppVersion) | toString | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: fruitlens
{{- end }}

{{/* The serving image reference. */}}
{{- define "fruitlens.serve.image" -}}
{{- printf "%s:%s" .Values.serve.image.repository (.Values.serve.image.tag | default .Chart.AppVersion | toString) }}
{{- end }}

{{/* The ServiceAccount of the serving pods: serve.serviceAccountName, else the chart's (its annotations,
e.g. an IRSA role, then grant the S3 read of OUTPUT). */}}
{{- define "fruitlens.serve.serviceAccountName" -}}
{{- default (include "fruitlens.serviceAccountName" .) .Values.serve.serviceAccountName }}
{{- end }}

{{/* What the service serves: the mounted volume's path when serve.model.volume is set, else
serve.model.output, else job.output (s3a:// is read as s3://: fruitlens takes both). */}}
{{- define "fruitlens.serve.output" -}}
{{- if .Values.serve.model.volume }}
{{- .Values.serve.model.mountPath }}
{{- else }}
{{- required "serve.model.output (or job.output, or serve.model.volume) is required" (.Values.serve.model.output | default .Values.job.output) }}
{{- end }}
{{- end }}

{{/* `python -m fruitlens.serve OUTPUT ...` arguments (the image's entrypoint), as a YAML list. */}}
{{- define "fruitlens.serve.args" -}}
{{- $s := .Values.serve }}
{{- $args := list (include "fruitlens.serve.output" .) "--host" "0.0.0.0" "--port" ($s.port | toString) }}
{{- $args = concat $args (list "--max-batch" ($s.batching.maxBatch | toString) "--batch-wait-ms" ($s.batching.batchWaitMs | toString) "--max-queue" ($s.batching.maxQueue | toString)) }}
{{- $args = concat $args (list "--threads" ($s.threads | toString) "--poll-seconds" ($s.model.pollSeconds | toString)) }}
{{- with $s.keepUploads }}
{{- $args = concat $args (list "--keep-uploads" .) }}
{{- end }}
{{- $args = concat $args $s.extraArgs }}
{{- toYaml $args }}
{{- end }}
