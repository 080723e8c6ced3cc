"""TLS over the loop's transports: create_connection/create_server with ssl=,
loop.start_tls and StreamWriter.start_tls, on both loops.

A self-signed certificate for localhost/127.0.0.1 is made with the openssl CLI
(net_util.tls_files).
"""
from __future__ import annotations

import asyncio
import socket
import ssl

import pytest

from net_util import (EchoProtocol, ExceptionHandlerRecorder, ProtocolCollector, Recorder,
                      TLSFiles, arun, client_context, fd_leak, listener, open_fds, payload,
                      recv_until_eof, server_context, server_port, tcp_server, tls_connect,
                      tls_files)

__all__ = ["arun", "tls_files"]  # fixtures, imported for pytest


def quiet_handler() -> ExceptionHandlerRecorder:
    """Failed handshakes are reported through the exception handler on the server
    side; keep them for inspection instead of logging them."""
    return ExceptionHandlerRecorder().install()


def test_tls_echo_and_extra_info(arun, tls_files: TLSFiles):
    async def main():
        loop = asyncio.get_running_loop()
        sctx, cctx = server_context(tls_files), client_context(tls_files)
        collector = ProtocolCollector(EchoProtocol)
        async with tcp_server(collector, ssl=sctx) as server:
            tr, proto = await loop.create_connection(
                Recorder, "127.0.0.1", server_port(server), ssl=cctx, server_hostname="localhost")
            assert isinstance(tr, asyncio.Transport)
            assert proto.names() == ["made"]  # only once the handshake is done
            tr.write(b"secret")
            assert await proto.wait_data(6) == b"secret"

            assert tr.get_extra_info("sslcontext") is cctx
            sslobj = tr.get_extra_info("ssl_object")
            assert isinstance(sslobj, (ssl.SSLObject, ssl.SSLSocket))
            assert sslobj.server_hostname == "localhost"
            peercert = tr.get_extra_info("peercert")
            assert ("commonName", "localhost") in [item for rdn in peercert["subject"]
                                                   for item in rdn]
            cipher = tr.get_extra_info("cipher")
            assert isinstance(cipher, tuple) and len(cipher) == 3
            assert tr.get_extra_info("compression") is None
            # the plain socket's info is still reachable
            assert tr.get_extra_info("peername") == ("127.0.0.1", server_port(server))
            assert tr.get_extra_info("socket").family == socket.AF_INET
            assert tr.get_extra_info("nope", 42) == 42

            sproto = await collector.next_made()
            str_ = sproto.transport
            assert str_.get_extra_info("sslcontext") is sctx
            assert str_.get_extra_info("peercert") is None  # no client certificate
            assert str_.get_extra_info("cipher") == cipher

            tr.close()
            assert await proto.wait_lost() is None
            assert await sproto.wait_lost() is None
            assert proto.count("lost") == 1
    arun(main())


def test_tls_server_hostname_defaults_to_host(arun, tls_files):
    async def main():
        loop = asyncio.get_running_loop()
        async with tcp_server(ssl=server_context(tls_files)) as server:
            for host in ("127.0.0.1", "localhost"):  # both are in the certificate
                tr, proto = await loop.create_connection(
                    Recorder, host, server_port(server), ssl=client_context(tls_files))
                tr.write(b"x")
                await proto.wait_data(1)
                tr.close()
                await proto.wait_lost()
    arun(main())


def test_tls_large_transfer_both_ways(arun, tls_files):
    data = payload(4 * 1024 * 1024)

    async def main():
        loop = asyncio.get_running_loop()
        async with tcp_server(ssl=server_context(tls_files)) as server:
            tr, proto = await tls_connect(server, tls_files)
            tr.write(data)
            assert await proto.wait_data(len(data), timeout=8) == data
            tr.close()
            await proto.wait_lost()
    arun(main())


def test_tls_wrong_hostname_fails_verification(arun, tls_files):
    async def main():
        loop = asyncio.get_running_loop()
        quiet_handler()
        async with tcp_server(ssl=server_context(tls_files)) as server:
            before = open_fds()
            with pytest.raises(ssl.SSLCertVerificationError):
                await tls_connect(server, tls_files, "not-localhost.example")
            await asyncio.sleep(0.05)
            assert not fd_leak(before)
    arun(main())


def test_tls_default_context_rejects_self_signed(arun, tls_files):
    async def main():
        loop = asyncio.get_running_loop()
        quiet_handler()
        async with tcp_server(ssl=server_context(tls_files)) as server:
            with pytest.raises(ssl.SSLCertVerificationError):
                await loop.create_connection(Recorder, "localhost", server_port(server), ssl=True)
    arun(main())


def test_tls_bad_arguments(arun, tls_files):
    async def main():
        loop = asyncio.get_running_loop()
        cctx = client_context(tls_files)
        with socket.socket() as sock:
            with pytest.raises(ValueError):  # sock= and ssl but no server_hostname
                await loop.create_connection(Recorder, sock=sock, ssl=cctx)
        with pytest.raises(TypeError):
            await loop.create_server(EchoProtocol, "127.0.0.1", 0, ssl=True)
        # non-positive timeouts are refused (the stdlib checks them once connected)
        with listener() as lst:
            for kw in (dict(ssl_handshake_timeout=0), dict(ssl_handshake_timeout=-1),
                       dict(ssl_shutdown_timeout=0), dict(ssl_shutdown_timeout=-1)):
                with pytest.raises(ValueError):
                    await loop.create_connection(Recorder, *lst.getsockname(), ssl=cctx,
                                                 server_hostname="localhost", **kw)
    arun(main())


def test_tls_client_handshake_timeout(arun, tls_files):
    """The peer accepts TCP but never speaks TLS: ConnectionAbortedError after the timeout."""
    async def main():
        loop = asyncio.get_running_loop()
        before = open_fds()
        with listener() as lst:
            task = asyncio.ensure_future(loop.create_connection(
                Recorder, *lst.getsockname(), ssl=client_context(tls_files),
                server_hostname="localhost", ssl_handshake_timeout=0.2))
            with pytest.raises(ConnectionAbortedError):
                await task
            peer, _ = await loop.sock_accept(lst)
            with peer:
                assert (await recv_until_eof(peer))[:1] == b"\x16"  # it sent a ClientHello
        await asyncio.sleep(0.01)
        assert not fd_leak(before)
    arun(main())


def test_tls_server_handshake_timeout(arun, tls_files):
    """A client that connects but never sends a ClientHello is dropped by the server."""
    async def main():
        loop = asyncio.get_running_loop()
        handler = quiet_handler()
        collector = ProtocolCollector(Recorder)
        async with tcp_server(collector, ssl=server_context(tls_files),
                              ssl_handshake_timeout=0.2) as server:
            sock = socket.socket()
            sock.setblocking(False)
            with sock:
                await loop.sock_connect(sock, ("127.0.0.1", server_port(server)))
                assert await recv_until_eof(sock) == b""
            assert all(isinstance(e, (ConnectionError, TimeoutError, type(None)))
                       for e in handler.exceptions)
            # connection_made is never called for a connection whose handshake failed
            assert all(p.names() == [] for p in collector.protocols)
    arun(main())


def test_tls_client_close_reaches_server_as_eof(arun, tls_files):
    async def main():
        loop = asyncio.get_running_loop()
        collector = ProtocolCollector(lambda: Recorder(eof_result=None))
        async with tcp_server(collector, ssl=server_context(tls_files)) as server:
            tr, proto = await tls_connect(server, tls_files)
            assert not tr.can_write_eof()  # no TLS half-close
            with pytest.raises(NotImplementedError):
                tr.write_eof()
            tr.write(b"bye")
            tr.close()
            assert tr.is_closing()
            sproto = await collector.next_made()
            assert await sproto.wait_lost() is None
            assert sproto.data == b"bye"
            assert "eof" in sproto.names()  # close_notify arrives as eof_received
            assert await proto.wait_lost() is None
    arun(main())


def test_tls_server_close_reaches_client(arun, tls_files):
    class Greeter(Recorder):
        def connection_made(self, transport):
            super().connection_made(transport)
            transport.write(b"hello and goodbye")
            transport.close()

    async def main():
        loop = asyncio.get_running_loop()
        async with tcp_server(Greeter, ssl=server_context(tls_files)) as server:
            tr, proto = await tls_connect(server, tls_files)
            assert await proto.wait_lost() is None
            assert proto.data == b"hello and goodbye"
            assert proto.names()[-2:] == ["eof", "lost"]
    arun(main())


def test_tls_abort(arun, tls_files):
    async def main():
        loop = asyncio.get_running_loop()
        collector = ProtocolCollector(Recorder)
        async with tcp_server(collector, ssl=server_context(tls_files)) as server:
            tr, proto = await tls_connect(server, tls_files)
            sproto = await collector.next_made()
            tr.abort()
            assert tr.is_closing()
            assert await proto.wait_lost() is None
            await sproto.wait_lost()  # None or a connection error, as the stdlib does
            assert proto.count("lost") == 1
    arun(main())


# --------------------------------------------------------------------------
# start_tls
# --------------------------------------------------------------------------

class StartTLSServer(Recorder):
    """Plain text until b"STARTTLS\n", answers b"OK\n" and upgrades the connection;
    ``upgraded`` then gives the Recorder protocol of the TLS layer."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        super().__init__()
        self.ctx = ctx
        self.upgraded: asyncio.Future | None = None

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        assert data == b"STARTTLS\n"
        self.transport.write(b"OK\n")
        self.transport.pause_reading()  # nothing more until the TLS layer takes over
        self.upgraded = asyncio.ensure_future(self.upgrade())

    async def upgrade(self) -> Recorder:
        loop = asyncio.get_running_loop()
        tls_proto = Recorder()
        new_tr = await loop.start_tls(self.transport, tls_proto, self.ctx, server_side=True)
        tls_proto.transport = new_tr  # start_tls does not call connection_made
        return tls_proto


def test_loop_start_tls_both_sides(arun, tls_files):
    async def main():
        loop = asyncio.get_running_loop()
        collector = ProtocolCollector(lambda: StartTLSServer(server_context(tls_files)))
        async with tcp_server(collector) as server:
            tr, proto = await loop.create_connection(Recorder, "127.0.0.1", server_port(server))
            assert tr.get_extra_info("sslcontext") is None
            tr.write(b"STARTTLS\n")
            assert await proto.wait_data(3) == b"OK\n"
            cctx = client_context(tls_files)
            tls_tr = await loop.start_tls(tr, proto, cctx, server_hostname="localhost")
            assert tls_tr is not tr
            assert tls_tr.get_extra_info("sslcontext") is cctx
            assert tls_tr.get_extra_info("peercert") is not None
            assert tls_tr.get_protocol() is proto
            assert proto.names() == ["made", "data"]  # no second connection_made
            tls_tr.write(b"encrypted")
            sproto = await collector.next_made()
            tls_server = await sproto.upgraded
            assert tls_server.transport.get_extra_info("ssl_object").server_side
            assert await tls_server.wait_data(9) == b"encrypted"
            tls_server.transport.write(b"reply")
            assert await proto.wait_data(8) == b"OK\nreply"
            tls_tr.close()
            assert await proto.wait_lost() is None
            assert await tls_server.wait_lost() is None
            assert proto.count("lost") == 1
    arun(main())


def test_start_tls_bad_arguments(arun, tls_files):
    async def main():
        loop = asyncio.get_running_loop()
        async with tcp_server() as server:
            tr, proto = await loop.create_connection(Recorder, "127.0.0.1", server_port(server))
            with pytest.raises(TypeError):
                await loop.start_tls(tr, proto, "not a context")
            assert not tr.is_closing()
            tr.close()
            await proto.wait_lost()
    arun(main())


def test_stream_writer_start_tls(arun, tls_files):
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert await reader.readline() == b"STARTTLS\n"
        writer.write(b"OK\n")
        await writer.start_tls(server_context(tls_files))
        assert writer.get_extra_info("ssl_object") is not None
        while line := await reader.readline():
            writer.write(line.upper())
        writer.close()
        await writer.wait_closed()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        async with server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server_port(server))
            writer.write(b"STARTTLS\n")
            assert await reader.readline() == b"OK\n"
            await writer.start_tls(client_context(tls_files), server_hostname="localhost")
            assert writer.get_extra_info("peercert") is not None
            writer.write(b"quiet\n")
            assert await reader.readline() == b"QUIET\n"
            writer.close()
            await writer.wait_closed()
    arun(main())


def test_streams_over_tls(arun, tls_files):
    async def handle(reader, writer):
        line = await reader.readline()
        writer.write(line.rstrip(b"\n")[::-1] + b"\n")
        await writer.drain()
        writer.close()  # close_notify: the client reads EOF

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_context(tls_files))
        async with server:
            reader, writer = await asyncio.open_connection(
                "localhost", server_port(server), ssl=client_context(tls_files))
            assert not writer.can_write_eof()  # no TLS half-close
            writer.write(b"abc\n")
            await writer.drain()
            assert await reader.readline() == b"cba\n"
            assert await reader.read() == b""
            assert reader.at_eof()
            writer.close()
            await writer.wait_closed()
    arun(main())
