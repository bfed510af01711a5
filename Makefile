# cai-ray: every target sets up the virtual environment first (idempotent; seconds when done).
VENV ?= .venv
PY := $(VENV)/bin/python
export TOKENIZERS_PARALLELISM := false

.PHONY: setup run run-tiny test test-unit test-slow bench lint clean
setup:
	@bash scripts/setup.sh

run: setup                     ## the default job, every stage, SmolLM2-135M-Instruct on this machine
	$(VENV)/bin/cai-ray run $(ARGS)

run-tiny: setup                ## the tiny job (random model, few prompts): a smoke test in minutes
	$(VENV)/bin/cai-ray run tiny $(ARGS)

test: setup                    ## unit + integration tests (real Ray, vLLM, DeepSpeed on the tiny model)
	$(PY) -m pytest tests $(ARGS)

test-unit: setup
	$(PY) -m pytest tests/unit $(ARGS)

test-slow: setup               ## SmolLM2 checks and long runs; not in CI
	$(PY) -m pytest tests -m slow $(ARGS)

bench: setup                   ## every benchmark; JSON + tables under benchmarks/results/
	CAI_RAY_EXTRAS=test,bench bash scripts/setup.sh
	bash benchmarks/run_all.sh

lint: setup                    ## ruff, and the import layers (import-linter contracts in pyproject.toml)
	$(VENV)/bin/ruff check cai_ray tests benchmarks
	$(VENV)/bin/lint-imports

clean:
	rm -rf runs .pytest_cache
