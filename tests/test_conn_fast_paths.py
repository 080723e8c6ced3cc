"""Connection set-up short paths (issue #14), on both loops: what asyncio's
create_connection / accept loop give must not change when pyasync_c takes
its short paths -- create_connection to an IP literal (socket made
non-blocking by socket(), connect_ex, a connect that finished within the
call read at once), the C accept loop (accept4 with SOCK_NONBLOCK), and the
socket information kept at close without making Python objects."""
from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import socket

import pytest

from net_util import EchoProtocol as Echo, fd_leak, free_port, has_ipv6_loopback, open_fds


class LostRecorder(asyncio.Protocol):
    def __init__(self):
        self.transports = []
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transports.append(transport)

    def connection_lost(self, exc):
        if not self.lost.done():
            self.lost.set_result(exc)


def test_create_connection_ip_literal(run):
    """The transport's socket is non-blocking, TCP_NODELAY, with the peer and
    local address asyncio's would report."""
    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        addr = server.sockets[0].getsockname()
        tr, proto = await loop.create_connection(asyncio.Protocol, "127.0.0.1", addr[1])
        sock = tr.get_extra_info("socket")
        assert sock._sock.gettimeout() == 0.0
        assert fcntl.fcntl(sock.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK
        assert sock.type == socket.SOCK_STREAM
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert tr.get_extra_info("peername") == addr
        assert tr.get_extra_info("sockname") == sock.getsockname()
        tr.close()
        server.close()
        await server.wait_closed()
    run(main())


def test_create_connection_refused_raises_asyncios_error_and_closes(run):
    async def main():
        loop = asyncio.get_running_loop()
        port = free_port()
        before = open_fds()
        for _ in range(20):
            with pytest.raises(ConnectionRefusedError) as info:
                await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
            assert info.value.errno == errno.ECONNREFUSED
            assert str(info.value) == f"[Errno {errno.ECONNREFUSED}] Connect call failed ('127.0.0.1', {port})"
        assert not fd_leak(before)
    run(main())


def test_create_connection_cancelled_while_connecting_closes_the_socket(run):
    """A connect that does not finish at once (a full backlog on a listener
    that never accepts) is cancelled: the socket is closed, nothing leaks."""
    async def main():
        loop = asyncio.get_running_loop()
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(0)
            port = listener.getsockname()[1]
            before = open_fds()
            pending = [asyncio.ensure_future(
                loop.create_connection(asyncio.Protocol, "127.0.0.1", port)) for _ in range(8)]
            await asyncio.sleep(0.05)
            for task in pending:
                task.cancel()
            results = await asyncio.gather(*pending, return_exceptions=True)
            for result in results:
                if isinstance(result, tuple):
                    result[0].close()
            await asyncio.sleep(0)
            assert not fd_leak(before)
    run(main())


def test_create_connection_honours_a_replaced_sock_connect(run):
    """asyncio's create_connection calls loop.sock_connect: a replacement on
    the instance (a test's mock) or a subclass is called on both loops."""
    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        calls = []
        original = loop.sock_connect

        async def spy(sock, address):
            calls.append(address)
            return await original(sock, address)
        loop.sock_connect = spy
        try:
            tr, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
            tr.close()
        finally:
            del loop.sock_connect
        assert calls == [("127.0.0.1", port)]
        server.close()
        await server.wait_closed()
    run(main())


def test_create_connection_subclass_hook(loop_factory):
    base = type(loop_factory())
    calls = []

    class Spying(base):
        async def sock_connect(self, sock, address):
            calls.append(address)
            return await super().sock_connect(sock, address)

    loop = Spying()
    try:
        async def main():
            server = await loop.create_server(Echo, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            tr, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
            tr.close()
            server.close()
            await server.wait_closed()
            return port
        port = loop.run_until_complete(main())
    finally:
        loop.close()
    assert calls == [("127.0.0.1", port)]


def test_sock_connect_uses_a_subclass_connect(run):
    """sock_connect calls the socket's own connect() when a subclass replaces it."""
    class CountingSocket(socket.socket):
        connects = 0

        def connect(self, address):
            CountingSocket.connects += 1
            return super().connect(address)

    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        with CountingSocket() as sock:
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", port))
            assert sock.getpeername() == ("127.0.0.1", port)
        assert CountingSocket.connects >= 1
        server.close()
        await server.wait_closed()
    run(main())


@pytest.mark.parametrize("family,host", [
    (socket.AF_INET, "127.0.0.1"),
    pytest.param(socket.AF_INET6, "::1", marks=pytest.mark.skipif(
        not has_ipv6_loopback(), reason="no IPv6 loopback")),
])
def test_accepted_connections(run, family, host):
    """Accepted sockets: non-blocking, with the peer address socket.accept()
    gives (IPv6: the 4-tuple); a burst of connections is all served."""
    async def main():
        loop = asyncio.get_running_loop()
        served = []

        class Server(asyncio.Protocol):
            def connection_made(self, transport):
                served.append(transport)

        server = await loop.create_server(Server, host, 0, family=family)
        port = server.sockets[0].getsockname()[1]
        clients = []
        for _ in range(50):
            c = socket.socket(family, socket.SOCK_STREAM)
            c.connect((host, port))
            clients.append(c)
        for _ in range(200):
            if len(served) == len(clients):
                break
            await asyncio.sleep(0.01)
        assert len(served) == len(clients)
        peers = {tr.get_extra_info("peername") for tr in served}
        assert peers == {c.getsockname() for c in clients}
        for tr in served:
            sock = tr.get_extra_info("socket")
            # the socket object itself (TransportSocket.gettimeout() always says 0)
            assert sock._sock.gettimeout() == 0.0
            assert fcntl.fcntl(sock.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK
            assert sock.family == family and sock.type == socket.SOCK_STREAM
            assert not os.get_inheritable(sock.fileno())
            assert tr.get_extra_info("sockname") == sock.getsockname()
            tr.close()
        for c in clients:
            c.close()
        server.close()
        await server.wait_closed()
    run(main())


def test_listening_socket_subclass_accept_is_called(run):
    """create_server(sock=) with a socket subclass: its accept() is used."""
    class CountingSocket(socket.socket):
        accepts = 0

        def accept(self):
            CountingSocket.accepts += 1
            return super().accept()

    async def main():
        loop = asyncio.get_running_loop()
        listener = CountingSocket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        server = await loop.create_server(Echo, sock=listener)
        port = listener.getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        writer.close()
        await writer.wait_closed()
        assert CountingSocket.accepts >= 1
        server.close()
        await server.wait_closed()
    run(main())


def test_socket_info_after_close_never_asked_before(run):
    """Nobody asked for 'sockname'/'socket' while open: after close,
    'sockname' is the address the connection had, 'socket' a TransportSocket
    of the closed socket (the same object on every call)."""
    async def main():
        loop = asyncio.get_running_loop()
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)
            listener.setblocking(False)
            port = listener.getsockname()[1]
            tr, proto = await loop.create_connection(LostRecorder, "127.0.0.1", port)
            peer, _ = await loop.sock_accept(listener)
            with peer:
                local = peer.getpeername()
                tr.abort()
                await proto.lost
                assert tr.get_extra_info("sockname") == local
                ts = tr.get_extra_info("socket")
                assert ts is tr.get_extra_info("socket")
                assert ts.fileno() == -1
                with pytest.raises(OSError):
                    ts.getsockname()
    run(main())


def test_server_side_sockname_after_close(run):
    async def main():
        loop = asyncio.get_running_loop()
        recorders = []

        def factory():
            recorders.append(LostRecorder())
            return recorders[-1]
        server = await loop.create_server(factory, "127.0.0.1", 0)
        addr = server.sockets[0].getsockname()
        with socket.create_connection(addr) as client:
            for _ in range(200):
                if recorders and recorders[0].transports:
                    break
                await asyncio.sleep(0.01)
            tr = recorders[0].transports[0]
            client.close()
            await recorders[0].lost
            assert tr.get_extra_info("sockname") == addr
            assert tr.get_extra_info("peername") is not None
        server.close()
        await server.wait_closed()
    run(main())


def test_listening_object_that_wraps_a_socket(run):
    """create_server(sock=) with an object that is not a socket but passes
    everything to one (gunicorn's TCPSocket does this): served through its
    accept(), as asyncio does."""
    class Wrapper:
        def __init__(self, sock):
            self._sock = sock

        def __getattr__(self, name):
            return getattr(self._sock, name)

    async def main():
        loop = asyncio.get_running_loop()
        inner = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        inner.bind(("127.0.0.1", 0))
        server = await loop.create_server(Echo, sock=Wrapper(inner))
        port = inner.getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
    run(main())


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback")
@pytest.mark.parametrize("port_type", [int, str])
def test_create_connection_ipv6_literal_and_string_port(run, port_type):
    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Echo, "::1", 0)
        addr = server.sockets[0].getsockname()
        tr, _ = await loop.create_connection(asyncio.Protocol, "::1", port_type(addr[1]))
        assert tr.get_extra_info("peername") == addr
        assert tr.get_extra_info("socket").family == socket.AF_INET6
        tr.close()
        server.close()
        await server.wait_closed()
    run(main())


def test_sock_connect_result_and_peer_after_a_loopback_connect(run):
    """A loopback connect has finished when connect() returns: the C path
    sees it (getpeername) and completes at once; sock_connect still returns
    None, and create_connection's transport reports the peer, both as
    asyncio's."""
    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        addr = server.sockets[0].getsockname()
        for _ in range(20):
            sock = socket.socket()
            sock.setblocking(False)
            assert await loop.sock_connect(sock, addr) is None
            assert sock.getpeername() == addr
            sock.close()
            tr, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", addr[1])
            assert tr.get_extra_info("peername") == addr
            assert tr.get_extra_info("socket").getpeername() == addr
            tr.close()
        server.close()
        await server.wait_closed()
    run(main())


def test_sock_connect_asks_a_subclass_getsockopt(run):
    """A socket class with its own getsockopt() is asked SO_ERROR after a
    connect that did not finish at once, as asyncio's _sock_connect_cb asks
    it (the C shortcut that reads the peer instead is for plain sockets)."""
    class Recording(socket.socket):
        asked: list = []

        def getsockopt(self, *args):
            Recording.asked.append(args[:2])
            return super().getsockopt(*args)

    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        addr = server.sockets[0].getsockname()
        sock = Recording()
        sock.setblocking(False)
        assert await loop.sock_connect(sock, addr) is None
        assert sock.getpeername() == addr
        sock.close()
        server.close()
        await server.wait_closed()

    Recording.asked.clear()
    run(main())
    assert (socket.SOL_SOCKET, socket.SO_ERROR) in Recording.asked
