{{/*
The operator's pod template, shared by the Deployment (one replica) and the
StatefulSet (a kopf peering of several).
*/}}
{{- define "helixrun.operator.podTemplate" -}}
metadata:
  labels:
    {{- include "helixrun.labels" . | nindent 4 }}
    app.kubernetes.io/component: operator
    {{- with .Values.operator.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    # Pool changes restart the operator: it reads pools.yaml once at startup.
    checksum/pools: {{ include (print $.Template.BasePath "/pools-configmap.yaml") . | sha256sum }}
    {{- with .Values.operator.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "helixrun.operator.serviceAccountName" . }}
  automountServiceAccountToken: true
  {{- with .Values.operator.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.operator.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  terminationGracePeriodSeconds: {{ .Values.operator.terminationGracePeriodSeconds }}
  securityContext:
    {{- toYaml .Values.operator.podSecurityContext | nindent 4 }}
  containers:
    - name: operator
      image: {{ include "helixrun.operator.image" . | quote }}
      imagePullPolicy: {{ .Values.operator.image.pullPolicy }}
      command: ["helixrun", "operator"]
      args:
        {{- if .Values.operator.watchNamespaces }}
        {{- range .Values.operator.watchNamespaces }}
        - --namespace={{ . }}
        {{- end }}
        {{- else }}
        - --all-namespaces
        {{- end }}
        {{- if include "helixrun.operator.peering" . }}
        - --peering={{ .Values.operator.peering.name }}
        # Distinct per pod: 0, -1, -2, ... by ordinal, so pod 0 acts and scaling never hands over.
        - --priority=-$(HELIXRUN_OPERATOR_ORDINAL)
        {{- else }}
        - --standalone
        {{- end }}
        - --liveness=http://0.0.0.0:{{ .Values.operator.healthPort }}/healthz
        {{- if .Values.operator.verbose }}
        - --verbose
        {{- end }}
        {{- range .Values.operator.extraArgs }}
        - {{ . | quote }}
        {{- end }}
      env:
        {{- if include "helixrun.operator.peering" . }}
        - name: HELIXRUN_OPERATOR_ORDINAL
          valueFrom:
            fieldRef:
              fieldPath: metadata.labels['apps.kubernetes.io/pod-index']
        {{- end }}
        - name: HELIXRUN_POOLS_FILE
          value: /etc/helixrun/pools/pools.yaml
        - name: HELIXRUN_BACKEND
          value: {{ .Values.backend | quote }}
        - name: HELIXRUN_TRAINER_IMAGE
          value: {{ include "helixrun.trainer.image" . | quote }}
        - name: HELIXRUN_TRAINER_SERVICE_ACCOUNT
          value: {{ .Values.trainer.serviceAccount.name | quote }}
        {{- if not .Values.rbac.create }}
        - name: HELIXRUN_CREATE_TRAINER_ACCOUNT
          value: "false"
        {{- end }}
        - name: HELIXRUN_MODEL_CACHE_SIZE
          value: {{ .Values.trainer.modelCache.size | quote }}
        {{- with .Values.trainer.modelCache.storageClassName }}
        - name: HELIXRUN_MODEL_CACHE_STORAGE_CLASS
          value: {{ . | quote }}
        {{- end }}
        - name: HELIXRUN_OPERATOR_METRICS_PORT
          value: {{ .Values.operator.metrics.port | quote }}
        {{- with .Values.operator.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      ports:
        - name: metrics
          containerPort: {{ .Values.operator.metrics.port }}
          protocol: TCP
        - name: healthz
          containerPort: {{ .Values.operator.healthPort }}
          protocol: TCP
      startupProbe:
        httpGet:
          path: /healthz
          port: healthz
        periodSeconds: {{ .Values.operator.startupProbe.periodSeconds }}
        failureThreshold: {{ .Values.operator.startupProbe.failureThreshold }}
      livenessProbe:
        httpGet:
          path: /healthz
          port: healthz
        periodSeconds: {{ .Values.operator.livenessProbe.periodSeconds }}
        timeoutSeconds: {{ .Values.operator.livenessProbe.timeoutSeconds }}
        failureThreshold: {{ .Values.operator.livenessProbe.failureThreshold }}
      readinessProbe:
        httpGet:
          path: /healthz
          port: healthz
        periodSeconds: {{ .Values.operator.readinessProbe.periodSeconds }}
        timeoutSeconds: {{ .Values.operator.readinessProbe.timeoutSeconds }}
        failureThreshold: {{ .Values.operator.readinessProbe.failureThreshold }}
      resources:
        {{- toYaml .Values.operator.resources | nindent 8 }}
      securityContext:
        {{- toYaml .Values.operator.containerSecurityContext | nindent 8 }}
      volumeMounts:
        - name: pools
          mountPath: /etc/helixrun/pools
          readOnly: true
        - name: tmp
          mountPath: /tmp
  volumes:
    - name: pools
      configMap:
        name: {{ include "helixrun.pools.fullname" . }}
    # The root filesystem is read-only; Python and kopf write only here.
    - name: tmp
      emptyDir:
        sizeLimit: 64Mi
  {{- with .Values.operator.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.operator.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.operator.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
