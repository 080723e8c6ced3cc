"""server.close() + wait_closed() with clients connected.

After close(): the listening socket is gone (a new connect is refused) and the
connected clients keep working (asyncio closes only the listener).  wait_closed():
from Python 3.12.1 it waits until every connection has gone, so it must still be
pending while clients are connected, and end once they disconnect; before 3.12.1
it returns at once (asyncio's behaviour of that version, checked as such).
"""
from __future__ import annotations

import asyncio
import sys

from ..common import LOOPBACK, pattern, wait_until
from ..harness import Context

WAITS_FOR_CONNECTIONS = sys.version_info >= (3, 12, 1)


async def main(ctx: Context) -> None:
    n = ctx.size(40, 200)
    ended = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal ended
        try:
            while line := await reader.readline():
                writer.write(line)
                await writer.drain()
        finally:
            ended += 1
            writer.close()

    server = await asyncio.start_server(handler, LOOPBACK, 0, backlog=n)
    port = server.sockets[0].getsockname()[1]
    clients = [await asyncio.open_connection(LOOPBACK, port) for _ in range(n)]

    async def exchange(i: int, tag: bytes) -> None:
        reader, writer = clients[i]
        line = tag + b" %d " % i + pattern(i, 50).hex().encode() + b"\n"
        writer.write(line)
        got = await asyncio.wait_for(reader.readline(), 10)
        ctx.check(got == line, f"client {i} ({tag.decode()}): echo differs")

    await asyncio.gather(*(exchange(i, b"before") for i in range(n)))
    server.close()
    ctx.check(not server.is_serving(), "is_serving() after close()")
    waiter = asyncio.ensure_future(server.wait_closed())
    try:
        await asyncio.wait_for(asyncio.open_connection(LOOPBACK, port), 5)
        ctx.check(False, "a new connection was accepted after server.close()")
    except ConnectionRefusedError:
        pass
    await asyncio.gather(*(exchange(i, b"after") for i in range(n)))
    await asyncio.sleep(0.1)
    if WAITS_FOR_CONNECTIONS:
        ctx.check(not waiter.done(), "wait_closed() returned with clients still connected")
    else:
        ctx.check(waiter.done(), "wait_closed() still pending (before 3.12.1 it returns at once)")
    for _, writer in clients:
        writer.close()
    await wait_until(lambda: ended == n, 10, "handlers to see EOF")
    await asyncio.wait_for(waiter, 10)
    await asyncio.gather(*(w.wait_closed() for _, w in clients))
