"""Small helpers the scenarios share: byte patterns, RST close, waiting, echo."""
from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable

LOOPBACK = "127.0.0.1"

_CYCLE_LEN = 251  # prime: a shifted slice never lines up with a power-of-two chunk
_CYCLE = bytes(range(_CYCLE_LEN)) * (1 + (1 << 20) // _CYCLE_LEN + 1)
MAX_PATTERN = len(_CYCLE) - _CYCLE_LEN  # the largest slice pattern() can give


def pattern(offset: int, size: int) -> bytes:
    """Bytes offset..offset+size of the endless sequence 0, 1, ..., 250, 0, 1, ..."""
    if size > MAX_PATTERN:
        return b"".join(pattern(offset + done, min(MAX_PATTERN, size - done))
                        for done in range(0, size, MAX_PATTERN))
    start = offset % _CYCLE_LEN
    return _CYCLE[start:start + size]


def set_rst_on_close(sock: socket.socket | None) -> None:
    """SO_LINGER 0: close() sends RST (no FIN, no TIME_WAIT)."""
    if sock is not None and sock.fileno() >= 0:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def reset(transport: asyncio.BaseTransport) -> None:
    """Close a connection with a TCP reset."""
    set_rst_on_close(transport.get_extra_info("socket"))
    transport.abort()  # type: ignore[attr-defined]


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str,
                     interval: float = 0.005) -> None:
    """Poll ``predicate``; TimeoutError naming ``what`` after ``timeout`` seconds."""
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(interval)
    except TimeoutError:
        raise TimeoutError(f"timed out after {timeout}s waiting for {what}") from None


class Echo(asyncio.Protocol):
    """Echoes everything; ``stats`` counts live and peak connections."""

    def __init__(self, stats: EchoStats) -> None:
        self.stats = stats
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.stats.opened += 1
        self.stats.peak = max(self.stats.peak, self.stats.live)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.stats.closed += 1


class EchoStats:
    def __init__(self) -> None:
        self.opened = 0
        self.closed = 0
        self.peak = 0

    @property
    def live(self) -> int:
        return self.opened - self.closed


async def echo_server(backlog: int = 100) -> tuple[asyncio.Server, int, EchoStats]:
    """A protocol-level echo server on loopback: (server, port, stats)."""
    stats = EchoStats()
    server = await asyncio.get_running_loop().create_server(
        lambda: Echo(stats), LOOPBACK, 0, backlog=backlog)
    return server, server.sockets[0].getsockname()[1], stats


async def stream_echo_once(port: int, message: bytes) -> bytes:
    """Open a stream connection, send ``message``, read as many bytes back, close."""
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    try:
        writer.write(message)
        return await reader.readexactly(len(message))
    finally:
        writer.close()
        await writer.wait_closed()
