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
The Serve config (RayService.spec.serveConfigV2): what orchestrator.ray_app.serve_config (the
`orchestrator serve-config` command) writes for the same config, so the cluster runs the
application `orchestrator serve --ray` runs locally. The application reads the mounted
ConfigMap at args.config_path.
*/}}
{{- define "eo.serveConfig" -}}
{{- /* ingress and router: no CPU reserved, room for every request the experts take at once
       (ray_app.front_options: max(256, sum of max_concurrency)) */}}
{{- $groups := (include "eo.expertGroups" . | fromYaml).groups }}
{{- $total := 0 }}
{{- range $groups }}{{- $total = add $total (int .deployment.max_ongoing_requests) }}{{- end }}
{{- $front := max 256 $total }}
{{- $deployments := list (dict "name" "ingress" "ray_actor_options" (dict "num_cpus" 0) "max_ongoing_requests" $front) (dict "name" "router" "ray_actor_options" (dict "num_cpus" 0) "max_ongoing_requests" $front) }}
{{- range $groups }}
{{- $deployments = append $deployments .deployment }}
{{- end }}
{{- $app := dict "name" "orchestrator" "route_prefix" "/" "import_path" "orchestrator.ray_app:app_builder" "args" (dict "config_path" (include "eo.configPath" .)) "deployments" $deployments }}
{{- toYaml (dict "proxy_location" "EveryNode" "http_options" (dict "host" "0.0.0.0" "port" (int .Values.serve.port)) "applications" (list $app)) }}
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
Redis: how the orchestrator reaches it. "internal" and "external-url" put a credential-free URL
into the config file; "internal-auth" and "external-secret" pass ORCHESTRATOR_REDIS_URL from a
Secret; "none" keeps no shared state.
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
Expert groups, as orchestrator/ray_app.py builds them: one Serve deployment
"expert-<resources.group or name>" per group, sized by the largest of its members' resources
(autoscaling when any member says num_replicas: auto). A group whose replicas want GPUs also
becomes a GPU worker group whose pods hold one replica each (nvidia.com/gpu = num_gpus rounded
up). The defaults below are those of orchestrator/config.py (Resources, max_concurrency).
{"groups": [{key, deployment, gpus, minReplicas, maxReplicas, experts, groupName}]}
*/}}
{{- define "eo.expertGroups" -}}
{{- $byKey := dict }}
{{- $order := list }}
{{- range .Values.config.experts }}
{{- $key := toString (default .name (default dict .resources).group) }}
{{- if not (hasKey $byKey $key) }}
{{- $_ := set $byKey $key (list) }}
{{- $order = append $order $key }}
{{- end }}
{{- $_ := set $byKey $key (append (get $byKey $key) .) }}
{{- end }}
{{- $groups := list }}
{{- $groupNames := dict }}
{{- range $key := $order }}
{{- $cpus := 0.0 }}{{ $gpus := 0.0 }}{{ $mem := -1.0 }}{{ $ongoing := 0 }}
{{- $auto := false }}{{ $minR := 0 }}{{ $maxR := 0 }}{{ $fixed := 0 }}
{{- $names := list }}
{{- range $e := get $byKey $key }}
{{- $r := default dict $e.resources }}
{{- $names = append $names $e.name }}
{{- $cpus = maxf $cpus (float64 (default 0 $r.num_cpus)) }}
{{- $gpus = maxf $gpus (float64 (default 0 $r.num_gpus)) }}
{{- if and (hasKey $r "memory_gb") (not (kindIs "invalid" $r.memory_gb)) }}
{{- $mem = maxf $mem (float64 $r.memory_gb) }}
{{- end }}
{{- $ongoing = add $ongoing (int (ternary 8 $e.max_concurrency (not (hasKey $e "max_concurrency")))) }}
{{- $n := ternary 1 $r.num_replicas (not (hasKey $r "num_replicas")) }}
{{- if eq (toString $n) "auto" }}{{ $auto = true }}{{ else }}{{ $fixed = max $fixed (int $n) }}{{ end }}
{{- $minR = max $minR (int (ternary 1 $r.min_replicas (not (hasKey $r "min_replicas")))) }}
{{- $maxR = max $maxR (int (ternary 1 $r.max_replicas (not (hasKey $r "max_replicas")))) }}
{{- end }}
{{- $actor := dict "num_cpus" $cpus "num_gpus" $gpus }}
{{- if ge $mem 0.0 }}
{{- $_ := set $actor "memory" (int64 (mulf $mem 1073741824)) }}
{{- end }}
{{- $deployment := dict "name" (printf "expert-%s" $key) "ray_actor_options" $actor "max_ongoing_requests" $ongoing }}
{{- if $auto }}
{{- $_ := set $deployment "autoscaling_config" (dict "min_replicas" $minR "max_replicas" $maxR) }}
{{- else }}
{{- $_ := set $deployment "num_replicas" $fixed }}
{{- $minR = $fixed }}{{ $maxR = $fixed }}
{{- end }}
{{- $groupName := printf "gpu-%s" (regexReplaceAll "[^a-z0-9-]+" ($key | lower) "-" | trunc 30 | trimAll "-") }}
{{- if gt $gpus 0.0 }}
{{- if hasKey $groupNames $groupName }}
{{- fail (printf "config.experts: the GPU groups %q and %q both map to the worker group name %q; rename one" (get $groupNames $groupName) $key $groupName) }}
{{- end }}
{{- $_ := set $groupNames $groupName $key }}
{{- end }}
{{- $groups = append $groups (dict "key" $key "deployment" $deployment "gpus" (int (ceil $gpus)) "minReplicas" $minR "maxReplicas" $maxR "experts" $names "groupName" $groupName) }}
{{- end }}
{{- toYaml (dict "groups" $groups) }}
{{- end }}

{{- define "eo.gpuGroups" -}}
{{- $gpu := list }}
{{- range (include "eo.expertGroups" . | fromYaml).groups }}
{{- if gt (int .gpus) 0 }}{{ $gpu = append $gpu . }}{{ end }}
{{- end }}
{{- toYaml (dict "groups" $gpu) }}
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
{{- /* The sha256 of config.yaml's exact content (the ConfigMap's block scalar adds a newline). */ -}}
checksum/config: {{ printf "%s\n" (include "eo.config" .) | sha256sum }}
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
      {{- with and .probes (include "eo.workerProbes" $root | trim) }}
      {{- . | nindent 6 }}
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
