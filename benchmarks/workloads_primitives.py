"""Primitive workloads: each runs with asyncio's primitive and with
pyasync_c._primitives' one (``prims``), on the stdlib and pyasync_c loops.

Only the primitive under test comes from ``prims``; task creation and joining
use asyncio on both sides so that the two primitive sets are compared alone.
"""
from __future__ import annotations

import asyncio
from typing import Any

from harness import Body, Prims, per_unit, run_tasks, workload
from workloads_loop import gather_rounds


@workload("primitives", "acquires", n=400_000, requires=("Semaphore",))
def sem_uncontended(prims: Prims, n: int) -> Body:
    """One task doing ``async with sem`` on a Semaphore(1), n times."""

    async def body() -> int:
        sem = prims.Semaphore(1)
        for _ in range(n):
            async with sem:
                pass
        return n

    return body()


@workload("primitives", "acquires", n=100_000, requires=("Semaphore",))
def sem_contended(prims: Prims, n: int) -> Body:
    """100 tasks contending for a Semaphore(10), each ``async with sem: await sleep(0)``."""
    tasks = 100
    per_task = per_unit(n, tasks)

    async def body() -> int:
        sem = prims.Semaphore(10)

        async def worker(_: int) -> None:
            for _ in range(per_task):
                async with sem:
                    await asyncio.sleep(0)

        await run_tasks(tasks, worker)
        return tasks * per_task

    return body()


@workload("primitives", "switches", n=1_000_000, requires=("sleep",))
def sleep0_switches(prims: Prims, n: int) -> Body:
    """The loop workload sleep0_pingpong with the primitive's ``sleep``:
    100 tasks each looping ``await sleep(0)``."""
    tasks = 100
    per_task = per_unit(n, tasks)

    async def body() -> int:
        sleep = prims.sleep

        async def worker(_: int) -> None:
            for _ in range(per_task):
                await sleep(0)

        await run_tasks(tasks, worker)
        return tasks * per_task

    return body()


BATCH = 10  # items in the unbounded queue at once


@workload("primitives", "items", n=1_000_000, requires=("Queue",))
def queue_nowait(prims: Prims, n: int) -> Body:
    """Unbounded Queue: put_nowait x10 then get_nowait x10, repeated; counts items through."""
    rounds = per_unit(n, BATCH)

    async def body() -> int:
        q = prims.Queue()
        put, get = q.put_nowait, q.get_nowait
        for _ in range(rounds):
            for i in range(BATCH):
                put(i)
            for _ in range(BATCH):
                get()
        return rounds * BATCH

    return body()


@workload("primitives", "items", n=500_000, requires=("Queue",))
def queue_await(prims: Prims, n: int) -> Body:
    """Unbounded Queue: ``await put`` x10 then ``await get`` x10 (never blocking), repeated."""
    rounds = per_unit(n, BATCH)

    async def body() -> int:
        q = prims.Queue()
        for _ in range(rounds):
            for i in range(BATCH):
                await q.put(i)
            for _ in range(BATCH):
                await q.get()
        return rounds * BATCH

    return body()


async def _producers_consumers(q: Any, pairs: int, n: int) -> int:
    """``pairs`` producer tasks ``await q.put`` and as many consumers ``await q.get``;
    n items in all. Returns items moved."""
    per_task = per_unit(n, pairs)

    async def produce(_: int) -> None:
        for i in range(per_task):
            await q.put(i)

    async def consume(_: int) -> None:
        for _ in range(per_task):
            await q.get()

    async def either(i: int) -> None:
        await (produce(i) if i < pairs else consume(i))

    await run_tasks(2 * pairs, either)
    return pairs * per_task


@workload("primitives", "items", n=60_000, requires=("Queue",))
def queue_pingpong(prims: Prims, n: int) -> Body:
    """Queue(maxsize=1) between one producer and one consumer task."""

    async def body() -> int:
        return await _producers_consumers(prims.Queue(maxsize=1), 1, n)

    return body()


@workload("primitives", "items", n=300_000, requires=("Queue",))
def queue_mpmc(prims: Prims, n: int) -> Body:
    """4 producers x 4 consumers through a Queue(maxsize=100)."""

    async def body() -> int:
        return await _producers_consumers(prims.Queue(maxsize=100), 4, n)

    return body()


@workload("primitives", "coroutines", n=100_000, requires=("gather",))
def gather_coros(prims: Prims, n: int) -> Body:
    """``await gather(*(tiny() for _ in range(1000)))`` repeated, gather from prims."""
    return gather_rounds(prims.gather, n)


@workload("primitives", "gathers", n=40_000, requires=("gather",))
def gather_done(prims: Prims, n: int) -> Body:
    """``await gather(*futs)`` over the same 10 already-done futures, repeated."""

    async def body() -> int:
        loop = asyncio.get_running_loop()
        futs = [loop.create_future() for _ in range(10)]
        for i, f in enumerate(futs):
            f.set_result(i)
        gather = prims.gather
        for _ in range(n):
            await gather(*futs)
        return n

    return body()
