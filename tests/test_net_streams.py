"""asyncio streams (open_connection/start_server and the unix variants) on both loops."""
from __future__ import annotations

import asyncio
import socket

import pytest

from net_util import PY313, arun, payload, server_port, sock_path

__all__ = ["arun", "sock_path"]  # fixtures, imported for pytest

StreamPair = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def line_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echo each line upper-cased; close on EOF."""
    try:
        while line := await reader.readline():
            writer.write(line.upper())
            await writer.drain()
    finally:
        writer.close()


def test_open_connection_and_start_server(arun):
    async def main():
        server = await asyncio.start_server(line_echo, "127.0.0.1", 0)
        async with server:
            assert server.is_serving()
            reader, writer = await asyncio.open_connection("127.0.0.1", server_port(server))
            assert writer.get_extra_info("peername") == ("127.0.0.1", server_port(server))
            assert isinstance(writer.transport, asyncio.Transport)
            writer.write(b"one\ntwo\n")
            writer.writelines([b"thr", b"ee\n"])
            await writer.drain()
            assert await reader.readline() == b"ONE\n"
            assert await reader.readexactly(4) == b"TWO\n"
            assert await reader.readuntil(b"E\n") == b"THREE\n"
            assert writer.can_write_eof()
            writer.write_eof()
            assert await reader.read() == b""  # the server closed after our EOF
            assert reader.at_eof()
            writer.close()
            await writer.wait_closed()
            assert writer.is_closing()
    arun(main())


def test_read_variants_and_incomplete_read(arun):
    async def handler(reader, writer):
        writer.write(b"abc-def|ghi")
        await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        async with server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server_port(server))
            assert await reader.readuntil(b"-") == b"abc-"
            if PY313:  # several separators at once: new in 3.13
                assert await reader.readuntil((b"#", b"|")) == b"def|"
            else:
                assert await reader.readuntil(b"|") == b"def|"
            with pytest.raises(asyncio.IncompleteReadError) as info:
                await reader.readexactly(10)
            assert info.value.partial == b"ghi" and info.value.expected == 10
            assert await reader.read(5) == b""
            assert await reader.readline() == b""
            writer.close()
            await writer.wait_closed()
    arun(main())


def test_readuntil_eof_and_limit(arun):
    async def handler(reader, writer):
        writer.write(b"x" * 100 + b"\n" + b"tail-without-separator")
        await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        async with server:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", server_port(server), limit=50)
            with pytest.raises(asyncio.LimitOverrunError):
                await reader.readuntil(b"\n")
            await reader.readexactly(101)  # consume the long line by hand
            with pytest.raises(asyncio.IncompleteReadError) as info:
                await reader.readuntil(b"\n")
            assert info.value.partial == b"tail-without-separator"
            writer.close()
            await writer.wait_closed()
    arun(main())


def test_drain_waits_for_a_slow_reader(arun):
    chunk = payload(1024 * 1024)

    async def main():
        loop = asyncio.get_running_loop()
        got_all = loop.create_future()
        release = asyncio.Event()

        async def slow_reader(reader, writer):
            await release.wait()  # not reading: the client's buffers fill up
            total = 0
            while data := await reader.read(1 << 16):
                total += len(data)
            got_all.set_result(total)
            writer.close()

        server = await asyncio.start_server(slow_reader, "127.0.0.1", 0)
        async with server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server_port(server))
            writer.transport.set_write_buffer_limits(high=64 * 1024)
            written = 0
            blocked = None
            for _ in range(256):
                writer.write(chunk)
                written += len(chunk)
                drain = asyncio.ensure_future(writer.drain())
                await asyncio.sleep(0.01)
                if not drain.done():
                    blocked = drain
                    break
            assert blocked is not None, "drain never blocked with a peer that does not read"
            # blocked because the buffer is over the high-water mark; the writer
            # stopped there, so memory stays bounded
            assert writer.transport.get_write_buffer_size() > 64 * 1024
            release.set()
            await blocked
            writer.write_eof()
            assert await got_all == written
            writer.close()
            await writer.wait_closed()
    arun(main())


def test_wait_closed_and_peer_sees_eof(arun):
    async def main():
        loop = asyncio.get_running_loop()
        seen = loop.create_future()

        async def handler(reader, writer):
            seen.set_result(await reader.read())
            writer.close()

        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        async with server:
            _, writer = await asyncio.open_connection("127.0.0.1", server_port(server))
            writer.write(b"last words")
            writer.close()
            assert writer.is_closing()
            await writer.wait_closed()
            await writer.wait_closed()  # again: at once
            assert await seen == b"last words"
    arun(main())


def test_stream_server_serve_forever_and_async_with(arun):
    async def main():
        server = await asyncio.start_server(line_echo, "127.0.0.1", 0, start_serving=False)
        async with server:
            forever = asyncio.ensure_future(server.serve_forever())
            await asyncio.sleep(0)
            reader, writer = await asyncio.open_connection("127.0.0.1", server_port(server))
            writer.write(b"ping\n")
            assert await reader.readline() == b"PING\n"
            writer.close()
            await writer.wait_closed()
            forever.cancel()
            with pytest.raises(asyncio.CancelledError):
                await forever
            assert not server.is_serving()
    arun(main())


def test_many_stream_clients(arun):
    n = 100

    async def client(port: int, i: int) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"client %d\n" % i)
        line = await reader.readline()
        writer.close()
        await writer.wait_closed()
        return line

    async def main():
        server = await asyncio.start_server(line_echo, "127.0.0.1", 0)
        async with server:
            port = server_port(server)
            lines = await asyncio.gather(*(client(port, i) for i in range(n)))
            assert lines == [b"CLIENT %d\n" % i for i in range(n)]
    arun(main())


def test_open_connection_refused(arun):
    async def main():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)
    arun(main())


def test_unix_streams(arun, sock_path):
    async def main():
        server = await asyncio.start_unix_server(line_echo, sock_path)
        async with server:
            reader, writer = await asyncio.open_unix_connection(sock_path)
            assert writer.get_extra_info("peername") == sock_path
            writer.write(b"over unix\n")
            assert await reader.readline() == b"OVER UNIX\n"
            writer.write_eof()
            assert await reader.read() == b""
            writer.close()
            await writer.wait_closed()
    arun(main())


def test_unix_stream_reader_eof_mid_readexactly(arun, sock_path):
    async def handler(reader, writer):
        writer.write(b"12345")
        writer.close()

    async def main():
        server = await asyncio.start_unix_server(handler, sock_path)
        async with server:
            reader, writer = await asyncio.open_unix_connection(sock_path)
            with pytest.raises(asyncio.IncompleteReadError) as info:
                await reader.readexactly(6)
            assert info.value.partial == b"12345"
            writer.close()
            await writer.wait_closed()
    arun(main())


def test_handler_exception_does_not_stop_the_server(arun):
    calls = []

    async def handler(reader, writer):
        calls.append(1)
        if len(calls) == 1:
            writer.close()
            raise RuntimeError("handler failed")
        await line_echo(reader, writer)

    async def main():
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda loop, ctx: None)  # the failure is logged
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        async with server:
            port = server_port(server)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert await reader.read() == b""
            writer.close()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"still up\n")
            assert await reader.readline() == b"STILL UP\n"
            writer.close()
            await writer.wait_closed()
    arun(main())
