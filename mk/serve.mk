##@ Serving (`fruitlens serve`)

BENCH_SAMPLE ?= $(SHARED)/data/fruits-360-sample
SERVE_OUT ?= .bench/serve-out
SERVE_SECONDS ?= 20
$(SERVE_OUT)/predictor/predictor.json:
	$(VENV)/bin/fruitlens run "$(BENCH_SAMPLE)" "$(SERVE_OUT)" --train --no-progress

.PHONY: bench-serve serve-local
bench-serve: setup $(SERVE_OUT)/predictor/predictor.json ## load-test `fruitlens serve` (1/8/32/64 clients + hostile) vs the engine's ceiling; on a quiet machine
	$(PY) -m fruitlens.bench.serve "$(SERVE_OUT)" "$(BENCH_SAMPLE)/Test" --seconds $(SERVE_SECONDS) --json .bench/serve.json $(ARGS)

serve-local: setup $(SERVE_OUT)/predictor/predictor.json ## serve the bench's trained OUTPUT on http://127.0.0.1:8080/
	$(VENV)/bin/fruitlens serve "$(SERVE_OUT)" --host 127.0.0.1 --port 8080

SERVE_IMAGE ?= fruitlens:serve
SERVE_BASE ?= debian:bookworm-slim
SERVE_FALLBACK_BASE ?= fruitlens-debian:bookworm
# The wheels are for the base's python3 (bookworm: 3.11), not the venv's: a fresh machine may differ.
SERVE_PYTHON ?= 3.11
SERVE_PLATFORMS ?= manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 any
.PHONY: build-serve
build-serve: ## build the slim serving image SERVE_IMAGE (no Spark/JVM/TensorFlow/boto3); prints its size
	@rm -rf dist/serve/wheels; mkdir -p dist/serve/wheels dist/serve/dist
	$(VENV)/bin/pip download -q --no-deps --only-binary=:all: -d dist/serve/wheels -r requirements/serve.lock \
	  --implementation cp --python-version $(SERVE_PYTHON) --abi cp$(subst .,,$(SERVE_PYTHON)) --abi abi3 --abi none \
	  $(foreach p,$(SERVE_PLATFORMS),--platform $(p))
	rm -f dist/serve/dist/fruitlens-*.whl
	SOURCE_DATE_EPOCH=315532800 $(VENV)/bin/pip wheel -q --no-deps -w dist/serve/dist .
	@base="$(SERVE_BASE)"; \
	if ! docker image inspect "$$base" >/dev/null 2>&1 && ! docker pull -q "$$base" >/dev/null 2>&1; then \
	  echo "build-serve: $$base cannot be pulled here: using $(SERVE_FALLBACK_BASE) (docker/base-local.sh makes it)"; \
	  base="$(SERVE_FALLBACK_BASE)"; \
	  docker image inspect "$$base" >/dev/null 2>&1 || ROOTFS_IMAGE="$$base" bash docker/base-local.sh "$(LOCAL_BASE)" || exit 1; \
	fi; \
	DOCKER_BUILDKIT=0 docker build --network host -q -f docker/Dockerfile.serve --build-arg BASE_IMAGE="$$base" -t "$(SERVE_IMAGE)" . >/dev/null || exit 1; \
	size=$$(docker image inspect -f '{{.Size}}' "$(SERVE_IMAGE)"); \
	echo "build-serve: $(SERVE_IMAGE) on $$base, size $$size bytes ($$(( size / 1048576 )) MiB)"
