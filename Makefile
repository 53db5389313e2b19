# The commands a person types. `make help` lists them.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export HYPOTHESIS_PROFILE ?= default

BENCH_VENV := .venv-bench
BENCH_PY := $(BENCH_VENV)/bin/python

.PHONY: help dev test test-rust test-python lint demo crashloop fuzz-store fuzz-codec bench-build bench bench-store bench-hot-path clean

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
	$(VENV)/bin/ruff check python tests scripts benches
	$(VENV)/bin/ruff format --check python tests scripts benches

demo: dev ## run the demo on the debug build
	$(PY) -m usagemeter demo

crashloop: dev ## the long crash loop: 1,000 SIGKILLs per backend
	$(PY) tests/crashloop.py --backend sled --kills 1000
	$(PY) tests/crashloop.py --backend redb --kills 1000

fuzz-store: dev ## the long store fuzz: 2,000 damaged stores per backend (make test runs 100)
	USAGEMETER_FUZZ_CASES=2000 $(PY) -m pytest tests/test_store_fuzz.py -q

FUZZ_RUNS ?= 2000000
# cargo-fuzz needs nightly compiler flags: without a nightly toolchain,
# `RUSTC_BOOTSTRAP=1 cargo fuzz run codec` on stable should do (only nightly was tried here).
fuzz-codec: ## cargo fuzz on the record decoders (nightly toolchain, cargo install cargo-fuzz)
	cargo +nightly fuzz run codec -- -runs=$(FUZZ_RUNS)

bench-build: $(VENV)/bin/activate ## release build installed into .venv-bench (benchmarks only)
	test -x $(BENCH_PY) || $(PYTHON) -m venv $(BENCH_VENV)
	rm -rf target/wheels
	$(VENV)/bin/maturin build --release --quiet --interpreter $(BENCH_PY)
	$(BENCH_PY) -m pip install --quiet --force-reinstall --no-deps target/wheels/*.whl

bench: bench-build ## Python API vs reference, sqlite, redis and the native floor; writes benches/RESULTS.md
	$(BENCH_PY) -m pip install --quiet "redis>=5" || echo "no redis client: the redis figures are skipped"
	$(BENCH_PY) benches/run.py --write-results

bench-store: bench-build ## snapshot/reopen time of 1,000,000 records and throughput with snapshots
	$(BENCH_PY) benches/bench_store.py

bench-hot-path: bench-build ## ns per call warm and cold, and instructions per call (needs valgrind)
	$(BENCH_PY) benches/hot_path.py
	$(BENCH_PY) benches/instructions.py

clean: ## remove build outputs
	rm -rf target $(VENV) $(BENCH_VENV) .pytest_cache .mypy_cache .hypothesis
