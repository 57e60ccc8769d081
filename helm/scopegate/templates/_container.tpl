{{/* The scopegate container: a regular container, or a native sidecar (an init container that keeps running). */}}
{{- define "scopegate.container" -}}
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
    - name: http
      containerPort: {{ .Values.scopegate.port }}
      protocol: TCP
    - name: admin
      containerPort: {{ .Values.scopegate.adminPort }}
      protocol: TCP
  {{- with .Values.scopegate.env }}
  env:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  livenessProbe:
    httpGet:
      path: /healthz
      port: admin
    {{- toYaml .Values.scopegate.livenessProbe | nindent 4 }}
  readinessProbe:
    httpGet:
      path: /readyz
      port: admin
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
