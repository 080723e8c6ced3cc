"""sleep(): asyncio.sleep and pyasync_c's native one must behave the same.

Every test runs with ``sleep`` being asyncio's (id ``stdlib``) and the C one
(``c``), on the stdlib loop and on pyasync_c's (``run`` fixture).  Where the
exact outcome is version-dependent (wait_for/timeout at 0), the C sleep's
outcome is compared with the stdlib sleep's on the same loop kind.
"""
from __future__ import annotations

import asyncio
import collections.abc
import gc
import weakref
from decimal import Decimal
from fractions import Fraction
from typing import Any, Callable

import pytest

from primitive_loops import loop_name_with_uvloop, skip_eager_factory_on_broken_uvloop  # noqa: F401  (fixture: loop_name plus uvloop)

from pyasync_c import _primitives

Run = Callable[..., Any]
STDLIB_SLEEP = asyncio.tasks.sleep
SLEEPS = {"stdlib": STDLIB_SLEEP, "c": _primitives.sleep}


@pytest.fixture(params=list(SLEEPS))
def sleep(request: pytest.FixtureRequest) -> Callable[..., Any]:
    return SLEEPS[request.param]


def outcome(run: Run, make_coro: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return ("ok", run(make_coro()))
    except BaseException as e:   # noqa: BLE001 - compared as data
        return ("raise", type(e))


# ------------------------------------------------------------------ results


@pytest.mark.parametrize("delay", [0, 0.0, -1, -0.5, -10**30, False, Decimal("-1"),
                                   Fraction(0), float("-inf")])
def test_nonpositive_delay_returns_result(run: Run, sleep, delay) -> None:
    async def main():
        return (await sleep(delay), await sleep(delay, "r"), await sleep(delay, result=(1, 2)),
                await sleep(delay=delay, result=ValueError("v")))
    a, b, c, d = run(main())
    assert a is None and b == "r" and c == (1, 2)
    assert type(d) is ValueError and d.args == ("v",)


def test_c_sleep0_is_not_a_python_coroutine() -> None:
    s = _primitives.sleep(0)
    assert type(s).__name__ == "_Sleep0" and s.__name__ == s.__qualname__ == "sleep"
    assert asyncio.iscoroutine(s) and isinstance(s, collections.abc.Coroutine)
    s.close()
    big = _primitives.sleep(-10**30)
    assert type(big) is type(s)
    big.close()
    # an int or float delay > 0 (and NaN): the C timed sleep, also coroutine-like
    for delay in (1, 10**30, 0.5, float("nan")):
        c = _primitives.sleep(delay)
        assert type(c).__name__ == "_SleepFor" and c.__name__ == c.__qualname__ == "sleep"
        assert asyncio.iscoroutine(c) and isinstance(c, collections.abc.Coroutine)
        c.close()
    # any other delay type: stdlib's own coroutine
    for delay in (Fraction(1, 2), Decimal("0.5"), True):
        c = _primitives.sleep(delay)
        assert asyncio.iscoroutine(c) and c.cr_code is STDLIB_SLEEP.__code__
        c.close()


def test_positive_delay_really_waits(run: Run, sleep) -> None:
    async def main():
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        r = await sleep(0.02, "late")
        return r, loop.time() - t0
    r, elapsed = run(main())
    assert r == "late" and elapsed >= 0.019


def test_c_sleep_positive_uses_original_even_if_patched(run: Run, monkeypatch) -> None:
    monkeypatch.setattr(asyncio, "sleep", _primitives.sleep)
    monkeypatch.setattr(asyncio.tasks, "sleep", _primitives.sleep)

    async def main():
        return await asyncio.sleep(0.001, 1), await asyncio.sleep(0, 2)
    assert run(main()) == (1, 2)


def test_create_task_and_ensure_future(run: Run, sleep) -> None:
    async def main():
        t = asyncio.create_task(sleep(0, 5))
        f = asyncio.ensure_future(sleep(-1, 6))
        assert "sleep()" in repr(t)
        return await t, await f, await asyncio.gather(sleep(0, 7), sleep(0.001, 8))
    assert run(main()) == (5, 6, [7, 8])


def test_runner_accepts_it_as_main(run: Run, sleep) -> None:
    assert run(sleep(0, "main")) == "main"


# ------------------------------------------------------------------ scheduling


async def record_interleaving(sleep, n_tasks: int = 5, k: int = 4) -> list[Any]:
    """Tasks doing sleep(0) in a loop, plus call_soon callbacks and a task
    that re-arms call_soon each step: the full order of events."""
    loop = asyncio.get_running_loop()
    seq: list[Any] = []

    async def worker(i: int) -> None:
        for j in range(k):
            seq.append((i, j))
            await sleep(0 if i % 2 else -1)
        seq.append((i, "end"))

    def tick(n: int) -> None:
        seq.append(("tick", n))
        if n < 2 * k:
            loop.call_soon(tick, n + 1)

    tasks = [asyncio.create_task(worker(i)) for i in range(n_tasks)]
    loop.call_soon(tick, 0)
    await asyncio.gather(*tasks)
    return seq


def test_interleaving_matches_stdlib(run: Run, sleep) -> None:
    expected = run(record_interleaving(STDLIB_SLEEP))
    got = run(record_interleaving(sleep))
    assert got == expected
    # one loop iteration per sleep(0): the ticks advance in lockstep
    assert expected.index((4, 1)) < expected.index(("tick", 1)) < expected.index((0, 2))


def test_debug_mode(run: Run, sleep) -> None:
    async def main():
        t = asyncio.create_task(sleep(0, "t"))
        await sleep(0)
        return await t, await sleep(-1, "d")
    assert run(main(), debug=True) == ("t", "d")


@pytest.mark.skipif(not hasattr(asyncio, "eager_task_factory"), reason="3.12+")
def test_eager_task_factory_matches_stdlib(run: Run, loop_name: str, sleep) -> None:
    skip_eager_factory_on_broken_uvloop(loop_name)
    async def main(s):
        loop = asyncio.get_running_loop()
        loop.set_task_factory(asyncio.eager_task_factory)
        seq: list[Any] = []

        async def w(i):
            seq.append((i, 0))
            await s(0)
            seq.append((i, 1))
            return i
        tasks = [loop.create_task(w(i)) for i in range(3)]
        bare = loop.create_task(s(0, "bare"))
        seq.append("created")
        return seq, await asyncio.gather(*tasks), await bare
    assert run(main(sleep)) == run(main(STDLIB_SLEEP))


# ------------------------------------------------------------------ cancellation


def test_cancel_while_suspended_at_sleep0(run: Run, sleep) -> None:
    async def main():
        log: list[Any] = []

        async def spinner():
            try:
                while True:
                    try:
                        await sleep(0)
                    except asyncio.CancelledError as e:
                        log.append(("at await", e.args))
                        raise
                    log.append("step")
            finally:
                log.append("cleanup")

        t = asyncio.create_task(spinner())
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert t.cancel("stop")
        with pytest.raises(asyncio.CancelledError):
            await t
        return log, t.cancelled(), t.done()
    log, cancelled, done = run(main())
    assert cancelled and done
    assert log[-2:] == [("at await", ("stop",)), "cleanup"]
    assert "step" in log


def test_cancel_task_of_bare_sleep0_before_start(run: Run, sleep) -> None:
    async def main():
        t = asyncio.create_task(sleep(0, 1))
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        u = asyncio.create_task(sleep(0, 2))
        await asyncio.sleep(0)      # u is now suspended at the yield
        u.cancel()
        with pytest.raises(asyncio.CancelledError):
            await u
        return t.cancelled(), u.cancelled()
    assert run(main()) == (True, True)


def test_cancel_can_be_suppressed_after_sleep0(run: Run, sleep) -> None:
    async def main():
        async def stubborn():
            try:
                await sleep(0)
            except asyncio.CancelledError:
                asyncio.current_task().uncancel()
                return "swallowed"
        t = asyncio.create_task(stubborn())
        await asyncio.sleep(0)
        t.cancel()
        return await t
    assert run(main()) == "swallowed"


def test_wait_for_and_timeout_around_sleep0(run: Run, sleep) -> None:
    async def generous():
        r1 = await asyncio.wait_for(sleep(0, 3), 1)
        async with asyncio.timeout(1):
            await sleep(0)
            await sleep(-1)
        return r1, await asyncio.wait_for(sleep(0, 4), None)
    assert run(generous()) == (3, 4)

    async def spin_until_timeout():
        n = 0
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):
                while True:
                    await sleep(0)
                    n += 1
        return n > 0
    assert run(spin_until_timeout()) is True

    async def zero_timeout(s):
        return await asyncio.wait_for(s(0, 5), 0)
    assert outcome(run, lambda: zero_timeout(sleep)) == outcome(run, lambda: zero_timeout(STDLIB_SLEEP))


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize("delay", ["1", None, [], object()])
def test_wrong_type_raises_stdlib_typeerror_at_await(run: Run, sleep, delay) -> None:
    async def main(s):
        coro = s(delay)             # no error yet, as with a coroutine
        try:
            await coro
        except TypeError as e:
            return str(e)
        return "no error"
    expected = run(main(STDLIB_SLEEP))
    assert expected != "no error"
    assert run(main(sleep)) == expected


def test_bad_arguments_match_stdlib(sleep) -> None:
    def message(call):
        with pytest.raises(TypeError) as ei:
            call()
        return str(ei.value).split("sleep()")[-1]
    for call in (lambda s: s(), lambda s: s(0, 1, 2), lambda s: s(0, bogus=1),
                 lambda s: s(0, delay=1), lambda s: s(result=1), lambda s: s(0, 1, result=2)):
        assert message(lambda: call(sleep)) == message(lambda: call(STDLIB_SLEEP))


def test_awaiting_twice_fails(run: Run, sleep) -> None:
    async def main():
        c = sleep(0, 1)
        assert await c == 1
        with pytest.raises(RuntimeError, match="cannot reuse already awaited coroutine"):
            await c
        return True
    assert run(main())


# ------------------------------------------------------------------ protocol


def test_protocol_send_throw_close(sleep) -> None:
    s = sleep(0, 5)
    with pytest.raises(TypeError, match="non-None value"):
        s.send(1)
    assert s.send(None) is None
    with pytest.raises(StopIteration) as ei:
        s.send("anything")
    assert ei.value.value == 5
    with pytest.raises(RuntimeError, match="cannot reuse"):
        s.send(None)
    with pytest.raises(RuntimeError, match="cannot reuse"):
        s.throw(KeyError("after done"))
    assert s.close() is None

    t = sleep(0, (1, 2))
    assert t.__await__().send(None) is None
    with pytest.raises(StopIteration) as ei:
        t.send(None)
    assert ei.value.value == (1, 2)

    u = sleep(0)
    with pytest.raises(ValueError, match="before start"):
        u.throw(ValueError("before start"))
    with pytest.raises(RuntimeError, match="cannot reuse"):
        u.send(None)

    v = sleep(0)
    v.send(None)
    with pytest.raises(asyncio.CancelledError):
        v.throw(asyncio.CancelledError())
    with pytest.raises(RuntimeError, match="cannot reuse"):
        v.send(None)

    w = sleep(0, object())
    w.send(None)
    assert w.close() is None
    with pytest.raises(RuntimeError, match="cannot reuse"):
        w.send(None)

    x = sleep(0)
    x.close()                   # closed before start: no "never awaited" warning
    with pytest.raises(RuntimeError, match="cannot reuse"):
        x.send(None)


def test_throw_legacy_signature_through_outer_coroutine(sleep) -> None:
    async def outer():
        try:
            await sleep(0)
        except KeyError as e:
            return ("caught", e.args)
    c = outer()
    assert c.send(None) is None
    with pytest.raises(StopIteration) as ei:
        c.throw(KeyError("k"))
    assert ei.value.value == ("caught", ("k",))
    c2 = outer()
    c2.send(None)
    c2.close()                  # GeneratorExit through our close()


def test_never_awaited_warns_like_a_coroutine(sleep) -> None:
    for _ in range(3):          # also on recycled memory
        with pytest.warns(RuntimeWarning, match="coroutine 'sleep' was never awaited"):
            sleep(0)
            gc.collect()
        s = sleep(0)
        s.send(None)
        del s                   # suspended: no warning (a warning would be an error here)


def test_gc_cycles_and_weakref(sleep) -> None:
    holder: list[Any] = []
    s = sleep(0, holder)
    holder.append(s)
    s.send(None)                # suspended, holding a cycle through result
    ref = weakref.ref(s)
    del s, holder
    gc.collect()
    assert ref() is None


PREPS: dict[str, Callable[[Any], Any]] = {
    "fresh": lambda s: None,
    "suspended": lambda s: s.send(None),
    "returned": lambda s: (s.send(None), s.send(None)),
    "closed-fresh": lambda s: s.close(),
    "closed-suspended": lambda s: (s.send(None), s.close()),
    "thrown-fresh": lambda s: s.throw(KeyError("t")),
    "thrown-suspended": lambda s: (s.send(None), s.throw(KeyError("t"))),
}
ACTIONS: dict[str, Callable[[Any], Any]] = {
    "send": lambda s: s.send(None),
    "send-value": lambda s: s.send(1),
    "throw": lambda s: s.throw(KeyError("k")),
    "throw-class": lambda s: s.throw(ValueError),
    "throw-generatorexit": lambda s: s.throw(GeneratorExit()),
    "throw-not-exception": lambda s: s.throw(1),
    "close": lambda s: s.close(),
}


def state_action_outcome(sleep, prep: str, action: str) -> tuple[Any, ...]:
    s = sleep(0, "res")
    try:
        PREPS[prep](s)
    except BaseException:  # noqa: BLE001 - the state is what matters
        pass
    try:
        return ("ok", ACTIONS[action](s))
    except StopIteration as e:
        return ("stop", e.value)
    except BaseException as e:  # noqa: BLE001 - compared as data
        return ("raise", type(e), str(e))
    finally:
        s.close()


@pytest.mark.parametrize("action", list(ACTIONS))
@pytest.mark.parametrize("prep", list(PREPS))
def test_state_action_matrix_matches_stdlib(prep: str, action: str) -> None:
    assert (state_action_outcome(_primitives.sleep, prep, action)
            == state_action_outcome(STDLIB_SLEEP, prep, action))


# ------------------------------------------------------------------ delay > 0
# The C timed sleep (_SleepFor) runs asyncio.sleep's body: a future, a
# call_later timer whose callback sets the result unless cancelled, and
# `finally: h.cancel()`.  Its outcomes and its timer are compared with
# asyncio's coroutine in every state, on every loop.

TIMED_PREPS: dict[str, Callable[[Any, Callable[[], None]], Any]] = {
    "fresh": lambda s, fire: None,
    "suspended": lambda s, fire: s.send(None),
    "fired": lambda s, fire: (s.send(None), fire()),       # timer ran, not resumed yet
    "returned": lambda s, fire: (s.send(None), fire(), s.send(None)),
    "future-cancelled": lambda s, fire: s.send(None).cancel(),
    "closed-fresh": lambda s, fire: s.close(),
    "closed-suspended": lambda s, fire: (s.send(None), s.close()),
    "thrown-suspended": lambda s, fire: (s.send(None), s.throw(KeyError("t"))),
}


def describe(value: Any) -> Any:
    if asyncio.isfuture(value):
        return ("future", type(value).__name__, value.done(), value._asyncio_future_blocking)
    return value


def record_timers(loop: asyncio.AbstractEventLoop) -> list[tuple[Any, Any, tuple[Any, ...]]]:
    """Make the loop's call_later (an instance attribute, as sleep looks it up)
    record each (handle, callback, args) in the list returned."""
    timers: list[tuple[Any, Any, tuple[Any, ...]]] = []
    call_later = loop.call_later

    def spy(delay: float, callback: Any, *args: Any) -> Any:
        handle = call_later(delay, callback, *args)
        timers.append((handle, callback, args))
        return handle
    loop.call_later = spy  # type: ignore[method-assign]
    return timers


def timed_outcome(run: Run, sleep: Callable[..., Any], prep: str, action: str) -> Any:
    async def main() -> Any:
        timers = record_timers(asyncio.get_running_loop())

        def fire() -> None:
            _, callback, args = timers[-1]
            callback(*args)

        s = sleep(10, "res")
        try:
            TIMED_PREPS[prep](s, fire)
        except BaseException:  # noqa: BLE001 - the state is what matters
            pass
        try:
            out: Any = ("ok", describe(ACTIONS[action](s)))
        except StopIteration as e:
            out = ("stop", e.value)
        except BaseException as e:  # noqa: BLE001 - compared as data
            out = ("raise", type(e), str(e))
        finally:
            s.close()
        return out, [(handle.cancelled(), args[1]) for handle, _, args in timers]
    return run(main())


@pytest.mark.parametrize("action", list(ACTIONS))
@pytest.mark.parametrize("prep", list(TIMED_PREPS))
def test_timed_state_action_matrix_matches_stdlib(run: Run, prep: str, action: str) -> None:
    assert (timed_outcome(run, _primitives.sleep, prep, action)
            == timed_outcome(run, STDLIB_SLEEP, prep, action))


def test_timed_sleep_cancelled_task_cancels_its_timer(run: Run, sleep) -> None:
    async def main() -> Any:
        timers = record_timers(asyncio.get_running_loop())
        task = asyncio.ensure_future(sleep(10, "x"))
        await asyncio.sleep(0)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        cancelled_timer = timers[0][0].cancelled()
        done = await sleep(0.01, "late")
        return task.cancelled(), cancelled_timer, done, timers[-1][0].cancelled()
    # the finished sleep cancels its (already run) timer too, as `finally: h.cancel()` does
    assert run(main()) == (True, True, "late", True)


def test_timed_sleep_dropped_while_suspended_cancels_its_timer(run: Run, sleep) -> None:
    async def main() -> Any:
        timers = record_timers(asyncio.get_running_loop())
        s = sleep(10)
        s.send(None)
        del s                       # as a coroutine's finalizer closes it
        gc.collect()
        return [handle.cancelled() for handle, _, _ in timers]
    assert run(main()) == [True]


@pytest.mark.parametrize("delay", [1, 0.25, 10**30, float("nan"), float("inf")])
def test_timed_sleep_first_step_matches_stdlib(run: Run, delay: Any) -> None:
    """Outside a loop: no running loop; inside: a future (or 3.13's NaN error)."""
    def first_step(sleep: Callable[..., Any]) -> Any:
        s = sleep(delay)
        try:
            return ("ok", describe(s.send(None)))
        except BaseException as e:  # noqa: BLE001 - compared as data
            return ("raise", type(e), str(e))
        finally:
            s.close()

    async def in_loop(sleep: Callable[..., Any]) -> Any:
        return first_step(sleep)

    outside = first_step(STDLIB_SLEEP)
    assert outside[:2] == ("raise", RuntimeError if delay == delay else outside[1])
    assert first_step(_primitives.sleep) == outside
    assert run(in_loop(_primitives.sleep)) == run(in_loop(STDLIB_SLEEP))


def test_timed_sleep_uses_the_loops_own_methods(run: Run) -> None:
    """create_future and call_later overridden on the instance are called."""
    async def main() -> Any:
        loop = asyncio.get_running_loop()
        calls: list[str] = []
        create_future, call_later = loop.create_future, loop.call_later

        def spy_future() -> Any:
            calls.append("create_future")
            return create_future()

        def spy_later(*args: Any) -> Any:
            calls.append("call_later")
            return call_later(*args)
        loop.create_future, loop.call_later = spy_future, spy_later  # type: ignore[method-assign]
        result = await _primitives.sleep(0.001, "r")
        return result, calls
    assert run(main()) == ("r", ["create_future", "call_later"])
