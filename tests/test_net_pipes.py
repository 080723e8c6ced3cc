"""loop.connect_read_pipe() / connect_write_pipe(), on both loops.

The far end of each pipe is driven with plain os.read/os.write (non-blocking, polled)
so that only the transport under test goes through the loop.
"""
from __future__ import annotations

import asyncio
import os
import socket
import tempfile
from typing import Any

import pytest

from net_util import Recorder, arun, payload

__all__ = ["arun"]  # fixture, imported for pytest


class Pipe:
    """os.pipe() with both ends wrapped in unbuffered binary file objects."""

    def __init__(self) -> None:
        r, w = os.pipe()
        self.reader = open(r, "rb", buffering=0)
        self.writer = open(w, "wb", buffering=0)

    def close(self) -> None:
        self.reader.close()
        self.writer.close()

    def __enter__(self) -> "Pipe":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


async def read_fd(fd: int, n: int | None = None) -> bytes:
    """Read ``n`` bytes (or to EOF when n is None) from a pipe fd by polling."""
    os.set_blocking(fd, False)
    buf = bytearray()
    while n is None or len(buf) < n:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            await asyncio.sleep(0.001)
            continue
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


# --------------------------------------------------------------------------
# read pipes
# --------------------------------------------------------------------------

def test_read_pipe_data_then_eof(arun):
    async def main():
        loop = asyncio.get_running_loop()
        with Pipe() as p:
            tr, proto = await loop.connect_read_pipe(Recorder, p.reader)
            assert isinstance(tr, asyncio.ReadTransport)
            assert not isinstance(tr, asyncio.WriteTransport)
            assert proto.names() == ["made"]
            assert tr.get_extra_info("pipe") is p.reader
            assert tr.is_reading()
            p.writer.write(b"first ")
            p.writer.write(b"second")
            assert await proto.wait_data(12) == b"first second"
            p.writer.close()
            assert await proto.wait_lost() is None
            assert proto.names()[-2:] == ["eof", "lost"]
            assert tr.is_closing()
            assert p.reader.closed  # the transport closed the pipe file
    arun(main())


def test_read_pipe_large_transfer(arun):
    data = payload(4 * 1024 * 1024)

    async def main():
        loop = asyncio.get_running_loop()
        with Pipe() as p:
            tr, proto = await loop.connect_read_pipe(Recorder, p.reader)
            os.set_blocking(p.writer.fileno(), False)
            view = memoryview(data)
            while view:
                try:
                    n = os.write(p.writer.fileno(), view[:65536])
                    view = view[n:]
                except BlockingIOError:
                    await asyncio.sleep(0.001)
            p.writer.close()
            await proto.wait_lost()
            assert bytes(proto.data) == data
    arun(main())


def test_read_pipe_pause_and_resume(arun):
    async def main():
        loop = asyncio.get_running_loop()
        with Pipe() as p:
            tr, proto = await loop.connect_read_pipe(Recorder, p.reader)
            tr.pause_reading()
            tr.pause_reading()
            assert not tr.is_reading()
            p.writer.write(b"held back")
            await asyncio.sleep(0.05)
            assert proto.data == b""
            tr.resume_reading()
            assert tr.is_reading()
            assert await proto.wait_data(9) == b"held back"
            tr.close()
            assert not tr.is_reading()
            assert await proto.wait_lost() is None
            assert "eof" not in proto.names()
    arun(main())


def test_read_pipe_close(arun):
    async def main():
        loop = asyncio.get_running_loop()
        with Pipe() as p:
            tr, proto = await loop.connect_read_pipe(Recorder, p.reader)
            tr.close()
            assert tr.is_closing()
            assert await proto.wait_lost() is None
            tr.close()
            await asyncio.sleep(0.01)
            assert proto.names() == ["made", "lost"]
            assert p.reader.closed
    arun(main())


def test_read_pipe_from_socket(arun):
    async def main():
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        with a, b:
            tr, proto = await loop.connect_read_pipe(Recorder, a)
            b.sendall(b"socket as pipe")
            assert await proto.wait_data(14) == b"socket as pipe"
            b.close()
            assert await proto.wait_lost() is None
    arun(main())


# --------------------------------------------------------------------------
# write pipes
# --------------------------------------------------------------------------

def test_write_pipe_data_then_close(arun):
    async def main():
        loop = asyncio.get_running_loop()
        with Pipe() as p:
            tr, proto = await loop.connect_write_pipe(Recorder, p.writer)
            assert isinstance(tr, asyncio.WriteTransport)
            assert tr.get_extra_info("pipe") is p.writer
            tr.write(b"abc")
            tr.write(bytearray(b"def"))
            tr.writelines([b"g", memoryview(b"hi")])
            assert await read_fd(p.reader.fileno(), 9) == b"abcdefghi"
            # the stdlib only asserts the type (AssertionError, nothing under -O)
            with pytest.raises((TypeError, AssertionError)):
                tr.write("text")
            assert tr.get_write_buffer_size() == 0
            tr.close()
            assert tr.is_closing()
            assert await proto.wait_lost() is None
            assert await read_fd(p.reader.fileno()) == b""
            assert p.writer.closed
    arun(main())


def test_write_pipe_close_flushes(arun):
    data = payload(2 * 1024 * 1024)  # more than a pipe buffer holds

    async def main():
        loop = asyncio.get_running_loop()
        with Pipe() as p:
            tr, proto = await loop.connect_write_pipe(Recorder, p.writer)
            tr.write(data)
            assert tr.get_write_buffer_size() > 0
            tr.close()
            await asyncio.sleep(0.02)
            assert "lost" not in proto.names()
            assert await read_fd(p.reader.fileno()) == data
            assert await proto.wait_lost() is None
    arun(main())


def test_write_pipe_write_eof(arun):
    async def main():
        loop = asyncio.get_running_loop()
        with Pipe() as p:
            tr, proto = await loop.connect_write_pipe(Recorder, p.writer)
            assert tr.can_write_eof()
            tr.write(b"end")
            tr.write_eof()
            assert tr.is_closing()
            assert await read_fd(p.reader.fileno()) == b"end"
            assert await proto.wait_lost() is None
    arun(main())


def test_write_pipe_abort_drops_data(arun):
    data = payload(2 * 1024 * 1024)

    async def main():
        loop = asyncio.get_running_loop()
        with Pipe() as p:
            tr, proto = await loop.connect_write_pipe(Recorder, p.writer)
            tr.write(data)
            tr.abort()
            assert await proto.wait_lost() is None
            assert len(await read_fd(p.reader.fileno())) < len(data)
    arun(main())


def test_write_pipe_reader_closed_while_idle(arun):
    """The reader going away with nothing buffered: connection_lost(None)."""
    async def main():
        loop = asyncio.get_running_loop()
        with Pipe() as p:
            tr, proto = await loop.connect_write_pipe(Recorder, p.writer)
            p.reader.close()
            assert await proto.wait_lost() is None
            assert tr.is_closing()
    arun(main())


def test_write_pipe_reader_closed_with_pending_data(arun):
    """The reader going away while data is buffered: connection_lost(BrokenPipeError)."""
    async def main():
        loop = asyncio.get_running_loop()
        with Pipe() as p:
            tr, proto = await loop.connect_write_pipe(Recorder, p.writer)
            tr.write(payload(1024 * 1024))
            assert tr.get_write_buffer_size() > 0
            p.reader.close()
            assert isinstance(await proto.wait_lost(), BrokenPipeError)
            assert tr.get_write_buffer_size() == 0
            tr.write(b"ignored")  # no exception after the connection is lost
    arun(main())


def test_write_pipe_flow_control(arun):
    async def main():
        loop = asyncio.get_running_loop()
        with Pipe() as p:
            tr, proto = await loop.connect_write_pipe(Recorder, p.writer)
            tr.set_write_buffer_limits(high=64 * 1024, low=16 * 1024)
            assert tr.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
            written = 0
            while "pause" not in proto.names():
                tr.write(b"z" * 8192)
                written += 8192
                assert written < 64 * 1024 * 1024
            got = 0
            fd = p.reader.fileno()
            os.set_blocking(fd, False)
            while "resume" not in proto.names():
                try:
                    got += len(os.read(fd, 1 << 16))
                except BlockingIOError:
                    await asyncio.sleep(0.001)
            got += len(await read_fd(fd, written - got))
            assert got == written
            assert proto.names() == ["made", "pause", "resume"]
    arun(main())


# --------------------------------------------------------------------------
# wrong kinds of file
# --------------------------------------------------------------------------

def test_regular_file_is_rejected(arun):
    async def main():
        loop = asyncio.get_running_loop()
        with tempfile.TemporaryFile() as f:
            with pytest.raises(ValueError):
                await loop.connect_read_pipe(Recorder, f)
            with pytest.raises(ValueError):
                await loop.connect_write_pipe(Recorder, f)
            assert not f.closed
    arun(main())


def test_pipe_pair_through_the_loop(arun):
    """A write-pipe transport feeding a read-pipe transport on the same loop."""
    data = payload(1024 * 1024)

    async def main():
        loop = asyncio.get_running_loop()
        with Pipe() as p:
            rtr, rproto = await loop.connect_read_pipe(Recorder, p.reader)
            wtr, wproto = await loop.connect_write_pipe(Recorder, p.writer)
            wtr.write(data)
            wtr.close()
            assert await rproto.wait_lost() is None
            assert bytes(rproto.data) == data
            assert rproto.names()[-2:] == ["eof", "lost"]
            assert await wproto.wait_lost() is None
    arun(main())
