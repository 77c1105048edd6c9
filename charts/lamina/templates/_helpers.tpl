{{/*
Chart name, cut to 63 characters (the DNS label limit of Kubernetes names).
*/}}
{{- define "lamina.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name: release-chart, or just the release name when it
already contains the chart name. Cut to 63 characters.
*/}}
{{- define "lamina.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
chart label value: name-version.
*/}}
{{- define "lamina.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels every object of the chart carries.
*/}}
{{- define "lamina.labels" -}}
helm.sh/chart: {{ include "lamina.chart" . }}
{{ include "lamina.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: lamina
app.kubernetes.io/component: operator
{{- end }}

{{/*
Selector labels of the operator pods (immutable once installed).
*/}}
{{- define "lamina.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lamina.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Name of the ServiceAccount the operator runs as.
*/}}
{{- define "lamina.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "lamina.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Operator image reference: repository@digest, or repository:tag (tag defaults to appVersion).
*/}}
{{- define "lamina.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The server images for LLMDeployments without spec.image: GPU, and CPU (tag -cpu).
*/}}
{{- define "lamina.serverImage" -}}
{{- printf "%s:%s" .Values.serverImage.repository (default .Chart.AppVersion .Values.serverImage.tag) }}
{{- end }}

{{/*
Namespaces the operator watches in namespaced mode, as a list (JSON-encoded,
since templates can only return strings): watchNamespaces, or the release
namespace when that is empty.
*/}}
{{- define "lamina.watchNamespaces" -}}
{{- $namespaces := .Values.watchNamespaces | default (list .Release.Namespace) }}
{{- $namespaces | uniq | toJson }}
{{- end }}

{{/*
Labels that select the lamina server pods the operator creates (see
lamina_operator.render.standard_labels).
*/}}
{{- define "lamina.serverSelectorLabels" -}}
app.kubernetes.io/name: lamina-server
app.kubernetes.io/managed-by: lamina-operator
{{- end }}

{{/*
Fail early on value combinations that would install something broken.
Included from the Deployment (so `helm template` fails too) and NOTES.txt.
*/}}
{{- define "lamina.validateValues" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.peering.enabled) }}
{{- fail "replicaCount > 1 needs peering.enabled=true: without kopf peering every replica would reconcile the same objects at once" }}
{{- end }}
{{- if and .Values.clusterWide .Values.watchNamespaces }}
{{- fail "clusterWide=true watches every namespace: leave watchNamespaces empty (or set clusterWide=false)" }}
{{- end }}
{{- if and .Values.monitoring.serviceMonitor.enabled (not (and .Values.metrics.enabled .Values.metrics.service.enabled)) }}
{{- fail "monitoring.serviceMonitor.enabled needs metrics.enabled=true and metrics.service.enabled=true" }}
{{- end }}
{{- if and (not .Values.rbac.create) (not .Values.serviceAccount.create) (not .Values.serviceAccount.name) }}
{{- fail "with rbac.create=false and serviceAccount.create=false, name an existing ServiceAccount in serviceAccount.name" }}
{{- end }}
{{- if and .Values.metrics.enabled (eq (int .Values.metrics.port) (int .Values.livenessPort)) }}
{{- fail "metrics.port and livenessPort must differ" }}
{{- end }}
{{- end }}

{{/*
prometheus-adapter rule list (the adapter's config format). The series must
carry `namespace` and `pod` labels, as PodMonitor and annotation-based
kubernetes_sd scrapes both add.
*/}}
{{- define "lamina.prometheusAdapterRules" -}}
- seriesQuery: 'lamina_requests_in_flight{namespace!="",pod!=""}'
  resources:
    overrides:
      namespace: {resource: namespace}
      pod: {resource: pod}
  name:
    matches: ^lamina_requests_in_flight$
    as: lamina_requests_in_flight
  # A gauge, read as is; the HPA averages it over the pods (AverageValue).
  metricsQuery: 'sum by (<<.GroupBy>>) (<<.Series>>{<<.LabelMatchers>>})'
{{- end }}
