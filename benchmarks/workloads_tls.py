"""TLS workloads beyond tls_pingpong (workloads_loop.py): bulk transfer.

Each ``make(prims, n)`` does its untimed set-up and returns the timed
coroutine, which returns the number of units it moved.
"""
from __future__ import annotations

import asyncio
from typing import Any

from harness import Body, Prims, workload
from workloads_loop import _self_signed_contexts

CHUNK = 64 * 1024


@workload("loop", "MiB", n=256)
def tls_bulk(prims: Prims, n: int) -> Body:
    """TLS bulk transfer over loopback in one process: a client writes n MiB in
    64 KiB writes (honouring pause_writing), the server counts them and answers
    one byte at the end (asyncio's SSLProtocol / uvloop's / pyasync_c's)."""
    server_ctx, client_ctx = _self_signed_contexts()
    total = n * 1024 * 1024
    chunk = b"b" * CHUNK

    class Sink(asyncio.Protocol):
        def __init__(self) -> None:
            self.received = 0

        def connection_made(self, transport: Any) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.received += len(data)
            if self.received >= total:
                self.transport.write(b"k")

    class Client(asyncio.Protocol):
        def __init__(self, done: asyncio.Future[None]) -> None:
            self.done = done
            self.resumed: asyncio.Future[None] | None = None

        def connection_made(self, transport: Any) -> None:
            self.transport = transport

        def pause_writing(self) -> None:
            self.resumed = asyncio.get_running_loop().create_future()

        def resume_writing(self) -> None:
            if self.resumed is not None:
                self.resumed.set_result(None)
                self.resumed = None

        def data_received(self, data: bytes) -> None:
            if not self.done.done():
                self.done.set_result(None)

    async def body() -> int:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Sink, "127.0.0.1", 0, ssl=server_ctx)
        done: asyncio.Future[None] = loop.create_future()
        transport, client = await loop.create_connection(
            lambda: Client(done), "127.0.0.1", server.sockets[0].getsockname()[1],
            ssl=client_ctx, server_hostname="localhost")
        try:
            sent = 0
            while sent < total:
                transport.write(chunk)
                sent += CHUNK
                if client.resumed is not None:
                    await client.resumed
            await done
            return n
        finally:
            transport.close()
            server.close()

    return body()
