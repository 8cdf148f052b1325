# Container images (docs/docker.md): `make build`, `make push`, `make docker-run`, `make base-local`.
#   FLAVOUR=oss  apache/spark python3 base, Spark on Kubernetes (user 185 `spark`)
#   FLAVOUR=emr  EMR on EKS Spark base (user hadoop): EMR_BASE, emr-spark-8.0.0's by default (Spark 4.0); an
#                emr-7.x base (Spark 3.5) for emr-7.x releases (src/fruitlens/deploy/emr/releases.py)
#   VARIANT=full (default, TensorFlow included) | slim (no TensorFlow; TAG defaults to FLAVOUR-slim)
# BASE_IMAGE defaults to the flavour's real base; where it cannot be pulled (no registry reachable) a
# local Debian-based stand-in is used instead: LOCAL_BASE (`make base-local`) for oss, EMR_LOCAL_BASE
# (`make base-emr-local`: the EMR base's contract and its Spark line's Spark, Scala and Python, see
# docker/Dockerfile.base-emr-local) for emr. The image gets the label fruitlens.spark.version: the Spark
# of the base it was built on, which `fruitlens emr submit` and `make validate-image` compare with the
# EMR release. `make validate-image` checks a built image against its flavour's contract
# (docker/validate_image.py) and, for emr, against the EMR profile's release (EMR_PROFILE).
export DOCKER_BUILDKIT := 0

FLAVOUR ?= oss
VARIANT ?= full
IMAGE ?= fruitlens
TAG ?= $(FLAVOUR)$(if $(filter slim,$(VARIANT)),-slim)
LOCAL_BASE ?= fruitlens-spark-base:local
OSS_BASE ?= apache/spark:4.0.1-scala2.13-java17-python3-ubuntu
EMR_BASE ?= public.ecr.aws/emr-on-eks/spark/emr-spark-8.0.0:latest
# The Spark line of EMR_BASE, which picks its stand-in: emr-7 (Spark 3.5) for an emr-7.x base, else emr-spark-8.
EMR_LINE ?= $(if $(findstring /emr-7.,$(EMR_BASE)),emr-7,emr-spark-8)
EMR_LOCAL_BASE ?= fruitlens-spark-base:$(EMR_LINE)-local
FALLBACK_BASE = $(if $(filter emr,$(FLAVOUR)),$(EMR_LOCAL_BASE),$(LOCAL_BASE))
FALLBACK_BUILD = $(if $(filter emr,$(FLAVOUR)),bash docker/base-emr-local.sh $(EMR_LINE),bash docker/base-local.sh)
BASE_IMAGE ?= $(if $(filter emr,$(FLAVOUR)),$(EMR_BASE),$(OSS_BASE))
WITH_S3A ?= false
DOCKER_BUILD_ARGS ?=
DOCKER_RUN_ARGS ?=
REGISTRY ?=
WEIGHTS_FILE := mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5
DOCKER_STAGE := build/docker
# What the image's model stage runs to export the weights to ONNX (not the whole wheel: see Dockerfile.oss).
# tests/unit/test_engines.py checks that these are all it imports.
EXPORTER_FILES := fruitlens/__init__.py fruitlens/errors.py fruitlens/console.py fruitlens/redact.py \
  fruitlens/progress.py fruitlens/engines/__init__.py fruitlens/engines/model.py fruitlens/engines/runtime.py
# Reproducible wheel bytes: an unchanged source gives an unchanged wheel, so Docker reuses the layer.
WHEEL_EPOCH := 315532800

ifeq ($(filter $(FLAVOUR),oss emr),)
$(error FLAVOUR must be oss or emr, got '$(FLAVOUR)')
endif
ifeq ($(filter $(VARIANT),full slim),)
$(error VARIANT must be full or slim, got '$(VARIANT)')
endif

##@ Containers

.PHONY: base-local
base-local: ## build the local Spark base (debootstrap Debian + JRE 17 + Python 3.11 + pyspark) as LOCAL_BASE
	bash docker/base-local.sh "$(LOCAL_BASE)"

.PHONY: base-emr-local
base-emr-local: ## build the local EMR on EKS stand-in base of EMR_LINE (emr-spark-8|emr-7) as EMR_LOCAL_BASE
	bash docker/base-emr-local.sh $(EMR_LINE) "$(EMR_LOCAL_BASE)"

.PHONY: validate-image
validate-image: ## check IMAGE:TAG against its flavour's contract and, for emr, the EMR profile's release (EMR_PROFILE)
	@release=$$($(VENV)/bin/fruitlens emr profile --get release_label $(EMR_FLAGS)) || exit 1; \
	$(PY) docker/validate_image.py "$(IMAGE):$(TAG)" $(if $(CONTRACT),--contract $(CONTRACT)) $(if $(NO_APP),--no-app) \
	  --release "$$release"

.PHONY: runtime-lock
runtime-lock: ## regenerate requirements/runtime.lock and runtime-slim.lock (the images' pins) from requirements.lock
	$(PY) docker/runtime_lock.py

.PHONY: docker-stage
docker-stage: ## stage the build inputs in build/docker: dependency wheels, fruitlens wheel, exporter modules, weights
	@mkdir -p $(DOCKER_STAGE)/wheels $(DOCKER_STAGE)/dist $(DOCKER_STAGE)/weights
	$(PY) docker/runtime_lock.py --check
	grep -viE '^(pyspark|py4j)==' requirements/runtime.lock > $(DOCKER_STAGE)/deps.txt
	$(VENV)/bin/pip download -q --no-deps --only-binary=:all: -d $(DOCKER_STAGE)/wheels -r $(DOCKER_STAGE)/deps.txt
	rm -f $(DOCKER_STAGE)/dist/fruitlens-*.whl
	SOURCE_DATE_EPOCH=$(WHEEL_EPOCH) $(VENV)/bin/pip wheel -q --no-deps -w $(DOCKER_STAGE)/dist .
	rm -rf $(DOCKER_STAGE)/exporter && mkdir -p $(DOCKER_STAGE)/exporter
	cd src && cp --parents $(EXPORTER_FILES) ../$(DOCKER_STAGE)/exporter/
	@w="$(DOCKER_STAGE)/weights/$(WEIGHTS_FILE)"; \
	for src in "$${KERAS_HOME:-$$HOME/.keras}/models/$(WEIGHTS_FILE)" "$(SHARED)/models/$(WEIGHTS_FILE)"; do \
	  if [ -f "$$src" ]; then cmp -s "$$src" "$$w" || cp "$$src" "$$w"; break; fi; \
	done; \
	[ -f "$$w" ] || { echo "docker-stage: $(WEIGHTS_FILE) not found in Keras' cache nor $(SHARED)/models (run make setup)"; exit 1; }; \
	chmod a+rX,go-w $(DOCKER_STAGE)/weights "$$w"  # the image's COPY keeps these modes: read-only for the job

.PHONY: build
build: docker-stage ## build IMAGE:TAG for FLAVOUR (oss|emr) and VARIANT (full|slim) on BASE_IMAGE; prints build time and size
	@base="$(BASE_IMAGE)"; \
	if ! docker image inspect "$$base" >/dev/null 2>&1 && ! docker pull -q "$$base" >/dev/null 2>&1; then \
	  if [ "$(origin BASE_IMAGE)" != file ] && [ "$$base" != "$(FALLBACK_BASE)" ]; then \
	    echo "build: BASE_IMAGE $$base cannot be found or pulled"; exit 1; fi; \
	  echo "build: $$base cannot be pulled here: using the local stand-in base $(FALLBACK_BASE)"; base="$(FALLBACK_BASE)"; \
	  docker image inspect "$$base" >/dev/null 2>&1 || $(FALLBACK_BUILD) "$$base" || exit 1; \
	fi; \
	spark=$$($(PY) docker/spark_version.py "$$base") || exit 1; \
	start=$$(date +%s); \
	docker build -f docker/Dockerfile.$(FLAVOUR) --build-arg BASE_IMAGE="$$base" \
	  $(if $(filter oss,$(FLAVOUR)),--build-arg WITH_S3A=$(WITH_S3A)) --build-arg VARIANT=$(VARIANT) \
	  --label org.opencontainers.image.source=fruitlens --label fruitlens.flavour=$(FLAVOUR) \
	  --label fruitlens.variant=$(VARIANT) --label fruitlens.spark.version="$${spark% *}" \
	  $(if $(filter oss,$(FLAVOUR)),--label fruitlens.s3a=$(WITH_S3A)) \
	  --label fruitlens.scala.version="$${spark#* }" \
	  --label fruitlens.base="$$base" $(DOCKER_BUILD_ARGS) -t "$(IMAGE):$(TAG)" . || exit 1; \
	size=$$(docker image inspect -f '{{.Size}}' "$(IMAGE):$(TAG)"); \
	echo "build: $(IMAGE):$(TAG) (FLAVOUR=$(FLAVOUR) VARIANT=$(VARIANT), base $$base, Spark $$spark) in $$(( $$(date +%s) - start )) s, size $$size bytes ($$(( size / 1048576 )) MiB)"

.PHONY: image-layers
image-layers: ## size of each layer of IMAGE:TAG and what made it (SINCE=old image: what is new; GZIP=1: pull sizes)
	$(PY) docker/layer_sizes.py "$(IMAGE):$(TAG)" $(if $(SINCE),--since "$(SINCE)") $(if $(GZIP),--gzip) $(if $(JSON),--json "$(JSON)")

.PHONY: push
push: ## push IMAGE:TAG (to REGISTRY/IMAGE:TAG if REGISTRY is set), then print the pushed repo@sha256 digest
	@ref="$(IMAGE):$(TAG)"; target="$(if $(REGISTRY),$(REGISTRY)/$(IMAGE):$(TAG),$(IMAGE):$(TAG))"; \
	s3a=$$(docker image inspect -f '{{index .Config.Labels "fruitlens.s3a"}}' "$$ref" 2>/dev/null || true); \
	if [ "$$s3a" = false ] && [ "$(ALLOW_NO_S3A)" != 1 ]; then \
	  echo "push: $$ref was built without the S3A connector (WITH_S3A=false): on a cluster, s3a:// runs fail in"; \
	  echo "push: --train, --report and PCAs over 250k rows (ClassNotFoundException: S3AFileSystem)."; \
	  echo "push: rebuild with \`make build WITH_S3A=true\` (needs Maven Central), or push anyway with ALLOW_NO_S3A=1"; \
	  exit 1; fi; \
	[ "$$ref" = "$$target" ] || docker tag "$$ref" "$$target"; \
	registry="$${target%%/*}"; \
	if [[ "$$registry" =~ ^[0-9]+\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$$ ]]; then \
	  $(PY) docker/ecr_login.py "$$registry"; \
	fi; \
	mkdir -p build; docker push "$$target" | tee build/push.log; \
	digest=$$(sed -nE 's/.*digest: (sha256:[0-9a-f]{64}).*/\1/p' build/push.log | tail -1); \
	[ -n "$$digest" ] || { echo "push: no digest in docker push's output (build/push.log)"; exit 1; }; \
	echo "push: pushed $${target%:*}@$$digest"; \
	echo "push: pin it in the EMR profile (a tag can move, a digest cannot): image: $${target%:*}@$$digest"; \
	spark=$$(docker image inspect -f '{{index .Config.Labels "fruitlens.spark.version"}}' "$$ref" 2>/dev/null || true); \
	if [ -n "$$spark" ] && [ "$$spark" != "<no value>" ]; then \
	  echo "push: and the Spark it was built on, which emr submit checks against release_label: image_spark: $$spark"; fi

.PHONY: docker-run
docker-run: ## run the whole job in the container (Spark local mode, no network) on INPUT into OUTPUT
	@docker image inspect "$(IMAGE):$(TAG)" >/dev/null 2>&1 || $(MAKE) --no-print-directory build
	@in="$$(realpath "$(INPUT)")"; out="$$(realpath -m "$(OUTPUT)")"; \
	[ -d "$$in" ] || { echo "docker-run: INPUT $(INPUT) is not a folder"; exit 1; }; \
	mkdir -p "$$out"; \
	uid=$$(docker run --rm --network none --entrypoint id "$(IMAGE):$(TAG)" -u); \
	if [ "$$(id -u)" = 0 ]; then chown "$$uid" "$$out"; elif [ ! -w "$$out" ] || [ "$$(stat -c %u "$$out")" != "$$uid" ]; then \
	  chmod a+rwx "$$out"; fi; \
	echo "docker-run: $(IMAGE):$(TAG) $$in -> $$out (uid $$uid, --network none)"; \
	docker run --rm --network none --hostname fruitlens --add-host fruitlens:127.0.0.1 \
	  -v "$$in":/data/input:ro -v "$$out":/data/output $(DOCKER_RUN_ARGS) "$(IMAGE):$(TAG)" \
	  fruitlens run /data/input /data/output --overwrite --no-progress $(ARGS)
