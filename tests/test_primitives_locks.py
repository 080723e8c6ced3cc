"""Lock, Event, Semaphore, BoundedSemaphore: asyncio's classes and pyasync_c's C ones
must behave the same, on the stdlib loop and on pyasync_c's (fixtures ``prims`` x ``run``).

Scenario tests return a trace and assert an explicit expectation; where the
expectation depends on the Python version the test also replays the scenario
with asyncio's own class and compares.
"""
from __future__ import annotations

import asyncio
import gc
import os
import sys
import warnings

from typing import Any

import pytest

from primitive_loops import LOOP_CLASSES, loop_name_with_uvloop  # noqa: F401  (fixture: loop_name plus uvloop)


PY313 = sys.version_info >= (3, 13)


async def spin(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def acquiring_tasks(sem, count: int, order: list) -> list:
    """Tasks 0..count-1 that each acquire sem once, then append their index to order."""
    async def waiter(i):
        await sem.acquire()
        order.append(i)
    return [asyncio.create_task(waiter(i)) for i in range(count)]


# --------------------------------------------------------------------------- Semaphore

def test_semaphore_free_acquire_does_not_suspend(run, prims):
    async def main():
        sem = prims.Semaphore(2)
        order = []

        async def other():
            order.append("other")

        t = asyncio.ensure_future(other())
        assert await sem.acquire() is True
        order.append("acquired")          # before `other` ran: no suspension
        assert not sem.locked()
        assert await sem.acquire() is True
        assert sem.locked()
        await t
        return order

    assert run(main()) == ["acquired", "other"]


def test_semaphore_async_with_returns_none_and_releases(run, prims):
    async def main():
        sem = prims.Semaphore()
        async with sem as x:
            assert x is None
            assert sem.locked()
        assert not sem.locked()
        lock_free = []
        try:
            async with sem:
                raise KeyError("boom")
        except KeyError:
            lock_free.append(not sem.locked())
        return lock_free

    assert run(main()) == [True]


def test_semaphore_fifo_handoff_no_overtaking(run, prims):
    async def main():
        sem = prims.Semaphore(1)
        order = []

        async def worker(name):
            async with sem:
                order.append(name)
                await asyncio.sleep(0)

        await sem.acquire()
        tasks = [asyncio.create_task(worker(i)) for i in range(5)]
        await spin()
        sem.release()
        # the permit was handed to the first waiter: still locked for newcomers
        assert sem.locked()
        late = asyncio.create_task(worker("late"))
        await asyncio.gather(*tasks, late)
        return order

    assert run(main()) == [0, 1, 2, 3, 4, "late"]


def test_semaphore_locked_rule_with_cancelled_waiters(run, prims):
    async def main():
        sem = prims.Semaphore(1)
        await sem.acquire()
        t = asyncio.create_task(sem.acquire())
        await spin()
        assert sem.locked()
        t.cancel()
        await spin()
        assert t.cancelled()
        sem.release()
        assert not sem.locked()
        assert await sem.acquire() is True
        assert sem.locked()
        return True

    assert run(main())


def test_semaphore_cancelled_after_handoff_gives_permit_back(run, prims):
    async def main():
        sem = prims.Semaphore(0)
        order = []

        async def waiter(name):
            await sem.acquire()
            order.append(name)

        t1 = asyncio.create_task(waiter(1))
        t2 = asyncio.create_task(waiter(2))
        await spin()
        sem.release()          # handed to t1 ...
        t1.cancel()            # ... which is cancelled before it runs
        await spin()
        assert t1.cancelled()
        await asyncio.wait_for(t2, 1)
        assert order == [2]
        assert sem.locked()    # t2 holds the single permit
        sem.release()
        assert not sem.locked()
        return order

    assert run(main()) == [2]


def test_semaphore_release_many_wakes_all(run, prims):
    """Several releases while waiters queue: every waiter gets through, in order
    (exercises 3.13's 'keep waking while value > 0' loop and 3.11/3.12's chain)."""
    async def main():
        sem = prims.Semaphore(0)
        order = []
        tasks = acquiring_tasks(sem, 6, order)
        await spin()
        for _ in range(3):
            sem.release()
        tasks[0].cancel()
        await spin(10)
        for _ in range(3):
            sem.release()
        await spin(10)
        pending = [t for t in tasks if not t.done()]
        for t in pending:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return order, sem._value if hasattr(sem, "_value") else None

    order_c = run(main())
    # compare with asyncio's own Semaphore on this Python version and loop
    ref = prims.Semaphore
    prims.Semaphore = asyncio.Semaphore
    try:
        order_ref = run(main())
    finally:
        prims.Semaphore = ref
    assert order_c == order_ref
    assert order_c[0] == [1, 2, 3, 4, 5]


def _replay_with_asyncio(run, prims, name, main):
    """run(main()) with prims' class, then with asyncio's own: both outcomes."""
    ours = run(main())
    ref = getattr(prims, name)
    setattr(prims, name, getattr(asyncio, name))
    try:
        theirs = run(main())
    finally:
        setattr(prims, name, ref)
    return ours, theirs


def test_semaphore_woken_waiters_skipped_by_later_releases(run, prims):
    """Releases while woken waiters have not run yet: each release must skip the
    futures already handed a permit (and the cancelled ones) and wake the next
    pending one; a woken waiter cancelled before running gives its permit back;
    waiters leave the queue out of order (a woken one in the middle, a cancelled
    one behind it), then more releases follow."""
    async def main():
        sem = prims.Semaphore(0)
        order = []
        trace = []

        async def waiter(i):
            try:
                await sem.acquire()
            except asyncio.CancelledError:
                order.append(("cancelled", i))
                raise
            order.append(i)

        tasks = [asyncio.create_task(waiter(i)) for i in range(10)]
        await spin()
        sem.release()
        sem.release()
        sem.release()                     # 0, 1, 2 woken, none has run
        trace.append((sem.locked(), len(sem._waiters)))
        tasks[1].cancel()                 # woken: gives the permit back when it runs
        tasks[5].cancel()                 # pending: its future is cancelled
        sem.release()                     # skips 0, 1, 2 (woken) -> wakes 3
        trace.append([f.done() for f in sem._waiters])
        sem._waiters[6].cancel()          # waiter 6's future directly (not woken yet)
        await asyncio.sleep(0)            # woken ones run; 1 hands its permit on
        trace.append((sem.locked(), len(sem._waiters), sorted(order, key=str)))
        sem.release()
        sem.release()
        await spin(10)
        for _ in range(4):
            sem.release()
        await spin(10)
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)
        return order, trace, sem.locked(), sem._value

    ours, theirs = _replay_with_asyncio(run, prims, "Semaphore", main)
    assert ours == theirs
    order = ours[0]
    assert [i for i in order if isinstance(i, int)] == [0, 2, 3, 4, 7, 8, 9]
    assert sorted(i for (_, i) in (x for x in order if isinstance(x, tuple))) == [1, 5, 6]


def test_semaphore_wake_scan_after_waiters_leave_from_the_head(run, prims):
    """The woken head leaves the queue while later releases still scan it."""
    async def main():
        sem = prims.Semaphore(0)
        order = []
        tasks = acquiring_tasks(sem, 12, order)
        await spin()
        for rnd in range(4):
            sem.release()
            sem.release()
            order.append(("released", rnd, len(sem._waiters)))
            await asyncio.sleep(0)        # the two woken run and leave the queue
            sem.release()                 # woken but still queued
            order.append(("round", rnd, len(sem._waiters), sem.locked()))
            await spin(3)
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
        return order, sem._value

    ours, theirs = _replay_with_asyncio(run, prims, "Semaphore", main)
    assert ours == theirs
    assert [i for i in ours[0] if isinstance(i, int)] == list(range(12))


@pytest.mark.parametrize("name", ["Lock", "Semaphore", "BoundedSemaphore"])
def test_async_with_calls_overridden_release(run, prims, name):
    """__aexit__ releases through self.release(): a subclass override is used."""
    base = getattr(prims, name)
    calls = []

    class Sub(base):
        def release(self):
            calls.append("release")
            super().release()

    class Plain(base):
        pass

    async def main():
        for cls in (Sub, Plain, base):
            p = cls()
            async with p:
                assert p.locked()
            assert not p.locked()
        return calls

    assert run(main()) == ["release"]


@pytest.mark.skipif(not PY313, reason="gh-111694 wake-up rules are 3.13+")
def test_semaphore_313_cancel_of_unwoken_waiter_keeps_fifo(run, prims):
    async def main():
        sem = prims.Semaphore(1)
        order = []

        async def w(i):
            async with sem:
                order.append(i)
                await asyncio.sleep(0)

        await sem.acquire()
        ts = [asyncio.create_task(w(i)) for i in range(3)]
        await spin()
        ts[1].cancel()
        sem.release()
        await asyncio.gather(*ts, return_exceptions=True)
        return order, sem.locked()

    assert run(main()) == ([0, 2], False)


def test_bounded_semaphore_released_too_many_times(run, prims):
    async def main():
        sem = prims.BoundedSemaphore(2)
        await sem.acquire()
        sem.release()
        with pytest.raises(ValueError, match="BoundedSemaphore released too many times"):
            sem.release()
        assert isinstance(sem, prims.Semaphore)
        return True

    assert run(main())


def test_semaphore_bad_values(prims):
    with pytest.raises(ValueError):
        prims.Semaphore(-1)
    with pytest.raises(ValueError):
        prims.BoundedSemaphore(-1)
    with pytest.raises(TypeError):
        prims.Semaphore(loop=None)
    with pytest.raises(TypeError):
        prims.Semaphore(1, 2)


def test_semaphore_release_without_acquire_increases(run, prims):
    async def main():
        sem = prims.Semaphore(0)
        sem.release()
        sem.release()
        await sem.acquire()
        await sem.acquire()
        return sem.locked()

    assert run(main()) is True


def test_repr_shapes(run, prims):
    async def main():
        sem = prims.Semaphore(2)
        lock = prims.Lock()
        ev = prims.Event()
        out = [repr(sem), repr(lock), repr(ev)]
        await lock.acquire()
        t = asyncio.create_task(lock.acquire())
        await spin()
        out.append(repr(lock))
        lock.release()
        await t
        ev.set()
        out.append(repr(ev))
        return [r[r.index("["):] for r in out]

    assert run(main()) == ["[unlocked, value:2]>", "[unlocked]>", "[unset]>",
                           "[locked, waiters:1]>", "[set]>"]


# --------------------------------------------------------------------------- loop binding

def test_bound_to_first_waiting_loop(prims, loop_factory):
    sem = prims.Semaphore(0)

    async def wait_briefly():
        try:
            await asyncio.wait_for(sem.acquire(), 0.01)
        except asyncio.TimeoutError:
            return "timeout"

    with asyncio.Runner(loop_factory=loop_factory) as r:
        assert r.run(wait_briefly()) == "timeout"
    with asyncio.Runner(loop_factory=loop_factory) as r:
        with pytest.raises(RuntimeError, match="is bound to a different event loop"):
            r.run(sem.acquire())
    # the fast path never touches the loop
    sem.release()

    async def fast():
        return await sem.acquire()

    with asyncio.Runner(loop_factory=loop_factory) as r:
        assert r.run(fast()) is True


def test_waiting_from_another_thread_sees_that_threads_loop(run, prims):
    """The running loop is per thread: a primitive bound to this loop, waited on
    from a thread with no loop and from a thread running another loop, raises."""
    async def main():
        sem = prims.Semaphore(0)
        task = asyncio.create_task(sem.acquire())
        await spin()                        # bound to this loop, one waiter

        def no_loop() -> str:
            coro = sem.acquire()
            try:
                coro.send(None)
            except RuntimeError:
                return "RuntimeError"
            finally:
                coro.close()
            return "waited"

        def other_loop() -> str:
            try:
                asyncio.run(sem.acquire())
            except RuntimeError as exc:
                return str(exc).split(" is ")[-1]
            return "waited"

        results = [await asyncio.to_thread(no_loop), await asyncio.to_thread(other_loop)]
        sem.release()
        await task
        return results

    assert run(main()) == ["RuntimeError", "bound to a different event loop"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_has_no_running_loop(run, prims):
    """After fork() inside a running loop, the child sees no running loop
    (3.11: the record's pid is the parent's; 3.12+: reset at fork), so a
    primitive bound to that loop cannot wait there."""
    async def main():
        sem = prims.Semaphore(0)
        task = asyncio.create_task(sem.acquire())
        await spin()                        # bound, and the running loop was looked up
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)   # fork with threads
            pid = os.fork()
        if pid == 0:                        # child: report, never return into pytest
            code = 3
            try:
                coro = sem.acquire()
                try:
                    coro.send(None)
                    code = 1                # waited on the parent's loop
                except RuntimeError:
                    code = 0
                finally:
                    coro.close()
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        sem.release()
        await task
        return os.waitstatus_to_exitcode(status)

    assert run(main()) == 0


def blocked_waiter_future(prims):
    """A coroutine function: a task blocks on a Semaphore(0), and the future it
    waits on (Task._fut_waiter) is returned once the permit has come."""
    async def main():
        sem = prims.Semaphore(0)
        task = asyncio.create_task(sem.acquire())
        await spin()
        fut = task._fut_waiter
        sem.release()
        assert await task is True
        return fut
    return main


def test_waiter_future_belongs_to_the_running_loop(run, prims):
    async def main():
        fut = await blocked_waiter_future(prims)()
        return isinstance(fut, asyncio.Future), fut.get_loop() is asyncio.get_running_loop()
    assert run(main()) == (True, True)


def test_waiters_come_from_an_overridden_create_future(prims, loop_name):
    made: list[Any] = []

    base = LOOP_CLASSES[loop_name]

    class Loop(base):  # type: ignore[misc, valid-type]
        def create_future(self):
            made.append(super().create_future())
            return made[-1]

    with asyncio.Runner(loop_factory=Loop) as runner:
        fut = runner.run(blocked_waiter_future(prims)())
    assert fut in made


def test_waiters_come_from_create_future_set_on_the_instance(run, prims):
    made: list[Any] = []

    async def main():
        loop = asyncio.get_running_loop()
        orig = loop.create_future

        def spy():
            made.append(orig())
            return made[-1]
        loop.create_future = spy  # type: ignore[method-assign]
        try:
            return await blocked_waiter_future(prims)()
        finally:
            del loop.create_future
    assert run(main()) in made


# --------------------------------------------------------------------------- Lock

def test_lock_basics(run, prims):
    async def main():
        lock = prims.Lock()
        assert not lock.locked()
        assert await lock.acquire() is True
        assert lock.locked()
        lock.release()
        with pytest.raises(RuntimeError, match=r"Lock is not acquired\."):
            lock.release()
        async with lock as x:
            assert x is None and lock.locked()
        return lock.locked()

    assert run(main()) is False


def test_lock_fifo_and_cancel_corners(run, prims):
    async def main():
        lock = prims.Lock()
        order = []

        async def w(i):
            async with lock:
                order.append(i)
                await asyncio.sleep(0)

        await lock.acquire()
        ts = [asyncio.create_task(w(i)) for i in range(4)]
        await spin()
        ts[0].cancel()           # cancelled while waiting
        lock.release()
        ts[1].cancel()           # woken (result set) then cancelled before running
        await asyncio.gather(*ts, return_exceptions=True)
        return order, lock.locked(), [t.cancelled() for t in ts]

    assert run(main()) == ([2, 3], False, [True, True, False, False])


def test_lock_acquire_fast_path_when_all_waiters_cancelled(run, prims):
    async def main():
        lock = prims.Lock()
        await lock.acquire()
        t = asyncio.create_task(lock.acquire())
        await spin()
        t.cancel()
        await spin()
        lock.release()
        order = []
        asyncio.get_running_loop().call_soon(order.append, "soon")
        await lock.acquire()
        order.append("acquired")
        await spin()
        return order

    assert run(main()) == ["acquired", "soon"]


def test_lock_rejects_arguments(prims):
    with pytest.raises(TypeError, match="unexpected keyword argument 'loop'"):
        prims.Lock(loop=None)
    with pytest.raises(TypeError):
        prims.Lock(1)
    with pytest.raises(TypeError):
        prims.Event(1)


def test_lock_with_wait_for_timeout(run, prims):
    async def main():
        lock = prims.Lock()
        await lock.acquire()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(lock.acquire(), 0.01)
        lock.release()
        assert not lock.locked()
        return await asyncio.wait_for(lock.acquire(), 1)

    assert run(main()) is True


# --------------------------------------------------------------------------- Event

def test_event(run, prims):
    async def main():
        ev = prims.Event()
        assert not ev.is_set()
        results = []

        async def w(i):
            results.append((i, await ev.wait()))

        ts = [asyncio.create_task(w(i)) for i in range(3)]
        await spin()
        ts[1].cancel()
        await spin()
        ev.set()
        ev.set()
        assert ev.is_set()
        await asyncio.gather(*ts, return_exceptions=True)
        assert await ev.wait() is True
        ev.clear()
        assert not ev.is_set()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(ev.wait(), 0.01)
        return results

    assert run(main()) == [(0, True), (2, True)]


def test_event_set_then_clear_before_waiter_runs(run, prims):
    async def main():
        ev = prims.Event()
        t = asyncio.create_task(ev.wait())
        await spin()
        ev.set()
        ev.clear()
        return await t

    assert run(main()) is True


# --------------------------------------------------------------------------- awaitable protocol / misuse

def test_awaitables_work_as_tasks_and_coroutine_protocol(run, prims):
    async def main():
        lock = prims.Lock()
        t = asyncio.create_task(lock.acquire())
        assert await t is True
        aw = lock.acquire()
        aw.close()             # never started: harmless, lock untouched
        assert lock.locked()
        lock.release()
        aw = lock.acquire()
        with pytest.raises(KeyError):
            aw.throw(KeyError("x"))   # thrown before start: raised, no effect
        assert not lock.locked()
        return True

    assert run(main())


def test_abandoned_waiter_is_removed(run, prims):
    async def main():
        lock = prims.Lock()
        await lock.acquire()
        aw = lock.acquire().__await__()
        fut = aw.send(None)              # suspended on a waiter future
        assert isinstance(fut, asyncio.Future)
        aw.close()                       # GeneratorExit at the await
        assert not lock._waiters
        aw2 = lock.acquire().__await__()
        aw2.send(None)
        del aw2
        gc.collect()                     # finaliser removes its waiter
        assert not lock._waiters
        lock.release()
        assert not lock.locked()
        return True

    assert run(main())


def test_no_running_loop_when_contended(prims):
    sem = prims.Semaphore(0)
    aw = sem.acquire().__await__()
    with pytest.raises((RuntimeError, AttributeError)):
        aw.send(None)
    ev = prims.Event()
    ev.set()
    # uncontended paths need no loop at all
    with pytest.raises(StopIteration) as e:
        ev.wait().__await__().send(None)
    assert e.value.value is True


def test_closed_loop_waiter(prims, loop_factory):
    loop = loop_factory()
    lock = prims.Lock()

    async def hold():
        await lock.acquire()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(lock.acquire(), 0.01)

    loop.run_until_complete(hold())
    loop.close()
    lock.release()
    assert not lock.locked()
