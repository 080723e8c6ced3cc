"""The guide patterns at scale, without sleeps, so the loop and the primitives
are what is measured.  Part of ``python -m pyasync_c.demo``.

The stdlib column is asyncio's loop with asyncio's primitives, the uvloop
column uvloop's loop with asyncio's primitives (what ``uvloop.run()`` gives),
and the pyasync_c column pyasync_c's loop with its C primitives — what
``python -m pyasync_c`` gives an unmodified program.  Each pattern returns a value checked against
the expected one, so a fast wrong answer still fails.
"""
from __future__ import annotations

import asyncio
import random
import time
import types
from dataclasses import dataclass
from typing import Any, Callable, Coroutine, Optional, Sequence

Prims = types.SimpleNamespace
LoopFactory = Callable[[], asyncio.AbstractEventLoop]


async def fan_in(p: Prims, tasks: int = 20_000) -> int:
    """gather over many small tasks."""
    async def job(i: int) -> int:
        return i
    results = await p.gather(*(job(i) for i in range(tasks)))
    return sum(results)


async def bounded_fan_out(p: Prims, jobs: int = 20_000, limit: int = 50) -> int:
    """Semaphore-bounded fan-out: each job yields once inside the semaphore."""
    sem = p.Semaphore(limit)
    done = 0

    async def job() -> None:
        nonlocal done
        async with sem:
            await asyncio.sleep(0)
            done += 1
    await p.gather(*(job() for _ in range(jobs)))
    return done


async def pipeline(p: Prims, items: int = 100_000, workers: int = 4) -> int:
    """Producer/consumer through a bounded Queue with task_done/join."""
    queue = p.Queue(maxsize=100)
    total = 0

    async def worker() -> None:
        nonlocal total
        while True:
            item = await queue.get()
            total += item
            queue.task_done()

    consumers = [asyncio.ensure_future(worker()) for _ in range(workers)]
    for i in range(items):
        await queue.put(i)
    await queue.join()
    for consumer in consumers:
        consumer.cancel()
    await p.gather(*consumers, return_exceptions=True)
    return total


async def callback_chain(p: Prims, hops: int = 300_000) -> int:
    """A callback that reschedules itself with call_soon."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[int] = loop.create_future()
    count = 0

    def hop() -> None:
        nonlocal count
        count += 1
        if count < hops:
            loop.call_soon(hop)
        else:
            done.set_result(count)
    loop.call_soon(hop)
    return await done


async def timer_storm(p: Prims, timers: int = 100_000) -> int:
    """call_later with spread delays, half of them cancelled (timeouts that
    mostly don't fire, as in a server)."""
    loop = asyncio.get_running_loop()
    rng = random.Random(7)
    done: asyncio.Future[int] = loop.create_future()
    expected = timers - timers // 2
    fired = 0

    def fire() -> None:
        nonlocal fired
        fired += 1
        if fired == expected:
            done.set_result(fired)
    handles = [loop.call_later(rng.uniform(0, 0.02), fire) for _ in range(timers)]
    for handle in handles[::2]:
        handle.cancel()
    return await done


async def stream_echo(p: Prims, clients: int = 50, messages: int = 200) -> int:
    """asyncio streams: an echo server and many clients, line by line."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            writer.write(line)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]

    async def client(i: int) -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        echoed = 0
        for n in range(messages):
            line = b"client %d message %d\n" % (i, n)
            writer.write(line)
            echoed += await reader.readline() == line
        writer.close()
        await writer.wait_closed()
        return echoed

    try:
        return sum(await p.gather(*(client(i) for i in range(clients))))
    finally:
        server.close()
        await server.wait_closed()


async def crawler(p: Prims, urls: int = 2_000, limit: int = 100) -> int:
    """The crawler pattern: many short request/response connections, a
    Semaphore bounding how many are open at once (fits a 1024-fd limit)."""
    class Responder(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.transport.write(b"200 " + data)  # type: ignore[attr-defined]
            self.transport.close()

    loop = asyncio.get_running_loop()
    server = await loop.create_server(Responder, "127.0.0.1", 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    sem = p.Semaphore(limit)

    async def fetch(i: int) -> int:
        async with sem:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /%d" % i)
            reply = await reader.read()
            writer.close()
            await writer.wait_closed()
            return reply == b"200 GET /%d" % i

    try:
        return sum(await p.gather(*(fetch(i) for i in range(urls))))
    finally:
        server.close()
        await server.wait_closed()


@dataclass
class ScalePattern:
    name: str
    run: Callable[[Prims], Coroutine[Any, Any, Any]]
    expected: Any


SCALE_PATTERNS = [
    ScalePattern("gather 20k tasks", fan_in, sum(range(20_000))),
    ScalePattern("Semaphore 20k jobs", bounded_fan_out, 20_000),
    ScalePattern("Queue 100k items", pipeline, sum(range(100_000))),
    ScalePattern("call_soon chain 300k", callback_chain, 300_000),
    ScalePattern("100k timers, half off", timer_storm, 50_000),
    ScalePattern("streams echo 50x200", stream_echo, 50 * 200),
    ScalePattern("crawler 2k connections", crawler, 2_000),
]


def measure(pattern: ScalePattern, loop_factory: LoopFactory, prims: Prims,
            repeats: int = 3) -> tuple[bool, float]:
    """Best time of `repeats` runs, each on a fresh loop; (ok, seconds)."""
    best = float("inf")
    ok = True
    for _ in range(repeats):
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            started = time.perf_counter()
            result: Any = runner.run(pattern.run(prims))
            best = min(best, time.perf_counter() - started)
        ok = ok and result == pattern.expected
    return ok, best


def stdlib_primitives() -> Prims:
    return types.SimpleNamespace(Semaphore=asyncio.Semaphore, Queue=asyncio.Queue,
                                 gather=asyncio.gather)


def native_primitives() -> Optional[Prims]:
    try:
        from . import _primitives
        return types.SimpleNamespace(Semaphore=_primitives.Semaphore, Queue=_primitives.Queue,
                                     gather=_primitives.gather)
    except (ImportError, AttributeError):
        return None


def _milliseconds(seconds: Optional[float]) -> str:
    return "n/a" if seconds is None else f"{seconds * 1e3:.1f} ms"


def _ratio(numerator: Optional[float], denominator: Optional[float]) -> str:
    if numerator is None or denominator is None or denominator <= 0:
        return "n/a"
    return f"{numerator / denominator:.2f}x"


def print_scale_table(columns: Sequence[Any]) -> list[tuple[str, bool]]:
    """Prints the throughput table for the demo's columns (stdlib, uvloop,
    pyasync_c: objects with name, factory, counts and c_primitives) and
    returns (description, counts) for each wrong result."""
    native = native_primitives()
    names = [col.name for col in columns]
    header = (f"{'at scale (best of 3)':<24} {'ok?':<13}"
              + "".join(f" {name:>10}" for name in names)
              + f" {'vs stdlib':>10} {'vs uvloop':>10}")
    print(header)
    print("-" * len(header))
    problems: list[tuple[str, bool]] = []
    for pattern in SCALE_PATTERNS:
        times: dict[str, Optional[float]] = {}
        oks: list[Optional[bool]] = []
        for col in columns:
            prims = native if col.c_primitives else stdlib_primitives()
            if col.factory is None or prims is None:
                times[col.name] = None
                oks.append(None)
                continue
            ok, seconds = measure(pattern, col.factory, prims)
            times[col.name] = seconds
            oks.append(ok)
            if not ok:
                problems.append((f"{pattern.name} [{col.name}]: wrong result", col.counts))
        ok_text = "/".join("-" if ok is None else "ok" if ok else "FAIL" for ok in oks)
        cells = "".join(f" {_milliseconds(times[name]):>10}" for name in names)
        ours = times.get("pyasync_c")
        print(f"{pattern.name:<24} {ok_text:<13}{cells}"
              f" {_ratio(times.get('stdlib'), ours):>10} {_ratio(times.get('uvloop'), ours):>10}")
    print("\nstdlib = asyncio's loop + asyncio's primitives.")
    print("uvloop = uvloop's loop + asyncio's primitives (what uvloop.run() gives).")
    print("pyasync_c = its loop + its C primitives (what `python -m pyasync_c` gives a program).")
    print("vs stdlib, vs uvloop = that loop's time / pyasync_c's time (above 1: pyasync_c is faster).")
    return problems
