"""The native TLS layer (csrc/loop/tls_transport.c) against asyncio's SSLProtocol.

Every behaviour test runs on the stdlib loop (asyncio's sslproto) and on
pyasync_c's loop with the native layer switched on (``native_tls`` fixture),
so both must give the same outcome: BufferedProtocol apps, app pause_reading
across shutdown, write flow control and buffer sizes, close() flushing before
close_notify, the shutdown timeout, errors of app callbacks, SSLContext
features (sni_callback, sslobject_class, keylog_filename), start_tls,
ResourceWarning for an unclosed transport, bad arguments.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import ssl
import threading
import warnings

import pytest

from net_util import (ExceptionHandlerRecorder, ProtocolCollector, Recorder, TLSFiles, arun,
                      client_context, payload, server_context, server_port, tcp_server,
                      tls_connect, tls_files, wait_until)

__all__ = ["arun", "tls_files"]  # fixtures, imported for pytest


@pytest.fixture(autouse=True)
def native_tls(monkeypatch: pytest.MonkeyPatch, loop_name: str) -> None:
    """pyasync_c's loop uses the native TLS layer in this module."""
    if loop_name == "pyasync_c":
        from pyasync_c import _network
        monkeypatch.setattr(_network, "_NATIVE_TLS", True)


class BufferedRecorder(asyncio.BufferedProtocol):
    """A BufferedProtocol with a small buffer, recording what arrives."""

    def __init__(self, size: int = 1000) -> None:
        self.buffer = bytearray(size)
        self.data = bytearray()
        self.events: list[str] = []
        self.hints: list[int] = []
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport
        self.events.append("made")

    def get_buffer(self, sizehint):
        self.hints.append(sizehint)
        return memoryview(self.buffer)

    def buffer_updated(self, nbytes):
        self.data += self.buffer[:nbytes]
        if not self.events or self.events[-1] != "data":
            self.events.append("data")

    def eof_received(self):
        self.events.append("eof")

    def connection_lost(self, exc):
        self.events.append("lost")
        self.lost.set_result(exc)


class Sender(Recorder):
    """Sends `data` once connected, then closes."""

    def __init__(self, data: bytes) -> None:
        super().__init__()
        self.to_send = data

    def connection_made(self, transport):
        super().connection_made(transport)
        transport.write(self.to_send)
        transport.close()


def test_native_transport_types(arun, tls_files, loop_name):
    async def main():
        async with tcp_server(ssl=server_context(tls_files)) as server:
            tr, proto = await tls_connect(server, tls_files)
            assert isinstance(tr, asyncio.Transport)
            assert isinstance(tr, asyncio.transports._FlowControlMixin)  # sendfile fallback
            assert "SSL" in type(tr).__name__
            if loop_name == "pyasync_c":
                from pyasync_c import _loop
                assert type(tr) is _loop.SSLTransport
                assert type(tr._ssl_protocol) is _loop.SSLProtocol
                assert tr._ssl_protocol._app_transport is tr
                assert tr._ssl_protocol._transport.get_protocol() is tr._ssl_protocol
            assert tr._start_tls_compatible
            tr.close()
            await proto.wait_lost()
            assert tr.get_protocol() is None or tr.get_protocol() is proto
    arun(main())


def test_extra_info_before_and_after_close(arun, tls_files):
    async def main():
        async with tcp_server(ssl=server_context(tls_files)) as server:
            tr, proto = await tls_connect(server, tls_files)
            sockname = tr.get_extra_info("sockname")
            assert sockname[0] == "127.0.0.1"
            assert tr.get_extra_info("peername") == ("127.0.0.1", server_port(server))
            assert tr.get_extra_info(name="nope", default=7) == 7
            sslobj = tr.get_extra_info("ssl_object")
            assert isinstance(sslobj, ssl.SSLObject)
            assert sslobj.version() in ("TLSv1.2", "TLSv1.3")
            assert tr.get_extra_info("compression") is None
            tr.close()
            await proto.wait_lost()
            # the TLS keys stay; the socket's are gone with the connection
            assert tr.get_extra_info("ssl_object") is sslobj
            assert tr.get_extra_info("cipher") is not None
            assert tr.get_extra_info("socket") is None
    arun(main())


def test_buffered_protocol_small_buffer_receives_everything(arun, tls_files):
    """1 MiB through a 1000-byte get_buffer(): refilled until done, then eof, lost."""
    data = payload(1024 * 1024)

    async def main():
        loop = asyncio.get_running_loop()
        async with tcp_server(lambda: Sender(data), ssl=server_context(tls_files)) as server:
            tr, proto = await loop.create_connection(
                BufferedRecorder, "127.0.0.1", server_port(server),
                ssl=client_context(tls_files), server_hostname="localhost")
            assert await asyncio.wait_for(proto.lost, 8) is None
            assert bytes(proto.data) == data
            assert proto.events == ["made", "data", "eof", "lost"]
            assert all(h >= 0 for h in proto.hints)
    arun(main())


def test_start_tls_with_buffered_protocol(arun, tls_files):
    async def main():
        loop = asyncio.get_running_loop()
        upgraded: asyncio.Future = loop.create_future()

        class Upgrader(Recorder):
            def data_received(self, data):
                super().data_received(data)
                self.transport.write(b"OK")
                self.transport.pause_reading()
                asyncio.ensure_future(self.upgrade())

            async def upgrade(self):
                new = await loop.start_tls(self.transport, self, server_context(tls_files),
                                           server_side=True)
                new.write(b"hello over tls")
                new.close()
                upgraded.set_result(new)

        async with tcp_server(Upgrader) as server:
            tr, plain = await loop.create_connection(Recorder, "127.0.0.1", server_port(server))
            tr.write(b"go")
            assert await plain.wait_data(2) == b"OK"  # nothing more in plain text
            proto = BufferedRecorder(64)
            tls_tr = await loop.start_tls(tr, proto, client_context(tls_files),
                                          server_hostname="localhost")
            assert tls_tr.get_protocol() is proto
            assert await asyncio.wait_for(proto.lost, 5) is None
            assert bytes(proto.data) == b"hello over tls"
            assert proto.events == ["data", "eof", "lost"]  # start_tls: no connection_made
            await upgraded
    arun(main())


def test_pause_reading_holds_data_and_shutdown_until_resumed(arun, tls_files):
    """The peer sends and closes while the app has paused reading: nothing is
    delivered (not even eof) until resume_reading(), then all of it, eof, lost."""
    data = payload(300 * 1024)

    async def main():
        loop = asyncio.get_running_loop()
        collector = ProtocolCollector(lambda: Sender(data))
        async with tcp_server(collector, ssl=server_context(tls_files)) as server:
            tr, proto = await tls_connect(server, tls_files)
            tr.pause_reading()
            assert not tr.is_reading()
            sender = await collector.next_made()
            await asyncio.sleep(0.3)
            assert proto.names() == ["made"]
            assert not tr.is_closing()
            tr.resume_reading()
            assert tr.is_reading()
            assert await proto.wait_lost() is None
            assert bytes(proto.data) == data
            assert proto.names()[-2:] == ["eof", "lost"]
            await sender.wait_lost()
    arun(main())


def test_write_flow_control(arun, tls_files):
    """A peer that does not read: pause_writing at the high-water mark, the
    buffer size reported; resume_writing once it reads again."""
    async def main():
        collector = ProtocolCollector(Recorder)
        async with tcp_server(collector, ssl=server_context(tls_files)) as server:
            tr, proto = await tls_connect(server, tls_files)
            peer = await collector.next_made()
            peer.transport.pause_reading()
            tr.set_write_buffer_limits(high=64 * 1024)
            assert tr.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
            chunk = b"z" * 16384
            sent = 0
            while "pause" not in proto.names() and sent < 64 * 1024 * 1024:
                tr.write(chunk)
                sent += len(chunk)
                await asyncio.sleep(0)
            assert "pause" in proto.names()
            assert tr.get_write_buffer_size() >= 64 * 1024
            assert tr._protocol_paused
            peer.transport.resume_reading()
            await proto.wait(lambda: "resume" in proto.names(), timeout=8)
            assert tr.get_write_buffer_size() <= 16 * 1024
            await peer.wait(lambda: len(peer.data) == sent, timeout=8)
            with pytest.raises(ValueError):
                tr.set_write_buffer_limits(high=1, low=2)
            tr.set_read_buffer_limits(high=1024)
            assert tr.get_read_buffer_limits() == (256, 1024)
            assert tr.get_read_buffer_size() == 0
            tr.close()
            await proto.wait_lost()
    arun(main())


def test_writelines_and_write_types(arun, tls_files):
    async def main():
        collector = ProtocolCollector(Recorder)
        async with tcp_server(collector, ssl=server_context(tls_files)) as server:
            tr, proto = await tls_connect(server, tls_files)
            peer = await collector.next_made()
            with pytest.raises(TypeError, match="data: expecting a bytes-like instance, got str"):
                tr.write("text")
            tr.write(b"")
            tr.writelines([b"ab", bytearray(b"cd"), memoryview(b"xef")[1:]])
            tr.write(bytearray(b"gh"))
            tr.write(memoryview(b"ij"))
            await peer.wait(lambda: len(peer.data) >= 10)
            assert bytes(peer.data) == b"abcdefghij"
            tr.close()
            await proto.wait_lost()
    arun(main())


def test_close_flushes_written_data_before_close_notify(arun, tls_files):
    data = payload(2 * 1024 * 1024)

    async def main():
        collector = ProtocolCollector(Recorder)
        async with tcp_server(collector, ssl=server_context(tls_files)) as server:
            tr, proto = await tls_connect(server, tls_files)
            tr.write(data)
            tr.close()
            assert tr.is_closing()
            tr.write(b"dropped after close")  # ignored, as asyncio does
            peer = await collector.next_made()
            assert await peer.wait_lost(timeout=8) is None
            assert bytes(peer.data) == data
            assert peer.names()[-2:] == ["eof", "lost"]
            assert await proto.wait_lost() is None
    arun(main())


def test_shutdown_timeout(arun, tls_files):
    """The peer never answers close_notify (its app paused reading): the
    closing side gives up after ssl_shutdown_timeout with a TimeoutError."""
    async def main():
        loop = asyncio.get_running_loop()
        collector = ProtocolCollector(Recorder)
        async with tcp_server(collector, ssl=server_context(tls_files)) as server:
            tr, proto = await loop.create_connection(
                Recorder, "127.0.0.1", server_port(server), ssl=client_context(tls_files),
                server_hostname="localhost", ssl_shutdown_timeout=0.3)
            peer = await collector.next_made()
            peer.transport.pause_reading()
            await asyncio.sleep(0.05)
            tr.close()
            exc = await proto.wait_lost(timeout=5)
            assert isinstance(exc, TimeoutError) and "SSL shutdown timed out" in str(exc)
            peer.transport.abort()
    arun(main())


def test_error_in_app_data_received_is_fatal(arun, tls_files):
    class Failing(Recorder):
        def data_received(self, data):
            super().data_received(data)
            raise ZeroDivisionError("app bug")

    async def main():
        handler = ExceptionHandlerRecorder().install()
        async with tcp_server(ssl=server_context(tls_files)) as server:
            loop = asyncio.get_running_loop()
            tr, proto = await loop.create_connection(
                Failing, "127.0.0.1", server_port(server), ssl=client_context(tls_files),
                server_hostname="localhost")
            tr.write(b"ping")
            exc = await proto.wait_lost()
            assert isinstance(exc, ZeroDivisionError)
            [context] = [c for c in handler.contexts
                         if isinstance(c.get("exception"), ZeroDivisionError)]
            assert context["message"] == "Fatal error on SSL protocol"
    arun(main())


def test_eof_received_returning_true_only_warns(arun, tls_files, caplog):
    async def main():
        loop = asyncio.get_running_loop()
        async with tcp_server(lambda: Sender(b"bye"), ssl=server_context(tls_files)) as server:
            tr, proto = await loop.create_connection(
                lambda: Recorder(eof_result=True), "127.0.0.1", server_port(server),
                ssl=client_context(tls_files), server_hostname="localhost")
            assert await proto.wait_lost() is None  # closed anyway
            assert proto.names() == ["made", "data", "eof", "lost"]
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        arun(main())
    assert any("returning true from eof_received() has no effect when using ssl" in r.getMessage()
               for r in caplog.records)


def test_context_features_apply(arun, tls_files, tmp_path):
    """sni_callback, sslobject_class and keylog_filename of the SSLContexts
    take effect exactly as with asyncio (the SSLObject comes from wrap_bio)."""
    seen: list[str | None] = []
    calls: list[str] = []

    class CountingSSLObject(ssl.SSLObject):
        def read(self, len=1024, buffer=None):
            calls.append("read")
            return super().read(len, buffer)

        def write(self, data):
            calls.append("write")
            return super().write(data)

    async def main():
        sctx = server_context(tls_files)
        sctx.sni_callback = lambda sslobj, name, ctx: seen.append(name)
        cctx = client_context(tls_files)
        cctx.sslobject_class = CountingSSLObject
        keylog = tmp_path / "keys.log"
        cctx.keylog_filename = str(keylog)
        loop = asyncio.get_running_loop()
        async with tcp_server(ssl=sctx) as server:
            tr, proto = await loop.create_connection(
                Recorder, "127.0.0.1", server_port(server), ssl=cctx,
                server_hostname="localhost")
            assert isinstance(tr.get_extra_info("ssl_object"), CountingSSLObject)
            tr.write(b"echo me")
            assert await proto.wait_data(7) == b"echo me"
            tr.close()
            await proto.wait_lost()
        assert seen == ["localhost"]
        assert "write" in calls and "read" in calls
        assert "CLIENT_" in keylog.read_text() or "TRAFFIC_SECRET" in keylog.read_text()
    arun(main())


def test_cancelled_connect_during_handshake(arun, tls_files):
    """The peer never answers the ClientHello; cancelling create_connection
    closes the connection."""
    async def main():
        loop = asyncio.get_running_loop()
        collector = ProtocolCollector(Recorder)
        async with tcp_server(collector) as server:  # plain TCP: no ServerHello
            task = asyncio.ensure_future(loop.create_connection(
                Recorder, "127.0.0.1", server_port(server), ssl=client_context(tls_files),
                server_hostname="localhost"))
            peer = await collector.next_made()
            await peer.wait(lambda: len(peer.data) > 0)  # the ClientHello
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await peer.wait_lost() is None or True
            assert peer.count("lost") == 1
    arun(main())


def test_unclosed_transport_resource_warning(loop_factory, tls_files):
    """A TLS transport dropped without close() warns (ResourceWarning), as asyncio's."""
    loop = loop_factory()
    try:
        async def main():
            server = await loop.create_server(Recorder, "127.0.0.1", 0,
                                              ssl=server_context(tls_files))
            tr, proto = await tls_connect(server, tls_files)
            await asyncio.sleep(0.05)
            server.close()
            return tr, proto

        tr, proto = loop.run_until_complete(main())
    finally:
        loop.close()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del tr, proto
        gc.collect()
    assert any(issubclass(w.category, ResourceWarning) and "unclosed transport" in str(w.message)
               for w in caught), caught


def test_bad_arguments(loop_name):
    if loop_name != "pyasync_c":
        pytest.skip("pyasync_c's own classes")
    from pyasync_c import _loop
    loop = asyncio.new_event_loop()
    try:
        ctx = ssl.create_default_context()
        for kw, name in ((dict(ssl_handshake_timeout=0), "ssl_handshake_timeout"),
                         (dict(ssl_shutdown_timeout=-1.5), "ssl_shutdown_timeout")):
            with pytest.raises(ValueError, match=f"{name} should be a positive number, got"):
                _loop.SSLProtocol(loop, Recorder(), ctx, None, **kw)
        with pytest.raises(ValueError, match="Server side SSL needs a valid SSLContext"):
            _loop.SSLProtocol(loop, Recorder(), None, None, server_side=True)
        with pytest.raises(TypeError):
            _loop.SSLTransport()
        with pytest.raises(TypeError):
            _loop.SSLProtocol(loop)
        proto = _loop.SSLProtocol(loop, Recorder(), ctx, None, server_hostname="example.com")
        tr = proto._app_transport
        with pytest.raises(NotImplementedError):
            tr.write_eof()
        assert not tr.can_write_eof()
        tr.close()  # before connection_made: nothing to shut down
        assert tr.is_closing()
    finally:
        loop.close()


def test_second_close_releases_tls_state(arun, tls_files):
    """An app protocol that keeps its transport does not keep the TLS state
    (SSLContext, SSL object) once the transport was closed twice, as asyncio's
    _SSLProtocolTransport drops its SSLProtocol (CPython's
    test_create_connection_memory_leak)."""
    import weakref

    async def main():
        loop = asyncio.get_running_loop()
        cctx = client_context(tls_files)
        async with tcp_server(ssl=server_context(tls_files)) as server:
            tr, proto = await loop.create_connection(
                Recorder, "127.0.0.1", server_port(server), ssl=cctx,
                server_hostname="localhost")
            tr.close()
            await proto.wait_lost()
            tr.close()  # the second close
            assert tr.is_closing()
            ref = weakref.ref(cctx)
            del cctx
            assert proto.transport is tr  # the app keeps its transport...
            assert ref() is None          # ...but not the TLS state
    arun(main())


async def _manual_tls_server(lst, ctx: ssl.SSLContext, records: list[str]) -> bytes:
    """Accepts one connection on `lst` and speaks TLS by hand (SSLObject over
    MemoryBIOs): after the handshake it sends, in one segment, the records
    named in `records` ("data:<text>", "close_notify", or "raw:<text>" for
    bytes as they are: OpenSSL makes no records after a close_notify);
    returns what it received in plain text until EOF."""
    loop = asyncio.get_running_loop()
    sock, _ = await loop.sock_accept(lst)
    with sock:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = ctx.wrap_bio(incoming, outgoing, server_side=True)
        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                if outgoing.pending:
                    await loop.sock_sendall(sock, outgoing.read())
                incoming.write(await loop.sock_recv(sock, 65536))
        if outgoing.pending:
            await loop.sock_sendall(sock, outgoing.read())
        segment = b""
        for record in records:
            if record == "close_notify":
                with pytest.raises(ssl.SSLWantReadError):
                    obj.unwrap()
            elif record.startswith("raw:"):
                segment += record.removeprefix("raw:").encode()
            else:
                obj.write(record.removeprefix("data:").encode())
            segment += outgoing.read()
        await loop.sock_sendall(sock, segment)
        received = b""
        while chunk := await loop.sock_recv(sock, 65536):
            incoming.write(chunk)
            try:
                while data := obj.read(65536):
                    received += data
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                pass
            except ssl.SSLError:
                break  # the peer's close_notify after ours
        return received


def test_data_after_close_notify_is_discarded(arun, tls_files):
    """The peer's records after its close_notify never reach the app: data,
    eof_received, connection_lost(None)."""
    from net_util import listener

    async def main():
        loop = asyncio.get_running_loop()
        with listener() as lst:
            server = asyncio.ensure_future(_manual_tls_server(
                lst, server_context(tls_files), ["data:hello", "close_notify",
                                                   "raw:\x17\x03\x03\x00\x05after"]))
            tr, proto = await loop.create_connection(
                Recorder, *lst.getsockname(), ssl=client_context(tls_files),
                server_hostname="localhost")
            assert await proto.wait_lost() is None
            assert bytes(proto.data) == b"hello"
            assert proto.names() == ["made", "data", "eof", "lost"]
            assert await server == b""
    arun(main())


def test_tls_inside_tls(arun, tls_files):
    """start_tls over a TLS transport: the inner layer is the outer one's
    BufferedProtocol (its own buffer, not the socket transport's)."""
    async def main():
        loop = asyncio.get_running_loop()
        inner_done: asyncio.Future = loop.create_future()

        class Upgrader(Recorder):
            def data_received(self, data):
                super().data_received(data)
                self.transport.write(b"OK")
                self.transport.pause_reading()
                asyncio.ensure_future(self.upgrade())

            async def upgrade(self):
                inner = Recorder()
                new = await loop.start_tls(self.transport, inner, server_context(tls_files),
                                           server_side=True)
                inner.transport = new
                data = await inner.wait_data(5 * 100_000)
                new.write(data[::-1])
                inner_done.set_result(inner)

        async with tcp_server(Upgrader, ssl=server_context(tls_files)) as server:
            tr, outer = await tls_connect(server, tls_files)
            tr.write(b"go")
            assert await outer.wait_data(2) == b"OK"
            proto = Recorder()
            inner_tr = await loop.start_tls(tr, proto, client_context(tls_files),
                                            server_hostname="localhost")
            proto.transport = inner_tr
            message = payload(5 * 100_000)
            inner_tr.write(message)
            assert await proto.wait_data(len(message), timeout=8) == message[::-1]
            inner_tr.close()
            assert await proto.wait_lost() is None
            server_inner = await inner_done
            await server_inner.wait_lost()
            tr.close()
    arun(main())


def test_corrupt_record_after_handshake(arun, tls_files):
    """A record that does not decrypt: connection_lost(ssl.SSLError), no
    data, nothing for the exception handler (an OSError), as asyncio."""
    from net_util import listener

    async def main():
        loop = asyncio.get_running_loop()
        handler = ExceptionHandlerRecorder().install()
        with listener() as lst:
            server = asyncio.ensure_future(_manual_tls_server(
                lst, server_context(tls_files), ["raw:\x17\x03\x03\x00\x20" + "x" * 32]))
            tr, proto = await loop.create_connection(
                Recorder, *lst.getsockname(), ssl=client_context(tls_files),
                server_hostname="localhost")
            exc = await proto.wait_lost()
            assert isinstance(exc, ssl.SSLError), exc
            assert proto.names() == ["made", "lost"]
            assert tr.is_closing()
            await server
        assert handler.contexts == []
    arun(main())


def test_many_concurrent_handshakes(arun, tls_files):
    """200 TLS connections at once, each an echo then close: all succeed, no fd left."""
    from net_util import fd_leak, open_fds

    async def main():
        async def handle(reader, writer):
            writer.write(await reader.readexactly(10))
            await writer.drain()
            writer.close()

        before = open_fds()
        server = await asyncio.start_server(handle, "127.0.0.1", 0,
                                            ssl=server_context(tls_files), backlog=512)
        port = server_port(server)
        cctx = client_context(tls_files)

        async def one(i: int) -> bytes:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=cctx, server_hostname="localhost")
            writer.write(b"%010d" % i)
            data = await reader.readexactly(10)
            writer.close()
            await writer.wait_closed()
            return data

        results = await asyncio.gather(*(one(i) for i in range(200)))
        assert results == [b"%010d" % i for i in range(200)]
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0.05)
        assert not fd_leak(before)
    arun(main(), timeout=30)


def test_debug_mode_logs_handshake(arun, tls_files, caplog):
    async def main():
        async with tcp_server(ssl=server_context(tls_files)) as server:
            tr, proto = await tls_connect(server, tls_files)
            tr.write(b"dbg")
            assert await proto.wait_data(3) == b"dbg"
            tr.close()
            await proto.wait_lost()
    with caplog.at_level(logging.DEBUG, logger="asyncio"):
        arun(main(), debug=True)
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.endswith("starts SSL handshake") for m in messages), messages
    assert any("SSL handshake took" in m and m.endswith(" ms") for m in messages), messages


def test_loops_in_two_threads_keep_their_tls_streams_apart(loop_factory, tls_files):
    # Ciphertext is received into a buffer the loop's connections share: two
    # loops in two threads, each echoing its own byte pattern over TLS, must
    # each get back exactly what it sent.
    async def echo_session(fill: int) -> bool:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_context(tls_files))
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", server_port(server), ssl=client_context(tls_files),
            server_hostname="localhost")
        chunk = bytes([fill]) * 50_000
        ok = True
        for _ in range(40):
            writer.write(chunk)
            got = await reader.readexactly(len(chunk))
            ok = ok and got == chunk
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return ok

    results: dict[int, object] = {}

    def thread_main(fill: int) -> None:
        loop = loop_factory()
        try:
            results[fill] = loop.run_until_complete(asyncio.wait_for(echo_session(fill), 60))
        except BaseException as exc:  # reported by the assert below
            results[fill] = exc
        finally:
            loop.close()

    threads = [threading.Thread(target=thread_main, args=(fill,)) for fill in (0x41, 0x42)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    assert results == {0x41: True, 0x42: True}


def test_instance_overrides_of_the_fast_paths(arun, tls_files):
    """The SSL protocol's buffer_updated and the socket transport's write, replaced
    on the instance, are called (the native layer's C shortcuts between its
    SSLProtocol and our socket transport step aside)."""
    async def main():
        async with tcp_server(ssl=server_context(tls_files)) as server:
            tr, proto = await tls_connect(server, tls_files)
            ssl_proto = tr._ssl_protocol
            raw = ssl_proto._transport
            calls = {"buffer_updated": 0, "write": 0}
            original_updated, original_write = ssl_proto.buffer_updated, raw.write

            def buffer_updated(n):
                calls["buffer_updated"] += 1
                return original_updated(n)

            def write(data):
                calls["write"] += 1
                return original_write(data)

            ssl_proto.buffer_updated = buffer_updated
            raw.write = write
            for i in range(5):
                tr.write(b"ping %d" % i)
                await proto.wait_data(len(b"ping 0") * (i + 1))
            assert calls["buffer_updated"] >= 5 and calls["write"] >= 5, calls
            del ssl_proto.buffer_updated, raw.write
            before = dict(calls)
            tr.write(b"more")
            await proto.wait_data(len(b"ping 0") * 5 + 4)
            assert calls == before
            tr.close()
            await proto.wait_lost()
    arun(main())


def test_sslobject_class_write_count_is_sliced_like_asyncio(arun, tls_files):
    # An sslobject_class whose write() reports a bogus (negative) count:
    # asyncio keeps data[count:] (Python slicing) for the next write; the
    # native layer must do the same and never send bytes from outside data.
    class BuggyObject(ssl.SSLObject):
        lie = True

        def write(self, data):  # type: ignore[override]
            n = super().write(data)
            if BuggyObject.lie and len(data) == 16:
                BuggyObject.lie = False
                return -8
            return n

    received = bytearray()

    class Collect(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            received.extend(data)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        cctx = client_context(tls_files)
        cctx.sslobject_class = BuggyObject
        server = await loop.create_server(Collect, "127.0.0.1", 0, ssl=server_context(tls_files))
        async with server:
            tr, _ = await loop.create_connection(
                asyncio.Protocol, "127.0.0.1", server_port(server), ssl=cctx,
                server_hostname="localhost")
            tr.write(b"0123456789abcdef")
            await wait_until(lambda: len(received) >= 24)
            tr.close()

    arun(main())
    assert bytes(received) == b"0123456789abcdef" + b"89abcdef"


# A child process runs each scenario below that crashed the native layer:
# Python code run inside a transport method (a key's __hash__, a limit's
# arithmetic, a protocol's __getattr__) closes the transport a second time,
# which drops its SSL protocol while the method still uses it.
_SECOND_CLOSE_CHILD = r'''
import asyncio, gc, ssl, sys
loop_name, cert, key, variant = sys.argv[1:5]
if loop_name == "pyasync_c":
    import pyasync_c
    from pyasync_c import _network
    _network._NATIVE_TLS = True
    new_loop = pyasync_c.new_event_loop
else:
    new_loop = asyncio.new_event_loop

async def main():
    loop = asyncio.get_running_loop()
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(cert, key)
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cctx.load_verify_locations(cert)
    srv = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0, ssl=sctx)
    lost = loop.create_future()

    class App(asyncio.Protocol):
        def connection_lost(self, exc):
            lost.set_result(None)

    tr, _ = await loop.create_connection(App, "127.0.0.1", srv.sockets[0].getsockname()[1],
                                         ssl=cctx, server_hostname="localhost")
    tr.abort()
    await lost
    for _ in range(5):
        await asyncio.sleep(0)
    del cctx
    gc.collect()

    def second_close():
        tr.close()
        gc.collect()
        junk = [bytearray(200) for _ in range(2000)]  # reuse freed memory

    class Key:
        def __hash__(self):
            second_close()
            return hash("peername")
        def __eq__(self, other):
            return False

    class High(int):
        def __floordiv__(self, other):
            second_close()
            return int(self) // other

    class Switch(asyncio.Protocol):
        def __getattr__(self, name):
            if name == "get_buffer":
                second_close()
            raise AttributeError(name)

    try:
        if variant == "extra":
            r = tr.get_extra_info(Key(), "DEFAULT")
        elif variant == "write_limits":
            r = tr.set_write_buffer_limits(high=High(100000))
        elif variant == "read_limits":
            r = tr.set_read_buffer_limits(high=High(100000))
        else:
            r = tr.set_protocol(Switch())
    except (AttributeError, RuntimeError) as e:  # asyncio: AttributeError on None
        r = "error"
    srv.close()
    await srv.wait_closed()
    return r

loop = new_loop()
try:
    print("result:", loop.run_until_complete(main()))
finally:
    loop.close()
'''


@pytest.mark.parametrize("variant,expected", [
    ("extra", "DEFAULT"), ("write_limits", None), ("read_limits", None),
    ("set_protocol", None)])
def test_second_close_inside_a_transport_method(tls_files, loop_name, variant, expected):
    import os
    import subprocess
    import sys

    from package_path import PACKAGE_PARENT
    env = dict(os.environ, PYTHONPATH=PACKAGE_PARENT, PYTHONMALLOC="debug")
    proc = subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", _SECOND_CLOSE_CHILD, loop_name,
         str(tls_files.cert), str(tls_files.key), variant],
        env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = proc.stdout.strip().splitlines()[-1]
    # the limits variants: asyncio raises AttributeError ('NoneType' object has no
    # attribute '_control_app_writing'), the native layer applies the limits
    assert last in (f"result: {expected}", "result: error"), last


def test_get_buffer_switching_to_a_plain_protocol_still_reports_the_read(arun, tls_files):
    """get_buffer() calling transport.set_protocol(<plain Protocol>): the bytes
    read into its buffer are reported to the buffer_updated() of the protocol
    that gave the buffer, as asyncio does."""
    got: list[tuple[str, bytes]] = []

    class Plain(asyncio.Protocol):
        def data_received(self, data):
            got.append(("plain", bytes(data)))

    class Switching(asyncio.BufferedProtocol):
        def __init__(self) -> None:
            self.buf = bytearray(100)
            self.armed = False

        def connection_made(self, transport):
            self.transport = transport

        def get_buffer(self, sizehint):
            if self.armed:
                self.transport.set_protocol(Plain())
            return self.buf

        def buffer_updated(self, nbytes):
            got.append(("buffered", bytes(self.buf[:nbytes])))

    async def main():
        loop = asyncio.get_running_loop()
        server_transports: list[asyncio.Transport] = []

        class Server(asyncio.Protocol):
            def connection_made(self, transport):
                server_transports.append(transport)

        server = await loop.create_server(Server, "127.0.0.1", 0,
                                          ssl=server_context(tls_files))
        async with server:
            tr, proto = await loop.create_connection(
                Switching, "127.0.0.1", server_port(server), ssl=client_context(tls_files),
                server_hostname="localhost")
            await wait_until(lambda: bool(server_transports))
            await asyncio.sleep(0.1)  # session tickets are in
            proto.armed = True
            server_transports[0].write(b"hello world")
            await wait_until(lambda: bool(got))
            tr.close()

    arun(main())
    assert got[0] == ("buffered", b"hello world")


def test_sslobject_class_partial_writes_are_all_sent(arun, tls_files):
    """An sslobject_class whose write() takes at most 5 bytes a call: asyncio's
    _do_write loops over the rest at once, nothing waits for a later event."""
    class Chunky(ssl.SSLObject):
        def write(self, data):  # type: ignore[override]
            return super().write(bytes(data)[:5])

    received = bytearray()

    class Collect(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            received.extend(data)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        cctx = client_context(tls_files)
        cctx.sslobject_class = Chunky
        server = await loop.create_server(Collect, "127.0.0.1", 0, ssl=server_context(tls_files))
        async with server:
            tr, _ = await loop.create_connection(
                asyncio.Protocol, "127.0.0.1", server_port(server), ssl=cctx,
                server_hostname="localhost")
            await asyncio.sleep(0.2)  # session tickets are in: no later event comes
            tr.write(b"hello world, 23 bytes!!")
            await wait_until(lambda: len(received) >= 23, timeout=3)
            assert tr.get_write_buffer_size() == 0
            tr.close()

    arun(main())
    assert bytes(received) == b"hello world, 23 bytes!!"


def test_sslobject_class_read_returning_more_than_asked_is_all_delivered(arun, tls_files):
    """An sslobject_class whose read(n) returns more than n bytes (it doubles
    every byte): asyncio gives the app everything read() returned."""
    class Doubling(ssl.SSLObject):
        def read(self, n=1024, buffer=None):  # type: ignore[override]
            if buffer is not None:
                return super().read(n, buffer)
            return bytes(b for c in super().read(n) for b in (c, c))

    data = bytes(range(256)) * 64
    expected = bytes(b for c in data for b in (c, c))

    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        cctx = client_context(tls_files)
        cctx.sslobject_class = Doubling
        async with tcp_server(ssl=server_context(tls_files)) as server:
            tr, proto = await loop.create_connection(
                Recorder, "127.0.0.1", server_port(server), ssl=cctx,
                server_hostname="localhost")
            tr.write(data)
            await proto.wait_data(len(expected))
            tr.close()
            await proto.wait_lost()
            return bytes(proto.data)

    assert arun(main()) == expected


_LOST_IN_READ_CHILD = r'''
import asyncio, ssl, sys
loop_name, cert, key = sys.argv[1:4]
if loop_name == "pyasync_c":
    import pyasync_c
    from pyasync_c import _network
    _network._NATIVE_TLS = True
    new_loop = pyasync_c.new_event_loop
else:
    new_loop = asyncio.new_event_loop
held = {}

class LoseInRead(ssl.SSLObject):
    def read(self, n=1024, buffer=None):
        r = super().read(n, buffer) if buffer is not None else super().read(n)
        if r and "ssl_protocol" in held:
            held.pop("ssl_protocol").connection_lost(None)
        return r

async def main():
    loop = asyncio.get_running_loop()
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(cert, key)
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cctx.load_verify_locations(cert)
    cctx.sslobject_class = LoseInRead
    class Server(asyncio.Protocol):
        def connection_made(self, tr):
            loop.call_later(0.1, tr.write, b"x" * 100)
    srv = await loop.create_server(Server, "127.0.0.1", 0, ssl=sctx)
    tr, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1",
                                         srv.sockets[0].getsockname()[1], ssl=cctx,
                                         server_hostname="localhost")
    held["ssl_protocol"] = tr._ssl_protocol
    await asyncio.sleep(0.4)
    srv.close()
    return "done"

loop = new_loop()
try:
    print("result:", loop.run_until_complete(main()))
finally:
    loop.close()
'''


def test_connection_lost_inside_sslobject_read(tls_files, loop_name):
    """An sslobject_class's read() calling the SSL protocol's connection_lost()
    drops the app protocol while decrypted data waits for it: no crash (asyncio
    reports an AttributeError to the exception handler)."""
    import os
    import subprocess
    import sys

    from package_path import PACKAGE_PARENT
    env = dict(os.environ, PYTHONPATH=PACKAGE_PARENT)
    proc = subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", _LOST_IN_READ_CHILD, loop_name,
         str(tls_files.cert), str(tls_files.key)],
        env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "result: done"
