"""loop.create_connection() and the TCP transport it returns, on both loops.

The accepted side of each connection is a raw socket driven with loop.sock_*
(see net_util.connected_transport) so that only the client transport is under test.
Connections are accepted after create_connection() returns (the kernel completes
the handshake from the backlog): no socket is ever closed under a pending operation.
"""
from __future__ import annotations

import asyncio
import contextvars
import gc
import logging
import socket
import warnings

import pytest

from net_util import (PY312, ExceptionHandlerRecorder, Recorder,
                      arun, connected_transport, fd_leak, free_port, full_backlog, listener,
                      localhost_addresses, open_fds, payload, recv_exactly, recv_until_eof,
                      refused_address, wait_until)

__all__ = ["arun"]  # fixture, imported for pytest


# --------------------------------------------------------------------------
# create_connection: addressing
# --------------------------------------------------------------------------

def test_connect_ip_literal_echo(arun):
    async def main():
        loop = asyncio.get_running_loop()
        with listener() as lst:
            tr, proto = await loop.create_connection(Recorder, "127.0.0.1", lst.getsockname()[1])
            peer, peer_addr = await loop.sock_accept(lst)
            with peer:
                assert isinstance(tr, asyncio.Transport)
                assert proto.names() == ["made"] and proto.transport is tr
                assert tr.get_extra_info("peername") == lst.getsockname()
                assert tr.get_extra_info("sockname") == peer_addr
                tr.write(b"ping")
                assert await recv_exactly(peer, 4) == b"ping"
                await loop.sock_sendall(peer, b"pong")
                assert await proto.wait_data(4) == b"pong"
                tr.close()
                assert await proto.wait_lost() is None
                assert await recv_until_eof(peer) == b""
        assert proto.count("lost") == 1
    arun(main())


def test_connect_host_name_and_port_as_string(arun):
    async def main():
        loop = asyncio.get_running_loop()
        with listener() as lst:
            tr, _ = await loop.create_connection(Recorder, "localhost", str(lst.getsockname()[1]))
            peer, _ = await loop.sock_accept(lst)
            peer.close()
            assert tr.get_extra_info("peername") == lst.getsockname()
            tr.close()
    arun(main())


@pytest.mark.parametrize("eyeballs", [None, dict(happy_eyeballs_delay=0.05),
                                      dict(happy_eyeballs_delay=0.05, interleave=1),
                                      dict(interleave=2)],
                         ids=["plain", "delay", "delay+interleave", "interleave"])
def test_connect_localhost_every_address_listening(arun, eyeballs):
    """Whatever 'localhost' resolves to, with a listener on each address the connection
    lands on one of them (happy eyeballs races them when several)."""
    addrs = localhost_addresses()

    async def main():
        loop = asyncio.get_running_loop()
        listeners = []
        port = free_port()
        try:
            for fam, host in addrs:
                s = socket.socket(fam, socket.SOCK_STREAM)
                listeners.append(s)
                s.setblocking(False)
                s.bind((host, port))
                s.listen(8)
            tr, _ = await loop.create_connection(Recorder, "localhost", port, **(eyeballs or {}))
            assert tr.get_extra_info("peername")[:2] in [(h, port) for _, h in addrs]
            tr.close()
        finally:
            for s in listeners:
                s.close()
    arun(main())


def test_connect_localhost_falls_back_to_the_listening_address(arun):
    """With several addresses for 'localhost' and a listener on the last one only,
    the refused ones are skipped (sequentially and with happy eyeballs)."""
    addrs = localhost_addresses()
    if len(addrs) < 2:
        pytest.skip(f"'localhost' resolves to a single address here: {addrs}")

    async def main():
        loop = asyncio.get_running_loop()
        fam, host = addrs[-1]
        port = free_port()
        with socket.socket(fam, socket.SOCK_STREAM) as s:
            s.bind((host, port))
            s.listen(8)
            for kw in ({}, dict(happy_eyeballs_delay=0.05, interleave=1)):
                tr, _ = await loop.create_connection(Recorder, "localhost", port, **kw)
                assert tr.get_extra_info("peername")[0] == host
                tr.close()
    arun(main())


def test_connect_local_addr(arun):
    async def main():
        loop = asyncio.get_running_loop()
        with listener() as lst:
            local = ("127.0.0.1", free_port())
            tr, _ = await loop.create_connection(Recorder, *lst.getsockname(), local_addr=local)
            peer, peer_addr = await loop.sock_accept(lst)
            peer.close()
            assert tr.get_extra_info("sockname") == local
            assert peer_addr == local
            tr.close()
    arun(main())


def test_connect_local_addr_in_use_fails(arun):
    async def main():
        loop = asyncio.get_running_loop()
        with listener() as lst, listener() as busy:
            # busy is bound (and listening) on this address: binding it again fails
            with pytest.raises(OSError):
                await loop.create_connection(Recorder, *lst.getsockname(),
                                             local_addr=busy.getsockname())
    arun(main())


def test_connect_with_sock(arun):
    async def main():
        loop = asyncio.get_running_loop()
        with listener() as lst:
            sock = socket.socket()
            sock.connect(lst.getsockname())  # blocking connect before handing it over
            peer, _ = lst.accept()
            with peer:
                peer.setblocking(False)
                tr, proto = await loop.create_connection(Recorder, sock=sock)
                assert sock.gettimeout() == 0  # made non-blocking by the loop
                assert tr.get_extra_info("socket").fileno() == sock.fileno()
                tr.write(b"via sock")
                assert await recv_exactly(peer, 8) == b"via sock"
                tr.close()
                await proto.wait_lost()
                assert sock.fileno() == -1  # the transport owns and closed it
    arun(main())


def test_connect_refused_ip_literal(arun):
    async def main():
        loop = asyncio.get_running_loop()
        before = open_fds()
        with pytest.raises(ConnectionRefusedError):
            await loop.create_connection(Recorder, *refused_address())
        with pytest.raises(ConnectionRefusedError):
            await loop.create_connection(Recorder, *refused_address(),
                                         happy_eyeballs_delay=0.05)
        assert not fd_leak(before)
    arun(main())


def test_connect_refused_localhost_is_oserror(arun):
    async def main():
        loop = asyncio.get_running_loop()
        with pytest.raises(OSError):
            await loop.create_connection(Recorder, "localhost", free_port())
    arun(main())


@pytest.mark.skipif(not PY312, reason="all_errors is new in 3.12")
def test_connect_all_errors_gives_exception_group(arun):
    async def main():
        loop = asyncio.get_running_loop()
        with pytest.raises(ExceptionGroup) as info:
            await loop.create_connection(Recorder, *refused_address(), all_errors=True)
        assert info.value.exceptions
        assert all(isinstance(e, ConnectionRefusedError) for e in info.value.exceptions)
        # without all_errors: the plain exception
        with pytest.raises(ConnectionRefusedError):
            await loop.create_connection(Recorder, *refused_address(), all_errors=False)
    arun(main())


def test_connect_bad_arguments(arun):
    async def main():
        loop = asyncio.get_running_loop()
        with socket.socket() as sock:
            with pytest.raises(ValueError):
                await loop.create_connection(Recorder, "127.0.0.1", 1, sock=sock)
            with pytest.raises(ValueError):
                await loop.create_connection(Recorder, None, 1, sock=sock)
        with pytest.raises(ValueError):
            await loop.create_connection(Recorder)  # neither host/port nor sock
        with pytest.raises(ValueError):
            await loop.create_connection(Recorder, "127.0.0.1", 1, server_hostname="x")
        with pytest.raises(ValueError):
            await loop.create_connection(Recorder, "127.0.0.1", 1, ssl_handshake_timeout=1.0)
        with pytest.raises(ValueError):
            await loop.create_connection(Recorder, "127.0.0.1", 1, ssl_shutdown_timeout=1.0)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            with pytest.raises(ValueError):
                await loop.create_connection(Recorder, sock=udp)
            assert udp.fileno() != -1  # not consumed
    arun(main())


def test_cancel_blocked_create_connection_leaves_no_fd(arun):
    async def main():
        loop = asyncio.get_running_loop()
        full = full_backlog()
        try:
            before = open_fds()
            task = asyncio.ensure_future(loop.create_connection(Recorder, *full.address))
            await asyncio.sleep(0.1)
            assert not task.done()  # really blocked in connect()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.sleep(0)
            assert not fd_leak(before)
        finally:
            full.close()
    arun(main())


# --------------------------------------------------------------------------
# transport: writing
# --------------------------------------------------------------------------

def test_write_bytes_like_and_writelines(arun):
    async def main():
        async with connected_transport() as c:
            tr = c.transport
            tr.write(b"a")
            tr.write(bytearray(b"bc"))
            tr.write(memoryview(b"xdefx")[1:4])
            tr.write(b"")  # nothing
            tr.writelines([b"g", bytearray(b"h"), memoryview(b"i")])
            tr.writelines([])
            assert await recv_exactly(c.peer, 9) == b"abcdefghi"
            for bad in ("str", 12, None):
                with pytest.raises(TypeError):
                    tr.write(bad)
            tr.write(b"!")
            assert await recv_exactly(c.peer, 1) == b"!"  # still usable
    arun(main())


def test_write_eof_half_close(arun):
    async def main():
        loop = asyncio.get_running_loop()
        async with connected_transport() as c:
            tr, proto = c.transport, c.protocol
            assert tr.can_write_eof()
            tr.write(b"last")
            tr.write_eof()
            assert await recv_until_eof(c.peer) == b"last"
            with pytest.raises(RuntimeError):
                tr.write(b"more")
            assert not tr.is_closing()
            # the other direction is still open
            await loop.sock_sendall(c.peer, b"reply")
            assert await proto.wait_data(5) == b"reply"
            assert "lost" not in proto.names()
            c.peer.shutdown(socket.SHUT_WR)
            await proto.wait_lost()  # eof_received returned None: transport closes
            assert proto.names() == ["made", "data", "eof", "lost"]
            assert proto.lost_exc is None
    arun(main())


@pytest.mark.parametrize("keep_open", [True, False])
def test_eof_received_return_value(arun, keep_open):
    async def main():
        async with connected_transport(lambda: Recorder(eof_result=keep_open)) as c:
            tr, proto = c.transport, c.protocol
            c.peer.shutdown(socket.SHUT_WR)
            await proto.wait_event("eof")
            if keep_open:
                await asyncio.sleep(0.02)
                assert not tr.is_closing() and "lost" not in proto.names()
                tr.write(b"after eof")
                assert await recv_exactly(c.peer, 9) == b"after eof"
                tr.close()
            assert await proto.wait_lost() is None
            assert tr.is_closing()
            assert await recv_until_eof(c.peer) == b""
            assert proto.names() == ["made", "eof", "lost"]
    arun(main())


def test_close_flushes_pending_writes(arun):
    size = 16 * 1024 * 1024

    async def main():
        async with connected_transport() as c:
            tr, proto = c.transport, c.protocol
            data = payload(size)
            tr.write(data)
            assert tr.get_write_buffer_size() > 0  # the peer is not reading yet
            tr.close()
            assert tr.is_closing()
            tr.close()  # idempotent
            await asyncio.sleep(0.02)
            assert "lost" not in proto.names()  # not before the data is out
            received = await recv_until_eof(c.peer)
            assert len(received) == size and received == data
            assert await proto.wait_lost() is None
            assert proto.count("lost") == 1
            assert tr.get_write_buffer_size() == 0
    arun(main())


def test_abort_drops_pending_writes(arun):
    size = 32 * 1024 * 1024

    async def main():
        async with connected_transport() as c:
            tr, proto = c.transport, c.protocol
            tr.write(payload(size))
            assert tr.get_write_buffer_size() > 0
            tr.abort()
            assert tr.is_closing()
            assert await proto.wait_lost() is None
            received = await recv_until_eof(c.peer)
            assert len(received) < size
            tr.abort()
            tr.close()
            await asyncio.sleep(0.01)
            assert proto.count("lost") == 1
    arun(main())


def test_close_from_connection_made(arun):
    class Closer(Recorder):
        def connection_made(self, transport):
            super().connection_made(transport)
            transport.close()

    async def main():
        async with connected_transport(Closer) as c:
            assert c.transport.is_closing()
            assert await c.protocol.wait_lost() is None
            assert await recv_until_eof(c.peer) == b""
            assert c.protocol.names() == ["made", "lost"]
    arun(main())


def test_close_from_data_received(arun):
    class Closer(Recorder):
        def data_received(self, data):
            super().data_received(data)
            self.transport.write(b"bye")
            self.transport.close()

    async def main():
        loop = asyncio.get_running_loop()
        async with connected_transport(Closer) as c:
            await loop.sock_sendall(c.peer, b"x")
            assert await c.protocol.wait_lost() is None
            assert await recv_until_eof(c.peer) == b"bye"
            try:
                await loop.sock_sendall(c.peer, b"late")  # may be reset: nobody reads
            except ConnectionError:
                pass
            await asyncio.sleep(0.02)
            assert c.protocol.names() == ["made", "data", "lost"]
    arun(main())


def test_write_after_close_is_ignored_then_logged(arun, caplog):
    async def main():
        async with connected_transport() as c:
            c.transport.close()
            await c.protocol.wait_lost()
            with caplog.at_level(logging.WARNING, logger="asyncio"):
                for _ in range(10):
                    c.transport.write(b"lost")  # no exception
            assert await recv_until_eof(c.peer) == b""
    arun(main())
    warnings_logged = [r for r in caplog.records
                       if r.name == "asyncio" and r.levelno == logging.WARNING]
    assert warnings_logged, "several writes after close are logged"


def test_connection_lost_called_once_even_with_close_and_abort(arun):
    async def main():
        async with connected_transport() as c:
            c.transport.close()
            c.transport.abort()
            c.transport.close()
            await c.protocol.wait_lost()
            await asyncio.sleep(0.02)
            assert c.protocol.count("lost") == 1
    arun(main())


# --------------------------------------------------------------------------
# transport: flow control
# --------------------------------------------------------------------------

def test_write_buffer_limits(arun):
    async def main():
        async with connected_transport() as c:
            tr = c.transport
            low, high = tr.get_write_buffer_limits()
            assert 0 <= low <= high
            tr.set_write_buffer_limits(high=1000, low=100)
            assert tr.get_write_buffer_limits() == (100, 1000)
            tr.set_write_buffer_limits(high=800)
            assert tr.get_write_buffer_limits() == (200, 800)  # low defaults to high // 4
            tr.set_write_buffer_limits(low=300)
            assert tr.get_write_buffer_limits() == (300, 1200)  # high defaults to 4 * low
            tr.set_write_buffer_limits(high=0, low=0)
            assert tr.get_write_buffer_limits() == (0, 0)
            tr.set_write_buffer_limits()
            assert tr.get_write_buffer_limits() == (low, high)  # back to the defaults
            for bad in (dict(high=10, low=20), dict(high=-1), dict(low=-1, high=5)):
                with pytest.raises(ValueError):
                    tr.set_write_buffer_limits(**bad)
            assert tr.get_write_buffer_limits() == (low, high)
            assert tr.get_write_buffer_size() == 0
    arun(main())


def test_pause_and_resume_writing_with_slow_reader(arun):
    chunk = b"x" * 65536

    async def main():
        loop = asyncio.get_running_loop()
        async with connected_transport() as c:
            tr, proto = c.transport, c.protocol
            tr.set_write_buffer_limits(high=256 * 1024, low=64 * 1024)
            written = 0
            # the writer obeys pause_writing: memory stays bounded by the high-water mark
            while "pause" not in proto.names():
                assert written < 256 * 1024 * 1024, "pause_writing never came"
                tr.write(chunk)
                written += len(chunk)
            assert tr.get_write_buffer_size() > 256 * 1024
            assert tr.get_write_buffer_size() <= 256 * 1024 + len(chunk)
            sizes_at_resume: list[int] = []
            orig_resume = proto.resume_writing

            def resume():
                sizes_at_resume.append(tr.get_write_buffer_size())
                orig_resume()
            proto.resume_writing = resume
            received = 0
            while "resume" not in proto.names():
                data = await loop.sock_recv(c.peer, 1 << 20)
                assert data
                received += len(data)
            assert sizes_at_resume and sizes_at_resume[0] <= 64 * 1024
            assert proto.names() == ["made", "pause", "resume"]
            received += len(await recv_exactly(c.peer, written - received))
            assert received == written
    arun(main())


def test_set_write_buffer_limits_triggers_pause_at_once(arun):
    async def main():
        async with connected_transport() as c:
            tr, proto = c.transport, c.protocol
            tr.set_write_buffer_limits(high=64 * 1024 * 1024)
            tr.write(b"y" * (16 * 1024 * 1024))
            assert "pause" not in proto.names()
            assert tr.get_write_buffer_size() > 1024
            tr.set_write_buffer_limits(high=1024)
            assert proto.names()[-1] == "pause"
    arun(main())


def test_pause_and_resume_reading(arun):
    async def main():
        loop = asyncio.get_running_loop()
        async with connected_transport() as c:
            tr, proto = c.transport, c.protocol
            assert tr.is_reading()
            tr.pause_reading()
            tr.pause_reading()  # idempotent
            assert not tr.is_reading()
            await loop.sock_sendall(c.peer, b"held")
            await asyncio.sleep(0.05)
            assert proto.data == b""
            tr.resume_reading()
            tr.resume_reading()
            assert tr.is_reading()
            assert await proto.wait_data(4) == b"held"
            tr.close()
            assert not tr.is_reading()
    arun(main())


def test_pause_reading_also_holds_eof(arun):
    async def main():
        async with connected_transport() as c:
            tr, proto = c.transport, c.protocol
            tr.pause_reading()
            c.peer.shutdown(socket.SHUT_WR)
            await asyncio.sleep(0.05)
            assert proto.names() == ["made"]
            tr.resume_reading()
            await proto.wait_lost()
            assert proto.names() == ["made", "eof", "lost"]
    arun(main())


# --------------------------------------------------------------------------
# transport: extra info and protocol switching
# --------------------------------------------------------------------------

def test_extra_info_socket(arun):
    async def main():
        async with connected_transport() as c:
            tr = c.transport
            sock = tr.get_extra_info("socket")
            assert sock.family == socket.AF_INET
            assert sock.type == socket.SOCK_STREAM
            assert sock.proto in (0, socket.IPPROTO_TCP)
            assert sock.fileno() >= 0
            assert sock.getsockname() == tr.get_extra_info("sockname") == c.peer.getpeername()
            assert sock.getpeername() == tr.get_extra_info("peername") == c.peer.getsockname()
            # asyncio's transports set TCP_NODELAY
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 0)
            assert not sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
            assert tr.get_extra_info("no such key") is None
            assert tr.get_extra_info("no such key", "dflt") == "dflt"
            assert tr.get_extra_info("sslcontext") is None
            tr.close()
            await c.protocol.wait_lost()
    arun(main())


def test_set_protocol_switches_the_receiver(arun):
    async def main():
        loop = asyncio.get_running_loop()
        async with connected_transport() as c:
            tr, first = c.transport, c.protocol
            assert tr.get_protocol() is first
            await loop.sock_sendall(c.peer, b"one")
            await first.wait_data(3)
            second = Recorder()
            tr.set_protocol(second)
            assert tr.get_protocol() is second
            await loop.sock_sendall(c.peer, b"two")
            assert await second.wait_data(3) == b"two"
            tr.close()
            await second.wait_lost()
            assert first.names() == ["made", "data"]
            assert second.names() == ["data", "lost"]  # connection_made is not re-sent
    arun(main())


class SmallBufferProtocol(asyncio.BufferedProtocol):
    def __init__(self, size: int) -> None:
        self.buf = bytearray(size)
        self.received = bytearray()
        self.updates: list[int] = []
        self.transport = None
        self.done: asyncio.Future | None = None
        self.lost: list = []

    def connection_made(self, transport):
        self.transport = transport
        self.done = asyncio.get_running_loop().create_future()

    def get_buffer(self, sizehint):
        assert isinstance(sizehint, int)
        return self.buf

    def buffer_updated(self, nbytes):
        assert 0 < nbytes <= len(self.buf)
        self.updates.append(nbytes)
        self.received += self.buf[:nbytes]

    def eof_received(self):
        self.done.set_result(bytes(self.received))

    def connection_lost(self, exc):
        self.lost.append(exc)


@pytest.mark.parametrize("size", [4, 1 << 16])
def test_buffered_protocol(arun, size):
    data = payload(100_000)

    async def main():
        loop = asyncio.get_running_loop()
        async with connected_transport(lambda: SmallBufferProtocol(size)) as c:
            await loop.sock_sendall(c.peer, data)
            c.peer.shutdown(socket.SHUT_WR)
            got = await c.protocol.done
            assert got == data
            assert max(c.protocol.updates) <= size
            await wait_until(lambda: c.protocol.lost == [None])
    arun(main())


def test_buffered_protocol_memoryview_buffer(arun):
    class MV(SmallBufferProtocol):
        def get_buffer(self, sizehint):
            return memoryview(self.buf)[:7]

    async def main():
        loop = asyncio.get_running_loop()
        async with connected_transport(lambda: MV(64)) as c:
            await loop.sock_sendall(c.peer, b"0123456789" * 3)
            c.peer.shutdown(socket.SHUT_WR)
            assert await c.protocol.done == b"0123456789" * 3
            assert max(c.protocol.updates) <= 7
    arun(main())


# --------------------------------------------------------------------------
# callbacks: context and errors
# --------------------------------------------------------------------------

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="unset")


class ContextProtocol(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, str]] = []

    def connection_made(self, transport):
        self.seen.append(("made", request_id.get()))
        super().connection_made(transport)

    def data_received(self, data):
        self.seen.append(("data", request_id.get()))
        request_id.set("changed-in-callback")
        super().data_received(data)

    def connection_lost(self, exc):
        self.seen.append(("lost", request_id.get()))
        super().connection_lost(exc)


def test_callbacks_run_in_the_creation_context(arun):
    async def main():
        loop = asyncio.get_running_loop()
        request_id.set("at-creation")
        async with connected_transport(ContextProtocol) as c:
            request_id.set("after-creation")
            await loop.sock_sendall(c.peer, b"a")
            await c.protocol.wait_data(1)
            c.peer.shutdown(socket.SHUT_WR)
            await c.protocol.wait_lost()
            assert request_id.get() == "after-creation"
            seen = c.protocol.seen
            assert seen[0] == ("made", "at-creation")
            assert ("data", "at-creation") in seen
            assert seen[-1][0] == "lost"
    arun(main())


def test_exception_in_data_received_goes_to_handler_and_closes(arun):
    boom = ZeroDivisionError("boom")

    class Faulty(Recorder):
        def data_received(self, data):
            super().data_received(data)
            raise boom

    async def main():
        loop = asyncio.get_running_loop()
        handler = ExceptionHandlerRecorder().install()
        async with connected_transport(Faulty) as c:
            await loop.sock_sendall(c.peer, b"trigger")
            exc = await c.protocol.wait_lost()
            assert exc is boom
            assert handler.exceptions == [boom]
            ctx = handler.contexts[0]
            assert ctx.get("protocol") is c.protocol
            assert ctx.get("transport") is c.transport
            assert c.transport.is_closing()
            assert await recv_until_eof(c.peer) == b""
            assert c.protocol.count("data") == 1
    arun(main())


def test_unclosed_transport_warns_when_collected(arun):
    async def main():
        loop = asyncio.get_running_loop()
        with listener() as lst:
            tr, proto = await loop.create_connection(asyncio.Protocol, *lst.getsockname())
            peer, _ = await loop.sock_accept(lst)
            with peer:
                tr.pause_reading()  # nothing in the loop needs it any more
                await asyncio.sleep(0)
                with pytest.warns(ResourceWarning, match="unclosed"):
                    del tr, proto
                    for _ in range(3):
                        gc.collect()
                # the collected transport closed its socket
                assert await recv_until_eof(peer) == b""
    with warnings.catch_warnings():
        warnings.simplefilter("always", ResourceWarning)
        arun(main())
