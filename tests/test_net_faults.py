"""Network faults on both loops: resets, half-closes, timeouts, DNS failure,
cancellation without fd leaks, and running out of file descriptors in accept()."""
from __future__ import annotations

import asyncio
import errno
import os
import socket
import struct
import subprocess
import sys
import time

import pytest

from package_path import PACKAGE_PARENT

from net_util import (EchoProtocol, ExceptionHandlerRecorder, ProtocolCollector, Recorder, arun,
                      connected_transport, fd_leak, full_backlog, listener, nofile_soft_limit,
                      open_fds, process_fd_report, recv_exactly, recv_until_eof, server_port, tcp_server)

__all__ = ["arun"]  # fixture, imported for pytest


def reset(sock: socket.socket) -> None:
    """Close so that the peer gets a RST instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


# --------------------------------------------------------------------------
# resets and half-closes
# --------------------------------------------------------------------------

def test_peer_reset_while_reading(arun):
    async def main():
        async with connected_transport() as c:
            reset(c.peer)
            exc = await c.protocol.wait_lost()
            assert isinstance(exc, ConnectionResetError)
            assert "eof" not in c.protocol.names()
            assert c.transport.is_closing()
            c.transport.write(b"into the void")  # ignored, no exception
            await asyncio.sleep(0.01)
            assert c.protocol.count("lost") == 1
    arun(main())


def test_peer_reset_while_writing(arun):
    async def main():
        async with connected_transport() as c:
            c.transport.write(b"x" * (8 * 1024 * 1024))  # pending: the peer is not reading
            reset(c.peer)
            exc = await c.protocol.wait_lost()
            assert isinstance(exc, (ConnectionResetError, BrokenPipeError))
            assert c.protocol.count("lost") == 1
    arun(main())


def test_server_side_sees_client_reset(arun):
    async def main():
        collector = ProtocolCollector(Recorder)
        async with tcp_server(collector) as server:
            loop = asyncio.get_running_loop()
            sock = socket.socket()
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", server_port(server)))
            proto = await collector.next_made()
            await loop.sock_sendall(sock, b"then gone")
            await proto.wait_data(9)
            reset(sock)
            assert isinstance(await proto.wait_lost(), ConnectionResetError)
    arun(main())


def test_half_close_from_client(arun):
    """Client write_eof -> server eof_received (keeps writing) -> client reads to EOF."""
    class Replier(Recorder):
        def eof_received(self):
            super().eof_received()
            self.transport.write(b"got " + bytes(self.data))
            self.transport.close()
            return True

    async def main():
        loop = asyncio.get_running_loop()
        collector = ProtocolCollector(Replier)
        async with tcp_server(collector) as server:
            tr, proto = await loop.create_connection(Recorder, "127.0.0.1", server_port(server))
            tr.write(b"question")
            tr.write_eof()
            assert await proto.wait_lost() is None
            assert proto.data == b"got question"
            assert proto.names()[-2:] == ["eof", "lost"]
            sproto = collector.protocols[0]
            assert await sproto.wait_lost() is None
    arun(main())


def test_half_close_from_server(arun):
    """Server write_eof -> client eof_received returns True -> client still sends."""
    class EarlyEOF(Recorder):
        def connection_made(self, transport):
            super().connection_made(transport)
            transport.write(b"all from me")
            transport.write_eof()

    async def main():
        loop = asyncio.get_running_loop()
        collector = ProtocolCollector(EarlyEOF)
        async with tcp_server(collector) as server:
            tr, proto = await loop.create_connection(
                lambda: Recorder(eof_result=True), "127.0.0.1", server_port(server))
            await proto.wait_event("eof")
            assert proto.data == b"all from me"
            tr.write(b"but I still talk")
            sproto = await collector.next_made()
            assert await sproto.wait_data(16) == b"but I still talk"
            tr.close()
            assert await proto.wait_lost() is None
            await sproto.wait_lost()
    arun(main())


# --------------------------------------------------------------------------
# timeouts and cancellation
# --------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["wait_for", "timeout"])
def test_connect_timeout_on_full_backlog(arun, how):
    async def main():
        loop = asyncio.get_running_loop()
        full = full_backlog()
        try:
            before = open_fds()
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                if how == "wait_for":
                    await asyncio.wait_for(
                        loop.create_connection(Recorder, *full.address), 0.2)
                else:
                    async with asyncio.timeout(0.2):
                        await loop.create_connection(Recorder, *full.address)
            assert time.monotonic() - started < 3
            await asyncio.sleep(0)
            assert not fd_leak(before)
        finally:
            full.close()
    arun(main())


def test_cancel_sock_recv_leaves_no_fd_or_watcher(arun):
    async def main():
        loop = asyncio.get_running_loop()
        before = open_fds()
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        task = asyncio.ensure_future(loop.sock_recv(a, 100))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not loop.remove_reader(a)  # the cancelled recv left no watcher
        # the socket is still usable
        await loop.sock_sendall(b, b"after")
        assert await loop.sock_recv(a, 100) == b"after"
        a.close()
        b.close()
        assert not fd_leak(before)
    arun(main())


def test_cancel_sock_connect_leaves_no_watcher(arun):
    async def main():
        loop = asyncio.get_running_loop()
        full = full_backlog()
        try:
            sock = socket.socket()
            sock.setblocking(False)
            with sock:
                task = asyncio.ensure_future(loop.sock_connect(sock, full.address))
                await asyncio.sleep(0.05)
                assert not task.done()
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                assert not loop.remove_writer(sock)
        finally:
            full.close()
    arun(main())


def test_cancel_create_server_connections_leaves_no_fds(arun):
    """Clients and server closed after a cancelled batch of connects: every fd is back."""
    async def main():
        loop = asyncio.get_running_loop()
        before = open_fds()
        async with tcp_server(EchoProtocol) as server:
            port = server_port(server)
            tasks = [asyncio.ensure_future(loop.create_connection(Recorder, "127.0.0.1", port))
                     for _ in range(20)]
            await asyncio.sleep(0)
            for t in tasks[::2]:
                t.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            for r in results:
                if isinstance(r, tuple):
                    r[0].close()
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.05)
        assert not fd_leak(before)
    arun(main())


# --------------------------------------------------------------------------
# name resolution
# --------------------------------------------------------------------------

def test_dns_failure_for_invalid_tld(arun):
    try:
        started = time.monotonic()
        socket.getaddrinfo("does-not-exist.invalid", 80)
    except socket.gaierror:
        if time.monotonic() - started > 2:
            pytest.skip("the resolver is slow here")
    else:
        pytest.skip("the resolver answers for .invalid names here")

    async def main():
        loop = asyncio.get_running_loop()
        with pytest.raises(socket.gaierror):
            await loop.create_connection(Recorder, "does-not-exist.invalid", 80)
        with pytest.raises(socket.gaierror):
            await asyncio.open_connection("does-not-exist.invalid", 80)
        with pytest.raises(socket.gaierror):
            await loop.create_server(EchoProtocol, "does-not-exist.invalid", 0)
    arun(main())


# --------------------------------------------------------------------------
# out of file descriptors
# --------------------------------------------------------------------------

def test_accept_survives_running_out_of_fds(arun):
    """accept() failing with EMFILE is reported to the exception handler and retried
    later; the server serves the waiting clients once fds are available again.

    Every free descriptor is used up (none left over), so the result does not
    depend on what else in the process might open a file meanwhile."""
    n_clients = 5

    async def main():
        loop = asyncio.get_running_loop()
        handler = ExceptionHandlerRecorder().install()
        collector = ProtocolCollector(EchoProtocol)

        def emfile_reported() -> bool:
            return any(isinstance(e, OSError) and e.errno == errno.EMFILE
                       for e in handler.exceptions)

        async with tcp_server(collector, backlog=16) as server:
            addr = ("127.0.0.1", server_port(server))
            clients = [socket.socket() for _ in range(n_clients)]
            fillers: list[int] = []
            try:
                for c in clients:
                    c.setblocking(False)
                with nofile_soft_limit(max(open_fds()) + 1):
                    while True:  # use up every descriptor below the limit
                        try:
                            fillers.append(os.open(os.devnull, os.O_RDONLY))
                        except OSError as e:
                            assert e.errno == errno.EMFILE
                            break
                    for c in clients:  # completes in the kernel; accept() fails
                        await loop.sock_connect(c, addr)
                    deadline = loop.time() + 5
                    while not emfile_reported() and loop.time() < deadline:
                        await asyncio.sleep(0.01)
                    os.close(fillers.pop())  # one fd for reading /proc
                    full_fds = process_fd_report()
                for fd in fillers:
                    os.close(fd)
                fillers.clear()
                assert emfile_reported(), (handler.contexts, full_fds)
                assert len(collector.protocols) < n_clients, full_fds
                # fds are back: every waiting client is served
                for i, c in enumerate(clients):
                    await loop.sock_sendall(c, b"client %d" % i)
                    assert await recv_exactly(c, 8) == b"client %d" % i
                assert len(collector.protocols) == n_clients
            finally:
                for fd in fillers:
                    os.close(fd)
                for c in clients:
                    c.close()
    arun(main(), timeout=10)


def test_connection_refused_then_server_appears(arun):
    """A refused connection leaves nothing behind; the same address works once served."""
    async def main():
        loop = asyncio.get_running_loop()
        with listener() as probe:
            addr = probe.getsockname()
        before = open_fds()
        with pytest.raises(ConnectionRefusedError):
            await loop.create_connection(Recorder, *addr)
        assert not fd_leak(before)
        server = await loop.create_server(EchoProtocol, *addr)
        async with server:
            tr, proto = await loop.create_connection(Recorder, *addr)
            tr.write(b"now")
            assert await proto.wait_data(3) == b"now"
            tr.close()
            await proto.wait_lost()
    arun(main())


def test_eof_mid_stream_reaches_protocol_once(arun):
    async def main():
        loop = asyncio.get_running_loop()
        async with connected_transport() as c:
            await loop.sock_sendall(c.peer, b"partial")
            c.peer.shutdown(socket.SHUT_WR)
            assert await c.protocol.wait_lost() is None
            assert c.protocol.data == b"partial"
            assert c.protocol.names() == ["made", "data", "eof", "lost"]
            assert await recv_until_eof(c.peer) == b""
    arun(main())


# --------------------------------------------------------------------------
# closing a socket under a pending operation (run in a child: a crash must not
# take the test session down)
# --------------------------------------------------------------------------

CLOSE_UNDER_PENDING = r"""
import asyncio, socket, sys
import pyasync_c

async def main(op, delay):
    loop = asyncio.get_running_loop()
    if op == "accept":
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        sock.setblocking(False)
        task = asyncio.ensure_future(loop.sock_accept(sock))
    else:
        sock, other = socket.socketpair()
        sock.setblocking(False)
        task = asyncio.ensure_future(loop.sock_recv(sock, 10))
    await asyncio.sleep(delay)  # 0: the watcher was just started
    sock.close()  # under the pending operation
    await asyncio.sleep(0.05)
    task.cancel()
    try:
        await task
    except BaseException:
        pass
    print("survived")

factory = asyncio.SelectorEventLoop if sys.argv[1] == "stdlib" else pyasync_c.new_event_loop
with asyncio.Runner(loop_factory=factory) as runner:
    runner.run(main(sys.argv[2], float(sys.argv[3])))
"""


@pytest.mark.parametrize("delay", [0, 0.01], ids=["next-iteration", "later"])
@pytest.mark.parametrize("op", ["accept", "recv"])
def test_closing_a_socket_under_a_pending_operation_does_not_crash(loop_name, op, delay):
    """The stdlib shrugs (the operation just never completes); the process must not
    die, whether or not the loop has polled the fd yet."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=PACKAGE_PARENT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", CLOSE_UNDER_PENDING, loop_name, op, str(delay)],
                          env=env, cwd=root, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "survived" in proc.stdout
