{{/*
The scopegate container: a regular container, or a native sidecar (an init container that keeps running).
Public: another chart that lists this one as a dependency (mode: library) includes it in its own Deployment with
  {{- include "scopegate.container" .Subcharts.scopegate | nindent 8 }}
*/}}
{{- define "scopegate.container" -}}
{{- include "scopegate.requireOwnContext" (list . "scopegate.container") -}}
{{- $serving := include "scopegate.servingPortName" . -}}
{{- $admin := include "scopegate.adminPortName" . -}}
- name: scopegate
  image: {{ include "scopegate.imageRef" (list .Values.image .Chart.AppVersion) | quote }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  {{- if and (eq .Values.mode "sidecar") .Values.nativeSidecar }}
  # A native sidecar: started before the app, stopped after it.
  restartPolicy: Always
  {{- end }}
  # The image's ENTRYPOINT is `scopegate`. The ConfigMap is mounted as a directory (never subPath), so the kubelet's
  # `..data` symlink swap reaches this path and scopegate reloads the new rules live.
  args: ["run", "--config", "/etc/scopegate/config.yaml"{{ if gt (int .Values.scopegate.workers) 1 }}, "--workers", "{{ int .Values.scopegate.workers }}"{{ end }}]
  ports:
    - name: {{ $serving }}
      containerPort: {{ include "scopegate.servingPort" . }}
      protocol: TCP
    - name: {{ $admin }}
      containerPort: {{ .Values.scopegate.adminPort }}
      protocol: TCP
  {{- with .Values.scopegate.env }}
  env:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  livenessProbe:
    httpGet:
      path: /healthz
      port: {{ $admin }}
    {{- toYaml .Values.scopegate.livenessProbe | nindent 4 }}
  readinessProbe:
    httpGet:
      path: /readyz
      port: {{ $admin }}
    {{- toYaml .Values.scopegate.readinessProbe | nindent 4 }}
  {{- if gt (int .Values.scopegate.preStopSleepSeconds) 0 }}
  lifecycle:
    preStop:
      exec:
        command: ["sleep", "{{ int .Values.scopegate.preStopSleepSeconds }}"]
  {{- end }}
  resources:
    {{- toYaml .Values.scopegate.resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.scopegate.securityContext | nindent 4 }}
  volumeMounts:
    - name: scopegate-config
      mountPath: /etc/scopegate
      readOnly: true
    # Writable scratch on a read-only root: with --workers, prometheus-client's multiprocess files live here.
    - name: scopegate-tmp
      mountPath: /tmp
{{- end }}

{{/*
The pod volumes scopegate's container mounts: its config (the ConfigMap, as a directory) and a small scratch dir.
Public, like scopegate.container: {{- include "scopegate.volumes" .Subcharts.scopegate | nindent 8 }}
*/}}
{{- define "scopegate.volumes" -}}
{{- include "scopegate.requireOwnContext" (list . "scopegate.volumes") -}}
- name: scopegate-config
  configMap:
    name: {{ include "scopegate.configMapName" . }}
    {{- if .Values.existingConfigMap.name }}
    # `items` projects the key under the file name scopegate reads; it still updates live (subPath would not).
    items:
      - key: {{ .Values.existingConfigMap.key }}
        path: config.yaml
    {{- end }}
- name: scopegate-tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end }}

{{/*
The ConfigMap holding scopegate's config file; nothing with existingConfigMap.name.
Public: a template of another chart that is just {{ include "scopegate.configmap" .Subcharts.scopegate }}
*/}}
{{- define "scopegate.configmap" -}}
{{- include "scopegate.requireOwnContext" (list . "scopegate.configmap") -}}
{{- if not .Values.existingConfigMap.name -}}
# scopegate's rules. Edit them with `helm upgrade`: the kubelet swaps the mounted file within about a minute and
# scopegate reloads it live (an invalid file is refused and the old rules stay). See rollOnConfigChange.
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ include "scopegate.configMapName" . }}
  namespace: {{ .Release.Namespace }}
  labels:
    {{- include "scopegate.labels" . | nindent 4 }}
data:
  config.yaml: |
    {{- include "scopegate.configFile" . | nindent 4 }}
{{- end }}
{{- end }}

{{/*
The pod template annotations that roll the pods when scopegate must restart to apply a config change (auth and
listeners; every change with rollOnConfigChange). Public:
  {{- include "scopegate.podAnnotations" .Subcharts.scopegate | nindent 8 }}
*/}}
{{- define "scopegate.podAnnotations" -}}
{{- include "scopegate.requireOwnContext" (list . "scopegate.podAnnotations") -}}
{{- if not .Values.existingConfigMap.name -}}
{{- if .Values.rollOnConfigChange -}}
# rollOnConfigChange: every rules change rolls the pods (the default is scopegate's live reload instead).
checksum/config: {{ include "scopegate.configFile" . | sha256sum }}
{{- else -}}
# Only what scopegate cannot reload live (auth, listeners): a rules change reloads in place, no rollout.
checksum/config-restart: {{ include "scopegate.restartConfig" . | sha256sum }}
{{- end -}}
{{- end -}}
{{- end }}

{{/*
The public templates read scopegate's own values, so they take scopegate's context: `.Subcharts.scopegate` in the
chart that lists scopegate as a dependency (`.Subcharts.<alias>` under an alias), never that chart's own `$`.
*/}}
{{- define "scopegate.requireOwnContext" -}}
{{- $context := index . 0 -}}
{{- $values := $context.Values | default dict -}}
{{- if not (and (kindIs "map" $values.scopegate) (hasKey $values.scopegate "adminPort") (hasKey $values "config")) -}}
{{- fail (printf "%s takes scopegate's own context: include \"%s\" .Subcharts.scopegate (the name or alias of the dependency), not your chart's $" (index . 1) (index . 1)) -}}
{{- end -}}
{{- end -}}
