{{/*
Names shared by several templates. Every name the webhook is told on its command line (its
Service, TLS Secret, webhook configuration, leader-election Lease, the rewriter namespace and
ServiceAccount) is defined here once, so RBAC resourceNames and the process agree, and each
carries the release's fullname, so two releases in one namespace never clash
(tests/chart/test_chart.py renders two). tests/chart checks all of these against the code.
*/}}

{{- define "bimguard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "bimguard.fullname" -}}
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

{{- define "bimguard.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object, without a component. */}}
{{- define "bimguard.baseLabels" -}}
helm.sh/chart: {{ include "bimguard.chart" . }}
app.kubernetes.io/name: {{ include "bimguard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels of the webhook's objects. */}}
{{- define "bimguard.labels" -}}
{{ include "bimguard.baseLabels" . }}
app.kubernetes.io/component: webhook
{{- end }}

{{- define "bimguard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "bimguard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: webhook
{{- end }}

{{/*
The webhook pods' labels: podLabels first, then the selector labels over them, so that no value
can change a label the Deployment, the Service and the PodDisruptionBudget select by (a
Deployment whose template does not match its selector is refused; a Service that selects other
pods sends reviews elsewhere).
*/}}
{{- define "bimguard.podLabels" -}}
{{- $labels := merge (include "bimguard.selectorLabels" . | fromYaml) (deepCopy .Values.podLabels) }}
{{- toYaml $labels }}
{{- end }}

{{- define "bimguard.serviceAccountName" -}}
{{ include "bimguard.fullname" . }}
{{- end }}

{{- define "bimguard.rewriterServiceAccountName" -}}
{{ include "bimguard.fullname" . | trunc 54 | trimSuffix "-" }}-rewriter
{{- end }}

{{/* The on-node pods' namespace: never the release namespace (that one enforces `restricted`). */}}
{{- define "bimguard.rewriterNamespace" -}}
{{- $name := .Values.rewriter.namespace.name }}
{{- if not $name }}
{{- $name = printf "%s-%s" .Release.Namespace (include "bimguard.fullname" .) | trimPrefix "-" | trunc 54 | trimSuffix "-" | printf "%s-rewriter" }}
{{- end }}
{{- if eq $name .Release.Namespace }}
{{- fail "rewriter.namespace.name must not be the release namespace: the rewriter pods need Pod Security level privileged, the webhook's namespace should enforce restricted" }}
{{- end }}
{{- $name }}
{{- end }}

{{/* The rewriter pods' priority class: their own value, else the webhook's. */}}
{{- define "bimguard.rewriterPriorityClassName" -}}
{{- .Values.rewriter.priorityClassName | default .Values.priorityClassName }}
{{- end }}

{{/* The ValidatingAdmissionPolicy that pins the rewriter pods' shape (and its Binding). */}}
{{- define "bimguard.rewriterPolicyName" -}}
{{ include "bimguard.webhookConfigurationName" . | trunc 237 | trimSuffix "-" }}-rewriter-pods
{{- end }}

{{/*
Whether the cluster serves admissionregistration.k8s.io/v1 ValidatingAdmissionPolicy: GA (and
on) in Kubernetes 1.30 (kubernetes/kubernetes CHANGELOG-1.30; KEP-3488). `.Capabilities` is the
cluster's on install/upgrade and `--kube-version`/`--api-versions` (else Helm's defaults) for
`helm template`.
*/}}
{{- define "bimguard.supportsAdmissionPolicy" -}}
{{- if or (semverCompare ">=1.30.0-0" .Capabilities.KubeVersion.Version)
          (.Capabilities.APIVersions.Has "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy") }}true{{ end }}
{{- end }}

{{- define "bimguard.serviceName" -}}
{{ include "bimguard.fullname" . }}
{{- end }}

{{/* Cluster-scoped, so it carries the release namespace: two releases never fight over it. */}}
{{- define "bimguard.webhookConfigurationName" -}}
{{ printf "%s-%s" (include "bimguard.fullname" .) .Release.Namespace | trunc 253 | trimSuffix "-" }}
{{- end }}

{{- define "bimguard.clusterRoleName" -}}
{{ include "bimguard.webhookConfigurationName" . }}
{{- end }}

{{- define "bimguard.leaseName" -}}
{{ include "bimguard.fullname" . | trunc 52 | trimSuffix "-" }}-controller
{{- end }}

{{- define "bimguard.metricsServiceName" -}}
{{ include "bimguard.fullname" . | trunc 55 | trimSuffix "-" }}-metrics
{{- end }}

{{- define "bimguard.tlsSecretName" -}}
{{- if .Values.tls.secretName }}
{{- .Values.tls.secretName }}
{{- else if eq .Values.tls.mode "files" }}
{{- fail "tls.mode=files needs tls.secretName: the Secret (keys tls.crt, tls.key) to mount, e.g. one cert-manager issues" }}
{{- else }}
{{- include "bimguard.fullname" . | trunc 59 | trimSuffix "-" }}-tls
{{- end }}
{{- end }}

{{/*
tls.mode certManager (templates/certmanager.yaml): the serving Certificate, whose Secret is
tls.secretName (default <fullname>-tls) and whose CA cert-manager's CA injector writes into
caBundle; and, without tls.certManager.issuerRef.name, the chart's own CA chain: a self-signed
Issuer that signs the CA Certificate (Secret <fullname>-ca), and the CA Issuer that signs the
serving Certificate.
*/}}
{{- define "bimguard.certManagerTLS" -}}
{{- if eq .Values.tls.mode "certManager" }}true{{ end }}
{{- end }}

{{- define "bimguard.servingCertificateName" -}}
{{ include "bimguard.fullname" . | trunc 55 | trimSuffix "-" }}-serving
{{- end }}

{{/* The chart's own CA chain: rendered in certManager mode when no issuer is given. */}}
{{- define "bimguard.ownCA" -}}
{{- if and (include "bimguard.certManagerTLS" .) (not .Values.tls.certManager.issuerRef.name) }}true{{ end }}
{{- end }}

{{- define "bimguard.selfSignedIssuerName" -}}
{{ include "bimguard.fullname" . | trunc 52 | trimSuffix "-" }}-selfsigned
{{- end }}

{{- define "bimguard.caName" -}}
{{ include "bimguard.fullname" . | trunc 60 | trimSuffix "-" }}-ca
{{- end }}

{{/* The Certificate cert-manager's CA injector reads: "<namespace>/<name>", or "" for none. */}}
{{- define "bimguard.injectCAFrom" -}}
{{- if include "bimguard.certManagerTLS" . }}
{{- printf "%s/%s" .Release.Namespace (include "bimguard.servingCertificateName" .) }}
{{- else }}
{{- .Values.tls.certManager.injectCAFrom }}
{{- end }}
{{- end }}

{{- define "bimguard.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "bimguard.selfManagedTLS" -}}
{{- if eq .Values.tls.mode "selfManaged" }}true{{ end }}
{{- end }}

{{/* Whether the webhook's leader writes caBundle (and so may patch the webhook configuration). */}}
{{- define "bimguard.injectsCABundle" -}}
{{- if or (eq .Values.tls.mode "selfManaged") .Values.tls.injectCABundle }}true{{ end }}
{{- end }}

{{/*
matchConditions: webhook/scope.py MATCH_CONDITIONS written out once (tests/chart checks that the
rendered conditions equal it, character for character). kube-apiserver skips the webhook for
every Longhorn Node status write that does not first-record a filesystem disk's UUID, so routine
writes pay no round trip, nor the timeoutSeconds wait while the webhook is unreachable; the
webhook's own trigger still decides. Rendered for Kubernetes >= 1.28, where the feature gate
AdmissionWebhookMatchConditions is beta and on by default (GA in 1.30; kubernetes/kubernetes
staging/src/k8s.io/apiserver/pkg/features/kube_features.go): `.Capabilities.KubeVersion` is the
cluster's version on install/upgrade and `--kube-version` (else Helm's default) for
`helm template`. Older clusters get the configuration without them.
*/}}
{{- define "bimguard.matchConditions" -}}
- name: first-records-a-filesystem-disk-uuid
  expression: |-
    [type(oldObject) == map && has(oldObject.status) && type(oldObject.status) == map
      && has(oldObject.status.diskStatus) && type(oldObject.status.diskStatus) == map
      ? oldObject.status.diskStatus : {}].exists(old,
    [type(object) == map && has(object.spec) && type(object.spec) == map
      && has(object.spec.disks) && type(object.spec.disks) == map
      ? object.spec.disks : {}].exists(spec,
    [type(object) == map && has(object.status) && type(object.status) == map
      && has(object.status.diskStatus) && type(object.status.diskStatus) == map
      ? object.status.diskStatus : {}].exists(status,
    status.exists(d, [status[d]].exists(e,
      d in old && type(old[d]) == map && has(old[d].diskUUID) && type(old[d].diskUUID) == string
        && old[d].diskUUID != ''
      ? false
      : type(e) == map && has(e.diskUUID) && type(e.diskUUID) == string
        && e.diskUUID.matches('^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\\n?$')
        && (has(e.diskType) && type(e.diskType) == string && e.diskType != ''
          ? e.diskType == 'filesystem'
          : !(d in spec && type(spec[d]) == map && has(spec[d].diskType) && type(spec[d].diskType) == string
              && !(spec[d].diskType in ['', 'filesystem']))))))))
{{- end }}

{{- define "bimguard.supportsMatchConditions" -}}
{{- if semverCompare ">=1.28.0-0" .Capabilities.KubeVersion.Version }}true{{ end }}
{{- end }}

{{/*
Where and how the on-node pods run: the same flags for the webhook (--rewriter-service-account)
and the repair (--service-account, its own name for it), see jobs/args.py.
*/}}
{{- define "bimguard.rewriterArgs" -}}
- --rewriter-namespace={{ include "bimguard.rewriterNamespace" . }}
{{- range .Values.imagePullSecrets }}
- --rewriter-image-pull-secret={{ .name }}
{{- end }}
{{- with include "bimguard.rewriterPriorityClassName" . }}
- --rewriter-priority-class={{ . }}
{{- end }}
- {{ printf "--rewriter-tolerations=%s" (toJson .Values.rewriter.tolerations) | quote }}
{{- end }}
