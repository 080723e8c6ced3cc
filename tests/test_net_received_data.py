"""The bytes objects a stream transport hands to data_received, on both loops.

pyasync_c reuses a received bytes object for a later read when the protocol
kept no reference to it (stream_transport.c); these check that whatever a
protocol keeps (the object, a memoryview of it, a slice, its hash) is never
changed afterwards, and that every chunk still has the right contents and hash."""
from __future__ import annotations

import asyncio
import random
from typing import Any

from net_util import arun, connected_transport, recv_exactly

__all__ = ["arun"]  # fixture, imported for pytest


def messages() -> list[bytes]:
    rng = random.Random(7)
    return [bytes(rng.randrange(256) for _ in range(rng.choice((3, 17, 100, 1000, 5000))))
            for _ in range(60)]


class Keeper(asyncio.Protocol):
    """Keeps every third chunk, a memoryview of every third, and only a copy
    of the rest; checks each chunk's hash against a fresh copy's."""

    def __init__(self) -> None:
        self.kept: list[tuple[bytes, bytes]] = []       # (object, copy at arrival)
        self.views: list[tuple[memoryview, bytes]] = []
        self.copies: list[bytes] = []
        self.hash_ok = True
        self.got = asyncio.Event()
        self.total = 0

    def data_received(self, data: bytes) -> None:
        assert type(data) is bytes
        copy = bytes(memoryview(data))
        self.hash_ok &= hash(data) == hash(copy)
        self.copies.append(copy)
        n = len(self.copies)
        if n % 3 == 0:
            self.kept.append((data, copy))
        elif n % 3 == 1:
            self.views.append((memoryview(data), copy))
        self.total += len(data)
        self.got.set()


async def exchange(sizes_seen: list[int]) -> Keeper:
    async with connected_transport(Keeper) as conn:
        loop = asyncio.get_running_loop()
        proto: Keeper = conn.protocol
        sent = b""
        for msg in messages():
            await loop.sock_sendall(conn.peer, msg)
            sent += msg
            while proto.total < len(sent):  # one chunk per message, mostly
                proto.got.clear()
                await asyncio.wait_for(proto.got.wait(), 5)
        assert b"".join(proto.copies) == sent
        sizes_seen.extend(len(c) for c in proto.copies)
        # the peer still works both ways
        conn.transport.write(b"pong")
        assert await recv_exactly(conn.peer, 4) == b"pong"
        return proto


def test_kept_chunks_never_change(arun):
    sizes: list[int] = []
    proto = arun(exchange(sizes))
    assert proto.hash_ok
    for obj, copy in proto.kept:
        assert obj == copy and hash(obj) == hash(copy)
    for view, copy in proto.views:
        assert view.tobytes() == copy
    assert len(set(sizes)) > 1


def test_hash_of_reused_objects(arun):
    """A protocol that hashes (and so caches the hash of) each chunk but keeps
    none: equal contents must hash equal, different contents differently."""
    seen: dict[bytes, int] = {}

    class Hasher(asyncio.Protocol):
        def __init__(self) -> None:
            self.hashes: list[tuple[int, bytes]] = []
            self.got = asyncio.Event()

        def data_received(self, data: bytes) -> None:
            self.hashes.append((hash(data), bytes(memoryview(data))))
            self.got.set()

    async def main() -> list[tuple[int, bytes]]:
        async with connected_transport(Hasher) as conn:
            loop = asyncio.get_running_loop()
            proto: Any = conn.protocol
            for i in range(40):
                proto.got.clear()
                await loop.sock_sendall(conn.peer, b"%05d" % (i % 7) * 20)
                await asyncio.wait_for(proto.got.wait(), 5)
            return proto.hashes
    for h, content in arun(main()):
        assert h == hash(content)
        seen[content] = h
    assert len(seen) == 7
