"""Subprocesses for pyasync_c.Loop: subprocess_exec/subprocess_shell and so
asyncio.create_subprocess_exec/_shell.

BaseEventLoop's subprocess_exec/subprocess_shell check their arguments and
call ``_make_subprocess_transport``; this mixin provides it with asyncio's own
``_UnixSubprocessTransport`` of the running Python (subprocess.Popen, pipes
connected through pyasync_c's C pipe transports), and watches for the child's
exit itself, without asyncio's child watchers (deprecated in 3.12): a pidfd
polled by the loop (Linux 5.3+), or else one waiting thread per child that
hands the exit status to the loop with call_soon_threadsafe.  The child is
reaped with waitpid(pid) on exactly its pid, so other children are left alone.
"""
from __future__ import annotations

import os
import logging
import threading
from asyncio import unix_events
from typing import TYPE_CHECKING, Any, Callable

_UnixSubprocessTransport: Any = getattr(unix_events, "_UnixSubprocessTransport")
_logger = logging.getLogger("asyncio")


def _exit_code(pid: int, blocking: bool) -> int | None:
    """Reaps pid; its returncode as asyncio reports it, None if still running."""
    try:
        reaped, status = os.waitpid(pid, 0 if blocking else os.WNOHANG)
    except ChildProcessError:
        # Reaped by someone else (e.g. a SIGCHLD handler): asyncio's watchers
        # log this and report 255.
        _logger.warning("Unknown child process pid %d, will report returncode 255", pid)
        return 255
    if reaped == 0:
        return None
    return os.waitstatus_to_exitcode(status)


class ProcessMixin:
    """``_make_subprocess_transport`` for pyasync_c.Loop."""

    if TYPE_CHECKING:
        def create_future(self) -> Any: ...
        def add_reader(self, fd: Any, callback: Callable[..., object], *args: Any) -> None: ...
        def remove_reader(self, fd: Any) -> bool: ...
        def call_soon_threadsafe(self, callback: Callable[..., object], *args: Any) -> Any: ...
        def is_closed(self) -> bool: ...

    def _init_processes(self) -> None:
        self._child_pidfds: dict[int, int] = {}  # pid -> pidfd polled by the loop

    async def _make_subprocess_transport(self, protocol: Any, args: Any, shell: bool, stdin: Any,
                                         stdout: Any, stderr: Any, bufsize: int,
                                         extra: dict[str, Any] | None = None,
                                         **kwargs: Any) -> Any:
        waiter = self.create_future()
        transport = _UnixSubprocessTransport(self, protocol, args, shell, stdin, stdout, stderr,
                                             bufsize, waiter=waiter, extra=extra, **kwargs)
        self._watch_child(transport.get_pid(), transport)
        try:
            await waiter
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException:
            transport.close()
            await transport._wait()
            raise
        return transport

    def _watch_child(self, pid: int, transport: Any) -> None:
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            pidfd = -1  # no pidfd here: a thread waits for this child
        if pidfd < 0:
            threading.Thread(target=self._wait_child_thread, args=(pid, transport),
                             name=f"pyasync_c-waitpid-{pid}", daemon=True).start()
            return
        self._child_pidfds[pid] = pidfd
        self.add_reader(pidfd, self._child_exited, pid, transport)

    def _child_exited(self, pid: int, transport: Any) -> None:
        returncode = _exit_code(pid, blocking=False)
        if returncode is None:
            return  # spurious wake-up: still running
        self._forget_child(pid)
        transport._process_exited(returncode)

    def _wait_child_thread(self, pid: int, transport: Any) -> None:
        returncode = _exit_code(pid, blocking=True)
        if not self.is_closed():
            try:
                self.call_soon_threadsafe(transport._process_exited, returncode)
            except RuntimeError:
                pass  # the loop closed meanwhile

    def _forget_child(self, pid: int) -> None:
        pidfd = self._child_pidfds.pop(pid, -1)
        if pidfd >= 0:
            self.remove_reader(pidfd)
            os.close(pidfd)

    def _close_processes(self) -> None:
        """Loop close: stop watching children still running (they are not killed,
        as with asyncio)."""
        for pid in list(self._child_pidfds):
            self._forget_child(pid)
