"""Stress: thousands of tasks contending on Semaphore/Lock/Queue with random
cancellations.  Afterwards the bookkeeping must be exact, checked only through
public behaviour (locked(), non-blocking acquires, qsize(), join())."""
from __future__ import annotations

import asyncio
import random

import pytest

from primitive_loops import loop_name_with_uvloop  # noqa: F401  (fixture: loop_name plus uvloop)

N_TASKS = 2000


@pytest.mark.parametrize("permits", [1, 7])
def test_semaphore_contention_with_cancellations(run, prims, permits):
    async def main():
        rnd = random.Random(1234 + permits)
        sem = prims.BoundedSemaphore(permits)
        inside = 0
        peak = 0
        completed = 0

        async def worker():
            nonlocal inside, peak, completed
            async with sem:
                inside += 1
                peak = max(peak, inside)
                try:
                    for _ in range(rnd.randint(0, 2)):
                        await asyncio.sleep(0)
                finally:
                    inside -= 1
            completed += 1

        tasks = [asyncio.create_task(worker()) for _ in range(N_TASKS)]
        for _ in range(N_TASKS // 10):
            await asyncio.sleep(0)
            for t in rnd.sample(tasks, 15):
                t.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        cancelled = sum(isinstance(r, asyncio.CancelledError) for r in results)
        assert completed + cancelled == N_TASKS
        assert cancelled > 0 and completed > 0
        assert peak <= permits and inside == 0
        # every permit is back: exactly `permits` acquisitions succeed at once
        for _ in range(permits):
            assert not sem.locked()
            await asyncio.wait_for(sem.acquire(), 1)
        assert sem.locked()
        for _ in range(permits):
            sem.release()
        with pytest.raises(ValueError):
            sem.release()
        return True

    assert run(main())


def test_lock_contention_with_cancellations(run, prims):
    async def main():
        rnd = random.Random(99)
        lock = prims.Lock()
        holders = 0
        counter = 0

        async def worker():
            nonlocal holders, counter
            async with lock:
                holders += 1
                assert holders == 1
                try:
                    if rnd.random() < 0.3:
                        await asyncio.sleep(0)
                    counter += 1
                finally:
                    holders -= 1

        tasks = [asyncio.create_task(worker()) for _ in range(N_TASKS)]
        for _ in range(N_TASKS // 10):
            await asyncio.sleep(0)
            for t in rnd.sample(tasks, 10):
                t.cancel()
        res = await asyncio.gather(*tasks, return_exceptions=True)
        ok = sum(r is None for r in res)
        assert ok == counter
        assert not lock.locked()
        await asyncio.wait_for(lock.acquire(), 1)
        assert lock.locked()
        lock.release()
        return True

    assert run(main())


@pytest.mark.parametrize("kind", ["Queue", "LifoQueue", "PriorityQueue"])
def test_queue_producers_consumers_with_cancellations(run, prims, kind):
    async def main():
        rnd = random.Random(7)
        q = getattr(prims, kind)(maxsize=16)
        put_ok = 0
        got = 0

        async def producer(i):
            nonlocal put_ok
            await q.put(i)
            put_ok += 1

        async def consumer():
            nonlocal got
            await q.get()
            got += 1
            try:
                if rnd.random() < 0.5:
                    await asyncio.sleep(0)
            finally:
                q.task_done()

        prods = [asyncio.create_task(producer(i)) for i in range(N_TASKS // 2)]
        cons = [asyncio.create_task(consumer()) for _ in range(N_TASKS // 2)]
        everyone = prods + cons
        for _ in range(N_TASKS // 10):
            await asyncio.sleep(0)
            for t in rnd.sample(everyone, 8):
                t.cancel()
        # cancellations leave producers and consumers unbalanced: let the rest
        # run, then cancel whoever is still blocked (more random cancellations)
        for _ in range(50):
            await asyncio.sleep(0)
        for t in everyone:
            t.cancel()
        await asyncio.gather(*everyone, return_exceptions=True)
        # every successful put is either still queued or was got
        assert q.qsize() == put_ok - got
        assert 0 <= q.qsize() <= 16
        assert q._unfinished_tasks == put_ok - got   # consumers always task_done()
        # no stale waiter may swallow a wake-up: the queue still works both ways
        left = q.qsize()
        for _ in range(left):
            await asyncio.wait_for(q.get(), 1)
            q.task_done()
        await asyncio.wait_for(q.join(), 1)
        for i in range(16):
            await asyncio.wait_for(q.put(i), 1)
        assert q.full()
        return put_ok, got

    put_ok, got = run(main())
    assert put_ok > 0 and got > 0
