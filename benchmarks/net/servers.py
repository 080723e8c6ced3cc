"""Echo servers on a chosen asyncio loop, for the network benchmarks.

    python3 benchmarks/net/servers.py KIND --loop stdlib|uvloop|pyasync_c
                                      [--host H] [--port P] [--path PATH]

KIND is one of:

  protocol  TCP, asyncio.Protocol: data_received -> transport.write
  buffered  TCP, asyncio.BufferedProtocol: get_buffer hands out a memoryview
            of one preallocated bytearray, buffer_updated writes the filled part
  streams   TCP, asyncio.start_server: reader.read(n) / writer.write / drain
  unix      Unix socket, the Protocol echo (loop.create_unix_server)
  udp       UDP, loop.create_datagram_endpoint: datagram_received -> sendto

When listening it prints one JSON line, {"ready": true, "host": ..., "port": ...}
(or "path"). It then prints {"utime_us", "stime_us", "rss_kb"} (its own
getrusage(RUSAGE_SELF) CPU time and its current RSS) for every line read on
stdin, and once more before exiting on EOF of stdin or SIGTERM. If the loop
cannot be imported or does not implement what KIND needs (NotImplementedError)
it prints {"status": "unavailable", "reason": ...} instead and exits 3; any
other failure exits 1 with a traceback on stderr.

This file owns the Python side of the network benchmarks; the raw libuv
reference server is echo_server_libuv.c and the load driver echo_client.c.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import sys
import threading
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import LOOP_NAMES, Unavailable, loop_factory  # noqa: E402

KINDS = ("protocol", "buffered", "streams", "unix", "udp")
READ_SIZE = 256 * 1024  # BufferedProtocol buffer, streams read(n)
EXIT_UNAVAILABLE = 3


class EchoProtocol(asyncio.Protocol):
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


class BufferedEchoProtocol(asyncio.BufferedProtocol):
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.view = memoryview(bytearray(READ_SIZE))

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view

    def buffer_updated(self, nbytes: int) -> None:
        self.transport.write(self.view[:nbytes])
        if self.transport.get_write_buffer_size():
            # The socket did not take it all and a transport may keep a
            # reference to our memoryview instead of a copy: the next read
            # must not overwrite it, so it goes into a fresh buffer.
            self.view = memoryview(bytearray(READ_SIZE))


class EchoDatagramProtocol(asyncio.DatagramProtocol):
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.transport.sendto(data, addr)


async def stream_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(READ_SIZE):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def start(kind: str, host: str, port: int, path: str | None) -> tuple[Any, dict[str, Any]]:
    """Start the server; return it (to keep alive) and its address."""
    loop = asyncio.get_running_loop()
    if kind == "udp":
        transport, _ = await loop.create_datagram_endpoint(EchoDatagramProtocol,
                                                           local_addr=(host, port))
        sockname = transport.get_extra_info("sockname")
        return transport, {"host": sockname[0], "port": sockname[1]}
    if kind == "unix":
        if not path:
            raise SystemExit("servers.py: unix needs --path")
        server: Any = await loop.create_unix_server(EchoProtocol, path, backlog=4096)
        return server, {"path": path}
    if kind == "streams":
        server = await asyncio.start_server(stream_echo, host, port, backlog=4096)
    else:
        factory = EchoProtocol if kind == "protocol" else BufferedEchoProtocol
        server = await loop.create_server(factory, host, port, backlog=4096)
    sockname = server.sockets[0].getsockname()
    return server, {"host": sockname[0], "port": sockname[1]}


def usage() -> dict[str, int]:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    try:
        rss_pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        rss_pages = 0
    return {"utime_us": round(ru.ru_utime * 1e6), "stime_us": round(ru.ru_stime * 1e6),
            "rss_kb": rss_pages * (os.sysconf("SC_PAGESIZE") // 1024)}


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def control(loop: asyncio.AbstractEventLoop, done: asyncio.Future[None]) -> None:
    """Thread: answer each stdin line with usage(); on EOF stop the loop.

    A thread rather than loop.add_reader so that it needs nothing from the
    loop under test but call_soon_threadsafe."""
    for _ in sys.stdin:
        emit(usage())
    loop.call_soon_threadsafe(lambda: done.done() or done.set_result(None))


async def serve(kind: str, host: str, port: int, path: str | None) -> None:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    server, address = await start(kind, host, port, path)
    try:
        signal.signal(signal.SIGTERM,
                      lambda *_: loop.call_soon_threadsafe(lambda: done.done() or done.set_result(None)))
        emit({"ready": True, **address})
        threading.Thread(target=control, args=(loop, done), daemon=True).start()
        await done
    finally:
        server.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", choices=KINDS)
    ap.add_argument("--loop", choices=LOOP_NAMES, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--path", help="socket path (unix)")
    args = ap.parse_args(argv)

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        loop = loop_factory(args.loop)()
    except Unavailable as exc:
        emit({"status": "unavailable", "reason": str(exc)})
        return EXIT_UNAVAILABLE
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(serve(args.kind, args.host, args.port, args.path))
    except NotImplementedError as exc:
        emit({"status": "unavailable",
              "reason": f"loop {args.loop}: NotImplementedError: {exc}".rstrip(": ")})
        return EXIT_UNAVAILABLE
    finally:
        emit(usage())
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
