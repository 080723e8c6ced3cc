"""Differential tests: random programs run once with asyncio's primitives and
once with the C ones, on the same loop and from the same seed; the traces
(who acquired, got, was woken or cancelled, in which order, and what every
call returned or raised) must be identical.

The programs only yield with ``sleep(0)`` and cancel with ``Task.cancel()``, so
their schedule depends on nothing but the primitives' semantics: a C primitive
that wakes a different waiter, wakes it one iteration later, or returns or
raises something else makes the traces diverge. Random choices made inside the
tasks draw from the same generator, so any divergence also changes everything
after it.
"""
from __future__ import annotations

import asyncio
import random
import sys
import types
from typing import Any, Awaitable, Callable

import pytest

from primitive_loops import loop_name_with_uvloop  # noqa: F401  (fixture: loop_name plus uvloop)

SEEDS = range(20)
STEPS = 150
Trace = list[tuple[Any, ...]]


def stdlib_prims() -> types.SimpleNamespace:
    names = ("Lock", "Event", "Semaphore", "BoundedSemaphore", "Queue", "LifoQueue",
             "PriorityQueue", "gather")
    return types.SimpleNamespace(**{n: getattr(asyncio, n) for n in names})


def c_prims() -> Any:
    return pytest.importorskip("pyasync_c._primitives")


def outcome(result: Any) -> Any:
    """A task's result or exception, comparable across implementations."""
    if isinstance(result, BaseException):
        return (type(result).__name__, tuple(map(repr, result.args)))
    if isinstance(result, list):      # gather's results
        return [outcome(r) for r in result]
    return result


async def call(trace: Trace, label: Any, fn: Callable[[], Any]) -> Any:
    """Record what fn() returned or raised (awaiting it if it is awaitable)."""
    try:
        value = fn()
        if isinstance(value, Awaitable):
            value = await value
    except (asyncio.CancelledError, KeyboardInterrupt):
        raise
    except BaseException as exc:
        trace.append((*label, "raised", type(exc).__name__))
        return None
    trace.append((*label, "->", value))
    return value


async def drive(rnd: random.Random, trace: Trace, tasks: list[asyncio.Task[Any]],
                spawn: Callable[[int], Any], act: Callable[[], Awaitable[None]]) -> None:
    """The common driver: each step spawns a task, cancels one, lets the
    scenario act, or yields; then the tasks still blocked are cancelled and
    every outcome is recorded."""
    for _ in range(STEPS):
        r = rnd.random()
        if r < 0.3:
            tasks.append(asyncio.create_task(spawn(len(tasks))))
        elif r < 0.42 and tasks:
            i = rnd.randrange(len(tasks))
            trace.append(("cancel", i, tasks[i].cancel()))
        elif r < 0.7:
            await act()
        else:
            await asyncio.sleep(0)
    # Tasks still blocked (a waiter nobody will wake) are cancelled, then all
    # are waited for.
    for _ in range(5):
        await asyncio.sleep(0)
    trace.append(("still pending", tuple(i for i, t in enumerate(tasks) if not t.done())))
    for t in tasks:
        t.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    trace.append(("results", tuple(map(outcome, results))))


def semaphore_program(prims: Any, seed: int, bounded: bool) -> Callable[[], Awaitable[Trace]]:
    async def main() -> Trace:
        rnd = random.Random(seed)
        trace: Trace = []
        cls = prims.BoundedSemaphore if bounded else prims.Semaphore
        sem = cls(rnd.randint(0, 3))
        held: list[int] = []

        async def worker(i: int) -> int:
            try:
                got = await sem.acquire()
            except asyncio.CancelledError:
                trace.append(("cancelled waiting", i, sem.locked()))
                raise
            trace.append(("acquired", i, got, sem.locked()))
            try:
                for _ in range(rnd.randint(0, 2)):
                    await asyncio.sleep(0)
            finally:
                sem.release()
                trace.append(("released", i, sem.locked()))
            return i

        async def act() -> None:
            r = rnd.random()
            if r < 0.4:
                await call(trace, ("release",), sem.release)
            elif r < 0.6 and not sem.locked():
                got = await call(trace, ("acquire now",), sem.acquire)
                if got:
                    held.append(1)
            elif r < 0.8 and held:
                held.pop()
                await call(trace, ("give back",), sem.release)
            else:
                trace.append(("locked", sem.locked()))

        tasks: list[asyncio.Task[Any]] = []
        await drive(rnd, trace, tasks, worker, act)
        trace.append(("end locked", sem.locked()))
        return trace
    return main


def lock_program(prims: Any, seed: int) -> Callable[[], Awaitable[Trace]]:
    async def main() -> Trace:
        rnd = random.Random(seed)
        trace: Trace = []
        lock = prims.Lock()

        async def worker(i: int) -> int:
            async with lock:
                trace.append(("holds", i, lock.locked()))
                for _ in range(rnd.randint(0, 2)):
                    await asyncio.sleep(0)
            trace.append(("left", i, lock.locked()))
            return i

        async def act() -> None:
            if rnd.random() < 0.5:
                trace.append(("locked", lock.locked()))
            else:
                await call(trace, ("release",), lock.release)   # not the owner: may raise

        tasks: list[asyncio.Task[Any]] = []
        await drive(rnd, trace, tasks, worker, act)
        return trace
    return main


def event_program(prims: Any, seed: int) -> Callable[[], Awaitable[Trace]]:
    async def main() -> Trace:
        rnd = random.Random(seed)
        trace: Trace = []
        event = prims.Event()

        async def waiter(i: int) -> int:
            got = await event.wait()
            trace.append(("woke", i, got, event.is_set()))
            return i

        async def act() -> None:
            r = rnd.random()
            if r < 0.4:
                event.set()
            elif r < 0.8:
                event.clear()
            trace.append(("is_set", event.is_set()))

        tasks: list[asyncio.Task[Any]] = []
        await drive(rnd, trace, tasks, waiter, act)
        return trace
    return main


def queue_program(prims: Any, seed: int, kind: str) -> Callable[[], Awaitable[Trace]]:
    async def main() -> Trace:
        rnd = random.Random(seed)
        trace: Trace = []
        queue = getattr(prims, kind)(rnd.randint(0, 3))
        counter = iter(range(10**6))
        can_shut = hasattr(queue, "shutdown")

        def state() -> tuple[Any, ...]:
            return (queue.qsize(), queue.empty(), queue.full())

        async def worker(i: int) -> Any:
            r = rnd.random()
            if r < 0.45:
                item = next(counter)
                await queue.put(item)
                trace.append(("put", i, item, state()))
                return item
            if r < 0.9:
                item = await queue.get()
                trace.append(("got", i, item, state()))
                if rnd.random() < 0.7:
                    queue.task_done()
                return item
            await queue.join()
            trace.append(("joined", i, state()))
            return "joined"

        async def act() -> None:
            r = rnd.random()
            if r < 0.3:
                await call(trace, ("put_nowait",), lambda: queue.put_nowait(next(counter)))
            elif r < 0.6:
                await call(trace, ("get_nowait",), queue.get_nowait)
            elif r < 0.75:
                await call(trace, ("task_done",), queue.task_done)
            elif r < 0.78 and can_shut:
                await call(trace, ("shutdown",), lambda: queue.shutdown(immediate=rnd.random() < 0.5))
            else:
                trace.append(("state", state()))

        tasks: list[asyncio.Task[Any]] = []
        await drive(rnd, trace, tasks, worker, act)
        trace.append(("end", state()))
        return trace
    return main


def gather_program(prims: Any, seed: int) -> Callable[[], Awaitable[Trace]]:
    async def main() -> Trace:
        rnd = random.Random(seed)
        trace: Trace = []
        loop = asyncio.get_running_loop()

        async def child(tag: Any) -> Any:
            for _ in range(rnd.randint(0, 3)):
                await asyncio.sleep(0)
            if rnd.random() < 0.2:
                raise KeyError(tag)
            trace.append(("child done", tag))
            return tag

        def arg(i: int, j: int, depth: int = 0) -> Any:
            r = rnd.random()
            if r < 0.45:
                return child((i, j))
            if r < 0.52:
                return asyncio.ensure_future(child((i, j, "task")))
            if r < 0.6 and depth < 2:          # a nested gather, sometimes cancelled
                inner = prims.gather(*[arg(i, j * 10 + k, depth + 1) for k in range(rnd.randint(0, 3))],
                                     return_exceptions=rnd.random() < 0.5)
                if rnd.random() < 0.2:
                    loop.call_soon(inner.cancel)
                return inner
            fut = loop.create_future()
            if r < 0.75:
                fut.set_result((i, j))
            elif r < 0.85:
                fut.set_exception(ValueError(i, j))
            else:
                loop.call_soon(fut.cancel)
            return fut

        async def gatherer(i: int) -> Any:
            args = [arg(i, j) for j in range(rnd.randint(0, 4))]
            if args and rnd.random() < 0.2:
                args.append(args[0])           # the same awaitable twice
            outer = prims.gather(*args, return_exceptions=rnd.random() < 0.5)
            if rnd.random() < 0.2:
                loop.call_soon(outer.cancel)
            try:
                res = await outer
            except (Exception, asyncio.CancelledError) as exc:
                trace.append(("gather raised", i, outcome(exc), outer.cancelled()))
                raise
            trace.append(("gathered", i, tuple(map(outcome, res))))
            return res

        async def act() -> None:
            trace.append(("tick",))

        tasks: list[asyncio.Task[Any]] = []
        await drive(rnd, trace, tasks, gatherer, act)
        return trace
    return main


PROGRAMS: dict[str, Callable[[Any, int], Callable[[], Awaitable[Trace]]]] = {
    "Semaphore": lambda p, s: semaphore_program(p, s, bounded=False),
    "BoundedSemaphore": lambda p, s: semaphore_program(p, s, bounded=True),
    "Lock": lock_program,
    "Event": event_program,
    "Queue": lambda p, s: queue_program(p, s, "Queue"),
    "LifoQueue": lambda p, s: queue_program(p, s, "LifoQueue"),
    "PriorityQueue": lambda p, s: queue_program(p, s, "PriorityQueue"),
    "gather": gather_program,
}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("program", list(PROGRAMS))
def test_same_trace_as_asyncio(run, program: str, seed: int) -> None:
    make = PROGRAMS[program]
    expected = run(make(stdlib_prims(), seed)())
    got = run(make(c_prims(), seed)())
    assert len(expected) > 20, "the program did too little to compare"
    if got != expected:   # show where they part, not two long lists
        at = next((k for k, (a, b) in enumerate(zip(got, expected)) if a != b),
                  min(len(got), len(expected)))
        pytest.fail(f"{program} seed {seed} (Python {sys.version_info[:2]}): traces part at "
                    f"step {at}:\n  asyncio: {expected[max(0, at - 3):at + 3]}\n"
                    f"  C:       {got[max(0, at - 3):at + 3]}")


# ---------------------------------------------------------------- method dispatch
# asyncio's primitives are Python classes whose methods call each other through
# `self` (put() ends with self.put_nowait(), Semaphore.acquire() asks
# self.locked(), `async with` awaits self.acquire()...), so a subclass's
# override takes part in all of them. The C classes must call the same
# overrides, in the same order.

DISPATCHED = {
    "Lock": ("acquire", "release", "locked", "__aenter__", "__aexit__", "__repr__"),
    "Semaphore": ("acquire", "release", "locked", "__aenter__", "__aexit__", "__repr__"),
    "BoundedSemaphore": ("acquire", "release", "locked", "__aenter__", "__aexit__", "__repr__"),
    "Event": ("wait", "set", "clear", "is_set", "__repr__"),
    "Queue": ("put", "get", "put_nowait", "get_nowait", "qsize", "empty", "full", "task_done",
              "join", "_init", "_put", "_get", "_format", "__repr__", "shutdown"),
}
DISPATCHED["LifoQueue"] = DISPATCHED["PriorityQueue"] = DISPATCHED["Queue"]


def recording_subclass(base: type, model: type, calls: list[str]) -> type:
    """A subclass of base overriding each of model's DISPATCHED methods with a
    wrapper that records its name and calls the base's."""
    namespace: dict[str, Any] = {}
    for name in DISPATCHED[model.__name__]:
        if not hasattr(model, name):
            continue                     # shutdown before 3.13
        if asyncio.iscoroutinefunction(getattr(model, name)):
            async def method(self, *args, _name=name, **kwargs):  # type: ignore[no-untyped-def]
                calls.append(_name)
                return await getattr(super(cls, self), _name)(*args, **kwargs)
        else:
            def method(self, *args, _name=name, **kwargs):  # type: ignore[no-untyped-def]
                calls.append(_name)
                return getattr(super(cls, self), _name)(*args, **kwargs)
        namespace[name] = method
    cls = type("Recording" + model.__name__, (base,), namespace)
    return cls


async def lock_like_calls(cls: type) -> None:
    lock = cls(1) if "Semaphore" in cls.__mro__[1].__name__ else cls()
    async with lock:
        pass
    await lock.acquire()
    waiter = asyncio.ensure_future(lock.acquire())
    await asyncio.sleep(0)
    lock.release()
    await waiter
    lock.release()
    first, second = asyncio.ensure_future(lock.acquire()), asyncio.ensure_future(lock.acquire())
    await asyncio.sleep(0)
    second.cancel()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    if first.done():
        lock.release()
    lock.locked()
    repr(lock)


async def event_calls(cls: type) -> None:
    event = cls()
    waiter = asyncio.ensure_future(event.wait())
    await asyncio.sleep(0)
    event.set()
    await waiter
    event.is_set()
    event.clear()
    repr(event)


async def queue_calls(cls: type) -> None:
    queue = cls(1)
    await queue.put(1)
    blocked = asyncio.ensure_future(queue.put(2))
    await asyncio.sleep(0)
    await queue.get()
    queue.task_done()
    await blocked
    for op in (lambda: queue.put_nowait(3), queue.get_nowait, queue.get_nowait):
        try:
            op()
        except (asyncio.QueueFull, asyncio.QueueEmpty):
            pass
    queue.task_done()
    await queue.join()
    repr(queue)
    if hasattr(queue, "shutdown"):
        queue.put_nowait(4)
        queue.shutdown(immediate=True)


SCENARIOS = {"Lock": lock_like_calls, "Semaphore": lock_like_calls,
             "BoundedSemaphore": lock_like_calls, "Event": event_calls, "Queue": queue_calls,
             "LifoQueue": queue_calls, "PriorityQueue": queue_calls}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_subclass_overrides_called_as_asyncio_calls_them(run, name: str) -> None:
    model = getattr(asyncio, name)
    traces = []
    for base in (model, getattr(c_prims(), name)):
        calls: list[str] = []
        run(SCENARIOS[name](recording_subclass(base, model, calls)))
        traces.append(calls)
    assert len(traces[0]) >= 5
    assert traces[1] == traces[0]
