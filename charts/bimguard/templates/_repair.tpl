{{/*
The repair (`bimguard repair`, jobs/repair.py) and the scan as Kubernetes Jobs: the post-install /
post-upgrade hook Job, the optional CronJob, the suspended CronJobs kept for manual runs, and the
pre-delete clean-up Job. Names, identities and the pod template are defined here once.

Every name is cut so that what Kubernetes derives from it stays valid: a Job's name becomes its
pods' `job-name` label (63 characters at most), and a CronJob adds an 11-character suffix to
the Jobs it makes (52 characters at most for the CronJob).
*/}}

{{- define "bimguard.repairName" -}}
{{ include "bimguard.fullname" . | trunc 56 | trimSuffix "-" }}-repair
{{- end }}

{{- define "bimguard.scanName" -}}
{{ include "bimguard.fullname" . | trunc 58 | trimSuffix "-" }}-scan
{{- end }}

{{- define "bimguard.uninstallName" -}}
{{ include "bimguard.fullname" . | trunc 53 | trimSuffix "-" }}-uninstall
{{- end }}

{{- define "bimguard.uninstallClusterRoleName" -}}
{{ include "bimguard.webhookConfigurationName" . | trunc 243 | trimSuffix "-" }}-uninstall
{{- end }}

{{/* The `helm test` Pod and its identity (templates/tests/). */}}
{{- define "bimguard.testName" -}}
{{ include "bimguard.fullname" . | trunc 58 | trimSuffix "-" }}-test
{{- end }}

{{- define "bimguard.testClusterRoleName" -}}
{{ include "bimguard.webhookConfigurationName" . | trunc 248 | trimSuffix "-" }}-test
{{- end }}

{{/* CronJobs: at most 52 characters. */}}
{{- define "bimguard.cronJobName" -}}
{{ include "bimguard.fullname" . | trunc 32 | trimSuffix "-" }}-{{ ternary "repair" "scan" (eq .Values.repair.cronJob.mode "repair") }}-scheduled
{{- end }}

{{- define "bimguard.manualName" -}}
{{ include "bimguard.fullname" . | trunc 32 | trimSuffix "-" }}-repair-manual
{{- end }}

{{- define "bimguard.manualEvictName" -}}
{{ include "bimguard.fullname" . | trunc 32 | trimSuffix "-" }}-repair-manual-evict
{{- end }}

{{/* The repair's Lease (jobs/repair_runner.py LEASE_NAME): one repair at a time, whoever started it. */}}
{{- define "bimguard.repairLeaseName" -}}
bimguard-repair
{{- end }}

{{/* Labels of the repair's, the scan's and the clean-up's objects: the base labels and a component. */}}
{{- define "bimguard.componentLabels" -}}
{{ include "bimguard.baseLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Whether anything runs `bimguard repair --apply` (and so needs the repair ServiceAccount). */}}
{{- define "bimguard.repairRuns" -}}
{{- $r := .Values.repair }}
{{- if or $r.enabled $r.manual.enabled (and $r.cronJob.enabled (eq $r.cronJob.mode "repair")) }}true{{ end }}
{{- end }}

{{/*
A duration as the repair's --timeout takes it ("30m", "1h30m", "90s"; values.schema.json allows
exactly h, m and s, in that order) -> whole seconds. Fails on zero.
*/}}
{{- define "bimguard.durationSeconds" -}}
{{- $total := 0 }}
{{- range regexFindAll "[0-9]+[hms]" .value -1 }}
{{- $n := int (regexFind "[0-9]+" .) }}
{{- if hasSuffix "h" . }}{{ $total = add $total (mul $n 3600) }}
{{- else if hasSuffix "m" . }}{{ $total = add $total (mul $n 60) }}
{{- else }}{{ $total = add $total $n }}{{ end }}
{{- end }}
{{- if le (int $total) 0 }}
{{- fail (printf "%s must be a duration above 0 such as 30m, 1h30m or 90s, not %q" .what .value) }}
{{- end }}
{{- $total }}
{{- end }}

{{/*
The Job spec of a repair or scan run, shared by the hook Job, the CronJob and the manual CronJobs.
Arguments (a dict):
  root            the chart's context
  mode            "repair" (bimguard repair --apply) or "scan" (bimguard scan: report only)
  evict           pass --evict (repair only)
  timeout         the run's budget, e.g. "30m": the repair's --timeout; for both modes the Job's
                  activeDeadlineSeconds is timeout + repair.deadlineMarginSeconds
  exitZeroOnUnfinished  pass --exit-zero-on-unfinished (repair only)
  identity        the repair Lease's holder identity: the Job's name when it is known at render
                  time (the hook Job); "" = the pod's `job-name` label (Jobs a CronJob or
                  `kubectl create job --from` makes). Either way every pod of one Job has the
                  same identity, so a retried pod takes its own Job's Lease over at once.

Exit codes and retries (podFailurePolicy; Kubernetes >= 1.26, ignored by 1.25):
  repair: 0 done / nothing to do; 2 error (retried up to backoffLimit); 3 some disks blocked,
          pending or rolled back: the Job fails at once (a retry in the same run changes nothing;
          Kubernetes >= 1.29, before that it is retried like an error).
  scan:   0 no collision; 1 collisions to repair or an incomplete scan: the Job fails at once
          (>= 1.29, as above); 2 error (retried).
  A pod evicted by a drain or preemption (DisruptionTarget) is replaced without counting.
*/}}
{{- define "bimguard.runJobSpec" -}}
{{- $root := .root }}
{{- $r := $root.Values.repair }}
{{- $repair := eq .mode "repair" }}
{{- $seconds := include "bimguard.durationSeconds" (dict "value" .timeout "what" "a repair or scan timeout") | int }}
backoffLimit: {{ $r.backoffLimit }}
# The run's budget (the repair's --timeout) plus repair.deadlineMarginSeconds (pod start, image
# pull, the final report): the process always ends on its own before Kubernetes kills it.
activeDeadlineSeconds: {{ add $seconds $r.deadlineMarginSeconds }}
podFailurePolicy:
  rules:
  - action: Ignore
    onPodConditions:
    - type: DisruptionTarget
      status: "True"
  {{- if semverCompare ">=1.29.0-0" $root.Capabilities.KubeVersion.Version }}
  # Before 1.29 Kubernetes' OpenAPI marks onPodConditions required in every rule, so a rule on
  # exit codes alone fails schema validation there: older clusters retry verdicts too.
  - action: FailJob
    onExitCodes:
      containerName: {{ .mode }}
      operator: In
      values: [{{ ternary 3 1 $repair }}]
  {{- end }}
template:
  metadata:
    labels:
      app.kubernetes.io/name: {{ include "bimguard.name" $root }}
      app.kubernetes.io/instance: {{ $root.Release.Name }}
      app.kubernetes.io/component: {{ .mode }}
    {{- with $r.podAnnotations }}
    annotations:
      {{- toYaml . | nindent 6 }}
    {{- end }}
  spec:
    serviceAccountName: {{ ternary (include "bimguard.repairName" $root) (include "bimguard.scanName" $root) $repair }}
    restartPolicy: Never
    # bimguard runs as PID 1 without a SIGTERM handler, so it only stops at SIGKILL: keep the
    # wait short. Killing the repair at any point is safe (every step is recorded first and the
    # next run continues from the records).
    terminationGracePeriodSeconds: 10
    {{- with $root.Values.imagePullSecrets }}
    imagePullSecrets:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    securityContext:
      runAsNonRoot: true
      runAsUser: 65532
      runAsGroup: 65532
      fsGroup: 65532
      seccompProfile:
        type: RuntimeDefault
    {{- with $r.nodeSelector }}
    nodeSelector:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- with $r.tolerations }}
    tolerations:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- with $r.priorityClassName }}
    priorityClassName: {{ . }}
    {{- end }}
    containers:
    - name: {{ .mode }}
      image: {{ include "bimguard.image" $root | quote }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      # The image's ENTRYPOINT, written out: the command is explicit.
      command: ["bimguard"]
      args:
      {{- if $repair }}
      - repair
      - --apply
      - --namespace={{ $root.Release.Namespace }}
      - --longhorn-namespace={{ $root.Values.longhorn.namespace }}
      # The on-node rewriter and inspector pods run this same image, in their own namespace, as
      # the rewriter's ServiceAccount (no token, no permissions).
      - --image={{ include "bimguard.image" $root }}
      - --service-account={{ include "bimguard.rewriterServiceAccountName" $root }}
      {{- include "bimguard.rewriterArgs" $root | nindent 6 }}
      - --timeout={{ .timeout }}
      - --max-parallel={{ $r.maxParallel }}
      - --log-format=json
      {{- if .exitZeroOnUnfinished }}
      - --exit-zero-on-unfinished
      {{- end }}
      {{- if .evict }}
      - --evict
      {{- end }}
      {{- with $r.longhornVersion }}
      - --longhorn-version={{ . }}
      {{- end }}
      {{- else }}
      - scan
      - --namespace={{ $root.Values.longhorn.namespace }}
      {{- end }}
      {{- range $r.extraArgs }}
      - {{ . | quote }}
      {{- end }}
      env:
      - name: POD_NAMESPACE
        valueFrom:
          fieldRef:
            fieldPath: metadata.namespace
      - name: POD_NAME
        valueFrom:
          fieldRef:
            fieldPath: metadata.name
      {{- if $repair }}
      # Who holds the repair Lease: the Job, not the pod.
      - name: BIMGUARD_REPAIR_IDENTITY
        {{- if .identity }}
        value: {{ .identity | quote }}
        {{- else }}
        valueFrom:
          fieldRef:
            fieldPath: metadata.labels['job-name']
        {{- end }}
      {{- end }}
      {{- with $r.resources }}
      resources:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        runAsNonRoot: true
        runAsUser: 65532
        runAsGroup: 65532
        allowPrivilegeEscalation: false
        readOnlyRootFilesystem: true
        privileged: false
        capabilities:
          drop: ["ALL"]
        seccompProfile:
          type: RuntimeDefault
      volumeMounts:
      - name: tmp
        mountPath: /tmp
    volumes:
    - name: tmp
      emptyDir:
        sizeLimit: 64Mi
{{- end }}
