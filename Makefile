# pyasync_c developer targets.
#
#   make build    in-place build of both extensions for $(PYTHON)
#   make deps     install what a fresh machine lacks (apt: libuv1-dev, pkg-config; pip: setuptools, pytest)
#   make test     build + integration test deps (.ci/integration-deps) + pytest on every
#                 Python 3.11/3.12/3.13 present + CPython test_asyncio conformance
#   make asan     ASan+UBSan build in build/asan (not in place) + full pytest with it,
#                 then tests/leakcheck.py --smoke, tests/fuzz_primitives.py and 60 s of tests/fuzz_tls.py;
#                 any sanitizer report fails it
#                 (PYTHON=/path/to/python3.12 works too: per-ABI .so names)
#   make leaks    refcount-leak check (tests/leakcheck.py) on Debian's python3.11-dbg,
#                 extension built in build/dbg, pytest in the venv build/dbg-venv
#   make bench    benchmarks/run.py
#   make demo     python -m pyasync_c.demo
#   make clean    remove build products (in-place .so files, build/lib*, build/temp*,
#                 build/asan*, build/dbg and build/dbg-tmp; the dbg venv is kept)
#
# Variables: PYTHON, PYTEST_ARGS, TEST_EXTRA, ASAN_PYTEST_ARGS, ASAN_TESTS,
# DBG_PYTHON, LEAK_ARGS (see below), e.g.
#   make asan ASAN_TESTS=tests/test_loop_api.py
#   make leaks LEAK_ARGS="--no-pytest --only gather --rounds 10"

PYTHON      ?= python3
# Every supported interpreter on this machine (see .ci/pythons).
PYTHONS     ?= $(shell bash .ci/pythons)
PYTEST_ARGS ?= -q
# Extra commands `make test` runs after pytest and before the conformance run.
TEST_EXTRA  ?=

# ---- sanitizers -----------------------------------------------------------
ASAN_DIR         := build/asan
ASAN_TMP         := build/asan-tmp
# Wall-clock assertions do not hold at ASan speed: those tests are left out.
ASAN_PYTEST_ARGS ?= -q -p no:cacheprovider --capture=sys -o faulthandler_timeout=300 \
	-k "not runs_quickly"

ASAN_TESTS       ?= tests/
# The interpreter is not instrumented: preload gcc's ASan runtime.  CPython
# "leaks" at exit by design, so LeakSanitizer is off; every other report is
# fatal (halt_on_error / -fno-sanitize-recover) and makes the target fail.
# abort_on_error=1 turns a report into SIGABRT, so faulthandler (on in pytest)
# also prints the Python stack, i.e. which test; --capture=sys leaves fd 2 to
# the terminal so the report is not swallowed by pytest's fd capture.
# `-P` (3.11+) keeps the current directory, and so the in-place build, off
# sys.path: PYTHONPATH's build/asan is the pyasync_c that gets imported.
ASAN_RUNTIME = $(shell gcc -print-file-name=libasan.so)
ASAN_ENV = LD_PRELOAD="$(ASAN_RUNTIME)" \
	ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1:check_initialization_order=1 \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:abort_on_error=1 \
	PYTHONMALLOC=malloc PYTHONPATH="$(CURDIR)/$(ASAN_DIR)$${PYTHONPATH:+:$$PYTHONPATH}"

# ---- refcount leaks (debug interpreter) -----------------------------------
DBG_PYTHON ?= $(firstword $(wildcard /usr/bin/python3.11d /usr/bin/python3.11-dbg) python3-dbg)
DBG_VENV   := build/dbg-venv
DBG_DIR    := build/dbg
DBG_TMP    := build/dbg-tmp
LEAK_ARGS  ?=

.PHONY: test-deps deps build-all build test asan asan-build leaks leaks-build bench demo clean

build:
	$(PYTHON) setup.py build_ext --inplace

# Fresh machine: system packages (libuv1-dev, pkg-config) and, per
# interpreter, setuptools + pytest — only what is missing.
deps:
	bash .ci/deps $(PYTHON) $(PYTHONS)

build-all: deps
	for py in $(PYTHONS); do $$py setup.py build_ext --inplace -q || exit 1; done

# The README's test command: pytest on every Python 3.11/3.12/3.13 present,
# then CPython's test_asyncio conformance on each (its total is the last line).
# Real peers for tests/test_integration.py (redis-server, PostgreSQL, aiohttp,
# uvicorn, asyncpg...): only `make test` needs them, not the demo.
test-deps:
	bash .ci/integration-deps $(PYTHONS)

test: build-all test-deps
	for py in $(PYTHONS); do echo "== pytest on $$py"; $$py -m pytest $(PYTEST_ARGS) tests/ || exit 1; done
	$(TEST_EXTRA)
	$(PYTHON) tests/conformance/run.py --pythons --suite all

asan-build:
	# CPython's own CFLAGS carry -fwrapv, which makes signed overflow defined and
	# so invisible to UBSan: -fno-wrapv (appended after them) turns the check on.
	CFLAGS="$$CFLAGS -fno-wrapv" PYASYNC_C_SANITIZE=1 $(PYTHON) setup.py build_ext --build-lib $(ASAN_DIR) --build-temp $(ASAN_TMP)
	# Python sources next to the .so files so `import pyasync_c` resolves here first.
	cp pyasync_c/*.py pyasync_c/py.typed $(ASAN_DIR)/pyasync_c/

asan: asan-build
	@test -f "$(ASAN_RUNTIME)" || { echo "libasan.so not found (gcc -print-file-name)"; exit 1; }
	$(ASAN_ENV) $(PYTHON) -P -c 'import pyasync_c, sys; f = pyasync_c.__file__; \
	    assert "/$(ASAN_DIR)/" in f, f"not the ASan build: {f}"; print("ASan build:", f)'
	# Run from $(ASAN_DIR): tests that spawn `python -c` children get that
	# directory (the ASan pyasync_c) as their sys.path[0], not the in-place build.
	cd $(ASAN_DIR) && $(ASAN_ENV) $(PYTHON) -P -m pytest --rootdir="$(CURDIR)" -c "$(CURDIR)/pyproject.toml" \
	    $(ASAN_PYTEST_ARGS) $(addprefix $(CURDIR)/,$(ASAN_TESTS))
	# The leak-check scenarios (storms of every C path) as a sanitizer smoke test.
	cd $(ASAN_DIR) && $(ASAN_ENV) $(PYTHON) -P $(CURDIR)/tests/leakcheck.py --smoke --rounds 2
	# Odd arguments and re-entrant subclass overrides thrown at the C primitives.
	cd $(ASAN_DIR) && $(ASAN_ENV) $(PYTHON) -P $(CURDIR)/tests/fuzz_primitives.py --seeds 10
	# Random app actions and raw peers over native TLS connections, for 60 s.
	cd $(ASAN_DIR) && $(ASAN_ENV) $(PYTHON) -P $(CURDIR)/tests/fuzz_tls.py --seconds 60

$(DBG_VENV)/bin/python:
	$(DBG_PYTHON) -m venv $(DBG_VENV)
	$(DBG_VENV)/bin/python -m pip install -q pytest

leaks-build: $(DBG_VENV)/bin/python
	PYASYNC_C_DEBUG=1 $(DBG_VENV)/bin/python setup.py build_ext --build-lib $(DBG_DIR) --build-temp $(DBG_TMP)
	cp pyasync_c/*.py pyasync_c/py.typed $(DBG_DIR)/pyasync_c/

leaks: leaks-build
	PYTHONPATH="$(CURDIR)/$(DBG_DIR)" $(DBG_VENV)/bin/python tests/leakcheck.py $(LEAK_ARGS)

bench: deps build
	$(PYTHON) -m pip install -q -r benchmarks/requirements.txt
	$(PYTHON) benchmarks/run.py

demo: deps build
	$(PYTHON) -m pyasync_c.demo

clean:
	rm -rf build/asan build/asan-tmp build/dbg build/dbg-tmp
	$(PYTHON) setup.py clean --all >/dev/null 2>&1 || true
	rm -f pyasync_c/*.so
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
