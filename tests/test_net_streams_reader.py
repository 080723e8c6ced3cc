"""How received bytes reach asyncio's StreamReaderProtocol and StreamReader, on
both loops: pyasync_c feeds an unmodified StreamReader from C (streams_fast.c),
so these check that the reader ends in exactly asyncio's state, and that
anything replaced (subclasses, patched methods, odd limits) still runs as
written."""
from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from net_util import ExceptionHandlerRecorder, arun

__all__ = ["arun"]  # fixture, imported for pytest


async def stream_pair(limit: int | float = 2 ** 16,
                      reader_type: type = asyncio.StreamReader) -> tuple[Any, Any, socket.socket]:
    """(reader, protocol, peer): a StreamReader fed by a transport over one
    end of a socketpair; the test writes to ``peer`` (blocking)."""
    loop = asyncio.get_running_loop()
    ours, peer = socket.socketpair()
    reader = reader_type(limit=limit, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    await loop.connect_accepted_socket(lambda: protocol, ours)
    return reader, protocol, peer


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0.01)


def test_bytes_and_waiter(arun):
    async def main():
        reader, protocol, peer = await stream_pair()
        with peer:
            task = asyncio.ensure_future(reader.read(100))
            await settle()
            assert reader._waiter is not None
            peer.sendall(b"hello")
            assert await task == b"hello"
            assert reader._waiter is None
            peer.sendall(b"a" * 10)
            await settle()
            assert bytes(reader._buffer) == b"a" * 10
            assert await reader.readexactly(10) == b"a" * 10
            protocol._stream_reader_wr = None  # detached: data is dropped
            peer.sendall(b"ignored")
            await settle()
            assert bytes(reader._buffer) == b""
    arun(main())


def test_cancelled_waiter_keeps_the_data(arun):
    async def main():
        reader, _, peer = await stream_pair()
        with peer:
            task = asyncio.ensure_future(reader.read(100))
            await settle()
            waiter = reader._waiter
            waiter.cancel()
            peer.sendall(b"late")
            await settle()
            assert task.cancelled() or isinstance(task.exception(), asyncio.CancelledError)
            assert await reader.read(100) == b"late"
    arun(main())


@pytest.mark.parametrize("limit", [16, 16.5])
def test_reader_pauses_the_transport_past_twice_the_limit(arun, limit):
    async def main():
        reader, protocol, peer = await stream_pair(limit=limit)
        with peer:
            transport = protocol._transport
            peer.sendall(b"x" * 20)
            await settle()
            assert not reader._paused and transport.is_reading()
            peer.sendall(b"x" * 20)  # 40 > 2 * limit
            await settle()
            assert reader._paused
            assert not transport.is_reading()
            assert len(await reader.read(40)) == 40
            assert not reader._paused and transport.is_reading()
    arun(main())


def test_transport_that_cannot_pause_is_forgotten(arun):
    async def main():
        reader, protocol, peer = await stream_pair(limit=4)
        with peer:
            transport = protocol._transport

            def cannot_pause() -> None:
                raise NotImplementedError
            transport.pause_reading = cannot_pause
            peer.sendall(b"y" * 20)
            await settle()
            assert reader._transport is None
            assert not reader._paused
            assert await reader.read(100) == b"y" * 20
            del transport.pause_reading
    arun(main())


def test_pause_reading_error_is_a_fatal_data_received_error(arun):
    async def main():
        handler = ExceptionHandlerRecorder().install()
        reader, protocol, peer = await stream_pair(limit=4)
        with peer:
            transport = protocol._transport

            def broken() -> None:
                raise ValueError("no pausing")
            transport.pause_reading = broken
            peer.sendall(b"z" * 20)
            await settle()
            assert [type(e) for e in handler.exceptions] == [ValueError]
            assert "data_received" in handler.contexts[0]["message"]
            assert transport.is_closing()
            with pytest.raises(ValueError):
                await reader.read(100)
    arun(main())


def test_subclass_feed_data_runs(arun):
    fed: list[bytes] = []

    class Recording(asyncio.StreamReader):
        def feed_data(self, data: bytes) -> None:
            fed.append(bytes(data))
            super().feed_data(data)

    async def main():
        reader, _, peer = await stream_pair(reader_type=Recording)
        with peer:
            peer.sendall(b"sub")
            assert await reader.read(10) == b"sub"
    arun(main())
    assert fed == [b"sub"]


def test_patched_methods_run(arun):
    calls: list[str] = []

    async def main():
        reader, protocol, peer = await stream_pair()
        original_feed = reader.feed_data
        original_received = protocol.data_received

        def feed(data: bytes) -> None:
            calls.append("feed")
            original_feed(data)

        def received(data: bytes) -> None:
            calls.append("received")
            original_received(data)
        with peer:
            reader.feed_data = feed
            peer.sendall(b"one")
            assert await reader.read(10) == b"one"
            protocol.data_received = received
            peer.sendall(b"two")
            assert await reader.read(10) == b"two"
    arun(main())
    assert calls == ["feed", "received", "feed"]


def test_data_after_feed_eof_is_a_fatal_error(arun):
    async def main():
        handler = ExceptionHandlerRecorder().install()
        reader, protocol, peer = await stream_pair()
        with peer:
            reader.feed_eof()
            peer.sendall(b"after eof")
            await settle()
            assert [type(e) for e in handler.exceptions] == [AssertionError]
            assert protocol._transport is None or protocol._transport.is_closing()
    arun(main())


def test_exported_buffer_is_a_fatal_error(arun):
    async def main():
        handler = ExceptionHandlerRecorder().install()
        reader, protocol, peer = await stream_pair()
        with peer:
            peer.sendall(b"first")
            await settle()
            view = memoryview(reader._buffer)  # a resize now raises BufferError
            peer.sendall(b"second")
            await settle()
            view.release()
            assert [type(e) for e in handler.exceptions] == [BufferError]
            assert bytes(reader._buffer) == b"first"
    arun(main())
