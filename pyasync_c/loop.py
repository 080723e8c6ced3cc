"""pyasync_c.Loop: the C core (``_loop.LoopCore``) plus asyncio's orchestration.

The hot paths — call_soon*, call_later/call_at, time, create_future,
create_task, the run loop, timers, add_reader/add_writer, sock_*, DNS — are C
methods of ``LoopCore``, which comes first in the MRO; the transports are C
types created by ``NetworkMixin`` (``_network.py``).  One-shot orchestration is
inherited from ``asyncio.BaseEventLoop`` of the running Python (run_until_complete,
exception handlers, executors, async-generator hooks, create_connection,
create_server...), so its semantics are that version's exactly.  This file adds what is specific to a
libuv loop: run_forever's bookkeeping around the C loop, close, signals, and the
small Python helpers the C core calls on rare paths.
"""
from __future__ import annotations

import asyncio
import errno
import os
import signal
import socket
import _socket
import sys
import threading
from asyncio import base_events, events, format_helpers
import logging
from typing import TYPE_CHECKING, Any, Callable, TypeVarTuple, Unpack

from . import _loop
from ._network import NetworkMixin
from ._process import ProcessMixin

__all__ = ["Loop"]

_FORMAT_TAKES_DEBUG = sys.version_info >= (3, 13)
_Ts = TypeVarTuple("_Ts")
_logger = logging.getLogger("asyncio")  # the logger asyncio's own code uses
# asyncio internals that typeshed does not declare.
_format_callback_source: Callable[..., str] = getattr(format_helpers, "_format_callback_source")
_format_handle: Callable[[Any], str] = getattr(base_events, "_format_handle")
_HAS_IPv6: bool = getattr(base_events, "_HAS_IPv6")
# The C socket's own getters: ints, without socket.socket's enum conversion.
_raw_family: Callable[[socket.socket], int] = _socket.socket.family.__get__  # type: ignore[attr-defined]
_raw_type: Callable[[socket.socket], int] = _socket.socket.type.__get__  # type: ignore[attr-defined]
_raw_proto: Callable[[socket.socket], int] = _socket.socket.proto.__get__  # type: ignore[attr-defined]


def _is_numeric(host: Any, port: Any) -> bool:
    """True for an IPv4/IPv6 literal host (str) and an int/None/digits port."""
    if not isinstance(host, str) or not (port is None or type(port) is int
                                         or (isinstance(port, str) and port.isdigit())):
        return False
    for family in _NUMERIC_FAMILIES:
        try:
            socket.inet_pton(family, host)
        except (OSError, ValueError):
            continue
        return True
    return False


_NUMERIC_FAMILIES = (socket.AF_INET, socket.AF_INET6)


# One entry per loop whose wakeup fd is installed, oldest first: [the fd it
# replaced] (see Loop._install_wakeup_fd; the entries do not keep loops alive).
_WAKEUP_STACK: list[list[int]] = []


def _sighandler_noop(signum: int, frame: object) -> None:
    """Python-level handler for add_signal_handler signals: the work is done
    by the loop when the wakeup fd reports the signal."""


class Loop(_loop.LoopCore, NetworkMixin, ProcessMixin, base_events.BaseEventLoop):  # type: ignore[misc]
    """A libuv-backed asyncio event loop."""

    if TYPE_CHECKING:  # asyncio.BaseEventLoop internals that typeshed does not declare
        _default_executor: Any
        _executor_shutdown_called: bool
        _asyncgen_firstiter_hook: Callable[..., Any]
        _asyncgen_finalizer_hook: Callable[..., Any]

        def _check_closed(self) -> None: ...
        def _check_running(self) -> None: ...
        def _set_coroutine_origin_tracking(self, enabled: bool) -> None: ...
        async def _ensure_resolved(self, address: Any, *, family: int = 0, type: int = ...,
                                   proto: int = 0, flags: int = 0, loop: Any) -> Any: ...

    def __init__(self) -> None:
        base_events.BaseEventLoop.__init__(self)
        self._init_network()
        self._init_processes()
        self._signal_handlers: dict[int, Any] = {}
        self._wakeup_installed = False
        self._wakeup_entry: list[int] | None = None  # its _WAKEUP_STACK entry
        self._old_agen_hooks: Any = None

    # ---- running -------------------------------------------------------
    def _run_forever_setup(self) -> None:
        self._check_closed()
        self._check_running()
        # In a forked child: the loop's own epoll/eventfd/signal socket (if the
        # fork hook did not run) and its lookups in flight at fork resolved again.
        self._adopt_after_fork()
        self._set_coroutine_origin_tracking(self._debug)
        self._old_agen_hooks = sys.get_asyncgen_hooks()
        self._thread_id = threading.get_ident()
        sys.set_asyncgen_hooks(firstiter=self._asyncgen_firstiter_hook,
                               finalizer=self._asyncgen_finalizer_hook)
        self._install_wakeup_fd()
        events._set_running_loop(self)

    def _run_forever_cleanup(self) -> None:
        self._stopping = False
        self._thread_id = None
        events._set_running_loop(None)
        self._set_coroutine_origin_tracking(False)
        if not self._signal_handlers:
            self._uninstall_wakeup_fd()
        if self._old_agen_hooks is not None:
            sys.set_asyncgen_hooks(*self._old_agen_hooks)
            self._old_agen_hooks = None

    def run_forever(self) -> None:
        """Run until stop() is called."""
        self._run_forever_setup()
        try:
            self._run()
        finally:
            self._run_forever_cleanup()

    def close(self) -> None:
        """Close the loop: drop pending callbacks, release libuv and the
        default executor.  The loop must not be running."""
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self.is_closed():
            return
        if self._debug:
            _logger.debug("Close %r", self)
        # A forked child (fork hook not run): the loop's own epoll first, so
        # that nothing below removes the parent's registrations.
        self._adopt_after_fork(False)
        if not sys.is_finalizing():
            for sig in list(self._signal_handlers):
                self.remove_signal_handler(sig)
        self._uninstall_wakeup_fd()
        self._close_processes()
        self._close()
        self._executor_shutdown_called = True
        executor = self._default_executor
        if executor is not None:
            self._default_executor = None
            executor.shutdown(wait=False)

    def __repr__(self) -> str:
        return (f"<{self.__class__.__name__} running={self.is_running()} "
                f"closed={self.is_closed()} debug={self.get_debug()}>")

    # ---- helpers the C core calls on rare paths ---------------------------
    def _report_callback_error(self, handle: Any, exc: BaseException) -> None:
        if _FORMAT_TAKES_DEBUG:
            source = _format_callback_source(
                handle._callback, handle._args, debug=self.get_debug())
        else:
            source = _format_callback_source(handle._callback, handle._args)
        context: dict[str, Any] = {
            "message": f"Exception in callback {source}",
            "exception": exc,
            "handle": handle,
        }
        if handle._source_traceback:
            context["source_traceback"] = handle._source_traceback
        self.call_exception_handler(context)

    def _warn_slow_callback(self, handle: asyncio.Handle, seconds: float) -> None:
        _logger.warning("Executing %s took %.3f seconds",
                                   _format_handle(handle), seconds)

    def _debug_source_traceback(self) -> Any:
        # Frame 1 is whoever called call_soon()/call_later() (C has no frame).
        return format_helpers.extract_stack(sys._getframe(1))

    def _timer_handle_cancelled(self, handle: asyncio.TimerHandle) -> None:
        """Cancelled timers leave the C heap at once; nothing to count."""

    # ---- signals ---------------------------------------------------------
    # The process has one wakeup fd.  A loop installing its own remembers the
    # one it replaced and gives it back when it uninstalls; loops installed
    # later stack on top (_WAKEUP_STACK, oldest first).  A loop leaving from
    # the middle hands what it replaced to the loop installed right after it,
    # so no loop ever puts back the fd of a loop that has since closed (which
    # would leave signal bytes going to whatever reuses that fd number).
    def _install_wakeup_fd(self) -> None:
        if self._wakeup_installed or threading.current_thread() is not threading.main_thread():
            return
        try:
            replaced = signal.set_wakeup_fd(self._signal_wakeup_fd, warn_on_full_buffer=False)
        except ValueError:  # not the main interpreter
            return
        self._wakeup_installed = True
        self._wakeup_entry = [replaced]
        _WAKEUP_STACK.append(self._wakeup_entry)

    def _uninstall_wakeup_fd(self) -> None:
        if not self._wakeup_installed:
            return
        self._wakeup_installed = False
        entry, self._wakeup_entry = self._wakeup_entry, None
        assert entry is not None
        previous = entry[0]
        index = next((i for i, other in enumerate(_WAKEUP_STACK) if other is entry), None)
        if index is not None:
            del _WAKEUP_STACK[index]
            if index < len(_WAKEUP_STACK):  # a later loop replaced ours: it inherits what we replaced
                _WAKEUP_STACK[index][0] = previous
                return
        try:
            current = signal.set_wakeup_fd(previous)
            if current != self._signal_wakeup_fd:  # someone else's is installed: keep it
                signal.set_wakeup_fd(current)
        except (ValueError, OSError):
            pass

    def _handle_signal(self, signum: int) -> None:
        handle = self._signal_handlers.get(signum)
        if handle is None:
            return
        if handle.cancelled():
            self.remove_signal_handler(signum)
        else:
            self._schedule_handle(handle)

    @staticmethod
    def _check_signal(sig: int) -> None:
        if not isinstance(sig, int):
            raise TypeError(f"sig must be an int, not {sig!r}")
        if sig not in signal.valid_signals():
            raise ValueError(f"invalid signal number {sig}")

    def add_signal_handler(self, sig: int, callback: Callable[[Unpack[_Ts]], object],
                           *args: Unpack[_Ts]) -> None:
        """Run callback(*args) on the loop whenever signal sig arrives."""
        if asyncio.iscoroutine(callback) or asyncio.iscoroutinefunction(callback):
            raise TypeError("coroutines cannot be used with add_signal_handler()")
        self._check_signal(sig)
        self._check_closed()
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("set_wakeup_fd only works in main thread of the main interpreter")
        self._install_wakeup_fd()
        handle = self._make_handle(callback, args)
        first = not self._signal_handlers
        self._signal_handlers[sig] = handle
        try:
            signal.signal(sig, _sighandler_noop)
            signal.siginterrupt(sig, False)
        except OSError as exc:
            del self._signal_handlers[sig]
            if not self._signal_handlers and not self.is_running():
                self._uninstall_wakeup_fd()
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f"sig {sig:d} cannot be caught") from None
            raise
        if first:
            self._signal_handlers_changed(1)

    def remove_signal_handler(self, sig: int) -> bool:
        """Remove the handler for signal sig; True if there was one."""
        self._check_signal(sig)
        try:
            del self._signal_handlers[sig]
        except KeyError:
            return False
        if not self._signal_handlers:
            self._signal_handlers_changed(-1)
            if not self.is_running():
                self._uninstall_wakeup_fd()
        handler = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
        try:
            signal.signal(sig, handler)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f"sig {sig:d} cannot be caught") from None
            raise
        return True

    # ---- low-level socket operations (C: sock_ops.c) ---------------------
    # Coroutines like asyncio's (so create_task()/wait_for() accept them);
    # each awaits the Future the C half returns (done at once when the
    # syscall did not block).
    async def sock_recv(self, sock: socket.socket, n: int) -> bytes:
        """Receive up to n bytes from the non-blocking socket sock."""
        return await self._sock_recv(sock, n)

    async def sock_recv_into(self, sock: socket.socket, buf: Any) -> int:
        """Receive data from sock into the writable buffer buf; the byte count."""
        return await self._sock_recv_into(sock, buf)

    async def sock_recvfrom(self, sock: socket.socket, bufsize: int) -> tuple[bytes, Any]:
        """Receive a datagram of up to bufsize bytes from sock: (data, address)."""
        return await self._sock_recvfrom(sock, bufsize)

    async def sock_recvfrom_into(self, sock: socket.socket, buf: Any,
                                 nbytes: int = 0) -> tuple[int, Any]:
        """Receive a datagram from sock into buf (nbytes=0: len(buf)): (count, address)."""
        return await self._sock_recvfrom_into(sock, buf, nbytes)

    async def sock_sendto(self, sock: socket.socket, data: Any, address: Any) -> int:
        """Send the datagram data on sock to address; the byte count."""
        return await self._sock_sendto(sock, data, address)

    async def sock_sendall(self, sock: socket.socket, data: Any) -> None:
        """Send all of data on sock."""
        return await self._sock_sendall(sock, data)

    async def sock_connect(self, sock: socket.socket, address: Any) -> None:
        """Connect sock to address; IP hosts are resolved first, as asyncio does."""
        self._sock_check(sock)
        family = _raw_family(sock)  # an int: socket.family would build an enum member
        if family == socket.AF_INET or (_HAS_IPv6 and family == socket.AF_INET6):
            infos = await self._ensure_resolved(address, family=family, type=_raw_type(sock),
                                                proto=_raw_proto(sock), loop=self)
            address = infos[0][4]
        return await self._sock_connect(sock, address)

    async def sock_accept(self, sock: socket.socket) -> tuple[socket.socket, Any]:
        """Accept a connection on the listening sock: (conn, address), conn non-blocking."""
        return await self._sock_accept(sock)

    # ---- name resolution (C: dns.c, on libuv's thread pool) ---------------
    async def getaddrinfo(self, host: Any, port: Any, *, family: int = 0, type: int = 0,
                          proto: int = 0, flags: int = 0) -> list[Any]:
        """socket.getaddrinfo(host, port, family, type, proto, flags) without blocking the loop."""
        if self._debug:  # asyncio's version logs the call and its duration
            return await base_events.BaseEventLoop.getaddrinfo(
                self, host, port, family=family, type=type, proto=proto, flags=flags)
        if _is_numeric(host, port):
            # An IP literal and a numeric port need no lookup: answered at once,
            # by the same function, without a trip through the thread pool.
            return socket.getaddrinfo(host, port, family, type, proto, flags)
        return await _loop.getaddrinfo(self, host, port, family, type, proto, flags)

    async def getnameinfo(self, sockaddr: Any, flags: int = 0) -> tuple[str, str]:
        """socket.getnameinfo(sockaddr, flags) without blocking the loop."""
        return await _loop.getnameinfo(self, sockaddr, flags)


if hasattr(os, "register_at_fork"):
    # In a forked child every pyasync_c loop gets its own epoll instance,
    # eventfd and signal socket at once, before the child's code can close or
    # run it: the parent's epoll registrations are never changed by the child.
    os.register_at_fork(after_in_child=_loop.LoopCore._forked_child)
