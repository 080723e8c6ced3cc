"""loop.create_server(), the Server object, and loop.connect_accepted_socket(), on both loops.

Clients are raw sockets driven with loop.sock_* (net_util.raw_client) so that only
the server side is under test.
"""
from __future__ import annotations

import asyncio
import gc
import socket

import pytest

from net_util import (PY312, PY313, EchoProtocol, ExceptionHandlerRecorder, ProtocolCollector, Recorder, arun,
                      has_ipv6_loopback, listener, raw_client, recv_exactly, recv_until_eof,
                      server_port, tcp_server, wait_until)

__all__ = ["arun"]  # fixture, imported for pytest


async def echo_roundtrip(address, data: bytes = b"hello", family: int = socket.AF_INET) -> None:
    loop = asyncio.get_running_loop()
    with await raw_client(address, family) as sock:
        await loop.sock_sendall(sock, data)
        assert await recv_exactly(sock, len(data)) == data


# --------------------------------------------------------------------------
# addressing
# --------------------------------------------------------------------------

def test_server_on_ip_literal(arun):
    async def main():
        loop = asyncio.get_running_loop()
        collector = ProtocolCollector(EchoProtocol)
        async with tcp_server(collector) as server:
            assert isinstance(server, asyncio.AbstractServer)
            assert server.get_loop() is loop
            assert server.is_serving()
            (lsock,) = server.sockets
            assert lsock.family == socket.AF_INET and lsock.type == socket.SOCK_STREAM
            host, port = lsock.getsockname()
            assert host == "127.0.0.1" and port > 0
            await echo_roundtrip((host, port))
            proto = await collector.next_made()
            assert isinstance(proto.transport, asyncio.Transport)
            await proto.wait_lost()
            assert proto.lost_exc is None
            assert proto.transport.get_extra_info("sockname") == (host, port)
    arun(main())


def test_server_host_none_listens_on_all_interfaces(arun):
    async def main():
        async with tcp_server(host=None) as server:
            families = {s.family for s in server.sockets}
            assert socket.AF_INET in families
            for s in server.sockets:
                assert s.getsockname()[0] in ("0.0.0.0", "::")
            await echo_roundtrip(("127.0.0.1", server_port(server)))
            if socket.AF_INET6 in families and has_ipv6_loopback():
                await echo_roundtrip(("::1", server_port(server, socket.AF_INET6)),
                                     family=socket.AF_INET6)
    arun(main())


def test_server_empty_host_is_like_none(arun):
    async def main():
        async with tcp_server(host="") as server:
            assert socket.AF_INET in {s.family for s in server.sockets}
            await echo_roundtrip(("127.0.0.1", server_port(server)))
    arun(main())


def test_server_family_restricts_sockets(arun):
    async def main():
        async with tcp_server(host=None, family=socket.AF_INET) as server:
            assert server.sockets and {s.family for s in server.sockets} == {socket.AF_INET}
    arun(main())


def test_server_list_of_hosts(arun):
    async def main():
        async with tcp_server(host=["127.0.0.1", "127.0.0.2"]) as server:
            names = sorted(s.getsockname() for s in server.sockets)
            assert [n[0] for n in names] == ["127.0.0.1", "127.0.0.2"]
            for name in names:
                await echo_roundtrip(name)
    arun(main())


def test_server_fixed_port_with_several_hosts(arun):
    async def main():
        with listener() as probe:
            port = probe.getsockname()[1]
        loop = asyncio.get_running_loop()
        server = await loop.create_server(EchoProtocol, ["127.0.0.1", "127.0.0.2"], port)
        async with server:
            assert {s.getsockname() for s in server.sockets} == {
                ("127.0.0.1", port), ("127.0.0.2", port)}
            await echo_roundtrip(("127.0.0.2", port))
    arun(main())


def test_server_with_sock(arun):
    async def main():
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))  # bound, not listening: create_server listens
        name = sock.getsockname()
        server = await loop.create_server(EchoProtocol, sock=sock)
        async with server:
            (lsock,) = server.sockets
            assert lsock.fileno() == sock.fileno()
            assert lsock.getsockname() == name
            await echo_roundtrip(name)
        assert sock.fileno() == -1  # closed with the server
    arun(main())


def test_server_bad_arguments(arun):
    async def main():
        loop = asyncio.get_running_loop()
        with socket.socket() as sock:
            with pytest.raises(ValueError):
                await loop.create_server(EchoProtocol, "127.0.0.1", 0, sock=sock)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            with pytest.raises(ValueError):
                await loop.create_server(EchoProtocol, sock=udp)
        with pytest.raises(ValueError):
            await loop.create_server(EchoProtocol)  # neither host/port nor sock
        with pytest.raises(ValueError):
            await loop.create_server(EchoProtocol, "127.0.0.1", 0, ssl_handshake_timeout=1)
        with pytest.raises(ValueError):
            await loop.create_server(EchoProtocol, "127.0.0.1", 0, ssl_shutdown_timeout=1)
    arun(main())


def test_server_port_in_use(arun):
    async def main():
        loop = asyncio.get_running_loop()
        with listener() as busy:
            with pytest.raises(OSError):
                await loop.create_server(EchoProtocol, *busy.getsockname(),
                                         reuse_address=False)
    arun(main())


# --------------------------------------------------------------------------
# socket options
# --------------------------------------------------------------------------

def test_server_reuse_address(arun):
    async def main():
        async with tcp_server() as server:  # default on POSIX: SO_REUSEADDR set
            assert server.sockets[0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        async with tcp_server(reuse_address=False) as server:
            assert not server.sockets[0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
    arun(main())


@pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="no SO_REUSEPORT")
def test_server_reuse_port(arun):
    async def main():
        loop = asyncio.get_running_loop()
        async with tcp_server(reuse_port=True) as first:
            assert first.sockets[0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
            port = server_port(first)
            second = await loop.create_server(EchoProtocol, "127.0.0.1", port, reuse_port=True)
            async with second:
                assert server_port(second) == port
                await echo_roundtrip(("127.0.0.1", port))
        async with tcp_server() as plain:
            assert not plain.sockets[0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
    arun(main())


def test_server_backlog(arun):
    """A small backlog still serves a burst of clients (the kernel may hold some back)."""
    async def main():
        async with tcp_server(backlog=1) as server:
            addr = ("127.0.0.1", server_port(server))
            await asyncio.gather(*(echo_roundtrip(addr, b"%d" % i) for i in range(8)))
    arun(main())


@pytest.mark.skipif(not PY313, reason="keep_alive is new in 3.13")
def test_server_keep_alive(arun):
    async def main():
        for keep_alive in (True, False):
            collector = ProtocolCollector(Recorder)
            async with tcp_server(collector, keep_alive=keep_alive) as server:
                with await raw_client(("127.0.0.1", server_port(server))):
                    proto = await collector.next_made()
                    sock = proto.transport.get_extra_info("socket")
                    assert bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)) \
                        is keep_alive
                    proto.transport.close()
    arun(main())


def test_accepted_transport_has_nodelay_and_names(arun):
    async def main():
        collector = ProtocolCollector(Recorder)
        async with tcp_server(collector) as server:
            with await raw_client(("127.0.0.1", server_port(server))) as client:
                proto = await collector.next_made()
                tr = proto.transport
                assert tr.get_extra_info("peername") == client.getsockname()
                assert tr.get_extra_info("sockname") == client.getpeername()
                sock = tr.get_extra_info("socket")
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                tr.close()
                assert await recv_until_eof(client) == b""
    arun(main())


# --------------------------------------------------------------------------
# serving lifecycle
# --------------------------------------------------------------------------

def test_start_serving_false_then_start_serving(arun):
    """start_serving=False: the sockets are bound but not listening (connections are
    refused) until start_serving()."""
    async def main():
        loop = asyncio.get_running_loop()
        collector = ProtocolCollector(EchoProtocol)
        async with tcp_server(collector, start_serving=False) as server:
            assert not server.is_serving()
            assert server.sockets  # bound already
            addr = ("127.0.0.1", server_port(server))
            with pytest.raises(ConnectionRefusedError):
                await echo_roundtrip(addr)
            assert collector.protocols == []
            await server.start_serving()
            assert server.is_serving()
            await server.start_serving()  # idempotent
            with await raw_client(addr) as client:
                proto = await collector.next_made()
                await loop.sock_sendall(client, b"late")
                assert await recv_exactly(client, 4) == b"late"
                assert proto.data == b"late"
    arun(main())


def test_serve_forever_cancelled_closes_server(arun):
    async def main():
        async with tcp_server(start_serving=False) as server:
            task = asyncio.create_task(server.serve_forever())
            await asyncio.sleep(0)
            assert server.is_serving()
            await echo_roundtrip(("127.0.0.1", server_port(server)))
            with pytest.raises(RuntimeError):  # only one serve_forever at a time
                await server.serve_forever()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert not server.is_serving()
            assert server.sockets == ()
    arun(main())


def test_serve_forever_ended_by_close(arun):
    async def main():
        async with tcp_server() as server:
            task = asyncio.create_task(server.serve_forever())
            await asyncio.sleep(0)
            server.close()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert task.cancelled()
            with pytest.raises(RuntimeError):  # closed: cannot serve again
                await server.serve_forever()
    arun(main())


def test_close_stops_listening_but_keeps_connections(arun):
    async def main():
        loop = asyncio.get_running_loop()
        collector = ProtocolCollector(EchoProtocol)
        async with tcp_server(collector) as server:
            addr = ("127.0.0.1", server_port(server))
            with await raw_client(addr) as client:
                proto = await collector.next_made()
                server.close()
                assert not server.is_serving() and server.sockets == ()
                server.close()  # idempotent
                with pytest.raises(ConnectionRefusedError):
                    await echo_roundtrip(addr)
                await loop.sock_sendall(client, b"still here")
                assert await recv_exactly(client, 10) == b"still here"
                assert not proto.transport.is_closing()
    arun(main())


def test_wait_closed_and_active_connections(arun):
    """3.12.1+: wait_closed() waits for the server's connections to end as well;
    3.11 returns at once when the server is already closed."""
    async def main():
        collector = ProtocolCollector(EchoProtocol)
        async with tcp_server(collector) as server:
            with await raw_client(("127.0.0.1", server_port(server))) as client:
                proto = await collector.next_made()
                server.close()
                waiter = asyncio.ensure_future(server.wait_closed())
                await asyncio.sleep(0.05)
                if PY312:
                    assert not waiter.done()
                    proto.transport.close()
                    await asyncio.wait_for(waiter, 2)
                else:
                    assert waiter.done()
                    proto.transport.close()
                assert await recv_until_eof(client) == b""
    arun(main())


def test_wait_closed_on_open_server_waits_for_close(arun):
    async def main():
        async with tcp_server() as server:
            waiter = asyncio.ensure_future(server.wait_closed())
            await asyncio.sleep(0.02)
            assert not waiter.done()
            server.close()
            await asyncio.wait_for(waiter, 2)
            await server.wait_closed()  # again: at once
    arun(main())


def test_async_with_closes_server(arun):
    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(EchoProtocol, "127.0.0.1", 0)
        async with server as entered:
            assert entered is server
            addr = ("127.0.0.1", server_port(server))
        assert not server.is_serving() and server.sockets == ()
        with pytest.raises(ConnectionRefusedError):
            await echo_roundtrip(addr)
    arun(main())


@pytest.mark.skipif(not PY313, reason="close_clients/abort_clients are new in 3.13")
@pytest.mark.parametrize("how", ["close_clients", "abort_clients"])
def test_close_and_abort_clients(arun, how):
    async def main():
        loop = asyncio.get_running_loop()
        collector = ProtocolCollector(Recorder)
        async with tcp_server(collector) as server:
            addr = ("127.0.0.1", server_port(server))
            clients = [await raw_client(addr) for _ in range(3)]
            try:
                protos = await collector.wait_count(3)
                for p in protos:
                    await p.wait_made()
                    p.transport.write(b"pending")
                server.close()
                getattr(server, how)()
                for p in protos:
                    assert await p.wait_lost() is None
                for c in clients:
                    data = await recv_until_eof(c)
                    assert data in (b"pending", b"")
                await asyncio.wait_for(server.wait_closed(), 2)
            finally:
                for c in clients:
                    c.close()
            assert loop.is_running()
    arun(main())


def test_many_clients_at_once(arun):
    n = 200

    async def main():
        collector = ProtocolCollector(EchoProtocol)
        async with tcp_server(collector, backlog=n) as server:
            addr = ("127.0.0.1", server_port(server))
            await asyncio.gather(*(echo_roundtrip(addr, b"client %d" % i) for i in range(n)))
            assert len(collector.protocols) == n
            await wait_until(lambda: all("lost" in p.names() for p in collector.protocols))
            assert all(p.lost_exc is None for p in collector.protocols)
    arun(main())


def test_protocol_factory_exception_is_reported_in_debug_mode(arun):
    """The stdlib reports a failing protocol factory only in debug mode (through the
    exception handler); either way the server keeps serving."""
    calls = []

    def factory():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("factory failed")
        return EchoProtocol()

    async def main():
        handler = ExceptionHandlerRecorder().install()
        async with tcp_server(factory) as server:
            addr = ("127.0.0.1", server_port(server))
            with await raw_client(addr):
                await wait_until(lambda: handler.contexts)
            assert any(isinstance(e, RuntimeError) for e in handler.exceptions)
            await echo_roundtrip(addr)
            assert len(calls) == 2
    arun(main(), debug=True)
    gc.collect()  # the stdlib leaves the failed connection's socket to the GC


# --------------------------------------------------------------------------
# connect_accepted_socket
# --------------------------------------------------------------------------

def test_connect_accepted_socket(arun):
    async def main():
        loop = asyncio.get_running_loop()
        with listener() as lst:
            client = await raw_client(lst.getsockname())
            with client:
                conn, _ = await loop.sock_accept(lst)
                tr, proto = await loop.connect_accepted_socket(EchoProtocol, conn)
                assert isinstance(tr, asyncio.Transport) and proto.transport is tr
                assert tr.get_extra_info("peername") == client.getsockname()
                await loop.sock_sendall(client, b"accepted")
                assert await recv_exactly(client, 8) == b"accepted"
                client.shutdown(socket.SHUT_WR)
                assert await proto.wait_lost() is None
                assert await recv_until_eof(client) == b""
                assert conn.fileno() == -1
    arun(main())


def test_connect_accepted_socket_bad_arguments(arun):
    async def main():
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            with pytest.raises(ValueError):
                await loop.connect_accepted_socket(EchoProtocol, udp)
        with socket.socket() as sock:
            with pytest.raises(ValueError):
                await loop.connect_accepted_socket(EchoProtocol, sock, ssl_handshake_timeout=1)
    arun(main())


def test_server_protocol_callbacks_run_in_the_server_creation_context(arun):
    import contextvars
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    seen: list[tuple[str, str]] = []

    class Ctx(EchoProtocol):
        def connection_made(self, transport):
            seen.append(("made", var.get()))
            super().connection_made(transport)

        def data_received(self, data):
            seen.append(("data", var.get()))
            var.set("changed-in-callback")
            super().data_received(data)

    async def main():
        var.set("at-create_server")
        async with tcp_server(Ctx) as server:
            var.set("after-create_server")
            for _ in range(2):
                await echo_roundtrip(("127.0.0.1", server_port(server)))
            assert var.get() == "after-create_server"
        assert seen == [("made", "at-create_server"), ("data", "at-create_server")] * 2
    arun(main())
