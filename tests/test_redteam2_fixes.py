"""Regression tests for defects found by the second red-team review.

- A socket transport whose socket object user code closed (or whose fd number
  a new socket then reused) must not send to / read from that number: asyncio
  fails with EBADF (a fatal error, connection_lost(OSError)).
- A datagram sendto() to a host with an embedded NUL is refused as the socket
  module refuses it, not sent to the part before the NUL.
- The cross-thread add_reader probe survives user code closing its fd.
- loop._transports gives no way to plant a stale transport into the loop.
"""
from __future__ import annotations

import asyncio
import errno
import os
import socket
import subprocess
import sys
import textwrap

from package_path import PACKAGE_PARENT


def _drain(*socks: socket.socket) -> list[bytes]:
    got = []
    for s in socks:
        s.setblocking(False)
        try:
            got.append(s.recv(100))
        except BlockingIOError:
            pass
    return got


class _Recorder(asyncio.Protocol):
    def __init__(self) -> None:
        self.lost: list[object] = []

    def connection_lost(self, exc: object) -> None:
        self.lost.append(exc)


def test_write_after_socket_closed_and_fd_reused(run):
    async def main():
        loop = asyncio.get_running_loop()
        handled = []
        loop.set_exception_handler(lambda l, c: handled.append(c))
        a, b = socket.socketpair()
        tr, pr = await loop.connect_accepted_socket(_Recorder, sock=a)
        fd = a.fileno()
        a.close()
        c, d = socket.socketpair()
        tr.write(b"SECRET")
        await asyncio.sleep(0.05)
        leaked = _drain(c, d)
        lost = list(pr.lost)
        tr.abort()
        for s in (b, c, d):
            s.close()
        return fd, leaked, lost

    fd, leaked, lost = run(main())
    assert leaked == []
    assert len(lost) == 1 and isinstance(lost[0], OSError)
    assert lost[0].errno == errno.EBADF


def test_get_buffer_closes_socket_and_fd_is_reused(run):
    async def main():
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda l, c: None)
        events = []
        spare = []
        a, b = socket.socketpair()

        class P(asyncio.BufferedProtocol):
            def __init__(self) -> None:
                self.buf = bytearray(64)

            def get_buffer(self, n):
                a.close()
                c, d = socket.socketpair()
                d.send(b"OTHER")
                spare.extend((c, d))
                return self.buf

            def buffer_updated(self, n):
                events.append(("updated", bytes(self.buf[:n])))

            def connection_lost(self, exc):
                events.append(("lost", type(exc).__name__ if exc else None))

        tr, pr = await loop.connect_accepted_socket(P, sock=a)
        b.send(b"hello")
        await asyncio.sleep(0.1)
        for s in [b] + spare:
            s.close()
        return events

    assert run(main()) == [("lost", "OSError")]


def test_datagram_sendto_after_socket_closed(run):
    async def main():
        loop = asyncio.get_running_loop()
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx.bind(("127.0.0.1", 0))
        errors = []

        class P(asyncio.DatagramProtocol):
            def error_received(self, exc):
                errors.append(exc)

        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        tr, pr = await loop.create_datagram_endpoint(P, sock=sock)
        sock.close()
        other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # may reuse the number
        tr.sendto(b"SECRET", rx.getsockname())
        await asyncio.sleep(0.05)
        leaked = _drain(rx)
        tr.abort()
        rx.close()
        other.close()
        return leaked, errors

    leaked, errors = run(main())
    assert leaked == []
    assert len(errors) == 1 and isinstance(errors[0], OSError)
    assert errors[0].errno == errno.EBADF


def test_udp_sendto_host_with_nul(run):
    async def main():
        loop = asyncio.get_running_loop()
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx.bind(("127.0.0.1", 0))
        port = rx.getsockname()[1]
        handled = []
        loop.set_exception_handler(lambda l, c: handled.append(c.get("exception")))
        lost = []

        class P(asyncio.DatagramProtocol):
            def connection_lost(self, exc):
                lost.append(exc)

        tr, pr = await loop.create_datagram_endpoint(P, local_addr=("127.0.0.1", 0))
        tr.sendto(b"SECRET", ("127.0.0.1\x00evil.example", port))
        await asyncio.sleep(0.1)
        leaked = _drain(rx)
        tr.close()
        rx.close()
        await asyncio.sleep(0)
        return leaked, handled, lost

    leaked, handled, lost = run(main())
    assert leaked == []
    assert len(lost) == 1 and isinstance(lost[0], TypeError)
    assert len(handled) == 1 and isinstance(handled[0], TypeError)


def _run_child(code: str, loop_name: str) -> str:
    env = dict(os.environ, PYTHONPATH=PACKAGE_PARENT)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code), loop_name],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


_NEW_LOOP = """
import asyncio, sys
def new_loop():
    if sys.argv[1] == "pyasync_c":
        import pyasync_c
        return pyasync_c.new_event_loop()
    return asyncio.new_event_loop()
"""


def test_cross_thread_add_reader_after_probe_fd_closed(loop_name):
    code = _NEW_LOOP + """
import os, socket, threading, time

def cross_thread_add_reader(loop, fd, cb):
    out = []
    def worker():
        time.sleep(0.1)
        try:
            loop.add_reader(fd, cb); out.append("ok")
        except Exception as e:
            out.append(f"{type(e).__name__}: {e}")
    t = threading.Thread(target=worker); t.start()
    return t, out

a, b = socket.socketpair()
la = new_loop()
t, out = cross_thread_add_reader(la, a.fileno(), lambda: None)
la.run_until_complete(asyncio.sleep(0.3)); t.join()
la.remove_reader(a.fileno()); la.close(); a.close(); b.close()
first = out[0]
os.closerange(3, 256)
spares = [socket.socket() for _ in range(6)]
lb = new_loop()
c, d = socket.socketpair()
async def main():
    fut = lb.create_future()
    t, out = cross_thread_add_reader(lb, c.fileno(), lambda: fut.done() or fut.set_result("readable"))
    await asyncio.sleep(0.3); t.join()
    d.send(b"x")
    try:
        r = await asyncio.wait_for(fut, 5)
    except asyncio.TimeoutError:
        r = "never readable"
    lb.remove_reader(c.fileno())
    return f"{first} {out[0]} {r}"
print(lb.run_until_complete(main()))
"""
    assert _run_child(code, loop_name) == "ok ok readable"


def test_restoring_a_transports_snapshot_is_harmless(loop_name):
    code = _NEW_LOOP + """
import gc, os, socket
async def main():
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    tr, pr = await loop.connect_accepted_socket(asyncio.Protocol, sock=a)
    fd = a.fileno()
    try:
        saved = dict(loop._transports)
    except Exception:
        saved = {}
    tr.close(); del tr, pr
    await asyncio.sleep(0.05)
    gc.collect()
    c, d = socket.socketpair()
    os.dup2(c.fileno(), fd)
    try:
        loop._transports.update(saved)
    except Exception:
        pass
    loop.add_reader(fd, lambda: None)
    loop.remove_reader(fd)
    return "add_reader ok"
loop = new_loop()
print(loop.run_until_complete(main()))
"""
    env_code = code
    env = dict(os.environ, PYTHONPATH=PACKAGE_PARENT, PYTHONMALLOC="debug")
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(env_code), loop_name],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "add_reader ok"
