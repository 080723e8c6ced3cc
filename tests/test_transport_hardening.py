"""Transport hardening, on both loops: read buffers not shared between loops,
writelines with hostile items, abandoned loops collected, a read pipe and a
write pipe on one fd, and transports after their loop closed or their
connection was lost.
"""
from __future__ import annotations

import asyncio
import gc
import os
import pty
import socket
import subprocess
import sys
import textwrap
import threading
import warnings
import weakref
from typing import Any

import pytest

from net_util import ExceptionHandlerRecorder, arun, recv_until_eof, wait_until

__all__ = ["arun"]  # fixture, imported for pytest

PY312 = sys.version_info >= (3, 12)


async def socket_transport(protocol: Any = asyncio.Protocol) -> tuple[Any, Any, socket.socket]:
    """A transport over one end of a socketpair; the other end, non-blocking."""
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    transport, proto = await loop.connect_accepted_socket(protocol, a)
    return transport, proto, b


def drain(sock: socket.socket) -> bytes:
    """Everything readable on a non-blocking socket right now."""
    out = bytearray()
    while True:
        try:
            chunk = sock.recv(1 << 16)
        except BlockingIOError:
            return bytes(out)
        if not chunk:
            return bytes(out)
        out += chunk


# --------------------------------------------------------------------------
# 1. one read buffer per loop
# --------------------------------------------------------------------------

def _receive_datagrams(loop_factory: Any, tag: int, count: int, size: int,
                       bad: list[Any], started: threading.Barrier) -> None:
    loop = loop_factory()
    rsock, wsock = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    for s in (rsock, wsock):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    rsock.setblocking(False)
    payload = bytes([tag]) * size
    got = [0]
    done = loop.create_future()

    class Counter(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            got[0] += 1
            if data != payload:
                bad.append((tag, len(data), data.count(tag)))
            if got[0] >= count and not done.done():
                done.set_result(None)

    def sender() -> None:
        for _ in range(count):
            wsock.send(payload)

    async def main() -> None:
        await loop.create_datagram_endpoint(Counter, sock=rsock)
        started.wait()
        thread = threading.Thread(target=sender)
        thread.start()
        try:
            await asyncio.wait_for(done, 60)
        finally:
            thread.join()

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
        wsock.close()


def test_loops_in_two_threads_never_see_each_others_datagrams(loop_factory):
    # AF_UNIX datagrams go through socket.recvfrom*(), which releases the GIL
    # while the kernel copies: with one buffer for the whole process the
    # other thread's loop wrote into it meanwhile.
    bad: list[Any] = []
    started = threading.Barrier(2)
    threads = [threading.Thread(target=_receive_datagrams,
                                args=(loop_factory, tag, 3000, 60000, bad, started))
               for tag in (ord("A"), ord("B"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert bad == []


def test_non_ip_datagrams_are_received_with_recvfrom(arun):
    # Like asyncio: sock.recvfrom(max_size) -- a fresh bytes object, so no
    # buffer of the loop is handed to Python code (a socket subclass could
    # keep it).
    calls: list[tuple[str, Any]] = []

    class Sock(socket.socket):
        def recvfrom(self, *args: Any) -> Any:
            calls.append(("recvfrom", args))
            return super().recvfrom(*args)

        def recvfrom_into(self, *args: Any) -> Any:
            calls.append(("recvfrom_into", args))
            return super().recvfrom_into(*args)

    async def main() -> list[bytes]:
        loop = asyncio.get_running_loop()
        r, w = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        rsock = Sock(socket.AF_UNIX, socket.SOCK_DGRAM, fileno=r.detach())
        rsock.setblocking(False)
        got: list[bytes] = []

        class P(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                got.append(data)

        transport, _ = await loop.create_datagram_endpoint(P, sock=rsock)
        w.send(b"one")
        w.send(b"two")
        await wait_until(lambda: len(got) == 2)
        transport.close()
        w.close()
        await asyncio.sleep(0)
        return got

    assert arun(main()) == [b"one", b"two"]
    assert {name for name, _ in calls} == {"recvfrom"}
    assert all(args == (256 * 1024,) for _, args in calls)


# --------------------------------------------------------------------------
# 2. / 10b. writelines
# --------------------------------------------------------------------------

class MutatingBuffer:
    """An item whose __buffer__ (3.12+) empties and refills the list being written."""

    def __init__(self, items: list[Any]) -> None:
        self.items = items

    def __buffer__(self, flags: int) -> memoryview:
        self.items.clear()
        for _ in range(100):
            self.items.append(bytearray(b"z" * 100))
        return memoryview(b"evil")


def test_writelines_item_mutating_the_list(arun):
    async def main() -> Any:
        transport, _, peer = await socket_transport()
        items: list[Any] = [b"x" * 10, None, b"y" * 10, b"w" * 10]
        items[1] = MutatingBuffer(items)
        try:
            transport.writelines(items)
        except TypeError as exc:
            result: Any = ("TypeError", str(exc))
        else:
            await asyncio.sleep(0.05)
            result = drain(peer)
        transport.close()
        peer.close()
        await asyncio.sleep(0)
        return result

    result = arun(main())
    if PY312:
        # asyncio iterates the live list: the items appended by __buffer__
        # from index 2 on follow
        assert result == b"x" * 10 + b"evil" + b"z" * 100 * 98
    else:
        assert result == ("TypeError", "sequence item 1: expected a bytes-like object, "
                                       "MutatingBuffer found")


def test_write_pipe_writelines_item_mutating_the_list(arun, loop_name):
    # Pipes use WriteTransport.writelines on every version: b''.join(), then write().
    if loop_name == "stdlib" and PY312:
        pytest.skip("CPython's b''.join() reads the caller's list while __buffer__ "
                    "mutates it: asyncio's writelines crashes")
    async def main() -> Any:
        loop = asyncio.get_running_loop()
        r, w = os.pipe()
        os.set_blocking(r, False)
        transport, _ = await loop.connect_write_pipe(asyncio.Protocol, open(w, "wb", buffering=0))
        items: list[Any] = [b"x" * 10, None, b"y" * 10, b"w" * 10]
        items[1] = MutatingBuffer(items)
        try:
            transport.writelines(items)
            result: Any = os.read(r, 1 << 16)
        except TypeError:
            result = "TypeError"
        transport.close()
        await asyncio.sleep(0.01)
        os.close(r)
        return result

    # ours joins a snapshot: the items present when it started
    assert arun(main()) == (b"x" * 10 + b"evil" + b"y" * 10 + b"w" * 10 if PY312 else "TypeError")


@pytest.mark.parametrize("kind", ["socket", "pipe"])
def test_writelines_failing_half_way_queues_nothing(arun, kind):
    async def main() -> tuple[Any, bytes, int, list[Any]]:
        loop = asyncio.get_running_loop()
        handler = ExceptionHandlerRecorder().install()
        if kind == "socket":
            transport, _, peer = await socket_transport()
        else:
            r, w = os.pipe()
            os.set_blocking(r, False)
            transport, _ = await loop.connect_write_pipe(asyncio.Protocol, open(w, "wb", buffering=0))
        bad = memoryview(bytearray(b"0123456789"))[::2]  # not contiguous
        try:
            transport.writelines([b"hello ", bad])
            raised: Any = None
        except Exception as exc:
            raised = type(exc)
        await asyncio.sleep(0.05)
        if kind == "socket":
            got = drain(peer)
        else:
            try:
                got = os.read(r, 100)
            except BlockingIOError:
                got = b""
        size = transport.get_write_buffer_size()
        transport.abort()
        await asyncio.sleep(0.01)
        if kind == "socket":
            peer.close()
        else:
            os.close(r)
        return raised, got, size, [type(e) for e in handler.exceptions]

    raised, got, size, errors = arun(main())
    assert got == b"" and size == 0  # nothing sent, nothing left queued
    if kind == "socket" and PY312:
        # asyncio's memoryview() takes it; sendmsg() then fails: fatal error
        assert raised is None and errors == [BufferError]
    else:
        assert raised is TypeError and errors == []


def test_writelines_of_bytes_and_bytearrays(arun):
    async def main() -> bytes:
        transport, _, peer = await socket_transport()
        chunk = bytearray(b"b" * 1000)
        transport.writelines((part for part in [b"a" * 1000, chunk, memoryview(b"c" * 1000)]))
        chunk[:] = b"X" * 1000  # written already (or copied)
        transport.close()
        data = await recv_until_eof(peer)
        peer.close()
        return data

    assert arun(main()) == b"a" * 1000 + b"b" * 1000 + b"c" * 1000


# --------------------------------------------------------------------------
# 7. abandoned loops are collected; live ones keep their connections
# --------------------------------------------------------------------------

def test_abandoned_loop_with_open_connection_is_collected(loop_factory):
    def helper() -> tuple[weakref.ref, weakref.ref, socket.socket]:
        loop = loop_factory()
        a, b = socket.socketpair()
        a.setblocking(False)
        transport, _ = loop.run_until_complete(loop.connect_accepted_socket(asyncio.Protocol, a))
        b.close()
        return weakref.ref(loop), weakref.ref(transport), a

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        refs = [helper() for _ in range(5)]
        gc.collect()
        gc.collect()
    for loop_ref, transport_ref, sock in refs:
        assert loop_ref() is None
        assert transport_ref() is None
        assert sock.fileno() == -1  # closed by the transport's finalizer


def test_abandoned_loop_warns_about_the_transport(loop_factory):
    # In a subprocess: the warnings come from the GC, whatever test runs next.
    code = textwrap.dedent(f"""
        import asyncio, gc, socket, warnings
        import pyasync_c
        warnings.simplefilter("always", ResourceWarning)
        factory = {{"stdlib": asyncio.SelectorEventLoop,
                    "pyasync_c": pyasync_c.new_event_loop}}[{loop_factory_name(loop_factory)!r}]
        def helper():
            loop = factory()
            a, b = socket.socketpair()
            a.setblocking(False)
            loop.run_until_complete(loop.connect_accepted_socket(asyncio.Protocol, a))
            b.close()
        with warnings.catch_warnings(record=True) as caught:
            helper()
            gc.collect()
        print(" ".join(set(str(w.message).split(" ")[1] for w in caught)))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0, out.stderr
    assert {"event", "transport"} <= set(out.stdout.split())  # unclosed event loop / transport


def loop_factory_name(loop_factory: Any) -> str:
    return "stdlib" if loop_factory is asyncio.SelectorEventLoop else "pyasync_c"


def test_live_loop_keeps_an_unreferenced_connection(arun):
    async def main() -> bytes:
        got: list[bytes] = []

        class Keeper(asyncio.Protocol):
            def data_received(self, data: bytes) -> None:
                got.append(data)

        transport, _, peer = await socket_transport(Keeper)
        transport_ref = weakref.ref(transport)
        del transport
        gc.collect()
        assert transport_ref() is not None
        peer.send(b"still here")
        await wait_until(lambda: got)
        transport_ref().close()  # type: ignore[union-attr]
        await asyncio.sleep(0)
        peer.close()
        return b"".join(got)

    assert arun(main()) == b"still here"


# --------------------------------------------------------------------------
# 9. a read pipe and a write pipe on the same fd
# --------------------------------------------------------------------------

def test_read_and_write_pipe_on_one_pty_master(arun):
    async def main() -> tuple[bytes, bytes]:
        loop = asyncio.get_running_loop()
        master, slave = pty.openpty()
        got: list[bytes] = []

        class Reader(asyncio.Protocol):
            def data_received(self, data: bytes) -> None:
                got.append(data)

        read_transport, _ = await loop.connect_read_pipe(
            Reader, os.fdopen(master, "rb", buffering=0, closefd=False))
        write_transport, _ = await loop.connect_write_pipe(
            asyncio.Protocol, os.fdopen(master, "wb", buffering=0, closefd=False))
        write_transport.write(b"to slave\n")
        os.write(slave, b"from slave\n")
        await wait_until(lambda: b"from slave" in b"".join(got))
        os.set_blocking(slave, False)
        slave_read = os.read(slave, 100)
        read_transport.close()
        write_transport.close()
        await asyncio.sleep(0.01)
        os.close(slave)
        os.close(master)
        return b"".join(got), slave_read

    master_read, slave_read = arun(main())
    assert b"from slave" in master_read
    assert slave_read == b"to slave\n"


def test_pipe_pair_on_one_fd_outlives_either_half(arun, loop_name):
    async def main() -> tuple[bytes, bytes]:
        loop = asyncio.get_running_loop()
        master, slave = pty.openpty()
        os.set_blocking(slave, False)
        got: list[bytes] = []

        class Reader(asyncio.Protocol):
            def data_received(self, data: bytes) -> None:
                got.append(data)

        async def pair() -> tuple[Any, Any]:
            r, _ = await loop.connect_read_pipe(Reader, os.fdopen(master, "rb", buffering=0, closefd=False))
            w, _ = await loop.connect_write_pipe(asyncio.Protocol,
                                                 os.fdopen(master, "wb", buffering=0, closefd=False))
            return r, w

        # the read half goes first: the write half still writes
        read_transport, write_transport = await pair()
        read_transport.close()
        await asyncio.sleep(0.01)
        write_transport.write(b"alone\n")
        await asyncio.sleep(0.05)
        slave_read = os.read(slave, 100)
        write_transport.close()
        await asyncio.sleep(0.01)
        # the write half goes first: the read half still reads
        read_transport, write_transport = await pair()
        write_transport.close()
        await asyncio.sleep(0.01)
        os.write(slave, b"after\n")
        await asyncio.sleep(0.05)
        read_transport.close()
        await asyncio.sleep(0.01)
        os.close(slave)
        os.close(master)
        return slave_read, b"".join(got)

    slave_read, master_read = arun(main())
    assert slave_read == b"alone\n"
    if loop_name == "pyasync_c":
        # asyncio's write pipe close() removes the fd's reader, the read pipe's
        assert master_read.endswith(b"after\r\n")  # after the pty's echo of b"alone\n"


def test_second_transport_of_the_same_kind_on_an_fd_is_refused(arun, loop_name):
    async def main() -> None:
        loop = asyncio.get_running_loop()
        r, w = os.pipe()
        first, _ = await loop.connect_read_pipe(asyncio.Protocol, open(r, "rb", buffering=0, closefd=False))
        try:
            with pytest.raises(RuntimeError, match="is used by transport"):
                await loop.connect_read_pipe(asyncio.Protocol, open(r, "rb", buffering=0, closefd=False))
        finally:
            first.close()
            await asyncio.sleep(0)
            os.close(r)
            os.close(w)

    if loop_name == "stdlib":
        pytest.skip("asyncio does not track pipe transports' fds")
    arun(main())


# --------------------------------------------------------------------------
# 10a. after loop.close()
# --------------------------------------------------------------------------

def test_transport_calls_after_loop_close(loop_factory):
    loop = loop_factory()
    a, b = socket.socketpair()
    a.setblocking(False)
    transport, _ = loop.run_until_complete(loop.connect_accepted_socket(asyncio.Protocol, a))
    loop.close()
    try:
        with pytest.raises(RuntimeError, match="Event loop is closed"):
            transport.write(b"x" * 8_000_000)
        assert transport.get_write_buffer_size() == 0
        transport.pause_reading()
        with pytest.raises(RuntimeError, match="Event loop is closed"):
            transport.resume_reading()
        with pytest.raises(RuntimeError, match="Event loop is closed"):
            transport.write(b"y" * 8_000_000)
        assert transport.get_write_buffer_size() == 0
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            a.close()
            b.close()
            del transport
            gc.collect()


def test_datagram_sendto_after_loop_close(loop_factory, tmp_path):
    loop = loop_factory()
    peer = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    peer.bind(str(tmp_path / "peer"))  # a named peer: asyncio sends with send()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.connect(str(tmp_path / "peer"))
    sock.setblocking(False)
    transport, _ = loop.run_until_complete(
        loop.create_datagram_endpoint(asyncio.DatagramProtocol, sock=sock))
    loop.close()
    try:
        transport.sendto(b"x")  # sent at once: fine
        with pytest.raises(RuntimeError, match="Event loop is closed"):
            for _ in range(100_000):  # until the peer's queue is full and one must wait
                transport.sendto(b"x" * 1000)
        assert transport.get_write_buffer_size() == 0
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            sock.close()
            peer.close()
            del transport
            gc.collect()


# --------------------------------------------------------------------------
# 10c. add_reader on the fd of a closing transport
# --------------------------------------------------------------------------

def test_add_reader_on_closing_transports_fd(arun):
    async def main() -> tuple[bool, Any, bool]:
        loop = asyncio.get_running_loop()
        lost = loop.create_future()

        class P(asyncio.Protocol):
            def connection_lost(self, exc: Exception | None) -> None:
                lost.set_result(exc)

        transport, _, peer = await socket_transport(P)
        fd = transport.get_extra_info("socket").fileno()
        payload = b"q" * 3_000_000
        transport.write(payload)  # stays queued: the peer does not read yet
        transport.close()
        readable = loop.create_future()
        loop.add_reader(fd, lambda: readable.done() or readable.set_result(True))
        peer.send(b"ping")  # makes fd readable for the new reader
        fired = await asyncio.wait_for(readable, 5)
        loop.remove_reader(fd)
        data = await recv_until_eof(peer)  # the transport still flushes, then closes
        peer.close()
        return data == payload, await asyncio.wait_for(lost, 5), fired

    assert arun(main()) == (True, None, True)


def test_add_reader_on_open_transports_fd_is_refused(arun):
    async def main() -> None:
        loop = asyncio.get_running_loop()
        transport, _, peer = await socket_transport()
        fd = transport.get_extra_info("socket").fileno()
        with pytest.raises(RuntimeError, match="is used by transport"):
            loop.add_reader(fd, lambda: None)
        transport.close()
        await asyncio.sleep(0)
        peer.close()

    arun(main())


# --------------------------------------------------------------------------
# 10e. DatagramTransport.sendto() after the connection is lost
# --------------------------------------------------------------------------

@pytest.mark.parametrize("connected", [False, True])
def test_sendto_after_connection_lost(arun, connected):
    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        handler = ExceptionHandlerRecorder().install()
        target = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        target.bind(("127.0.0.1", 0))
        address = target.getsockname()
        lost = loop.create_future()

        class P(asyncio.DatagramProtocol):
            def connection_lost(self, exc: Exception | None) -> None:
                lost.set_result(exc)

        if connected:
            transport, _ = await loop.create_datagram_endpoint(P, remote_addr=address)
        else:
            transport, _ = await loop.create_datagram_endpoint(P, local_addr=("127.0.0.1", 0))
        transport.close()
        transport.sendto(b"closing", None if connected else address)  # not lost yet: fine
        await lost
        outcomes: list[Any] = []
        for data in (b"x", b""):
            try:
                transport.sendto(data, None if connected else address)
                outcomes.append(None)
            except Exception as exc:
                outcomes.append(type(exc))
        target.close()
        return outcomes + [len(handler.contexts)]

    outcomes = arun(main())
    if connected:
        assert outcomes == [None, None, 0]
    else:
        # asyncio raises (its _fatal_error has no loop any more); empty
        # datagrams return early before 3.13
        empty = AttributeError if sys.version_info >= (3, 13) else None
        assert outcomes == [AttributeError, empty, 0]


def test_datagram_io_after_socket_forgotten(arun, loop_name):
    # `transport._sock = None` (asyncio's own tests do it): an event already
    # queued, or a sendto(), must not use the socket any more.
    if loop_name == "stdlib":
        pytest.skip("asyncio's transport then fails with AttributeErrors of its own")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        r, w = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        r.setblocking(False)
        transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, sock=r)
        loop.call_soon(w.send, b"x")
        transport._io_ready(1)  # a deferred readable event, run after the socket is gone
        transport._sock = None
        transport._io_ready(1)
        with pytest.raises(AttributeError):
            transport.sendto(b"y")
        r.close()
        w.close()

    arun(main())


def test_abandoned_loops_leave_the_fd_count_where_it_was(loop_name):
    # A fresh process, so that the first loop of the process is among the
    # abandoned ones: whatever a loop opens, the count must come back after
    # gc (libuv's process-wide signal pipe is opened at import, not by the
    # first loop).
    program = textwrap.dedent(f"""
        import asyncio, gc, os, socket, warnings
        warnings.simplefilter("ignore")
        if {loop_name!r} == "pyasync_c":
            import pyasync_c
            new_loop = pyasync_c.new_event_loop
        else:
            new_loop = asyncio.new_event_loop
        def helper():
            loop = new_loop()
            a, b = socket.socketpair()
            a.setblocking(False)
            loop.run_until_complete(loop.connect_accepted_socket(asyncio.Protocol, a))
            b.close()
        base = len(os.listdir("/proc/self/fd"))
        for _ in range(20):
            helper()
        gc.collect(); gc.collect()
        print(len(os.listdir("/proc/self/fd")) - base)
    """)
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                         timeout=60, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0"
