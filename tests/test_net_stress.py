"""Randomised stress of the stream transports, on both loops (fixtures in
conftest.py): 200 connections through one server while clients and server
write random sizes, pause and resume reading, half-close, close, abort and
swap protocols.  Afterwards every connection_lost ran exactly once, nothing
reached the exception handler, no fd is left open, and every byte a peer
received is a prefix of what was sent (no reordering, no corruption)."""
from __future__ import annotations

import asyncio
import random

from net_util import arun, open_fds

__all__ = ["arun"]

CONNECTIONS = 200
SEED = 20261129


class Peer(asyncio.Protocol):
    """Records what arrives; the stream it sends is a deterministic pattern."""
    def __init__(self, lost_counter: list[int]) -> None:
        self.received = bytearray()
        self.sent = 0
        self.lost_calls = 0
        self.lost_counter = lost_counter
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received += data

    def eof_received(self) -> bool:
        return True  # keep writing after the peer's write_eof

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost_calls += 1
        self.lost_counter[0] += 1
        if not self.done.done():
            self.done.set_result(None)


def pattern(offset: int, size: int) -> bytes:
    """Bytes offset..offset+size of an endless 0..250 sequence."""
    return bytes((offset + i) % 251 for i in range(size))


async def drive(peer: Peer, rng: random.Random) -> None:
    """A random sequence of operations on one side of a connection."""
    eof_sent = False
    for _ in range(rng.randint(5, 25)):
        transport = peer.transport
        if transport is None or transport.is_closing():
            return
        op = rng.random()
        if op < 0.55 and not eof_sent:
            size = rng.choice((1, 100, 1500, 70_000))
            data = pattern(peer.sent, size)
            kind = rng.random()
            if kind < 0.6:
                transport.write(data)
            elif kind < 0.8:
                transport.write(bytearray(data))
            else:
                half = size // 2
                transport.writelines([data[:half], memoryview(data)[half:]])
            peer.sent += size
        elif op < 0.7:
            transport.pause_reading()
            await asyncio.sleep(rng.random() * 0.005)
            if not transport.is_closing():
                transport.resume_reading()
        elif op < 0.8:
            transport.set_write_buffer_limits(high=rng.choice((0, 1024, 65536)))
        elif op < 0.85:
            if transport.can_write_eof() and not eof_sent:
                try:
                    transport.write_eof()  # half-close; reading goes on
                except OSError:  # the peer already reset: shutdown() says ENOTCONN (both loops)
                    transport.abort()
                    return
                eof_sent = True
        elif op < 0.92:
            transport.close()
            return
        elif op < 0.96:
            transport.abort()
            return
        else:
            transport.set_protocol(transport.get_protocol())
        await asyncio.sleep(0 if rng.random() < 0.5 else 0.001)
    if peer.transport is not None:
        peer.transport.close()  # every connection ends: connection_lost on both sides


def test_random_operations_on_many_connections(arun):
    async def main():
        loop = asyncio.get_running_loop()
        handler_calls: list[dict] = []
        loop.set_exception_handler(lambda _loop, context: handler_calls.append(context))
        fds_before = len(open_fds())
        rng = random.Random(SEED)
        lost = [0]
        servers: list[Peer] = []

        def server_peer() -> Peer:
            peer = Peer(lost)
            servers.append(peer)
            return peer

        server = await loop.create_server(server_peer, "127.0.0.1", 0, backlog=512)
        port = server.sockets[0].getsockname()[1]
        clients = [proto for _, proto in await asyncio.gather(*(
            loop.create_connection(lambda: Peer(lost), "127.0.0.1", port)
            for _ in range(CONNECTIONS)))]
        while len(servers) < CONNECTIONS:
            await asyncio.sleep(0.001)
        await asyncio.gather(*(drive(p, random.Random(rng.random())) for p in clients + servers))
        async with asyncio.timeout(20):
            await asyncio.gather(*(p.done for p in clients + servers))
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0.01)

        assert handler_calls == []
        assert lost[0] == 2 * CONNECTIONS
        assert all(p.lost_calls == 1 for p in clients + servers)
        # what arrived is an exact prefix of what the other side sent
        for peer in clients + servers:
            got = bytes(peer.received)
            assert got == pattern(0, len(got))
        assert len(open_fds()) <= fds_before
    arun(main(), timeout=40)

