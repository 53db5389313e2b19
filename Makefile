# The commands a person types. `make help` lists them.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export HYPOTHESIS_PROFILE ?= default

.PHONY: help dev test test-rust test-python lint demo clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(VENV)/bin/activate: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "maturin>=1.9.4,<2" pytest pytest-timeout hypothesis mypy ruff
	touch $@

dev: $(VENV)/bin/activate ## build the extension (debug) into .venv
	$(VENV)/bin/maturin develop --quiet

test: test-rust test-python ## run every test: cargo, pytest, stub and type checks

test-rust: ## cargo tests of the Rust core
	cargo test --quiet --lib

test-python: dev ## pytest (hypothesis profile from HYPOTHESIS_PROFILE), stubtest, mypy --strict
	$(PY) -m mypy.stubtest usagemeter._core
	$(PY) -m mypy
	$(PY) -m pytest

lint: $(VENV)/bin/activate ## rustfmt, clippy -D warnings, ruff
	cargo fmt --check
	cargo clippy --quiet --all-targets -- -D warnings
	$(VENV)/bin/ruff check python tests scripts
	$(VENV)/bin/ruff format --check python tests scripts

demo: dev ## run the demo on the debug build
	$(PY) -m usagemeter demo

clean: ## remove build outputs
	rm -rf target $(VENV) .pytest_cache .mypy_cache .hypothesis
