"""fork() from a coroutine of a running loop that is serving; the parent keeps serving.

The child leaves in one of three ways:

- ``os._exit``: at once;
- ``sys.exit``: SystemExit out of the running loop, so asyncio.Runner's cleanup
  (cancel the inherited tasks, shutdown_asyncgens, close()) runs in the child on its
  copy of the loop — the path where a child's close() can break the parent's loop;
- ``new loop``: the child makes a new loop of the same kind, does a TCP echo with the
  parent's server on it, closes it, and os._exit()s with the outcome.

After each child is gone, the parent checks its existing connection and a new one
(byte for byte), and the child's exit status (0 for all three).  The parent waits
for the child by polling waitpid(WNOHANG), so it keeps serving meanwhile.
"""
from __future__ import annotations

import asyncio
import os
import sys
import traceback
from collections.abc import Callable

from ..common import LOOPBACK, pattern, stream_echo_once
from ..harness import Context, loop_factory

MODES = ("os._exit", "sys.exit", "new loop")


async def echo_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


def child(mode: str, loop_name: str, port: int) -> None:
    """Runs in the forked child; never returns to the parent's code paths."""
    if mode == "os._exit":
        os._exit(0)
    if mode == "sys.exit":
        sys.exit(0)  # leaves through the parent's stack copy (stress.child re-raises)
    try:
        loop = loop_factory(loop_name)()
        try:
            data = b"from the child|" + pattern(7, 20_000)
            ok = loop.run_until_complete(asyncio.wait_for(stream_echo_once(port, data), 10)) == data
        finally:
            loop.close()
        os._exit(0 if ok else 3)
    except BaseException:
        traceback.print_exc()
        os._exit(4)


async def wait_child(pid: int, timeout: float) -> int:
    """The child's exit code (negative: killed by that signal), polling so the loop runs."""
    async with asyncio.timeout(timeout):
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status)
            await asyncio.sleep(0.01)


async def main(ctx: Context) -> None:
    parent = os.getpid()
    server = await asyncio.start_server(echo_handler, LOOPBACK, 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    ticks = 0

    async def ticker() -> None:  # timers keep firing in the parent throughout
        nonlocal ticks
        while True:
            await asyncio.sleep(0.002)
            ticks += 1
    ticking = asyncio.create_task(ticker())
    try:
        await fork_each_way(ctx, port, reader, writer, lambda: ticks)
    finally:
        # a sys.exit() child leaves through this frame too: the cleanup is the parent's
        if os.getpid() == parent:
            ticking.cancel()
            writer.close()
            server.close()
    await writer.wait_closed()
    await server.wait_closed()


async def fork_each_way(ctx: Context, port: int, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter, ticks: Callable[[], int]) -> None:
    statuses: dict[str, int] = {}
    for k, mode in enumerate(MODES):
        data = b"%s before|" % mode.encode() + pattern(k, 3000)
        writer.write(data)
        ctx.check(await asyncio.wait_for(reader.readexactly(len(data)), 10) == data,
                  f"{mode}: echo before the fork differs")
        pid = os.fork()
        if pid == 0:
            child(mode, ctx.loop_name, port)
        statuses[mode] = await wait_child(pid, 20)
        ticks_before = ticks()
        data = b"%s after|" % mode.encode() + pattern(k + 100, 70_000)
        writer.write(data)
        try:
            got = await asyncio.wait_for(reader.readexactly(len(data)), 5)
        except TimeoutError:
            got = b""
        ctx.check(got == data, f"child left by {mode} (exit {statuses[mode]}): the parent's "
                  f"existing connection got {len(got)} of {len(data)} echoed bytes")
        try:
            fresh = await asyncio.wait_for(stream_echo_once(port, data), 5)
        except (TimeoutError, OSError) as exc:
            fresh = repr(exc).encode()
        ctx.check(fresh == data, f"child left by {mode}: a new connection to the parent's "
                  f"server failed ({fresh[:60]!r})")
        await asyncio.sleep(0.02)
        ctx.check(ticks() > ticks_before, f"child left by {mode}: the parent's timers stopped")
    ctx.check(all(code == 0 for code in statuses.values()), f"child exit statuses: {statuses}")
