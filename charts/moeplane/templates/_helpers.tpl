{{/* Every name and label of the chart is built here. */}}

{{- define "moeplane.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* <release>-moeplane, or the release name alone when it already says moeplane. Kept at 40
characters so that "-operator-cluster" and friends stay within 63. */}}
{{- define "moeplane.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "moeplane.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels of one component: (dict "ctx" $ "component" "operator"). */}}
{{- define "moeplane.selectorLabels" -}}
app.kubernetes.io/name: {{ include "moeplane.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* `app.kubernetes.io/part-of: moeplane` is what the NetworkPolicies admit: the operator puts it
on every pod it creates, too. */}}
{{- define "moeplane.labels" -}}
{{ include "moeplane.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: moeplane
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
helm.sh/chart: {{ include "moeplane.chart" .ctx }}
{{- end -}}

{{/* repository:tag of a moeplane image; an empty tag means the chart's appVersion. */}}
{{- define "moeplane.image" -}}
{{- printf "%s:%s" .image.repository (default .ctx.Chart.AppVersion .image.tag) -}}
{{- end -}}

{{- define "moeplane.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "moeplane.operatorName" -}}{{ include "moeplane.fullname" . }}-operator{{- end -}}
{{- define "moeplane.plannerName" -}}{{ include "moeplane.fullname" . }}-planner{{- end -}}
{{- define "moeplane.redisName" -}}{{ include "moeplane.fullname" . }}-redis{{- end -}}

{{/* The external Redis's URL Secret: the user's, or the one the chart makes from redis.external.url. */}}
{{- define "moeplane.redisUrlSecret" -}}
{{- default (printf "%s-url" (include "moeplane.redisName" .)) .Values.redis.external.existingSecret -}}
{{- end -}}

{{/* MOEPLANE_REDIS_URL, the one setting every component reads. For the in-chart Redis the
kubelet expands $(REDIS_PASSWORD) into it, so the password stays in its own Secret and no
rendered manifest ever holds it. */}}
{{- define "moeplane.redisEnv" -}}
{{- if .Values.redis.enabled -}}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "moeplane.redisPasswordSecret" . }}
      key: {{ .Values.redis.auth.passwordKey }}
- name: MOEPLANE_REDIS_URL
  value: {{ printf "redis://:$(REDIS_PASSWORD)@%s.%s.svc:%d/0" (include "moeplane.redisName" .) .Release.Namespace (int .Values.redis.port) | quote }}
{{- else -}}
- name: MOEPLANE_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "moeplane.redisUrlSecret" . }}
      key: {{ ternary .Values.redis.external.key "url" (ne .Values.redis.external.existingSecret "") }}
{{- end -}}
{{- end -}}

{{- define "moeplane.redisPasswordSecret" -}}
{{- default (printf "%s-auth" (include "moeplane.redisName" .)) .Values.redis.auth.existingSecret -}}
{{- end -}}

{{- define "moeplane.dashboardSecret" -}}
{{- default (printf "%s-dashboard" (include "moeplane.plannerName" .)) .Values.planner.dashboardToken.existingSecret -}}
{{- end -}}

{{/* A random secret that survives upgrades: reuse the live Secret's value when there is one. */}}
{{- define "moeplane.keptSecret" -}}
{{- $live := lookup "v1" "Secret" .ctx.Release.Namespace .name -}}
{{- if and $live $live.data (hasKey $live.data .key) -}}
{{- index $live.data .key | b64dec -}}
{{- else -}}
{{- randAlphaNum 32 -}}
{{- end -}}
{{- end -}}

{{/* Namespaces where worker pods run: they get the workers' NetworkPolicy. */}}
{{- define "moeplane.workloadNamespaces" -}}
{{- $all := list .Release.Namespace -}}
{{- if .Values.networkPolicy.workloadNamespaces -}}
{{- $all = .Values.networkPolicy.workloadNamespaces -}}
{{- else -}}
{{- $all = concat $all .Values.operator.namespaces -}}
{{- end -}}
{{- $all | uniq | toJson -}}
{{- end -}}

{{/* Cross-field rules the values schema cannot state with a clear message. */}}
{{- define "moeplane.checkValues" -}}
{{- if not .Values.redis.enabled -}}
{{- $ext := .Values.redis.external -}}
{{- if and (not $ext.url) (not $ext.existingSecret) -}}
{{- fail "redis.enabled is false: set redis.external.url or redis.external.existingSecret (a Secret holding the URL)" -}}
{{- end -}}
{{- if and $ext.url $ext.existingSecret -}}
{{- fail "redis.external: set url or existingSecret, not both" -}}
{{- end -}}
{{- end -}}
{{- range .Values.operator.namespaces -}}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" .) -}}
{{- fail (printf "operator.namespaces: %q is not a namespace name (a DNS-1123 label)" .) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The pod-level settings shared by the operator, planner and test pods. */}}
{{- define "moeplane.podSecurity" -}}
{{- with .Values.podSecurityContext }}
securityContext:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "moeplane.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The planner's rules (its calls are recorded in tests/planner/api_calls.json). */}}
{{- define "moeplane.plannerRules" -}}
# Reads every MoEDeployment's SLA and planner settings; the dashboard's Apply patches the spec,
# and the planner records its last decision in the status.
- apiGroups: [moeplane.io]
  resources: [moedeployments]
  verbs: [get, list, watch, patch]
- apiGroups: [moeplane.io]
  resources: [moedeployments/status]
  verbs: [patch]
# Scales each pool through its scale subresource, never by editing the pool.
- apiGroups: [moeplane.io]
  resources: [moepools]
  verbs: [get, list, watch]
- apiGroups: [moeplane.io]
  resources: [moepools/scale]
  verbs: [get, patch]
{{- end -}}
