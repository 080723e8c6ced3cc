"""loop.create_unix_server() / create_unix_connection(), on both loops."""
from __future__ import annotations

import asyncio
import os
import pathlib
import socket
import stat
import uuid

import pytest

from net_util import (PY313, EchoProtocol, ProtocolCollector, Recorder, arun, recv_exactly,
                      recv_until_eof, sock_path)

__all__ = ["arun", "sock_path"]  # fixtures, imported for pytest


def is_socket_file(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except FileNotFoundError:
        return False


async def unix_echo(path, data: bytes = b"unix") -> None:
    loop = asyncio.get_running_loop()
    tr, proto = await loop.create_unix_connection(Recorder, path)
    try:
        tr.write(data)
        assert await proto.wait_data(len(data)) == data
    finally:
        tr.close()
    await proto.wait_lost()


def test_unix_server_and_connection(arun, sock_path):
    async def main():
        loop = asyncio.get_running_loop()
        collector = ProtocolCollector(EchoProtocol)
        server = await loop.create_unix_server(collector, sock_path)
        async with server:
            assert is_socket_file(sock_path)
            assert server.is_serving()
            (lsock,) = server.sockets
            assert lsock.family == socket.AF_UNIX
            assert lsock.getsockname() == sock_path
            tr, proto = await loop.create_unix_connection(Recorder, sock_path)
            assert isinstance(tr, asyncio.Transport)
            assert tr.get_extra_info("peername") == sock_path
            assert tr.get_extra_info("socket").family == socket.AF_UNIX
            tr.write(b"over unix")
            assert await proto.wait_data(9) == b"over unix"
            sproto = await collector.next_made()
            assert sproto.transport.get_extra_info("sockname") == sock_path
            assert sproto.transport.get_extra_info("peername") in ("", None, b"")
            # half-close works on unix stream sockets too
            assert tr.can_write_eof()
            tr.write_eof()
            await sproto.wait_event("eof")
            assert await proto.wait_lost() is None  # the echo server closed on EOF
            assert await sproto.wait_lost() is None
    arun(main())


def test_unix_path_like(arun, sock_path):
    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_unix_server(EchoProtocol, pathlib.Path(sock_path))
        async with server:
            await unix_echo(pathlib.Path(sock_path))
    arun(main())


def test_unix_with_sock(arun, sock_path):
    async def main():
        loop = asyncio.get_running_loop()
        lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lsock.bind(sock_path)
        server = await loop.create_unix_server(EchoProtocol, sock=lsock)
        async with server:
            assert server.sockets[0].fileno() == lsock.fileno()
            csock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            csock.connect(sock_path)
            tr, proto = await loop.create_unix_connection(Recorder, sock=csock)
            tr.write(b"sock=")
            assert await proto.wait_data(5) == b"sock="
            tr.close()
            await proto.wait_lost()
            assert csock.fileno() == -1
        assert lsock.fileno() == -1
    arun(main())


def test_unix_bad_arguments(arun, sock_path):
    async def main():
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            with pytest.raises(ValueError):
                await loop.create_unix_server(EchoProtocol, sock_path, sock=s)
            with pytest.raises(ValueError):
                await loop.create_unix_connection(Recorder, sock_path, sock=s)
        with pytest.raises(ValueError):
            await loop.create_unix_server(EchoProtocol)
        with pytest.raises(ValueError):
            await loop.create_unix_connection(Recorder)
        for wrong in (socket.socket(socket.AF_INET, socket.SOCK_STREAM),
                      socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)):
            with wrong:
                with pytest.raises(ValueError):
                    await loop.create_unix_server(EchoProtocol, sock=wrong)
                with pytest.raises(ValueError):
                    await loop.create_unix_connection(Recorder, sock=wrong)
        with pytest.raises(TypeError):
            await loop.create_unix_server(EchoProtocol, sock_path, ssl=True)
        with pytest.raises(ValueError):
            await loop.create_unix_server(EchoProtocol, sock_path, ssl_handshake_timeout=1)
        with pytest.raises(ValueError):
            await loop.create_unix_connection(Recorder, sock_path, server_hostname="x")
        assert not os.path.exists(sock_path)
    arun(main())


def test_unix_connection_errors(arun, sock_path):
    async def main():
        loop = asyncio.get_running_loop()
        with pytest.raises(FileNotFoundError):
            await loop.create_unix_connection(Recorder, sock_path)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.bind(sock_path)  # a socket file nobody listens on
            with pytest.raises(ConnectionRefusedError):
                await loop.create_unix_connection(Recorder, sock_path)
    arun(main())


# --------------------------------------------------------------------------
# the socket file
# --------------------------------------------------------------------------

def test_socket_file_after_close(arun, sock_path):
    """3.13: cleanup_socket=True (the default) unlinks the file on close.
    3.11/3.12: the file is left behind."""
    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_unix_server(EchoProtocol, sock_path)
        await unix_echo(sock_path)
        server.close()
        await server.wait_closed()
        assert is_socket_file(sock_path) is (not PY313)
    arun(main())


@pytest.mark.skipif(not PY313, reason="cleanup_socket is new in 3.13")
def test_cleanup_socket_false_keeps_the_file(arun, sock_path):
    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_unix_server(EchoProtocol, sock_path, cleanup_socket=False)
        async with server:
            await unix_echo(sock_path)
        assert is_socket_file(sock_path)
    arun(main())


@pytest.mark.skipif(not PY313, reason="cleanup_socket is new in 3.13")
def test_cleanup_socket_applies_to_sock_too(arun, sock_path):
    async def main():
        loop = asyncio.get_running_loop()
        lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lsock.bind(sock_path)
        server = await loop.create_unix_server(EchoProtocol, sock=lsock)
        async with server:
            await unix_echo(sock_path)
        assert not os.path.exists(sock_path)
    arun(main())


@pytest.mark.skipif(not PY313, reason="cleanup_socket is new in 3.13")
def test_cleanup_leaves_a_replaced_file_alone(arun, sock_path):
    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_unix_server(EchoProtocol, sock_path)
        os.unlink(sock_path)
        with open(sock_path, "w") as f:  # somebody else's file now
            f.write("not ours")
        server.close()
        await server.wait_closed()
        with open(sock_path) as f:
            assert f.read() == "not ours"
    arun(main())


def test_stale_socket_file_is_replaced(arun, sock_path):
    async def main():
        loop = asyncio.get_running_loop()
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(sock_path)
        stale.close()  # leaves the socket file behind
        assert is_socket_file(sock_path)
        server = await loop.create_unix_server(EchoProtocol, sock_path)
        async with server:
            await unix_echo(sock_path)
    arun(main())


def test_regular_file_in_the_way_is_not_removed(arun, sock_path):
    async def main():
        loop = asyncio.get_running_loop()
        with open(sock_path, "w") as f:
            f.write("precious")
        with pytest.raises(OSError):
            await loop.create_unix_server(EchoProtocol, sock_path)
        with open(sock_path) as f:
            assert f.read() == "precious"
    arun(main())


def test_live_server_path_in_use(arun, sock_path):
    """A second server on the path of a live one: the stdlib removes the socket file
    (it only checks that it is a socket) and binds anew; the first server keeps its
    already-accepted connections but is no longer reachable by path."""
    async def main():
        loop = asyncio.get_running_loop()
        first = ProtocolCollector(EchoProtocol)
        second = ProtocolCollector(EchoProtocol)
        s1 = await loop.create_unix_server(first, sock_path)
        async with s1:
            s2 = await loop.create_unix_server(second, sock_path)
            async with s2:
                await unix_echo(sock_path)
                assert len(second.protocols) == 1 and first.protocols == []
    arun(main())


# --------------------------------------------------------------------------
# abstract namespace (Linux)
# --------------------------------------------------------------------------

@pytest.mark.parametrize("kind", [str, bytes])
def test_abstract_namespace(arun, kind):
    name = "\0pyasync_c-test-" + uuid.uuid4().hex
    path = name if kind is str else name.encode()

    async def main():
        loop = asyncio.get_running_loop()
        collector = ProtocolCollector(EchoProtocol)
        server = await loop.create_unix_server(collector, path)
        async with server:
            assert server.sockets[0].getsockname() == name.encode()
            tr, proto = await loop.create_unix_connection(Recorder, path)
            assert tr.get_extra_info("peername") == name.encode()
            tr.write(b"abstract")
            assert await proto.wait_data(8) == b"abstract"
            tr.close()
            await proto.wait_lost()
        with pytest.raises(ConnectionRefusedError):  # gone with the server
            await loop.create_unix_connection(Recorder, path)
    arun(main())


def test_unix_connection_with_raw_peer(arun, sock_path):
    """create_unix_connection against a plain listening socket: data both ways, EOF."""
    async def main():
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as lst:
            lst.bind(sock_path)
            lst.listen(1)
            lst.setblocking(False)
            tr, proto = await loop.create_unix_connection(Recorder, sock_path)
            peer, _ = await loop.sock_accept(lst)
            with peer:
                tr.write(b"to peer")
                assert await recv_exactly(peer, 7) == b"to peer"
                await loop.sock_sendall(peer, b"to transport")
                assert await proto.wait_data(12) == b"to transport"
                peer.shutdown(socket.SHUT_WR)
                assert await proto.wait_lost() is None
                assert proto.names() == ["made", "data", "eof", "lost"]
                assert await recv_until_eof(peer) == b""
    arun(main())
