"""The loops tests run on (LOOP_FACTORIES, conftest's ``loop_name``: stdlib and
pyasync_c) and, as the primitives must work on any asyncio loop, the loops
their tests run on (PRIMITIVE_LOOP_FACTORIES: those and uvloop).

The integration tests add a third kind, "installed": pyasync_c's loop with the
C primitives put into asyncio for the test (``loop_name_with_installed``),
which is what unmodified libraries get under ``python -m pyasync_c``.

A test module of the primitives imports ``loop_name_with_uvloop``: that
fixture, registered under the name ``loop_name``, overrides conftest's for
the module and adds "uvloop" (when it is installed: it is a test dependency)
to the stdlib and pyasync_c loops. conftest's ``loop_factory``/``run``/``loop``
fixtures then build loops of that kind.
"""
from __future__ import annotations

import asyncio
import functools
from typing import Callable

import pytest

import pyasync_c

try:
    import uvloop
except ImportError:  # then the primitives run on two loops
    uvloop = None

LOOP_FACTORIES: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "stdlib": asyncio.SelectorEventLoop,
    "pyasync_c": pyasync_c.new_event_loop,
}
PRIMITIVE_LOOP_FACTORIES = dict(LOOP_FACTORIES)
# Each loop's class, for tests that subclass it.
LOOP_CLASSES: dict[str, type[asyncio.AbstractEventLoop]] = {
    "stdlib": asyncio.SelectorEventLoop,
    "pyasync_c": pyasync_c.Loop,
}
if uvloop is not None:
    PRIMITIVE_LOOP_FACTORIES["uvloop"] = uvloop.new_event_loop
    LOOP_CLASSES["uvloop"] = uvloop.Loop


INSTALLED = "installed"
# Every loop_name any fixture gives -> its loop factory (conftest's loop_factory).
ALL_LOOP_FACTORIES = dict(PRIMITIVE_LOOP_FACTORIES, **{INSTALLED: pyasync_c.new_event_loop})


@pytest.fixture(name="loop_name", params=[*LOOP_FACTORIES, INSTALLED])
def loop_name_with_installed(request: pytest.FixtureRequest,
                             monkeypatch: pytest.MonkeyPatch) -> str:
    """stdlib, pyasync_c, and pyasync_c with pyasync_c.install_primitives()
    applied for the test (asyncio's own names are put back afterwards)."""
    if request.param == INSTALLED:
        import asyncio.locks
        import asyncio.queues
        import asyncio.tasks
        # set each name to itself: monkeypatch then puts asyncio's back at teardown
        for module in (asyncio, asyncio.locks, asyncio.queues, asyncio.tasks):
            for name in pyasync_c.PRIMITIVE_NAMES:
                if hasattr(module, name):
                    monkeypatch.setattr(module, name, getattr(module, name))
        pyasync_c.install_primitives()
        from pyasync_c import _primitives
        assert asyncio.Queue is _primitives.Queue and asyncio.queues.Queue is _primitives.Queue
    return request.param


@pytest.fixture(name="loop_name", params=list(PRIMITIVE_LOOP_FACTORIES))
def loop_name_with_uvloop(request: pytest.FixtureRequest) -> str:
    return request.param


@functools.cache
def _uvloop_eager_factory_error() -> str | None:
    loop = PRIMITIVE_LOOP_FACTORIES["uvloop"]()
    coro = asyncio.sleep(0)
    try:
        loop.set_task_factory(asyncio.eager_task_factory)
        loop.run_until_complete(loop.create_task(coro))
    except TypeError as exc:
        coro.close()
        return str(exc)
    finally:
        loop.close()
    return None


def skip_eager_factory_on_broken_uvloop(loop_name: str) -> None:
    """uvloop passes eager_start= to the task factory, which 3.13.0's
    asyncio.eager_task_factory does not accept (a uvloop/CPython mismatch
    whatever the primitives): such tests skip on that combination."""
    if loop_name == "uvloop" and hasattr(asyncio, "eager_task_factory"):
        error = _uvloop_eager_factory_error()
        if error is not None:
            pytest.skip(f"uvloop cannot run asyncio.eager_task_factory here: {error}")
