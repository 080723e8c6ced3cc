"""A UDP flood on loopback: SENDERS endpoints send datagrams of mixed sizes as fast
as they can to one server endpoint, which checks and echoes each.  Loss is allowed
for UDP (and reported); corruption, duplicates, or more datagrams than were sent
are not; the loop must not crash or report errors.
"""
from __future__ import annotations

import asyncio
import socket
import struct

from ..common import LOOPBACK, pattern
from ..harness import Context

SENDERS = 4
SIZES = (0, 1, 100, 1400, 9000, 30_000)
HEAD = struct.Struct("!HIH")  # sender, sequence number, payload size
BURST = 16
RCVBUF = 4 << 20  # net.core.rmem_max on many systems: caps what the kernel grants


def datagram(sender: int, seq: int) -> bytes:
    size = SIZES[(seq + sender) % len(SIZES)]
    return HEAD.pack(sender, seq, size) + pattern(seq * 13 + sender, size)


class Tally:
    """What one side received: sequence numbers per sender, corrupt ones."""

    def __init__(self) -> None:
        self.seen: list[set[int]] = [set() for _ in range(SENDERS)]
        self.duplicates = 0
        self.corrupt = 0
        self.errors: list[Exception] = []

    def add(self, data: bytes) -> bool:
        """Record a datagram; True if it is intact."""
        if len(data) < HEAD.size:
            self.corrupt += 1
            return False
        sender, seq, size = HEAD.unpack_from(data)
        if sender >= SENDERS or data != datagram(sender, seq):
            self.corrupt += 1
            return False
        if seq in self.seen[sender]:
            self.duplicates += 1
        self.seen[sender].add(seq)
        return True

    @property
    def count(self) -> int:
        return sum(map(len, self.seen))


class Endpoint(asyncio.DatagramProtocol):
    def __init__(self, tally: Tally, echo: bool) -> None:
        self.tally = tally
        self.echo = echo
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.tally.add(data) and self.echo and self.transport is not None:
            self.transport.sendto(data, addr)

    def error_received(self, exc: Exception) -> None:
        self.tally.errors.append(exc)


async def main(ctx: Context) -> None:
    per_sender = ctx.size(3_000, 20_000)
    loop = asyncio.get_running_loop()
    at_server, at_clients = Tally(), Tally()
    server, _ = await loop.create_datagram_endpoint(
        lambda: Endpoint(at_server, echo=True), local_addr=(LOOPBACK, 0))
    addr = server.get_extra_info("sockname")
    clients = [(await loop.create_datagram_endpoint(
        lambda: Endpoint(at_clients, echo=False), remote_addr=addr))[0]
        for _ in range(SENDERS)]
    for transport in clients + [server]:
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)

    async def send(sender: int) -> None:
        transport = clients[sender]
        for seq in range(per_sender):
            transport.sendto(datagram(sender, seq))
            if seq % BURST == BURST - 1:
                await asyncio.sleep(0)  # let the receivers run now and then

    await asyncio.gather(*(send(s) for s in range(SENDERS)))
    sent = SENDERS * per_sender
    # until nothing more arrives for a while
    last = (-1, -1)
    while (at_server.count, at_clients.count) != last:
        last = (at_server.count, at_clients.count)
        await asyncio.sleep(0.3)
    for transport in clients + [server]:
        transport.close()
    await asyncio.sleep(0.01)

    ctx.check(at_server.corrupt == 0 and at_clients.corrupt == 0,
              f"corrupt datagrams: {at_server.corrupt} at the server, "
              f"{at_clients.corrupt} at the clients")
    ctx.check(at_server.duplicates == 0 and at_clients.duplicates == 0,
              f"duplicated datagrams: {at_server.duplicates} / {at_clients.duplicates}")
    ctx.check(0 < at_server.count <= sent, f"server received {at_server.count} of {sent}")
    ctx.check(at_clients.count <= at_server.count, "more echoes than datagrams the server got")
    loss = 100 * (sent - at_server.count) / sent
    echo_loss = 100 * (at_server.count - at_clients.count) / max(1, at_server.count)
    ctx.metrics.setdefault("loss_percent", []).append(round(loss, 2))
    ctx.note(f"sent {sent:,}; server got {at_server.count:,} "
             f"(loss {loss:.1f}%); echoes back {at_clients.count:,} (loss {echo_loss:.1f}%); "
             f"error_received {len(at_server.errors) + len(at_clients.errors)}")
