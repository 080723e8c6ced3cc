"""loop.sock_sendfile() and loop.sendfile(), native and fallback, on both loops."""
from __future__ import annotations

import asyncio
import contextlib
import io
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from typing import IO

import pytest

from net_util import (ProtocolCollector, Recorder, arun, connected_transport, listener, payload,
                      recv_exactly, recv_until_eof, server_context, tcp_server, tls_connect,
                      tls_files)

__all__ = ["arun", "tls_files"]  # fixtures, imported for pytest

DATA = payload(3 * 1024 * 1024 + 17)


@pytest.fixture
def data_file() -> Iterator[IO[bytes]]:
    with tempfile.TemporaryFile() as f:
        f.write(DATA)
        f.flush()
        f.seek(0)
        yield f


@contextlib.asynccontextmanager
async def tcp_socket_pair() -> AsyncIterator[tuple[socket.socket, socket.socket]]:
    """(sender, receiver): a connected non-blocking TCP pair made with loop.sock_*."""
    loop = asyncio.get_running_loop()
    with listener() as lst:
        sender = socket.socket()
        sender.setblocking(False)
        with sender:
            await loop.sock_connect(sender, lst.getsockname())
            receiver, _ = await loop.sock_accept(lst)
            with receiver:
                yield sender, receiver


# --------------------------------------------------------------------------
# sock_sendfile
# --------------------------------------------------------------------------

@pytest.mark.parametrize("fallback", [True, False])
def test_sock_sendfile_whole_file(arun, data_file, fallback):
    async def main():
        loop = asyncio.get_running_loop()
        async with tcp_socket_pair() as (sender, receiver):
            reader = asyncio.ensure_future(recv_exactly(receiver, len(DATA)))
            sent = await loop.sock_sendfile(sender, data_file, fallback=fallback)
            assert sent == len(DATA)
            assert await reader == DATA
            assert data_file.tell() == len(DATA)
    arun(main())


@pytest.mark.parametrize("fallback", [True, False])
def test_sock_sendfile_offset_and_count(arun, data_file, fallback):
    async def main():
        loop = asyncio.get_running_loop()
        async with tcp_socket_pair() as (sender, receiver):
            sent = await loop.sock_sendfile(sender, data_file, offset=1000, count=70000,
                                            fallback=fallback)
            assert sent == 70000
            assert await recv_exactly(receiver, 70000) == DATA[1000:71000]
            assert data_file.tell() == 71000
            # offset alone: to the end of the file
            tail = 12345
            reader = asyncio.ensure_future(recv_exactly(receiver, tail))
            sent = await loop.sock_sendfile(sender, data_file, offset=len(DATA) - tail,
                                            fallback=fallback)
            assert sent == tail
            assert await reader == DATA[-tail:]
            # count past the end: what there is
            sent = await loop.sock_sendfile(sender, data_file, offset=len(DATA) - 10,
                                            count=1000, fallback=fallback)
            assert sent == 10
            assert await recv_exactly(receiver, 10) == DATA[-10:]
            # offset at/after the end: nothing, and no error
            assert await loop.sock_sendfile(sender, data_file, offset=len(DATA),
                                            fallback=fallback) == 0
    arun(main())


def test_sock_sendfile_empty_file(arun):
    async def main():
        loop = asyncio.get_running_loop()
        async with tcp_socket_pair() as (sender, receiver):
            with tempfile.TemporaryFile() as empty:
                assert await loop.sock_sendfile(sender, empty) == 0
            sender.shutdown(socket.SHUT_WR)
            assert await recv_until_eof(receiver) == b""
    arun(main())


def test_sock_sendfile_non_regular_file(arun):
    """No fileno (BytesIO): native sendfile is unavailable; the fallback works."""
    async def main():
        loop = asyncio.get_running_loop()
        async with tcp_socket_pair() as (sender, receiver):
            buf = io.BytesIO(b"in memory")
            with pytest.raises(asyncio.SendfileNotAvailableError):
                await loop.sock_sendfile(sender, buf, fallback=False)
            assert await loop.sock_sendfile(sender, buf, offset=3) == 6
            assert await recv_exactly(receiver, 6) == b"memory"
            assert buf.tell() == 9
    arun(main())


def test_sock_sendfile_bad_arguments(arun, data_file, tmp_path):
    async def main():
        loop = asyncio.get_running_loop()
        async with tcp_socket_pair() as (sender, _):
            with open(tmp_path / "text.txt", "w+") as text:
                text.write("text")
                with pytest.raises(ValueError):
                    await loop.sock_sendfile(sender, text)
            for bad_offset, exc in ((-1, ValueError), ("0", TypeError), (1.5, TypeError)):
                with pytest.raises(exc):
                    await loop.sock_sendfile(sender, data_file, offset=bad_offset)
            for bad_count, exc in ((0, ValueError), (-5, ValueError), ("1", TypeError)):
                with pytest.raises(exc):
                    await loop.sock_sendfile(sender, data_file, count=bad_count)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                udp.setblocking(False)
                with pytest.raises(ValueError):
                    await loop.sock_sendfile(udp, data_file)
            assert data_file.tell() == 0  # nothing was read
    arun(main())


# --------------------------------------------------------------------------
# loop.sendfile on transports
# --------------------------------------------------------------------------

@pytest.mark.parametrize("fallback", [True, False])
def test_sendfile_on_tcp_transport(arun, data_file, fallback):
    async def main():
        loop = asyncio.get_running_loop()
        async with connected_transport() as c:
            tr = c.transport
            tr.write(b"header:")  # queued data goes out first
            reader = asyncio.ensure_future(recv_exactly(c.peer, 7 + len(DATA)))
            sent = await loop.sendfile(tr, data_file, fallback=fallback)
            assert sent == len(DATA)
            assert data_file.tell() == len(DATA)
            tr.write(b":trailer")  # the transport is usable afterwards
            assert await reader == b"header:" + DATA
            assert await recv_exactly(c.peer, 8) == b":trailer"
            assert not tr.is_closing()
            assert c.protocol.names() == ["made"]
    arun(main())


def test_sendfile_offset_and_count_on_transport(arun, data_file):
    async def main():
        loop = asyncio.get_running_loop()
        async with connected_transport() as c:
            sent = await loop.sendfile(c.transport, data_file, offset=5, count=100_000)
            assert sent == 100_000
            assert await recv_exactly(c.peer, 100_000) == DATA[5:100_005]
            assert data_file.tell() == 100_005
    arun(main())


def test_sendfile_fallback_with_in_memory_file(arun):
    async def main():
        loop = asyncio.get_running_loop()
        async with connected_transport() as c:
            buf = io.BytesIO(payload(300_000))
            assert await loop.sendfile(c.transport, buf) == 300_000
            assert await recv_exactly(c.peer, 300_000) == buf.getvalue()
    arun(main())


@pytest.mark.parametrize("fallback", [True, False])
def test_sendfile_with_slow_reader_waits_for_it(arun, fallback):
    """Far more data than socket buffers hold: sendfile can only finish as the peer
    reads (the file is not slurped into memory)."""
    size = 64 * 1024 * 1024

    async def main():
        loop = asyncio.get_running_loop()
        with tempfile.TemporaryFile() as big:
            big.truncate(size)  # sparse, reads as zeros
            async with connected_transport() as c:
                task = asyncio.ensure_future(loop.sendfile(c.transport, big, fallback=fallback))
                await asyncio.sleep(0.05)
                assert not task.done()  # the peer is not reading: sendfile waits for it
                assert c.transport.get_write_buffer_size() <= 16 * 1024 * 1024
                received = 0
                while received < size:
                    chunk = await loop.sock_recv(c.peer, 1 << 20)
                    assert chunk and not chunk.strip(b"\0")
                    received += len(chunk)
                assert await task == size
    arun(main())


def test_sendfile_on_closing_transport(arun, data_file):
    async def main():
        loop = asyncio.get_running_loop()
        async with connected_transport() as c:
            c.transport.close()
            with pytest.raises(RuntimeError):
                await loop.sendfile(c.transport, data_file)
    arun(main())


def test_sendfile_peer_gone(arun):
    """The peer resets while sendfile is in progress: an error, and the transport closes."""
    async def main():
        loop = asyncio.get_running_loop()
        with tempfile.TemporaryFile() as big:
            big.truncate(512 * 1024 * 1024)  # sparse: far more than socket buffers hold
            async with connected_transport() as c:
                task = asyncio.ensure_future(loop.sendfile(c.transport, big))
                await asyncio.sleep(0.05)
                assert not task.done()
                c.peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
                c.peer.close()
                with pytest.raises(ConnectionError):
                    await task
                await c.protocol.wait_lost()  # (the stdlib reports None here)
                assert c.protocol.count("lost") == 1
                assert 0 < big.tell() < 512 * 1024 * 1024  # position tells what was sent
    arun(main())


def test_sendfile_on_datagram_transport_is_unsupported(arun, data_file):
    async def main():
        loop = asyncio.get_running_loop()
        tr, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                    local_addr=("127.0.0.1", 0))
        try:
            with pytest.raises(RuntimeError):
                await loop.sendfile(tr, data_file)
        finally:
            tr.close()
    arun(main())


def test_sendfile_on_tls_transport_falls_back(arun, data_file, tls_files):
    async def main():
        loop = asyncio.get_running_loop()
        async with tcp_server(Recorder, ssl=server_context(tls_files)) as server:
            tr, proto = await tls_connect(server, tls_files)
            try:
                with pytest.raises(RuntimeError):  # no native sendfile through TLS
                    await loop.sendfile(tr, data_file, fallback=False)
                assert await loop.sendfile(tr, data_file, count=200_000) == 200_000
                assert data_file.tell() == 200_000
            finally:
                tr.close()
            await proto.wait_lost()
    arun(main())


def test_sendfile_on_tls_transport_content(arun, data_file, tls_files):
    async def main():
        loop = asyncio.get_running_loop()
        collector = ProtocolCollector(Recorder)
        async with tcp_server(collector, ssl=server_context(tls_files)) as server:
            tr, proto = await tls_connect(server, tls_files)
            sent = await loop.sendfile(tr, data_file, offset=10, count=500_000)
            assert sent == 500_000
            sproto = await collector.next_made()
            assert await sproto.wait_data(500_000) == DATA[10:500_010]
            tr.close()
            await proto.wait_lost()
    arun(main())
