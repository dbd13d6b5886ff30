{{/*
Names and labels.
*/}}
{{- define "stt.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "stt.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "stt.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "stt.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: stt-pipeline
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component: (dict "root" $ "name" "chunker") */}}
{{- define "stt.selectorLabels" -}}
app.kubernetes.io/name: {{ include "stt.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .name }}
{{- end }}

{{/*
A setting as an environment string. Helm reads every number in values as a float64, whose default
formatting turns 1073741824 into "1.073741824e+09": whole numbers are printed as integers.
*/}}
{{- define "stt.str" -}}
{{- if and (kindIs "float64" .) (eq . (floor .)) }}
{{- int64 . }}
{{- else }}
{{- toString . }}
{{- end }}
{{- end }}

{{- define "stt.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "stt.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
One component's settings are `default` with `components.<name>` merged over it. Templates merge
inline, `mustMergeOverwrite (deepCopy $.Values.default) (deepCopy $spec)`, rather than through an
include: a round trip through YAML/JSON would turn integers into floats.
*/}}

{{/* An image reference: (dict "root" $ "image" <image block> "fallback" "stt-maintenance") */}}
{{- define "stt.image" -}}
{{- $repo := default .fallback .image.repository }}
{{- with .root.Values.image.registry }}
{{- $repo = printf "%s/%s" (trimSuffix "/" .) $repo }}
{{- end }}
{{- if .image.digest }}
{{- printf "%s@%s" $repo .image.digest }}
{{- else }}
{{- printf "%s:%s" $repo (.image.tag | default .root.Values.image.tag | default .root.Chart.AppVersion | toString) }}
{{- end }}
{{- end }}

{{/*
Connection settings every process needs, with the dev instances filled in when `dev.enabled`.
*/}}
{{- define "stt.kafkaBootstrap" -}}
{{- if .Values.dev.enabled }}
{{- printf "%s-kafka:9092" (include "stt.fullname" .) }}
{{- else if .Values.kafka.bootstrapServers }}
{{- .Values.kafka.bootstrapServers }}
{{- else }}
{{- fail "kafka.bootstrapServers is required (or dev.enabled=true for the in-chart dev broker)" }}
{{- end }}
{{- end }}

{{- define "stt.s3Endpoint" -}}
{{- if .Values.dev.enabled }}
{{- printf "http://%s-minio:9000" (include "stt.fullname" .) }}
{{- else if .Values.s3.endpointUrl }}
{{- .Values.s3.endpointUrl }}
{{- end }}
{{- end }}

{{- define "stt.devSecretName" -}}
{{- printf "%s-dev-credentials" (include "stt.fullname" .) }}
{{- end }}

{{/*
The Secret name behind one `secrets.<entry>`: the generated dev Secret for the dev instances'
credentials when `dev.enabled`, else its existingSecret (possibly "").
*/}}
{{- define "stt.secretName" -}}
{{- if and .root.Values.dev.enabled (has .name (list "database" "redis" "s3")) }}
{{- include "stt.devSecretName" .root }}
{{- else }}
{{- (index .root.Values.secrets .name).existingSecret }}
{{- end }}
{{- end }}

{{/* The non-secret settings shared by every process (the common ConfigMap, and hook jobs inline). */}}
{{- define "stt.commonConfig" -}}
STT_KAFKA_BOOTSTRAP_SERVERS: {{ include "stt.kafkaBootstrap" . | quote }}
STT_KAFKA_SECURITY_PROTOCOL: {{ .Values.kafka.securityProtocol | quote }}
{{- with .Values.kafka.saslMechanism }}
STT_KAFKA_SASL_MECHANISM: {{ . | quote }}
{{- end }}
STT_KAFKA_ENABLE_IDEMPOTENCE: {{ .Values.kafka.enableIdempotence | toString | quote }}
STT_CHUNKS_TOPIC_PARTITIONS: {{ include "stt.str" .Values.kafka.chunksTopicPartitions | quote }}
STT_TOPIC_PARTITIONS: {{ include "stt.str" .Values.kafka.topicPartitions | quote }}
STT_TOPIC_REPLICATION_FACTOR: {{ include "stt.str" (ternary 1 .Values.kafka.replicationFactor .Values.dev.enabled) | quote }}
{{- with include "stt.s3Endpoint" . }}
STT_S3_ENDPOINT_URL: {{ . | quote }}
{{- end }}
STT_S3_REGION: {{ .Values.s3.region | quote }}
STT_S3_BUCKET: {{ .Values.s3.bucket | quote }}
STT_OPS_HOST: "0.0.0.0"
STT_WORK_DIR: "/var/lib/stt/work"
TMPDIR: "/tmp"
{{- range $key, $value := .Values.config }}
{{ $key }}: {{ include "stt.str" $value | quote }}
{{- end }}
{{- end }}

{{/*
Secret environment of a process: (dict "root" $ "use" <the component's `secrets` flags>).
Only references: values never pass through the chart.
*/}}
{{- define "stt.secretEnv" -}}
{{- $root := .root }}
{{- $use := .use }}
{{- if $use.database }}
{{- $name := include "stt.secretName" (dict "root" $root "name" "database") }}
{{- if not $name }}
{{- fail "secrets.database.existingSecret is required (a Secret with the database URL), or dev.enabled=true" }}
{{- end }}
- name: STT_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ $name }}
      key: {{ $root.Values.secrets.database.key }}
{{- end }}
{{- if $use.redis }}
{{- $name := include "stt.secretName" (dict "root" $root "name" "redis") }}
{{- if not $name }}
{{- fail "secrets.redis.existingSecret is required (a Secret with the Redis URL), or dev.enabled=true" }}
{{- end }}
- name: STT_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ $name }}
      key: {{ $root.Values.secrets.redis.key }}
{{- end }}
{{- if $use.s3 }}
{{- with include "stt.secretName" (dict "root" $root "name" "s3") }}
- name: STT_S3_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $root.Values.secrets.s3.accessKeyIdKey }}
- name: STT_S3_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $root.Values.secrets.s3.secretAccessKeyKey }}
{{- end }}
{{- end }}
{{- if and $use.kafkaSasl $root.Values.kafka.saslMechanism }}
{{- if not $root.Values.secrets.kafkaSasl.existingSecret }}
{{- fail "kafka.saslMechanism is set: secrets.kafkaSasl.existingSecret is required" }}
{{- end }}
- name: STT_KAFKA_SASL_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ $root.Values.secrets.kafkaSasl.existingSecret }}
      key: {{ $root.Values.secrets.kafkaSasl.usernameKey }}
- name: STT_KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $root.Values.secrets.kafkaSasl.existingSecret }}
      key: {{ $root.Values.secrets.kafkaSasl.passwordKey }}
{{- end }}
{{- range $entry := list "providers" "webhook" }}
{{- $secret := index $root.Values.secrets $entry }}
{{- if and (index $use $entry) $secret.existingSecret }}
{{- range $env, $key := $secret.keys }}
- name: {{ $env }}
  valueFrom:
    secretKeyRef:
      name: {{ $secret.existingSecret }}
      key: {{ $key }}
      optional: true
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* Volumes every process mounts: scratch audio and /tmp on emptyDirs under a read-only root. */}}
{{- define "stt.scratchVolumes" -}}
- name: work
  emptyDir:
    {{- with .workDir.medium }}
    medium: {{ . }}
    {{- end }}
    sizeLimit: {{ .workDir.sizeLimit }}
- name: tmp
  emptyDir:
    sizeLimit: {{ .tmpSizeLimit }}
{{- end }}

{{- define "stt.scratchMounts" -}}
- name: work
  mountPath: /var/lib/stt/work
- name: tmp
  mountPath: /tmp
{{- end }}

{{/*
Hook Job (migrations, topics): (dict "root" $ "name" "migrate" "weight" "-5" "command" (list …)).
Hooks run before the chart's ConfigMaps exist, so settings are inline; secrets are references.
*/}}
{{- define "stt.hookJob" -}}
{{- $root := .root }}
{{- $jobs := $root.Values.jobs }}
{{- $pod := $root.Values.default }}
apiVersion: batch/v1
kind: Job
metadata:
  name: {{ include "stt.fullname" $root }}-{{ .name }}
  labels:
    {{- include "stt.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .name }}
  annotations:
    {{- if $root.Values.dev.enabled }}
    helm.sh/hook: post-install,post-upgrade
    {{- else }}
    helm.sh/hook: pre-install,pre-upgrade
    {{- end }}
    helm.sh/hook-weight: {{ .weight | quote }}
    helm.sh/hook-delete-policy: before-hook-creation,hook-succeeded
spec:
  backoffLimit: {{ $jobs.backoffLimit }}
  activeDeadlineSeconds: {{ $jobs.activeDeadlineSeconds }}
  template:
    metadata:
      labels:
        {{- include "stt.selectorLabels" (dict "root" $root "name" .name) | nindent 8 }}
    spec:
      restartPolicy: Never
      enableServiceLinks: false
      automountServiceAccountToken: false
      {{- with $jobs.serviceAccountName }}
      serviceAccountName: {{ . }}
      {{- end }}
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- range . }}
        - name: {{ . }}
        {{- end }}
      {{- end }}
      securityContext:
        {{- toYaml $pod.podSecurityContext | nindent 8 }}
      containers:
        - name: {{ .name }}
          image: {{ include "stt.image" (dict "root" $root "image" $jobs.image "fallback" "stt-maintenance") }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          command:
            {{- toYaml .command | nindent 12 }}
          env:
            {{- range $key, $value := include "stt.commonConfig" $root | fromYaml }}
            - name: {{ $key }}
              value: {{ include "stt.str" $value | quote }}
            {{- end }}
            - name: STT_SERVICE_NAME
              value: {{ .name | quote }}
            {{- include "stt.secretEnv" (dict "root" $root "use" (dict "database" true "s3" true "kafkaSasl" true)) | nindent 12 }}
          securityContext:
            {{- toYaml $pod.securityContext | nindent 12 }}
          resources:
            {{- toYaml $jobs.resources | nindent 12 }}
          volumeMounts:
            {{- include "stt.scratchMounts" . | nindent 12 }}
      volumes:
        {{- include "stt.scratchVolumes" (dict "workDir" (dict "sizeLimit" "256Mi") "tmpSizeLimit" "256Mi") | nindent 8 }}
{{- end }}
