"""Queue, LifoQueue, PriorityQueue: asyncio's classes and pyasync_c's C ones must
behave the same on the stdlib loop and pyasync_c's (fixtures ``prims`` x ``run``)."""
from __future__ import annotations

import asyncio
import sys

import pytest

from primitive_loops import loop_name_with_uvloop  # noqa: F401  (fixture: loop_name plus uvloop)

PY313 = sys.version_info >= (3, 13)


async def spin(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def test_basic_fifo_and_sizes(run, prims):
    async def main():
        q = prims.Queue()
        assert q.maxsize == 0 and q.empty() and not q.full() and q.qsize() == 0
        for i in range(5):
            await q.put(i)
        q.put_nowait(5)
        assert q.qsize() == 6 and not q.full()
        out = [await q.get() for _ in range(3)] + [q.get_nowait() for _ in range(3)]
        with pytest.raises(asyncio.QueueEmpty):
            q.get_nowait()
        return out

    assert run(main()) == [0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize("maxsize", [0, -1, 2, 2.5])
def test_maxsize(run, prims, maxsize):
    async def main():
        q = prims.Queue(maxsize)
        n = 0
        try:
            for _ in range(10):
                q.put_nowait(n)
                n += 1
        except asyncio.QueueFull:
            pass
        with pytest.raises(AttributeError):
            q.maxsize = 5
        return n, q.full(), q.maxsize

    n, full, m = run(main())
    assert m == maxsize
    if maxsize <= 0:
        assert (n, full) == (10, False)
    else:
        assert (n, full) == (2 if maxsize == 2 else 3, True)


def test_exceptions_are_asyncios(prims):
    q = prims.Queue(1)
    q.put_nowait(1)
    with pytest.raises(asyncio.QueueFull):
        q.put_nowait(2)
    q.get_nowait()
    try:
        q.get_nowait()
    except asyncio.QueueEmpty as e:
        assert type(e) is asyncio.QueueEmpty
    else:
        pytest.fail("no QueueEmpty")


def test_getters_wake_in_order(run, prims):
    async def main():
        q = prims.Queue()
        got = []

        async def getter(i):
            got.append((i, await q.get()))

        ts = [asyncio.create_task(getter(i)) for i in range(4)]
        await spin()
        for x in "abcd":
            q.put_nowait(x)
        await asyncio.gather(*ts)
        return got

    assert run(main()) == [(0, "a"), (1, "b"), (2, "c"), (3, "d")]


def test_putters_wait_when_full_and_wake_in_order(run, prims):
    async def main():
        q = prims.Queue(1)
        await q.put("first")
        ts = [asyncio.create_task(q.put(i)) for i in range(3)]
        await spin()
        assert all(not t.done() for t in ts)
        out = []
        for _ in range(4):
            out.append(await q.get())
            await spin()
        await asyncio.gather(*ts)
        return out

    assert run(main()) == ["first", 0, 1, 2]


def test_cancelled_woken_getter_passes_item_on(run, prims):
    async def main():
        q = prims.Queue()
        g1 = asyncio.create_task(q.get())
        g2 = asyncio.create_task(q.get())
        await spin()
        q.put_nowait("item")    # wakes g1 ...
        g1.cancel()             # ... which is cancelled before it runs: g2 must get it
        r = await asyncio.wait_for(g2, 1)
        return r, g1.cancelled(), q.qsize()

    assert run(main()) == ("item", True, 0)


def test_cancelled_woken_putter_passes_slot_on(run, prims):
    async def main():
        q = prims.Queue(1)
        q.put_nowait(0)
        p1 = asyncio.create_task(q.put(1))
        p2 = asyncio.create_task(q.put(2))
        await spin()
        assert q.get_nowait() == 0   # wakes p1 ...
        p1.cancel()                  # ... cancelled before running: p2 goes in
        await asyncio.wait_for(p2, 1)
        return q.get_nowait(), p1.cancelled(), q.empty()

    assert run(main()) == (2, True, True)


def test_cancelled_getters_are_not_kept(run, prims):
    async def main():
        q = prims.Queue()
        ts = [asyncio.create_task(q.get()) for _ in range(5)]
        await spin()
        for t in ts:
            t.cancel()
        await asyncio.gather(*ts, return_exceptions=True)
        return len(q._getters), q.empty()

    assert run(main()) == (0, True)


def test_task_done_and_join(run, prims):
    async def main():
        q = prims.Queue()
        await q.join()                       # nothing unfinished: immediate
        for i in range(3):
            q.put_nowait(i)
        joined = []

        async def joiner():
            await q.join()
            joined.append(True)

        j = asyncio.create_task(joiner())
        for _ in range(3):
            q.get_nowait()
            await spin()
            assert not joined
            q.task_done()
        await asyncio.wait_for(j, 1)
        with pytest.raises(ValueError, match=r"task_done\(\) called too many times"):
            q.task_done()
        return joined

    assert run(main()) == [True]


def test_join_returns_none(run, prims):
    async def main():
        q = prims.Queue()
        q.put_nowait(1)
        t = asyncio.create_task(q.join())
        await spin()
        q.get_nowait()
        q.task_done()
        return await t

    assert run(main()) is None


def test_lifo_and_priority_order(run, prims):
    async def main():
        lq = prims.LifoQueue()
        pq = prims.PriorityQueue()
        for x in [3, 1, 4, 1, 5, 9, 2, 6]:
            lq.put_nowait(x)
            await pq.put(x)
        return ([lq.get_nowait() for _ in range(8)], [await pq.get() for _ in range(8)],
                isinstance(lq, prims.Queue), isinstance(pq, prims.Queue))

    assert run(main()) == ([6, 2, 9, 5, 1, 4, 1, 3], [1, 1, 2, 3, 4, 5, 6, 9], True, True)


class Prio:
    """Compares by priority only, so equal priorities expose heap order."""

    def __init__(self, p, tag):
        self.p, self.tag = p, tag

    def __lt__(self, other):
        return self.p < other.p


def test_priority_queue_ties_match_heapq(prims):
    pq = prims.PriorityQueue()
    items = [Prio(p, i) for i, p in enumerate([2, 1, 2, 1, 0, 2, 1, 0, 2])]
    for it in items:
        pq.put_nowait(it)
    got = [pq.get_nowait().tag for _ in items]
    ref = asyncio.PriorityQueue()
    for it in items:
        ref.put_nowait(it)
    assert got == [ref.get_nowait().tag for _ in items]


def test_private_queue_storage_types(prims):
    assert type(prims.Queue()._queue).__name__ == "deque"
    assert type(prims.LifoQueue()._queue) is list
    assert type(prims.PriorityQueue()._queue) is list


def test_python_subclass_hooks(run, prims):
    """Subclasses overriding _init/_get/_put (the documented extension point) keep working."""

    class SetQueue(prims.Queue):
        def _init(self, maxsize):
            self._queue = []
            self.log = []

        def _put(self, item):
            self.log.append(("put", item))
            if item not in self._queue:
                self._queue.append(item)

        def _get(self):
            item = self._queue.pop(0)
            self.log.append(("get", item))
            return item

    class Doubling(prims.LifoQueue):
        def _put(self, item):
            super()._put(item * 2)

    async def main():
        q = SetQueue(maxsize=3)
        for x in [1, 2, 1, 3]:
            await q.put(x)
        got = [await q.get() for _ in range(3)]
        d = Doubling()
        d.put_nowait(1)
        d.put_nowait(2)
        return got, q.log, [d.get_nowait(), d.get_nowait()], q.qsize()

    got, log, dbl, size = run(main())
    assert got == [1, 2, 3]
    assert log == [("put", 1), ("put", 2), ("put", 1), ("put", 3), ("get", 1), ("get", 2), ("get", 3)]
    assert dbl == [4, 2]
    assert size == 0


def test_subclass_overriding_qsize_and_full(prims):
    class Tiny(prims.Queue):
        def full(self):
            return self.qsize() >= 1

    q = Tiny()
    q.put_nowait(1)
    with pytest.raises(asyncio.QueueFull):
        q.put_nowait(2)


def test_class_getitem_and_repr(prims):
    alias = prims.Queue[int]
    assert alias.__origin__ is prims.Queue and alias.__args__ == (int,)
    q = prims.Queue(5)
    q.put_nowait(1)
    r, s = repr(q), str(q)
    assert r.startswith("<Queue at 0x") and r.endswith(" maxsize=5 _queue=[1] tasks=1>")
    assert s == "<Queue maxsize=5 _queue=[1] tasks=1>"
    assert str(prims.LifoQueue()) == "<LifoQueue maxsize=0>"


def test_bad_arguments(prims):
    with pytest.raises(TypeError):
        prims.Queue(loop=None)
    with pytest.raises(TypeError):
        prims.Queue(1, 2)
    q = prims.Queue()
    with pytest.raises(TypeError):
        q.put_nowait()
    with pytest.raises(TypeError):
        q.get_nowait(1)


def test_loop_binding(prims, loop_factory):
    q = prims.Queue()

    async def wait_briefly():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(q.get(), 0.01)

    with asyncio.Runner(loop_factory=loop_factory) as r:
        r.run(wait_briefly())
    with asyncio.Runner(loop_factory=loop_factory) as r:
        with pytest.raises(RuntimeError, match="is bound to a different event loop"):
            r.run(q.get())
    q.put_nowait(1)

    async def fast():
        return await q.get()

    with asyncio.Runner(loop_factory=loop_factory) as r:
        assert r.run(fast()) == 1   # no wait, no loop check


# --------------------------------------------------------------------------- 3.13 shutdown

needs_shutdown = pytest.mark.skipif(not PY313, reason="Queue.shutdown is 3.13+")


@needs_shutdown
def test_shutdown_graceful(run, prims):
    async def main():
        q = prims.Queue()
        q.put_nowait(1)
        q.put_nowait(2)
        q.shutdown()
        with pytest.raises(asyncio.QueueShutDown):
            q.put_nowait(3)
        with pytest.raises(asyncio.QueueShutDown):
            await q.put(3)
        got = [await q.get(), q.get_nowait()]
        with pytest.raises(asyncio.QueueShutDown):
            q.get_nowait()
        with pytest.raises(asyncio.QueueShutDown):
            await q.get()
        return got, q._unfinished_tasks if hasattr(q, "_unfinished_tasks") else None, str(q)

    assert run(main()) == ([1, 2], 2, "<Queue maxsize=0 tasks=2 shutdown>")


@needs_shutdown
def test_shutdown_wakes_waiters(run, prims):
    async def main():
        q = prims.Queue(1)
        getters_q = prims.Queue()
        getters = [asyncio.create_task(getters_q.get()) for _ in range(2)]
        q.put_nowait(0)
        putters = [asyncio.create_task(q.put(i)) for i in range(2)]
        await spin()
        q.shutdown()
        getters_q.shutdown()
        res = await asyncio.gather(*getters, *putters, return_exceptions=True)
        return [type(r).__name__ for r in res]

    assert run(main()) == ["QueueShutDown"] * 4


@needs_shutdown
def test_shutdown_immediate_drains_and_finishes(run, prims):
    async def main():
        q = prims.Queue()
        for i in range(3):
            q.put_nowait(i)
        q.get_nowait()                 # one taken, not yet task_done
        j = asyncio.create_task(q.join())
        await spin()
        q.shutdown(immediate=True)
        await spin()
        done_before = j.done()
        q.task_done()
        await asyncio.wait_for(j, 1)
        with pytest.raises(asyncio.QueueShutDown):
            q.get_nowait()
        return done_before, q.qsize()

    assert run(main()) == (False, 0)
