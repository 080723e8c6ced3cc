"""One loop holding 10,000 concurrent TCP connections exchanging messages, on both
loops: server side only, with the clients in another process (exactly 10,000), and
client and server sides on the same loop (as many as the fd limit allows, ~10,000).

20,000+ file descriptors are needed: the RLIMIT_NOFILE soft limit is raised up to the
hard limit for the test.  When the hard limit is too low for 10,000 connections the
test runs with as many as fit (at least MIN_CONNECTIONS), else it skips.
"""
from __future__ import annotations

import asyncio
import resource
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator

import pytest

from net_util import arun, open_fds

__all__ = ["arun"]  # fixture, imported for pytest

TARGET_CONNECTIONS = 10_000
MIN_CONNECTIONS = 5_000
FD_MARGIN = 200  # listener, loop internals, pytest, ...
CONNECT_BATCH = 500  # concurrent connects in flight (stays inside the listen backlog)
ROUNDS = 3


@pytest.fixture
def connections() -> Iterator[int]:
    """How many connections this process can hold; the soft limit raised meanwhile."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2 * TARGET_CONNECTIONS + FD_MARGIN + len(open_fds())
    if hard != resource.RLIM_INFINITY:
        want = min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    try:
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        n = min(TARGET_CONNECTIONS, (limit - len(open_fds()) - FD_MARGIN) // 2)
        if n < MIN_CONNECTIONS:
            pytest.skip(f"RLIMIT_NOFILE allows only {n} connections")
        yield n
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class ServerSide(asyncio.Protocol):
    """Echoes every message; counts live connections."""
    live = 0
    peak = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        ServerSide.live += 1
        ServerSide.peak = max(ServerSide.peak, ServerSide.live)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        ServerSide.live -= 1


class ClientSide(asyncio.Protocol):
    """Collects echoed bytes; ``expect(n)`` returns a future done when n bytes arrived."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.want = 0
        self.waiter: asyncio.Future[bytes] | None = None
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def expect(self, n: int) -> asyncio.Future[bytes]:
        self.want = n
        self.waiter = asyncio.get_running_loop().create_future()
        return self.waiter

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.waiter is not None and len(self.buf) >= self.want:
            self.waiter.set_result(bytes(self.buf))
            self.buf.clear()
            self.waiter = None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


def test_ten_thousand_connections(arun, connections):
    n = connections

    async def main():
        loop = asyncio.get_running_loop()
        ServerSide.live = ServerSide.peak = 0
        server = await loop.create_server(ServerSide, "127.0.0.1", 0, backlog=4096)
        clients: list[ClientSide] = []
        try:
            port = server.sockets[0].getsockname()[1]
            for start in range(0, n, CONNECT_BATCH):
                batch = await asyncio.gather(*(
                    loop.create_connection(ClientSide, "127.0.0.1", port)
                    for _ in range(min(CONNECT_BATCH, n - start))))
                clients.extend(proto for _, proto in batch)
            assert len(clients) == n
            async with asyncio.timeout(20):
                while ServerSide.live < n:
                    await asyncio.sleep(0.01)

            for rnd in range(ROUNDS):
                waiters = []
                for i, c in enumerate(clients):
                    msg = b"round %d client %06d|" % (rnd, i)
                    waiters.append((c.expect(len(msg)), msg))
                    c.transport.write(msg)
                for fut, msg in waiters:
                    assert await fut == msg
            assert ServerSide.peak == n  # all of them were open at once
        finally:
            for c in clients:
                sock = c.transport.get_extra_info("socket")
                if sock is not None and sock.fileno() >= 0:
                    # RST instead of FIN: no TIME_WAIT eating ephemeral ports for
                    # the next run
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                    struct.pack("ii", 1, 0))
                c.transport.close()
            server.close()
        await asyncio.gather(*(c.lost for c in clients))
        async with asyncio.timeout(20):
            while ServerSide.live:
                await asyncio.sleep(0.01)
        await server.wait_closed()
    arun(main(), timeout=60)


# The clients of the server-side test: another process (its own fd table), on
# asyncio's stdlib loop.  Protocol on stdin/stdout: it prints "connected" once
# all n connections are up, waits for a line, runs ROUNDS rounds of one message
# per connection (each echo checked), prints "done", and exits at stdin EOF.
_CLIENT_SCRIPT = r"""
import asyncio, resource, socket, struct, sys
port, n, rounds = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

async def main():
    loop = asyncio.get_running_loop()
    conns = []
    for start in range(0, n, 500):
        conns += await asyncio.gather(*(asyncio.open_connection("127.0.0.1", port)
                                        for _ in range(min(500, n - start))))
    print("connected", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    for rnd in range(rounds):
        for i, (reader, writer) in enumerate(conns):
            writer.write(b"r%d c%06d|" % (rnd, i))
        for i, (reader, writer) in enumerate(conns):
            expected = b"r%d c%06d|" % (rnd, i)
            got = await reader.readexactly(len(expected))
            assert got == expected, (got, expected)
    print("done", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    for reader, writer in conns:
        writer.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()

asyncio.run(main())
"""


def test_server_holds_ten_thousand_connections(arun):
    """The loop under test holds exactly 10,000 server-side connections; the
    clients live in another process (so each side needs only ~10,000 fds)."""
    n = TARGET_CONNECTIONS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n + FD_MARGIN + len(open_fds())
    if hard != resource.RLIM_INFINITY and hard < want:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {want}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want) if hard == resource.RLIM_INFINITY
                                                 else hard, hard))

    async def main():
        loop = asyncio.get_running_loop()
        ServerSide.live = ServerSide.peak = 0
        server = await loop.create_server(ServerSide, "127.0.0.1", 0, backlog=4096)
        port = server.sockets[0].getsockname()[1]
        proc = subprocess.Popen([sys.executable, "-c", _CLIENT_SCRIPT, str(port), str(n), str(ROUNDS)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            line = await loop.run_in_executor(None, proc.stdout.readline)
            assert line.strip() == "connected"
            async with asyncio.timeout(20):
                while ServerSide.live < n:
                    await asyncio.sleep(0.01)
            assert ServerSide.live == n
            proc.stdin.write("go\n")
            proc.stdin.flush()
            line = await loop.run_in_executor(None, proc.stdout.readline)
            assert line.strip() == "done"  # every echo of every round checked by the client
            assert ServerSide.peak == n
        finally:
            proc.stdin.close()
            await loop.run_in_executor(None, proc.wait)
            server.close()
        async with asyncio.timeout(20):
            while ServerSide.live:
                await asyncio.sleep(0.01)
        await server.wait_closed()
        assert proc.returncode == 0
    try:
        arun(main(), timeout=60)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
