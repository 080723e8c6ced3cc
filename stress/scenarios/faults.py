"""Faults while serving: resets mid-message, half-close, idle clients, handlers that
raise or are cancelled.  After each, the same server must still serve a normal
client correctly."""
from __future__ import annotations

import asyncio
import inspect
import struct

from ..common import LOOPBACK, echo_server, pattern, reset, wait_until
from ..harness import Context, HandlerContext

HEADER = struct.Struct("!I")


# ---- resets mid-message ---------------------------------------------------

async def resets(ctx: Context) -> None:
    """Clients reset (SO_LINGER 0 close) half-way through a request, or while the
    server is writing a 1 MiB reply.  Every handler must end (incomplete read,
    reset, or a completed write into the kernel), nothing reaches the exception
    handler, and the server keeps serving."""
    n = ctx.size(40, 200)
    outcomes: dict[str, int] = {}
    finished = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal finished
        try:
            size, = HEADER.unpack(await reader.readexactly(HEADER.size))
            body = await reader.readexactly(size)
            writer.write(body * (1 + (1 << 20) // max(1, len(body))))  # ~1 MiB reply
            await writer.drain()
            kind = "reply written"
        except asyncio.IncompleteReadError:
            kind = "incomplete read"
        except (ConnectionResetError, BrokenPipeError) as exc:
            kind = type(exc).__name__
        finally:
            finished += 1
            writer.close()
        outcomes[kind] = outcomes.get(kind, 0) + 1

    server = await asyncio.start_server(handler, LOOPBACK, 0, backlog=n)
    port = server.sockets[0].getsockname()[1]

    async def client(i: int) -> None:
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        body = pattern(i, 1000 + i)
        if i % 2 == 0:  # half a request, then RST
            writer.write(HEADER.pack(len(body)) + body[: len(body) // 2])
            await writer.drain()
            await asyncio.sleep(0.001 * (i % 5))
        else:  # a whole request; RST after the first part of the reply
            writer.write(HEADER.pack(len(body)) + body)
            first = await reader.readexactly(len(body))
            ctx.check(first == body, f"client {i}: reply starts wrong")
        reset(writer.transport)

    await asyncio.gather(*(client(i) for i in range(n)))
    await wait_until(lambda: finished == n, 20, f"{n} handlers to finish")
    finished = 0
    ctx.note("handler outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))
    ctx.check(outcomes.get("reply written", 0) <= n // 2,
              f"more replies written than whole requests: {outcomes}")
    # a normal client afterwards: whole request, whole reply
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    body = pattern(ctx.round, 3000)
    writer.write(HEADER.pack(len(body)) + body)
    expected = body * (1 + (1 << 20) // len(body))
    got = await asyncio.wait_for(reader.read(), 10)
    ctx.check(got == expected, f"resets: a normal client afterwards got {len(got)} of "
              f"{len(expected)} bytes")
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()


# ---- half-close -----------------------------------------------------------

def reply_to(request: bytes) -> bytes:
    return b"%d|" % len(request) + request[::-1]


async def half_close(ctx: Context) -> None:
    """Clients send a request, write_eof(), then read the reply to EOF; the server
    reads to EOF before answering.  Every reply checked byte for byte."""
    n = ctx.size(60, 300)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.read()  # to EOF: the client's write_eof
        writer.write(reply_to(request))
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(handler, LOOPBACK, 0, backlog=n)
    port = server.sockets[0].getsockname()[1]

    async def client(i: int) -> None:
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        request = pattern(i, (i * 997) % 200_000)
        writer.write(request)
        ctx.check(writer.can_write_eof(), "TCP transport says it cannot write_eof")
        writer.write_eof()
        reply = await reader.read()
        ctx.check(reply == reply_to(request),
                  f"client {i}: reply of {len(reply)} bytes differs from the expected "
                  f"{len(reply_to(request))}")
        writer.close()
        await writer.wait_closed()

    async with asyncio.timeout(30):
        await asyncio.gather(*(client(i) for i in range(n)))
        await client(n)  # and one more on its own
    server.close()
    await server.wait_closed()


# ---- idle clients ---------------------------------------------------------

async def idle_clients(ctx: Context) -> None:
    """Idle connections held open while active clients ping-pong; no idle one is
    dropped, and each still echoes at the end."""
    idle_n = ctx.size(300, 2000)
    active_n, exchanges = 20, ctx.size(50, 200)
    server, port, stats = await echo_server(backlog=1024)
    idle = [await asyncio.open_connection(LOOPBACK, port) for _ in range(idle_n)]

    async def active(i: int) -> None:
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        for k in range(exchanges):
            data = b"%d.%d|" % (i, k) + pattern(k, i * 10 + k)
            writer.write(data)
            ctx.check(await reader.readexactly(len(data)) == data, f"active client {i}: echo differs")
        writer.close()
        await writer.wait_closed()

    async with asyncio.timeout(30):
        await asyncio.gather(*(active(i) for i in range(active_n)), asyncio.sleep(ctx.size(0.3, 2.0)))
    ctx.check(stats.live == idle_n, f"{idle_n - stats.live} idle connection(s) dropped")
    for i, (reader, writer) in enumerate(idle):
        writer.write(b"idle %d|" % i)
    for i, (reader, writer) in enumerate(idle):
        got = await asyncio.wait_for(reader.readexactly(len(b"idle %d|" % i)), 10)
        ctx.check(got == b"idle %d|" % i, f"idle client {i}: echo differs")
    for reader, writer in idle:
        writer.close()
    await asyncio.gather(*(w.wait_closed() for _, w in idle))
    await wait_until(lambda: stats.live == 0, 10, "idle connections to close")
    server.close()
    await server.wait_closed()


# ---- handlers that raise or are cancelled ---------------------------------

class Boom(Exception):
    """Raised by the scenario's handlers on purpose."""


def is_boom(context: HandlerContext) -> bool:
    return isinstance(context.get("exception"), Boom)


def cancel_is_reported() -> bool:
    """Whether this Python's start_server done-callback reports a cancelled handler
    task: it asks the task for exception() without checking cancelled() first
    (3.11, 3.12.1; 3.13 checks), which raises CancelledError into the loop's
    exception handler, once per cancelled handler."""
    source = inspect.getsource(asyncio.StreamReaderProtocol.connection_made)
    return ".cancelled()" not in source


def is_cancel_report(context: HandlerContext) -> bool:
    return (isinstance(context.get("exception"), asyncio.CancelledError)
            and "StreamReaderProtocol" in str(context.get("message")))


class RaisingProtocol(asyncio.Protocol):
    """Raises on b"boom", echoes anything else."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if data.startswith(b"boom"):
            raise Boom("data_received")
        self.transport.write(data)


async def ok_exchange(ctx: Context, port: int, what: str) -> None:
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    try:
        writer.write(b"ok\n")
        got = await asyncio.wait_for(reader.readexactly(3), 10)
        ctx.check(got == b"ok\n", f"{what}: a normal client afterwards got {got!r}")
    finally:
        writer.close()
    await writer.wait_closed()


async def client_sees_end(ctx: Context, port: int, send: bytes) -> None:
    """Send ``send``; the server must end the connection without a reply."""
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    try:
        writer.write(send)
        rest = await asyncio.wait_for(reader.read(), 10)
        ctx.check(rest == b"", f"unexpected data from a failing handler: {rest[:40]!r}")
    except ConnectionResetError:
        pass  # an abort with unread data sends RST: also an end
    finally:
        writer.close()


def booms_reported(ctx: Context, where: str) -> int:
    return len(ctx.take_handler_contexts(
        lambda c: is_boom(c) and str(c["exception"]) == where))


async def raising_protocol(ctx: Context, n: int) -> None:
    """data_received raises: one exception-handler call each, the connection ends."""
    server = await asyncio.get_running_loop().create_server(
        RaisingProtocol, LOOPBACK, 0, backlog=n)
    port = server.sockets[0].getsockname()[1]
    try:
        await asyncio.gather(*(client_sees_end(ctx, port, b"boom") for _ in range(n)))
        await ok_exchange(ctx, port, "after data_received raised")
        reported = booms_reported(ctx, "data_received")
        ctx.check(reported == n, f"data_received raised {n} times: {reported} "
                  f"exception-handler call(s)")
    finally:
        server.close()
    await server.wait_closed()


async def raising_handler(ctx: Context, n: int) -> None:
    """A start_server handler raises (after closing its writer): one exception-handler
    call each (asyncio's done-callback of the handler task), the connection ends."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            if line == b"boom\n":
                raise Boom("client_connected_cb")
            writer.write(line)
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(handler, LOOPBACK, 0, backlog=n)
    port = server.sockets[0].getsockname()[1]
    try:
        await asyncio.gather(*(client_sees_end(ctx, port, b"boom\n") for _ in range(n)))
        await ok_exchange(ctx, port, "after handlers raised")
        await asyncio.sleep(0)  # the done-callbacks of the last handler tasks
        reported = booms_reported(ctx, "client_connected_cb")
        ctx.check(reported == n, f"handlers raised {n} times: {reported} "
                  f"exception-handler call(s)")
    finally:
        server.close()
    await server.wait_closed()


async def cancelled_handlers(ctx: Context, n: int) -> None:
    """Handlers cancelled while awaiting a read: each sees CancelledError and the
    client sees the connection end; exception-handler reports only where this
    Python's asyncio makes them (cancel_is_reported)."""
    tasks: list[asyncio.Task[None]] = []
    cancelled = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal cancelled
        task = asyncio.current_task()
        assert task is not None
        tasks.append(task)
        try:
            writer.write(await reader.readline())
            await writer.drain()
        except asyncio.CancelledError:
            cancelled += 1
            raise
        finally:
            writer.close()

    server = await asyncio.start_server(handler, LOOPBACK, 0, backlog=n)
    port = server.sockets[0].getsockname()[1]
    clients: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for _ in range(n):
            clients.append(await asyncio.open_connection(LOOPBACK, port))
        await wait_until(lambda: len(tasks) == n, 10, "handlers to start")
        for task in tasks:
            task.cancel()
        for reader, _ in clients:
            rest = await asyncio.wait_for(reader.read(), 10)
            ctx.check(rest == b"", "data from a cancelled handler")
        ctx.check(cancelled == n, f"{cancelled} of {n} handlers saw CancelledError")
        await ok_exchange(ctx, port, "after handlers were cancelled")
        expected = n if cancel_is_reported() else 0
        reports = len(ctx.take_handler_contexts(is_cancel_report))
        ctx.check(reports == expected, f"{reports} exception-handler reports of {n} cancelled "
                  f"handlers (this Python's asyncio makes {expected})")
    finally:
        for _, writer in clients:
            writer.close()
        server.close()
        tasks.clear()
    await server.wait_closed()


async def handler_errors(ctx: Context) -> None:
    """Failing handlers, each kind against its own server (which must still serve a
    normal client afterwards): a Protocol whose data_received raises, a start_server
    handler that raises, handlers that are cancelled."""
    n = ctx.size(30, 150)
    await raising_protocol(ctx, n)
    await raising_handler(ctx, n)
    await cancelled_handlers(ctx, n)
