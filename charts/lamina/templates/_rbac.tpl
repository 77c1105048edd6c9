{{/*
RBAC rules, kept apart by who needs them. Both sets are granted per watched
namespace (Role) in namespaced mode and cluster-wide (ClusterRole) with
clusterWide=true. Secrets are deliberately absent: server pods reference them
by secretKeyRef and the kubelet, not the operator, reads them.
*/}}

{{/*
Framework rules: what kopf itself needs.
*/}}
{{- define "lamina.rbac.frameworkRules" -}}
# kopf: posting events about handling progress and errors (kopf posts core/v1
# events; events.k8s.io for clients that use the newer API).
- apiGroups: [""]
  resources: [events]
  verbs: [create]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create]
{{- if .Values.peering.enabled }}
# kopf: peering, so that only one replica of the operator acts at a time.
{{- if .Values.clusterWide }}
- apiGroups: [kopf.dev]
  resources: [clusterkopfpeerings]
  verbs: [get, list, watch, patch]
{{- else }}
- apiGroups: [kopf.dev]
  resources: [kopfpeerings]
  verbs: [get, list, watch, patch]
{{- end }}
{{- end }}
{{- end }}

{{/*
Application rules: what reconciling an LLMDeployment needs.
*/}}
{{- define "lamina.rbac.applicationRules" -}}
# The LLMDeployments themselves: kopf watches them and patches its finalizer
# and bookkeeping annotations; the operator writes their status.
- apiGroups: [lamina.dev]
  resources: [llmdeployments]
  verbs: [get, list, watch, patch]
- apiGroups: [lamina.dev]
  resources: [llmdeployments/status]
  verbs: [get, patch]
# Children: server-side applied (create/patch), watched for drift, pruned (delete).
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, patch, delete]
# With KEDA: its ScaledObjects (KEDA itself makes and owns their HPAs).
- apiGroups: [keda.sh]
  resources: [scaledobjects]
  verbs: [get, list, watch, create, patch, delete]
# Server pods, read-only: why they restart (OOM, a failed start) goes into status,
# and their running time into status.cost.
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
{{- end }}

{{/*
Discovery rules (cluster-scoped, read-only): kopf notices CRDs and namespaces
created after it started. Without them it scans once and logs a warning.
*/}}
{{- define "lamina.rbac.discoveryRules" -}}
# kopf: runtime observation of CRDs (e.g. the LLMDeployment CRD installed later).
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
# kopf: runtime observation of namespaces (namespaced mode).
- apiGroups: [""]
  resources: [namespaces]
  verbs: [list, watch]
{{- end }}

{{/*
Name of cluster-scoped objects: unique per release namespace, because two
releases of the same name in different namespaces must not share them.
*/}}
{{- define "lamina.clusterScopedName" -}}
{{- printf "%s-%s" (include "lamina.fullname" .) .Release.Namespace | trunc 63 | trimSuffix "-" }}
{{- end }}
