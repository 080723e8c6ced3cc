"""gather(): asyncio.gather and pyasync_c's native one must behave the same.

Every test runs with ``prims.gather`` being asyncio's (prims id ``stdlib``) and
the C one (``c``), on the stdlib loop and on pyasync_c's (``run`` fixture), and
asserts the outcome asyncio.gather has on the running Python version.
"""
from __future__ import annotations

import asyncio
import contextvars
import gc
import sys
import warnings
import weakref
from typing import Any, Callable

import pytest

from primitive_loops import LOOP_CLASSES, loop_name_with_uvloop, skip_eager_factory_on_broken_uvloop  # noqa: F401  (fixture: loop_name plus uvloop)


PY312 = sys.version_info >= (3, 12)

Run = Callable[..., Any]


async def value_after(value: Any, delay: float = 0.0) -> Any:
    await asyncio.sleep(delay)
    return value


async def fail_after(exc: BaseException, delay: float = 0.0) -> Any:
    await asyncio.sleep(delay)
    raise exc


class Awaitable:
    """Not a coroutine nor a future: only __await__."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __await__(self):
        yield from asyncio.sleep(0).__await__()
        return self.value


def capture_loop_errors() -> list[dict[str, Any]]:
    errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: errors.append(ctx))
    return errors


# ------------------------------------------------------------------ results


def test_results_in_argument_order(run: Run, prims) -> None:
    async def main():
        return await prims.gather(value_after("a", 0.03), value_after("b", 0.01),
                                  value_after("c", 0.02), value_after("d"))
    assert run(main()) == ["a", "b", "c", "d"]


def test_mixed_futures_tasks_coroutines_awaitables(run: Run, prims) -> None:
    async def main():
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        loop.call_later(0.01, fut.set_result, "fut")
        task = asyncio.ensure_future(value_after("task", 0.005))
        return await prims.gather(fut, task, value_after("coro"), Awaitable("aw"))
    assert run(main()) == ["fut", "task", "coro", "aw"]


def test_outer_is_an_asyncio_future(run: Run, prims) -> None:
    async def main():
        outer = prims.gather(value_after(1))
        info = (isinstance(outer, asyncio.Future), asyncio.isfuture(outer),
                type(outer).__name__, outer.get_loop() is asyncio.get_running_loop(),
                repr(outer))
        await outer
        return info
    assert run(main()) == (True, True, "_GatheringFuture", True, "<_GatheringFuture pending>")


def test_outer_takes_attributes(run: Run, prims) -> None:
    async def main():
        outer = prims.gather(value_after(1))
        outer.note = "n"
        ref = weakref.ref(outer)
        # stdlib's subclass adds no __dict__ descriptor: the base Future's
        # dict slot takes attributes, but `outer.__dict__` does not exist
        return outer.note, hasattr(outer, "__dict__"), ref() is outer, await outer
    assert run(main()) == ("n", False, True, [1])


def test_nested_gathers(run: Run, prims) -> None:
    async def main():
        inner = prims.gather(value_after(1), value_after(2))
        return await prims.gather(inner, value_after(3), prims.gather())
    assert run(main()) == [[1, 2], 3, []]


def test_many_children(run: Run, prims) -> None:
    async def main():
        return await prims.gather(*(value_after(i) for i in range(500)))
    assert run(main()) == list(range(500))


# ------------------------------------------------------------------ exceptions


def test_first_exception_propagates_and_siblings_keep_running(run: Run, prims) -> None:
    async def main():
        slow = asyncio.ensure_future(value_after("slow", 0.02))
        outer = prims.gather(fail_after(KeyError("k"), 0.001),
                             fail_after(ValueError("v"), 0.01), slow)
        try:
            await outer
        except KeyError as exc:
            raised = repr(exc)
        done_at_raise = slow.done()
        result = await slow
        return raised, outer.done(), done_at_raise, result, outer.cancel()
    assert run(main()) == ("KeyError('k')", True, False, "slow", False)


def test_return_exceptions_true_collects_exceptions(run: Run, prims) -> None:
    async def main():
        exc = ZeroDivisionError("z")
        res = await prims.gather(value_after(1), fail_after(exc), value_after(3, 0.01),
                                 return_exceptions=True)
        return res[0], res[1] is exc, res[2]
    assert run(main()) == (1, True, 3)


def test_return_exceptions_truthy_value(run: Run, prims) -> None:
    async def main():
        return await prims.gather(fail_after(OSError("x")), return_exceptions=1)
    assert [repr(r) for r in run(main())] == ["OSError('x')"]


def test_exception_already_done_children_first_argument_wins(run: Run, prims) -> None:
    async def main():
        loop = asyncio.get_running_loop()
        a, b = loop.create_future(), loop.create_future()
        a.set_exception(KeyError("a"))
        b.set_exception(KeyError("b"))
        try:
            await prims.gather(a, b)
        except KeyError as exc:
            return exc.args
    assert run(main()) == ("a",)


def test_later_child_exceptions_are_marked_retrieved(run: Run, prims) -> None:
    async def main():
        errors = capture_loop_errors()
        try:
            await prims.gather(fail_after(KeyError(1)), fail_after(RuntimeError(2), 0.01))
        except KeyError:
            pass
        await asyncio.sleep(0.03)
        gc.collect()
        await asyncio.sleep(0)
        return [e["message"] for e in errors]
    assert run(main()) == []


def test_unretrieved_outer_exception_is_logged(run: Run, prims) -> None:
    async def main():
        errors = capture_loop_errors()
        outer = prims.gather(fail_after(KeyError(1)))
        await asyncio.sleep(0.01)
        assert outer.done()
        del outer
        gc.collect()
        await asyncio.sleep(0)
        return [e["message"] for e in errors]
    assert run(main()) == ["_GatheringFuture exception was never retrieved"]


# ------------------------------------------------------------------ duplicates


def test_same_coroutine_twice_is_awaited_once(run: Run, prims) -> None:
    calls = []

    async def once(x):
        calls.append(x)
        return x

    async def main():
        c = once("c")
        outer = prims.gather(c, c, once("d"), c)
        n_children = len({id(ch) for ch in outer._children})
        return await outer, n_children
    assert run(main()) == (["c", "c", "d", "c"], 2)
    assert calls == ["c", "d"]


def test_same_future_twice(run: Run, prims) -> None:
    async def main():
        fut = asyncio.get_running_loop().create_future()
        outer = prims.gather(fut, fut)
        fut.set_result(5)
        return await outer
    assert run(main()) == [5, 5]


# ------------------------------------------------------------------ empty


def test_empty_gives_done_future_with_empty_list(run: Run, prims) -> None:
    async def main():
        outer = prims.gather()
        return (outer.done(), outer.result(), isinstance(outer, asyncio.Future),
                outer.get_loop() is asyncio.get_running_loop(), await outer)
    assert run(main()) == (True, [], True, True, [])


def test_empty_uses_the_set_event_loop(prims) -> None:
    loop = asyncio.new_event_loop()
    try:
        asyncio.set_event_loop(loop)
        outer = prims.gather()
        assert outer.get_loop() is loop and outer.result() == []
    finally:
        asyncio.set_event_loop(None)
        loop.close()


# ------------------------------------------------------------------ cancellation


def test_outer_cancel_cancels_children(run: Run, prims) -> None:
    async def main():
        children = [asyncio.ensure_future(value_after(i, 10)) for i in range(3)]
        outer = prims.gather(*children)
        await asyncio.sleep(0)
        accepted = outer.cancel()
        try:
            await outer
        except asyncio.CancelledError:
            outcome = "CancelledError"
        return (accepted, outcome, [c.cancelled() for c in children], outer.cancelled(),
                outer._cancel_requested, outer.cancel())
    assert run(main()) == (True, "CancelledError", [True] * 3, False, True, False)


def test_outer_cancel_message(run: Run, prims) -> None:
    async def main():
        outer = prims.gather(value_after(1, 10), value_after(2, 10))
        await asyncio.sleep(0)
        outer.cancel(msg="stop it")
        try:
            await outer
        except asyncio.CancelledError as exc:
            return exc.args
    assert run(main()) == ("stop it",)


def test_outer_cancel_positional_message(run: Run, prims) -> None:
    async def main():
        fut = asyncio.get_running_loop().create_future()
        outer = prims.gather(fut)
        outer.cancel("pos")
        await asyncio.sleep(0)
        return fut.cancelled(), type(outer.exception()).__name__, outer.exception().args
    assert run(main()) == (True, "CancelledError", ("pos",))


def test_outer_cancel_wins_over_return_exceptions(run: Run, prims) -> None:
    async def main():
        outer = prims.gather(value_after(1, 10), value_after(2), return_exceptions=True)
        await asyncio.sleep(0)
        accepted = outer.cancel()
        try:
            return accepted, await outer
        except asyncio.CancelledError:
            return accepted, "CancelledError"
    assert run(main()) == (True, "CancelledError")


def test_outer_cancel_when_no_child_accepts(run: Run, prims) -> None:
    async def main():
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(1)
        outer = prims.gather(fut)
        accepted = outer.cancel()  # 3.11: still pending, but the child is done
        return accepted, outer._cancel_requested, await outer
    assert run(main()) == (False, False, [1])


def test_child_cancel_without_return_exceptions(run: Run, prims) -> None:
    async def main():
        loop = asyncio.get_running_loop()
        a, b, c = loop.create_future(), loop.create_future(), loop.create_future()
        outer = prims.gather(a, b, c)
        a.set_result(1)
        b.cancel(msg="child msg")
        await asyncio.sleep(0)
        exc = outer.exception()
        c.set_result(3)  # does nothing to outer
        await asyncio.sleep(0)
        return (outer.done(), outer.cancelled(), type(exc).__name__, exc.args,
                c.done(), outer.cancel())
    assert run(main()) == (True, False, "CancelledError", ("child msg",), True, False)


def test_child_cancel_with_return_exceptions(run: Run, prims) -> None:
    async def main():
        loop = asyncio.get_running_loop()
        a, b, c, d = (loop.create_future() for _ in range(4))
        outer = prims.gather(a, b, c, d, return_exceptions=True)
        a.set_result(1)
        b.cancel(msg="why")
        c.cancel()
        await asyncio.sleep(0)
        pending = not outer.done()
        d.set_exception(KeyError("d"))
        res = await outer
        return pending, [type(r).__name__ for r in res], res[1].args, res[2].args, res[0]
    assert run(main()) == (True, ["int", "CancelledError", "CancelledError", "KeyError"],
                           ("why",), ("",), 1)


def test_awaiting_task_cancelled_cancels_gather_children(run: Run, prims) -> None:
    async def main():
        waiter = asyncio.get_running_loop().create_future()

        async def inner():
            await waiter

        c1, c2 = asyncio.ensure_future(inner()), asyncio.ensure_future(inner())
        holder = []

        async def outer():
            holder.append(prims.gather(c1, c2))
            await holder[0]

        task = asyncio.ensure_future(outer())
        await asyncio.sleep(0)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        return (task.cancelled(), c1.cancelled(), c2.cancelled(), waiter.cancelled(),
                holder[0].cancel())
    assert run(main()) == (True, True, True, True, False)


# ------------------------------------------------------------------ eager (3.12+)


def test_done_children_complete_outer_eagerly_on_312(run: Run, prims) -> None:
    async def main():
        loop = asyncio.get_running_loop()
        f1, f2 = loop.create_future(), loop.create_future()
        f1.set_result(1)
        f2.set_result(2)
        outer = prims.gather(f1, f2, f1)
        at_once = outer.done()
        return at_once, await outer
    assert run(main()) == (PY312, [1, 2, 1])


def test_done_and_pending_children(run: Run, prims) -> None:
    async def main():
        loop = asyncio.get_running_loop()
        done, pending = loop.create_future(), loop.create_future()
        done.set_result("d")
        outer = prims.gather(done, pending, value_after("c"))
        await asyncio.sleep(0)
        was_done = outer.done()
        pending.set_result("p")
        return was_done, await outer
    assert run(main()) == (False, ["d", "p", "c"])


@pytest.mark.skipif(not PY312, reason="eager_task_factory is 3.12+")
def test_eager_tasks_complete_outer_eagerly(run: Run, loop_name: str, prims) -> None:
    skip_eager_factory_on_broken_uvloop(loop_name)
    async def now(x):
        return x

    async def main():
        asyncio.get_running_loop().set_task_factory(asyncio.eager_task_factory)
        outer = prims.gather(now(1), now(2))
        return outer.done(), await outer
    assert run(main()) == (True, [1, 2])


@pytest.mark.skipif(not PY312, reason="eager_task_factory is 3.12+")
def test_eager_done_child_exception(run: Run, loop_name: str, prims) -> None:
    skip_eager_factory_on_broken_uvloop(loop_name)
    async def boom():
        raise KeyError("eager")

    async def main():
        asyncio.get_running_loop().set_task_factory(asyncio.eager_task_factory)
        outer = prims.gather(boom(), value_after(2))
        return outer.done(), repr(outer.exception())
    assert run(main()) == (True, "KeyError('eager')")


# ------------------------------------------------------------------ misuse


@pytest.mark.parametrize("bad", [1, "str", None, object()], ids=repr)
def test_wrong_type_raises_type_error(run: Run, prims, bad) -> None:
    async def main():
        c = value_after(1)
        try:
            prims.gather(c, bad)
        except TypeError as exc:
            msg = str(exc)
        await asyncio.sleep(0.01)  # the already-created task finishes quietly
        return msg
    assert run(main()) == "An asyncio.Future, a coroutine or an awaitable is required"


def test_unhashable_argument_after_a_child(run: Run, prims) -> None:
    async def main():
        errors = capture_loop_errors()
        try:
            prims.gather(value_after(1), {})
        except TypeError as exc:
            msg = str(exc)
        await asyncio.sleep(0.01)
        return msg, errors
    assert run(main()) == ("unhashable type: 'dict'", [])


def test_unexpected_keyword(prims) -> None:
    with pytest.raises(TypeError):
        prims.gather(loop=None)


def test_futures_from_different_loops(run: Run, prims) -> None:
    other = asyncio.new_event_loop()
    try:
        async def main():
            f1 = asyncio.get_running_loop().create_future()
            f2 = other.create_future()
            with pytest.raises(ValueError, match="different loop"):
                prims.gather(f1, f2)
            return True
        assert run(main())
    finally:
        other.close()


def test_gather_outside_a_loop_uses_the_first_childs_loop(prims) -> None:
    loop = asyncio.new_event_loop()
    try:
        children = [loop.create_future() for _ in range(3)]
        outer = prims.gather(*children)
        assert outer.get_loop() is loop
        for i, c in enumerate(children):
            c.set_result(i)
        assert loop.run_until_complete(outer) == [0, 1, 2]
    finally:
        loop.close()


def test_coroutine_on_closed_loop_is_closed(prims) -> None:
    loop = asyncio.new_event_loop()
    loop.close()
    fut = loop.create_future()
    coro = value_after(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        with pytest.raises(RuntimeError, match="closed"):
            prims.gather(fut, coro)
    assert coro.cr_frame is None  # closed, no "never awaited" warning


def test_awaiting_gather_of_closed_loop_future(prims) -> None:
    loop = asyncio.new_event_loop()
    fut = loop.create_future()
    loop.close()
    outer = prims.gather(fut)
    with pytest.raises(RuntimeError):
        fut.set_result(1)  # schedules callbacks on the closed loop
    assert not outer.done()


# ------------------------------------------------------------------ lifetime


def test_outer_is_freed(run: Run, prims) -> None:
    async def main():
        refs = []
        for _ in range(20):
            outer = prims.gather(value_after(1), value_after(2))
            refs.append(weakref.ref(outer))
            await outer
            del outer
        # one that is abandoned while its children still run
        outer = prims.gather(value_after(1, 10))
        refs.append(weakref.ref(outer))
        outer.cancel()
        del outer
        await asyncio.sleep(0.01)
        gc.collect()
        return [r() is None for r in refs]
    assert all(run(main()))


def test_debug_mode(run: Run, prims) -> None:
    async def main():
        return await prims.gather(value_after(1), value_after(2), Awaitable(3))
    assert run(main(), debug=True) == [1, 2, 3]


def test_children_made_by_the_task_factory(run: Run, prims) -> None:
    made: list[str] = []

    def factory(loop, coro, **kwargs):
        made.append(coro.__name__)
        return asyncio.Task(coro, loop=loop, **kwargs)

    async def main():
        asyncio.get_running_loop().set_task_factory(factory)
        return await prims.gather(value_after(1), value_after(2))
    assert run(main()) == [1, 2]
    assert made[:2] == ["value_after", "value_after"]


def test_children_made_by_an_overridden_create_task(prims, loop_name: str) -> None:
    made: list[Any] = []
    base = LOOP_CLASSES[loop_name]

    class Loop(base):  # type: ignore[misc, valid-type]
        def create_task(self, coro, **kwargs):
            made.append(coro.__name__)
            return super().create_task(coro, **kwargs)

    async def main():
        return await prims.gather(value_after(1), value_after(2))
    with asyncio.Runner(loop_factory=Loop) as runner:
        assert runner.run(main()) == [1, 2]
    assert made[:3] == ["main", "value_after", "value_after"]


def test_children_made_by_create_task_set_on_the_instance(run: Run, prims) -> None:
    made: list[Any] = []

    async def main():
        loop = asyncio.get_running_loop()
        orig = loop.create_task

        def spy(coro, **kwargs):
            made.append(coro)
            return orig(coro, **kwargs)
        loop.create_task = spy  # type: ignore[method-assign]
        try:
            return await prims.gather(value_after(1), value_after(2))
        finally:
            del loop.create_task
    assert run(main()) == [1, 2]
    assert len(made) == 2


def test_task_factory_set_by_an_argument_between_children(run: Run, prims) -> None:
    """User code run for one argument (here its __hash__) between coroutine
    children: the children after it see the loop as it is then."""
    made: list[str] = []

    def factory(loop, coro, **kwargs):
        made.append(coro.__name__)
        return asyncio.Task(coro, loop=loop, **kwargs)

    class SetsFactory(Awaitable):
        def __hash__(self) -> int:
            asyncio.get_running_loop().set_task_factory(factory)
            return object.__hash__(self)

    async def main():
        try:
            return await prims.gather(value_after(1), value_after(2), SetsFactory(3),
                                      value_after(4), value_after(5))
        finally:
            asyncio.get_running_loop().set_task_factory(None)
    assert run(main()) == [1, 2, 3, 4, 5]
    assert made == ["_wrap_awaitable", "value_after", "value_after"]


def test_task_factory_set_while_a_child_is_made(run: Run, prims) -> None:
    """A call_soon set on the loop instance runs while each child Task is
    made: what it changes applies to the next child."""
    made: list[str] = []

    def factory(loop, coro, **kwargs):
        made.append(coro.__name__)
        return asyncio.Task(coro, loop=loop, **kwargs)

    async def main():
        loop = asyncio.get_running_loop()
        orig = loop.call_soon

        def call_soon(*args, **kwargs):
            loop.set_task_factory(factory)
            return orig(*args, **kwargs)
        loop.call_soon = call_soon  # type: ignore[method-assign]
        try:
            return await prims.gather(value_after(1), value_after(2), value_after(3))
        finally:
            del loop.call_soon
            loop.set_task_factory(None)
    assert run(main()) == [1, 2, 3]
    assert made == ["value_after", "value_after"]


def test_child_callbacks_run_in_the_context_of_their_time(run: Run, prims) -> None:
    """Each child's done callback gets the context as it is when that child
    is added, also when an argument changes it in between."""
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="before")

    class SetsVar(Awaitable):
        def __hash__(self) -> int:
            var.set("after")
            return object.__hash__(self)

    async def main():
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        outer = prims.gather(value_after(1), fut, value_after(2), SetsVar(3),
                             value_after(4), fut, loop.create_future())
        seen = [[ctx.run(var.get) for _cb, ctx in child._callbacks]
                for child in outer._children]
        for child in outer._children:
            if not child.done():
                child.cancel()
        await asyncio.gather(outer, return_exceptions=True)
        return seen, var.get()
    seen, value = run(main())
    assert seen == [["before"], ["before"], ["before"], ["after"], ["after"], ["before"],
                    ["after"]]
    assert value == "after"


def test_debug_children_have_a_source_traceback(run: Run, prims) -> None:
    """In debug mode every child remembers where it was created, and not in
    the loop's create_task (asyncio drops that frame)."""
    async def outer():
        seen: list[Any] = []
        gathered = prims.gather(value_after(1), value_after(2))
        seen.extend(t for t in asyncio.all_tasks() if t is not asyncio.current_task())
        await gathered
        return seen
    tasks = run(outer(), debug=True)
    assert len(tasks) == 2
    for t in tasks:
        assert t._source_traceback
        assert not t._source_traceback[-1].filename.endswith("base_events.py")


def test_done_future_of_closed_loop(prims) -> None:
    loop = asyncio.new_event_loop()
    fut = loop.create_future()
    fut.set_result(1)
    loop.close()
    if PY312:  # processed at once, nothing is scheduled
        assert prims.gather(fut).result() == [1]
    else:  # add_done_callback schedules on the closed loop
        with pytest.raises(RuntimeError, match="closed"):
            prims.gather(fut)


# ------------------------------------------------------------------ other loops


def test_on_uvloop(prims) -> None:
    uvloop = pytest.importorskip("uvloop")

    async def main():
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        done.set_result("done")
        res = await prims.gather(value_after(1, 0.01), done, Awaitable(3), value_after(4))
        mixed = await prims.gather(fail_after(KeyError("k")), value_after(2),
                                   return_exceptions=True)
        outer = prims.gather(value_after(1, 10), value_after(2, 10))
        await asyncio.sleep(0)
        outer.cancel("m")
        try:
            await outer
        except asyncio.CancelledError as exc:
            cancelled = exc.args
        return res, [repr(r) for r in mixed], cancelled

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(main()) == ([1, "done", 3, 4], ["KeyError('k')", "2"], ("m",))
