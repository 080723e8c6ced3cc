"""The network half of pyasync_c.Loop: the hooks asyncio.BaseEventLoop's own
orchestration calls, and the Unix-socket methods BaseEventLoop leaves out.

asyncio.BaseEventLoop already implements create_connection (happy eyeballs,
interleave, all_errors...), create_server, connect_accepted_socket,
create_datagram_endpoint, connect_read_pipe/connect_write_pipe, start_tls,
sendfile and sock_sendfile on top of a few factory hooks; this mixin provides
those hooks with pyasync_c's C transports (csrc/loop/*_transport.c):

- ``_make_socket_transport`` / ``_make_ssl_transport`` and ``start_tls`` (the
  native SSLProtocol of csrc/loop/tls_transport.c over our socket transport;
  asyncio's own with PYASYNC_C_NATIVE_TLS=0) / ``_make_datagram_transport`` /
  ``_make_read_pipe_transport`` / ``_make_write_pipe_transport``;
- ``_start_serving`` / ``_stop_serving``: accepting on a listening socket;
- ``_sock_sendfile_native`` / ``_sendfile_native``: os.sendfile() zero-copy.

It also adds create_unix_connection and create_unix_server, with the running
Python version's semantics (3.13: the socket file is removed on close).
"""
from __future__ import annotations

import errno
import functools
import inspect
import os
import socket
import _socket
import stat
import sys
from asyncio import base_events, constants, exceptions, futures, sslproto, trsock
import asyncio
import logging
from typing import TYPE_CHECKING, Any, Callable

from . import _loop

_logger = logging.getLogger("asyncio")
_ACCEPT_RESOURCE_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_UNIX_CLEANUP = sys.version_info >= (3, 13)
_raw_family: Callable[[socket.socket], int] = _socket.socket.family.__get__  # type: ignore[attr-defined]
_raw_type: Callable[[socket.socket], int] = _socket.socket.type.__get__  # type: ignore[attr-defined]
_raw_proto: Callable[[socket.socket], int] = _socket.socket.proto.__get__  # type: ignore[attr-defined]
_NODELAY_FAMILIES = (socket.AF_INET, socket.AF_INET6)
_SOCK_NONBLOCK: int = getattr(socket, "SOCK_NONBLOCK", 0)
_accept_ready = _loop.LoopCore._accept_ready
_peer_address = _loop.LoopCore._peer_address
_ipaddr_info: Callable[..., Any] = getattr(base_events, "_ipaddr_info")
_base_create_connection: Callable[..., Any] = base_events.BaseEventLoop.create_connection
# What asyncio's create_connection calls on the loop: replaced on a class or an
# instance, create_connection takes asyncio's own path so the replacement runs.
_CONNECT_HOOKS = ("sock_connect", "_sock_connect", "_ensure_resolved", "_connect_sock",
                  "_create_connection_transport", "_make_socket_transport",
                  "create_future", "getaddrinfo")
_CONNECT_HOOK_SET = frozenset(_CONNECT_HOOKS)
_SHORT_CONNECT_CLASSES: dict[type, bool] = {}
# asyncio's _ipaddr_info(host, port, 0, SOCK_STREAM, 0) for str hosts and
# int/str ports, a pure function of them asked once per connection: the last
# answer is kept (a client mostly connects to the same address again)
_last_ipaddr_info: tuple[Any, Any, Any] = (None, None, None)


def _stream_ipaddr_info(host: Any, port: Any) -> Any:
    global _last_ipaddr_info
    if type(host) is not str or (type(port) is not int and type(port) is not str):
        return _ipaddr_info(host, port, 0, socket.SOCK_STREAM, 0)
    last_host, last_port, info = _last_ipaddr_info
    if host == last_host and port == last_port and type(port) is type(last_port):
        return info
    info = _ipaddr_info(host, port, 0, socket.SOCK_STREAM, 0)
    _last_ipaddr_info = (host, port, info)
    return info


def _defined_by_us_or_asyncio(cls: type, name: str) -> bool:
    """Whether the class in cls's MRO that defines `name` is pyasync_c's or asyncio's."""
    for klass in cls.__mro__:
        if name in klass.__dict__:
            return klass.__module__.split(".")[0] in ("pyasync_c", "asyncio")
    return True


def _set_nodelay(sock: socket.socket) -> None:
    """TCP_NODELAY on TCP sockets, as asyncio does (same test, on raw ints)."""
    if (_raw_family(sock) in _NODELAY_FAMILIES and _raw_type(sock) == socket.SOCK_STREAM
            and _raw_proto(sock) == socket.IPPROTO_TCP):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
_SendfileMode: Any = getattr(constants, "_SendfileMode")

# TLS: the native layer (csrc/loop/tls_transport.c) unless PYASYNC_C_NATIVE_TLS=0,
# which selects asyncio's own SSLProtocol over our socket transport.
_NATIVE_TLS = os.environ.get("PYASYNC_C_NATIVE_TLS", "1").strip() != "0"


class TransportSocket(trsock.TransportSocket):
    """What a stream transport's get_extra_info('socket') returns: asyncio's
    TransportSocket (same methods, same checks; isinstance holds), except that
    while the connection is open getpeername() answers the address the
    transport already has and getsockname() the first answer it got, and
    `family` is read once.  anyio's SocketStream asks for the peer on every
    attribute lookup (httpcore's pool: every connection, every request), which
    is a system call each with asyncio's class.  Once the transport lets go of
    the socket (connection_lost), both go to the socket again: a closed one
    raises OSError, as asyncio's does."""

    __slots__ = ("_peername", "_sockname", "_family")
    _sock: socket.socket  # asyncio's slot (typeshed does not declare it)

    def __init__(self, sock: socket.socket, peername: Any = None) -> None:
        super().__init__(sock)
        self._peername = peername  # None: not known, ask the socket
        self._sockname: Any = None
        self._family: Any = None

    @property
    def family(self) -> Any:
        family = self._family
        if family is None:
            family = self._family = self._sock.family
        return family

    def getpeername(self) -> Any:
        peername = self._peername
        return self._sock.getpeername() if peername is None else peername

    def getsockname(self) -> Any:
        sockname = self._sockname
        if sockname is None:
            sockname = self._sock.getsockname()
            if self._peername is not None:  # still open: keep it
                self._sockname = sockname
        return sockname

    def _connection_closed(self) -> None:
        self._peername = self._sockname = None


# asyncio's loop code asks transports these questions through class attributes.
setattr(_loop.SocketTransport, "_socket_class", TransportSocket)
setattr(_loop.SocketTransport, "_start_tls_compatible", True)
setattr(_loop.SocketTransport, "_sendfile_compatible", _SendfileMode.TRY_NATIVE)
setattr(_loop.SocketTransport, "max_size", 256 * 1024)
setattr(_loop.SSLTransport, "_start_tls_compatible", True)
setattr(_loop.SSLTransport, "_sendfile_compatible", _SendfileMode.FALLBACK)


def _socket_extra(sock: socket.socket, extra: dict[str, Any] | None,
                  eager: bool) -> dict[str, Any]:
    """The extra dict of a socket transport: the peer always (it can't be asked
    after a disconnect); 'socket' and 'sockname' too when eager (datagram
    transports read them), else get_extra_info() makes them on first use."""
    info = dict(extra) if extra else {}
    if eager:
        info["socket"] = trsock.TransportSocket(sock)
        try:
            info["sockname"] = sock.getsockname()
        except OSError:
            info["sockname"] = None
    if "peername" not in info:
        try:
            # a plain socket's IP peer is read in C (socket.getpeername()
            # formats it with inet_ntop's sprintf); anything else asks it
            peer = _peer_address(sock.fileno()) if type(sock) is socket.socket else None
            info["peername"] = sock.getpeername() if peer is None else peer
        except OSError:
            info["peername"] = None
    return info


def _pipe_extra(pipe: Any, extra: dict[str, Any] | None, message: str) -> dict[str, Any]:
    """Checks pipe is a FIFO, socket or character device (ValueError(message)
    otherwise), makes it non-blocking; the extra dict with 'pipe'."""
    mode = os.fstat(pipe.fileno()).st_mode
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)):
        raise ValueError(message)
    os.set_blocking(pipe.fileno(), False)
    info = dict(extra) if extra else {}
    info["pipe"] = pipe
    return info


class NetworkMixin:
    """Transport factories and server plumbing for pyasync_c.Loop."""

    if TYPE_CHECKING:
        _debug: bool

        @property
        def _transports(self) -> dict[int, int]: ...

        def create_future(self) -> asyncio.Future[Any]: ...
        def call_exception_handler(self, context: dict[str, Any]) -> None: ...
        def add_reader(self, fd: Any, callback: Callable[..., object], *args: Any) -> None: ...
        def remove_reader(self, fd: Any) -> bool: ...
        def add_writer(self, fd: Any, callback: Callable[..., object], *args: Any) -> None: ...
        def remove_writer(self, fd: Any) -> bool: ...
        def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> Any: ...
        def is_closed(self) -> bool: ...
        async def sock_connect(self, sock: socket.socket, address: Any) -> None: ...
        async def sock_sendfile(self, sock: socket.socket, file: Any, offset: int = 0,
                                count: int | None = None, *, fallback: bool = True) -> int: ...
        async def _create_connection_transport(self, sock: socket.socket, protocol_factory: Any,
                                               ssl: Any, server_hostname: Any, server_side: bool = False,
                                               ssl_handshake_timeout: Any = None,
                                               ssl_shutdown_timeout: Any = None) -> Any: ...

    async def create_connection(self, protocol_factory: Any, host: Any = None, port: Any = None,
                                **kwargs: Any) -> tuple[Any, Any]:
        """asyncio's create_connection.  The common call -- an IP literal
        host and a port, nothing else -- takes a short path with the same
        steps and outcome as asyncio's for one address (socket, connect,
        transport, waiter; the connect error itself raised, the socket closed
        on failure): the socket is made non-blocking by socket() itself
        (SOCK_NONBLOCK) instead of two setblocking() ioctls, the peer address
        comes from the C connect's check that it finished, and the
        orchestration frames (_ensure_resolved, _connect_sock,
        _create_connection_transport) are not run.  Everything else, debug
        mode, and loops whose connection hooks are replaced (subclass or
        instance) go through asyncio's."""
        if kwargs or self._debug or not self._short_connect_ok():
            made: tuple[Any, Any] = await _base_create_connection(
                self, protocol_factory, host, port, **kwargs)
            return made
        info = _stream_ipaddr_info(host, port)
        if info is None:  # a name to look up, or no host
            made = await _base_create_connection(self, protocol_factory, host, port)
            return made
        family, sock_type, proto, _, address = info
        sock = socket.socket(family, sock_type | _SOCK_NONBLOCK, proto)
        try:
            # the peer address when the connect finished within the call
            peer = await self._core()._sock_connect(sock, address, True)
        except BaseException:
            sock.close()
            raise
        protocol = protocol_factory()
        waiter = self.create_future()
        if peer is None:
            transport = self._make_socket_transport(sock, protocol, waiter)
        else:
            transport = self._make_socket_transport(sock, protocol, waiter,
                                                    extra={"peername": peer})
        try:
            await waiter
        except BaseException:
            transport.close()
            raise
        return transport, protocol

    # introspection (inspect.signature, frameworks checking for a keyword) sees asyncio's
    setattr(create_connection, "__signature__",
            inspect.signature(base_events.BaseEventLoop.create_connection))

    def _short_connect_ok(self) -> bool:
        """True when none of the methods asyncio's create_connection goes
        through is replaced, on the class (checked once per class) or on this
        loop (a test's mock)."""
        cls = type(self)
        ok = _SHORT_CONNECT_CLASSES.get(cls)
        if ok is None:
            ok = _SHORT_CONNECT_CLASSES[cls] = all(
                _defined_by_us_or_asyncio(cls, name) for name in _CONNECT_HOOKS)
        if not ok:
            return False
        return self.__dict__.keys().isdisjoint(_CONNECT_HOOK_SET)  # looks up the 8 hooks

    def _core(self) -> Any:
        """self, typed as what it is at run time: pyasync_c.Loop (a LoopCore)."""
        return self

    def _init_network(self) -> None:
        self._unix_server_sockets: dict[socket.socket, int] = {}

    # ---- transport factories (called by BaseEventLoop) --------------------
    def _make_socket_transport(self, sock: socket.socket, protocol: Any, waiter: Any = None, *,
                               extra: dict[str, Any] | None = None, server: Any = None) -> Any:
        # an idle connection does not carry 'socket'/'sockname' (made on first use)
        info = _socket_extra(sock, extra, eager=False)
        _set_nodelay(sock)
        return _loop.SocketTransport(self._core(), sock, protocol, waiter, info, server)

    def _make_ssl_transport(self, rawsock: socket.socket, protocol: Any, sslcontext: Any,
                            waiter: Any = None, *, server_side: bool = False,
                            server_hostname: str | None = None, extra: dict[str, Any] | None = None,
                            server: Any = None,
                            ssl_handshake_timeout: float | None = constants.SSL_HANDSHAKE_TIMEOUT,
                            ssl_shutdown_timeout: float | None = constants.SSL_SHUTDOWN_TIMEOUT,
                            call_connection_made: bool = True) -> Any:
        make_protocol = _loop.SSLProtocol if _NATIVE_TLS else sslproto.SSLProtocol
        ssl_protocol = make_protocol(
            self._core(), protocol, sslcontext, waiter, server_side, server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,  # type: ignore[arg-type]
            ssl_shutdown_timeout=ssl_shutdown_timeout,  # type: ignore[arg-type]
            call_connection_made=call_connection_made)
        self._make_socket_transport(rawsock, ssl_protocol, extra=extra, server=server)
        return ssl_protocol._app_transport

    async def start_tls(self, transport: Any, protocol: Any, sslcontext: Any, *,
                        server_side: bool = False, server_hostname: str | None = None,
                        ssl_handshake_timeout: float | None = None,
                        ssl_shutdown_timeout: float | None = None) -> Any:
        """Upgrade transport to TLS (BaseEventLoop.start_tls, with the native
        SSLProtocol when enabled); returns the new transport for protocol."""
        if not _NATIVE_TLS:
            return await super().start_tls(  # type: ignore[misc]
                transport, protocol, sslcontext, server_side=server_side,
                server_hostname=server_hostname, ssl_handshake_timeout=ssl_handshake_timeout,
                ssl_shutdown_timeout=ssl_shutdown_timeout)
        import ssl
        if not isinstance(sslcontext, ssl.SSLContext):
            raise TypeError(f"sslcontext is expected to be an instance of ssl.SSLContext, "
                            f"got {sslcontext!r}")
        if not getattr(transport, "_start_tls_compatible", False):
            raise TypeError(f"transport {transport!r} is not supported by start_tls()")
        waiter = self.create_future()
        ssl_protocol = _loop.SSLProtocol(
            self._core(), protocol, sslcontext, waiter, server_side, server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout, call_connection_made=False)
        # No data_received before connection_made: reading resumes after it.
        transport.pause_reading()
        transport.set_protocol(ssl_protocol)
        made = self._core().call_soon(ssl_protocol.connection_made, transport)
        resumed = self._core().call_soon(transport.resume_reading)
        try:
            await waiter
        except BaseException:
            transport.close()
            made.cancel()
            resumed.cancel()
            raise
        return ssl_protocol._app_transport

    def _make_datagram_transport(self, sock: socket.socket, protocol: Any, address: Any = None,
                                 waiter: Any = None, extra: dict[str, Any] | None = None) -> Any:
        return _loop.DatagramTransport(self._core(), sock, protocol, address, waiter,
                                       _socket_extra(sock, extra, eager=True))

    def _make_read_pipe_transport(self, pipe: Any, protocol: Any, waiter: Any = None,
                                  extra: dict[str, Any] | None = None) -> Any:
        info = _pipe_extra(pipe, extra, "Pipe transport is for pipes/sockets only.")
        return _loop.ReadPipeTransport(self._core(), pipe, protocol, waiter, info)

    def _make_write_pipe_transport(self, pipe: Any, protocol: Any, waiter: Any = None,
                                   extra: dict[str, Any] | None = None) -> Any:
        info = _pipe_extra(pipe, extra, "Pipe transport is only for pipes, sockets and character devices")
        return _loop.WritePipeTransport(self._core(), pipe, protocol, waiter, info)

    # ---- serving ---------------------------------------------------------
    def _start_serving(self, protocol_factory: Any, sock: socket.socket, sslcontext: Any = None,
                       server: Any = None, backlog: int = 100,
                       ssl_handshake_timeout: float | None = constants.SSL_HANDSHAKE_TIMEOUT,
                       ssl_shutdown_timeout: float | None = constants.SSL_SHUTDOWN_TIMEOUT) -> None:
        self.add_reader(sock.fileno(), self._accept_connections, protocol_factory, sock,
                        sslcontext, server, backlog, ssl_handshake_timeout, ssl_shutdown_timeout)

    def _stop_serving(self, sock: socket.socket) -> None:
        path = None
        if _UNIX_CLEANUP and sock in self._unix_server_sockets:
            path = sock.getsockname()
        self.remove_reader(sock.fileno())
        sock.close()
        if path is not None:
            inode = self._unix_server_sockets.pop(sock)
            try:
                if os.stat(path).st_ino == inode:
                    os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as err:
                _logger.error("Unable to clean up listening UNIX socket %r: %r", path, err)

    def _accept_connections(self, protocol_factory: Any, sock: socket.socket, sslcontext: Any,
                            server: Any, backlog: int, ssl_handshake_timeout: Any,
                            ssl_shutdown_timeout: Any) -> None:
        # Up to `backlog` connections per readiness event, as asyncio does.
        # A plain IP socket is accepted in C (_accept_ready: accept4() with
        # SOCK_NONBLOCK, None when drained): same sockets and addresses as
        # sock.accept() + setblocking(False), without the ioctl per connection
        # and the BlockingIOError per batch.  Anything else goes through its
        # own accept(): Unix sockets, subclasses, and objects that only wrap a
        # socket (gunicorn's), whose type is checked before anything is read.
        family = _raw_family(sock) if type(sock) is socket.socket else -1
        native = family in _NODELAY_FAMILIES
        if native:
            fd = sock.fileno()
            conn_type = _raw_type(sock) | _SOCK_NONBLOCK
            proto = _raw_proto(sock)
        for _ in range(backlog):
            try:
                if native:
                    accepted = _accept_ready(fd)
                    if accepted is None:
                        return
                    conn_fd, addr = accepted
                    try:
                        conn = socket.socket(family, conn_type, proto, conn_fd)
                    except BaseException:
                        os.close(conn_fd)
                        raise
                else:
                    conn, addr = sock.accept()
                    conn.setblocking(False)
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno not in _ACCEPT_RESOURCE_ERRORS:
                    raise  # reported by the loop's exception handler; serving goes on
                # Out of fds or memory: stop accepting for a while, then retry.
                self.call_exception_handler({
                    "message": "socket.accept() out of system resource",
                    "exception": exc,
                    "socket": trsock.TransportSocket(sock),
                })
                self.remove_reader(sock.fileno())
                self.call_later(constants.ACCEPT_RETRY_DELAY, self._start_serving,
                                protocol_factory, sock, sslcontext, server, backlog,
                                ssl_handshake_timeout, ssl_shutdown_timeout)
                return
            self._serve_connection(protocol_factory, conn, {"peername": addr}, sslcontext,
                                   server, ssl_handshake_timeout, ssl_shutdown_timeout)

    def _serve_connection(self, protocol_factory: Any, conn: socket.socket, extra: dict[str, Any],
                          sslcontext: Any, server: Any, ssl_handshake_timeout: Any,
                          ssl_shutdown_timeout: Any) -> None:
        protocol = transport = None
        try:
            protocol = protocol_factory()
            if sslcontext:
                waiter = self.create_future()
                transport = self._make_ssl_transport(
                    conn, protocol, sslcontext, waiter, server_side=True, extra=extra,
                    server=server, ssl_handshake_timeout=ssl_handshake_timeout,
                    ssl_shutdown_timeout=ssl_shutdown_timeout)
                waiter.add_done_callback(functools.partial(
                    self._handshake_done, transport, protocol))
            else:
                transport = self._make_socket_transport(conn, protocol, extra=extra, server=server)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            if transport is None:
                conn.close()
            else:
                transport.close()
            self._report_accept_error(exc, protocol, transport)

    def _handshake_done(self, transport: Any, protocol: Any, waiter: asyncio.Future[Any]) -> None:
        if waiter.cancelled():
            transport.close()
            return
        exc = waiter.exception()
        if exc is not None:
            transport.close()
            self._report_accept_error(exc, protocol, transport)

    def _report_accept_error(self, exc: BaseException, protocol: Any, transport: Any) -> None:
        # asyncio reports these only in debug mode.
        if not self._debug:
            return
        context: dict[str, Any] = {
            "message": "Error on transport creation for incoming connection",
            "exception": exc,
        }
        if protocol is not None:
            context["protocol"] = protocol
        if transport is not None:
            context["transport"] = transport
        self.call_exception_handler(context)

    # ---- Unix sockets ----------------------------------------------------
    async def create_unix_connection(
            self, protocol_factory: Any, path: Any = None, *, ssl: Any = None,
            sock: socket.socket | None = None, server_hostname: str | None = None,
            ssl_handshake_timeout: float | None = None,
            ssl_shutdown_timeout: float | None = None) -> tuple[Any, Any]:
        """Connect to the Unix stream socket at path (or use sock)."""
        if server_hostname is not None and not isinstance(server_hostname, str):
            raise TypeError("server_hostname must be a str or None")
        if ssl:
            if server_hostname is None:
                raise ValueError("you have to pass server_hostname when using ssl")
        else:
            if server_hostname is not None:
                raise ValueError("server_hostname is only meaningful with ssl")
            if ssl_handshake_timeout is not None:
                raise ValueError("ssl_handshake_timeout is only meaningful with ssl")
            if ssl_shutdown_timeout is not None:
                raise ValueError("ssl_shutdown_timeout is only meaningful with ssl")
        if path is not None:
            if sock is not None:
                raise ValueError("path and sock can not be specified at the same time")
            path = os.fspath(path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0)
            try:
                sock.setblocking(False)
                await self.sock_connect(sock, path)
            except BaseException:
                sock.close()
                raise
        else:
            if sock is None:
                raise ValueError("no path and sock were specified")
            if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
                raise ValueError(f"A UNIX Domain Stream Socket was expected, got {sock!r}")
            sock.setblocking(False)
        return await self._create_connection_transport(
            sock, protocol_factory, ssl, server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout)

    async def create_unix_server(
            self, protocol_factory: Any, path: Any = None, *, sock: socket.socket | None = None,
            backlog: int = 100, ssl: Any = None, ssl_handshake_timeout: float | None = None,
            ssl_shutdown_timeout: float | None = None, start_serving: bool = True,
            **kwargs: Any) -> base_events.Server:
        """Serve protocol_factory on the Unix stream socket at path (or sock)."""
        # cleanup_socket= exists from 3.13 on, like asyncio's.
        cleanup_socket = kwargs.pop("cleanup_socket", True) if _UNIX_CLEANUP else False
        if kwargs:
            name = next(iter(kwargs))
            raise TypeError(f"create_unix_server() got an unexpected keyword argument {name!r}")
        if isinstance(ssl, bool):
            raise TypeError("ssl argument must be an SSLContext or None")
        if ssl_handshake_timeout is not None and not ssl:
            raise ValueError("ssl_handshake_timeout is only meaningful with ssl")
        if ssl_shutdown_timeout is not None and not ssl:
            raise ValueError("ssl_shutdown_timeout is only meaningful with ssl")
        if path is not None:
            if sock is not None:
                raise ValueError("path and sock can not be specified at the same time")
            path = os.fspath(path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            if path[0] not in (0, "\x00"):  # not an abstract-namespace address
                try:
                    if stat.S_ISSOCK(os.stat(path).st_mode):
                        os.remove(path)  # a stale socket file from an earlier run
                except FileNotFoundError:
                    pass
                except OSError as err:
                    _logger.error("Unable to check or remove stale UNIX socket %r: %r", path, err)
            try:
                sock.bind(path)
            except OSError as exc:
                sock.close()
                if exc.errno == errno.EADDRINUSE:
                    raise OSError(errno.EADDRINUSE, f"Address {path!r} is already in use") from None
                raise
            except BaseException:
                sock.close()
                raise
        else:
            if sock is None:
                raise ValueError("path was not specified, and no sock specified")
            if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
                raise ValueError(f"A UNIX Domain Stream Socket was expected, got {sock!r}")
        if cleanup_socket:
            bound = sock.getsockname()
            if isinstance(bound, str) and bound and bound[0] != "\x00":
                try:
                    self._unix_server_sockets[sock] = os.stat(bound).st_ino
                except FileNotFoundError:
                    pass
        sock.setblocking(False)
        server = base_events.Server(self, [sock], protocol_factory,  # type: ignore[arg-type]
                                    ssl, backlog, ssl_handshake_timeout, ssl_shutdown_timeout)
        if start_serving:
            server._start_serving()  # type: ignore[attr-defined]
            await asyncio.sleep(0)  # let the loop start accepting, as asyncio does
        return server

    # ---- sendfile ----------------------------------------------------------
    async def _sock_sendfile_native(self, sock: socket.socket, file: Any, offset: int,
                                    count: int | None) -> int:
        try:
            fileno = file.fileno()
        except (AttributeError, OSError) as err:
            raise exceptions.SendfileNotAvailableError("not a regular file") from err
        try:
            file_size = os.fstat(fileno).st_size
        except OSError:
            raise exceptions.SendfileNotAvailableError("not a regular file") from None
        # st_size is only the first block's size: /dev/zero, pipes and /proc files report 0
        # (sent only with a count, as asyncio), and a file may grow meanwhile.  So, as
        # asyncio: send `count` bytes, or without a count until os.sendfile() reports EOF.
        blocksize = count if count else file_size
        if not blocksize:
            return 0  # empty file, no count
        blocksize = min(blocksize, 0xFFFF_FFFF)
        position = offset
        total = 0
        try:
            while True:
                size = min(count - total, blocksize) if count else blocksize
                if size <= 0:
                    return total
                try:
                    sent = os.sendfile(sock.fileno(), fileno, position, size)
                except (BlockingIOError, InterruptedError):
                    await self._wait_writable(sock)
                    continue
                except OSError as exc:
                    if exc.errno == errno.ENOTCONN and type(exc) is not ConnectionError:
                        raise ConnectionError("socket is not connected", errno.ENOTCONN) from exc
                    if total == 0:
                        # e.g. a pipe or a /proc file: BaseEventLoop falls back to send().
                        raise exceptions.SendfileNotAvailableError("os.sendfile call failed") from exc
                    raise
                if sent == 0:
                    return total  # EOF
                position += sent
                total += sent
        finally:
            if total > 0:
                os.lseek(fileno, offset + total, os.SEEK_SET)

    async def _wait_writable(self, sock: socket.socket) -> None:
        waiter = self.create_future()
        fd = sock.fileno()
        self.add_writer(fd, futures._set_result_unless_cancelled,  # type: ignore[attr-defined]
                        waiter, None)
        try:
            await waiter
        finally:
            self.remove_writer(fd)

    async def _sendfile_native(self, transp: Any, file: Any, offset: int, count: int | None) -> int:
        fd = transp._sock_fd
        entry = self._transports.pop(fd, None)
        resume_reading = transp.is_reading()
        transp.pause_reading()
        await transp._make_empty_waiter()
        try:
            return await self.sock_sendfile(transp._sock, file, offset, count, fallback=False)
        finally:
            transp._reset_empty_waiter()
            if resume_reading:
                transp.resume_reading()
            if entry is not None:
                self._transports[fd] = entry

