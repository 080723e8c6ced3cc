"""A user program touching every public name of pyasync_c: `mypy --strict`
must accept it (tests/test_typing.py).  It is also run (on 3.11+)."""
from __future__ import annotations

import asyncio
from typing import Any

import pyasync_c
from pyasync_c import (
    PRIMITIVE_NAMES, BoundedSemaphore, Event, EventLoopPolicy, Handle, LifoQueue, Lock, Loop,
    PriorityQueue, Queue, Semaphore, TimerHandle, gather, install, install_primitives,
    libuv_version, new_event_loop, run, sleep,
)


async def produce(q: Queue[int], n: int) -> None:
    for i in range(n):
        await q.put(i)


async def consume(q: Queue[int], n: int) -> int:
    total = 0
    for _ in range(n):
        item: int = await q.get()
        total += item
        q.task_done()
    return total


async def word() -> str:
    await sleep(0)
    return "done"


async def main() -> tuple[int, str]:
    lock = Lock()
    async with lock:
        assert lock.locked()
    locked: bool = await lock.acquire()
    lock.release()
    event = Event()
    event.set()
    is_set: bool = await event.wait()
    sem = Semaphore(2)
    async with sem:
        pass
    bounded = BoundedSemaphore(1)
    await bounded.acquire()
    bounded.release()
    q: Queue[int] = Queue(maxsize=4)
    lifo: LifoQueue[str] = LifoQueue()
    lifo.put_nowait("a")
    top: str = lifo.get_nowait()
    prio: PriorityQueue[tuple[int, str]] = PriorityQueue()
    prio.put_nowait((1, "x"))
    first: tuple[int, str] = await prio.get()
    _, total = await gather(produce(q, 10), consume(q, 10))
    await q.join()
    results: tuple[int | BaseException] = await gather(consume(Queue(), 0), return_exceptions=True)
    value: str = await sleep(0.001, "late")
    n, w = await gather(asyncio.sleep(0, 1), word())
    assert locked and is_set and top == "a" and first == (1, "x") and value == "late"
    assert list(results) == [0]  # a list at run time (typeshed types it as a tuple)
    return total + n, w


def handles(loop: Loop) -> None:
    h: Handle = loop.call_soon(print, "soon")
    t: TimerHandle = loop.call_later(0.01, print, "later")
    h.cancel()
    t.cancel()
    when: float = t.when()
    assert when > 0


def entry_points() -> None:
    result: tuple[int, str] = run(main())
    result = run(main(), debug=False)
    result = run(main(), loop_factory=new_event_loop)
    loop: Loop = new_event_loop()
    handles(loop)
    loop.close()
    with asyncio.Runner(loop_factory=pyasync_c.new_event_loop) as runner:
        result = runner.run(main())
    policy: asyncio.AbstractEventLoopPolicy = EventLoopPolicy()
    assert isinstance(policy, asyncio.AbstractEventLoopPolicy)
    names: list[str] = install_primitives()
    install(primitives=False)
    asyncio.set_event_loop_policy(None)
    version: str = pyasync_c.__version__
    prims: tuple[str, ...] = PRIMITIVE_NAMES
    uv: str = libuv_version
    watcher = pyasync_c.watch_blocking(0.5)
    watcher.stop()
    stats_loop = new_event_loop()
    logger = pyasync_c.log_stats_every(60.0, loop=stats_loop)
    logger.cancel()
    stats_loop.close()
    report: dict[str, Any] = pyasync_c.status()
    assert "on_pyasync_c" in report
    print(result, names, version, prims, uv)


if __name__ == "__main__":
    entry_points()
