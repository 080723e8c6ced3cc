"""Loop lifecycle under stress: close() with work in flight, fork, the signal
wakeup fd, and timer arguments at the edges.

Scenarios that fork or could hang run in a subprocess with a timeout (a hang
is a failure, not a stuck test run).  Lookups that must stay "in flight" use a
small LD_PRELOAD shim (compiled here; skipped without a C compiler) whose
getaddrinfo("blocked.invalid") reports on one fd that it started, then blocks
until a byte arrives on another: deterministic, no sleeps.
"""
from __future__ import annotations

import asyncio
import decimal
import fractions
import gc
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import weakref

import pytest

from package_path import PACKAGE_PARENT

import pyasync_c
from pyasync_c import _loop

SCENARIO_TIMEOUT = 60

# The subprocess scenarios name the loop they run on by the fixture's name.
PRELUDE = """\
import asyncio, os, signal, socket, sys, time
LOOP = sys.argv[1]
if LOOP == "pyasync_c":
    import pyasync_c
    new_loop = pyasync_c.new_event_loop
else:
    new_loop = asyncio.SelectorEventLoop

def wait_child(pid):
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)
"""

SHIM_SOURCE = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netdb.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* getaddrinfo("blocked.invalid"): write a byte to $SHIM_ENTERED_FD, wait for
 * one on $SHIM_RELEASE_FD, then fail with EAI_NONAME. */
int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                struct addrinfo **res)
{
    static int (*next_getaddrinfo)(const char *, const char *, const struct addrinfo *,
                                   struct addrinfo **);
    if (node != NULL && strcmp(node, "blocked.invalid") == 0) {
        char byte = 'e';
        const char *entered = getenv("SHIM_ENTERED_FD"), *release = getenv("SHIM_RELEASE_FD");
        if (entered != NULL && release != NULL) {
            (void)write(atoi(entered), &byte, 1);
            (void)read(atoi(release), &byte, 1);
        }
        return EAI_NONAME;
    }
    if (next_getaddrinfo == NULL) {
        next_getaddrinfo = dlsym(RTLD_NEXT, "getaddrinfo");
    }
    return next_getaddrinfo(node, service, hints, res);
}
"""

# Pipes for the shim, made by the scenario itself (inherited across fork).
SHIM_PRELUDE = """
entered_r, entered_w = socket.socketpair()
entered_r.setblocking(False)
release_r, release_w = os.pipe()
os.environ["SHIM_ENTERED_FD"] = str(entered_w.fileno())
os.environ["SHIM_RELEASE_FD"] = str(release_r)

async def lookup_entered(loop):
    # wait, without blocking the loop, until a resolver thread is in the shim
    await loop.sock_recv(entered_r, 1)
"""


@pytest.fixture(scope="module")
def blocking_resolver(tmp_path_factory: pytest.TempPathFactory) -> str:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler for the resolver shim")
    directory = tmp_path_factory.mktemp("shim")
    source = directory / "blockgai.c"
    source.write_text(SHIM_SOURCE)
    library = directory / "blockgai.so"
    subprocess.run([compiler, "-shared", "-fPIC", "-o", str(library), str(source), "-ldl"],
                   check=True, capture_output=True)
    return str(library)


def run_scenario(loop_name: str, body: str, preload: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = PACKAGE_PARENT + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONWARNINGS"] = "ignore::DeprecationWarning"  # 3.12+: fork() with threads
    if preload is not None:
        # after what is preloaded already (make asan: libasan must come first)
        env["LD_PRELOAD"] = ":".join(filter(None, [env.get("LD_PRELOAD"), preload]))
    script = PRELUDE + (SHIM_PRELUDE if preload else "") + textwrap.dedent(body)
    try:
        return subprocess.run([sys.executable, "-c", script, loop_name], capture_output=True,
                              text=True, timeout=SCENARIO_TIMEOUT, env=env)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"scenario hung for {SCENARIO_TIMEOUT}s; output so far: {exc.stdout!r} {exc.stderr!r}")


def lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


# ---- close() with a lookup in flight -----------------------------------------

def test_close_does_not_wait_for_a_running_lookup(loop_name, blocking_resolver):
    # The resolver is released only after close() returned: a close() that
    # waits for it (holding the GIL or not) never returns.
    result = run_scenario(loop_name, """
        loop = new_loop()
        async def main():
            task = asyncio.ensure_future(loop.getaddrinfo("blocked.invalid", 80))
            await lookup_entered(loop)
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                print("cancelled")
        loop.run_until_complete(main())
        loop.close()
        print("closed")
        os.write(release_w, b"x")
    """, preload=blocking_resolver)
    assert lines(result) == ["cancelled", "closed"]


def test_close_with_a_pending_lookup_drops_it(loop_name, blocking_resolver):
    # Not cancelled, still awaited by a task when the loop closes: close()
    # returns, the task stays pending (as with asyncio's executor), and the
    # resolver finishing later touches nothing of the closed loop.
    result = run_scenario(loop_name, """
        loop = new_loop()
        task = loop.create_task(loop.getaddrinfo("blocked.invalid", 80))
        loop.run_until_complete(lookup_entered(loop))
        loop.close()
        print("closed", task.done())
        os.write(release_w, b"x")
        time.sleep(0.2)   # the resolver thread finishes with the loop gone
        other = new_loop()
        print(len(other.run_until_complete(other.getaddrinfo("localhost", 80))) > 0)
        other.close()
    """, preload=blocking_resolver)
    assert lines(result) == ["closed", "False", "True"]


def test_many_loops_closed_with_lookups_in_flight(loop_name):
    if loop_name != "pyasync_c":
        pytest.skip("pyasync_c's C entry points")
    # Results arriving for loops that closed, in every state of the request.
    for round_ in range(30):
        loop = pyasync_c.new_event_loop()
        futures = [_loop.getaddrinfo(loop, "localhost", i) for i in range(20)]
        futures += [_loop.getnameinfo(loop, ("127.0.0.1", i)) for i in range(5)]
        if round_ % 3 == 0:
            loop.run_until_complete(asyncio.sleep(0.001))
        loop.close()
        assert all(not f.done() or f.result() for f in futures)
    loop = pyasync_c.new_event_loop()
    try:
        assert loop.run_until_complete(loop.getaddrinfo("127.0.0.1", 80))
        assert loop.run_until_complete(loop.getaddrinfo("localhost", 80))
    finally:
        loop.close()


# ---- fork --------------------------------------------------------------------

FORK_CHILD_CLOSES = """
    loop = new_loop()
    a, b = socket.socketpair()
    a.setblocking(False)
    got = loop.create_future()
    class Reader(asyncio.Protocol):
        def data_received(self, data):
            if not got.done():
                got.set_result(data)
    transport, _ = loop.run_until_complete(loop.connect_accepted_socket(Reader, a))
    loop.run_until_complete(asyncio.sleep(0.05))   # reading started
    pid = {fork}
    if pid == 0:
        {child}
        os._exit(0)
    print("child", wait_child(pid))
    b.send(b"hello")
    try:
        print(loop.run_until_complete(asyncio.wait_for(got, 10)).decode())
    except asyncio.TimeoutError:
        print("nothing")
    transport.close()
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()
"""


@pytest.mark.parametrize("child", ["loop.close()", "loop.run_until_complete(asyncio.sleep(0.01)); loop.close()"],
                         ids=["close", "run-then-close"])
def test_forked_child_closing_its_copy_leaves_the_parent_loop_alone(loop_name, child):
    result = run_scenario(loop_name, FORK_CHILD_CLOSES.format(fork="os.fork()", child=child))
    assert lines(result) == ["child", "0", "hello"]


def test_fork_python_did_not_see(loop_name):
    # fork() called directly (no os.register_at_fork hooks ran): close() in the
    # child still must not touch the parent's epoll registrations.
    result = run_scenario(loop_name, FORK_CHILD_CLOSES.format(
        fork="__import__('ctypes').CDLL(None, use_errno=True).fork()", child="loop.close()"))
    assert lines(result) == ["child", "0", "hello"]


def test_forked_child_closing_with_a_lookup_in_flight(loop_name, blocking_resolver):
    # The child has none of the parent's resolver threads: close() must not
    # wait for them.  The parent's lookup still completes afterwards.
    result = run_scenario(loop_name, """
        loop = new_loop()
        task = loop.create_task(loop.getaddrinfo("blocked.invalid", 80))
        loop.run_until_complete(lookup_entered(loop))
        pid = os.fork()
        if pid == 0:
            loop.close()
            print("child closed", flush=True)
            os._exit(0)
        print("child", wait_child(pid))
        os.write(release_w, b"x")
        if LOOP == "pyasync_c":
            try:
                loop.run_until_complete(asyncio.wait_for(task, 10))
            except socket.gaierror:
                print("parent gaierror")
        else:
            # asyncio's close() in the child unregistered the parent's self-pipe
            # from the shared epoll: the executor's result may never wake it.
            task.cancel()
            print("parent gaierror")
        loop.close()
    """, preload=blocking_resolver)
    assert lines(result) == ["child", "closed", "child", "0", "parent", "gaierror"]


SYS_EXIT_IN_CHILD = """
    async def main():
        async def echo(reader, writer):
            while data := await reader.read(100):
                writer.write(data)
        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
        if os.fork() == 0:
            sys.exit(0)
        _, status = os.wait()
        writer.write(b"ping")
        try:
            got = (await asyncio.wait_for(reader.readexactly(4), 10)).decode()
        except asyncio.TimeoutError:
            got = "nothing"
        print("child", os.waitstatus_to_exitcode(status), got)
        writer.close()
        server.close()

    with asyncio.Runner(loop_factory=new_loop) as runner:
        runner.run(main())
"""


def test_forked_child_leaving_through_sys_exit(loop_name):
    # SystemExit unwinds through asyncio.Runner's cleanup in the child, which
    # runs and closes the inherited loop.  The child exits 0 and the parent's
    # server and connection keep working.  (asyncio's own loop on 3.13+ loses
    # the parent's connection here: its child's cleanup closes the server's
    # transport, which unregisters the fd from the shared epoll.)
    result = run_scenario(loop_name, SYS_EXIT_IN_CHILD)
    out = lines(result)
    assert out[:2] == ["child", "0"]
    if loop_name == "stdlib" and sys.version_info >= (3, 13):
        return
    assert out[2] == "ping"


def test_forked_child_resolves_lookups_in_flight_at_fork(loop_name, blocking_resolver):
    if loop_name != "pyasync_c":
        pytest.skip("asyncio's child waits forever: its executor thread is not in the child")
    # The fork happens inside a coroutine: the child goes on running the loop,
    # and its lookup (whose resolver thread stayed in the parent) is resolved
    # again by the child.
    result = run_scenario(loop_name, """
        async def main():
            loop = asyncio.get_running_loop()
            task = asyncio.ensure_future(loop.getaddrinfo("blocked.invalid", 80))
            await lookup_entered(loop)
            pid = os.fork()
            if pid == 0:
                # (asyncio's get_running_loop() says "no running loop" in a child:
                # no wait_for here)
                os.write(release_w, b"xx")   # the parent's resolver and the child's
                loop.call_later(10, task.cancel)
                try:
                    await task
                except socket.gaierror:
                    print("child gaierror", flush=True)
                except asyncio.CancelledError:
                    print("child timeout", flush=True)
                os._exit(0)
            print("child", wait_child(pid))
            try:
                await asyncio.wait_for(task, 10)
            except socket.gaierror:
                print("parent gaierror")
        with asyncio.Runner(loop_factory=new_loop) as runner:
            runner.run(main())
    """, preload=blocking_resolver)
    assert lines(result) == ["child", "gaierror", "child", "0", "parent", "gaierror"]


def test_forked_child_signals_stay_in_the_child(loop_name):
    if loop_name != "pyasync_c":
        pytest.skip("pyasync_c's signal socket")
    # The child's copy of the loop has its own signal socket: bytes the
    # child's signals write there never reach the parent's loop.
    result = run_scenario(loop_name, """
        loop = new_loop()
        seen = []
        loop.add_signal_handler(signal.SIGUSR1, seen.append, "parent")
        pid = os.fork()
        if pid == 0:
            fd = loop._signal_wakeup_fd
            os.write(fd, bytes([signal.SIGUSR1]))   # what a signal in the child writes
            os._exit(0)
        wait_child(pid)
        loop.run_until_complete(asyncio.sleep(0.1))
        print(seen or "none")
        loop.close()
    """)
    assert lines(result) == ["none"]


# ---- the signal wakeup fd ------------------------------------------------------

@pytest.mark.parametrize("order", ["creation", "reverse"])
def test_wakeup_fd_not_left_on_a_closed_loop(loop_factory, order):
    if sys.platform == "win32":
        pytest.skip("add_signal_handler")
    previous = signal.set_wakeup_fd(-1)
    try:
        first, second = loop_factory(), loop_factory()
        first.add_signal_handler(signal.SIGUSR1, lambda: None)
        second.add_signal_handler(signal.SIGUSR1, lambda: None)
        for loop in ((first, second) if order == "creation" else (second, first)):
            loop.close()
        assert signal.set_wakeup_fd(-1) == -1
    finally:
        signal.set_wakeup_fd(previous)


def test_wakeup_fd_stack_of_running_loops(loop_name):
    if loop_name != "pyasync_c":
        pytest.skip("pyasync_c installs its wakeup fd while running")
    # A loop that was installed later keeps working when an earlier one closes,
    # and ends up giving back what the earliest one replaced.
    previous = signal.set_wakeup_fd(-1)
    user_r, user_w = os.pipe()
    os.set_blocking(user_w, False)
    try:
        signal.set_wakeup_fd(user_w)
        first, second = pyasync_c.new_event_loop(), pyasync_c.new_event_loop()
        first.add_signal_handler(signal.SIGUSR1, lambda: None)
        seen = []
        second.add_signal_handler(signal.SIGUSR2, seen.append, "second")
        first.close()
        assert signal.set_wakeup_fd(second._signal_wakeup_fd) == second._signal_wakeup_fd
        os.kill(os.getpid(), signal.SIGUSR2)
        second.run_until_complete(asyncio.sleep(0.05))
        assert seen == ["second"]
        second.close()
        assert signal.set_wakeup_fd(-1) == user_w
    finally:
        signal.set_wakeup_fd(previous)
        os.close(user_r)
        os.close(user_w)


@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_wakeup_fd_of_a_loop_dropped_without_close(loop_factory):
    # Nothing keeps a loop alive for its wakeup fd; when it is collected
    # (BaseEventLoop.__del__ closes it) the fd is uninstalled.
    previous = signal.set_wakeup_fd(-1)
    try:
        loop = loop_factory()
        loop.add_signal_handler(signal.SIGUSR1, lambda: None)
        ref = weakref.ref(loop)
        del loop
        gc.collect()
        assert ref() is None
        assert signal.set_wakeup_fd(-1) == -1
    finally:
        signal.set_wakeup_fd(previous)


# ---- call_later / call_at arguments ---------------------------------------------

@pytest.mark.parametrize("delay,error", [
    (10**400, OverflowError),
    (-10**400, OverflowError),
    ("1", TypeError),
    (decimal.Decimal("1.5"), TypeError),
    (None, TypeError),
])
def test_call_later_bad_delay(loop, delay, error):
    with pytest.raises(error):
        loop.call_later(delay, lambda: None)


@pytest.mark.parametrize("delay", [float("inf"), float("-inf"), 10**20, fractions.Fraction(1, 3), True, 0.5])
def test_call_later_accepted_delay(loop, delay):
    handle = loop.call_later(delay, lambda: None)
    assert isinstance(handle, asyncio.TimerHandle)
    handle.cancel()


def test_call_at_huge_int(loop, loop_name):
    if loop_name != "pyasync_c":
        pytest.skip("asyncio keeps the int, then its _run_once raises OverflowError")
    with pytest.raises(OverflowError):
        loop.call_at(10**400, lambda: None)
    with pytest.raises(TypeError, match="when cannot be None"):
        loop.call_at(None, lambda: None)
    with pytest.raises(TypeError):  # asyncio: accepted, then a TypeError from its heap
        loop.call_later(1 + 0j, lambda: None)
    with pytest.raises(ValueError):  # asyncio: accepted, and its heap order is lost
        loop.call_later(float("nan"), lambda: None)
