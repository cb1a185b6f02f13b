{{/*
Names, labels and pod settings shared by the install-time objects. The run-time objects (each
stage's PyTorchJob, eval's) are built by the driver (operators/pytorchjob.py), never here.
Labels name the run, not the release, so `helm install` and `kubectl apply -k manifests/`
create the same objects (docs/ARCHITECTURE.md, "Platform").
*/}}

{{- define "vlm.driverName" -}}
{{- printf "%s-driver" .Values.run.name -}}
{{- end -}}

{{- define "vlm.configMapName" -}}
{{- printf "%s-config" .Values.run.name -}}
{{- end -}}

{{- define "vlm.tensorboardName" -}}
{{- printf "%s-tensorboard" .Values.run.name -}}
{{- end -}}

{{- define "vlm.tensorboardLogDir" -}}
{{- .Values.tensorboard.logDir | default (printf "%s/tensorboard" (trimSuffix "/" .Values.run.output)) -}}
{{- end -}}

{{/* The run config the driver reads: the values' run, in the release namespace. */}}
{{- define "vlm.runConfig" -}}
{{- toYaml (mergeOverwrite (deepCopy .Values.run) (dict "cluster" (dict "namespace" .Release.Namespace))) -}}
{{- end -}}

{{/* Selector labels: stable for the life of an object (a Deployment's selector is immutable). */}}
{{- define "vlm.selectorLabels" -}}
app.kubernetes.io/name: vlm-platform
app.kubernetes.io/instance: {{ .root.Values.run.name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Call with (dict "root" $ "component" "<what the object is for>"). */}}
{{- define "vlm.labels" -}}
{{ include "vlm.selectorLabels" . }}
app.kubernetes.io/part-of: {{ .root.Values.run.name }}
{{- end -}}

{{/* Restricted Pod Security Standard; uid 1000 is the image's user (Dockerfile). */}}
{{- define "vlm.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 1000
runAsGroup: 1000
fsGroup: 1000
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

{{/* The run-config volume, the cache and the PVC, for a pod running `vlm`: (dict "root" $ "readOnly" bool). */}}
{{- define "vlm.volumeMounts" -}}
- name: config
  mountPath: /etc/vlm
  readOnly: true
- name: cache
  mountPath: /cache
{{- with .root.Values.run.cluster.storage }}
{{- if .pvc }}
- name: storage
  mountPath: {{ .pvc_mount }}
  {{- if $.readOnly }}
  readOnly: true
  {{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "vlm.volumes" -}}
- name: config
  configMap:
    name: {{ include "vlm.configMapName" .root }}
# Caches on a writable emptyDir: the image's non-root user has no home to write.
- name: cache
  emptyDir: {}
{{- with .root.Values.run.cluster.storage.pvc }}
- name: storage
  persistentVolumeClaim:
    claimName: {{ . }}
    {{- if $.readOnly }}
    readOnly: true
    {{- end }}
{{- end }}
{{- end -}}
