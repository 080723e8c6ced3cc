"""Handles keep call_soon()'s arguments as asyncio's do (pyasync_c stores up
to two inline, without a tuple), and a burst of call_soon()s does not count
toward garbage collections once the handle freelist is warm."""
from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import weakref
from typing import Any, Callable, Iterator

import pytest

from pyasync_c import _loop


@pytest.mark.parametrize("args", [(), (1,), (1, "two"), (1, "two", 3.0), tuple(range(7))])
def test_callback_gets_its_arguments_and_args_reads_them(run: Callable[..., Any], args: tuple) -> None:
    async def main() -> tuple[tuple, Any, str]:
        loop = asyncio.get_running_loop()
        got: list[tuple] = []
        handle = loop.call_soon(lambda *a: got.append(a), *args)
        before = handle._args
        text = repr(handle)
        await asyncio.sleep(0)
        return got[0], before, text

    got, before, text = run(main())
    assert got == args
    assert before == args and type(before) is tuple
    assert text.startswith("<Handle ")


@pytest.mark.parametrize("nargs", [0, 1, 2, 3])
def test_cancel_drops_the_arguments(run: Callable[..., Any], nargs: int) -> None:
    class Arg:
        pass

    async def main() -> tuple[object, bool, list]:
        loop = asyncio.get_running_loop()
        called: list[tuple] = []
        args = [Arg() for _ in range(nargs)]
        refs = [weakref.ref(a) for a in args]
        handle = loop.call_soon(lambda *a: called.append(a), *args)
        del args
        handle.cancel()
        gc.collect()
        await asyncio.sleep(0)
        return handle._args, all(r() is None for r in refs), called

    after, released, called = run(main())
    assert after is None
    assert released
    assert called == []


@pytest.mark.parametrize("nargs", [1, 2, 3])
def test_a_callback_cancelling_its_own_handle_keeps_its_arguments(run: Callable[..., Any], nargs: int) -> None:
    async def main() -> list:
        loop = asyncio.get_running_loop()
        seen: list = []
        box: list[asyncio.Handle] = []

        def callback(*args: Any) -> None:
            box[0].cancel()  # drops the handle's references while we run
            gc.collect()
            seen.append([str(a) for a in args])

        box.append(loop.call_soon(callback, *[object() for _ in range(nargs)]))
        await asyncio.sleep(0)
        return seen

    seen = run(main())
    assert len(seen) == 1 and len(seen[0]) == nargs


@pytest.mark.parametrize("nargs", [1, 2, 3])
def test_a_cycle_through_a_handle_argument_is_collected(run: Callable[..., Any], nargs: int) -> None:
    """Keeps a handle that has run in an object that is one of its own
    arguments: only the GC can free that, and only if it sees the argument."""
    class Holder:
        handle: Any = None

    def noop(*args: Any) -> None:
        pass

    async def main() -> bool:
        loop = asyncio.get_running_loop()
        holder = Holder()
        ref = weakref.ref(holder)
        args: list[Any] = [0] * (nargs - 1) + [holder]
        holder.handle = loop.call_soon(noop, *args)
        await asyncio.sleep(0)
        del holder, args
        gc.collect()
        return ref() is None

    assert run(main())


BURST = 5000


async def _counted_burst() -> int:
    """GC allocations counted while BURST call_soon()s wait in the ready
    queue at once (as a readiness pass over that many connections wakes that
    many tasks, each with its task's context); then lets them run."""
    loop = asyncio.get_running_loop()
    context = contextvars.copy_context()
    gc.collect()
    before = gc.get_count()[0]
    for _ in range(BURST):
        loop.call_soon(_noop, None, context=context)
    counted = gc.get_count()[0] - before
    await asyncio.sleep(0)
    return counted


def _noop(arg: object) -> None:
    pass


@contextlib.contextmanager
def _gc_disabled() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def test_a_burst_of_call_soon_reuses_handles_without_counting_toward_gc(loop_name: str,
                                                                       run: Callable[..., Any]) -> None:
    """Every new GC object counts toward the next collection; a reused one
    does not.  After one burst, a second one on the same loop allocates no
    new handles on pyasync_c.  asyncio's Python handles count one each."""
    async def main() -> int:
        await _counted_burst()  # warm-up
        return await _counted_burst()

    with _gc_disabled():
        counted = run(main())
    if loop_name == "stdlib":
        assert counted >= BURST
    elif not _loop._handle_freelist_max:
        pytest.skip("sanitizer or debug build: no handle freelist")
    else:
        assert counted < BURST // 10, f"{counted} GC allocations counted for {BURST} call_soon()s"


def test_closing_a_loop_gives_the_burst_handles_back(loop_factory: Callable[[], asyncio.AbstractEventLoop]) -> None:
    """The handles kept for a burst are freed when a loop closes (all but a
    few hundred): a burst on the next loop allocates them again."""
    counts = []
    with _gc_disabled():
        for _ in range(2):
            loop = loop_factory()
            try:
                counts.append(loop.run_until_complete(_counted_burst()))
            finally:
                loop.close()
    assert counts[1] >= BURST * 4 // 5, counts
