"""transport.get_extra_info('socket') of TCP/Unix stream transports, on both loops.

It must behave as asyncio's TransportSocket (the same class or a subclass, the
same answers, the same refusals); on pyasync_c getpeername()/getsockname() are
answered from the transport's own knowledge while the connection is open
(anyio asks for the peer on every attribute lookup: httpcore's pool did one
getpeername() system call per pooled connection per request), and go to the
socket again once the connection is lost, so a closed one raises as asyncio's.
"""
from __future__ import annotations

import asyncio
import os
import pickle
import socket
import tempfile
from typing import Any

import pytest
from asyncio import trsock

from net_util import listener


class CountingSocket(socket.socket):
    """A socket that counts getpeername()/getsockname() calls."""

    __slots__ = ("calls",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls = {"getpeername": 0, "getsockname": 0}

    def getpeername(self) -> Any:
        self.calls["getpeername"] += 1
        return super().getpeername()

    def getsockname(self) -> Any:
        self.calls["getsockname"] += 1
        return super().getsockname()


async def _connect(sock: socket.socket | None = None) -> tuple[Any, Any, socket.socket, socket.socket]:
    """(transport, protocol, the accepted peer socket, the listener) over loopback TCP."""
    loop = asyncio.get_running_loop()
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(8)
    lst.setblocking(False)
    if sock is None:
        tr, proto = await loop.create_connection(asyncio.Protocol, "127.0.0.1", lst.getsockname()[1])
    else:
        sock.setblocking(False)
        await loop.sock_connect(sock, lst.getsockname())
        tr, proto = await loop.create_connection(asyncio.Protocol, sock=sock)
    peer, _ = await loop.sock_accept(lst)
    return tr, proto, peer, lst


def test_socket_is_a_transport_socket_with_the_same_answers(run):
    async def main():
        tr, _, peer, lst = await _connect()
        with peer, lst:
            ts = tr.get_extra_info("socket")
            assert isinstance(ts, trsock.TransportSocket)
            assert tr.get_extra_info("socket") is ts
            assert ts.getpeername() == tr.get_extra_info("peername") == peer.getsockname()
            assert ts.getsockname() == tr.get_extra_info("sockname") == peer.getpeername()
            assert ts.getpeername() == peer.getsockname()  # asked twice: same answer
            assert ts.getsockname() == peer.getpeername()
            assert ts.family is socket.AF_INET and ts.type is socket.SOCK_STREAM
            assert ts.proto == socket.IPPROTO_TCP
            assert ts.fileno() == tr.get_extra_info("socket").fileno() != -1
            assert ts.gettimeout() == 0
            assert ts.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
            r = repr(ts)
            assert r.startswith("<asyncio.TransportSocket fd=")
            assert f"raddr={peer.getsockname()}" in r and f"laddr={peer.getpeername()}" in r
            with pytest.raises(TypeError):
                pickle.dumps(ts)
            with pytest.raises(ValueError):
                ts.settimeout(1)
            with pytest.raises(ValueError):
                ts.setblocking(True)
            ts.settimeout(0)
            ts.setblocking(False)
            tr.close()
            await asyncio.sleep(0.01)
    run(main())


def test_after_the_connection_is_lost_the_socket_raises_as_a_closed_one(run):
    async def main():
        tr, _, peer, lst = await _connect()
        with peer, lst:
            ts = tr.get_extra_info("socket")
            peername, sockname = ts.getpeername(), ts.getsockname()
            tr.close()
            await asyncio.sleep(0.01)
            assert tr.get_extra_info("socket") is ts
            assert ts.fileno() == -1
            with pytest.raises(OSError):
                ts.getpeername()
            with pytest.raises(OSError):
                ts.getsockname()
            # the transport's own answers stay
            assert tr.get_extra_info("peername") == peername
            assert tr.get_extra_info("sockname") == sockname
    run(main())


def test_socket_first_asked_after_close(run):
    async def main():
        tr, _, peer, lst = await _connect()
        with peer, lst:
            peername = tr.get_extra_info("peername")
            tr.abort()
            await asyncio.sleep(0.01)
            ts = tr.get_extra_info("socket")
            assert isinstance(ts, trsock.TransportSocket)
            assert ts.fileno() == -1
            with pytest.raises(OSError):
                ts.getpeername()
            assert tr.get_extra_info("peername") == peername
            assert tr.get_extra_info("sockname") is not None
    run(main())


def test_getpeername_served_without_asking_the_socket(run, loop_name):
    """The peer is known to the transport: pyasync_c does not ask the socket
    again while the connection is open (asyncio asks every time)."""
    async def main():
        sock = CountingSocket(socket.AF_INET, socket.SOCK_STREAM)
        tr, _, peer, lst = await _connect(sock)
        with peer, lst:
            ts = tr.get_extra_info("socket")
            before = dict(sock.calls)
            for _ in range(50):
                assert ts.getpeername() == peer.getsockname()
                assert ts.getsockname() == peer.getpeername()
            asked = {k: sock.calls[k] - before[k] for k in before}
            if loop_name == "stdlib":
                assert asked == {"getpeername": 50, "getsockname": 50}
            else:
                assert asked["getpeername"] == 0 and asked["getsockname"] <= 1, asked
            tr.close()
            await asyncio.sleep(0.01)
            with pytest.raises(OSError):
                ts.getpeername()
    run(main())


def test_unix_socket(run):
    async def main():
        loop = asyncio.get_running_loop()
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "s")
            accepted: list[Any] = []
            server = await loop.create_unix_server(
                lambda: accepted.append(asyncio.Protocol()) or accepted[-1], path)
            async with server:
                tr, _ = await loop.create_unix_connection(asyncio.Protocol, path)
                ts = tr.get_extra_info("socket")
                assert isinstance(ts, trsock.TransportSocket)
                assert ts.family is socket.AF_UNIX
                assert ts.getpeername() == path == tr.get_extra_info("peername")
                assert ts.getsockname() == tr.get_extra_info("sockname")
                tr.close()
                await asyncio.sleep(0.01)
                with pytest.raises(OSError):
                    ts.getpeername()
    run(main())


def test_server_side_socket(run):
    async def main():
        loop = asyncio.get_running_loop()
        made: asyncio.Future[Any] = loop.create_future()

        class P(asyncio.Protocol):
            def connection_made(self, transport: Any) -> None:
                made.set_result(transport)

        server = await loop.create_server(P, "127.0.0.1", 0)
        async with server:
            port = server.sockets[0].getsockname()[1]
            client = socket.create_connection(("127.0.0.1", port))
            with client:
                tr = await made
                ts = tr.get_extra_info("socket")
                assert ts.getpeername() == client.getsockname() == tr.get_extra_info("peername")
                assert ts.getsockname() == client.getpeername()
                tr.close()
                await asyncio.sleep(0.01)
                with pytest.raises(OSError):
                    ts.getpeername()
    run(main())


def test_anyio_socket_attributes(run):
    anyio = pytest.importorskip("anyio")
    from anyio.abc import SocketAttribute

    async def main():
        with listener() as lst:
            port = lst.getsockname()[1]
            stream = await anyio.connect_tcp("127.0.0.1", port)
            async with stream:
                assert stream.extra(SocketAttribute.remote_address) == ("127.0.0.1", port)
                assert stream.extra(SocketAttribute.remote_port) == port
                assert stream.extra(SocketAttribute.local_address)[0] == "127.0.0.1"
                assert stream.extra(SocketAttribute.family) == socket.AF_INET
                raw = stream.extra(SocketAttribute.raw_socket)
                assert isinstance(raw, trsock.TransportSocket)
    run(main())
