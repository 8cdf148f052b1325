SHELL = /usr/bin/env bash -o pipefail
.SHELLFLAGS = -ec
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
SHARED ?= ../shared
# The embedded default input: `make data` puts the public dataset in data/fruits-360; where it is
# missing (CI, a fresh clone) the sample that ships beside the project is used.
INPUT ?= $(firstword $(wildcard data/fruits-360) $(SHARED)/data/fruits-360-sample)
OUTPUT ?= out/fruits-360
ARGS ?=

##@ Local

.PHONY: help
help: ## show this help
	@awk 'BEGIN {FS = ":.*##"} /^##@/ {printf "\n%s\n", substr($$0, 5)} /^[a-zA-Z0-9_-]+:.*?##/ {printf "  %-16s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: setup
setup: ## install Java, the pinned Python deps (.venv) and the weights
	bash scripts/setup.sh

.PHONY: setup-spark35
setup-spark35: setup ## a second venv, .venv-spark35: pyspark 3.5 (EMR 7.x's Spark), else the same pins (make test does it)
	bash scripts/setup-spark35.sh

.PHONY: run-local
run-local: setup ## run the whole job on INPUT (default: the embedded sample) into OUTPUT
	$(VENV)/bin/fruitlens run "$(INPUT)" "$(OUTPUT)" --overwrite $(ARGS)

.PHONY: test-tools
test-tools: setup ## set up what the deployment tests use: Docker engine, S3 server, helm (.ci/setup.d)
	for step in .ci/setup.d/*.sh; do echo "test-tools: $$step"; bash "$$step"; done

.PHONY: lint
lint: setup ## ruff over the whole tree (rules: [tool.ruff] in pyproject.toml)
	$(VENV)/bin/ruff check .

.PHONY: test
test: test-tools lint ## lint, then every test (unit, end to end, Docker, S3, Helm; slow ones included)
	$(VENV)/bin/pytest -q --durations=12 tests $(ARGS)

.PHONY: test-fast
test-fast: setup ## the fast tests: tests/unit, then tests/deploy's without Docker or a cluster (seconds each)
	$(VENV)/bin/pytest -q tests/unit $(ARGS)
	$(VENV)/bin/pytest -q -m "not slow and not docker" tests/deploy $(ARGS)

BENCH_INPUT ?= $(SHARED)/data/fruits-360-sample/Test
BENCH_ARGS ?= --baseline --variants $(SHARED)/data/fruits-360-sample
SCALE_DIR ?= .bench/scale
.PHONY: bench
bench: setup scale-set ## ceilings (engine, decode), opt-in engines, then the pipeline vs the common approach on 2,170 and 19,611 photos
	$(VENV)/bin/fruitlens bench "$(BENCH_INPUT)" "$(SCALE_DIR)/x3" --workdir .bench --json .bench/bench.json $(BENCH_ARGS)

.PHONY: scale-set
scale-set: setup ## make 6,537 / 13,074 / 19,611 / 91,518-photo sets from the sample (flips, rotations, crops, colour shifts) in SCALE_DIR
	$(PY) bench/make_scale_set.py "$(SHARED)/data/fruits-360-sample" "$(SCALE_DIR)" --copies 14 --levels 1 2 3

.PHONY: bench-scale
bench-scale: setup scale-set ## the whole run at 6.5k -> 20k -> 90k photos: time, images/s, stage split, peak RSS
	$(VENV)/bin/fruitlens bench "$(SCALE_DIR)/x1" "$(SCALE_DIR)/x3" "$(SCALE_DIR)/x14" --skip-keras --workdir .bench --json .bench/scale.json $(ARGS)

.PHONY: bench-grow
bench-grow: setup scale-set ## a daily grow run: 300 photos clean, +300 on 13k and on 91k committed (split, equal to --pca-exact), then bench-plan's figures: .bench/grow.json
	$(PY) bench/grow_bench.py "$(SCALE_DIR)" --work .bench/grow --json .bench/grow.json $(ARGS)

.PHONY: bench-resume
bench-resume: setup ## resume/grow figures on the sample copied twice: kill at half + rerun, +300 photos, concurrent run
	$(VENV)/bin/python bench/resume_bench.py --json .bench/resume.json $(ARGS)

.PHONY: data
data: ## download the public Fruits-360 dataset into data/fruits-360 (needs internet)
	bash scripts/fetch-data.sh data/fruits-360

.PHONY: lock
lock: ## re-pin requirements.lock from the current venv
	$(VENV)/bin/pip freeze --exclude-editable | grep -v '^fruitlens' | sed '1i # Pinned runtime + test dependencies (Python 3.11, linux x86_64). Regenerate: make lock' > requirements.lock

# Deployment targets (docker, k8s, emr) live beside this file, one fragment per concern.
include $(sort $(wildcard mk/*.mk))
