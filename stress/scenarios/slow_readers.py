"""Slow readers against large writes: the server's memory must stay bounded by the
flow-control limits.

The server writes CHUNK-sized blocks while its transport is not paused (a producer
driven only by pause_writing/resume_writing); the clients read in small bites
with pauses.  Checks: every client gets every byte in order; each server transport
was paused at least once (so back pressure happened); its write buffer never held
more than the high-water mark plus one chunk; and (RSS checks on) the process RSS
never rose more than a few times the sum of those bounds — without flow control it
would hold everything not yet sent (SENDERS x TOTAL).
"""
from __future__ import annotations

import asyncio
import socket

from ..common import LOOPBACK, pattern
from ..harness import Context, memory_kib

CHUNK = 128 * 1024
HIGH_WATER = 256 * 1024
READ_SIZE = 16 * 1024
RCVBUF = 32 * 1024


class Producer(asyncio.Protocol):
    """Sends ``total`` bytes of the pattern, CHUNK at a time, only while not paused."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.sent = 0
        self.paused = False
        self.pauses = 0
        self.max_buffered = 0
        self.closing = False
        self.transport: asyncio.WriteTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=HIGH_WATER)  # type: ignore[attr-defined]
        self.produce()

    def produce(self) -> None:
        assert self.transport is not None
        while not self.paused and self.sent < self.total and not self.transport.is_closing():
            size = min(CHUNK, self.total - self.sent)
            self.transport.write(pattern(self.sent, size))
            self.sent += size
            self.max_buffered = max(self.max_buffered, self.transport.get_write_buffer_size())
        if self.sent >= self.total and not self.closing:
            # close() after the buffer drains.  Not from inside resume_writing:
            # asyncio (3.11-3.13) runs connection_lost twice (AttributeError) when
            # resume_writing's last write is sent at once and close() follows.
            self.closing = True
            asyncio.get_running_loop().call_soon(self.transport.close)

    def pause_writing(self) -> None:
        self.paused = True
        self.pauses += 1

    def resume_writing(self) -> None:
        self.paused = False
        self.produce()


async def slow_reader(ctx: Context, port: int, total: int, i: int) -> None:
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, (LOOPBACK, port))
        received = 0
        while True:
            data = await loop.sock_recv(sock, READ_SIZE)
            if not data:
                break
            ctx.check(data == pattern(received, len(data)),
                      f"reader {i}: bytes {received}..{received + len(data)} differ")
            received += len(data)
            await asyncio.sleep(0.001 if i % 2 else 0)  # slow, slower
        ctx.check(received == total, f"reader {i}: got {received} of {total} bytes")
    finally:
        sock.close()


async def main(ctx: Context) -> None:
    senders = ctx.size(6, 16)
    total = ctx.size(12, 24) * 1024 * 1024  # well above the kernel's socket buffers
    producers: list[Producer] = []

    def factory() -> Producer:
        producers.append(Producer(total))
        return producers[-1]

    server = await asyncio.get_running_loop().create_server(factory, LOOPBACK, 0)
    port = server.sockets[0].getsockname()[1]
    rss_before = memory_kib()[0]
    peak = rss_before

    async def sample() -> None:
        nonlocal peak
        while True:
            peak = max(peak, memory_kib()[0])
            await asyncio.sleep(0.01)

    sampler = asyncio.create_task(sample())
    try:
        async with asyncio.timeout(90):
            await asyncio.gather(*(slow_reader(ctx, port, total, i) for i in range(senders)))
    finally:
        sampler.cancel()
    server.close()
    await server.wait_closed()
    ctx.check(len(producers) == senders, f"{len(producers)} server connections, not {senders}")
    bound = HIGH_WATER + CHUNK
    for i, p in enumerate(producers):
        ctx.check(p.pauses > 0, f"server connection {i}: pause_writing never called "
                  f"after {total} bytes to a slow reader")
        ctx.check(p.max_buffered <= bound, f"server connection {i}: write buffer reached "
                  f"{p.max_buffered} bytes > high water {HIGH_WATER} + one chunk {CHUNK}")
    rise_mib = (peak - rss_before) / 1024
    ctx.metrics["rss_rise_mib"] = round(rise_mib, 1)
    ctx.note(f"{senders} slow readers x {total >> 20} MiB; server buffer max "
             f"{max(p.max_buffered for p in producers) >> 10} KiB; pauses "
             f"{sum(p.pauses for p in producers)}; RSS rise {rise_mib:.1f} MiB")
    if ctx.rss_checks:
        # the write buffers, pattern slices in flight and client-side bytes objects,
        # with room for allocator slack; without flow control: senders x total
        budget_mib = 4 * senders * bound / (1 << 20) + 16
        ctx.check(rise_mib <= budget_mib, f"RSS rose {rise_mib:.1f} MiB while serving slow "
                  f"readers (bound {budget_mib:.0f} MiB)")
