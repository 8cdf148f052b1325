##@ Planning and setup (issue 24)

PLAN_SIZES ?= 1000000 10000000
PLAN_S3_OBJECTS ?= 200000
.PHONY: bench-plan
bench-plan: setup ## the driver's listing + planning + tasks at 1M and 10M synthetic photos, and a real 200k-object S3 listing (SeaweedFS) sequential vs parallel: .bench/plan.json
	PYTHONPATH=src $(PY) -m fruitlens.bench.planning --sizes $(PLAN_SIZES) --s3-objects $(PLAN_S3_OBJECTS) --workdir .bench/plan --json .bench/plan.json $(ARGS)

.PHONY: bench-setup
bench-setup: setup ## setup's share of clean 300-photo runs, its parts; BASELINE_SRC=<other checkout>/src alternates with that code: .bench/setup.json
	PYTHONPATH=src $(PY) -m fruitlens.bench.setup --rounds 3 --spark-workers $(if $(BASELINE_SRC),--baseline-src $(BASELINE_SRC)) --json .bench/setup.json $(ARGS)
