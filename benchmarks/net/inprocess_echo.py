"""A TCP echo with server and clients in one process, for instruction counts.

    python3 benchmarks/net/inprocess_echo.py protocol|streams LOOP N

The server is asyncio.Protocol (data_received -> write) or asyncio streams
(start_server, read/write/drain); 10 Protocol clients each keep one 1 KiB
message in flight until N round trips are done. Wall time here means little
(both ends share one core); run it under callgrind at N and 2N and divide the
difference by N for the instructions per round trip of both ends:

    for n in 2000 4000; do valgrind --tool=callgrind --callgrind-out-file=cg.$n \\
        python3 benchmarks/net/inprocess_echo.py streams pyasync_c $n; done
"""
from __future__ import annotations

import asyncio
import os
import sys
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from servers import EchoProtocol, loop_factory, stream_echo  # noqa: E402

CONNS = 10
SIZE = 1024


class Client(asyncio.Protocol):
    def __init__(self, done: asyncio.Future[None], count: int) -> None:
        self.done, self.left, self.got = done, count, 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.write(b"x" * SIZE)

    def data_received(self, data: bytes) -> None:
        self.got += len(data)
        if self.got < SIZE:
            return
        self.got = 0
        self.left -= 1
        if self.left == 0:
            self.transport.close()
            self.done.set_result(None)
        else:
            self.transport.write(b"x" * SIZE)


async def main(kind: str, n: int) -> None:
    loop = asyncio.get_running_loop()
    if kind == "streams":
        server = await asyncio.start_server(stream_echo, "127.0.0.1", 0)
    else:
        server = await loop.create_server(EchoProtocol, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    dones = []
    for _ in range(CONNS):
        done = loop.create_future()
        dones.append(done)
        make: Callable[[], Client] = lambda done=done: Client(done, max(1, n // CONNS))
        await loop.create_connection(make, "127.0.0.1", port)
    await asyncio.gather(*dones)
    server.close()


if __name__ == "__main__":
    kind, loop_name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if kind not in ("protocol", "streams"):
        sys.exit(__doc__)
    loop = loop_factory(loop_name)()
    try:
        loop.run_until_complete(main(kind, count))
    finally:
        loop.close()
