"""Soak: churn connections, timers, queues and tasks for ``ctx.soak_seconds`` and
print the RSS and fd series, one line per interval.

At each sample the churn is paused until nothing is in flight (so the fd count is
exact), a gc pass runs, then RSS and fds are read.  After the warm-up (the first
20% of the run, at least one interval): fails if the fd count ever exceeds the
first post-warm-up sample, or if RSS keeps growing (the median of the last third
of the post-warm-up samples above the median of the first third by more than
RSS_TOLERANCE_MIB or 5%).
"""
from __future__ import annotations

import asyncio
import gc
import random
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable

from ..common import LOOPBACK, echo_server, pattern, wait_until
from ..harness import Context, memory_kib, open_fds

RSS_TOLERANCE_MIB = 2.0


class Churn:
    """Workers that each repeat one step while the gate is open; ``busy`` counts
    steps in flight so a sampler can wait for a quiet moment."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.gate.set()
        self.stopping = False
        self.busy = 0
        self.counts: Counter[str] = Counter()

    async def worker(self, name: str, step: Callable[[], Awaitable[int]]) -> None:
        while not self.stopping:
            await self.gate.wait()
            if self.stopping:
                return
            self.busy += 1
            try:
                self.counts[name] += await step()
            finally:
                self.busy -= 1


async def connection_step(ctx: Context, port: int, rng: random.Random) -> int:
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    data = pattern(rng.randrange(1000), rng.randrange(1, 8192))
    writer.write(data)
    ctx.check(await asyncio.wait_for(reader.readexactly(len(data)), 10) == data,
              "soak: echo differs")
    writer.close()
    await writer.wait_closed()
    return 1


async def timer_step(rng: random.Random) -> int:
    loop = asyncio.get_running_loop()
    fired = 0
    handles = []
    for _ in range(500):
        handles.append(loop.call_later(rng.random() * 0.02, lambda: None))
    for handle in handles[::2]:
        handle.cancel()
    for _ in range(50):  # sleeps and timeouts that expire, and ones that don't
        try:
            await asyncio.wait_for(asyncio.sleep(rng.random() * 0.002), 0.001)
            fired += 1
        except TimeoutError:
            pass
    await asyncio.sleep(0.021)  # the uncancelled ones have fired
    return 500 + fired


async def queue_step(rng: random.Random) -> int:
    queue: asyncio.Queue[int] = asyncio.Queue(maxsize=rng.choice((1, 16, 64)))
    items = 1000

    async def produce(start: int) -> None:
        for i in range(start, items, 2):
            await queue.put(i)

    async def consume() -> int:
        total = 0
        for _ in range(items // 2):
            total += await queue.get()
            queue.task_done()
        return total
    sums = await asyncio.gather(produce(0), produce(1), consume(), consume())
    assert sums[2] + sums[3] == items * (items - 1) // 2
    await queue.join()
    return items


async def task_step(rng: random.Random) -> int:
    tasks = [asyncio.create_task(asyncio.sleep(rng.random() * 0.005)) for _ in range(200)]
    for task in tasks[::3]:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return len(tasks)


def growth_failure(rss_mib: list[float]) -> str | None:
    """Why the post-warm-up RSS series counts as growing, or None."""
    if len(rss_mib) < 3:
        return None
    third = max(1, len(rss_mib) // 3)
    first, last = statistics.median(rss_mib[:third]), statistics.median(rss_mib[-third:])
    tolerance = max(RSS_TOLERANCE_MIB, 0.05 * first)
    if last - first > tolerance:
        return (f"RSS kept growing after warm-up: median {first:.1f} -> {last:.1f} MiB "
                f"(tolerance {tolerance:.1f})")
    return None


async def main(ctx: Context) -> None:
    duration = ctx.soak_seconds
    interval = min(10.0, max(1.0, duration / 20))
    warm_up = max(interval, 0.2 * duration)
    server, port, _ = await echo_server(backlog=256)
    churn = Churn()
    rng = random.Random(20261205)
    workers = [asyncio.create_task(churn.worker("conns", lambda: connection_step(ctx, port, rng)))
               for _ in range(16)]
    workers += [asyncio.create_task(churn.worker("timers", lambda: timer_step(rng)))
                for _ in range(4)]
    workers += [asyncio.create_task(churn.worker("queue items", lambda: queue_step(rng)))
                for _ in range(2)]
    workers += [asyncio.create_task(churn.worker("tasks", lambda: task_step(rng)))
                for _ in range(2)]
    started = time.monotonic()
    series: list[tuple[float, float, int]] = []  # (t, RSS MiB, fds)
    print(f"soak on {ctx.loop_name}: {duration:.0f}s, a sample every {interval:.0f}s, "
          f"warm-up {warm_up:.0f}s", flush=True)
    try:
        while (elapsed := time.monotonic() - started) < duration:
            await asyncio.sleep(min(interval, duration - elapsed))
            churn.gate.clear()
            await wait_until(lambda: churn.busy == 0, 30, "the churn to pause")
            gc.collect()
            t = time.monotonic() - started
            rss, fds = memory_kib()[0] / 1024, len(open_fds())
            series.append((t, rss, fds))
            counts = "  ".join(f"{k}={v:,}" for k, v in sorted(churn.counts.items()))
            print(f"soak t={t:6.0f}s  rss={rss:7.1f} MiB  fds={fds:5d}  {counts}"
                  + ("  (warm-up)" if t < warm_up else ""), flush=True)
            churn.gate.set()
    finally:
        churn.stopping = True
        churn.gate.set()
        await asyncio.gather(*workers, return_exceptions=True)
        server.close()
        await server.wait_closed()
    for task in workers:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
    post = [(rss, fds) for t, rss, fds in series if t >= warm_up]
    ctx.note(f"{len(series)} samples, {len(post)} after warm-up; "
             + ", ".join(f"{k} {v:,}" for k, v in sorted(churn.counts.items())))
    if post:
        ctx.check(max(fds for _, fds in post) <= post[0][1],
                  f"fds grew after warm-up: {[fds for _, fds in post]}")
        growing = growth_failure([rss for rss, _ in post])
        if ctx.rss_checks:
            ctx.check(growing is None, growing or "")
