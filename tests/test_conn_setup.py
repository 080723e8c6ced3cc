"""Connection set-up and teardown (issue #14): the poll a sock_connect/sock_*
watcher leaves when it goes idle is taken over by the next poll of that fd
(the transport create_connection makes, the next sock_recv) while the fd is
still the same file; otherwise it is closed before the loop blocks.  Each
behaviour runs on the stdlib loop and pyasync_c's."""
from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


async def _echo_server():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()


class Collect(asyncio.Protocol):
    def __init__(self, want):
        self.want = want
        self.data = b""
        self.done = asyncio.get_running_loop().create_future()

    def data_received(self, data):
        self.data += data
        if len(self.data) >= self.want and not self.done.done():
            self.done.set_result(self.data)

    def connection_lost(self, exc):
        if not self.done.done():
            self.done.set_exception(ConnectionError("lost"))


def test_sock_connect_then_transport_same_fd(run):
    """sock_connect, then create_connection(sock=) on the same socket: the
    transport reads and writes (on pyasync_c it takes the connect watcher's poll)."""
    async def main():
        loop = asyncio.get_running_loop()
        server, addr = await _echo_server()
        results = []
        for i in range(20):
            sock = socket.socket()
            sock.setblocking(False)
            await loop.sock_connect(sock, addr)
            transport, proto = await loop.create_connection(lambda: Collect(6), sock=sock)
            transport.write(b"abc%03d" % i)
            results.append(await asyncio.wait_for(proto.done, 10))
            transport.close()
        server.close()
        await server.wait_closed()
        return results

    assert run(main()) == [b"abc%03d" % i for i in range(20)]


def test_sock_ops_then_transport_same_fd(run):
    """sock_recv/sock_sendall on a socket, then a transport on it, then back."""
    async def main():
        loop = asyncio.get_running_loop()
        server, addr = await _echo_server()
        sock = socket.socket()
        sock.setblocking(False)
        await loop.sock_connect(sock, addr)
        got = []
        for i in range(5):
            await loop.sock_sendall(sock, b"x%d" % i)
            got.append(await loop.sock_recv(sock, 10))
        transport, proto = await loop.create_connection(lambda: Collect(3), sock=sock)
        transport.write(b"end")
        got.append(await asyncio.wait_for(proto.done, 10))
        transport.close()
        server.close()
        await server.wait_closed()
        return got

    assert run(main()) == [b"x0", b"x1", b"x2", b"x3", b"x4", b"end"]


def test_cancelled_sock_connect_then_fd_reused(run):
    """sock_connect cancelled while pending; the socket closed and its fd
    number reused by a new socket, which connects and carries data."""
    async def main():
        loop = asyncio.get_running_loop()
        server, addr = await _echo_server()
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.setblocking(False)
        outcomes = []
        for _ in range(5):
            sock = socket.socket()
            sock.setblocking(False)
            task = loop.create_task(loop.sock_connect(sock, listener.getsockname()))
            await asyncio.sleep(0)  # the connect is in flight (or done: loopback is fast)
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            sock.close()
            new = socket.socket()
            new.setblocking(False)  # usually gets the closed socket's fd number
            await loop.sock_connect(new, addr)
            transport, proto = await loop.create_connection(lambda: Collect(2), sock=new)
            transport.write(b"ok")
            outcomes.append(await asyncio.wait_for(proto.done, 10))
            transport.close()
            try:
                conn, _ = listener.accept()
                conn.close()
            except BlockingIOError:
                pass
        listener.close()
        server.close()
        await server.wait_closed()
        return outcomes

    assert run(main()) == [b"ok"] * 5


def test_remove_writer_then_add_reader_same_iteration(run):
    """A writer removed and a reader added on the same fd in one callback:
    the reader fires for readable data only, the writer never again."""
    async def main():
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        calls = []
        read = loop.create_future()

        def on_writable():
            calls.append("w")
            loop.remove_writer(a)
            loop.add_reader(a, on_readable)

        def on_readable():
            calls.append("r")
            read.set_result(a.recv(10))
            loop.remove_reader(a)

        loop.add_writer(a, on_writable)
        await asyncio.sleep(0.05)
        assert calls == ["w"]
        b.send(b"hi")
        data = await asyncio.wait_for(read, 10)
        await asyncio.sleep(0.02)
        a.close()
        b.close()
        return calls, data

    assert run(main()) == (["w", "r"], b"hi")


def test_idle_writable_watcher_does_not_spin(loop, loop_name):
    """A watcher of an always-writable fd removed: the loop then sleeps
    (pyasync_c must not keep the fd polled for nobody across a blocking poll)."""
    a, b = socket.socketpair()

    async def main():
        fired = loop.create_future()

        def on_writable():
            loop.remove_writer(a)
            fired.set_result(None)

        loop.add_writer(a, on_writable)
        await fired
        before = loop.stats()["iterations_total"] if loop_name == "pyasync_c" else 0
        await asyncio.sleep(0.2)
        after = loop.stats()["iterations_total"] if loop_name == "pyasync_c" else 0
        return after - before

    try:
        assert loop.run_until_complete(main()) < 20
    finally:
        a.close()
        b.close()


def test_add_reader_on_fd_of_transport_closed_this_iteration(run):
    """add_reader on the fd of a transport closed in the same callback: allowed
    (the transport is closing), and the reader then sees the peer's data."""
    async def main():
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        transport, _ = await loop.create_connection(asyncio.Protocol, sock=a)
        dup = socket.socket(fileno=os.dup(a.fileno()))
        dup.setblocking(False)
        transport.close()
        got = loop.create_future()

        def on_readable():
            if not got.done():
                got.set_result(dup.recv(10))

        loop.add_reader(dup.fileno(), on_readable)
        b.send(b"after")
        data = await asyncio.wait_for(got, 10)
        loop.remove_reader(dup.fileno())
        dup.close()
        b.close()
        return data

    assert run(main()) == b"after"


_REUSE_SCRIPT = textwrap.dedent("""
    import asyncio, os, socket, sys, tempfile
    sys.path.insert(0, {root!r})
    name = sys.argv[1]
    if name == "pyasync_c":
        import pyasync_c
        loop = pyasync_c.new_event_loop()
    else:
        loop = asyncio.new_event_loop()

    async def main():
        a, b = socket.socketpair()
        a.setblocking(False)
        fired = loop.create_future()
        def on_writable():
            loop.remove_writer(a)
            fired.set_result(None)
        loop.add_writer(a, on_writable)
        await fired
        fd = a.fileno()
        a.close()              # the watcher's fd closed right after it went idle
        f = tempfile.TemporaryFile()
        reused = f.fileno() == fd
        try:
            loop.add_reader(f.fileno(), print)
            outcome = "added"
        except PermissionError:
            outcome = "PermissionError"
        for _ in range(3):
            await asyncio.sleep(0)
        await asyncio.sleep(0.01)
        f.close()
        b.close()
        print(reused, outcome)

    loop.run_until_complete(main())
    loop.close()
""")


def test_idle_watcher_fd_reused_by_regular_file(loop_name, tmp_path):
    """The fd of a watcher that just went idle is closed and reused by a regular
    file: add_reader on it raises PermissionError as asyncio's epoll selector
    does, and the loop goes on (libuv must never be asked to poll that file:
    it would abort; hence a subprocess)."""
    script = tmp_path / "reuse.py"
    script.write_text(_REUSE_SCRIPT.format(root=str(ROOT)))
    name = "pyasync_c" if loop_name == "pyasync_c" else "asyncio"
    proc = subprocess.run([sys.executable, str(script), name], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "PermissionError"]


_STRACE_SCRIPT = textwrap.dedent("""
    import asyncio, os, sys
    sys.path.insert(0, {root!r})
    import pyasync_c

    async def handle(reader, writer):
        while line := await reader.readline():
            writer.write(line)
        writer.close()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async def one(i):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"m%d\\n" % i)
            assert await reader.readline() == b"m%d\\n" % i
            writer.close()
            await writer.wait_closed()
        await asyncio.gather(*(one(i) for i in range({n})))
        os.access("/pyasync_c-round-2", os.F_OK)  # a marker in the trace
        await asyncio.gather(*(one(i) for i in range({n})))
        os.access("/pyasync_c-round-2-done", os.F_OK)
        server.close()
        await server.wait_closed()

    loop = pyasync_c.new_event_loop()
    loop.run_until_complete(main())
    loop.close()
""")


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_connection_epoll_ctl_count(loop_name, tmp_path):
    """pyasync_c's bookkeeping, per connection (client and server end in one
    process), counted in a second round of connections that reuse the fd
    numbers of the first (as accept()/socket() hand them out): 3 epoll_ctl
    per end -- uv_poll_start's DEL (the one failing call), ADD, and the DEL
    before the fd closes.  A fresh poll would add uv_poll_init's probe (ADD +
    DEL): each end takes over the stopped poll the previous connection on
    that fd number left (spare_polls.c)."""
    if loop_name != "pyasync_c":
        pytest.skip("pyasync_c's syscalls")
    n = 100
    script = tmp_path / "conns.py"
    script.write_text(_STRACE_SCRIPT.format(root=str(ROOT), n=n))
    out = tmp_path / "trace"
    proc = subprocess.run(["strace", "-f", "-e", "trace=epoll_ctl,access", "-o", str(out),
                           sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0 and "ptrace" in proc.stderr:
        pytest.skip("strace not permitted here")
    assert proc.returncode == 0, proc.stderr
    trace = out.read_text()
    second_round = trace[trace.index("/pyasync_c-round-2\""):trace.index("/pyasync_c-round-2-done")]
    lines = [line for line in second_round.splitlines() if "epoll_ctl(" in line]
    failing = [line for line in lines if "= -1" in line]
    assert len(lines) <= 6 * n + 20, len(lines)
    assert len(failing) <= 2 * n + 10, len(failing)


def test_no_idle_poll_left_after_run(loop, loop_name):
    """A sock_recv completes in the last iteration before the loop stops: no
    poll of pyasync_c's is left (parked) while the loop is stopped."""
    a, b = socket.socketpair()
    a.setblocking(False)

    async def main():
        loop.call_later(0.01, b.send, b"x")
        return await loop.sock_recv(a, 10)

    try:
        assert loop.run_until_complete(main()) == b"x"
        if loop_name == "pyasync_c":
            stats = loop._poll_stats
            # a parked poll keeps its record (noted); a closed one only waits
            # for its close callback
            assert stats["noted_polls"] == 0, stats
    finally:
        a.close()
        b.close()
