{{/*
Names and labels.
*/}}
{{- define "eo.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The release's full name. Kept to 40 characters: KubeRay derives longer names (the Ray cluster
"<name>-raycluster-xxxxx", its pods "<cluster>-<group>-worker-xxxxx") from the RayService's.
*/}}
{{- define "eo.fullname" -}}
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

{{- define "eo.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "eo.selectorLabels" -}}
app.kubernetes.io/name: {{ include "eo.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "eo.labels" -}}
helm.sh/chart: {{ include "eo.chart" . }}
{{ include "eo.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "eo.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "eo.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "eo.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
Fixed paths the Serve application and the training job rely on.
*/}}
{{- define "eo.configDir" -}}/etc/orchestrator{{- end }}
{{- define "eo.configPath" -}}/etc/orchestrator/config.yaml{{- end }}

{{/*
The Serve config (RayService.spec.serveConfigV2): the structure `orchestrator serve-config`
prints, the same application `orchestrator serve --ray` runs locally.
*/}}
{{- define "eo.serveConfig" -}}
applications:
  - name: orchestrator
    import_path: orchestrator.ray_app:app_builder
    route_prefix: /
    args:
      config_path: {{ include "eo.configPath" . }}
{{- end }}

{{/*
The API keys as a list of {name, scopes, secretKey, env}; env is the variable each key reaches
the orchestrator through (server.api_keys[].key_env).
*/}}
{{- define "eo.apiKeys" -}}
{{- $keys := list }}
{{- $seen := dict }}
{{- range .Values.apiKeys.keys }}
{{- /* Outside the ORCHESTRATOR_ prefix, so the settings loader never reads it as a setting. */}}
{{- $env := printf "API_KEY_%s" (.name | upper | replace "-" "_") }}
{{- if hasKey $seen .name }}
{{- fail (printf "apiKeys.keys: the name %q appears twice; names must be unique" .name) }}
{{- end }}
{{- $_ := set $seen .name true }}
{{- $keys = append $keys (dict "name" .name "scopes" (.scopes | default (list "user")) "secretKey" (default .name .secretKey) "env" $env) }}
{{- end }}
{{- toYaml (dict "keys" $keys) }}
{{- end }}

{{- define "eo.apiKeysSecretName" -}}
{{- default (printf "%s-api-keys" (include "eo.fullname" .)) .Values.apiKeys.existingSecret }}
{{- end }}

{{/*
Redis: how the orchestrator reaches it. "config" puts a credential-free URL into the config
file; "env" passes ORCHESTRATOR_REDIS_URL (composed from a Secret); "none" keeps no shared state.
*/}}
{{- define "eo.redisHost" -}}
{{- printf "%s-redis" (include "eo.fullname" .) }}
{{- end }}

{{- define "eo.redisSecretName" -}}
{{- default (printf "%s-redis" (include "eo.fullname" .)) .Values.redis.auth.existingSecret }}
{{- end }}

{{- define "eo.redisMode" -}}
{{- if .Values.redis.enabled }}
{{- if or .Values.externalRedis.url .Values.externalRedis.existingSecret }}
{{- fail "redis.enabled and externalRedis are both set: use the in-chart Redis or an external one, not both" }}
{{- end }}
{{- if .Values.redis.auth.enabled }}internal-auth{{ else }}internal{{ end }}
{{- else if and .Values.externalRedis.url .Values.externalRedis.existingSecret }}
{{- fail "externalRedis: set url or existingSecret, not both" }}
{{- else if .Values.externalRedis.existingSecret }}external-secret
{{- else if .Values.externalRedis.url }}
{{- if contains "@" .Values.externalRedis.url }}
{{- fail "externalRedis.url holds credentials: put the whole URL in a Secret and set externalRedis.existingSecret instead, so it is never rendered in plain text" }}
{{- end }}external-url
{{- else }}none
{{- end }}
{{- end }}

{{/*
The Redis URL written into the config file, or "" when it comes from the environment.
*/}}
{{- define "eo.redisConfigUrl" -}}
{{- $mode := include "eo.redisMode" . }}
{{- if eq $mode "internal" }}
{{- printf "redis://%s:6379/%d" (include "eo.redisHost" .) (int .Values.redis.database) }}
{{- else if eq $mode "external-url" }}
{{- .Values.externalRedis.url }}
{{- end }}
{{- end }}

{{- define "eo.artifactsClaimName" -}}
{{- default (printf "%s-artifacts" (include "eo.fullname" .)) .Values.artifacts.persistence.existingClaim }}
{{- end }}

{{/*
The orchestrator config file: values.config plus the settings the chart owns.
*/}}
{{- define "eo.config" -}}
{{- $cfg := deepCopy .Values.config }}
{{- $server := deepCopy (default dict (get $cfg "server")) }}
{{- $apiKeys := list }}
{{- range (include "eo.apiKeys" . | fromYaml).keys }}
{{- $apiKeys = append $apiKeys (dict "name" .name "key_env" .env "scopes" .scopes) }}
{{- end }}
{{- $_ := set $server "api_keys" $apiKeys }}
{{- $_ := set $cfg "server" $server }}
{{- $redisUrl := include "eo.redisConfigUrl" . }}
{{- if $redisUrl }}
{{- $_ := set $cfg "redis_url" $redisUrl }}
{{- end }}
{{- if .Values.artifacts.persistence.enabled }}
{{- $_ := set $cfg "artifacts_dir" .Values.artifacts.mountPath }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}

{{/*
GPU expert groups: experts with resources.num_gpus > 0, keyed by resources.group (else the
expert's name). Members of one group share one Serve deployment, so they must agree on the
resources that size it. Each group becomes a worker group whose pods hold one replica each:
{"groups": [{key, groupName, gpus, minReplicas, maxReplicas, experts}]}.
*/}}
{{- define "eo.gpuGroups" -}}
{{- $byKey := dict }}
{{- $order := list }}
{{- range $i, $e := .Values.config.experts }}
{{- $r := default dict $e.resources }}
{{- $gpus := float64 (default 0 $r.num_gpus) }}
{{- if gt $gpus 0.0 }}
{{- $key := toString (default $e.name $r.group) }}
{{- $n := ternary 1 $r.num_replicas (not (hasKey $r "num_replicas")) }}
{{- $min := 0 }}
{{- $max := 0 }}
{{- if eq (toString $n) "auto" }}
{{- $min = int (ternary 1 $r.min_replicas (not (hasKey $r "min_replicas"))) }}
{{- $max = int (default 1 $r.max_replicas) }}
{{- else }}
{{- $min = int $n }}
{{- $max = int $n }}
{{- end }}
{{- $sizing := dict "gpus" (int (ceil $gpus)) "minReplicas" $min "maxReplicas" $max }}
{{- if hasKey $byKey $key }}
{{- $g := get $byKey $key }}
{{- $known := dict "gpus" $g.gpus "minReplicas" $g.minReplicas "maxReplicas" $g.maxReplicas }}
{{- if ne (toJson $known) (toJson $sizing) }}
{{- fail (printf "config.experts: experts %s and %q are both in GPU group %q but ask for different resources (%s vs %s); members of a group share one Serve deployment, so give them the same resources.num_gpus and replicas" (toJson $g.experts) $e.name $key (toJson $known) (toJson $sizing)) }}
{{- end }}
{{- $_ := set $g "experts" (append $g.experts $e.name) }}
{{- else }}
{{- $groupName := printf "gpu-%s" (regexReplaceAll "[^a-z0-9-]+" ($key | lower) "-" | trunc 30 | trimAll "-") }}
{{- range $other := $order }}
{{- if eq (get $byKey $other).groupName $groupName }}
{{- fail (printf "config.experts: GPU groups %q and %q both map to the worker group name %q; rename one" $other $key $groupName) }}
{{- end }}
{{- end }}
{{- $_ := set $byKey $key (merge (dict "key" $key "groupName" $groupName "experts" (list $e.name)) $sizing) }}
{{- $order = append $order $key }}
{{- end }}
{{- end }}
{{- end }}
{{- $groups := list }}
{{- range $order }}
{{- $groups = append $groups (get $byKey .) }}
{{- end }}
{{- toYaml (dict "groups" $groups) }}
{{- end }}

{{/*
Environment of every Ray container: API keys and the Redis URL from Secrets.
*/}}
{{- define "eo.rayEnv" -}}
{{- $secret := include "eo.apiKeysSecretName" . }}
{{- range (include "eo.apiKeys" . | fromYaml).keys }}
- name: {{ .env }}
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ .secretKey }}
{{- end }}
{{- $mode := include "eo.redisMode" . }}
{{- if eq $mode "internal-auth" }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "eo.redisSecretName" . }}
      key: {{ .Values.redis.auth.existingSecretKey }}
- name: ORCHESTRATOR_REDIS_URL
  value: {{ printf "redis://:$(REDIS_PASSWORD)@%s:6379/%d" (include "eo.redisHost" .) (int .Values.redis.database) | quote }}
{{- else if eq $mode "external-secret" }}
- name: ORCHESTRATOR_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.externalRedis.existingSecret }}
      key: {{ .Values.externalRedis.existingSecretKey }}
{{- end }}
{{- with .Values.ray.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "eo.rayVolumes" -}}
- name: config
  configMap:
    name: {{ include "eo.fullname" . }}-config
- name: dshm
  emptyDir:
    medium: Memory
    sizeLimit: {{ .Values.ray.shmSizeLimit }}
{{- if .Values.artifacts.persistence.enabled }}
- name: artifacts
  persistentVolumeClaim:
    claimName: {{ include "eo.artifactsClaimName" . }}
{{- end }}
{{- end }}

{{/*
Mounts of every Ray container; the argument "readOnly" is false only for training.
*/}}
{{- define "eo.rayVolumeMounts" -}}
- name: config
  mountPath: {{ include "eo.configDir" .root }}
  readOnly: true
- name: dshm
  mountPath: /dev/shm
{{- if .root.Values.artifacts.persistence.enabled }}
- name: artifacts
  mountPath: {{ .root.Values.artifacts.mountPath }}
  readOnly: {{ .readOnly }}
{{- end }}
{{- end }}

{{/*
The pod-level annotations that roll the Ray cluster when its inputs change.
*/}}
{{- define "eo.podAnnotations" -}}
checksum/config: {{ include "eo.config" . | sha256sum }}
{{- with .Values.ray.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
A worker pod's probes through Serve's HTTP proxy.
*/}}
{{- define "eo.workerProbes" -}}
{{- $port := .Values.serve.port }}
{{- range $kind, $field := dict "readiness" "readinessProbe" "liveness" "livenessProbe" "startup" "startupProbe" }}
{{- $p := get $.Values.probes $kind }}
{{- if $p.enabled }}
{{ $field }}:
  httpGet:
    path: {{ $p.path }}
    port: {{ $port }}
  periodSeconds: {{ $p.periodSeconds }}
  timeoutSeconds: {{ $p.timeoutSeconds }}
  failureThreshold: {{ $p.failureThreshold }}
{{- end }}
{{- end }}
{{- end }}

{{/*
One Ray pod template. Arguments: root (the chart context), component ("ray-head",
"ray-worker"), group (the worker group's name, "" for the head), spec (resources, nodeSelector,
tolerations, affinity), gpus (0 for none), probes (bool), ports (list of {name, containerPort}).
*/}}
{{- define "eo.rayPodTemplate" -}}
{{- $root := .root }}
{{- $v := $root.Values -}}
metadata:
  labels:
    {{- include "eo.selectorLabels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
    {{- if .group }}
    expert-orchestrator/worker-group: {{ .group }}
    {{- end }}
    {{- with $v.ray.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    {{- include "eo.podAnnotations" $root | nindent 4 }}
spec:
  {{- /* With autoscaling on, KubeRay gives the head its own service account, bound to the
  role the autoscaler needs; it does so only when the template names none. */}}
  {{- if not (and (eq .component "ray-head") $v.ray.enableInTreeAutoscaling) }}
  serviceAccountName: {{ include "eo.serviceAccountName" $root }}
  {{- end }}
  {{- with $v.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml $v.ray.podSecurityContext | nindent 4 }}
  {{- with .spec.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .spec.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .spec.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: {{ .component }}
      image: {{ include "eo.image" $root }}
      imagePullPolicy: {{ $v.image.pullPolicy }}
      securityContext:
        {{- toYaml $v.ray.securityContext | nindent 8 }}
      ports:
        {{- toYaml .ports | nindent 8 }}
      {{- $env := include "eo.rayEnv" $root | trim }}
      {{- if $env }}
      env:
        {{- $env | nindent 8 }}
      {{- end }}
      {{- $resources := deepCopy (default dict .spec.resources) }}
      {{- if .gpus }}
      {{- $gpu := dict $v.ray.gpuWorkers.resourceName .gpus }}
      {{- $_ := set $resources "limits" (merge (deepCopy $gpu) (default dict $resources.limits)) }}
      {{- $_ := set $resources "requests" (merge (deepCopy $gpu) (default dict $resources.requests)) }}
      {{- end }}
      resources:
        {{- toYaml $resources | nindent 8 }}
      {{- if .probes }}
      {{- include "eo.workerProbes" $root | nindent 6 }}
      {{- end }}
      volumeMounts:
        {{- include "eo.rayVolumeMounts" (dict "root" $root "readOnly" true) | nindent 8 }}
  volumes:
    {{- include "eo.rayVolumes" $root | nindent 4 }}
{{- end }}

{{/*
The router-training pod: the orchestrator image with the config and a writable artifacts volume.
*/}}
{{- define "eo.trainingPodTemplate" -}}
{{- $root := .root }}
{{- $v := $root.Values }}
{{- $t := $v.training -}}
metadata:
  labels:
    {{- include "eo.selectorLabels" $root | nindent 4 }}
    app.kubernetes.io/component: training
  annotations:
    {{- include "eo.podAnnotations" $root | nindent 4 }}
spec:
  {{- if eq $t.kind "Job" }}
  serviceAccountName: {{ include "eo.serviceAccountName" $root }}
  restartPolicy: Never
  {{- end }}
  {{- with $v.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml $v.ray.podSecurityContext | nindent 4 }}
  {{- with $t.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $t.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $t.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: {{ .containerName }}
      image: {{ include "eo.image" $root }}
      imagePullPolicy: {{ $v.image.pullPolicy }}
      {{- if eq $t.kind "Job" }}
      command: ["sh", "-c", {{ $t.entrypoint | quote }}]
      {{- end }}
      securityContext:
        {{- toYaml $v.ray.securityContext | nindent 8 }}
      env:
        # For the entrypoint: where the orchestrator config is mounted.
        - name: ORCHESTRATOR_CONFIG
          value: {{ include "eo.configPath" $root }}
        {{- with include "eo.rayEnv" $root | trim }}
        {{- . | nindent 8 }}
        {{- end }}
      resources:
        {{- toYaml $t.resources | nindent 8 }}
      volumeMounts:
        {{- include "eo.rayVolumeMounts" (dict "root" $root "readOnly" false) | nindent 8 }}
  volumes:
    {{- include "eo.rayVolumes" $root | nindent 4 }}
{{- end }}

{{- define "eo.rayJobSpec" -}}
{{- $t := .root.Values.training -}}
entrypoint: {{ $t.entrypoint | quote }}
suspend: {{ $t.suspend }}
backoffLimit: {{ $t.backoffLimit }}
activeDeadlineSeconds: {{ $t.activeDeadlineSeconds }}
# A Ray cluster of its own, deleted ttlSecondsAfterFinished after the job ends.
shutdownAfterJobFinishes: true
ttlSecondsAfterFinished: {{ $t.ttlSecondsAfterFinished }}
rayClusterSpec:
  rayVersion: {{ .root.Values.ray.version | quote }}
  headGroupSpec:
    rayStartParams:
      dashboard-host: 0.0.0.0
    template:
      {{- .pod | nindent 6 }}
{{- end }}

{{- define "eo.jobSpec" -}}
{{- $t := .root.Values.training -}}
suspend: {{ $t.suspend }}
backoffLimit: {{ $t.backoffLimit }}
activeDeadlineSeconds: {{ $t.activeDeadlineSeconds }}
template:
  {{- .pod | nindent 2 }}
{{- end }}
