"""pyasync_c's public surface against asyncio's and uvloop's (issue #12).

- sleep is a coroutine function, as asyncio.sleep (an ``async def``) is:
  inspect/asyncio.iscoroutinefunction, inspect.signature, and mock.patch
  making an AsyncMock, so a retry-with-backoff test that patches
  asyncio.sleep passes under install_primitives() as it does on stdlib;
- the C classes support what asyncio's support: copy, deepcopy, pickle,
  weakref, ``Queue[int]``, a readable repr;
- pyasync_c.run() takes uvloop.run()'s keywords;
- help(pyasync_c) lists every public name with a docstring;
- a _loop extension that cannot be loaded (libuv.so missing) leaves the C
  primitives usable and gives a clear error when the loop is used.
"""
from __future__ import annotations

import asyncio
import asyncio.tasks
import copy
import inspect
import os
import pickle
import pydoc
import subprocess
import sys
import textwrap
import weakref
from unittest import mock

import pytest

import pyasync_c
from pyasync_c import _primitives
from primitive_loops import loop_name_with_installed  # noqa: F401  (fixture: adds "installed")

STDLIB_SLEEP = asyncio.tasks.sleep if asyncio.tasks.sleep is not _primitives.sleep else None
CLASS_NAMES = ("Lock", "Event", "Semaphore", "BoundedSemaphore", "Queue", "LifoQueue", "PriorityQueue")


# ---------------------------------------------------------------- sleep

@pytest.mark.parametrize("check", [inspect.iscoroutinefunction, asyncio.iscoroutinefunction],
                         ids=["inspect", "asyncio"])
def test_sleep_is_a_coroutine_function_as_asyncio_sleep_is(check) -> None:
    assert check(asyncio.sleep if STDLIB_SLEEP is None else STDLIB_SLEEP)
    assert check(_primitives.sleep)
    assert check(pyasync_c.sleep)


def test_sleep_signature_name_and_doc() -> None:
    s = _primitives.sleep
    assert str(inspect.signature(s)) == "(delay, result=None)"
    assert (s.__name__, s.__qualname__, s.__module__) == ("sleep", "sleep", "pyasync_c._primitives")
    assert s.__doc__.startswith("Coroutine that completes after a given time")
    assert inspect.isroutine(s) and not inspect.isfunction(s)
    assert "coroutine function" in repr(s) and "sleep" in repr(s)


@pytest.mark.skipif(sys.version_info < (3, 12), reason="inspect.markcoroutinefunction is 3.12+")
def test_sleep_carries_markcoroutinefunction_mark() -> None:
    marked = inspect.markcoroutinefunction(lambda: None)
    assert _primitives.sleep._is_coroutine_marker is marked._is_coroutine_marker


def test_sleep_is_not_bound_as_a_method_pickles_and_copies_by_reference() -> None:
    class Holder:
        pause = _primitives.sleep

    assert Holder().pause is _primitives.sleep       # as a builtin: no binding
    assert pickle.loads(pickle.dumps(_primitives.sleep)) is _primitives.sleep
    assert copy.copy(_primitives.sleep) is _primitives.sleep
    assert copy.deepcopy(_primitives.sleep) is _primitives.sleep
    assert weakref.ref(_primitives.sleep)() is _primitives.sleep


def test_sleep_still_sleeps(run) -> None:
    async def main():
        a = await _primitives.sleep(0, "zero")
        b = await _primitives.sleep(0.001, result="timed")
        c = await _primitives.sleep(delay=0)
        return a, b, c

    assert run(main()) == ("zero", "timed", None)
    with pytest.raises(TypeError):
        _primitives.sleep()
    with pytest.raises(TypeError):
        _primitives.sleep(1, 2, 3)


async def fetch_with_retry(fetch, attempts: int = 4) -> str:
    """Application code under test: exponential backoff on errors."""
    for attempt in range(attempts):
        try:
            return await fetch()
        except ConnectionError:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.5 * 2 ** attempt)
    raise AssertionError("unreachable")


def test_mock_patch_sleep_gives_an_async_mock_and_backoff_test_passes(loop_name, run) -> None:
    """As on stdlib: patching asyncio.sleep (the C one under "installed")
    makes an AsyncMock, so the backoff test awaits it without sleeping."""
    if loop_name == "installed":
        assert asyncio.sleep is _primitives.sleep
    outcomes = [ConnectionError(), ConnectionError(), "payload"]

    async def fetch() -> str:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    with mock.patch("asyncio.sleep") as sleep_mock:
        assert isinstance(sleep_mock, mock.AsyncMock)
        assert run(fetch_with_retry(fetch)) == "payload"
    assert sleep_mock.await_args_list == [mock.call(0.5), mock.call(1.0)]


def test_autospec_of_sleep_is_awaitable(run) -> None:
    spec = mock.create_autospec(_primitives.sleep)

    async def main():
        return await spec(1)

    run(main())
    spec.assert_awaited_once_with(1)


# ---------------------------------------------------------------- classes

@pytest.mark.parametrize("name", CLASS_NAMES)
def test_classes_support_what_asyncios_support(name: str) -> None:
    ours, theirs = getattr(_primitives, name), getattr(asyncio, name)
    for cls in (theirs, ours):
        obj = cls()
        assert type(copy.copy(obj)) is cls
        assert type(copy.deepcopy(obj)) is cls
        assert type(pickle.loads(pickle.dumps(obj))) is cls
        assert weakref.ref(obj)() is obj
        text = repr(obj)
        assert text.startswith("<") and name in text and "0x" in text
    generic = hasattr(theirs, "__class_getitem__")
    assert hasattr(ours, "__class_getitem__") == generic
    if generic:
        alias = ours[int]
        assert alias.__origin__ is ours and alias.__args__ == (int,)
        assert type(ours[int]()) is ours


def test_repr_shows_state_as_asyncios_does() -> None:
    for mod in (asyncio, _primitives):
        lock, event, sem, q = mod.Lock(), mod.Event(), mod.Semaphore(2), mod.Queue(3)
        event.set()
        q.put_nowait(1)
        assert "[unlocked]" in repr(lock)
        assert "[set]" in repr(event)
        assert "value:2" in repr(sem)
        assert "maxsize=3" in repr(q) and "_queue=[1]" in repr(q)


def test_copies_keep_the_state(run) -> None:
    async def acquired(obj):
        await obj.acquire()
        return obj

    for mod in (asyncio, _primitives):
        lock = run(acquired(mod.Lock()))
        assert copy.copy(lock).locked() and pickle.loads(pickle.dumps(lock)).locked()
        assert not copy.copy(mod.Lock()).locked()
        event = mod.Event()
        event.set()
        assert copy.deepcopy(event).is_set() and not copy.copy(mod.Event()).is_set()
        sem = run(acquired(mod.BoundedSemaphore(3)))
        clone = copy.deepcopy(sem)
        assert (clone._value, clone._bound_value) == (2, 3)
        clone.release()
        with pytest.raises(ValueError):
            clone.release()                 # still bounded at 3
        q = mod.PriorityQueue(5)
        for item in (3, 1, 2):
            q.put_nowait(item)
        q.get_nowait()
        shallow, deep, loaded = copy.copy(q), copy.deepcopy(q), pickle.loads(pickle.dumps(q))
        assert shallow._queue is q._queue               # a shallow copy shares the storage
        assert deep._queue == q._queue and deep._queue is not q._queue
        for clone in (deep, loaded):
            assert clone.maxsize == 5 and clone._unfinished_tasks == 3
            assert [clone.get_nowait() for _ in range(2)] == [2, 3]


def test_copy_of_a_python_subclass_keeps_its_attributes() -> None:
    class Tagged(_primitives.Queue):
        pass

    q = Tagged(2)
    q.tag = "mine"
    q.put_nowait("x")
    for clone in (copy.copy(q), copy.deepcopy(q)):
        assert type(clone) is Tagged and clone.tag == "mine" and clone.maxsize == 2
        assert clone.get_nowait() == "x"


class PicklableQueue(_primitives.LifoQueue):
    pass


def test_pickle_of_a_module_level_subclass() -> None:
    q = PicklableQueue()
    q.put_nowait(1)
    q.put_nowait(2)
    clone = pickle.loads(pickle.dumps(q))
    assert type(clone) is PicklableQueue and clone.get_nowait() == 2


def test_reconstruct_rejects_bad_input() -> None:
    with pytest.raises(TypeError):
        _primitives._reconstruct(int, "Lock", True, None)
    with pytest.raises(TypeError):
        _primitives._reconstruct(_primitives.Lock, "Queue", (0, [], 0), None)
    with pytest.raises((TypeError, ValueError)):
        _primitives._reconstruct(_primitives.BoundedSemaphore, "BoundedSemaphore", (5, 2), None)
    with pytest.raises(TypeError):
        _primitives._reconstruct(_primitives.Lock)


# ---------------------------------------------------------------- run()

def test_run_takes_uvloops_keywords() -> None:
    uvloop = pytest.importorskip("uvloop")
    ours = inspect.signature(pyasync_c.run).parameters
    theirs = inspect.signature(uvloop.run).parameters
    assert [(p.name, p.kind) for p in ours.values()] == [(p.name, p.kind) for p in theirs.values()]
    assert ours["debug"].default is None


def test_run_uses_loop_factory_and_debug() -> None:
    made = []

    def factory():
        loop = pyasync_c.new_event_loop()
        made.append(loop)
        return loop

    async def main():
        loop = asyncio.get_running_loop()
        return type(loop), loop.get_debug()

    assert pyasync_c.run(main(), loop_factory=factory, debug=True) == (pyasync_c.Loop, True)
    assert len(made) == 1 and made[0].is_closed()
    assert pyasync_c.run(main()) == (pyasync_c.Loop, False)
    assert pyasync_c.run(main(), loop_factory=None)[0] is pyasync_c.Loop


def test_run_refuses_a_non_pyasync_c_loop_as_uvloop_run_does() -> None:
    async def main():
        return 1

    with pytest.raises(TypeError, match="pyasync_c"):
        pyasync_c.run(main(), loop_factory=asyncio.new_event_loop)


def test_run_passes_other_keywords_to_asyncio() -> None:
    async def main():
        return 1

    coro = main()
    with pytest.raises(TypeError, match="no_such_option"):
        pyasync_c.run(coro, no_such_option=True)
    coro.close()


def test_run_inside_a_running_loop_raises() -> None:
    async def outer():
        inner = asyncio.sleep(0)
        try:
            pyasync_c.run(inner)
        finally:
            inner.close()

    with pytest.raises(RuntimeError, match="running event loop"):
        pyasync_c.run(outer())


# ---------------------------------------------------------------- help()

def test_help_lists_every_public_name_with_a_docstring() -> None:
    text = pydoc.render_doc(pyasync_c, renderer=pydoc.plaintext)
    for name in pyasync_c.__all__:
        value = getattr(pyasync_c, name)
        assert name in dir(pyasync_c)
        assert name in text, name
        if callable(value):
            doc = inspect.getdoc(value) or ""
            assert doc.strip().splitlines()[0].strip(), f"{name} has no docstring"
    assert "install_primitives" in pyasync_c.__all__


# ---------------------------------------------------------------- the loop cannot load

BLOCK_LOOP = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "pyasync_c._loop":
            raise {error}
sys.meta_path.insert(0, Block())
"""

USE_WITHOUT_LOOP = """
import asyncio, pydoc
import pyasync_c
from pyasync_c import Queue, gather, sleep      # the primitives import fine
async def main():
    q = Queue()
    q.put_nowait(1)
    a, b = await gather(q.get(), sleep(0.001, 2))
    return a + b
print("primitives", asyncio.run(main()))
print("dir", "Loop" in dir(pyasync_c), "Queue" in dir(pyasync_c))
pydoc.render_doc(pyasync_c)
for use in ("pyasync_c.new_event_loop()", "pyasync_c.install()", "pyasync_c.Loop",
            "pyasync_c.run(asyncio.sleep(0))"):
    try:
        eval(use)
    except ImportError as exc:
        print("error", use, "|", exc)
"""


@pytest.mark.parametrize("error, hint", [
    ("ImportError('libuv.so.1: cannot open shared object file: No such file or directory')",
     "apt-get install libuv1"),
    ("ModuleNotFoundError(\"No module named 'pyasync_c._loop'\")", "setup.py build_ext --inplace"),
], ids=["libuv-missing", "not-built"])
def test_primitives_work_when_the_loop_extension_cannot_load(error: str, hint: str) -> None:
    code = BLOCK_LOOP.format(error=error) + USE_WITHOUT_LOOP
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "primitives 3"
    assert lines[1] == "dir False True"
    errors = [line for line in lines if line.startswith("error ")]
    assert len(errors) == 4, proc.stdout
    for line in errors:
        assert "pyasync_c._loop" in line and hint in line, line
        assert "primitives" in line                      # says what still works
