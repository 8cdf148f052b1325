{{/*
Names are DNS labels: Kubernetes caps them at 63 characters, so every name is truncated there.
*/}}

{{/* The chart's name, or nameOverride. */}}
{{- define "fruitlens.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's resource name: the release name alone when it already contains the chart name. */}}
{{- define "fruitlens.fullname" -}}
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

{{/* chart label value: name-version, `+` is not allowed in a label. */}}
{{- define "fruitlens.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "fruitlens.labels" -}}
helm.sh/chart: {{ include "fruitlens.chart" . }}
{{ include "fruitlens.selectorLabels" . }}
app.kubernetes.io/version: {{ include "fruitlens.version" . | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: fruitlens
{{- end }}

{{/* Labels that select this release's pods (`fruitlens k8s status` finds driver and executors by them). */}}
{{- define "fruitlens.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fruitlens.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The app.kubernetes.io/version label: the image tag (or appVersion) cut to what a label value allows
(63 characters of [A-Za-z0-9_.-], alphanumeric at both ends); a digest never goes into it. */}}
{{- define "fruitlens.version" -}}
{{- regexReplaceAll "[^A-Za-z0-9_.-]" (.Values.image.tag | default .Chart.AppVersion | toString) "_" | trunc 63 | trimAll "_.-" }}
{{- end }}

{{/* The image reference: repository:tag, the tag falling back to the chart's appVersion; with image.digest
repository@digest, or repository:tag@digest when a tag is set too (the runtime pulls by the digest, the tag
only names it). */}}
{{- define "fruitlens.image" -}}
{{- $tag := .Values.image.tag | toString }}
{{- if .Values.image.digest }}
{{- if $tag }}{{ printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest }}
{{- else }}{{ printf "%s@%s" .Values.image.repository .Values.image.digest }}{{ end }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository ($tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/* The pull policy: image.pullPolicy, else IfNotPresent for a digest (it cannot change) and Always for a
tag (a re-pushed tag stays stale on the nodes that pulled it before, so executors on different nodes
would run different code). */}}
{{- define "fruitlens.pullPolicy" -}}
{{- .Values.image.pullPolicy | default (ternary "IfNotPresent" "Always" (not (empty .Values.image.digest))) }}
{{- end }}

{{/* The ServiceAccount the driver runs as (and asks the API server with). */}}
{{- define "fruitlens.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "fruitlens.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The headless Service executors reach the driver through (client mode). */}}
{{- define "fruitlens.driverServiceName" -}}
{{- printf "%s-driver" (include "fruitlens.fullname" . | trunc 56 | trimSuffix "-") }}
{{- end }}

{{/* The ConfigMap holding the executor pod template. */}}
{{- define "fruitlens.executorTemplateName" -}}
{{- printf "%s-executor-template" (include "fruitlens.fullname" . | trunc 45 | trimSuffix "-") }}
{{- end }}

{{/* Executor pod names are <prefix>-exec-<n>; Spark rejects a prefix longer than 47 characters. */}}
{{- define "fruitlens.executorPrefix" -}}
{{- include "fruitlens.fullname" . | trunc 47 | trimSuffix "-" }}
{{- end }}

{{/* Where the executor pod template is mounted in the driver. */}}
{{- define "fruitlens.podTemplateDir" -}}/etc/fruitlens/pod-template{{- end }}

{{/* The job's own arguments: `fruitlens run|extract INPUT OUTPUT [pipeline options]`, as a YAML list.
Each value under `pipeline` (but extraArgs) is the option of the same name in kebab case (commitSize ->
--commit-size; fruitlens.config.OPTIONS, checked by tests/deploy/test_helm_chart.py): a true boolean is the
bare flag, a number or non-empty string the flag and its value, null/false/"" leaves fruitlens' default.
`extract` takes no option of the PCA or the stages after it ($runOnly). */}}
{{- define "fruitlens.jobArgs" -}}
{{- $p := .Values.pipeline }}
{{- if and (not (kindIs "invalid" $p.pcaK)) (not (kindIs "invalid" $p.pcaVariance)) }}
{{- fail "pipeline.pcaK and pipeline.pcaVariance are exclusive: set one of them (the other to null)" }}
{{- end }}
{{- $runOnly := list "pcaK" "pcaVariance" "pcaStandardize" "pcaExact" "pcaDriftTolerance" "train" "report" }}
{{- $args := list .Values.job.command (required "job.input is required" .Values.job.input) (required "job.output is required" .Values.job.output) }}
{{- range $key, $v := omit $p "extraArgs" }}
{{- if not (and (eq $.Values.job.command "extract") (has $key $runOnly)) }}
{{- $flag := printf "--%s" (kebabcase $key) }}
{{- if kindIs "bool" $v }}
{{- if $v }}{{ $args = append $args $flag }}{{ end }}
{{- else if and (kindIs "float64" $v) (eq $v (floor $v)) }}
{{- $args = concat $args (list $flag ($v | int64 | toString)) }}
{{- else if and (not (kindIs "invalid" $v)) (ne (toString $v) "") }}
{{- $args = concat $args (list $flag (toString $v)) }}
{{- end }}
{{- end }}
{{- end }}
{{- $args = append $args "--no-progress" }}
{{- $args = concat $args $p.extraArgs }}
{{- toYaml $args }}
{{- end }}

{{/* A Spark memory size (`2g`, `2500m`, `1024k`, `1t`; no unit: MiB, as Spark reads spark.*.memory) in MiB. */}}
{{- define "fruitlens.mib" -}}
{{- $s := . | toString | lower }}
{{- $digits := regexFind "^[0-9]+" $s }}
{{- $n := $digits | int }}
{{- $unit := trimPrefix $digits $s }}
{{- if eq $unit "k" }}{{ div $n 1024 }}
{{- else if eq $unit "g" }}{{ mul $n 1024 }}
{{- else if eq $unit "t" }}{{ mul $n 1048576 }}
{{- else }}{{ $n }}
{{- end }}
{{- end }}

{{/* A CPU quantity (`500m`, `1`, `1.5`) in millicores. */}}
{{- define "fruitlens.millicores" -}}
{{- $s := . | toString }}
{{- if hasSuffix "m" $s }}{{ trimSuffix "m" $s | int }}{{ else }}{{ mulf ($s | float64) 1000 | int }}{{ end }}
{{- end }}

{{/* The executor's CPU request: executor.requestCores, else requestCoresPerCore × cores (finding: a fixed
500m squeezed four task slots into half a core). */}}
{{- define "fruitlens.executorRequestCores" -}}
{{- with .Values.executor.requestCores }}{{ . | toString }}
{{- else }}{{ printf "%dm" (mul (include "fruitlens.millicores" .Values.executor.requestCoresPerCore | int) .Values.executor.cores) }}
{{- end }}
{{- end }}

{{/* The executor's memory overhead: executor.memoryOverhead, else 400m for the JVM's off-heap plus one
Python worker (pythonWorkerMemory) per task slot, which each hold a model and a decoded batch. */}}
{{- define "fruitlens.executorMemoryOverhead" -}}
{{- with .Values.executor.memoryOverhead }}{{ . | toString }}
{{- else }}{{ printf "%dm" (add 400 (mul (include "fruitlens.mib" .Values.executor.pythonWorkerMemory | int) .Values.executor.cores)) }}
{{- end }}
{{- end }}

{{/* The driver container's resources: memory request and limit = heap + overhead unless set explicitly
(a larger --driver-memory then raises the limit with it instead of being OOMKilled under the old one). */}}
{{- define "fruitlens.driverResources" -}}
{{- $res := deepCopy (.Values.resources | default dict) }}
{{- $mem := printf "%dMi" (add (include "fruitlens.mib" .Values.driver.memory | int) (include "fruitlens.mib" .Values.driver.memoryOverhead | int)) }}
{{- $requests := $res.requests | default dict }}
{{- $limits := $res.limits | default dict }}
{{- if not (hasKey $requests "memory") }}{{ $_ := set $requests "memory" $mem }}{{ end }}
{{- if not (hasKey $limits "memory") }}{{ $_ := set $limits "memory" $mem }}{{ end }}
{{- with .Values.scratch.ephemeralStorageRequest }}
{{- if not (hasKey $requests "ephemeral-storage") }}{{ $_ := set $requests "ephemeral-storage" . }}{{ end }}
{{- end }}
{{- $_ := set $res "requests" $requests }}
{{- $_ = set $res "limits" $limits }}
{{- toYaml $res }}
{{- end }}

{{/* Spark settings shared by both ways of running (Job in client mode, SparkApplication), as a YAML map.
Not here: the image and the service accounts (the operator's webhook denies them in sparkConf: they are
fields of the SparkApplication) and anything about authentication (the operator manages it). */}}
{{- define "fruitlens.sparkConf" -}}
{{- $conf := dict }}
{{- $_ := set $conf "spark.app.name" (include "fruitlens.fullname" .) }}
{{- $_ = set $conf "spark.kubernetes.namespace" .Release.Namespace }}
{{- $_ = set $conf "spark.kubernetes.container.image.pullPolicy" (include "fruitlens.pullPolicy" .) }}
{{- $_ = set $conf "spark.kubernetes.executor.podNamePrefix" (include "fruitlens.executorPrefix" .) }}
{{- $_ = set $conf "spark.executor.instances" (.Values.executor.instances | toString) }}
{{- $_ = set $conf "spark.executor.cores" (.Values.executor.cores | toString) }}
{{- $_ = set $conf "spark.executor.memory" .Values.executor.memory }}
{{- $_ = set $conf "spark.executor.memoryOverhead" (include "fruitlens.executorMemoryOverhead" .) }}
{{- /* Read by the job right after the session starts, before executors register: set it, don't count. */}}
{{- $_ = set $conf "spark.default.parallelism" (mul .Values.executor.instances .Values.executor.cores | toString) }}
{{- $_ = set $conf "spark.kubernetes.executor.request.cores" (include "fruitlens.executorRequestCores" .) }}
{{- with .Values.executor.limitCores }}
{{- $_ = set $conf "spark.kubernetes.executor.limit.cores" (. | toString) }}
{{- end }}
{{- $_ = set $conf "spark.kubernetes.executor.deleteOnTermination" (.Values.executor.deleteOnTermination | toString) }}
{{- $_ = set $conf "spark.local.dir" .Values.scratch.localDir }}
{{- with .Values.s3.endpoint }}
{{- $_ = set $conf "spark.hadoop.fs.s3a.endpoint" . }}
{{- $_ = set $conf "spark.hadoop.fs.s3a.connection.ssl.enabled" (hasPrefix "https://" . | toString) }}
{{- end }}
{{- $_ = set $conf "spark.hadoop.fs.s3a.path.style.access" (.Values.s3.pathStyleAccess | toString) }}
{{- if not .Values.s3.credentials.existingSecret }}
{{- /* hadoop-aws 3.4's default provider chain has no web identity (IRSA) nor Pod Identity provider; the
AWS SDK v2's default chain has both, plus env, profile and the instance role. */}}
{{- $_ = set $conf "spark.hadoop.fs.s3a.aws.credentials.provider" "software.amazon.awssdk.auth.credentials.DefaultCredentialsProvider" }}
{{- end }}
{{- with .Values.s3.region }}
{{- $_ = set $conf "spark.hadoop.fs.s3a.endpoint.region" . }}
{{- end }}
{{- /* RPC between driver and executors needs a shared secret: Spark on Kubernetes generates one per
application and hands it to the executors it creates (env _SPARK_AUTH_SECRET in Spark 4). */}}
{{- $_ = set $conf "spark.authenticate" (.Values.spark.authenticate | toString) }}
{{- /* The UI's kill links would let anyone reaching port 4040 stop stages; `fruitlens k8s ui` only reads. */}}
{{- $_ = set $conf "spark.ui.killEnabled" "false" }}
{{- if .Values.decommission.enabled }}
{{- /* A spot notice or a drain: the executor pod's preStop hook (Spark adds spark.kubernetes.decommission.script,
/opt/decom.sh) signals the executor, which stops taking tasks and migrates its shuffle and cached blocks
before it exits, instead of being lost with them. */}}
{{- $_ = set $conf "spark.decommission.enabled" "true" }}
{{- $_ = set $conf "spark.storage.decommission.enabled" "true" }}
{{- $_ = set $conf "spark.storage.decommission.shuffleBlocks.enabled" "true" }}
{{- $_ = set $conf "spark.storage.decommission.rddBlocks.enabled" "true" }}
{{- $_ = set $conf "spark.executor.decommission.forceKillTimeout" (printf "%ds" (max 10 (sub (int .Values.decommission.gracePeriodSeconds) 15))) }}
{{- end }}
{{- range $k, $v := .Values.spark.conf }}
{{- $_ = set $conf $k ($v | toString) }}
{{- end }}
{{- toYaml $conf }}
{{- end }}

{{/* Environment for driver and executors: S3 credentials from an existing Secret, then extraEnv. */}}
{{- define "fruitlens.env" -}}
{{- with .Values.s3.credentials.existingSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.s3.credentials.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.s3.credentials.secretAccessKeyKey }}
{{- end }}
{{- with .Values.s3.endpoint }}
- name: AWS_ENDPOINT_URL_S3
  value: {{ . | quote }}
{{- end }}
{{- with .Values.s3.region }}
- name: AWS_REGION
  value: {{ . | quote }}
{{- end }}
- name: TMPDIR
  value: /tmp
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Volumes of the read-only root filesystem's writable places and the user's extra volumes. The local
dir is named spark-local-dir-1: Spark (LocalDirsFeatureStep) then uses it instead of adding its own
emptyDir at the same path, and the Spark operator turns it into Spark's volume settings (with its size
limit) instead of appending a second mount at that path. */}}
{{- define "fruitlens.scratchVolumes" -}}
- name: tmp
  emptyDir:
    {{- with .Values.scratch.tmpSizeLimit }}
    sizeLimit: {{ . }}
    {{- else }} {}
    {{- end }}
- name: spark-local-dir-1
  emptyDir:
    {{- with .Values.scratch.localDirSizeLimit }}
    sizeLimit: {{ . }}
    {{- else }} {}
    {{- end }}
- name: work-dir
  emptyDir:
    {{- with .Values.scratch.workDirSizeLimit }}
    sizeLimit: {{ . }}
    {{- else }} {}
    {{- end }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* /opt/spark/work-dir: the apache/spark images' WORKDIR, where executors run and SparkContext.addFile
lands its files (SparkFiles.getRootDirectory() is "." on executors). */}}
{{- define "fruitlens.scratchMounts" -}}
- name: tmp
  mountPath: /tmp
- name: spark-local-dir-1
  mountPath: {{ .Values.scratch.localDir }}
- name: work-dir
  mountPath: /opt/spark/work-dir
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Scheduling of one role's pods (dict "root" $ "role" "driver"|"executor") as a YAML map of pod spec fields:
the shared nodeSelector/tolerations/affinity, with the role's own merged over them (its nodeSelector keys
win, its tolerations are added, its affinity replaces the shared one), and the role's priorityClassName and
topologySpreadConstraints. A spread constraint without a labelSelector gets this release's pods of this role
(so executors spread among themselves, not with other jobs). */}}
{{- define "fruitlens.scheduling" -}}
{{- $v := .root.Values }}
{{- $r := index $v .role }}
{{- $out := dict }}
{{- $sel := merge (dict) ($r.nodeSelector | default dict) ($v.nodeSelector | default dict) }}
{{- if $sel }}{{ $_ := set $out "nodeSelector" $sel }}{{ end }}
{{- $tol := concat ($v.tolerations | default list) ($r.tolerations | default list) }}
{{- if $tol }}{{ $_ := set $out "tolerations" $tol }}{{ end }}
{{- $aff := $r.affinity | default $v.affinity }}
{{- if $aff }}{{ $_ := set $out "affinity" $aff }}{{ end }}
{{- with $r.priorityClassName }}{{ $_ := set $out "priorityClassName" . }}{{ end }}
{{- $spread := list }}
{{- range $r.topologySpreadConstraints }}
{{- $c := deepCopy . }}
{{- if not (hasKey $c "labelSelector") }}
{{- $labels := include "fruitlens.selectorLabels" $.root | fromYaml }}
{{- $_ := set $labels "app.kubernetes.io/component" $.role }}
{{- $_ := set $c "labelSelector" (dict "matchLabels" $labels) }}
{{- end }}
{{- $spread = append $spread $c }}
{{- end }}
{{- if $spread }}{{ $_ := set $out "topologySpreadConstraints" $spread }}{{ end }}
{{- toYaml $out }}
{{- end }}

{{/* Annotations of one role's pods (dict "root" $ "role" ...): podAnnotations, the role's own, and on the
driver karpenter.sh/do-not-disrupt unless driver.doNotDisrupt is false: Karpenter then does not consolidate
or drift its node away while it runs (losing the driver loses the job; executors are replaced by Spark). */}}
{{- define "fruitlens.podAnnotations" -}}
{{- $v := .root.Values }}
{{- $r := index $v .role }}
{{- $out := merge (dict) ($r.podAnnotations | default dict) ($v.podAnnotations | default dict) }}
{{- if and (eq .role "driver") $v.driver.doNotDisrupt }}{{ $_ := set $out "karpenter.sh/do-not-disrupt" "true" }}{{ end }}
{{- if $out }}{{ toYaml $out }}{{ end }}
{{- end }}

{{/* The Job's podFailurePolicy rules, as a YAML list (empty: none). Disruptions first: a drained or
preempted driver is never the job's fault, whatever exit code its SIGTERM left. Kubernetes wants the
exit codes sorted and without 0 under `In`. */}}
{{- define "fruitlens.podFailurePolicy" -}}
{{- $p := .Values.job.podFailurePolicy }}
{{- $rules := list }}
{{- if $p.enabled }}
{{- if $p.ignoreDisruptions }}
{{- $rules = append $rules (dict "action" "Ignore" "onPodConditions" (list (dict "type" "DisruptionTarget" "status" "True"))) }}
{{- end }}
{{- with $p.failJobOnExitCodes }}
{{- $codes := list }}
{{- $last := 0 }}
{{- range . }}
{{- if le (int .) $last }}{{ fail (printf "job.podFailurePolicy.failJobOnExitCodes must be sorted ascending and unique, between 1 and 255 (Kubernetes' rule), got %v" $p.failJobOnExitCodes) }}{{ end }}
{{- $last = int . }}
{{- $codes = append $codes (int .) }}
{{- end }}
{{- $rules = append $rules (dict "action" "FailJob" "onExitCodes" (dict "containerName" "driver" "operator" "In" "values" $codes)) }}
{{- end }}
{{- $rules = concat $rules ($p.extraRules | default list) }}
{{- end }}
{{- toYaml $rules }}
{{- end }}

{{/* The driver's environment for the run's observability: where the event log goes, and the metrics port
(fruitlens reads FRUITLENS_EVENT_LOG / FRUITLENS_METRICS_PORT like its flags). */}}
{{- define "fruitlens.observabilityEnv" -}}
{{- if not .Values.eventLog.enabled }}
- name: FRUITLENS_EVENT_LOG
  value: "off"
{{- else if .Values.eventLog.dir }}
- name: FRUITLENS_EVENT_LOG
  value: {{ .Values.eventLog.dir | quote }}
{{- end }}
{{- if .Values.metrics.enabled }}
- name: FRUITLENS_METRICS_PORT
  value: {{ .Values.metrics.port | quote }}
{{- end }}
{{- end }}

{{/* Annotations for annotation-based Prometheus scraping of the driver, as a YAML map (empty when off). */}}
{{- define "fruitlens.scrapeAnnotations" -}}
{{- if and .Values.metrics.enabled .Values.metrics.annotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .Values.metrics.port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end }}
