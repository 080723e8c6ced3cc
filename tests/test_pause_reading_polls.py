"""pause_reading()/resume_reading() of stream transports: asyncio's semantics
(no data_received between pause and resume, the data kept for after resume,
a paused transport nobody holds is collected) on both loops; on pyasync_c a
pause/resume pair with nothing arriving meanwhile costs no epoll_ctl call
(anyio pauses after every receive: libuv's uv_poll_start/stop used to remove
and re-add the fd each time, one of the three calls failing with ENOENT), and a
closing transport removes its fd from epoll once.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


class Recorder(asyncio.Protocol):
    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.event = asyncio.Event()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.event.set()


async def _pair() -> tuple[Any, Recorder, socket.socket]:
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    a.setblocking(False)
    tr, proto = await loop.connect_accepted_socket(Recorder, a)
    return tr, proto, b


def test_no_data_while_paused_then_all_of_it(run):
    async def main():
        tr, proto, peer = await _pair()
        with peer:
            for i in range(20):
                tr.pause_reading()
                assert not tr.is_reading()
                peer.sendall(b"x%d;" % i)
                for _ in range(3):
                    await asyncio.sleep(0.001)
                assert proto.chunks == [] or b"".join(proto.chunks).endswith(b"%d;" % (i - 1))
                seen = len(b"".join(proto.chunks))
                await asyncio.sleep(0.005)
                assert len(b"".join(proto.chunks)) == seen  # nothing while paused
                proto.event.clear()
                tr.resume_reading()
                assert tr.is_reading()
                await asyncio.wait_for(proto.event.wait(), 5)
            assert b"".join(proto.chunks) == b"".join(b"x%d;" % i for i in range(20))
            tr.close()
            await asyncio.sleep(0)
    run(main())


def test_pause_resume_without_data_then_data(run):
    async def main():
        tr, proto, peer = await _pair()
        with peer:
            for _ in range(50):
                tr.pause_reading()
                await asyncio.sleep(0)
                tr.resume_reading()
                await asyncio.sleep(0)
            peer.sendall(b"hello")
            await asyncio.wait_for(proto.event.wait(), 5)
            assert proto.chunks == [b"hello"]
            # paused, data arrives, then the peer closes: EOF only after resume
            tr.pause_reading()
            peer.sendall(b"more")
            peer.shutdown(socket.SHUT_WR)
            await asyncio.sleep(0.02)
            assert proto.chunks == [b"hello"] and not tr.is_closing()
            lost = asyncio.get_running_loop().create_future()
            proto.connection_lost = lambda exc: lost.set_result(exc)  # type: ignore[method-assign]
            tr.resume_reading()
            assert await asyncio.wait_for(lost, 5) is None
            assert b"".join(proto.chunks) == b"hellomore"
    run(main())


def test_close_while_paused(run):
    async def main():
        tr, proto, peer = await _pair()
        with peer:
            tr.pause_reading()
            peer.sendall(b"ignored")
            await asyncio.sleep(0.01)
            tr.close()
            await asyncio.sleep(0.01)
            assert proto.chunks == []
            try:  # closed with unread data: the kernel resets the connection
                assert peer.recv(10) == b""
            except ConnectionResetError:
                pass
    run(main())


_COUNT_SCRIPT = textwrap.dedent("""
    import asyncio, socket, sys
    sys.path.insert(0, sys.argv[1])
    import pyasync_c

    async def main():
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        a.setblocking(False)
        tr, proto = await loop.connect_accepted_socket(asyncio.Protocol, a)
        await asyncio.sleep(0.01)
        socket.socket(socket.AF_INET).close()  # a marker in the trace
        for _ in range(200):
            tr.pause_reading()
            await asyncio.sleep(0)
            tr.resume_reading()
            await asyncio.sleep(0)
        socket.socket(socket.AF_INET).close()
        tr.close()
        await asyncio.sleep(0)
        b.close()

    with asyncio.Runner(loop_factory=pyasync_c.new_event_loop) as runner:
        runner.run(main())
""")


_CLOSE_SCRIPT = textwrap.dedent("""
    import asyncio, socket, sys
    sys.path.insert(0, sys.argv[1])
    import pyasync_c

    async def main():
        loop = asyncio.get_running_loop()
        pairs = [socket.socketpair() for _ in range(20)]
        socket.socket(socket.AF_INET).close()  # a marker in the trace
        transports = []
        for a, b in pairs:
            a.setblocking(False)
            tr, _ = await loop.connect_accepted_socket(asyncio.Protocol, a)
            transports.append(tr)
            b.sendall(b"x")
        await asyncio.sleep(0.01)
        for tr in transports:
            tr.close()
        await asyncio.sleep(0.01)
        socket.socket(socket.AF_INET).close()
        for a, b in pairs:
            b.close()

    with asyncio.Runner(loop_factory=pyasync_c.new_event_loop) as runner:
        runner.run(main())
""")


def _epoll_ctl_between_marks(tmp_path: Path, script_text: str) -> list[str]:
    """The epoll_ctl calls a script made between its last two marker sockets."""
    if shutil.which("strace") is None:
        pytest.skip("needs strace")
    script = tmp_path / "script.py"
    script.write_text(script_text)
    trace = tmp_path / "trace"
    proc = subprocess.run(["strace", "-f", "-e", "trace=epoll_ctl,socket", "-o", str(trace),
                           sys.executable, str(script), str(ROOT)],
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0 and "PTRACE" in proc.stderr:
        pytest.skip("ptrace is not permitted here")
    assert proc.returncode == 0, proc.stderr
    lines = trace.read_text().splitlines()
    marks = [i for i, line in enumerate(lines) if "socket(AF_INET" in line]
    assert len(marks) >= 2, lines[-20:]
    return [line for line in lines[marks[-2]:marks[-1]] if "epoll_ctl" in line]


def test_pause_resume_costs_no_epoll_ctl(tmp_path):
    calls = _epoll_ctl_between_marks(tmp_path, _COUNT_SCRIPT)
    # before: 200 x (DEL, DEL -> ENOENT, ADD)
    assert len(calls) <= 10, calls[:20]


def test_closing_transport_removes_its_fd_once(tmp_path):
    """A transport that stops polling for good closes its poll rather than
    stopping it first: one EPOLL_CTL_DEL at close, not two (one failing)."""
    calls = _epoll_ctl_between_marks(tmp_path, _CLOSE_SCRIPT)
    failing = [c for c in calls if "ENOENT" in c]
    # per transport, libuv's uv_poll_start() itself makes one failing DEL;
    # before: a second one at close
    assert len(failing) <= 24, failing
