# EMR on EKS (docs/emr-on-eks.md): `make run` submits the job with the EMR profile and waits for it.
#   EMR_PROFILE  the YAML profile (default: $FRUITLENS_EMR_PROFILE; start from examples/emr-profile.yaml)
#   EMR_INPUT / EMR_OUTPUT  s3:// URIs (default: the profile's input/output)
#   ARGS         more `fruitlens emr submit` options, e.g. ARGS="--pca-k 50 --executors 4"
EMR_PROFILE ?= $(FRUITLENS_EMR_PROFILE)
EMR_INPUT ?=
EMR_OUTPUT ?=
EMR_FLAGS = $(if $(EMR_PROFILE),--profile "$(EMR_PROFILE)")

##@ EMR on EKS

.PHONY: run
run: setup ## submit the job to EMR on EKS with EMR_PROFILE and wait for it (exit 1 if it fails)
	$(VENV)/bin/fruitlens emr submit $(EMR_INPUT) $(EMR_OUTPUT) $(EMR_FLAGS) --wait $(ARGS)

.PHONY: emr-dry-run
emr-dry-run: ## print the StartJobRun request `make run` would send; calls nothing
	$(VENV)/bin/fruitlens emr submit $(EMR_INPUT) $(EMR_OUTPUT) $(EMR_FLAGS) --dry-run $(ARGS)

.PHONY: emr-iam-policy
emr-iam-policy: ## print the job role's least-privilege policy and IRSA trust policy from EMR_PROFILE
	$(VENV)/bin/fruitlens emr iam-policy $(EMR_FLAGS)
	$(VENV)/bin/fruitlens emr trust-policy $(EMR_FLAGS)

.PHONY: emr-setup
emr-setup: setup ## create namespace, RBAC, role and virtual cluster (EKS_CLUSTER=name, EMR_PROFILE=file)
	@[ -n "$(EKS_CLUSTER)" ] && [ -n "$(EMR_PROFILE)" ] || { echo "emr-setup: give EKS_CLUSTER=... and EMR_PROFILE=... (or export FRUITLENS_EMR_PROFILE)"; exit 2; }
	bash deploy/emr-on-eks/setup.sh "$(EKS_CLUSTER)" "$(EMR_PROFILE)"

.PHONY: emr-check-access
emr-check-access: ## ask IAM's policy simulator whether the job role may make the job's first S3 calls
	$(VENV)/bin/fruitlens emr check-access $(EMR_INPUT) $(EMR_OUTPUT) $(EMR_FLAGS)
