"""Threads hammering call_soon_threadsafe while the loop serves TCP echo traffic.

Every callback must run exactly once, and each thread's callbacks in the order
it scheduled them; the echo traffic meanwhile is checked byte for byte.
"""
from __future__ import annotations

import asyncio
import threading
import time

from ..common import LOOPBACK, echo_server, pattern, wait_until
from ..harness import Context

THREADS = 4


async def main(ctx: Context) -> None:
    per_thread = ctx.size(10_000, 50_000)
    loop = asyncio.get_running_loop()
    runs = [bytearray(per_thread) for _ in range(THREADS)]
    last = [-1] * THREADS
    out_of_order = 0

    def callback(t: int, i: int) -> None:
        nonlocal out_of_order
        runs[t][i] = min(255, runs[t][i] + 1)
        if i != last[t] + 1:
            out_of_order += 1
        last[t] = i

    def hammer(t: int) -> None:
        for i in range(per_thread):
            loop.call_soon_threadsafe(callback, t, i)
            if i % 1000 == 999:
                time.sleep(0)  # let the loop thread take the GIL now and then

    server, port, _ = await echo_server()
    done_serving = False

    async def ping_pong(c: int) -> int:
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        k = 0
        while not done_serving:
            data = pattern(c + k, 1 + (k * 37) % 3000)
            writer.write(data)
            ctx.check(await reader.readexactly(len(data)) == data, f"echo client {c}: differs")
            k += 1
        writer.close()
        await writer.wait_closed()
        return k

    clients = [asyncio.create_task(ping_pong(c)) for c in range(8)]
    threads = [threading.Thread(target=hammer, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    try:
        await wait_until(lambda: all(n == per_thread - 1 for n in last), 60,
                         "every thread's last callback")
        await asyncio.sleep(0.05)  # anything extra would show up now
    finally:
        done_serving = True
        for thread in threads:
            thread.join(30)
    exchanges = sum(await asyncio.gather(*clients))
    server.close()
    await server.wait_closed()
    counts = {n: sum(r.count(n) for r in runs) for n in set().union(*map(set, runs))}
    ctx.check(set(counts) == {1}, f"callbacks run count: {counts} (want all exactly once)")
    ctx.check(out_of_order == 0, f"{out_of_order} callbacks out of their thread's order")
    ctx.note(f"{THREADS} threads x {per_thread:,} callbacks; {exchanges:,} echo exchanges meanwhile")
