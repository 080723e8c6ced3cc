"""Regression tests for red-team findings (h-queue).

- A queue's storage (``_queue``) replaced by Python code that the storage
  operation itself runs (an item's ``__lt__`` inside heapq, the ``__del__`` of
  the item a maxlen deque drops inside append): the container must stay alive
  until the operation returns, as asyncio's ``self._queue`` on the Python
  stack does.  Without that it is a use-after-free, so these scenarios run in
  a subprocess.
- A Queue subclass's ``qsize()`` returning a float or a huge int: asyncio's
  ``full()`` compares the objects.
- ``set_write_buffer_limits()`` values that are floats, huge ints or bools,
  and a ``low`` whose ``4 * low`` does not fit a C integer: asyncio stores
  the objects, compares them with the buffer size, and returns them from
  ``get_write_buffer_limits()``.

Everything runs on the stdlib loop and pyasync_c's, with asyncio's primitives
and pyasync_c's.
"""
from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import textwrap
from fractions import Fraction

import pytest

from package_path import PACKAGE_PARENT

SCENARIO_TIMEOUT = 60

PRELUDE = """\
import asyncio, collections, sys, weakref
LOOP, IMPL = sys.argv[1], sys.argv[2]
if LOOP == "pyasync_c":
    import pyasync_c
    new_loop = pyasync_c.new_event_loop
else:
    new_loop = asyncio.SelectorEventLoop
if IMPL == "c":
    from pyasync_c import _primitives as P
else:
    P = asyncio

def run(coro):
    with asyncio.Runner(loop_factory=new_loop) as runner:
        return runner.run(coro)
"""


def run_scenario(loop_name: str, impl: str, body: str) -> list[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = PACKAGE_PARENT + os.pathsep + env.get("PYTHONPATH", "")
    script = PRELUDE + textwrap.dedent(body)
    try:
        result = subprocess.run([sys.executable, "-c", script, loop_name, impl], capture_output=True,
                                text=True, timeout=SCENARIO_TIMEOUT, env=env)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"scenario hung for {SCENARIO_TIMEOUT}s: {exc.stdout!r} {exc.stderr!r}")
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return result.stdout.split()


@pytest.fixture(params=["stdlib", "c"])
def impl(request: pytest.FixtureRequest) -> str:
    return request.param


# ---- queue storage replaced while a storage operation runs -------------------

def test_priority_queue_storage_replaced_by_item_lt(loop_name, impl):
    # heappush/heappop compare items; the first comparison replaces q._queue.
    out = run_scenario(loop_name, impl, """
        class Heap(list):
            pass

        state = {}
        class Item:
            def __init__(self, v): self.v = v
            def __lt__(self, other):
                q = state.pop("queue", None)
                if q is not None:
                    ref = weakref.ref(q._queue)
                    q._queue = Heap()
                    state["alive"] = ref() is not None
                return self.v < other.v

        async def main():
            for op in ("put_nowait", "get_nowait", "put", "get"):
                q = P.PriorityQueue()
                q._queue = Heap(Item(i) for i in range(1, 40))
                state["queue"] = q
                if op == "put_nowait":
                    q.put_nowait(Item(0))
                elif op == "get_nowait":
                    q.get_nowait()
                elif op == "put":
                    await q.put(Item(0))
                else:
                    await q.get()
                print(op, state.pop("alive"), len(q._queue))

        run(main())
    """)
    assert out == ["put_nowait", "True", "0", "get_nowait", "True", "0",
                   "put", "True", "0", "get", "True", "0"]


def test_fifo_queue_storage_replaced_by_dropped_item_del(loop_name, impl):
    # A maxlen deque drops its oldest item inside append(); that item's
    # __del__ replaces q._queue.
    out = run_scenario(loop_name, impl, """
        class Deque(collections.deque):
            pass

        state = {}
        class Item:
            def __del__(self):
                q = state.pop("queue", None)
                if q is not None:
                    ref = weakref.ref(q._queue) if isinstance(q._queue, Deque) else None
                    q._queue = collections.deque()
                    state["alive"] = None if ref is None else ref() is not None

        async def main():
            for kind in (collections.deque, Deque):
                for op in ("put_nowait", "put"):
                    q = P.Queue()
                    q._queue = kind(maxlen=1)
                    q._queue.append(Item())
                    state["queue"] = q
                    if op == "put_nowait":
                        q.put_nowait(0)
                    else:
                        await q.put(0)
                    print(kind.__name__, op, state.pop("alive"), len(q._queue))

        run(main())
    """)
    assert out == ["deque", "put_nowait", "None", "0", "deque", "put", "None", "0",
                   "Deque", "put_nowait", "True", "0", "Deque", "put", "True", "0"]


def test_queue_storage_replaced_by_its_own_len(loop_name, impl):
    # A storage subclass whose __len__/__bool__/__iter__ replace q._queue
    # (qsize(), empty(), full() and repr() call them).
    out = run_scenario(loop_name, impl, """
        state = {}
        class Storage(collections.deque):
            def _swap(self):
                q = state.pop("queue", None)
                if q is not None:
                    q._queue = collections.deque()
            def __len__(self):
                self._swap()
                return collections.deque.__len__(self)
            def __bool__(self):
                self._swap()
                return collections.deque.__len__(self) > 0
            def __iter__(self):
                self._swap()
                return collections.deque.__iter__(self)

        async def main():
            results = []
            for call in ("qsize", "empty", "full", "repr"):
                q = P.Queue(maxsize=5)
                q._queue = Storage([1, 2])
                state["queue"] = q
                if call == "repr":
                    results.append("_queue=[]" in repr(q))  # asyncio: `if self._queue:` swaps, then list()
                else:
                    results.append(getattr(q, call)())
            print(*results)

        run(main())
    """)
    assert out == ["2", "False", "False", "True"]


def test_waitop_reentered_from_its_future(loop_name, impl):
    # A Future subclass's done(), called while a Queue.get() resumes, closes,
    # throws into or sends to that same get(): it is already executing (the
    # C op used to go on with a future its nested run had dropped).
    out = run_scenario(loop_name, impl, """
        base = pyasync_c.Loop if LOOP == "pyasync_c" else asyncio.SelectorEventLoop

        class F(asyncio.Future):
            hook = None
            def done(self):
                hook, F.hook = F.hook, None
                if hook is not None:
                    hook()
                return super().done()

        class L(base):
            def create_future(self):
                return F(loop=self)

        async def main():
            for what in ("close", "throw", "send"):
                q = P.Queue()
                op = q.get().__await__()
                fut = op.send(None)
                errors = []
                def hook():
                    try:
                        if what == "close":
                            op.close()
                        elif what == "throw":
                            op.throw(KeyError("x"))
                        else:
                            op.send(None)
                    except ValueError as e:
                        errors.append(e)
                F.hook = hook
                fut._asyncio_future_blocking = False   # as a Task resets it
                assert op.send(None) is fut           # still waiting
                assert all("already executing" in str(e) for e in errors), errors
                F.hook = None     # (asyncio's own await never calls done())
                q.put_nowait(what)
                try:
                    op.send(None)
                except StopIteration as e:
                    print(what, e.value)

        loop = L()
        loop.run_until_complete(main())
        loop.close()
    """)
    assert out == ["close", "close", "throw", "throw", "send", "send"]


# ---- a subclass's qsize() of any type ---------------------------------------

@pytest.mark.parametrize("value, full", [
    (1.5, False), (2.5, True), (2.0, True), (10**30, True), (-(10**30), False),
    (True, False), (Fraction(5, 2), True),
])
def test_queue_subclass_qsize_compared_as_object(prims, run, value, full):
    class Q(prims.Queue):
        def qsize(self):
            return value

    async def main():
        q = Q(maxsize=2)
        assert q.full() is full
        if full:
            with pytest.raises(asyncio.QueueFull):
                q.put_nowait(1)
        else:
            q.put_nowait(1)
            await q.put(2)
            assert q.get_nowait() == 1

    run(main())


def test_queue_subclass_qsize_not_comparable(prims, run):
    class Q(prims.Queue):
        def qsize(self):
            return None

    async def main():
        q = Q(maxsize=2)
        with pytest.raises(TypeError):
            q.full()
        with pytest.raises(TypeError):
            q.put_nowait(1)
        assert Q().full() is False    # maxsize 0: qsize() is not asked

    run(main())


def test_queue_full_returns_the_comparison_result(prims, run):
    # asyncio's full() is `return self.qsize() >= self._maxsize`
    marker = object()

    class Size:
        def __ge__(self, other):
            return marker

    class Q(prims.Queue):
        def qsize(self):
            return Size()

    async def main():
        q = Q(maxsize=3)
        assert q.full() is marker
        with pytest.raises(asyncio.QueueFull):   # the marker is true
            q.put_nowait(1)

    run(main())


# ---- set_write_buffer_limits -------------------------------------------------

LIMIT_CASES = [
    # (kwargs, get_write_buffer_limits() or (exception type, message))
    (dict(high=2.5), (0.0, 2.5)),
    (dict(low=2.5), (2.5, 10.0)),
    (dict(high=10**30), (10**30 // 4, 10**30)),
    (dict(high=10**30, low=10**29), (10**29, 10**30)),
    (dict(high=2**63), (2**61, 2**63)),
    (dict(low=2**62), (2**62, 2**64)),
    (dict(low=2**61 + 1), (2**61 + 1, 2**63 + 4)),
    (dict(high=2**63 - 1, low=2**62), (2**62, 2**63 - 1)),
    (dict(high=True, low=False), (False, True)),
    (dict(high=Fraction(9, 2)), (1, Fraction(9, 2))),
    (dict(low=Fraction(1, 3)), (Fraction(1, 3), Fraction(4, 3))),
    (dict(high=float("inf")), (ValueError, "high (inf) must be >= low (nan) must be >= 0")),
    (dict(high=float("inf"), low=0), (0, float("inf"))),
    (dict(), (16384, 65536)),
    (dict(high=None, low=None), (16384, 65536)),
    (dict(high=100), (25, 100)),
    (dict(high=-1), (ValueError, "high (-1) must be >= low (-1) must be >= 0")),
    (dict(high=-5), (ValueError, "high (-5) must be >= low (-2) must be >= 0")),
    (dict(high=1, low=2), (ValueError, "high (1) must be >= low (2) must be >= 0")),
    (dict(high=float("nan")), (ValueError, "high (nan) must be >= low (nan) must be >= 0")),
    (dict(high=-0.5), (ValueError, "high (-0.5) must be >= low (-1.0) must be >= 0")),
    (dict(high="1"), (TypeError, "unsupported operand type(s) for //: 'str' and 'int'")),
    (dict(high="9", low="1"), (TypeError, "'>=' not supported between instances of 'str' and 'int'")),
]


@pytest.mark.parametrize("kwargs, expected", LIMIT_CASES, ids=[repr(c[0]) for c in LIMIT_CASES])
def test_set_write_buffer_limits_values(loop, kwargs, expected):
    async def main():
        a, b = socket.socketpair()
        transport, _ = await loop.create_connection(asyncio.Protocol, sock=a)
        try:
            before = transport.get_write_buffer_limits()
            if isinstance(expected[0], type):
                exc_type, message = expected
                with pytest.raises(exc_type) as info:
                    transport.set_write_buffer_limits(**kwargs)
                assert str(info.value) == message
                assert transport.get_write_buffer_limits() == before
            else:
                transport.set_write_buffer_limits(**kwargs)
                limits = transport.get_write_buffer_limits()
                assert limits == expected
                assert [type(v) for v in limits] == [type(v) for v in expected]
        finally:
            transport.abort()
            b.close()
            await asyncio.sleep(0)

    loop.run_until_complete(main())


class RecordingProtocol(asyncio.Protocol):
    def __init__(self):
        self.events = []

    def pause_writing(self):
        self.events.append("pause")

    def resume_writing(self):
        self.events.append("resume")


def test_write_buffer_limits_compared_with_buffer_size(loop):
    # asyncio pauses when size > high and resumes when size <= low, comparing
    # the stored objects: fractional and huge limits act on their exact value.
    async def main():
        a, b = socket.socketpair()
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        transport, protocol = await loop.create_connection(RecordingProtocol, sock=a)
        try:
            transport.set_write_buffer_limits(high=10**30)
            transport.write(b"x" * (4 << 20))      # the peer does not read: most is queued
            size = transport.get_write_buffer_size()
            assert size > 0
            assert protocol.events == []
            for high in (size + 0.5, float(size), Fraction(2 * size + 1, 2), 2**64, size):
                transport.set_write_buffer_limits(high=high, low=0)
                assert protocol.events == [], high
            transport.set_write_buffer_limits(high=size - 0.5, low=0)
            assert protocol.events == ["pause"]
            # resume once the buffer is <= low (a float under the size: not yet)
            transport.set_write_buffer_limits(high=size - 0.5, low=0.5)
            assert protocol.events == ["pause"]
            received = 0
            b.setblocking(False)
            while transport.get_write_buffer_size() > 0:
                try:
                    received += len(b.recv(1 << 20))
                except BlockingIOError:
                    pass
                await asyncio.sleep(0)
            assert protocol.events == ["pause", "resume"]
        finally:
            transport.abort()
            b.close()
            await asyncio.sleep(0)

    loop.run_until_complete(main())


def test_write_buffer_limits_private_attributes(loop):
    # _high_water/_low_water are what asyncio's _FlowControlMixin stores
    async def main():
        a, b = socket.socketpair()
        transport, _ = await loop.create_connection(asyncio.Protocol, sock=a)
        try:
            transport.set_write_buffer_limits(high=10**30, low=2.5)
            assert (transport._low_water, transport._high_water) == (2.5, 10**30)
            transport.set_write_buffer_limits(high=1000)
            assert (transport._low_water, transport._high_water) == (250, 1000)
        finally:
            transport.abort()
            b.close()
            await asyncio.sleep(0)

    loop.run_until_complete(main())


class OrderedOnly:
    """A limit that only compares (no __index__, __float__, __floor__):
    asyncio accepts it, since it only ever compares the limits."""

    def __init__(self, value):
        self.value = value

    def _other(self, other):
        return other.value if isinstance(other, OrderedOnly) else other

    def __ge__(self, other):
        return self.value >= self._other(other)

    def __gt__(self, other):
        return self.value > self._other(other)

    def __le__(self, other):
        return self.value <= self._other(other)

    def __lt__(self, other):
        return self.value < self._other(other)

    def __eq__(self, other):
        return isinstance(other, OrderedOnly) and self.value == other.value

    __hash__ = None

    def __repr__(self):
        return f"OrderedOnly({self.value})"


def test_write_buffer_limits_comparison_only_objects(loop):
    async def main():
        a, b = socket.socketpair()
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        transport, protocol = await loop.create_connection(RecordingProtocol, sock=a)
        try:
            transport.set_write_buffer_limits(high=OrderedOnly(1000), low=0)
            assert transport.get_write_buffer_limits() == (0, OrderedOnly(1000))
            transport.set_write_buffer_limits(high=10**30)
            transport.write(b"x" * (4 << 20))      # the peer does not read: most is queued
            size = transport.get_write_buffer_size()
            assert size > 0
            for high in (OrderedOnly(size + 0.5), OrderedOnly(size), OrderedOnly(2**64)):
                transport.set_write_buffer_limits(high=high, low=OrderedOnly(0))
                assert protocol.events == [], high
            transport.set_write_buffer_limits(high=OrderedOnly(size - 0.5), low=OrderedOnly(0.5))
            assert protocol.events == ["pause"]
            assert transport.get_write_buffer_limits() == (OrderedOnly(0.5), OrderedOnly(size - 0.5))
            b.setblocking(False)
            while transport.get_write_buffer_size() > 0:
                try:
                    b.recv(1 << 20)
                except BlockingIOError:
                    pass
                await asyncio.sleep(0)
            assert protocol.events == ["pause", "resume"]
        finally:
            transport.abort()
            b.close()
            await asyncio.sleep(0)

    loop.run_until_complete(main())
