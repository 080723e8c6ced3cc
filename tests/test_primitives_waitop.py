"""The awaitables of the C primitives (``_WaitOp``) must answer send/throw/close
exactly as asyncio's coroutines do, in every state: not started, suspended on
a waiter future, returned, failed, closed, thrown into.

Each case builds the awaitable from asyncio's class and from pyasync_c's C one
inside a running loop (stdlib loop and pyasync_c's, fixture ``run``), drives it
by hand into a state, applies one action, then a follow-up ``send(None)``, and
compares the outcomes as data: yielded future / StopIteration value /
exception type and message.
"""
from __future__ import annotations

import asyncio
import sys
from typing import Any, Callable

import pytest

from primitive_loops import loop_name_with_uvloop  # noqa: F401  (fixture: loop_name plus uvloop)

from pyasync_c import _primitives

# kind -> make(module) -> (awaitable that must wait, wake() that lets it finish)
def _sem(m: Any) -> tuple[Any, Callable[[], Any]]:
    sem = m.Semaphore(0)
    return sem.acquire(), sem.release


def _locked(m: Any) -> tuple[Any, Callable[[], Any]]:
    lock = m.Lock()
    _finish_now(lock.acquire())
    return lock.acquire(), lock.release


def _event(m: Any) -> tuple[Any, Callable[[], Any]]:
    ev = m.Event()
    return ev.wait(), ev.set


def _qget(m: Any) -> tuple[Any, Callable[[], Any]]:
    q = m.Queue()
    return q.get(), lambda: q.put_nowait("item")


def _qput(m: Any) -> tuple[Any, Callable[[], Any]]:
    q = m.Queue(1)
    q.put_nowait("first")
    return q.put("second"), q.get_nowait


def _sem_free(m: Any) -> tuple[Any, Callable[[], Any]]:
    sem = m.Semaphore(1)           # fast path: finishes on the first send
    return sem.acquire(), lambda: None


def _finish_now(aw: Any) -> Any:
    try:
        aw.send(None)
    except StopIteration as e:
        return e.value
    raise AssertionError("expected to finish without waiting")


KINDS: dict[str, Callable[[Any], tuple[Any, Callable[[], Any]]]] = {
    "Semaphore.acquire": _sem,
    "Lock.acquire": _locked,
    "Event.wait": _event,
    "Queue.get": _qget,
    "Queue.put": _qput,
    "Semaphore.acquire-free": _sem_free,
}


def _return(aw: Any, wake: Callable[[], Any]) -> None:
    aw.send(None)                  # suspends (the fast-path kind returns here: StopIteration)
    wake()
    aw.send(None)


def _fail_waiter(aw: Any, wake: Callable[[], Any]) -> None:
    fut = aw.send(None)
    fut.cancel()
    aw.send(None)


PREPS: dict[str, Callable[[Any, Callable[[], Any]], Any]] = {
    "fresh": lambda aw, wake: None,
    "suspended": lambda aw, wake: aw.send(None),
    "returned": _return,
    "failed": _fail_waiter,
    "closed-fresh": lambda aw, wake: aw.close(),
    "closed-suspended": lambda aw, wake: (aw.send(None), aw.close()),
    "thrown-fresh": lambda aw, wake: aw.throw(KeyError("t")),
    "thrown-suspended": lambda aw, wake: (aw.send(None), aw.throw(KeyError("t"))),
    "cancelled-suspended": lambda aw, wake: (aw.send(None), aw.throw(asyncio.CancelledError())),
}

ACTIONS: dict[str, Callable[[Any], Any]] = {
    "send": lambda aw: aw.send(None),
    "send-value": lambda aw: aw.send(1),
    "throw": lambda aw: aw.throw(KeyError("k")),
    "throw-class": lambda aw: aw.throw(ValueError),
    "throw-cancelled": lambda aw: aw.throw(asyncio.CancelledError("c")),
    "throw-generatorexit": lambda aw: aw.throw(GeneratorExit()),
    "throw-not-exception": lambda aw: aw.throw(1),
    "throw-no-args": lambda aw: aw.throw(),
    "throw-bad-traceback": lambda aw: aw.throw(KeyError, None, 1),
    "throw-instance-and-value": lambda aw: aw.throw(KeyError("x"), 1),
    "throw-legacy": lambda aw: aw.throw(KeyError, "v"),
    "close": lambda aw: aw.close(),
}


def _as_data(f: Callable[[], Any]) -> tuple[Any, ...]:
    try:
        r = f()
    except StopIteration as e:
        return ("stop", e.value)
    except BaseException as e:  # noqa: BLE001 - compared as data
        return ("raise", type(e), str(e))
    if isinstance(r, asyncio.Future):
        return ("yield-future", r.done())
    return ("ok", r)


def _outcome(m: Any, kind: str, prep: str, action: str) -> tuple[Any, ...]:
    aw, wake = KINDS[kind](m)
    try:
        try:
            PREPS[prep](aw, wake)
        except BaseException:  # noqa: BLE001 - the state is what matters
            pass
        first = _as_data(lambda: ACTIONS[action](aw))
        follow = _as_data(lambda: aw.send(None))
        return first, follow
    finally:
        try:
            aw.close()
        except BaseException:  # noqa: BLE001 - cleanup only
            pass


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("action", list(ACTIONS))
@pytest.mark.parametrize("prep", list(PREPS))
@pytest.mark.parametrize("kind", list(KINDS))
def test_state_action_matrix_matches_stdlib(run, kind: str, prep: str, action: str) -> None:
    if kind.endswith("-free") and prep.endswith(("suspended", "failed")):
        pytest.skip("the fast path never suspends")

    async def main():
        return (_outcome(asyncio, kind, prep, action), _outcome(_primitives, kind, prep, action))

    std, c = run(main())
    assert c == std


def test_throw_after_return_is_cannot_reuse(run) -> None:
    """The reported bug: throw() on a finished op re-raised the exception."""
    async def main():
        sem = _primitives.Semaphore(1)
        aw = sem.acquire()
        with pytest.raises(StopIteration):
            aw.send(None)
        with pytest.raises(RuntimeError, match="cannot reuse already awaited coroutine"):
            aw.throw(KeyError("after done"))
        with pytest.raises(RuntimeError, match="cannot reuse already awaited coroutine"):
            aw.throw(GeneratorExit())
        assert aw.close() is None
        sem.release()
        return True
    assert run(main())


@pytest.mark.skipif(sys.version_info < (3, 12), reason="legacy throw() warns from 3.12")
def test_legacy_throw_signature_warns_like_a_coroutine(run) -> None:
    async def main():
        out = []
        for m in (asyncio, _primitives):
            sem = m.Semaphore(0)
            aw = sem.acquire()
            aw.send(None)
            with pytest.warns(DeprecationWarning, match="signature of throw"):
                with pytest.raises(KeyError):
                    aw.throw(KeyError, KeyError("k"), None)
            out.append(sem.locked())
        return out
    assert run(main()) == [True, True]
