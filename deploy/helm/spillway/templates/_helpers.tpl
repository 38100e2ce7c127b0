{{/* The release's name for its objects, at most 63 characters. */}}
{{- define "spillway.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "spillway.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/name: spillway
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: spillway
{{- end -}}

{{/* Selector labels of one component (ingest, consumer). */}}
{{- define "spillway.selector" -}}
app.kubernetes.io/name: spillway
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "spillway.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "spillway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{ .Values.serviceAccount.name | default (include "spillway.fullname" .) }}
{{- else -}}
{{ .Values.serviceAccount.name | default "default" }}
{{- end -}}
{{- end -}}

{{- define "spillway.embedded" -}}
{{- if eq .Values.backend "embedded" }}true{{ end -}}
{{- end -}}

{{/* The Secret holding the broker's credentials, or nothing. */}}
{{- define "spillway.queueSecret" -}}
{{- if .Values.secrets.queue.existingSecret -}}
{{ .Values.secrets.queue.existingSecret }}
{{- else if .Values.secrets.queue.values -}}
{{ include "spillway.fullname" . }}-queue
{{- end -}}
{{- end -}}

{{/* The Secret holding the sink's URL, or nothing. */}}
{{- define "spillway.sinkSecret" -}}
{{- if .Values.secrets.sink.existingSecret -}}
{{ .Values.secrets.sink.existingSecret }}
{{- else if .Values.secrets.sink.values -}}
{{ include "spillway.fullname" . }}-sink
{{- end -}}
{{- end -}}

{{/* The port of a listen address ("0.0.0.0:8080" -> 8080). */}}
{{- define "spillway.port" -}}
{{ splitList ":" . | last }}
{{- end -}}

{{/* A listen address of the config, by its TOML key (server.listen). */}}
{{- define "spillway.listen" -}}
{{- $line := regexFind (printf "(?m)^\\s*%s\\s*=\\s*\"[^\"]*\"" .key) .root.Values.config -}}
{{- if not $line -}}{{- fail (printf "config sets no %s: the chart reads the container's ports from it" .key) -}}{{- end -}}
{{ regexFind "[0-9]+\"$" $line | trimSuffix "\"" }}
{{- end -}}

{{- define "spillway.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "spillway.securityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* What every pod's template carries: annotations that roll the pods
     when the config or a chart-made Secret changes. */}}
{{- define "spillway.podAnnotations" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
checksum/secrets: {{ include (print .Template.BasePath "/secrets.yaml") . | sha256sum }}
{{- with .Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "spillway.topologySpread" -}}
{{- if .root.Values.topologySpread.enabled }}
topologySpreadConstraints:
  {{- range list "topology.kubernetes.io/zone" "kubernetes.io/hostname" }}
  - maxSkew: 1
    topologyKey: {{ . }}
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "spillway.selector" $ | nindent 8 }}
  {{- end }}
{{- end }}
{{- end -}}

{{- define "spillway.scheduling" -}}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The gateway's container: `spillway serve`. */}}
{{- define "spillway.serveContainer" -}}
- name: spillway
  image: {{ include "spillway.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args: ["serve"]
  ports:
    - name: http
      containerPort: {{ include "spillway.listen" (dict "root" . "key" "listen") }}
    # /metrics, /livez, /readyz: outside the traffic port's connection cap.
    - name: admin
      containerPort: {{ include "spillway.listen" (dict "root" . "key" "admin_listen") }}
  env:
    - name: SPILLWAY_CONFIG
      value: /etc/spillway/spillway.toml
    {{- if include "spillway.spool" . }}
    # The spool: only the gateway has it (docs/operations.md).
    - name: SPILLWAY_QUEUE__SPOOL__PATH
      value: /var/lib/spillway-spool
    - name: SPILLWAY_QUEUE__SPOOL__ON
      value: {{ .Values.spool.when | quote }}
    - name: SPILLWAY_QUEUE__SPOOL__MAX_BYTES
      value: {{ .Values.spool.maxBytes | int64 | quote }}
    - name: SPILLWAY_QUEUE__SPOOL__DRAIN_TIMEOUT
      value: {{ .Values.spool.drainTimeout | quote }}
    {{- end }}
  envFrom:
    - configMapRef:
        name: {{ include "spillway.fullname" . }}-backend
    {{- with include "spillway.queueSecret" . }}
    - secretRef:
        name: {{ . }}
    {{- end }}
    {{- if include "spillway.embedded" . }}
    {{- with include "spillway.sinkSecret" . }}
    - secretRef:
        name: {{ . }}
    {{- end }}
    {{- end }}
  livenessProbe:
    httpGet:
      path: /livez
      port: admin
    periodSeconds: 10
    failureThreshold: 3
  readinessProbe:
    httpGet:
      path: /readyz
      port: admin
    periodSeconds: 5
    failureThreshold: 2
  startupProbe:
    httpGet:
      path: /livez
      port: admin
    periodSeconds: 2
    failureThreshold: 150
  lifecycle:
    preStop:
      sleep:
        seconds: {{ .Values.ingest.preStopSeconds }}
  resources:
    {{- toYaml .Values.ingest.resources | nindent 4 }}
  securityContext:
    {{- include "spillway.securityContext" . | nindent 4 }}
  volumeMounts:
    {{- if include "spillway.embedded" . }}
    - name: queue
      mountPath: /var/lib/spillway
    {{- end }}
    {{- if include "spillway.spool" . }}
    - name: spool
      mountPath: /var/lib/spillway-spool
    {{- end }}
    - name: config
      mountPath: /etc/spillway
      readOnly: true
    - name: tmp
      mountPath: /tmp
{{- end -}}

{{/* Whether the gateway has a spool: set, and a broker behind it. */}}
{{- define "spillway.spool" -}}
{{- if and .Values.spool.enabled (not (include "spillway.embedded" .)) }}true{{ end -}}
{{- end -}}

{{/* Whether the spool is on a PersistentVolumeClaim per pod (the gateway a StatefulSet). */}}
{{- define "spillway.spoolPersistent" -}}
{{- if and (include "spillway.spool" .) .Values.spool.persistent }}true{{ end -}}
{{- end -}}

{{/* Whether the gateway is a StatefulSet: the embedded queue, or a persistent spool. */}}
{{- define "spillway.ingestStateful" -}}
{{- if or (include "spillway.embedded" .) (include "spillway.spoolPersistent" .) }}true{{ end -}}
{{- end -}}

{{/* The gateway's spool volume: a generic ephemeral volume, the pod's own. */}}
{{- define "spillway.spoolVolume" -}}
- name: spool
  ephemeral:
    volumeClaimTemplate:
      spec:
        accessModes: ["ReadWriteOnce"]
        {{- with .Values.spool.storageClassName }}
        storageClassName: {{ . }}
        {{- end }}
        resources:
          requests:
            storage: {{ .Values.spool.size }}
{{- end -}}

{{- define "spillway.volumes" -}}
- name: config
  configMap:
    name: {{ include "spillway.fullname" . }}-config
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end -}}
