{{/* Names and labels shared by every object of a release. */}}

{{- define "vlm.name" -}}
{{- .Values.run.name -}}
{{- end -}}

{{- define "vlm.labels" -}}
app.kubernetes.io/name: vlm-platform
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: {{ include "vlm.name" . }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "vlm.configMapName" -}}
{{- .Values.run.cluster.config_map | default (printf "%s-config" (include "vlm.name" .)) -}}
{{- end -}}

{{- define "vlm.tensorboardName" -}}
{{- printf "%s-tensorboard" (include "vlm.name" .) -}}
{{- end -}}

{{- define "vlm.tensorboardLogDir" -}}
{{- .Values.tensorboard.logDir | default (printf "%s/tensorboard" (trimSuffix "/" .Values.run.output)) -}}
{{- end -}}

{{/* Pod-level security: non-root, the runtime's default seccomp profile. */}}
{{- define "vlm.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
fsGroup: {{ .Values.securityContext.fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "vlm.containerSecurityContext" -}}
allowPrivilegeEscalation: false
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* Storage settings: the endpoint is plain config; keys come only from the Secret, by reference. */}}
{{- define "vlm.storageEnv" -}}
{{- with .Values.run.cluster.storage }}
{{- if .s3_endpoint }}
# Both spellings: botocore's and TensorBoard's.
- name: AWS_ENDPOINT_URL
  value: {{ .s3_endpoint | quote }}
- name: S3_ENDPOINT
  value: {{ .s3_endpoint | quote }}
{{- end }}
{{- if .s3_secret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ .s3_secret }}
      key: AWS_ACCESS_KEY_ID
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .s3_secret }}
      key: AWS_SECRET_ACCESS_KEY
{{- end }}
{{- end }}
{{- end -}}

{{- define "vlm.scheduling" -}}
{{- with .Values.run.cluster.scheduling }}
{{- with .node_selector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .priority_class }}
priorityClassName: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The pod template of every replica of a stage's PyTorchJob. */}}
{{- define "vlm.pytorchjobPod" -}}
{{- $root := .root }}
{{- $run := $root.Values.run }}
{{- $cluster := $run.cluster }}
{{- $res := $cluster.resources }}
metadata:
  labels:
    {{- toYaml .labels | nindent 4 }}
  annotations:
    # Which run config a pod started with (ConfigMaps change in place).
    vlm-platform/config-sha256: {{ toYaml $run | sha256sum | trunc 16 }}
    {{- with $root.Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ $cluster.service_account }}
  securityContext:
    {{- include "vlm.podSecurityContext" $root | nindent 4 }}
  {{- include "vlm.scheduling" $root | nindent 2 }}
  containers:
    - name: pytorch
      image: {{ $cluster.image }}
      imagePullPolicy: {{ $cluster.image_pull_policy }}
      command: ["torchrun"]
      args: ["-m", "vlm_core.cli", "train", "--config", "/etc/vlm/config.yaml", "--stage", {{ .stage | quote }}, "--resume", "auto"]
      env:
        # Caches on a writable emptyDir: the image's non-root user has no home to write.
        - name: HF_HOME
          value: /cache/huggingface
        - name: TORCH_EXTENSIONS_DIR
          value: /cache/torch_extensions
        {{- if .elastic }}
        - name: PET_NPROC_PER_NODE
          value: {{ $run.distributed.procs_per_node | quote }}
        {{- end }}
        {{- include "vlm.storageEnv" $root | nindent 8 }}
      ports:
        - name: pytorchjob-port
          containerPort: 23456
          protocol: TCP
      resources:
        requests:
          cpu: {{ $res.cpu | quote }}
          memory: {{ $res.memory | quote }}
        limits:
          cpu: {{ $res.cpu | quote }}
          memory: {{ $res.memory | quote }}
          {{- if gt (int $res.gpus_per_node) 0 }}
          nvidia.com/gpu: {{ $res.gpus_per_node }}
          {{- end }}
      volumeMounts:
        - name: config
          mountPath: /etc/vlm
          readOnly: true
        - name: dshm
          mountPath: /dev/shm
        - name: cache
          mountPath: /cache
        {{- with $cluster.storage.pvc }}
        - name: checkpoints
          mountPath: {{ $cluster.storage.pvc_mount }}
        {{- end }}
      securityContext:
        {{- include "vlm.containerSecurityContext" $root | nindent 8 }}
  volumes:
    - name: config
      configMap:
        name: {{ include "vlm.configMapName" $root }}
    - name: dshm
      emptyDir:
        medium: Memory
        sizeLimit: {{ $res.shm_size }}
    - name: cache
      emptyDir: {}
    {{- with $cluster.storage.pvc }}
    - name: checkpoints
      persistentVolumeClaim:
        claimName: {{ . }}
    {{- end }}
{{- end -}}
