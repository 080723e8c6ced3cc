"""loop.create_datagram_endpoint() and the DatagramTransport, on both loops."""
from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

from net_util import PY312, PY313, DatagramRecorder, arun, free_port, sock_path

__all__ = ["arun", "sock_path"]  # fixtures, imported for pytest


@contextlib.asynccontextmanager
async def endpoint(echo: bool = False, **kwargs: Any) -> AsyncIterator[tuple[Any, DatagramRecorder]]:
    loop = asyncio.get_running_loop()
    tr, proto = await loop.create_datagram_endpoint(lambda: DatagramRecorder(echo), **kwargs)
    try:
        yield tr, proto
    finally:
        tr.close()


LOCAL = ("127.0.0.1", 0)


def test_echo_between_endpoints(arun):
    async def main():
        async with endpoint(echo=True, local_addr=LOCAL) as (srv, sproto):
            addr = srv.get_extra_info("sockname")
            assert isinstance(srv, asyncio.BaseTransport)
            if PY312:  # 3.11's selector datagram transport does not derive from it
                assert isinstance(srv, asyncio.DatagramTransport)
            assert sproto.of("made")
            async with endpoint(remote_addr=addr) as (cli, cproto):
                assert cli.get_extra_info("peername") == addr
                cli.sendto(b"ping")
                cli.sendto(bytearray(b"ping2"))
                cli.sendto(memoryview(b"xping3")[1:])
                got = await cproto.wait_count("dgram", 3)
                assert sorted(d for _, d, _ in got) == [b"ping", b"ping2", b"ping3"]
                assert {a for _, _, a in got} == {addr}
                assert [d for _, d, _ in sproto.of("dgram")] == [b"ping", b"ping2", b"ping3"]
                assert sproto.of("dgram")[0][2] == cli.get_extra_info("sockname")
    arun(main())


def test_unconnected_endpoint_sendto_with_address(arun):
    async def main():
        async with endpoint(echo=True, local_addr=LOCAL) as (srv, _):
            addr = srv.get_extra_info("sockname")
            async with endpoint(local_addr=LOCAL) as (cli, cproto):
                assert cli.get_extra_info("peername") is None
                cli.sendto(b"to", addr)
                (_, data, src), = await cproto.wait_count("dgram")
                assert (data, src) == (b"to", addr)
    arun(main())


def test_raw_socket_peer(arun):
    async def main():
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.bind(LOCAL)
            peer.setblocking(False)
            async with endpoint(remote_addr=peer.getsockname()) as (tr, proto):
                tr.sendto(b"hello raw")
                data, src = await loop.sock_recvfrom(peer, 100)
                assert (data, src) == (b"hello raw", tr.get_extra_info("sockname"))
                await loop.sock_sendto(peer, b"back", src)
                (_, data, _), = await proto.wait_count("dgram")
                assert data == b"back"
    arun(main())


def test_connected_endpoint_sendto_address_check(arun):
    async def main():
        async with endpoint(echo=True, local_addr=LOCAL) as (srv, _):
            addr = srv.get_extra_info("sockname")
            async with endpoint(remote_addr=addr) as (cli, cproto):
                cli.sendto(b"same", addr)  # the connected address is fine
                with pytest.raises(ValueError):
                    cli.sendto(b"other", ("127.0.0.1", free_port(type=socket.SOCK_DGRAM)))
                (_, data, _), = await cproto.wait_count("dgram")
                assert data == b"same"
    arun(main())


def test_empty_datagram(arun):
    """3.13 sends zero-length datagrams; 3.11/3.12 silently drop them."""
    async def main():
        async with endpoint(echo=True, local_addr=LOCAL) as (srv, sproto):
            async with endpoint(remote_addr=srv.get_extra_info("sockname")) as (cli, cproto):
                cli.sendto(b"")
                cli.sendto(b"marker")
                got = await cproto.wait_count("dgram", 2 if PY313 else 1)
                assert [d for _, d, _ in got] == ([b"", b"marker"] if PY313 else [b"marker"])
    arun(main())


def test_error_received_on_port_unreachable(arun):
    async def main():
        target = ("127.0.0.1", free_port(type=socket.SOCK_DGRAM))
        async with endpoint(remote_addr=target) as (tr, proto):
            for _ in range(3):
                tr.sendto(b"anyone?")
                await asyncio.sleep(0.01)
            errors = await proto.wait_count("error")
            assert isinstance(errors[0][1], ConnectionRefusedError)
            assert not tr.is_closing()  # errors do not close the endpoint
            assert not proto.of("lost")
    arun(main())


def test_family_without_addresses(arun):
    async def main():
        async with endpoint(family=socket.AF_INET) as (tr, proto):
            sock = tr.get_extra_info("socket")
            assert sock.family == socket.AF_INET and sock.type == socket.SOCK_DGRAM
            async with endpoint(echo=True, local_addr=LOCAL) as (srv, _):
                tr.sendto(b"implicit bind", srv.get_extra_info("sockname"))
                (_, data, _), = await proto.wait_count("dgram")
                assert data == b"implicit bind"
    arun(main())


@pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="no SO_REUSEPORT")
def test_reuse_port(arun):
    async def main():
        async with endpoint(local_addr=LOCAL, reuse_port=True) as (a, _):
            addr = a.get_extra_info("sockname")
            assert a.get_extra_info("socket").getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
            async with endpoint(local_addr=addr, reuse_port=True) as (b, _):
                assert b.get_extra_info("sockname") == addr
        async with endpoint(local_addr=LOCAL) as (a, _):
            with pytest.raises(OSError):
                async with endpoint(local_addr=a.get_extra_info("sockname")):
                    pass
    arun(main())


def test_allow_broadcast(arun):
    async def main():
        async with endpoint(local_addr=LOCAL, allow_broadcast=True) as (tr, _):
            assert tr.get_extra_info("socket").getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST)
        async with endpoint(local_addr=LOCAL) as (tr, _):
            assert not tr.get_extra_info("socket").getsockopt(socket.SOL_SOCKET,
                                                              socket.SO_BROADCAST)
    arun(main())


def test_with_sock(arun):
    async def main():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(LOCAL)
        async with endpoint(echo=True, sock=sock) as (srv, _):
            assert sock.gettimeout() == 0
            assert srv.get_extra_info("socket").fileno() == sock.fileno()
            assert srv.get_extra_info("sockname") == sock.getsockname()
            async with endpoint(remote_addr=sock.getsockname()) as (cli, cproto):
                cli.sendto(b"via sock")
                (_, data, _), = await cproto.wait_count("dgram")
                assert data == b"via sock"
        await asyncio.sleep(0)
        assert sock.fileno() == -1
    arun(main())


def test_bad_arguments(arun):
    async def main():
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            with pytest.raises(ValueError):
                await loop.create_datagram_endpoint(DatagramRecorder, sock=tcp)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            with pytest.raises(ValueError):
                await loop.create_datagram_endpoint(DatagramRecorder, local_addr=LOCAL, sock=udp)
            with pytest.raises(ValueError):
                await loop.create_datagram_endpoint(DatagramRecorder, sock=udp,
                                                    allow_broadcast=True)
        with pytest.raises(ValueError):  # no address and no family
            await loop.create_datagram_endpoint(DatagramRecorder)
        with pytest.raises(TypeError):
            await loop.create_datagram_endpoint(DatagramRecorder, local_addr="127.0.0.1")
        with pytest.raises(TypeError):
            await loop.create_datagram_endpoint(DatagramRecorder, local_addr=("127.0.0.1", 0, 0))
        async with endpoint(local_addr=LOCAL) as (tr, _):
            for bad in ("text", 3, None):
                with pytest.raises(TypeError):
                    tr.sendto(bad, ("127.0.0.1", 9))
    arun(main())


def test_close_and_abort(arun):
    async def main():
        loop = asyncio.get_running_loop()
        for how in ("close", "abort"):
            tr, proto = await loop.create_datagram_endpoint(DatagramRecorder, local_addr=LOCAL)
            assert not tr.is_closing()
            assert tr.get_write_buffer_size() == 0
            getattr(tr, how)()
            assert tr.is_closing()
            (_, exc), = await proto.wait_count("lost")
            assert exc is None
            tr.close()
            await asyncio.sleep(0.01)
            assert len(proto.of("lost")) == 1
            assert [e[0] for e in proto.events] == ["made", "lost"]
    arun(main())


def test_many_datagrams_in_flight(arun):
    n = 500

    async def main():
        async with endpoint(echo=True, local_addr=LOCAL) as (srv, _):
            async with endpoint(remote_addr=srv.get_extra_info("sockname")) as (cli, cproto):
                got: set[bytes] = set()
                for i in range(n):
                    cli.sendto(b"%d" % i)
                    if i % 50 == 49:  # keep well inside the socket buffers
                        await cproto.wait_count("dgram", i + 1)
                got = {d for _, d, _ in await cproto.wait_count("dgram", n)}
                assert got == {b"%d" % i for i in range(n)}
    arun(main())


def test_unix_datagram_endpoint(arun, sock_path):
    async def main():
        async with endpoint(echo=True, family=socket.AF_UNIX, local_addr=sock_path) as (srv, _):
            assert srv.get_extra_info("sockname") == sock_path
            client_path = sock_path + ".c"
            async with endpoint(family=socket.AF_UNIX, local_addr=client_path,
                                remote_addr=sock_path) as (cli, cproto):
                cli.sendto(b"unix dgram")
                (_, data, src), = await cproto.wait_count("dgram")
                assert data == b"unix dgram" and src == sock_path
    arun(main())
