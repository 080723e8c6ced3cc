#!/usr/bin/env python3
"""Run CPython's own test_asyncio (the running interpreter's ``test`` package)
against pyasync_c, apply the checked-in expected-failure lists, and report.

    python tests/conformance/run.py [--suite loop|primitives|installed|all] [--strict]
                                    [-j N] [-m MODULE ...] [-k SUBSTR ...] [-v]
    python tests/conformance/run.py --pythons [--build] [same options]

Suites (see README.md in this folder):
  loop        scheduling modules of test_asyncio on pyasync_c.Loop, stdlib primitives
  primitives  test_locks (Lock/Event/Semaphore), test_queues, the gather tests of
              test_tasks, with asyncio's names patched to pyasync_c._primitives,
              once on the stdlib loop and once on pyasync_c's loop
  installed   the loop suite's modules on pyasync_c.Loop with every C primitive
              put into asyncio (what `python -m pyasync_c` gives unmodified code)
  all         the three

Every module runs in its own child process (this same file with --child),
which streams one JSON line per test event to a file.  The parent watches
it: a test that runs longer than --test-timeout (or a child that crashes)
is recorded as a failure of that test and the child is started again on
the remaining tests, so a hang never blocks the run.  Unexpected failures
are re-run once in a fresh child; a test that then passes is reported as
flaky and counted as passed.

The last line printed is ``conformance: N passed, M failed, K skipped``:
N counts passing tests (unexpected passes included), M unexpected failures
(and, with --strict, unexpected passes), K skipped tests plus expected
failures (the xfail lists).  Exit status 0 iff M == 0.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

PKG = "test.test_asyncio"

LOOP_MODULES = [
    "test_events", "test_tasks", "test_futures", "test_futures2", "test_taskgroups",
    "test_timeouts", "test_waitfor", "test_runners", "test_pep492", "test_context",
    "test_locks", "test_queues", "test_sock_lowlevel",
    # network: transports, servers, streams, TLS, pipes
    "test_streams", "test_sendfile", "test_server", "test_buffered_proto", "test_ssl",
    "test_sslproto", "test_unix_events",
    # subprocesses
    "test_subprocess",
]
# test_selector_events is not run: every test in it drives asyncio's
# BaseSelectorEventLoop / _SelectorTransport classes directly (a mocked selector,
# new_test_loop() TestLoops, private attributes); none goes through a loop's
# public API, so there is nothing in it for pyasync_c's loop to run.

# (module, class-name filter or None, -k substrings or None)
PRIMITIVE_UNITS = [
    ("test_locks", ("LockTests", "EventTests", "SemaphoreTests", "BoundedSemaphoreTests"), None),
    ("test_queues", None, None),
    ("test_tasks", None, ("gather", "Gather", "sleep")),
]

# The "installed" suite: LOOP_MODULES once more on our loop with the C primitives put
# into asyncio (pyasync_c.install(), as `python -m pyasync_c` runs code), so CPython's
# tests of tasks, timeouts, streams, Condition/Barrier... run on top of the C
# Lock/Event/Semaphore/Queue/gather/sleep, not just the primitives' own tests.
INSTALLED_TAG = "installed"

VARIANT_OURS = "pyasync_c-loop"
VARIANT_STDLIB = "stdlib-loop"

# test_events: the stdlib selector-loop classes are replaced by one class on our loop.
EVENTS_CLASS = "PyasyncCEventLoopTests"
EVENTS_DROPPED = ("KqueueEventLoopTests", "EPollEventLoopTests", "PollEventLoopTests",
                  "SelectEventLoopTests", "ProactorEventLoopTests")
# test_sock_lowlevel: likewise, BaseSockTestsMixin on our loop.
SOCK_CLASS = "PyasyncCSockTests"

# Classes of the network modules that build a stdlib loop themselves: each is
# replaced by a subclass (the new name given) whose loop is pyasync_c's.
# How the class gets its loop -> what the subclass overrides:
#   "create_event_loop" / "new_loop": that method returns pyasync_c.new_event_loop();
#   "setUp": setUp() runs with asyncio.SelectorEventLoop patched to build ours;
#   "new_test_loop": new_test_loop() (only ever called without a time generator
#       there) returns pyasync_c.new_event_loop() instead of a test_utils.TestLoop.
# Classes not listed and not in a SKIP: entry get their loop from
# asyncio.new_event_loop() / the policy / IsolatedAsyncioTestCase, i.e. ours.
SWAP_CLASSES: dict[str, list[tuple[str, str, str]]] = {
    "test_sendfile": [("EPollEventLoopTests", "create_event_loop", "PyasyncCSendfileTests")],
    "test_server": [("SelectorStartServerTests", "new_loop", "PyasyncCStartServerTests")],
    "test_buffered_proto": [("BufferedProtocolSelectorTests", "new_loop",
                             "PyasyncCBufferedProtocolTests")],
    "test_sslproto": [("SelectorStartTLSTests", "new_loop", "PyasyncCStartTLSTests")],
    "test_unix_events": [("SelectorEventLoopUnixSocketTests", "setUp", "PyasyncCUnixSocketTests")],
    "test_subprocess": [("SubprocessTransportTests", "new_test_loop",
                         "PyasyncCSubprocessTransportTests")],
}
# Per-selector duplicates of a swapped class (same tests on another stdlib
# selector) and Windows-only classes: removed.
SWAP_DROPPED = ("KqueueEventLoopTests", "PollEventLoopTests", "SelectEventLoopTests",
                "ProactorEventLoopTests", "ProactorStartServerTests",
                "BufferedProtocolProactorTests", "ProactorStartTLSTests")

# test_subprocess: SubprocessMixin (the tests of create_subprocess_exec/_shell,
# subprocess_exec, Process, ...) runs once, on our loop, as one class; the
# classes that run it on a stdlib loop with each of asyncio's child watchers
# (pyasync_c's loop uses none) are not collected.  They stay module globals:
# test_close_dont_kill_finished names SubprocessFastWatcherTests.
SUBPROCESS_CLASS = "PyasyncCSubprocessTests"
SUBPROCESS_HIDDEN = ("SubprocessThreadedWatcherTests", "SubprocessMultiLoopWatcherTests",
                     "SubprocessSafeWatcherTests", "SubprocessFastWatcherTests",
                     "SubprocessPidfdWatcherTests", "SubprocessProactorTests")

# Modules whose tests mostly build test_utils.TestLoop via new_test_loop(): run them
# a second time with new_test_loop() (without a time generator) giving our loop.
SWAP_TEST_LOOP_MODULES = ("test_futures", "test_tasks")
SWAP_TAG = "new_test_loop=pyasync_c"

# Modules none of whose tests can run on our loop: they build their loops themselves.
NOT_ON_OUR_LOOP = {
    "test_runners": "its tests install their own policy whose loops are mocked asyncio.BaseEventLoop()s",
    "test_pep492": "its tests build asyncio.BaseEventLoop() with a mocked selector",
}

FAILING = ("fail", "error", "timeout", "crash")


# --------------------------------------------------------------------------
# expected-failure lists
# --------------------------------------------------------------------------
class XfailEntry:
    def __init__(self, path: str, lineno: int, version: str, pattern: str, reason: str):
        self.path, self.lineno = path, lineno
        self.version, self.pattern, self.reason = version, pattern, reason
        self.skip = reason.upper().startswith("SKIP:")
        self.used = False

    def applies_to_python(self, version: str) -> bool:
        return self.version == "*" or version == self.version or version.startswith(self.version + ".")

    def matches(self, test_id: str) -> bool:
        # A trailing "[variant]" is matched literally (not as an fnmatch class);
        # an entry without one applies to every variant of the test.
        pat, pvariant = split_variant(self.pattern)
        bare, variant = split_variant(test_id)
        if pvariant is not None and pvariant != variant:
            return False
        return fnmatch.fnmatchcase(bare, pat)

    def where(self) -> str:
        return f"{os.path.relpath(self.path, REPO)}:{self.lineno}"


def split_variant(text: str) -> tuple[str, str | None]:
    if text.endswith("]") and "[" in text:
        head, _, variant = text[:-1].rpartition("[")
        return head, variant
    return text, None


def load_xfails(path: str, version: str) -> list[XfailEntry]:
    entries: list[XfailEntry] = []
    errors: list[str] = []
    if not os.path.exists(path):
        return entries
    with open(path, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            body, sep, reason = line.partition("#")
            reason = reason.strip()
            parts = body.split()
            if not sep or not reason:
                errors.append(f"{path}:{lineno}: entry without a reason ('# why'): {line}")
                continue
            if len(parts) != 2:
                errors.append(f"{path}:{lineno}: expected '<version or *> <test id or pattern>  # reason': {line}")
                continue
            entry = XfailEntry(path, lineno, parts[0], parts[1], reason)
            if entry.applies_to_python(version):
                entries.append(entry)
    if errors:
        sys.exit("bad expected-failure list:\n  " + "\n  ".join(errors))
    return entries


def find_xfail(entries: list[XfailEntry], test_id: str) -> XfailEntry | None:
    for e in entries:
        if e.matches(test_id):
            return e
    return None


# --------------------------------------------------------------------------
# child: run one module in this process
# --------------------------------------------------------------------------
def child_main(args: argparse.Namespace) -> int:
    import asyncio
    import unittest
    from asyncio import base_events

    sys.path.insert(0, REPO)
    import pyasync_c
    if not os.path.abspath(pyasync_c.__file__).startswith(REPO + os.sep):
        raise SystemExit(f"imported pyasync_c from {pyasync_c.__file__}, not from {REPO}")

    out = open(args.out, "a", encoding="utf-8", buffering=1)

    def emit(**event: object) -> None:
        out.write(json.dumps(event) + "\n")
        out.flush()

    ours = args.variant == VARIANT_OURS
    policy_cls = pyasync_c.EventLoopPolicy

    # Which loop classes does each test construct?  (BaseEventLoop.__init__ is
    # run by every asyncio loop, pyasync_c.Loop included.)
    created: list[str] = []
    orig_init = base_events.BaseEventLoop.__init__

    def tracking_init(self, *a, **kw):  # type: ignore[no-untyped-def]
        created.append(type(self).__module__ + "." + type(self).__qualname__)
        orig_init(self, *a, **kw)

    if args.primitives:
        replaced = pyasync_c.install_primitives()
        from pyasync_c import _primitives
        for name in replaced:
            obj = getattr(asyncio, name)
            assert obj is getattr(_primitives, name), name
        emit(event="info", primitives=replaced)

    def install_policy() -> None:
        if ours:
            if not isinstance(asyncio.get_event_loop_policy(), policy_cls):
                asyncio.set_event_loop_policy(policy_cls())
        else:
            asyncio.set_event_loop_policy(None)

    install_policy()
    probe = asyncio.new_event_loop()
    probe_type = type(probe)
    probe.close()
    if ours and probe_type is not pyasync_c.Loop:
        raise SystemExit(f"asyncio.new_event_loop() gave {probe_type!r}, not pyasync_c.Loop")
    if not ours and issubclass(probe_type, pyasync_c.Loop):
        raise SystemExit("stdlib-loop variant got a pyasync_c loop")
    if ours and hasattr(unittest.IsolatedAsyncioTestCase, "loop_factory") \
            and unittest.IsolatedAsyncioTestCase.loop_factory is None:
        unittest.IsolatedAsyncioTestCase.loop_factory = staticmethod(pyasync_c.new_event_loop)

    base_events.BaseEventLoop.__init__ = tracking_init  # type: ignore[method-assign]

    import importlib
    mod = importlib.import_module(f"{PKG}.{args.module}")

    if args.swap_test_loop:
        # test_utils.TestCase.new_test_loop() builds a TestLoop (a BaseEventLoop
        # with a virtual clock).  Called without a time generator the virtual
        # clock plays no part, so give those tests a pyasync_c loop instead.
        from test.test_asyncio import utils as test_utils
        orig_new_test_loop = test_utils.TestCase.new_test_loop

        def new_test_loop(self, gen=None):  # type: ignore[no-untyped-def]
            if gen is not None:
                return orig_new_test_loop(self, gen)
            loop = pyasync_c.new_event_loop()
            self.set_event_loop(loop)
            return loop

        test_utils.TestCase.new_test_loop = new_test_loop

    if args.module == "test_events" and ours:
        from test.test_asyncio import utils as test_utils
        # EventLoopTestsMixin, not UnixEventLoopTestsMixin: the latter's setUp
        # installs a child watcher through the policy, which pyasync_c's
        # policy (a BaseDefaultEventLoopPolicy) does not support.
        bases = [mod.EventLoopTestsMixin]
        if hasattr(mod, "SubprocessTestsMixin"):
            bases.append(mod.SubprocessTestsMixin)
        bases.append(test_utils.TestCase)
        cls = type(EVENTS_CLASS, tuple(bases), {
            "create_event_loop": lambda self: pyasync_c.new_event_loop(),
            "__module__": mod.__name__,
        })
        setattr(mod, EVENTS_CLASS, cls)
        for name in EVENTS_DROPPED:
            if hasattr(mod, name):
                delattr(mod, name)

    if args.module == "test_sock_lowlevel" and ours:
        # One class on our loop replaces the per-selector classes.
        from test.test_asyncio import utils as test_utils
        cls = type(SOCK_CLASS, (mod.BaseSockTestsMixin, test_utils.TestCase), {
            "create_event_loop": lambda self: pyasync_c.new_event_loop(),
            "__module__": mod.__name__,
        })
        setattr(mod, SOCK_CLASS, cls)
        for name in EVENTS_DROPPED + ("SelectEventLoopTests",):
            if hasattr(mod, name):
                delattr(mod, name)

    if ours and args.module in SWAP_CLASSES:
        from unittest import mock
        for old_name, how, new_name in SWAP_CLASSES[args.module]:
            old = getattr(mod, old_name, None)
            if old is None:
                continue
            ns: dict = {"__module__": mod.__name__}
            if how in ("create_event_loop", "new_loop"):
                ns[how] = lambda self, *a, **kw: pyasync_c.new_event_loop()
            elif how == "setUp":
                def setUp(self, _old=old):  # type: ignore[no-untyped-def]
                    with mock.patch("asyncio.SelectorEventLoop",
                                    lambda *a, **kw: pyasync_c.new_event_loop()):
                        _old.setUp(self)
                ns["setUp"] = setUp
            elif how == "new_test_loop":
                def new_test_loop(self, gen=None):  # type: ignore[no-untyped-def]
                    if gen is not None:
                        raise AssertionError("new_test_loop() with a time generator")
                    loop = pyasync_c.new_event_loop()
                    self.set_event_loop(loop)
                    return loop
                ns["new_test_loop"] = new_test_loop
            setattr(mod, new_name, type(new_name, (old,), ns))
            delattr(mod, old_name)
        for name in SWAP_DROPPED:
            if hasattr(mod, name):
                delattr(mod, name)

    hidden: set[str] = set()
    if args.module == "test_subprocess" and ours:
        from test.test_asyncio import utils as test_utils

        def subprocess_setUp(self):  # type: ignore[no-untyped-def]
            # as SubprocessWatcherMixin.setUp, without installing a child watcher
            test_utils.TestCase.setUp(self)
            self.loop = pyasync_c.new_event_loop()
            self.set_event_loop(self.loop)

        cls = type(SUBPROCESS_CLASS, (mod.SubprocessMixin, test_utils.TestCase), {
            "setUp": subprocess_setUp,
            "__module__": mod.__name__,
        })
        setattr(mod, SUBPROCESS_CLASS, cls)
        hidden.update(SUBPROCESS_HIDDEN)

    def flatten(suite):  # type: ignore[no-untyped-def]
        for t in suite:
            if isinstance(t, unittest.TestSuite):
                yield from flatten(t)
            else:
                yield t

    tests = list(flatten(unittest.defaultTestLoader.loadTestsFromModule(mod)))
    classes = set(args.classes.split(",")) if args.classes else None
    ks = args.k.split(",") if args.k else None
    exclude = set()
    if args.exclude:
        with open(args.exclude, encoding="utf-8") as f:
            exclude = {line.strip() for line in f if line.strip()}
    only = None
    if args.only:
        with open(args.only, encoding="utf-8") as f:
            only = {line.strip() for line in f if line.strip()}
    selected = []
    for t in tests:
        tid = t.id()
        if type(t).__name__ in hidden:
            continue
        if classes is not None and type(t).__name__ not in classes:
            continue
        if ks is not None and not any(k in tid for k in ks):
            continue
        if tid in exclude or (only is not None and tid not in only):
            continue
        selected.append(t)
    emit(event="collected", count=len(selected), ids=[t.id() for t in selected])
    if args.collect_only:
        out.close()
        os._exit(0)

    def short(err) -> str:  # type: ignore[no-untyped-def]
        etype, value, _tb = err
        text = "".join(traceback.format_exception_only(etype, value)).strip()
        return text.splitlines()[-1][:300] if text else etype.__name__

    def full(err) -> str:  # type: ignore[no-untyped-def]
        return "".join(traceback.format_exception(*err))[-6000:]

    class Result(unittest.TestResult):
        def __init__(self) -> None:
            super().__init__()
            self.state: dict[str, dict] = {}

        def startTest(self, test):  # type: ignore[no-untyped-def]
            super().startTest(test)
            install_policy()
            created.clear()
            self.state[test.id()] = {"outcome": "pass", "detail": "", "tb": ""}
            emit(event="start", id=test.id(), t=time.time())

        def _set(self, test, outcome, detail="", tb=""):  # type: ignore[no-untyped-def]
            tid = test.id()
            st = self.state.get(tid)
            if st is None:  # module/class fixture error (_ErrorHolder): no start/stop
                emit(event="end", id=tid, outcome=outcome, detail=detail, tb=tb, loops=[])
                return
            if st["outcome"] in FAILING and outcome not in FAILING:
                return
            st.update(outcome=outcome, detail=detail, tb=tb)

        def addError(self, test, err):  # type: ignore[no-untyped-def]
            super().addError(test, err)
            self._set(test, "error", short(err), full(err))

        def addFailure(self, test, err):  # type: ignore[no-untyped-def]
            super().addFailure(test, err)
            self._set(test, "fail", short(err), full(err))

        def addSubTest(self, test, subtest, err):  # type: ignore[no-untyped-def]
            super().addSubTest(test, subtest, err)
            if err is not None:
                kind = "fail" if issubclass(err[0], test.failureException) else "error"
                self._set(test, kind, f"{subtest._subDescription()}: {short(err)}", full(err))

        def addSkip(self, test, reason):  # type: ignore[no-untyped-def]
            super().addSkip(test, reason)
            self._set(test, "skip", str(reason)[:300])

        def addExpectedFailure(self, test, err):  # type: ignore[no-untyped-def]
            super().addExpectedFailure(test, err)
            self._set(test, "skip", "expected failure in CPython's own test (unittest.expectedFailure)")

        def addUnexpectedSuccess(self, test):  # type: ignore[no-untyped-def]
            super().addUnexpectedSuccess(test)
            self._set(test, "pass", "unexpected success of a CPython expectedFailure")

        def stopTest(self, test):  # type: ignore[no-untyped-def]
            super().stopTest(test)
            st = self.state.pop(test.id(), {"outcome": "pass", "detail": "", "tb": ""})
            emit(event="end", id=test.id(), loops=sorted(set(created)), **st)

    suite = unittest.TestSuite(selected)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        suite.run(Result())
    emit(event="done")
    out.close()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # don't let leftover non-daemon threads of a failed test hang the exit


# --------------------------------------------------------------------------
# parent
# --------------------------------------------------------------------------
class Unit:
    """One module run in one configuration."""

    def __init__(self, suite: str, module: str, variant: str, primitives: bool,
                 classes: tuple[str, ...] | None = None, ks: tuple[str, ...] | None = None,
                 swap_test_loop: bool = False):
        self.suite, self.module, self.variant = suite, module, variant
        self.swap_test_loop = swap_test_loop
        if swap_test_loop:
            self.variant += "+" + SWAP_TAG
        if suite == "installed":
            self.variant += "+" + INSTALLED_TAG
        self.primitives, self.classes, self.ks = primitives, classes, ks
        self.results: dict[str, dict] = {}  # test id -> end event (ids with [variant] for primitives)
        self.collected: list[str] = []
        self.notes: list[str] = []
        self.elapsed = 0.0

    @property
    def label(self) -> str:
        extra = f" -k {'/'.join(self.ks)}" if self.ks else ""
        return f"{self.suite}:{self.module}{extra} [{self.variant}]"

    def key(self, tid: str) -> str:
        tagged = self.suite in ("primitives", "installed") or self.swap_test_loop
        return f"{tid}[{self.variant}]" if tagged else tid


def child_cmd(unit: Unit, out: str, exclude: str | None, only: str | None) -> list[str]:
    cmd = [sys.executable, "-X", "faulthandler", os.path.abspath(__file__), "--child",
           "--module", unit.module, "--variant", unit.variant.split("+")[0], "--out", out]
    if unit.swap_test_loop:
        cmd.append("--swap-test-loop")
    if unit.primitives:
        cmd.append("--primitives")
    if unit.classes:
        cmd += ["--classes", ",".join(unit.classes)]
    if unit.ks:
        cmd += ["--kfilter", ",".join(unit.ks)]
    if exclude:
        cmd += ["--exclude", exclude]
    if only:
        cmd += ["--only", only]
    return cmd


def run_child(unit: Unit, workdir: str, exclude_ids: set[str], only_ids: set[str] | None,
              test_timeout: float, unit_deadline: float) -> tuple[dict[str, dict], list[str], list[str]]:
    """Run the unit's module in children until every selected test has ended.
    Returns (results by raw test id, collected ids, notes)."""
    results: dict[str, dict] = {}
    collected: list[str] = []
    notes: list[str] = []
    attempt = 0
    while True:
        attempt += 1
        tag = f"{unit.module}-{unit.variant}-{os.getpid()}-{attempt}-{time.monotonic_ns()}"
        out = os.path.join(workdir, tag + ".jsonl")
        exc_file = os.path.join(workdir, tag + ".exclude")
        with open(exc_file, "w") as f:
            f.write("\n".join(sorted(exclude_ids | set(results))))
        only_file = None
        if only_ids is not None:
            only_file = os.path.join(workdir, tag + ".only")
            with open(only_file, "w") as f:
                f.write("\n".join(sorted(only_ids)))
        errf = open(os.path.join(workdir, tag + ".stderr"), "w+")
        proc = subprocess.Popen(child_cmd(unit, out, exc_file, only_file), cwd=REPO,
                                stdin=subprocess.DEVNULL, stdout=errf, stderr=subprocess.STDOUT,
                                start_new_session=True)
        current: tuple[str, float] | None = None
        pos = 0
        done = False
        killed_for = None
        buf = ""
        while True:
            rc = proc.poll()
            if os.path.exists(out):
                with open(out, encoding="utf-8") as f:
                    f.seek(pos)
                    chunk = f.read()
                    pos = f.tell()
                buf += chunk
                *lines, buf = buf.split("\n")
                for line in lines:
                    if not line.strip():
                        continue
                    ev = json.loads(line)
                    kind = ev["event"]
                    if kind == "collected":
                        if attempt == 1:
                            collected = ev["ids"]
                    elif kind == "start":
                        current = (ev["id"], time.monotonic())
                    elif kind == "end":
                        results[ev["id"]] = ev
                        if current and current[0] == ev["id"]:
                            current = None
                    elif kind == "done":
                        done = True
            if rc is not None:
                break
            now = time.monotonic()
            if current and now - current[1] > test_timeout:
                killed_for = ("timeout", current[0], f"no result after {test_timeout:g}s (killed)")
            elif now > unit_deadline:
                killed_for = ("timeout", current[0] if current else None,
                              "module time budget exhausted (killed)")
            if killed_for:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
                break
            time.sleep(0.1)
        errf.seek(0)
        err_tail = errf.read()[-3000:]
        errf.close()
        if killed_for:
            outcome, tid, detail = killed_for
            if tid:
                results[tid] = {"id": tid, "outcome": outcome, "detail": detail, "tb": err_tail, "loops": []}
            if detail.startswith("module time budget"):
                notes.append(f"{unit.label}: {detail}; {len(set(collected) - set(results) - exclude_ids)} tests not run")
                return results, collected, notes
            continue
        if done:
            return results, collected, notes
        # the child died without finishing
        if current:
            results[current[0]] = {"id": current[0], "outcome": "crash",
                                   "detail": f"child exited with {proc.returncode} during this test",
                                   "tb": err_tail, "loops": []}
            continue
        notes.append(f"{unit.label}: child exited with {proc.returncode} outside any test:\n{err_tail}")
        results[f"{PKG}.{unit.module}.<child>"] = {
            "id": f"{PKG}.{unit.module}.<child>", "outcome": "crash",
            "detail": f"child exited with {proc.returncode} outside any test", "tb": err_tail, "loops": []}
        return results, collected, notes


def run_unit(unit: Unit, xfails: list[XfailEntry], workdir: str, args: argparse.Namespace) -> Unit:
    t0 = time.monotonic()
    deadline = t0 + args.module_timeout
    # Entries whose reason starts with SKIP: are never run (known hangs/crashers):
    # collect the ids first (a cheap import-only child) to exclude them.
    skip_entries = [e for e in xfails if e.skip]
    exclude: set[str] = set()
    if skip_entries:
        ids = collect_ids(unit, workdir)
        for tid in ids:
            if find_xfail(skip_entries, unit.key(tid)):
                exclude.add(tid)
    results, collected, notes = run_child(unit, workdir, exclude, None, args.test_timeout, deadline)
    for tid in exclude:
        e = find_xfail(skip_entries, unit.key(tid))
        results[tid] = {"id": tid, "outcome": "skip", "detail": f"not run: {e.reason}", "loops": []}
        e.used = True
    if not args.no_rerun:
        again = {tid for tid, r in results.items()
                 if r["outcome"] in FAILING and not find_xfail(xfails, unit.key(tid))
                 and not tid.endswith(">") and r["outcome"] != "timeout"}
        if again and len(again) <= 25:
            rer, _c, n2 = run_child(unit, workdir, set(), again, args.test_timeout,
                                    time.monotonic() + args.module_timeout / 2)
            notes += n2
            for tid in again:
                r = rer.get(tid)
                if r and r["outcome"] == "pass":
                    results[tid] = dict(r, flaky=results[tid]["detail"])
    unit.results = {unit.key(tid): r for tid, r in results.items()}
    unit.collected = collected
    unit.notes = notes
    unit.elapsed = time.monotonic() - t0
    return unit


def collect_ids(unit: Unit, workdir: str) -> list[str]:
    out = os.path.join(workdir, f"collect-{unit.module}-{unit.variant}-{time.monotonic_ns()}.jsonl")
    cmd = child_cmd(unit, out, None, None) + ["--collect-only"]
    subprocess.run(cmd, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=120)
    with open(out, encoding="utf-8") as f:
        for line in f:
            ev = json.loads(line)
            if ev["event"] == "collected":
                return ev["ids"]
    return []


def build_units(suite: str, modules: list[str] | None, ks: list[str] | None) -> list[Unit]:
    units: list[Unit] = []
    if suite in ("loop", "all"):
        for m in LOOP_MODULES:
            units.append(Unit("loop", m, VARIANT_OURS, False, None, tuple(ks) if ks else None))
            if m in SWAP_TEST_LOOP_MODULES:
                units.append(Unit("loop", m, VARIANT_OURS, False, None, tuple(ks) if ks else None,
                                  swap_test_loop=True))
    if suite in ("installed", "all"):
        for m in LOOP_MODULES:
            if m not in NOT_ON_OUR_LOOP:
                units.append(Unit("installed", m, VARIANT_OURS, True, None, tuple(ks) if ks else None))
    if suite in ("primitives", "all"):
        for variant in (VARIANT_STDLIB, VARIANT_OURS):
            for m, classes, uks in PRIMITIVE_UNITS:
                units.append(Unit("primitives", m, variant, True, classes,
                                  tuple(ks) if ks else uks))
        # The gather tests build their loops with new_test_loop(): once more with ours.
        for m, classes, uks in PRIMITIVE_UNITS:
            if m in SWAP_TEST_LOOP_MODULES:
                units.append(Unit("primitives", m, VARIANT_OURS, True, classes,
                                  tuple(ks) if ks else uks, swap_test_loop=True))
    if modules:
        wanted = {m if m.startswith("test_") else "test_" + m for m in modules}
        units = [u for u in units if u.module in wanted]
    return units


def classify_loops(loops: list[str]) -> str:
    if any(name.startswith("pyasync_c.") for name in loops):
        return "ours"
    if any("TestLoop" in name for name in loops) and all("TestLoop" in n or "BaseEventLoop" in n for n in loops):
        return "testloop"
    if loops:
        return "stdlib"
    return "none"


def parent_main(args: argparse.Namespace) -> int:
    version = platform.python_version()
    suites = ["loop", "primitives", "installed"] if args.suite == "all" else [args.suite]
    # An installed unit runs the loop suite's modules with the primitives suite's
    # patches: both lists apply to it (their entries without a [variant] match
    # every variant); it has no list of its own.
    needed = {"loop", "primitives"} if "installed" in suites else set(suites)
    lists = {s: load_xfails(os.path.join(HERE, f"xfail_{s}.txt"), version) for s in needed}
    xfails = {s: (lists["loop"] + lists["primitives"]) if s == "installed" else lists[s]
              for s in suites}
    units = build_units(args.suite, args.module, args.k)
    if not units:
        sys.exit("no module selected")
    print(f"pyasync_c conformance on Python {version} ({sys.executable}); "
          f"suite {args.suite}, {len(units)} module runs, -j {args.jobs}", flush=True)

    from concurrent.futures import ThreadPoolExecutor
    workdir = tempfile.mkdtemp(prefix="pyasync_c-conformance-")
    t0 = time.monotonic()
    # Longest first so the slow modules overlap with the many short ones.
    order = {"test_events": 0, "test_ssl": 0, "test_sslproto": 0, "test_tasks": 1,
             "test_streams": 1, "test_sendfile": 1, "test_subprocess": 1, "test_locks": 2,
             "test_queues": 3}
    pending = sorted(units, key=lambda u: order.get(u.module, 9))
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = [pool.submit(run_unit, u, xfails[u.suite], workdir, args) for u in pending]
        for fut in futures:
            fut.result()

    totals = dict(passed=0, failed=0, skipped=0, xfailed=0, xpassed=0, flaky=0)
    unexpected: list[tuple[Unit, str, dict]] = []
    xpasses: list[tuple[Unit, str, XfailEntry]] = []
    flaky: list[tuple[Unit, str, str]] = []
    loop_errors: list[str] = []
    print()
    print(f"{'module':62} {'pass':>5} {'xfail':>5} {'FAIL':>5} {'skip':>5} {'xpass':>5}"
          f"  on-ours/test-loop/stdlib/no-loop   time")
    for u in units:
        c = dict(passed=0, failed=0, skipped=0, xfailed=0, xpassed=0)
        where = dict(ours=0, testloop=0, stdlib=0, none=0)
        for tid, r in sorted(u.results.items()):
            entry = find_xfail(xfails[u.suite], tid)
            outcome = r["outcome"]
            where[classify_loops(r.get("loops", []))] += 1
            if outcome == "skip":
                c["skipped"] += 1
            elif outcome == "pass":
                c["passed"] += 1
                if r.get("flaky"):
                    flaky.append((u, tid, r["flaky"]))
                if entry and not entry.skip:
                    entry.used = True
                    c["xpassed"] += 1
                    xpasses.append((u, tid, entry))
            elif entry:
                entry.used = True
                c["xfailed"] += 1
            else:
                c["failed"] += 1
                unexpected.append((u, tid, r))
        for k in c:
            totals[k] += c[k]
        if u.variant.startswith(VARIANT_OURS) and u.results and where["ours"] == 0:
            if u.module in NOT_ON_OUR_LOOP:
                u.notes.append(f"no test runs on pyasync_c.Loop: {NOT_ON_OUR_LOOP[u.module]}")
            elif u.swap_test_loop or u.module not in SWAP_TEST_LOOP_MODULES:
                loop_errors.append(f"{u.label}: no test ran on a pyasync_c.Loop")
        print(f"{u.label:62} {c['passed']:5} {c['xfailed']:5} {c['failed']:5} {c['skipped']:5} "
              f"{c['xpassed']:5}  {where['ours']:5}/{where['testloop']}/{where['stdlib']}/{where['none']}"
              f"  {u.elapsed:5.1f}s")
        for n in u.notes:
            print(f"  note: {n}")
    totals["flaky"] = len(flaky)

    if flaky:
        print(f"\nflaky (failed, then passed on a re-run in a fresh process): {len(flaky)}")
        for u, tid, detail in flaky:
            print(f"  {tid}: first run: {detail}")
    if xpasses:
        print(f"\nunexpected passes — xfail entries to remove ({len(xpasses)}):")
        for u, tid, e in xpasses:
            print(f"  {tid}  ({e.where()}: {e.pattern})")
    unused = [e for s in suites if s in lists for e in lists[s] if not e.used]
    if unused and not args.module and not args.k:
        print(f"\nxfail entries that matched no test on Python {version} ({len(unused)}):")
        for e in unused:
            print(f"  {e.where()}: {e.version} {e.pattern}")
    if unexpected:
        print(f"\nUNEXPECTED FAILURES ({len(unexpected)}):")
        for u, tid, r in unexpected:
            print(f"  {r['outcome'].upper():7} {tid}: {r.get('detail', '')}")
            if args.verbose and r.get("tb"):
                print("    " + r["tb"].rstrip().replace("\n", "\n    "))
    for e in loop_errors:
        print(f"\nRUNNER ERROR: {e}")

    failed = totals["failed"] + len(loop_errors)
    if args.strict:
        failed += len(xpasses)
    print(f"\ntotal ({time.monotonic() - t0:.0f}s): {totals['passed']} passed "
          f"({totals['flaky']} flaky), {totals['xfailed']} expected failures, "
          f"{totals['failed']} unexpected failures, {totals['xpassed']} unexpected passes, "
          f"{totals['skipped']} skipped")
    print(f"conformance: {totals['passed']} passed, {failed} failed, "
          f"{totals['skipped'] + totals['xfailed']} skipped", flush=True)
    return 1 if failed else 0


PYTHONS = ["/root/.pyenv/versions/3.11.7/bin/python", "/root/.pyenv/versions/3.12.1/bin/python",
           "/root/.pyenv/versions/3.13.0/bin/python"]


def pythons_main(args: argparse.Namespace, argv: list[str]) -> int:
    import re
    rest = [a for a in argv if a not in ("--pythons", "--build")]
    pythons = [p for p in (args.python_list.split(",") if args.python_list else PYTHONS)
               if os.path.exists(p)]
    if not pythons:
        sys.exit("none of the interpreters exist: " + ", ".join(PYTHONS))
    rest = [a for a in rest if not a.startswith("--python-list")]
    sums = [0, 0, 0]
    worst = 0
    lines = []
    for py in pythons:
        print(f"\n######## {py}", flush=True)
        if args.build:
            subprocess.run([py, "setup.py", "build_ext", "--inplace", "-q"], cwd=REPO, check=True)
        rc = subprocess.run([py, os.path.abspath(__file__), *rest], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
        sys.stdout.write(rc.stdout)
        last = rc.stdout.strip().splitlines()[-1] if rc.stdout.strip() else ""
        m = re.fullmatch(r"conformance: (\d+) passed, (\d+) failed(?:, (\d+) skipped)?", last)
        if not m:
            print(f"{py}: no conformance line (exit {rc.returncode})")
            sums[1] += 1
        else:
            sums[0] += int(m.group(1))
            sums[1] += int(m.group(2))
            sums[2] += int(m.group(3) or 0)
        lines.append(f"  {py}: {last or 'no result'} (exit {rc.returncode})")
        worst = worst or rc.returncode
    print("\nper interpreter:\n" + "\n".join(lines))
    print(f"conformance: {sums[0]} passed, {sums[1]} failed, {sums[2]} skipped", flush=True)
    return 1 if (worst or sums[1]) else 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", choices=("loop", "primitives", "installed", "all"), default="loop")
    p.add_argument("--strict", action="store_true", help="unexpected passes fail the run")
    p.add_argument("-j", "--jobs", type=int, default=2, help="modules run at once (default 2)")
    p.add_argument("-m", "--module", action="append", help="only this test_asyncio module (repeatable)")
    p.add_argument("-k", action="append", help="only test ids containing this (repeatable)")
    p.add_argument("-v", "--verbose", action="store_true", help="print tracebacks of unexpected failures")
    p.add_argument("--test-timeout", type=float, default=60.0, help="seconds one test may run")
    p.add_argument("--module-timeout", type=float, default=240.0, help="seconds one module may run")
    p.add_argument("--no-rerun", action="store_true", help="don't re-run unexpected failures")
    p.add_argument("--pythons", action="store_true",
                   help="re-run this command on each of Python 3.11/3.12/3.13 that exists")
    p.add_argument("--python-list", help="comma-separated interpreters for --pythons")
    p.add_argument("--build", action="store_true",
                   help="with --pythons: build the extension in place for each interpreter first")
    # child-only
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--variant", default=VARIANT_OURS, help=argparse.SUPPRESS)
    p.add_argument("--primitives", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--classes", help=argparse.SUPPRESS)
    p.add_argument("--kfilter", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--exclude", help=argparse.SUPPRESS)
    p.add_argument("--only", help=argparse.SUPPRESS)
    p.add_argument("--swap-test-loop", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--collect-only", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        args.module = args.module[0]
        args.k = args.kfilter
        return child_main(args)
    if args.pythons:
        return pythons_main(args, argv)
    return parent_main(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
