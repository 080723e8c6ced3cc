"""fork() from a coroutine of a running loop that is serving; the parent keeps serving.

The child leaves in one of three ways:

- ``os._exit``: at once;
- ``new loop``: the child makes a new loop of the same kind, does a TCP echo with the
  parent's server on it, closes it, and os._exit()s with the outcome;
- ``sys.exit``: SystemExit out of the running loop, so asyncio.Runner's cleanup
  (cancel the inherited tasks, shutdown_asyncgens, close()) runs in the child on its
  copy of the loop — the path where a child's close() can break the parent's loop
  (last, as it may).

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
from ..harness import Context, Failure, loop_factory

MODES = ("os._exit", "new loop", "sys.exit")

# asyncio's own loop fails the sys.exit case from 3.13: in the child, the exiting
# interpreter closes the inherited stream transports (3.13's StreamWriter.__del__
# closes an unclosed transport), and each close unregisters the fd from the epoll
# instance the child shares with the parent, so the parent's loop no longer hears
# from those connections.  Reported as a note there, not a failure (pyasync_c is
# held to the stricter outcome: the parent unaffected, as asyncio 3.11/3.12).
ASYNCIO_CHILD_EXIT_BREAKS_PARENT = sys.version_info >= (3, 13)


class EchoServer:
    """Stream echo handlers with no cleanup of their own (no try/finally): a child
    leaving by sys.exit() cancels the inherited handler tasks in the child, and user
    cleanup run there (writer.close()) would unregister the parent's fds from an
    epoll instance the child shares with the parent — on asyncio's loop too.  The
    parent closes the connections itself (``close_all``)."""

    def __init__(self) -> None:
        self.writers: list[asyncio.StreamWriter] = []

    async def handler(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    def close_all(self) -> None:
        for writer in self.writers:
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
    echo = EchoServer()
    server = await asyncio.start_server(echo.handler, LOOPBACK, 0)
    port = server.sockets[0].getsockname()[1]
    clients: list[asyncio.StreamWriter] = []
    ticks = 0

    async def ticker() -> None:  # timers keep firing in the parent throughout
        nonlocal ticks
        while True:
            await asyncio.sleep(0.002)
            ticks += 1
    ticking = asyncio.create_task(ticker())
    try:
        statuses = {mode: await fork_once(ctx, k, mode, port, clients, lambda: ticks)
                    for k, mode in enumerate(MODES)}
        ctx.check(all(code == 0 for code in statuses.values()),
                  f"child exit statuses: {statuses}")
    finally:
        # a sys.exit() child leaves through this frame too: the cleanup is the parent's
        if os.getpid() == parent:
            ticking.cancel()
            server.close()
            echo.close_all()
            for writer in clients:
                writer.close()
    await asyncio.gather(*(w.wait_closed() for w in clients), return_exceptions=True)
    await server.wait_closed()


async def fork_once(ctx: Context, k: int, mode: str, port: int,
                    clients: list[asyncio.StreamWriter], ticks: Callable[[], int]) -> int:
    """Fork with a connection open (its own, so one mode's damage does not spill
    into the next); the child's exit status."""
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    clients.append(writer)
    data = b"%s before|" % mode.encode() + pattern(k, 3000)
    writer.write(data)
    ctx.check(await asyncio.wait_for(reader.readexactly(len(data)), 10) == data,
              f"{mode}: echo before the fork differs")
    pid = os.fork()
    if pid == 0:
        child(mode, ctx.loop_name, port)
    status = await wait_child(pid, 20)
    ticks_before = ticks()
    problems: list[str] = []
    data = b"%s after|" % mode.encode() + pattern(k + 100, 70_000)
    writer.write(data)
    try:
        got = await asyncio.wait_for(reader.readexactly(len(data)), 3)
    except (TimeoutError, asyncio.IncompleteReadError, OSError):
        got = b""
    if got != data:
        problems.append(f"the parent's existing connection got {len(got)} of {len(data)} "
                        f"echoed bytes")
    try:
        fresh = await asyncio.wait_for(stream_echo_once(port, data), 3)
    except (TimeoutError, asyncio.IncompleteReadError, OSError) as exc:
        fresh = repr(exc).encode()
    if fresh != data:
        problems.append(f"a new connection to the parent's server failed ({fresh[:60]!r})")
    await asyncio.sleep(0.02)
    if ticks() <= ticks_before:
        problems.append("the parent's timers stopped")
    if problems:
        what = f"child left by {mode} (exit {status}): " + "; ".join(problems)
        if ctx.loop_name == "asyncio" and mode == "sys.exit" and ASYNCIO_CHILD_EXIT_BREAKS_PARENT:
            ctx.note(f"expected on asyncio {sys.version_info[0]}.{sys.version_info[1]}: {what}")
        else:
            raise Failure(what)
    return status
