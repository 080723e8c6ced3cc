"""Reference-leak check for pyasync_c's C code, on a debug interpreter.

    PYTHONPATH=build/dbg build/dbg-venv/bin/python tests/leakcheck.py
        [--warmup W] [--rounds K] [--only NAME[,NAME]] [--no-pytest] [--no-scenarios]
        [--files tests/test_x.py,...] [-v]

(`make leaks` builds the extension for the debug interpreter in build/dbg and
runs this.)  Needs a --with-pydebug Python: sys.gettotalrefcount().  With
--smoke it only runs the scenarios (any Python): `make asan` does that under
ASan/UBSan after pytest.

Two kinds of checks, each run W warm-up rounds then K measured rounds in this
one process; after every round: sys._clear_type_cache(), gc.collect() (3x) and read
sys.gettotalrefcount() and sys.getallocatedblocks().  A leak shows as a delta
that stays > 0 in every measured round (caches fill during warm-up; noise
goes up *and* down).

1. scenarios: small drivers that hammer one C path N times per round (loop
   create/close, call_soon/call_later/cancel storms, add_reader/remove_reader,
   signal handlers, create_task, exceptions in callbacks, each primitive with
   cancellations, gather...).  A leak of one reference per operation shows as
   about +N per round.
2. pytest: each test file run in-process with pytest.main(), split into the
   tests that touch pyasync_c (a pyasync_c loop or the C primitives) and the
   pure-stdlib ones as a baseline (pytest's own per-session churn).  The
   figure that matters is "ours - baseline".

Exit status 1 if any check is flagged as leaking.
"""
from __future__ import annotations

import argparse
import asyncio
import contextvars
import gc
import logging
import os
import signal
import socket
import sys
import threading
import warnings
from typing import Any, Callable

HERE = os.path.dirname(os.path.abspath(__file__))

SMOKE = "--smoke" in sys.argv  # just run every scenario a few times (e.g. under ASan)
if not SMOKE and not hasattr(sys, "gettotalrefcount"):
    sys.exit("leakcheck.py needs a debug build of Python (sys.gettotalrefcount); "
             "run it through `make leaks` (or use --smoke)")

import pyasync_c  # noqa: E402
from pyasync_c import _primitives as P  # noqa: E402

# --baseline swaps these for asyncio's own (same scenarios, stdlib objects):
# whatever still grows then is not pyasync_c's.
new_loop: Callable[[], asyncio.AbstractEventLoop] = pyasync_c.new_event_loop

N = 200  # operations per scenario round


def collect() -> None:
    # CPython's type attribute cache (4096 slots per interpreter) keeps a
    # strong reference to the name of each lookup it caches.  C code that
    # looks names up by C string (PyObject_GetAttrString, PyObject_CallMethod)
    # makes a fresh str per call, so a slot that held an interned name comes
    # to hold a new 54-62 byte str block: sys.getallocatedblocks() grows while
    # refcounts balance, by a figure that shrinks as the slots fill (tens per
    # round for "TCP transports": flagged on some runs and not others).
    # Emptying the cache before each reading takes that out of the figures.
    sys._clear_type_cache()
    for _ in range(3):
        gc.collect()


def measure(fn: Callable[[], Any], warmup: int, rounds: int) -> tuple[list[int], list[int]]:
    for _ in range(warmup):
        fn()
    # The bookkeeping must not show up in the figures: deltas go into
    # preallocated lists (small deltas are cached ints, no allocation) and the
    # previous totals are rebound, never accumulated.  Every local is bound
    # and the first reading taken twice, so each reading sees the same set
    # of live bookkeeping objects.
    refs = [0] * rounds
    blocks = [0] * rounds
    r1 = b1 = i = 0
    collect()
    r0 = sys.gettotalrefcount()
    b0 = sys.getallocatedblocks()
    r0 = sys.gettotalrefcount()
    b0 = sys.getallocatedblocks()
    while i < rounds:  # no for-loop iterator: one more live object only in round 1
        fn()
        collect()
        r1 = sys.gettotalrefcount()
        b1 = sys.getallocatedblocks()
        refs[i] = r1 - r0
        blocks[i] = b1 - b0
        r0 = r1
        b0 = b1
        i += 1
    return refs, blocks


def leaking(deltas: list[int], threshold: int = 0) -> bool:
    """Growth in every measured round (noise is not monotonic)."""
    return len(deltas) > 0 and min(deltas) > threshold


# ---------------------------------------------------------------- scenarios


def quiet_handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    pass


def on_loop(coro_fn: Callable[[], Any], debug: bool = False,
            factory: Callable[[], asyncio.AbstractEventLoop] | None = None) -> Callable[[], None]:
    """A round = one fresh pyasync_c loop (or ``factory()``) running coro_fn() to completion."""
    def round_() -> None:
        loop = factory() if factory is not None else new_loop()
        loop.set_debug(debug)
        loop.set_exception_handler(quiet_handler)
        try:
            loop.run_until_complete(coro_fn())
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()
    return round_


def sc_loop_create_close() -> None:
    for _ in range(N // 4):
        loop = pyasync_c.new_event_loop()
        loop.call_soon(lambda: None)          # dropped by close()
        loop.call_later(10, lambda: None)     # dropped by close()
        loop.close()
    for _ in range(N // 4):                   # never closed: tp_dealloc path
        loop = pyasync_c.new_event_loop()
        loop.call_soon(print, "x")
        loop._close()                          # C close without the Python bookkeeping
        del loop
    for _ in range(N // 4):                   # dropped unclosed (GC + dealloc release libuv)
        loop = pyasync_c.new_event_loop()
        loop.call_later(10, lambda: None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            del loop


async def _call_soon_storm() -> None:
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    ctx = contextvars.copy_context()
    count = 0

    def cb(*args: Any) -> None:
        nonlocal count
        count += 1
        if count == 3 * N:
            fut.set_result(None)

    for i in range(N):
        loop.call_soon(cb, i, "arg")
        loop.call_soon(cb, context=ctx)
        loop.call_soon_threadsafe(cb, i)
        loop.call_soon(cb).cancel()
    await fut


async def _timer_storm() -> None:
    loop = asyncio.get_running_loop()
    fired = []
    handles = [loop.call_later(0.001 * (i % 5), fired.append, i) for i in range(N)]
    late = [loop.call_later(100, fired.append, i) for i in range(N)]
    at = [loop.call_at(loop.time() + 100, fired.append, i) for i in range(N)]
    for h in handles[::2] + late + at:
        h.cancel()
    for h in late[:10]:
        h.cancel()                                   # double cancel
    await asyncio.sleep(0.01)
    assert len(fired) == N // 2, len(fired)
    for i in range(N):                               # cancel from inside a callback
        h = loop.call_later(0, lambda: None)
        loop.call_soon(h.cancel)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    # repr/when/attributes of live and cancelled handles
    h = loop.call_later(1, print, "x")
    repr(h), h.when(), h._callback, h._args, getattr(h, "get_context", None), h.cancelled()
    h.cancel()
    repr(h)


async def _threadsafe_from_thread() -> None:
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    got = []

    def worker() -> None:
        for i in range(N):
            loop.call_soon_threadsafe(got.append, i)
        loop.call_soon_threadsafe(fut.set_result, None)

    t = threading.Thread(target=worker)
    t.start()
    await fut
    t.join()
    assert len(got) == N


async def _readers_writers() -> None:
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    try:
        for i in range(N // 4):
            fut = loop.create_future()

            def on_read(f: asyncio.Future, arg: int) -> None:
                a.recv(100)
                loop.remove_reader(a)
                if not f.done():
                    f.set_result(arg)

            loop.add_reader(a, on_read, fut, i)
            loop.add_reader(a.fileno(), on_read, fut, i)     # replaces (cancels) the previous
            b.send(b"x")
            assert await fut == i
            wfut = loop.create_future()
            loop.add_writer(b, lambda f=wfut: (loop.remove_writer(b), f.done() or f.set_result(1)))
            await wfut
            loop.add_reader(a, print)
            loop.add_writer(a, print)
            assert loop.remove_writer(a) and loop.remove_reader(a)
            assert not loop.remove_reader(a)
        # bad fds raise, and leave nothing behind
        r, w = os.pipe()
        os.close(r)
        os.close(w)
        for _ in range(N // 4):
            try:
                loop.add_reader(r, print)
            except OSError:
                pass
            loop.remove_reader(r)
        try:
            loop.add_reader(object(), print)
        except (TypeError, ValueError):
            pass
    finally:
        a.close()
        b.close()


def sc_readers_closed_with_loop() -> None:
    """Watchers still registered when the loop closes / is dropped."""
    for close in (True, False):
        for _ in range(N // 8):
            a, b = socket.socketpair()
            loop = pyasync_c.new_event_loop()
            loop.add_reader(a, print, "r")
            loop.add_writer(b, print, "w")
            if close:
                loop.close()
            else:
                loop._close()
            del loop
            a.close()
            b.close()


async def _signals() -> None:
    loop = asyncio.get_running_loop()
    got = []
    for i in range(N // 4):
        fut = loop.create_future()
        loop.add_signal_handler(signal.SIGUSR1, lambda f=fut, i=i: (got.append(i), f.done() or f.set_result(i)))
        os.kill(os.getpid(), signal.SIGUSR1)
        await fut
        loop.add_signal_handler(signal.SIGUSR2, print)          # replaced below
        loop.add_signal_handler(signal.SIGUSR2, print, "x")
        assert loop.remove_signal_handler(signal.SIGUSR2)
        assert loop.remove_signal_handler(signal.SIGUSR1)
        assert not loop.remove_signal_handler(signal.SIGUSR1)
    assert len(got) == N // 4


def sc_signal_handler_left_on_close() -> None:
    for _ in range(N // 8):
        loop = pyasync_c.new_event_loop()
        loop.add_signal_handler(signal.SIGUSR1, print, "x")
        loop.close()


async def _tasks() -> None:
    loop = asyncio.get_running_loop()

    async def ok(i: int) -> int:
        await asyncio.sleep(0)
        return i

    async def boom() -> None:
        await asyncio.sleep(0)
        raise ValueError("boom")

    async def forever() -> None:
        await asyncio.sleep(100)

    ctx = contextvars.copy_context()
    tasks = [loop.create_task(ok(i)) for i in range(N // 2)]
    tasks += [loop.create_task(ok(i), name=f"t{i}", context=ctx) for i in range(N // 4)]
    errs = [loop.create_task(boom()) for _ in range(N // 4)]
    slow = [loop.create_task(forever()) for _ in range(N // 4)]
    await asyncio.sleep(0)
    for t in slow:
        t.cancel()
    await asyncio.gather(*tasks, *errs, *slow, return_exceptions=True)
    # task factory path
    loop.set_task_factory(lambda lp, coro, **kw: asyncio.Task(coro, loop=lp, **kw))
    await asyncio.gather(*[loop.create_task(ok(i)) for i in range(N // 4)])
    loop.set_task_factory(None)
    fut = loop.create_future()
    fut.cancel()
    try:
        loop.create_task(42)  # type: ignore[arg-type]
    except TypeError:
        pass


async def _callback_exceptions() -> None:
    loop = asyncio.get_running_loop()

    def bad(i: int) -> None:
        raise RuntimeError(f"bad {i}")

    for i in range(N):
        loop.call_soon(bad, i)
        loop.call_later(0, bad, i)
    await asyncio.sleep(0.001)
    await asyncio.sleep(0)
    # bad arguments raise without leaking the parsed parts
    for _ in range(N // 4):
        for call in (lambda: loop.call_soon(42),
                     lambda: loop.call_later("x", print),
                     lambda: loop.call_at(float("nan"), print),
                     lambda: loop.call_soon(print, bogus=1),
                     lambda: loop.call_soon(print, context=object())):
            try:
                call()
            except (TypeError, ValueError):
                pass


def sc_closed_loop_calls() -> None:
    loop = pyasync_c.new_event_loop()
    loop.close()
    for _ in range(N):
        for call in (lambda: loop.call_soon(print), lambda: loop.call_later(1, print),
                     lambda: loop.call_soon_threadsafe(print), lambda: loop.add_reader(0, print)):
            try:
                call()
            except RuntimeError:
                pass
        coro = asyncio.sleep(0)
        try:
            loop.create_task(coro)
        except RuntimeError:
            pass
        coro.close()


def sc_run_until_complete_raises() -> None:
    loop = pyasync_c.new_event_loop()
    loop.set_exception_handler(quiet_handler)

    async def fail() -> None:
        await asyncio.sleep(0)
        raise KeyError("x")

    try:
        for _ in range(N // 4):
            try:
                loop.run_until_complete(fail())
            except KeyError:
                pass
            loop.call_soon(loop.stop)
            loop.run_forever()
    finally:
        loop.close()


# -- primitives

async def _semaphore() -> None:
    for cls in (P.Semaphore, P.BoundedSemaphore):
        sem = cls(2)

        async def worker() -> None:
            async with sem:
                await asyncio.sleep(0)

        tasks = [asyncio.ensure_future(worker()) for _ in range(N // 2)]
        await asyncio.sleep(0)
        for t in tasks[::3]:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # waiters cancelled while blocked
        await sem.acquire()
        await sem.acquire()
        waiters = [asyncio.ensure_future(sem.acquire()) for _ in range(N // 4)]
        await asyncio.sleep(0)
        for w in waiters:
            w.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
        sem.release()
        sem.release()
        if cls is P.BoundedSemaphore:
            try:
                sem.release()
            except ValueError:
                pass
        repr(sem), sem.locked()
        try:
            await asyncio.wait_for(sem.acquire(), 0) if False else None
        except Exception:
            pass


async def _lock_event() -> None:
    lock = P.Lock()

    async def worker() -> None:
        async with lock:
            await asyncio.sleep(0)

    tasks = [asyncio.ensure_future(worker()) for _ in range(N // 2)]
    await asyncio.sleep(0)
    for t in tasks[1::3]:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    try:
        lock.release()
    except RuntimeError:
        pass
    repr(lock)

    ev = P.Event()
    waiters = [asyncio.ensure_future(ev.wait()) for _ in range(N // 2)]
    await asyncio.sleep(0)
    for w in waiters[::4]:
        w.cancel()
    ev.set()
    await asyncio.gather(*waiters, return_exceptions=True)
    ev.clear()
    w = asyncio.ensure_future(ev.wait())
    await asyncio.sleep(0)
    w.cancel()
    await asyncio.gather(w, return_exceptions=True)
    repr(ev)


async def _queues() -> None:
    for cls in (P.Queue, P.LifoQueue, P.PriorityQueue):
        q = cls(maxsize=4)

        async def producer(i: int) -> None:
            await q.put(i)

        async def consumer() -> None:
            await q.get()
            q.task_done()

        prods = [asyncio.ensure_future(producer(i)) for i in range(N // 4)]
        cons = [asyncio.ensure_future(consumer()) for _ in range(N // 4)]
        await asyncio.sleep(0)
        for t in (prods + cons)[::5]:
            t.cancel()
        await asyncio.gather(*prods, *cons, return_exceptions=True)
        while not q.empty():
            q.get_nowait()
            q.task_done()
        for exc_call in (q.get_nowait,):
            try:
                exc_call()
            except asyncio.QueueEmpty:
                pass
        for i in range(4):
            q.put_nowait(i)
        try:
            q.put_nowait(99)
        except asyncio.QueueFull:
            pass
        repr(q), q.qsize(), q.full()
        while not q.empty():
            q.get_nowait()
            q.task_done()
        await q.join()
        getters = [asyncio.ensure_future(q.get()) for _ in range(10)]
        await asyncio.sleep(0)
        for g in getters:
            g.cancel()
        await asyncio.gather(*getters, return_exceptions=True)
        if hasattr(q, "shutdown"):
            q.shutdown(immediate=True)


async def _gather() -> None:
    loop = asyncio.get_running_loop()

    async def value(v: Any) -> Any:
        await asyncio.sleep(0)
        return v

    async def fail(exc: BaseException) -> None:
        await asyncio.sleep(0)
        raise exc

    async def forever() -> None:
        await asyncio.sleep(100)

    for i in range(N // 8):
        assert await P.gather(value(1), value(2), value(i)) == [1, 2, i]
        assert await P.gather() == []
        res = await P.gather(value(1), fail(ValueError(i)), return_exceptions=True)
        assert isinstance(res[1], ValueError)
        try:
            await P.gather(fail(KeyError(i)), forever())
        except KeyError:
            pass
        # outer cancelled: children cancelled
        outer = P.gather(forever(), forever(), value(3))
        await asyncio.sleep(0)
        outer.cancel("msg")
        try:
            await outer
        except asyncio.CancelledError:
            pass
        # a child cancelled
        t = asyncio.ensure_future(forever())
        outer = P.gather(t, value(4))
        await asyncio.sleep(0)
        t.cancel()
        try:
            await outer
        except asyncio.CancelledError:
            pass
        outer = P.gather(forever(), return_exceptions=True)
        await asyncio.sleep(0)
        outer.cancel()
        await asyncio.gather(outer, return_exceptions=True)
        # same future twice, plain futures, done futures
        f = loop.create_future()
        f.set_result(5)
        assert await P.gather(f, f, value(6)) == [5, 5, 6]
        try:
            P.gather(42)
        except TypeError:
            pass
    await asyncio.sleep(0)


def sc_gather_outside_loop() -> None:
    for _ in range(N // 4):
        loop = pyasync_c.new_event_loop()
        f = loop.create_future()
        g = P.gather(f)
        g.cancel()
        f2 = loop.create_future()
        g2 = P.gather(f2, f2, return_exceptions=True)
        f2.set_exception(ValueError("x"))
        loop.run_until_complete(asyncio.sleep(0))
        assert isinstance(g2.result()[0], ValueError)
        pending = P.gather(loop.create_future())   # left pending when the loop closes
        loop.close()
        del pending


# ---- network transports ---------------------------------------------------

class _Echo(asyncio.Protocol):
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


class _BufferedEcho(asyncio.BufferedProtocol):
    def __init__(self) -> None:
        self.buffer = bytearray(512)

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def get_buffer(self, sizehint: int) -> Any:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.transport.write(bytes(self.buffer[:nbytes]))


async def _tcp_echo() -> None:
    """Protocol and BufferedProtocol servers, stream clients, close/abort/eof
    paths, a protocol that raises, and an unclosed transport collected."""
    loop = asyncio.get_running_loop()
    for factory in (_Echo, _BufferedEcho):
        server = await loop.create_server(factory, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        for i in range(N // 20):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"x" * 3000)
            await reader.readexactly(3000)
            if i % 3 == 0:
                writer.transport.abort()
            elif i % 3 == 1:
                writer.write_eof()
                writer.close()
            else:
                writer.writelines([b"a", bytearray(b"b"), memoryview(b"c")])
                writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass
        server.close()
        await server.wait_closed()

    class Raises(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            raise ValueError("boom")

    server = await loop.create_server(Raises, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    for _ in range(N // 20):
        transport, _proto = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
        transport.write(b"data")
        transport.close()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            lost, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
            lost.pause_reading()   # no poll left: the transport can be collected
            del lost
            collect()
    await asyncio.sleep(0.01)
    server.close()
    await server.wait_closed()


async def _streams_reader() -> None:
    """asyncio StreamReaders fed by the C fast path and its fallbacks: pausing
    past the limit, a subclass, a transport that cannot pause, data after
    feed_eof and a pause_reading that raises (fatal errors)."""
    loop = asyncio.get_running_loop()

    class Sub(asyncio.StreamReader):
        pass

    def cannot_pause() -> None:
        raise NotImplementedError

    def broken_pause() -> None:
        raise ValueError("no")

    for i in range(N // 20):
        ours, peer = socket.socketpair()
        reader = (Sub if i % 5 == 1 else asyncio.StreamReader)(limit=8, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        transport, _ = await loop.connect_accepted_socket(lambda: protocol, ours)
        if i % 5 == 2:
            transport.pause_reading = cannot_pause
        elif i % 5 == 3:
            transport.pause_reading = broken_pause
        elif i % 5 == 4:
            reader.feed_eof()
        peer.sendall(b"z" * 40)
        if i % 5 < 3:
            assert await reader.readexactly(40) == b"z" * 40
        else:
            await asyncio.sleep(0.001)
        transport.close()
        peer.close()
        await asyncio.sleep(0)


async def _udp_and_pipes() -> None:
    loop = asyncio.get_running_loop()
    received: list[Any] = []

    class Sink(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            received.append(data)

    sink, _ = await loop.create_datagram_endpoint(Sink, local_addr=("127.0.0.1", 0))
    sender, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, remote_addr=sink.get_extra_info("sockname"))
    for _ in range(N):
        sender.sendto(b"ping")
    while len(received) < N // 2:
        await asyncio.sleep(0.001)
    sender.close()
    sink.close()
    for _ in range(N // 20):
        rfd, wfd = os.pipe()
        done = loop.create_future()

        class Reader(asyncio.Protocol):
            def connection_lost(self, exc: Any) -> None:
                done.set_result(None)

        await loop.connect_read_pipe(Reader, open(rfd, "rb", buffering=0))
        writer, _ = await loop.connect_write_pipe(asyncio.Protocol, open(wfd, "wb", buffering=0))
        writer.write(b"data" * 100)
        writer.close()
        await done
    await asyncio.sleep(0)


async def _subprocesses() -> None:
    """create_subprocess_exec with pipes (pipe transports + pidfd watch)."""
    for i in range(N // 20):
        proc = await asyncio.create_subprocess_exec(
            "cat", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        out, _ = await proc.communicate(b"x" * (i * 100))
        assert len(out) == i * 100 and proc.returncode == 0


SCENARIOS: dict[str, Callable[[], None]] = {
    "loop create/close": sc_loop_create_close,
    "call_soon storm": on_loop(_call_soon_storm),
    "call_soon storm (debug)": on_loop(_call_soon_storm, debug=True),
    "call_later/call_at/cancel": on_loop(_timer_storm),
    "call_later/cancel (debug)": on_loop(_timer_storm, debug=True),
    "call_soon_threadsafe thread": on_loop(_threadsafe_from_thread),
    "add/remove reader+writer": on_loop(_readers_writers),
    "watchers left at close": sc_readers_closed_with_loop,
    "signal handlers": on_loop(_signals),
    "signal handler left at close": sc_signal_handler_left_on_close,
    "create_task": on_loop(_tasks),
    "exceptions in callbacks": on_loop(_callback_exceptions),
    "calls on a closed loop": sc_closed_loop_calls,
    "run_until_complete raises": sc_run_until_complete_raises,
    "Semaphore/BoundedSemaphore": on_loop(_semaphore),
    "Lock/Event": on_loop(_lock_event),
    "Queue/Lifo/Priority": on_loop(_queues),
    "gather": on_loop(_gather),
    "gather (debug loop)": on_loop(_gather, debug=True),
    "gather outside a loop": sc_gather_outside_loop,
    "gather (stdlib loop)": on_loop(_gather, factory=asyncio.SelectorEventLoop),
    "TCP transports": on_loop(_tcp_echo),
    "stream readers": on_loop(_streams_reader),
    "UDP and pipe transports": on_loop(_udp_and_pipes),
    "subprocesses": on_loop(_subprocesses),
}


# ---------------------------------------------------------------- pytest


class Select:
    """pytest plugin keeping either the tests touching pyasync_c or the others."""

    def __init__(self, ours: bool) -> None:
        self.ours = ours

    def pytest_collection_modifyitems(self, config: Any, items: list[Any]) -> None:
        keep, drop = [], []
        for item in items:
            params = getattr(getattr(item, "callspec", None), "params", {})
            is_ours = params.get("loop_name") == "pyasync_c" or params.get("prims") == "c" or (
                "loop_name" not in params and "prims" not in params)
            (keep if is_ours == self.ours else drop).append(item)
        items[:] = keep
        config.hook.pytest_deselected(items=drop)


def pytest_round(path: str, ours: bool) -> Callable[[], None]:
    import pytest

    def round_() -> None:
        status = pytest.main([path, "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
                              "--no-header", "-o", "console_output_style=classic", "-x", "-qq",
                              "--disable-warnings"], plugins=[Select(ours)])
        if status not in (0, 5):  # 5: nothing selected
            raise SystemExit(f"pytest failed on {path} (status {status})")
    return round_


# ---------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--only", default="", help="comma-separated scenario name substrings")
    ap.add_argument("--files", default="", help="comma-separated test files for the pytest part")
    ap.add_argument("--no-pytest", action="store_true")
    ap.add_argument("--no-scenarios", action="store_true")
    ap.add_argument("--pytest-warmup", type=int, default=2)
    ap.add_argument("--pytest-rounds", type=int, default=3)
    ap.add_argument("--baseline", action="store_true",
                    help="scenarios with asyncio's primitives and (where a loop is made "
                         "by on_loop) asyncio's SelectorEventLoop, for comparison")
    ap.add_argument("--smoke", action="store_true",
                    help="no measuring: run each scenario --rounds times (any Python; "
                         "`make asan-leakcheck` runs this under ASan)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    if args.baseline:
        global P, new_loop
        import types
        P = types.SimpleNamespace(**{n: getattr(asyncio, n) for n in (
            "Lock", "Event", "Semaphore", "BoundedSemaphore", "Queue", "LifoQueue",
            "PriorityQueue", "gather")})
        new_loop = asyncio.SelectorEventLoop

    flagged: list[str] = []
    if args.smoke:
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        for name, fn in SCENARIOS.items():
            if not wanted or any(w in name for w in wanted):
                for _ in range(args.rounds):
                    fn()
                print(f"ran  {name}", flush=True)
        return 0
    asyncio_logger = logging.getLogger("asyncio")
    asyncio_logger.setLevel(logging.CRITICAL)  # scenarios: "exception never retrieved" noise
    print(f"pyasync_c from {os.path.dirname(pyasync_c.__file__)}; Python {sys.version.split()[0]} "
          f"(debug); N={N} ops per scenario round")
    if not args.no_scenarios:
        print(f"\n== scenarios: warm-up {args.warmup}, measured {args.rounds}; "
              f"per-round deltas (refs | blocks)")
        wanted = [s.strip() for s in args.only.split(",") if s.strip()]
        for name, fn in SCENARIOS.items():
            if wanted and not any(w in name for w in wanted):
                continue
            refs, blocks = measure(fn, args.warmup, args.rounds)
            # A leak per operation is >= N/8 per round; allocator and cache
            # noise in blocks is a few per round and shrinks over rounds.
            leak = leaking(refs) or leaking(blocks, threshold=N // 8)
            if leak:
                flagged.append(name)
            print(f"{'LEAK' if leak else 'ok  '} {name:32s} refs {refs}  blocks {blocks}", flush=True)

    asyncio_logger.setLevel(logging.NOTSET)  # some tests assert on asyncio's log records
    if not args.no_pytest:
        files = [f for f in args.files.split(",") if f] or sorted(
            os.path.join(HERE, f) for f in os.listdir(HERE)
            if f.startswith("test_") and f.endswith(".py"))
        print(f"\n== pytest in-process: warm-up {args.pytest_warmup}, measured {args.pytest_rounds}; "
              "per-round refs deltas, pyasync_c tests vs pure-stdlib baseline")
        for path in files:
            name = os.path.basename(path)
            ours, ours_blocks = measure(pytest_round(path, True), args.pytest_warmup, args.pytest_rounds)
            base, base_blocks = measure(pytest_round(path, False), args.pytest_warmup, args.pytest_rounds)
            excess = [o - b for o, b in zip(ours, base)]
            # pytest's own per-session churn is a few hundred refs; flag clear growth only.
            leak = leaking(excess, threshold=50)
            if leak:
                flagged.append(name)
            print(f"{'LEAK' if leak else 'ok  '} {name:32s} ours {ours} base {base} "
                  f"excess {excess}  blocks ours {ours_blocks} base {base_blocks}", flush=True)

    print("\nflagged:", ", ".join(flagged) if flagged else "none")
    return 1 if flagged else 0


if __name__ == "__main__":
    sys.exit(main())
