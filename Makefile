# Two commands on a fresh clone: `make demo` and `make test`. Each creates .venv if missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Every dependency, build backend included, pinned with its hashes (`make lock` renews them).
LOCK := requirements/dev.lock
LOCK_FLAGS := --quiet --generate-hashes --strip-extras --allow-unsafe --no-emit-index-url \
	--no-emit-find-links --unsafe-package eventplatform

.PHONY: demo test lint typecheck audit check bench bench-quick lock clean

# The locked set first (pip refuses any file whose hash differs), then the project itself,
# editable, with nothing more fetched: its build backend is in the lock.
$(STAMP): pyproject.toml $(LOCK)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/eventplatform --log-level WARNING demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# Known vulnerabilities in the locked set (asks PyPI's advisory database).
audit: $(STAMP)
	$(BIN)/pip-audit --strict --disable-pip --require-hashes -r $(LOCK) -r requirements/main.lock

check: lint typecheck audit test

# Re-resolve both lock files from pyproject.toml (needs pip-tools; run after changing deps).
lock: $(STAMP)
	$(BIN)/python -m pip install --quiet pip-tools
	$(BIN)/pip-compile $(LOCK_FLAGS) --build-deps-for wheel -o requirements/main.lock pyproject.toml
	$(BIN)/pip-compile $(LOCK_FLAGS) --build-deps-for editable --extra dev -o $(LOCK) pyproject.toml
	sed -i '/^eventplatform @ /,+1d' requirements/main.lock $(LOCK)  # the project is the work tree

bench: $(STAMP)
	$(BIN)/python -m benchmarks

bench-quick: $(STAMP)
	$(BIN)/python -m benchmarks --quick

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info
