"""asyncio subprocesses (create_subprocess_exec/_shell, loop.subprocess_exec
with a SubprocessProtocol) on the stdlib loop and on pyasync_c's (fixtures in
conftest.py)."""
from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

import pytest

from package_path import PACKAGE_PARENT

from net_util import arun, open_fds

__all__ = ["arun"]

PIPE = asyncio.subprocess.PIPE
PY = sys.executable


def test_communicate_and_returncode(arun):
    async def main():
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", "import sys; d = sys.stdin.read(); print(d.upper()); "
                      "print('err', file=sys.stderr); sys.exit(7)",
            stdin=PIPE, stdout=PIPE, stderr=PIPE)
        out, err = await proc.communicate(b"hello")
        assert (out, err, proc.returncode) == (b"HELLO\n", b"err\n", 7)
    arun(main())


def test_shell_and_stderr_to_stdout(arun):
    async def main():
        proc = await asyncio.create_subprocess_shell(
            "echo out; echo err 1>&2; exit 3", stdout=PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        assert sorted(out.split()) == [b"err", b"out"]
        assert proc.returncode == 3
    arun(main())


def test_large_output_through_the_pipe(arun):
    async def main():
        size = 4 * 1024 * 1024
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", f"import sys; sys.stdout.buffer.write(b'x' * {size})", stdout=PIPE)
        data = await proc.stdout.read()
        assert len(data) == size
        assert await proc.wait() == 0
    arun(main())


def test_interactive_stdin_stdout(arun):
    async def main():
        proc = await asyncio.create_subprocess_exec(
            PY, "-u", "-c", "import sys\nfor line in sys.stdin: print(line.strip()[::-1], flush=True)",
            stdin=PIPE, stdout=PIPE)
        for word in (b"abc", b"hello", b"pyasync"):
            proc.stdin.write(word + b"\n")
            await proc.stdin.drain()
            assert await proc.stdout.readline() == word[::-1] + b"\n"
        proc.stdin.close()
        assert await proc.wait() == 0
    arun(main())


@pytest.mark.parametrize("how", ["terminate", "kill", "send_signal"])
def test_signals(arun, how):
    async def main():
        proc = await asyncio.create_subprocess_exec("sleep", "30")
        if how == "send_signal":
            proc.send_signal(signal.SIGINT)
            expected = -signal.SIGINT
        else:
            getattr(proc, how)()
            expected = -signal.SIGTERM if how == "terminate" else -signal.SIGKILL
        assert await proc.wait() == expected
    arun(main())


def test_many_concurrent_children_runs_quickly_while_the_loop_ticks(arun):
    """(runs_quickly: left out of the ASan run, whose children start slowly.)"""
    async def main():
        loop = asyncio.get_running_loop()
        ticks = 0

        def tick() -> None:
            nonlocal ticks
            ticks += 1
            handle[0] = loop.call_later(0.005, tick)

        handle = [loop.call_later(0.005, tick)]
        started = time.monotonic()
        procs = [await asyncio.create_subprocess_exec(PY, "-c", f"import time; time.sleep(0.2); raise SystemExit({i % 5})")
                 for i in range(20)]
        codes = await asyncio.gather(*(p.wait() for p in procs))
        elapsed = time.monotonic() - started
        handle[0].cancel()
        assert codes == [i % 5 for i in range(20)]
        assert elapsed < 0.2 * 20 / 2  # they ran concurrently
        assert ticks > 5               # and the loop kept running meanwhile
    arun(main(), timeout=30)


def test_missing_program_and_bad_arguments(arun):
    async def main():
        with pytest.raises(FileNotFoundError):
            await asyncio.create_subprocess_exec("/nonexistent/program")
        loop = asyncio.get_running_loop()
        with pytest.raises(ValueError):
            await loop.subprocess_exec(asyncio.SubprocessProtocol, "true", universal_newlines=True)
        with pytest.raises(ValueError):
            await loop.subprocess_shell(asyncio.SubprocessProtocol, "true", shell=False)
        with pytest.raises(ValueError):
            await loop.subprocess_exec(asyncio.SubprocessProtocol, "true", shell=True)
        with pytest.raises(ValueError, match="cmd must be a string"):
            await loop.subprocess_shell(asyncio.SubprocessProtocol, ["not", "a", "string"])
    arun(main())


def test_subprocess_protocol_callbacks(arun):
    async def main():
        loop = asyncio.get_running_loop()
        events: list[object] = []
        exited = loop.create_future()

        class Proto(asyncio.SubprocessProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                events.append("connection_made")

            def pipe_data_received(self, fd: int, data: bytes) -> None:
                events.append((fd, data))

            def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
                events.append(("pipe lost", fd))

            def process_exited(self) -> None:
                events.append("process_exited")

            def connection_lost(self, exc: Exception | None) -> None:
                events.append("connection_lost")
                exited.set_result(None)

        transport, _ = await loop.subprocess_exec(
            Proto, PY, "-c", "import sys; sys.stdout.write('out'); sys.stderr.write('err')",
            stdin=None, stdout=PIPE, stderr=PIPE)
        await exited
        assert transport.get_returncode() == 0
        assert isinstance(transport, asyncio.SubprocessTransport)
        assert transport.get_pid() > 0
        assert events[0] == "connection_made"
        assert (1, b"out") in events and (2, b"err") in events
        assert ("pipe lost", 1) in events and ("pipe lost", 2) in events
        assert events[-1] == "connection_lost"
        assert "process_exited" in events
        transport.close()
    arun(main())


def test_cancelled_communicate_then_kill_leaves_no_fd(arun):
    async def main():
        before = open_fds()
        proc = await asyncio.create_subprocess_exec("sleep", "30", stdout=PIPE)
        task = asyncio.create_task(proc.communicate())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        proc.kill()
        assert await proc.wait() == -signal.SIGKILL
        proc._transport.close()  # type: ignore[attr-defined]
        await asyncio.sleep(0.05)
        assert open_fds() - before == set()
    arun(main())


_FORK_SCRIPT = r"""
import asyncio, os, sys
import pyasync_c
factory = pyasync_c.new_event_loop if sys.argv[1] == "pyasync_c" else asyncio.SelectorEventLoop
async def main():
    proc = await asyncio.create_subprocess_exec("true")
    return await proc.wait()
with asyncio.Runner(loop_factory=factory) as runner:   # a loop in the parent first
    runner.run(main())
pid = os.fork()
if pid == 0:
    code = 1
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            code = runner.run(main())
    finally:
        os._exit(code)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_subprocess_in_a_forked_child(loop_name):
    """After fork() the child runs its own loop and subprocesses (a fresh
    interpreter forks, not the multi-threaded pytest process)."""
    import subprocess
    # the build this process imported (e.g. make asan's)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [PACKAGE_PARENT, os.environ.get("PYTHONPATH")])))
    done = subprocess.run([PY, "-c", _FORK_SCRIPT, loop_name], env=env, timeout=60)
    assert done.returncode == 0


def test_exit_seen_without_pidfd(arun, monkeypatch, loop_name):
    """Where os.pidfd_open fails (old kernels, some sandboxes) pyasync_c sees
    the exit through a waiting thread instead."""
    if loop_name == "stdlib":
        pytest.skip("pyasync_c's fallback; the stdlib's child watcher (chosen per process, "
                    "maybe a PidfdChildWatcher already) would break on the patched pidfd_open")
    def no_pidfd(*args: object) -> int:
        raise OSError(38, "Function not implemented")
    monkeypatch.setattr(os, "pidfd_open", no_pidfd)

    async def main():
        procs = [await asyncio.create_subprocess_exec(PY, "-c", f"raise SystemExit({i})",
                                                      stdout=PIPE) for i in range(5)]
        outs = await asyncio.gather(*(p.communicate() for p in procs))
        assert [p.returncode for p in procs] == [0, 1, 2, 3, 4]
        assert all(out == (b"", None) for out in outs)
    arun(main())
