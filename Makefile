# The two set-up commands (README): `make demo` runs the main job on the embedded
# default; `make test` installs everything and runs the checks and the test suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest system-deps worker-venv bench bench-fleet infra-check clean

$(STAMP): pyproject.toml requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/infrabackup demo

system-deps:
	bash scripts/install-system-deps.sh

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

# The second venv: Python 3.13 and the real Functions worker, for tests/test_worker_host*.py.
worker-venv:
	bash scripts/worker-venv.sh

pytest: $(STAMP) system-deps worker-venv
	$(BIN)/pytest

test: system-deps lint typecheck pytest

infra-check:
	bash scripts/check-infra.sh

# The benchmark (not a test): infrabackup beside smbclient and restic, same data and share.
bench: $(STAMP) system-deps
	$(BIN)/python -m bench.bench $(BENCH_ARGS)

# The fleet benchmark (not a test): 200 stamps x 2 backups/day on one app, against Azurite;
# FLEET_ARGS="--stamps 50 --workers 4" to change it (docs/FLEET.md#sizing).
bench-fleet: $(STAMP)
	$(BIN)/python -m bench.fleet $(FLEET_ARGS)

clean:
	rm -rf $(VENV) .venv-worker .infrabackup-demo .pytest_cache .mypy_cache .ruff_cache
