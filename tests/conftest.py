"""Shared fixtures: every behaviour test runs on the stdlib loop and on pyasync_c's.

- ``loop_name``: "stdlib" or "pyasync_c" (parametrised); in the primitives'
  modules (test_primitives_*) also "uvloop" when it is installed, and in the
  integration tests also "installed" (pyasync_c's loop with the C primitives
  put into asyncio): those modules import these fixtures from primitive_loops.py.
- ``loop_factory``: a zero-argument callable making a fresh loop of that kind.
- ``loop``: a fresh loop, closed after the test.
- ``run``: ``run(coro, debug=False)`` runs a coroutine to completion on a fresh
  loop of that kind through ``asyncio.Runner`` (as asyncio.run does).
- ``prims``: the primitives under test, parametrised over "stdlib" (asyncio's
  own classes) and "c" (pyasync_c's native ones): ``prims.Semaphore``,
  ``prims.Queue``, ``prims.gather``...
"""
from __future__ import annotations

import asyncio
import types
from typing import Any, Callable, Coroutine

import pytest

from primitive_loops import ALL_LOOP_FACTORIES, LOOP_FACTORIES

PRIMITIVE_NAMES = ("Lock", "Event", "Semaphore", "BoundedSemaphore",
                   "Queue", "LifoQueue", "PriorityQueue", "gather")


@pytest.fixture(params=list(LOOP_FACTORIES))
def loop_name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def loop_factory(loop_name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    return ALL_LOOP_FACTORIES[loop_name]


@pytest.fixture
def loop(loop_factory):
    loop = loop_factory()
    try:
        yield loop
    finally:
        if not loop.is_closed():
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
        asyncio.set_event_loop(None)


@pytest.fixture
def run(loop_factory):
    def run(coro: Coroutine[Any, Any, Any], debug: bool = False) -> Any:
        with asyncio.Runner(loop_factory=loop_factory, debug=debug) as runner:
            return runner.run(coro)
    return run


class _CPrimitives:
    """pyasync_c's native primitives; a test touching one that is not built skips."""

    def __getattr__(self, name: str) -> Any:
        from pyasync_c import _primitives
        try:
            return getattr(_primitives, name)
        except AttributeError:
            pytest.skip(f"pyasync_c._primitives.{name} is not implemented")


@pytest.fixture(params=["stdlib", "c"])
def prims(request: pytest.FixtureRequest) -> types.SimpleNamespace:
    if request.param == "stdlib":
        return types.SimpleNamespace(**{n: getattr(asyncio, n) for n in PRIMITIVE_NAMES})
    return _CPrimitives()  # type: ignore[return-value]
