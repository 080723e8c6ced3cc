"""Shared helpers for the network behaviour tests (tests/test_net_*.py).

Each test runs on the stdlib loop and on pyasync_c's through conftest.py's
``run`` fixture.  This module adds:

- ``arun``: a fixture like ``run`` that also bounds the coroutine with
  ``asyncio.timeout`` so that a misbehaving loop fails the test instead of
  hanging the suite.
- ``tls_files`` (session fixture): a self-signed certificate for ``localhost``
  and ``127.0.0.1`` made with the ``openssl`` CLI; ``server_context`` /
  ``client_context`` build SSLContexts from it.
- ``Recorder``: a Protocol recording every callback it receives, with
  awaitable helpers (``wait_data``, ``wait_lost``...).
- ``EchoProtocol``, ``listener``, ``connected_transport``, ``full_backlog``,
  ``open_fds``...: small building blocks.

Test modules import the fixtures they use by name (``from net_util import
arun``), which registers them in that module for pytest.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import os
import resource
import select
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

T = TypeVar("T")

PY312 = sys.version_info >= (3, 12)
PY313 = sys.version_info >= (3, 13)

TEST_TIMEOUT = 10.0  # seconds, per test coroutine


# --------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------

@pytest.fixture
def arun(run: Callable[..., Any]) -> Callable[..., Any]:
    """``arun(coro, timeout=TEST_TIMEOUT, debug=False)``: ``run`` under asyncio.timeout."""
    def arun(coro: Coroutine[Any, Any, T], timeout: float = TEST_TIMEOUT,
             debug: bool = False) -> T:
        async def bounded() -> T:
            async with asyncio.timeout(timeout):
                return await coro
        return run(bounded(), debug=debug)
    return arun


async def wait_until(pred: Callable[[], bool], timeout: float = 5.0,
                     interval: float = 0.002) -> None:
    """Poll ``pred`` until it is true (fails with TimeoutError after ``timeout``)."""
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(interval)


class ExceptionHandlerRecorder:
    """A loop exception handler that keeps every context it receives."""

    def __init__(self) -> None:
        self.contexts: list[dict[str, Any]] = []

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.contexts.append(context)

    @property
    def exceptions(self) -> list[BaseException | None]:
        return [c.get("exception") for c in self.contexts]

    def install(self) -> "ExceptionHandlerRecorder":
        asyncio.get_running_loop().set_exception_handler(self)
        return self


# --------------------------------------------------------------------------
# file descriptors and limits
# --------------------------------------------------------------------------

def open_fds() -> set[int]:
    """The file descriptors open in this process right now."""
    gc.collect()
    return {int(n) for n in os.listdir("/proc/self/fd")}


def process_fd_report() -> str:
    """What holds this process's fds and which threads run: a failure message
    for tests about descriptor limits (works with no fd left: /proc is read
    through os.readlink; listing /proc needs one free fd)."""
    try:
        fds = sorted(int(n) for n in os.listdir("/proc/self/fd"))
    except OSError as e:
        return f"/proc/self/fd unreadable: {e}"
    kinds: dict[str, int] = {}
    for fd in fds:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = "?"
        kind = target.split(":")[0] if ":" in target else target
        kinds[kind] = kinds.get(kind, 0) + 1
    threads = [t.name for t in threading.enumerate()]
    try:
        native = len(os.listdir("/proc/self/task"))
    except OSError:
        native = -1
    return f"{len(fds)} fds (max {max(fds, default=-1)}) {kinds}; threads {threads}, native {native}"


def fd_leak(before: set[int]) -> set[int]:
    """fds open now that were not in ``before`` (excluding the listdir fd)."""
    return open_fds() - before


@contextlib.contextmanager
def nofile_soft_limit(soft: int) -> Iterator[None]:
    """Temporarily set RLIMIT_NOFILE's soft limit; always restored."""
    old = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, old)


# --------------------------------------------------------------------------
# sockets
# --------------------------------------------------------------------------

def listener(host: str = "127.0.0.1", backlog: int = 128,
             family: int = socket.AF_INET) -> socket.socket:
    """A non-blocking listening TCP socket on an ephemeral port."""
    srv = socket.socket(family, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, 0))
    srv.listen(backlog)
    srv.setblocking(False)
    return srv


def free_port(host: str = "127.0.0.1", type: int = socket.SOCK_STREAM) -> int:
    """A port nothing is bound to (for refused connections)."""
    with socket.socket(socket.AF_INET, type) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def refused_address() -> tuple[str, int]:
    return ("127.0.0.1", free_port())


@dataclasses.dataclass
class FullBacklog:
    """A listening socket whose accept queue is full: a further connect() blocks."""
    sock: socket.socket
    fillers: list[socket.socket]

    @property
    def address(self) -> tuple[str, int]:
        return self.sock.getsockname()

    def close(self) -> None:
        for s in self.fillers:
            s.close()
        self.sock.close()


def full_backlog() -> FullBacklog:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    fillers: list[socket.socket] = []
    for _ in range(16):
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        c.setblocking(False)
        c.connect_ex(srv.getsockname())
        fillers.append(c)
        _, writable, _ = select.select([], [c], [], 0.2)
        if not writable:  # this one is stuck in SYN-SENT: the queue is full
            return FullBacklog(srv, fillers)
    for c in fillers:
        c.close()
    srv.close()
    pytest.skip("could not fill a listen backlog on this system")


def localhost_addresses() -> list[tuple[int, str]]:
    """(family, address) of each distinct address 'localhost' resolves to."""
    seen: list[tuple[int, str]] = []
    for fam, _, _, _, addr in socket.getaddrinfo("localhost", None, type=socket.SOCK_STREAM):
        if (fam, addr[0]) not in seen:
            seen.append((fam, addr[0]))
    return seen


def has_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


async def recv_exactly(sock: socket.socket, n: int) -> bytes:
    loop = asyncio.get_running_loop()
    buf = bytearray()
    while len(buf) < n:
        chunk = await loop.sock_recv(sock, n - len(buf))
        if not chunk:
            raise EOFError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


async def recv_until_eof(sock: socket.socket, limit: int | None = None) -> bytes:
    """Read until EOF (or ConnectionResetError, which ends the data too)."""
    loop = asyncio.get_running_loop()
    buf = bytearray()
    while True:
        try:
            chunk = await loop.sock_recv(sock, 1 << 16)
        except ConnectionResetError:
            break
        if not chunk:
            break
        buf += chunk
        if limit is not None and len(buf) >= limit:
            break
    return bytes(buf)


def payload(size: int) -> bytes:
    """Deterministic, non-repeating-at-small-scale test data."""
    block = bytes((i * 7 + i // 251) & 0xFF for i in range(65521))
    reps = size // len(block) + 1
    return (block * reps)[:size]


# --------------------------------------------------------------------------
# protocols
# --------------------------------------------------------------------------

class Recorder(asyncio.Protocol):
    """Records every callback, in order, in ``events``.

    ``events`` holds tuples: ("made",), ("data", bytes), ("eof",), ("lost", exc),
    ("pause",), ("resume",).  ``eof_result`` is what eof_received returns.
    """

    def __init__(self, eof_result: bool | None = None) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.transport: Any = None
        self.data = bytearray()
        self.eof_result = eof_result
        self._changed: asyncio.Event | None = None

    # ---- callbacks
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self._record(("made",))

    def data_received(self, data: bytes) -> None:
        assert isinstance(data, bytes), type(data)
        self.data += data
        self._record(("data", data))

    def eof_received(self) -> bool | None:
        self._record(("eof",))
        return self.eof_result

    def connection_lost(self, exc: Exception | None) -> None:
        self._record(("lost", exc))

    def pause_writing(self) -> None:
        self._record(("pause",))

    def resume_writing(self) -> None:
        self._record(("resume",))

    # ---- queries
    def _record(self, event: tuple[Any, ...]) -> None:
        self.events.append(event)
        if self._changed is not None:
            self._changed.set()

    def names(self) -> list[str]:
        return [e[0] for e in self.events]

    def count(self, name: str) -> int:
        return self.names().count(name)

    @property
    def lost_exc(self) -> Exception | None:
        lost = [e[1] for e in self.events if e[0] == "lost"]
        assert len(lost) == 1, self.events
        return lost[0]

    async def wait(self, pred: Callable[[], bool], timeout: float = 5.0) -> None:
        if self._changed is None:
            self._changed = asyncio.Event()
        async with asyncio.timeout(timeout):
            while not pred():
                self._changed.clear()
                await self._changed.wait()

    async def wait_event(self, name: str, timeout: float = 5.0) -> None:
        await self.wait(lambda: name in self.names(), timeout)

    async def wait_made(self) -> None:
        await self.wait_event("made")

    async def wait_lost(self, timeout: float = 5.0) -> Exception | None:
        await self.wait_event("lost", timeout)
        return self.lost_exc

    async def wait_data(self, n: int, timeout: float = 5.0) -> bytes:
        """Wait until at least ``n`` bytes arrived in total; return all of them."""
        await self.wait(lambda: len(self.data) >= n, timeout)
        return bytes(self.data)


class EchoProtocol(Recorder):
    """Echoes what it receives; on EOF it closes (or half-closes when ``half_close``)."""

    def __init__(self, half_close: bool = False) -> None:
        super().__init__(eof_result=None)
        self.half_close = half_close

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self.transport.write(data)

    def eof_received(self) -> bool | None:
        super().eof_received()
        if self.half_close:
            self.transport.write_eof()
            return True
        return None


class DatagramRecorder(asyncio.DatagramProtocol):
    """Records datagram callbacks: ("made",), ("dgram", data, addr), ("error", exc), ("lost", exc)."""

    def __init__(self, echo: bool = False) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.transport: Any = None
        self.echo = echo
        self._changed: asyncio.Event | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self._record(("made",))

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._record(("dgram", data, addr))
        if self.echo:
            self.transport.sendto(data, addr)

    def error_received(self, exc: Exception) -> None:
        self._record(("error", exc))

    def connection_lost(self, exc: Exception | None) -> None:
        self._record(("lost", exc))

    def _record(self, event: tuple[Any, ...]) -> None:
        self.events.append(event)
        if self._changed is not None:
            self._changed.set()

    def of(self, name: str) -> list[tuple[Any, ...]]:
        return [e for e in self.events if e[0] == name]

    async def wait(self, pred: Callable[[], bool], timeout: float = 5.0) -> None:
        if self._changed is None:
            self._changed = asyncio.Event()
        async with asyncio.timeout(timeout):
            while not pred():
                self._changed.clear()
                await self._changed.wait()

    async def wait_count(self, name: str, n: int = 1, timeout: float = 5.0) -> list[tuple[Any, ...]]:
        await self.wait(lambda: len(self.of(name)) >= n, timeout)
        return self.of(name)


class ProtocolCollector:
    """A protocol factory that keeps every protocol it makes and awaits the next."""

    def __init__(self, factory: Callable[[], Any] = EchoProtocol) -> None:
        self.factory = factory
        self.protocols: list[Any] = []
        self._new: asyncio.Event | None = None

    def __call__(self) -> Any:
        proto = self.factory()
        self.protocols.append(proto)
        if self._new is not None:
            self._new.set()
        return proto

    async def wait_count(self, n: int, timeout: float = 5.0) -> list[Any]:
        if self._new is None:
            self._new = asyncio.Event()
        async with asyncio.timeout(timeout):
            while len(self.protocols) < n:
                self._new.clear()
                await self._new.wait()
        return self.protocols

    async def next_made(self, index: int = 0) -> Any:
        protos = await self.wait_count(index + 1)
        proto = protos[index]
        if isinstance(proto, Recorder):
            await proto.wait_made()
        return proto


# --------------------------------------------------------------------------
# connections
# --------------------------------------------------------------------------

@dataclasses.dataclass
class Connected:
    """A transport made by create_connection and the raw peer socket accepted for it."""
    transport: Any
    protocol: Any
    peer: socket.socket
    listener: socket.socket

    def close(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()
        self.peer.close()
        self.listener.close()


@contextlib.asynccontextmanager
async def connected_transport(
        factory: Callable[[], Any] = Recorder, **kwargs: Any) -> AsyncIterator[Connected]:
    """create_connection() to a plain listening socket; the accepted side stays a raw
    (non-blocking) socket driven with loop.sock_* so only the transport is under test."""
    loop = asyncio.get_running_loop()
    lst = listener()
    try:
        # accepted only once connected: the kernel completes the handshake from
        # the backlog, and no socket gets closed under a pending sock_accept
        transport, protocol = await loop.create_connection(factory, *lst.getsockname(), **kwargs)
        try:
            peer, _ = await loop.sock_accept(lst)
        except BaseException:
            transport.abort()
            raise
    except BaseException:
        lst.close()
        raise
    conn = Connected(transport, protocol, peer, lst)
    try:
        yield conn
    finally:
        conn.close()


@contextlib.asynccontextmanager
async def tcp_server(factory: Callable[[], Any] = EchoProtocol, host: Any = "127.0.0.1",
                     **kwargs: Any) -> AsyncIterator[asyncio.AbstractServer]:
    """loop.create_server(...) closed (and waited for) on exit."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(factory, host, 0, **kwargs)
    try:
        yield server
    finally:
        server.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2):
                await server.wait_closed()


def server_port(server: asyncio.AbstractServer, family: int = socket.AF_INET) -> int:
    for s in server.sockets:  # type: ignore[attr-defined]
        if s.family == family:
            return s.getsockname()[1]
    raise AssertionError(f"no {family!r} socket in {server.sockets!r}")  # type: ignore[attr-defined]


async def raw_client(address: Any, family: int = socket.AF_INET) -> socket.socket:
    """A non-blocking socket connected with loop.sock_connect."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, address)
    except BaseException:
        sock.close()
        raise
    return sock


# --------------------------------------------------------------------------
# TLS
# --------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TLSFiles:
    cert: Path
    key: Path


def make_self_signed(directory: Path, cn: str = "localhost") -> TLSFiles:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl CLI is needed to make a test certificate")
    cert, key = directory / f"{cn}.crt", directory / f"{cn}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", f"/CN={cn}",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True)
    return TLSFiles(cert, key)


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return make_self_signed(tmp_path_factory.mktemp("tls"))


def server_context(files: TLSFiles) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(files.cert, files.key)
    return ctx


def client_context(files: TLSFiles) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname + CERT_REQUIRED
    ctx.load_verify_locations(files.cert)
    return ctx


async def tls_connect(server: asyncio.AbstractServer, files: TLSFiles,
                      server_hostname: str = "localhost") -> tuple[Any, Any]:
    """create_connection(Recorder) over TLS to a tcp_server on 127.0.0.1."""
    return await asyncio.get_running_loop().create_connection(
        Recorder, "127.0.0.1", server_port(server), ssl=client_context(files),
        server_hostname=server_hostname)


# --------------------------------------------------------------------------
# unix sockets
# --------------------------------------------------------------------------

@pytest.fixture
def sock_path() -> Iterator[str]:
    """A short unix socket path (sun_path is limited to ~107 bytes), removed after."""
    import tempfile
    d = tempfile.mkdtemp(prefix="pyac")
    path = os.path.join(d, "s.sock")
    try:
        yield path
    finally:
        shutil.rmtree(d, ignore_errors=True)
