"""10,000 concurrent TCP connections through one loop (both ends on it), every echo
checked byte for byte.

Both ends live in this process, so each connection costs two fds: with the soft
RLIMIT_NOFILE raised to the hard limit, the count is scaled down to what fits
(and the report says so) when the hard limit is below ~20,200.
"""
from __future__ import annotations

import asyncio
import resource

from ..common import LOOPBACK, echo_server, pattern, reset, wait_until
from ..harness import Context, open_fds

TARGET = 10_000
SHORT_TARGET = 1_500
MIN_CONNECTIONS = 200
FD_MARGIN = 200          # listener, the loop's own fds, executor, ...
CONNECT_BATCH = 500      # connects in flight at once (inside the listen backlog)
MESSAGES = 2             # per connection and round


class Client(asyncio.Protocol):
    """Collects the echo; ``expect(n)`` is a future done once n bytes are in."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.received = bytearray()
        self.want = 0
        self.waiter: asyncio.Future[bytes] | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def expect(self, n: int) -> asyncio.Future[bytes]:
        self.want = n
        self.waiter = asyncio.get_running_loop().create_future()
        return self.waiter

    def data_received(self, data: bytes) -> None:
        self.received += data
        if self.waiter is not None and len(self.received) >= self.want:
            self.waiter.set_result(bytes(self.received))
            self.received.clear()
            self.waiter = None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)


def connection_count(ctx: Context) -> int:
    target = SHORT_TARGET if ctx.short else TARGET
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    fits = (limit - len(open_fds()) - FD_MARGIN) // 2
    ctx.check(fits >= MIN_CONNECTIONS, f"RLIMIT_NOFILE {limit} leaves room for only {fits} "
              f"connections (both ends in one process)")
    if fits < target:
        ctx.note(f"scaled down to {fits:,} connections (target {target:,}): "
                 f"RLIMIT_NOFILE hard limit {limit} < {2 * target + FD_MARGIN} "
                 f"(2 fds per connection, both ends in one process)")
        return fits
    return target


def message(rnd: int, i: int, k: int) -> bytes:
    """A message unique to (round, connection, k), 24..300 bytes."""
    head = b"r%d c%06d m%d|" % (rnd, i, k)
    return head + pattern(i * 7 + k, (i * 31 + k * 17) % 277)


async def main(ctx: Context) -> None:
    n = connection_count(ctx)
    ctx.metrics["connections"] = n
    loop = asyncio.get_running_loop()
    server, port, stats = await echo_server(backlog=4096)
    clients: list[Client] = []
    try:
        for start in range(0, n, CONNECT_BATCH):
            batch = await asyncio.gather(*(
                loop.create_connection(Client, LOOPBACK, port)
                for _ in range(min(CONNECT_BATCH, n - start))))
            clients += [proto for _, proto in batch]
        await wait_until(lambda: stats.live == n, 60, f"{n} server-side connections")
        for k in range(MESSAGES):
            waiters = []
            for i, client in enumerate(clients):
                data = message(ctx.round, i, k)
                waiters.append((client.expect(len(data)), data))
                assert client.transport is not None
                client.transport.write(data)
            async with asyncio.timeout(60):
                for i, (waiter, data) in enumerate(waiters):
                    got = await waiter
                    ctx.check(got == data, f"connection {i} message {k}: echo differs "
                              f"({len(got)} bytes, expected {len(data)})")
        ctx.check(stats.peak == n, f"peak server-side connections {stats.peak}, expected {n}")
    finally:
        for client in clients:
            if client.transport is not None:
                reset(client.transport)  # RST: no TIME_WAIT eating ephemeral ports
        server.close()
    async with asyncio.timeout(30):
        await asyncio.gather(*(c.lost for c in clients))
    await wait_until(lambda: stats.live == 0, 30, "server-side connections to close")
    await server.wait_closed()
