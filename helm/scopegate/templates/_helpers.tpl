{{/* Names: <release>-<chart>, shortened to the 63 characters a label value may have. */}}
{{- define "scopegate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "scopegate.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "scopegate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "scopegate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "scopegate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "scopegate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: {{ .Values.mode }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "scopegate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "scopegate.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* repository@digest, else repository:tag; `default` is the tag to use when none is given. */}}
{{- define "scopegate.imageRef" -}}
{{- $image := index . 0 -}}
{{- $default := index . 1 -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository (default $default $image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "scopegate.configMapName" -}}
{{- if .Values.existingConfigMap.name -}}
{{- .Values.existingConfigMap.name -}}
{{- else -}}
{{- printf "%s-config" (include "scopegate.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* Where scopegate forwards allowed requests: the app over the pod's loopback, or the gateway's Service. */}}
{{- define "scopegate.upstream" -}}
{{- if has .Values.mode (list "sidecar" "library") -}}
{{- printf "http://127.0.0.1:%d" (int .Values.app.port) -}}
{{- else -}}
{{- required "gateway.upstream is required in gateway mode (e.g. http://my-api.my-namespace.svc.cluster.local:80)" .Values.gateway.upstream -}}
{{- end -}}
{{- end -}}

{{/*
The port requests come in on: the proxy port, or in decision mode the decision endpoint (scopegate serves no proxy
port there). Library mode names scopegate's ports apart from the ones your app's container may already call
"http" / "admin": a Service's named targetPort must find scopegate's port, never the app's.
*/}}
{{- define "scopegate.servingPort" -}}
{{- if eq .Values.mode "decision" }}{{ int .Values.scopegate.decisionPort }}{{ else }}{{ int .Values.scopegate.port }}{{ end -}}
{{- end -}}

{{- define "scopegate.servingPortName" -}}
{{- if eq .Values.mode "decision" }}decision{{ else if eq .Values.mode "library" }}scopegate-http{{ else }}http{{ end -}}
{{- end -}}

{{- define "scopegate.adminPortName" -}}
{{- if eq .Values.mode "library" }}scopegate-admin{{ else }}admin{{ end -}}
{{- end -}}

{{/* SIGTERM arrives after the preStop sleep; then scopegate drains for shutdown_grace_seconds; plus a margin. */}}
{{- define "scopegate.terminationGracePeriodSeconds" -}}
{{- add (int .Values.scopegate.preStopSleepSeconds) (int .Values.config.shutdown_grace_seconds) (int .Values.terminationGraceMarginSeconds) -}}
{{- end -}}

{{/*
The scopegate config file, rendered from .Values.config (README, "Config file"). Optional auth keys are written
only when set, so scopegate's own defaults apply otherwise. JSON is YAML: toJson quotes any scalar safely.
*/}}
{{- define "scopegate.configFile" -}}
{{- $c := .Values.config -}}
{{- $auth := dict -}}
{{- if $c.auth.issuers -}}
{{- $_ := set $auth "issuers" $c.auth.issuers -}}
{{- if not (kindIs "invalid" $c.auth.token_cache_entries) }}{{ $_ := set $auth "token_cache_entries" $c.auth.token_cache_entries }}{{ end -}}
{{- else -}}
{{- $_ := set $auth "issuer" (required "config.auth.issuer is required (e.g. https://tenant.logto.app/oidc), or set existingConfigMap.name" $c.auth.issuer) -}}
{{- if $c.auth.jwks_uri }}{{ $_ := set $auth "jwks_uri" $c.auth.jwks_uri }}{{ end -}}
{{- if $c.auth.algorithms }}{{ $_ := set $auth "algorithms" $c.auth.algorithms }}{{ end -}}
{{- range $key := list "leeway_seconds" "jwks_refresh_seconds" "jwks_refetch_cooldown_seconds" "token_cache_entries" -}}
{{- if not (kindIs "invalid" (index $c.auth $key)) }}{{ $_ := set $auth $key (index $c.auth $key) }}{{ end -}}
{{- end -}}
{{- end -}}
{{- if not $c.routes -}}
{{- fail "config.routes must list at least one route, or set existingConfigMap.name" -}}
{{- end -}}
# Rendered by the scopegate Helm chart from .Values.config. Check it with: scopegate check --config FILE
{{- if eq .Values.mode "decision" }}
# Decision mode: no upstream, so no proxy port; an ingress asks the decision endpoint about each request.
admin_listen: {{ printf "0.0.0.0:%d" (int .Values.scopegate.adminPort) | toJson }}
decision_listen: {{ printf "0.0.0.0:%d" (int .Values.scopegate.decisionPort) | toJson }}
{{- else }}
listen: {{ printf "0.0.0.0:%d" (int .Values.scopegate.port) | toJson }}
admin_listen: {{ printf "0.0.0.0:%d" (int .Values.scopegate.adminPort) | toJson }}
upstream: {{ include "scopegate.upstream" . | toJson }}
upstream_timeout_seconds: {{ $c.upstream_timeout_seconds | toJson }}
{{- end }}
shutdown_grace_seconds: {{ $c.shutdown_grace_seconds | toJson }}
log_level: {{ $c.log_level | toJson }}
mode: {{ $c.mode | toJson }}
auth:
  {{- toYaml $auth | nindent 2 }}
routes:
  {{- toYaml $c.routes | nindent 2 }}
{{- if $c.limits }}
limits:
  {{- toYaml $c.limits | nindent 2 }}
{{- end }}
{{- range $key := list "allow_path_parameters" "trust_forwarded_headers" "decision_path_prefix" "upstream_host" "strip_prefix" "forward_payload" "token_from" "forward_claims" "cors" }}
{{- if not (kindIs "invalid" (index $c $key)) }}
{{ $key }}: {{ index $c $key | toJson }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The part of the config a reload does not apply (README, Operations: the listeners and auth). */}}
{{- define "scopegate.restartConfig" -}}
{{- $lines := list -}}
{{- range $line := splitList "\n" (include "scopegate.configFile" .) -}}
{{- if or (hasPrefix "listen:" $line) (hasPrefix "admin_listen:" $line) (hasPrefix "decision_listen:" $line) -}}
{{- $lines = append $lines $line -}}
{{- end -}}
{{- end -}}
{{- join "\n" $lines }}
{{ toYaml .Values.config.auth }}
{{- end -}}

{{/* Failing early with a message beats a pod that crash-loops. */}}
{{- define "scopegate.validate" -}}
{{- if eq .Values.mode "sidecar" -}}
{{- if and (not .Chart.IsRoot) (not .Values.app.image.repository) -}}
{{- fail (printf "app.image.repository is required in sidecar mode; to put scopegate's container into your own chart's Deployment instead, set %s.mode: library" .Chart.Name) -}}
{{- end -}}
{{- $_ := required "app.image.repository is required in sidecar mode: the image of the app scopegate protects" .Values.app.image.repository -}}
{{- if not (or .Values.app.image.tag .Values.app.image.digest) -}}
{{- fail "app.image.tag or app.image.digest is required in sidecar mode (a floating tag would change under you)" -}}
{{- end -}}
{{- end -}}
{{- if has .Values.mode (list "sidecar" "library") -}}
{{- if eq (int .Values.app.port) (int .Values.scopegate.port) -}}
{{- fail "app.port and scopegate.port must differ: both containers share the pod's network" -}}
{{- end -}}
{{- if eq (int .Values.app.port) (int .Values.scopegate.adminPort) -}}
{{- fail "app.port and scopegate.adminPort must differ: both containers share the pod's network" -}}
{{- end -}}
{{- end -}}
{{- if eq (int .Values.scopegate.port) (int .Values.scopegate.adminPort) -}}
{{- fail "scopegate.port and scopegate.adminPort must differ" -}}
{{- end -}}
{{- if eq .Values.mode "decision" -}}
{{- if eq (int .Values.scopegate.decisionPort) (int .Values.scopegate.adminPort) -}}
{{- fail "scopegate.decisionPort and scopegate.adminPort must differ" -}}
{{- end -}}
{{- if .Values.ingress.enabled -}}
{{- fail "ingress.enabled does not apply to decision mode: your ingress controller asks scopegate's Service (auth-url, ForwardAuth, ext_authz); the Ingress routes to your app" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.nativeSidecar (semverCompare "<1.29.0-0" .Capabilities.KubeVersion.Version) -}}
{{- fail "nativeSidecar needs Kubernetes 1.29 or later (init containers with restartPolicy: Always)" -}}
{{- end -}}
{{- if and .Values.nativeSidecar (ne .Values.mode "sidecar") -}}
{{- fail "nativeSidecar applies to sidecar mode only" -}}
{{- end -}}
{{- end -}}
