"""The C classes' async methods are coroutine functions, and their instances
take attributes, as asyncio's Python classes' do (issue #12).

- every attribute for which inspect.iscoroutinefunction() is True on an
  asyncio class (Queue.get/put/join, Lock/Semaphore.acquire, __aenter__,
  __aexit__, Event.wait) is one on ours too, for inspect and asyncio, on the
  class and on an instance's bound method, with the same signature;
- so unittest.mock makes AsyncMocks for them (patch.object on the class,
  which must therefore be mutable, and create_autospec);
- instances have a __dict__: mock.patch.object(instance, "get", ...) works
  and unpatching gives the C method back; the dict is seen by the GC;
- the methods are still C calls: Queue.get(q) works and a wrong self is a
  TypeError, as with a method descriptor.
"""
from __future__ import annotations

import asyncio
import copy
import gc
import inspect
import pickle
import sys
import weakref
from unittest import mock

import pytest

from pyasync_c import _primitives
from primitive_loops import loop_name_with_installed  # noqa: F401  (fixture: adds "installed")

CLASS_NAMES = ("Lock", "Event", "Semaphore", "BoundedSemaphore", "Queue", "LifoQueue", "PriorityQueue")
# asyncio's own classes, whatever install_primitives() did to the asyncio namespace
import asyncio.locks
import asyncio.queues

STDLIB = {name: getattr(asyncio.queues if "Queue" in name else asyncio.locks, name) for name in CLASS_NAMES}
assert all(STDLIB[name] is not getattr(_primitives, name) for name in CLASS_NAMES), \
    "run these tests without install_primitives()"


def coroutine_attrs(cls: type) -> list[str]:
    return sorted(name for name in dir(cls) if inspect.iscoroutinefunction(getattr(cls, name)))


def make(cls: type):
    return cls(2) if "Semaphore" in cls.__name__ else cls()


COROUTINE_ATTRS = [(name, attr) for name in CLASS_NAMES for attr in coroutine_attrs(STDLIB[name])]


def test_the_stdlib_enumeration_finds_what_we_expect() -> None:
    names = {f"{c}.{a}" for c, a in COROUTINE_ATTRS}
    assert {"Queue.get", "Queue.put", "Queue.join", "LifoQueue.get", "Lock.acquire", "Lock.__aenter__",
            "Lock.__aexit__", "Semaphore.acquire", "BoundedSemaphore.__aexit__", "Event.wait"} <= names


@pytest.mark.parametrize("name", CLASS_NAMES)
def test_same_coroutine_functions_as_asyncio(name: str) -> None:
    ours, theirs = getattr(_primitives, name), STDLIB[name]
    assert coroutine_attrs(ours) == coroutine_attrs(theirs)
    obj = make(ours)
    for check in (inspect.iscoroutinefunction, asyncio.iscoroutinefunction):
        for attr in dir(theirs):
            if attr.startswith("__") and attr not in ("__aenter__", "__aexit__"):
                continue
            if not hasattr(ours, attr):
                continue
            expected = check(getattr(theirs, attr))
            assert check(getattr(ours, attr)) == expected, (check.__module__, name, attr)
            assert check(getattr(obj, attr)) == expected, (check.__module__, name, attr)


@pytest.mark.parametrize("name, attr", COROUTINE_ATTRS, ids=[f"{c}.{a}" for c, a in COROUTINE_ATTRS])
def test_signature_and_introspection_match_asyncio(name: str, attr: str) -> None:
    ours, theirs = getattr(_primitives, name), STDLIB[name]
    method = getattr(ours, attr)
    assert inspect.signature(method) == inspect.signature(getattr(theirs, attr))
    bound = getattr(make(ours), attr)
    assert inspect.ismethod(bound) and bound.__func__ is method
    assert inspect.signature(bound) == inspect.signature(getattr(make(theirs), attr))
    assert method.__name__ == attr
    owner = method.__objclass__
    assert issubclass(ours, owner) and owner.__module__ == "pyasync_c._primitives"
    assert method.__qualname__ == f"{owner.__name__}.{attr}"
    assert attr in repr(method) and owner.__name__ in repr(method)
    if not attr.startswith("__"):
        assert method.__doc__
    assert pickle.loads(pickle.dumps(method)) is method
    assert copy.copy(method) is method
    if sys.version_info >= (3, 12):
        marked = inspect.markcoroutinefunction(lambda: None)
        assert method._is_coroutine_marker is marked._is_coroutine_marker


@pytest.mark.parametrize("name", CLASS_NAMES)
def test_patch_object_on_the_class_makes_async_mocks(name: str) -> None:
    for cls in (STDLIB[name], getattr(_primitives, name)):
        for attr in coroutine_attrs(STDLIB[name]):
            original = cls.__dict__.get(attr)
            with mock.patch.object(cls, attr) as patched:
                assert isinstance(patched, mock.AsyncMock), (cls, attr)
                assert getattr(cls, attr) is patched
            assert cls.__dict__.get(attr) is original
        spec = mock.create_autospec(cls, instance=True)
        for attr in coroutine_attrs(STDLIB[name]):
            if not attr.startswith("__"):
                assert isinstance(getattr(spec, attr), mock.AsyncMock), (cls, attr)


async def consume(queue: asyncio.Queue) -> list:
    """Application code under test: drain two items."""
    return [await queue.get(), await queue.get()]


def test_patched_queue_get_is_awaited_by_unmodified_code(loop_name, run) -> None:
    """mock.patch.object(asyncio.Queue, "get") as a test would write it: on
    stdlib, and on pyasync_c's class under install_primitives()."""
    if loop_name == "installed":
        assert asyncio.Queue is _primitives.Queue
    with mock.patch.object(asyncio.Queue, "get", side_effect=["a", "b"]) as get:
        assert isinstance(get, mock.AsyncMock)
        assert run(consume(asyncio.Queue())) == ["a", "b"]
    assert get.await_count == 2

    async def real():
        q = asyncio.Queue()
        q.put_nowait(1)
        q.put_nowait(2)
        return await consume(q)

    assert run(real()) == [1, 2]                 # unpatched: the real method again


@pytest.mark.parametrize("name", ["Queue", "LifoQueue", "PriorityQueue"])
def test_patch_object_on_an_instance(name: str, run) -> None:
    for cls in (STDLIB[name], getattr(_primitives, name)):
        q = cls()

        async def main():
            with mock.patch.object(q, "put", new=mock.AsyncMock(return_value="patched")) as put:
                assert await q.put(1) == "patched"
                put.assert_awaited_once_with(1)
                assert q.qsize() == 0
            assert "put" not in vars(q)
            assert await q.put(2) is None            # the real put again
            with mock.patch.object(q, "get") as get:
                assert isinstance(get, mock.AsyncMock)
                await q.get()
            return await q.get()

        assert run(main()) == 2
        assert inspect.ismethod(q.put) and q.put.__func__ is cls.put


@pytest.mark.parametrize("name", ["Lock", "Semaphore", "BoundedSemaphore", "Event"])
def test_patch_object_on_a_lock_instance(name: str, run) -> None:
    for cls in (STDLIB[name], getattr(_primitives, name)):
        obj = make(cls)
        attr = "wait" if name == "Event" else "acquire"

        async def main():
            with mock.patch.object(obj, attr) as patched:
                assert isinstance(patched, mock.AsyncMock)
                await getattr(obj, attr)()
                patched.assert_awaited_once_with()
            if name == "Event":
                obj.set()
            return await getattr(obj, attr)()

        assert run(main()) is True


def test_unbound_calls_and_wrong_self() -> None:
    Q, L = _primitives.Queue, _primitives.Lock
    q = Q()

    async def main():
        await Q.put(q, 1)
        await Q.put(q, item=2)
        await q.put(item=3)
        return [await Q.get(q), await _primitives.LifoQueue.get(q), await q.get()]

    assert asyncio.run(main()) == [1, 2, 3]
    with pytest.raises(TypeError, match="doesn't apply to a 'Lock' object"):
        Q.get(L())
    with pytest.raises(TypeError, match="doesn't apply to a 'int' object"):
        L.acquire(1)
    with pytest.raises(TypeError, match="doesn't apply"):
        Q.get.__get__(1, int)
    with pytest.raises(TypeError, match="needs an argument"):
        Q.get()
    with pytest.raises(TypeError, match="missing required argument 'item'"):
        q.put()
    with pytest.raises(TypeError, match="takes 2 positional arguments but 3 were given"):
        q.put(1, 2)
    with pytest.raises(TypeError, match="unexpected keyword argument 'x'"):
        q.put(x=1)
    with pytest.raises(TypeError, match="multiple values for argument 'item'"):
        q.put(1, item=1)
    with pytest.raises(TypeError, match="takes 1 positional argument but 2 were given"):
        q.get(1)
    assert Q.get.__get__(None, Q) is Q.get
    assert q.qsize() == 0


def test_aexit_takes_the_exception_arguments_by_keyword_too(run) -> None:
    lock = _primitives.Lock()

    async def main():
        await lock.acquire()
        await lock.__aexit__(exc_type=None, exc=None, tb=None)
        return lock.locked()

    assert run(main()) is False
    with pytest.raises(TypeError, match="missing required argument 'tb'"):
        lock.__aexit__(None, None)


@pytest.mark.parametrize("name", CLASS_NAMES)
def test_instances_take_attributes(name: str) -> None:
    for cls in (STDLIB[name], getattr(_primitives, name)):
        obj = make(cls)
        obj.tag = "x"
        assert obj.tag == "x" and vars(obj)["tag"] == "x"
        del obj.tag
        assert not hasattr(obj, "tag")
        obj.__dict__ = {"other": 1}
        assert obj.other == 1
        clone = copy.copy(obj)
        assert clone.other == 1 and type(clone) is cls
        assert pickle.loads(pickle.dumps(obj)).other == 1


@pytest.mark.parametrize("name", CLASS_NAMES)
def test_python_subclasses_with_and_without_slots(name: str, run) -> None:
    base = getattr(_primitives, name)

    class Plain(base):
        pass

    class Slotted(base):
        __slots__ = ("extra",)

    for cls in (Plain, Slotted):
        obj = make(cls)
        obj.tag = 1                      # the base's __dict__
        assert vars(obj) == {"tag": 1}
        if cls is Slotted:
            obj.extra = 2
            assert obj.extra == 2 and "extra" not in vars(obj)
        assert inspect.iscoroutinefunction(getattr(obj, coroutine_attrs(STDLIB[name])[-1]))
        ref = weakref.ref(obj)
        obj.me = obj                     # a cycle through the instance dict
        del obj
        gc.collect()
        assert ref() is None, cls


@pytest.mark.parametrize("name", CLASS_NAMES)
def test_a_cycle_through_the_instance_dict_is_collected(name: str) -> None:
    cls = getattr(_primitives, name)
    for attr in coroutine_attrs(STDLIB[name]):
        obj = make(cls)
        obj.me = obj
        setattr(obj, "saved_" + attr.strip("_"), getattr(obj, attr))   # a bound method: obj again
        ref = weakref.ref(obj)
        del obj
        gc.collect()
        assert ref() is None, (name, attr)


def test_queue_with_patched_method_in_a_cycle_is_collected(run) -> None:
    q = _primitives.Queue()
    q.get = mock.AsyncMock(return_value=q)      # as patch.object(q, "get", new=...) sets it

    async def main():
        return await q.get()

    assert run(main()) is q
    ref = weakref.ref(q)
    del q                                # the mock (in q's dict) holds q: a cycle
    gc.collect()
    assert ref() is None


def test_methods_still_work_on_every_loop(loop_name, run) -> None:
    async def main():
        q = _primitives.Queue(1)
        lock, sem, event = _primitives.Lock(), _primitives.BoundedSemaphore(1), _primitives.Event()
        results = []

        async def producer():
            for i in range(3):
                await q.put(i)
            await q.join()
            event.set()

        task = asyncio.ensure_future(producer())
        for _ in range(3):
            async with lock, sem:
                results.append(await q.get())
                q.task_done()
        await event.wait()
        await task
        assert await lock.acquire() is True and await sem.acquire() is True
        return results

    assert run(main()) == [0, 1, 2]


# ---------------------------------------------------------------- patches of the methods they call

async def lock_patch_outcomes(mod) -> list:
    """asyncio's locks call self.acquire()/release()/locked(): patches of
    those, on the class or on the instance, take part."""
    out = []
    lock = mod.Lock()
    with mock.patch.object(mod.Lock, "release") as release:
        async with lock:
            pass
        out.append(("class release", release.call_count, lock.locked()))
    lock.release()
    with mock.patch.object(lock, "release") as release:
        async with lock:
            pass
        out.append(("instance release", release.call_count, lock.locked()))
    lock.release()
    with mock.patch.object(mod.Lock, "acquire") as acquire:
        try:
            async with lock:
                pass
        except RuntimeError as exc:              # release() of a lock the mock did not take
            out.append(("class acquire", acquire.await_count, str(exc)))
    async with lock:
        out.append(("unpatched", lock.locked()))
    sem = mod.BoundedSemaphore(1)
    with mock.patch.object(sem, "locked", return_value=True) as locked:
        out.append(("instance locked", "[locked]" in repr(sem), locked.called))
        waiter = asyncio.ensure_future(sem.acquire())
        await asyncio.sleep(0)
        out.append(("blocked", waiter.done()))
        waiter.cancel()
    with mock.patch.object(mod.Semaphore, "locked", return_value=True):
        waiter = asyncio.ensure_future(sem.acquire())
        await asyncio.sleep(0)
        out.append(("class locked blocks", waiter.done()))
        waiter.cancel()
    async with sem:
        out.append(("unpatched", sem.locked()))
    return out


async def queue_patch_outcomes(mod) -> list:
    out = []
    q = mod.Queue(2)
    with mock.patch.object(mod.Queue, "put_nowait") as put_nowait:
        await q.put(1)
        out.append(("class put_nowait", put_nowait.call_args_list, q.qsize()))
    await q.put(1)
    with mock.patch.object(q, "get_nowait", return_value="mocked"):
        out.append(("instance get_nowait", await q.get()))
    out.append(("unpatched", await q.get()))
    lifo = mod.LifoQueue(1)
    with mock.patch.object(mod.Queue, "qsize", return_value=5):
        out.append(("class qsize", lifo.full()))
        with pytest.raises(asyncio.QueueFull):
            lifo.put_nowait(1)
    lifo.put_nowait(1)
    with mock.patch.object(lifo, "empty", return_value=True):
        waiter = asyncio.ensure_future(lifo.get())
        await asyncio.sleep(0)
        out.append(("instance empty", waiter.done()))
        waiter.cancel()
    with mock.patch.object(mod.LifoQueue, "_get", return_value="from _get"):
        out.append(("class _get", lifo.get_nowait(), lifo.qsize()))
    out.append(("unpatched", lifo.get_nowait()))
    with mock.patch.object(lifo, "_put") as put:
        lifo.put_nowait(2)
        out.append(("instance _put", put.call_args_list, lifo.qsize()))
    seq = mod.Queue()
    seq.put_nowait(1)
    for name in ("get_nowait", "put_nowait", "empty"):    # one patch after another, same dict size
        with mock.patch.object(seq, name, return_value=False) as patched:
            result = await (seq.get() if name != "put_nowait" else seq.put(2))
            out.append(("in turn", name, result, patched.call_count, seq.qsize()))
    lifo.tag = "an attribute"                     # not a hook: the C paths still apply
    lifo.put_nowait(3)
    out.append(("with an attribute", await lifo.get(), lifo.qsize()))
    return out


@pytest.mark.parametrize("scenario", [lock_patch_outcomes, queue_patch_outcomes], ids=["locks", "queues"])
def test_patches_of_the_methods_they_call_take_part_as_in_asyncio(scenario, run) -> None:
    stdlib = run(scenario(asyncio.locks if scenario is lock_patch_outcomes else asyncio.queues))
    ours = run(scenario(_primitives))
    assert ours == stdlib
    assert len(stdlib) >= 7
