"""Bad arguments to transport methods, on both loops (fixtures in conftest.py):
the same exception type as asyncio's selector transports raise, or the same
fatal-error report to the exception handler where asyncio reports instead of
raising."""
from __future__ import annotations

import array
import asyncio
import gc
import socket
import sys
import warnings
from typing import Any, Callable

import pytest

from net_util import arun

__all__ = ["arun"]


def outcome(fn: Callable[[], Any]) -> str:
    try:
        fn()
    except Exception as exc:
        return type(exc).__name__
    return "ok"


@pytest.mark.parametrize("call, expected", [
    (lambda tr: tr.write("text"), "TypeError"),
    (lambda tr: tr.write(array.array("i", [1, 2])), "TypeError"),
    (lambda tr: tr.write(5), "TypeError"),
    (lambda tr: tr.writelines(["text"]), "TypeError"),
    # 3.12+ returns at once for a falsy argument; 3.11 iterates it
    (lambda tr: tr.writelines(None), "ok" if sys.version_info >= (3, 12) else "TypeError"),
    (lambda tr: tr.writelines(x for x in [b"a", bytearray(b"b")]), "ok"),
    (lambda tr: tr.set_write_buffer_limits(high=1.5), "ok"),
    (lambda tr: tr.set_write_buffer_limits(high=-1), "ValueError"),
    (lambda tr: tr.set_write_buffer_limits(high=10, low=20), "ValueError"),
    (lambda tr: tr.set_write_buffer_limits(high="x"), "TypeError"),
    (lambda tr: tr.get_extra_info("no such key", 1), "ok"),
])
def test_stream_transport_arguments(arun, call, expected):
    async def main():
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        with b:
            transport, _ = await loop.create_connection(asyncio.Protocol, sock=a)
            try:
                assert outcome(lambda: call(transport)) == expected
            finally:
                transport.close()
    arun(main())


def test_non_contiguous_memoryview_is_a_fatal_write_error(arun):
    """asyncio accepts any memoryview in write(), then send() fails: the error
    goes to the exception handler and the connection is closed."""
    async def main():
        loop = asyncio.get_running_loop()
        reports: list[dict] = []
        loop.set_exception_handler(lambda _loop, context: reports.append(context))
        a, b = socket.socketpair()
        with b:
            transport, _ = await loop.create_connection(asyncio.Protocol, sock=a)
            transport.write(memoryview(bytes(range(10)))[::2])
            await asyncio.sleep(0.01)
            assert [r["message"] for r in reports] == ["Fatal write error on socket transport"]
            assert isinstance(reports[0]["exception"], BufferError)
            assert transport.is_closing()
    arun(main())


@pytest.mark.parametrize("address, reported", [
    ("not a tuple", "TypeError"),
    (("127.0.0.1", 70000), "OverflowError"),
    (("127.0.0.1", 9, 1), "TypeError"),
])
def test_datagram_bad_addresses_are_fatal_errors(arun, address, reported):
    async def main():
        loop = asyncio.get_running_loop()
        reports: list[dict] = []
        loop.set_exception_handler(lambda _loop, context: reports.append(context))
        transport, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
        try:
            with pytest.raises(TypeError):
                transport.sendto("text", ("127.0.0.1", 9))
            transport.sendto(b"x", address)  # reported, not raised (as asyncio)
            await asyncio.sleep(0.01)
            assert [type(r["exception"]).__name__ for r in reports] == [reported]
            assert reports[0]["message"] == "Fatal write error on datagram transport"
        finally:
            transport.close()
    arun(main())


@pytest.mark.parametrize("first", ["close", "abort"])
def test_transport_of_a_closed_loop(loop, first):
    """After loop.close(), ending a transport raises RuntimeError('Event loop is
    closed') as asyncio's call_soon does; a second attempt is a no-op."""
    a, b = socket.socketpair()
    with a, b:
        transport, _ = loop.run_until_complete(loop.create_connection(asyncio.Protocol, sock=a))
        loop.close()
        transport.write(b"x")  # still goes out: the socket is open
        assert b.recv(1) == b"x"
        with pytest.raises(RuntimeError, match="Event loop is closed"):
            getattr(transport, first)()
        assert transport.is_closing()
        transport.close()


def test_transport_resurrected_by_its_finalizer_stays_tracked(loop):
    """An unclosed transport warns with itself as the source; a recorded
    warning keeps it alive, and it must stay visible to the GC."""
    a, b = socket.socketpair()
    with a, b:
        transport, _ = loop.run_until_complete(loop.create_connection(asyncio.Protocol, sock=a))
        loop.close()
        with pytest.raises(RuntimeError, match="Event loop is closed"):
            transport.close()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            del transport
            gc.collect()
        sources = [w.source for w in caught if w.source is not None]
        assert sources
        assert all(gc.is_tracked(source) for source in sources)
