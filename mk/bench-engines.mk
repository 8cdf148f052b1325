##@ Faster engines (opt-in)

BENCH_SAMPLE ?= $(SHARED)/data/fruits-360-sample
.PHONY: bench-engines
bench-engines: setup ## speed + fidelity of int8 and --image-size variants vs fp32 224 (BENCH_SAMPLE, ARGS)
	$(VENV)/bin/fruitlens bench-engines "$(BENCH_SAMPLE)" --json .bench/engines.json $(ARGS)
