"""The TLS read path into a BufferedProtocol app (``get_buffer()`` /
``buffer_updated()``), on the stdlib loop (asyncio's sslproto) and on
pyasync_c's native layer: SSLObject subclasses from ``sslobject_class`` (asyncio
calls their ``read(n, buffer)``), tiny and changing buffer sizes, memoryviews
and bytearrays, and a ``get_buffer()`` that raises or returns nothing.
"""
from __future__ import annotations

import asyncio
import ssl
from typing import Any, Callable

import pytest

from net_util import (ExceptionHandlerRecorder, arun, client_context, server_context, server_port,
                      tcp_server, tls_files)

__all__ = ["arun", "tls_files"]  # fixtures, imported for pytest

DATA = bytes(range(256)) * 1200  # 300 KiB: many records, several socket reads


@pytest.fixture(autouse=True)
def native_tls(monkeypatch: pytest.MonkeyPatch, loop_name: str) -> None:
    if loop_name == "pyasync_c":
        from pyasync_c import _network
        monkeypatch.setattr(_network, "_NATIVE_TLS", True)


class Doubling(ssl.SSLObject):
    """read(n) without a buffer doubles every byte; read(n, buffer) is ssl's:
    asyncio's buffered path calls the latter, so the app gets DATA as sent."""
    buffer_args: list[bool] = []

    def read(self, n: int = 1024, buffer: Any = None) -> Any:  # type: ignore[override]
        Doubling.buffer_args.append(buffer is not None)
        if buffer is not None:
            return super().read(n, buffer)
        return bytes(b for c in super().read(n) for b in (c, c))


class PlainSubclass(ssl.SSLObject):
    pass


class Sender(asyncio.Protocol):
    """Writes `data` in 100,000-byte pieces once connected, then closes."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def connection_made(self, transport: Any) -> None:
        for i in range(0, len(self.data), 100_000):
            transport.write(self.data[i:i + 100_000])
        transport.close()


class BufferApp(asyncio.BufferedProtocol):
    """get_buffer() returns make_buffer(call number); records what arrives."""

    def __init__(self, make_buffer: Callable[[int], Any]) -> None:
        self.make_buffer = make_buffer
        self.calls = 0
        self.buffer: Any = None
        self.data = bytearray()
        self.events: list[Any] = []
        self.lost: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self.events.append("made")

    def get_buffer(self, sizehint: int) -> Any:
        assert sizehint >= 0
        self.calls += 1
        self.buffer = self.make_buffer(self.calls)
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        assert 0 < nbytes <= len(self.buffer)
        self.data += bytes(self.buffer[:nbytes])
        if self.events[-1] != "data":
            self.events.append("data")

    def eof_received(self) -> None:
        self.events.append("eof")

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append(("lost", exc))
        self.lost.set_result(exc)


async def receive(files: Any, make_buffer: Callable[[int], Any], sslobject_class: Any = None,
                  data: bytes = DATA) -> BufferApp:
    """`data` from a TLS server into a BufferApp client until connection_lost."""
    loop = asyncio.get_running_loop()
    cctx = client_context(files)
    if sslobject_class is not None:
        cctx.sslobject_class = sslobject_class
    async with tcp_server(lambda: Sender(data), ssl=server_context(files)) as srv:
        _, app = await loop.create_connection(
            lambda: BufferApp(make_buffer), "127.0.0.1", server_port(srv), ssl=cctx,
            server_hostname="localhost")
        await app.lost  # bounded by arun's timeout
    return app


def memoryviews_of(size: int) -> Callable[[int], Any]:
    return lambda call: memoryview(bytearray(size))


@pytest.mark.parametrize("size", [1, 1000, 20_000])
def test_sslobject_class_reads_into_the_app_buffer(arun, tls_files, size):
    """asyncio reads with sslobject.read(n, buffer) into get_buffer()'s buffer
    and loops: nothing beyond n is lost, and the subclass is asked with a
    buffer, never for a bytes object."""
    Doubling.buffer_args = []
    data = DATA if size > 1 else DATA[:20_000]  # one byte per loop iteration
    app = arun(receive(tls_files, memoryviews_of(size), Doubling, data), timeout=60)
    assert bytes(app.data) == data
    assert app.events == ["made", "data", "eof", ("lost", None)]
    assert Doubling.buffer_args and all(Doubling.buffer_args)


@pytest.mark.parametrize("sslobject_class", [None, PlainSubclass], ids=["SSLObject", "subclass"])
@pytest.mark.parametrize("kind", ["1", "7", "16384", "65536", "changing"])
def test_buffer_sizes_and_kinds(arun, tls_files, kind, sslobject_class):
    """Memoryviews of 1 byte, 7 bytes (records cut mid-way), one record, four
    records, and a size changing on every call: everything arrives in order."""
    if kind == "changing":
        sizes = [1, 7, 100, 5000, 70_000, 16_384, 2]

        def make_buffer(call: int) -> Any:
            return memoryview(bytearray(sizes[call % len(sizes)]))
    else:
        make_buffer = memoryviews_of(int(kind))
    data = DATA if kind not in ("1", "7") else DATA[:40_000]  # one byte per iteration
    app = arun(receive(tls_files, make_buffer, sslobject_class, data), timeout=60)
    assert bytes(app.data) == data
    assert app.events == ["made", "data", "eof", ("lost", None)]


@pytest.mark.parametrize("sslobject_class", [None, PlainSubclass], ids=["SSLObject", "subclass"])
def test_bytearray_buffer_filled_by_several_records(arun, tls_files, loop_name, sslobject_class):
    """get_buffer() returning a 64 KiB bytearray itself: several records are
    read into it per call.  asyncio reads the second one into buf[offset:],
    a copy of a bytearray, so it reports bytes that were never written there
    (CPython's sslproto); the native layer fills the buffer itself."""
    app = arun(receive(tls_files, lambda call: bytearray(65536), sslobject_class))
    assert len(app.data) == len(DATA)
    assert app.events == ["made", "data", "eof", ("lost", None)]
    if loop_name == "pyasync_c":
        assert bytes(app.data) == DATA


def test_get_buffer_raising_is_fatal(arun, tls_files):
    async def main() -> tuple[BufferApp, list[dict[str, Any]]]:
        handler = ExceptionHandlerRecorder().install()

        def make_buffer(call: int) -> Any:
            raise ZeroDivisionError("no buffer")

        app = await receive(tls_files, make_buffer)
        return app, handler.contexts

    app, contexts = arun(main())
    assert app.data == b""
    assert [e if isinstance(e, str) else e[0] for e in app.events] == ["made", "lost"]
    assert isinstance(app.events[-1][1], ZeroDivisionError)
    assert [c["message"] for c in contexts] == ["Fatal error on SSL protocol"]
    assert isinstance(contexts[0]["exception"], ZeroDivisionError)


def test_get_buffer_returning_an_empty_buffer(arun, tls_files, loop_name):
    """asyncio's read(0, buffer) returns 0, which it takes for the peer's
    close_notify (then fails on the records that follow); the native layer
    reports the app's error as our socket transport does.  Neither hangs."""
    async def main() -> tuple[BufferApp, list[dict[str, Any]]]:
        handler = ExceptionHandlerRecorder().install()
        app = await receive(tls_files, lambda call: bytearray())
        return app, handler.contexts

    app, contexts = arun(main())
    assert app.data == b""
    lost = app.events[-1][1]
    if loop_name == "pyasync_c":
        assert isinstance(lost, RuntimeError)
        assert str(lost) == "get_buffer() returned an empty buffer"
        assert [c["message"] for c in contexts] == ["Fatal error on SSL protocol"]
    else:
        assert app.events[:2] == ["made", "eof"]


class Recording(asyncio.Protocol):
    def __init__(self) -> None:
        self.data = bytearray()
        self.lost: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.data += data

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set_result(exc)


def test_incoming_flow_control_while_the_app_is_paused(arun, tls_files):
    """The app pauses reading; ciphertext piles up in the incoming BIO until the
    socket transport is paused at the high-water mark; get_read_buffer_size()
    reports it; set_read_buffer_limits() and resume_reading() let it go on,
    and everything arrives."""
    data = DATA * 3  # 900 KiB

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with tcp_server(lambda: Sender(data), ssl=server_context(tls_files)) as srv:
            tr, app = await loop.create_connection(
                Recording, "127.0.0.1", server_port(srv), ssl=client_context(tls_files),
                server_hostname="localhost")
            tr.pause_reading()
            socket_transport = tr._ssl_protocol._transport
            high = tr.get_read_buffer_limits()[1]
            async with asyncio.timeout(8):
                while socket_transport.is_reading():
                    await asyncio.sleep(0.01)
            assert tr.get_read_buffer_size() >= high
            received = len(app.data)
            await asyncio.sleep(0.1)
            assert len(app.data) == received  # nothing while paused
            tr.set_read_buffer_limits(high=16 * high)  # low = 4 * high: reading again
            assert socket_transport.is_reading()
            tr.set_read_buffer_limits(high=high)  # paused again at once
            assert not socket_transport.is_reading()
            tr.resume_reading()
            await asyncio.wait_for(app.lost, 8)
            assert bytes(app.data) == data
            assert tr.get_read_buffer_size() == 0
    arun(main())
