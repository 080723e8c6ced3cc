"""Core event-loop behaviour, checked against CPython's semantics on both loops.

Every test takes the ``loop``/``loop_factory``/``run`` fixtures of conftest.py,
so it runs on asyncio's SelectorEventLoop (the reference) and on pyasync_c's.
Timing bounds are generous; a bound is only there to prove something happened
concurrently or promptly.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import gc
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any, Callable, Iterator

import pytest

Loop = asyncio.AbstractEventLoop
VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="unset")
ON_312 = pytest.mark.skipif(sys.version_info < (3, 12), reason="needs Python 3.12+")


# ----------------------------------------------------------------- helpers


def run_once(loop: Loop) -> None:
    """One pass over what is ready now (stop() lets the current batch finish)."""
    loop.call_soon(loop.stop)
    loop.run_forever()


def run_for(loop: Loop, seconds: float) -> None:
    loop.call_later(seconds, loop.stop)
    loop.run_forever()


def run_until_stopped(loop: Loop, timeout: float = 2.0) -> float:
    """run_forever until a callback stops the loop; fail after ``timeout``."""
    timed_out = []
    guard = loop.call_later(timeout, lambda: (timed_out.append(True), loop.stop()))
    start = time.monotonic()
    loop.run_forever()
    guard.cancel()
    assert not timed_out, f"loop was not stopped within {timeout} s"
    return time.monotonic() - start


def later_from_thread(delay: float, fn: Callable[..., Any], *args: Any) -> threading.Timer:
    timer = threading.Timer(delay, fn, args)
    timer.start()
    return timer


def my_callback(*args: Any) -> None:
    """A named no-op, for reprs."""


@pytest.fixture
def sockpair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def loop_kind(loop_name: str) -> str:
    return loop_name


def run_script(code: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter that can import this pyasync_c."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(os.path.abspath(p) for p in sys.path if p)}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


FACTORY_PRELUDE = """
import asyncio, os, sys
def loop_factory():
    if sys.argv[1] == "stdlib":
        return asyncio.SelectorEventLoop()
    import pyasync_c
    return pyasync_c.new_event_loop()
"""


# ------------------------------------------------------------- call_soon


def test_call_soon_runs_callbacks_in_fifo_order(loop: Loop) -> None:
    order: list[int] = []
    for i in range(50):
        loop.call_soon(order.append, i)
    run_once(loop)
    assert order == list(range(50))


def test_each_callback_runs_in_a_copy_of_the_context_at_schedule_time(loop: Loop) -> None:
    seen: list[str] = []

    def setter() -> None:
        VAR.set("set-in-callback")
        seen.append(VAR.get())

    token = VAR.set("at-schedule")
    loop.call_soon(setter)
    loop.call_soon(lambda: seen.append(VAR.get()))
    VAR.reset(token)
    loop.call_soon(lambda: seen.append(VAR.get()))
    run_once(loop)
    assert seen == ["set-in-callback", "at-schedule", "unset"]
    assert VAR.get() == "unset"


@pytest.mark.parametrize("method", ["call_soon", "call_soon_threadsafe", "call_later", "call_at"])
def test_context_argument_is_used_and_mutated(loop: Loop, method: str) -> None:
    ctx = contextvars.Context()
    ctx.run(VAR.set, "from-ctx")
    seen: list[str] = []

    def callback() -> None:
        seen.append(VAR.get())
        VAR.set("changed")
        loop.stop()

    schedule = getattr(loop, method)
    if method == "call_later":
        schedule(0.001, callback, context=ctx)
    elif method == "call_at":
        schedule(loop.time(), callback, context=ctx)
    else:
        schedule(callback, context=ctx)
    run_until_stopped(loop)
    assert seen == ["from-ctx"]
    assert ctx[VAR] == "changed"
    assert VAR.get() == "unset"


def test_callbacks_scheduled_while_running_wait_for_the_next_iteration(loop: Loop) -> None:
    order: list[str] = []

    def first() -> None:
        order.append("first")
        loop.call_soon(order.append, "scheduled-by-first")

    loop.call_soon(first)
    loop.call_soon(order.append, "second")
    run_once(loop)  # stop() is in the same batch: the new callback waits
    assert order == ["first", "second"]
    run_once(loop)
    assert order == ["first", "second", "scheduled-by-first"]


@pytest.mark.parametrize("other", ["call_later(0)", "reader"])
def test_self_rescheduling_callback_does_not_starve_timers_or_io(
        loop: Loop, other: str, sockpair: tuple[socket.socket, socket.socket]) -> None:
    spins = 0
    other_ran = False

    def spin() -> None:
        nonlocal spins
        spins += 1
        if other_ran or spins >= 10_000:
            loop.stop()
        else:
            loop.call_soon(spin)

    def mark() -> None:
        nonlocal other_ran
        other_ran = True

    if other == "reader":
        sockpair[1].send(b"x")
        loop.add_reader(sockpair[0], mark)
    else:
        loop.call_later(0, mark)
    loop.call_soon(spin)
    run_until_stopped(loop, timeout=10)
    if other == "reader":
        loop.remove_reader(sockpair[0])
    assert other_ran
    assert spins < 50


# ----------------------------------------------------- call_later / call_at


@pytest.mark.parametrize("api", ["call_later", "call_at"])
def test_timers_never_fire_early_and_fire_in_deadline_order(loop: Loop, api: str) -> None:
    delays = [0.0215, 0.0107, 0.004, 0.0015, 0.0005, 0.0]  # scheduled latest first
    handles: list[asyncio.TimerHandle] = []
    fired: list[tuple[int, float]] = []

    def on_timer(i: int) -> None:
        fired.append((i, loop.time()))
        if len(fired) == len(delays):
            loop.stop()

    for i, delay in enumerate(delays):
        if api == "call_later":
            handles.append(loop.call_later(delay, on_timer, i))
        else:
            handles.append(loop.call_at(loop.time() + delay, on_timer, i))
    run_until_stopped(loop)
    assert [i for i, _ in fired] == list(reversed(range(len(delays))))
    for i, fired_at in fired:
        assert fired_at >= handles[i].when(), f"timer {delays[i]} fired early"


def test_when_reports_the_deadline(loop: Loop) -> None:
    deadline = loop.time() + 5.25
    assert loop.call_at(deadline, my_callback).when() == deadline
    before = loop.time()
    handle = loop.call_later(3.5, my_callback)
    after = loop.time()
    assert before + 3.5 <= handle.when() <= after + 3.5


def test_equal_deadlines_all_fire_together_and_not_early(loop: Loop) -> None:
    # CPython does NOT promise scheduling order for equal deadlines (its heap is
    # not stable), only that they are all due together.
    deadline = loop.time() + 0.01
    fired: list[int] = []
    followups: list[str] = []

    def on_timer(i: int) -> None:
        assert loop.time() >= deadline
        if not fired:
            loop.call_soon(lambda: followups.append(f"after {len(fired)} timers"))
        fired.append(i)

    for i in range(20):
        loop.call_at(deadline, on_timer, i)
    loop.call_at(deadline + 0.005, loop.stop)
    run_until_stopped(loop)
    assert sorted(fired) == list(range(20))
    assert followups == ["after 20 timers"]


def test_call_later_zero_returns_a_timer_handle(loop: Loop) -> None:
    timer = loop.call_later(0, my_callback)
    soon = loop.call_soon(my_callback)
    assert isinstance(timer, asyncio.TimerHandle)
    assert isinstance(soon, asyncio.Handle) and not isinstance(soon, asyncio.TimerHandle)
    assert isinstance(loop.call_at(loop.time(), my_callback), asyncio.TimerHandle)


def test_negative_delay_runs_promptly(loop: Loop) -> None:
    ran: list[bool] = []
    loop.call_later(-5, lambda: (ran.append(True), loop.stop()))
    assert run_until_stopped(loop) < 0.5
    assert ran == [True]


def test_cancelled_handles_do_not_run(loop: Loop) -> None:
    ran: list[str] = []
    handles = [
        loop.call_soon(ran.append, "soon"),
        loop.call_later(0.001, ran.append, "later"),
        loop.call_at(loop.time() + 0.002, ran.append, "at"),
        loop.call_soon_threadsafe(ran.append, "threadsafe"),
    ]
    for handle in handles:
        assert not handle.cancelled()
        handle.cancel()
        assert handle.cancelled()
    handles[0].cancel()  # cancelling twice is fine
    run_for(loop, 0.02)
    assert ran == []


def test_cancel_from_an_earlier_callback_in_the_same_batch(loop: Loop) -> None:
    ran: list[str] = []
    loop.call_soon(lambda: victim.cancel())
    victim = loop.call_soon(ran.append, "victim")
    loop.call_soon(ran.append, "bystander")
    run_once(loop)
    assert ran == ["bystander"]


# ------------------------------------------------------------- loop.time


def test_time_is_the_monotonic_clock(loop: Loop) -> None:
    before = time.monotonic()
    now = loop.time()
    after = time.monotonic()
    assert before - 1e-3 <= now <= after + 1e-3
    samples = [loop.time() for _ in range(2000)]
    assert samples == sorted(samples)


def test_time_has_sub_millisecond_resolution(loop: Loop) -> None:
    pairs = [(loop.time(), loop.time()) for _ in range(100)]
    assert all(0 <= b - a < 1e-3 for a, b in pairs)
    values = [v for pair in pairs for v in pair]
    assert any(abs(v * 1000 - round(v * 1000)) > 1e-6 for v in values), \
        "loop.time() only returns whole milliseconds"


def test_time_advances_inside_a_callback(run: Callable[..., Any]) -> None:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        spin_until = time.monotonic() + 0.005
        while time.monotonic() < spin_until:
            pass
        return loop.time() - start

    assert run(main()) >= 0.005 - 1e-4  # not cached per iteration


# --------------------------------------------------------------- handles


def test_handle_repr_names_the_callback(loop: Loop) -> None:
    soon = loop.call_soon(my_callback, 1)
    timer = loop.call_later(10, my_callback, 2)
    assert "my_callback" in repr(soon)
    assert "my_callback" in repr(timer) and "when=" in repr(timer)
    soon.cancel()
    assert "cancelled" in repr(soon)


@ON_312
def test_handle_get_context(loop: Loop) -> None:
    ctx = contextvars.copy_context()
    assert loop.call_soon(my_callback, context=ctx).get_context() is ctx
    assert loop.call_later(1, my_callback, context=ctx).get_context() is ctx
    assert isinstance(loop.call_soon(my_callback).get_context(), contextvars.Context)


# ------------------------------------------------------- lifecycle errors


def test_scheduling_on_a_closed_loop_raises(loop: Loop) -> None:
    loop.close()
    with pytest.raises(RuntimeError):
        loop.call_soon(my_callback)
    with pytest.raises(RuntimeError):
        loop.call_later(0, my_callback)
    with pytest.raises(RuntimeError):
        loop.call_at(0, my_callback)
    with pytest.raises(RuntimeError):
        loop.call_soon_threadsafe(my_callback)
    with pytest.raises(RuntimeError):
        loop.run_forever()
    coro = asyncio.sleep(0)
    with pytest.raises(RuntimeError):
        loop.run_until_complete(coro)
    coro.close()


REENTRY_ATTEMPTS: dict[str, Callable[[Loop, Loop], Any]] = {
    "run_forever": lambda loop, other: loop.run_forever(),
    "run_until_complete": lambda loop, other: loop.run_until_complete(loop.create_future()),
    "other_loop.run_forever": lambda loop, other: other.run_forever(),
    "close": lambda loop, other: loop.close(),
}


@pytest.mark.parametrize("attempt", list(REENTRY_ATTEMPTS))
def test_reentrant_run_or_close_raises(loop: Loop, loop_factory: Callable[[], Loop],
                                       attempt: str) -> None:
    # One attempt per run: CPython 3.13.0 resets the running state after a
    # refused nested run_forever(), so later attempts would not be refused.
    errors: list[str] = []
    other = loop_factory()

    def try_reentry() -> None:
        try:
            REENTRY_ATTEMPTS[attempt](loop, other)
            errors.append("no error")
        except RuntimeError:
            errors.append("RuntimeError")
        loop.stop()

    loop.call_soon(try_reentry)
    try:
        run_until_stopped(loop)
    finally:
        other.close()
    assert errors == ["RuntimeError"]
    assert not loop.is_closed()


def test_run_until_complete_rejects_a_future_of_another_loop(
        loop: Loop, loop_factory: Callable[[], Loop]) -> None:
    other = loop_factory()
    try:
        with pytest.raises(ValueError):
            loop.run_until_complete(other.create_future())
    finally:
        other.close()


def test_close_twice_and_state_queries(loop: Loop) -> None:
    states: list[bool] = []
    assert not loop.is_running() and not loop.is_closed()
    loop.call_soon(lambda: states.append(loop.is_running()))
    run_once(loop)
    assert states == [True] and not loop.is_running()
    loop.close()
    loop.close()
    assert loop.is_closed() and not loop.is_running()


def test_stop_before_run_forever_runs_one_batch(loop: Loop) -> None:
    ran: list[str] = []
    loop.stop()
    loop.call_soon(ran.append, "a")
    loop.run_forever()
    assert ran == ["a"]
    run_once(loop)  # the loop is reusable after stopping
    assert ran == ["a"]


def test_stop_inside_a_batch_finishes_the_batch_only(loop: Loop) -> None:
    ran: list[str] = []

    def stopper() -> None:
        loop.stop()
        loop.call_soon(ran.append, "next-iteration")

    loop.call_soon(stopper)
    loop.call_soon(ran.append, "same-batch")
    loop.run_forever()
    assert ran == ["same-batch"]
    run_once(loop)
    assert ran == ["same-batch", "next-iteration"]


def test_base_exceptions_escape_run_forever(loop: Loop) -> None:
    def bail() -> None:
        raise SystemExit(3)

    loop.call_soon(bail)
    with pytest.raises(SystemExit):
        loop.run_forever()
    assert not loop.is_running()
    assert loop.run_until_complete(asyncio.sleep(0, "still usable")) == "still usable"


# ------------------------------------------------------- futures / tasks


def test_create_future_and_task(loop: Loop) -> None:
    fut = loop.create_future()
    assert isinstance(fut, asyncio.Future) and fut.get_loop() is loop

    async def answer() -> int:
        await asyncio.sleep(0)
        return 42

    task = loop.create_task(answer(), name="the-answer")
    assert isinstance(task, asyncio.Task) and task.get_loop() is loop
    assert task.get_name() == "the-answer"
    assert loop.create_task(answer()).get_name().startswith("Task-")
    assert loop.run_until_complete(task) == 42
    with pytest.raises(TypeError):
        loop.create_task(answer)  # type: ignore[arg-type]
    loop.run_until_complete(asyncio.sleep(0.001))


def test_create_task_with_context(loop: Loop) -> None:
    ctx = contextvars.Context()
    ctx.run(VAR.set, "task-ctx")

    async def read_and_write() -> str:
        value = VAR.get()
        VAR.set("written-by-task")
        return value

    assert loop.run_until_complete(loop.create_task(read_and_write(), context=ctx)) == "task-ctx"
    assert ctx[VAR] == "written-by-task"
    assert VAR.get() == "unset"


def test_task_factory(loop: Loop) -> None:
    made: list[str] = []

    def factory(loop_: Loop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        made.append(coro.__name__)
        return asyncio.Task(coro, loop=loop_, **kwargs)

    async def job() -> str:
        return "done"

    assert loop.get_task_factory() is None
    loop.set_task_factory(factory)
    assert loop.get_task_factory() is factory
    task = loop.create_task(job(), name="named")
    assert made == ["job"] and task.get_name() == "named"
    assert loop.run_until_complete(task) == "done"
    loop.set_task_factory(None)
    assert loop.get_task_factory() is None
    with pytest.raises(TypeError):
        loop.set_task_factory(42)  # type: ignore[arg-type]


@ON_312
def test_eager_task_factory(run: Callable[..., Any]) -> None:
    async def main() -> tuple[list[str], bool, Any]:
        loop = asyncio.get_running_loop()
        loop.set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined]
        steps: list[str] = []

        async def quick() -> str:
            steps.append("ran eagerly")
            return "result"

        task = loop.create_task(quick())
        steps.append("create_task returned")
        return steps, task.done(), task.result()

    assert run(main()) == (["ran eagerly", "create_task returned"], True, "result")


# ---------------------------------------------------- exception handling


def boom() -> None:
    raise ZeroDivisionError("boom")


def test_callback_exception_goes_to_the_handler_and_loop_keeps_running(loop: Loop) -> None:
    contexts: list[dict[str, Any]] = []
    ran_after: list[bool] = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append({**ctx, "loop": lp}))
    assert loop.get_exception_handler() is not None
    soon = loop.call_soon(boom)
    timer = loop.call_later(0.001, boom)
    loop.call_later(0.005, lambda: (ran_after.append(True), loop.stop()))
    run_until_stopped(loop)
    assert ran_after == [True]
    assert [c["handle"] for c in contexts] == [soon, timer]
    for ctx in contexts:
        assert ctx["loop"] is loop
        assert isinstance(ctx["message"], str) and ctx["message"]
        assert isinstance(ctx["exception"], ZeroDivisionError)
    loop.set_exception_handler(None)
    assert loop.get_exception_handler() is None


def test_default_exception_handler_logs(loop: Loop, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.call_soon(boom)
        run_once(loop)
        loop.call_exception_handler({"message": "hand-made problem"})
    records = [r for r in caplog.records if r.name == "asyncio"]
    assert len(records) == 2 and all(r.levelno == logging.ERROR for r in records)
    assert records[0].exc_info is not None and records[0].exc_info[0] is ZeroDivisionError
    assert "hand-made problem" in records[1].getMessage()


def test_call_exception_handler_reaches_custom_handler(loop: Loop) -> None:
    got: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda lp, ctx: got.append(ctx))
    loop.call_exception_handler({"message": "custom", "extra": 1})
    assert got == [{"message": "custom", "extra": 1}]


def test_failing_exception_handler_is_logged(loop: Loop, caplog: pytest.LogCaptureFixture) -> None:
    def bad_handler(lp: Loop, ctx: dict[str, Any]) -> None:
        raise RuntimeError("handler broke")

    loop.set_exception_handler(bad_handler)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.call_soon(boom)
        run_once(loop)
    assert any(r.name == "asyncio" and r.levelno == logging.ERROR for r in caplog.records)
    assert not loop.is_closed()


# ------------------------------------------------------------ debug mode


def test_debug_flag_and_slow_callback_warning(loop: Loop, caplog: pytest.LogCaptureFixture) -> None:
    assert loop.slow_callback_duration == pytest.approx(0.1)
    loop.set_debug(True)
    assert loop.get_debug() is True
    loop.slow_callback_duration = 0.02

    def slow_one() -> None:
        time.sleep(0.05)

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        loop.call_soon(slow_one)
        loop.call_soon(my_callback)  # fast: not reported
        run_once(loop)
    messages = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert any("slow_one" in m and "took" in m for m in messages), messages
    assert not any("my_callback" in m for m in messages)
    loop.set_debug(False)
    assert loop.get_debug() is False


@pytest.mark.parametrize("debug", [True, False])
def test_run_debug_argument(run: Callable[..., Any], debug: bool) -> None:
    async def main() -> bool:
        return asyncio.get_running_loop().get_debug()

    assert run(main(), debug=debug) is debug


# ----------------------------------------------------- async generators


async def tracked_agen(log: list[str]) -> Any:
    try:
        yield 1
        yield 2
    finally:
        log.append("finalised")


def test_shutdown_asyncgens_finalises_suspended_generators(loop: Loop) -> None:
    log: list[str] = []
    gen = tracked_agen(log)

    async def first_step() -> Any:  # first iteration inside the loop registers it
        return await gen.__anext__()

    assert loop.run_until_complete(first_step()) == 1
    assert log == []
    loop.run_until_complete(loop.shutdown_asyncgens())
    assert log == ["finalised"]


def test_abandoned_async_generator_is_finalised_by_the_loop(run: Callable[..., Any]) -> None:
    log: list[str] = []

    async def main() -> list[str]:
        gen = tracked_agen(log)
        await gen.__anext__()
        del gen
        gc.collect()
        await asyncio.sleep(0.01)
        return list(log)

    assert run(main()) == ["finalised"]


# ------------------------------------------------------------- executors


def test_run_in_executor_and_to_thread(run: Callable[..., Any]) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        here = threading.get_ident()
        assert await loop.run_in_executor(None, pow, 2, 10) == 1024
        assert await loop.run_in_executor(None, threading.get_ident) != here
        with pytest.raises(ZeroDivisionError):
            await loop.run_in_executor(None, boom)
        VAR.set("propagated")
        assert await asyncio.to_thread(VAR.get) == "propagated"
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="explicit") as pool:
            name = await loop.run_in_executor(pool, lambda: threading.current_thread().name)
        assert name.startswith("explicit")

    run(main())


def test_set_default_executor_and_shutdown(loop: Loop) -> None:
    pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="custom-default")
    loop.set_default_executor(pool)

    async def main() -> str:
        return await asyncio.to_thread(lambda: threading.current_thread().name)

    assert loop.run_until_complete(main()).startswith("custom-default")
    with pytest.raises(TypeError):
        loop.set_default_executor(concurrent.futures.ProcessPoolExecutor())  # type: ignore
    loop.run_until_complete(loop.shutdown_default_executor())
    with pytest.raises(RuntimeError):
        loop.run_in_executor(None, my_callback)
    pool.shutdown()


def test_blocking_executor_call_does_not_block_the_loop(run: Callable[..., Any]) -> None:
    async def main() -> tuple[int, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.005)
                ticks += 1

        tick_task = asyncio.create_task(ticker())
        result = await asyncio.get_running_loop().run_in_executor(None, lambda: time.sleep(0.15) or 7)
        tick_task.cancel()
        return result, ticks

    result, ticks = run(main())
    assert result == 7 and ticks >= 5


# ------------------------------------------------------ threads / wakeups


def test_call_soon_threadsafe_wakes_a_sleeping_loop_promptly(loop: Loop) -> None:
    fut = loop.create_future()
    timer = later_from_thread(0.1, loop.call_soon_threadsafe, fut.set_result, "woken")
    start = time.monotonic()
    result = loop.run_until_complete(asyncio.wait_for(fut, 10))
    elapsed = time.monotonic() - start
    timer.join()
    assert result == "woken"
    assert elapsed < 1.0


def test_concurrent_sleeps_overlap(run: Callable[..., Any]) -> None:
    async def main() -> float:
        start = time.monotonic()
        await asyncio.gather(*(asyncio.sleep(0.1) for _ in range(3)))
        return time.monotonic() - start

    assert 0.099 <= run(main()) < 0.25


def test_gil_is_released_while_the_loop_waits(run: Callable[..., Any]) -> None:
    progress: list[float] = []
    stop = threading.Event()

    def cpu_bound() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            if n % 2000 == 0:
                progress.append(time.monotonic())

    async def main() -> tuple[float, float]:
        await asyncio.sleep(0)
        start = time.monotonic()
        await asyncio.sleep(0.5)
        return start, time.monotonic()

    worker = threading.Thread(target=cpu_bound)
    worker.start()
    try:
        start, end = run(main())
    finally:
        stop.set()
        worker.join()
    during = [t for t in progress if start + 0.1 < t < end - 0.1]
    assert during, "the CPU-bound thread made no progress while the loop slept"


# ------------------------------------------------------------ readers/writers


def test_add_reader_fires_when_data_arrives(
        loop: Loop, sockpair: tuple[socket.socket, socket.socket]) -> None:
    a, b = sockpair
    got: list[tuple[str, bytes]] = []

    def on_readable(tag: str) -> None:
        got.append((tag, a.recv(100)))
        loop.stop()

    loop.add_reader(a, on_readable, "file-object")
    loop.call_later(0.01, b.send, b"ping")
    run_until_stopped(loop)
    loop.add_reader(a.fileno(), on_readable, "replaced-by-fd")  # replaces the callback
    b.send(b"pong")
    run_until_stopped(loop)
    assert got == [("file-object", b"ping"), ("replaced-by-fd", b"pong")]
    assert loop.remove_reader(a) is True
    assert loop.remove_reader(a) is False


def test_removed_reader_does_not_fire(
        loop: Loop, sockpair: tuple[socket.socket, socket.socket]) -> None:
    a, b = sockpair
    fired: list[bool] = []
    loop.add_reader(a, fired.append, True)
    assert loop.remove_reader(a.fileno()) is True
    b.send(b"data")
    run_for(loop, 0.03)
    assert fired == []


def test_add_writer_and_reader_on_one_socket(
        loop: Loop, sockpair: tuple[socket.socket, socket.socket]) -> None:
    a, b = sockpair
    events: list[str] = []

    def on_writable() -> None:
        events.append("writable")
        loop.remove_writer(a)
        a.send(b"hello")

    def on_readable() -> None:
        events.append(f"read {b.recv(100)!r}")
        loop.stop()

    loop.add_writer(a, on_writable)
    loop.add_reader(b, on_readable)
    run_until_stopped(loop)
    assert events == ["writable", "read b'hello'"]
    assert loop.remove_writer(a) is False
    assert loop.remove_reader(b) is True


def test_readers_on_a_closed_loop_raise(
        loop: Loop, sockpair: tuple[socket.socket, socket.socket]) -> None:
    loop.close()
    with pytest.raises(RuntimeError):
        loop.add_reader(sockpair[0], my_callback)
    with pytest.raises(RuntimeError):
        loop.add_writer(sockpair[0], my_callback)


# -------------------------------------------------------------- signals


def test_add_signal_handler_runs_callback_on_the_loop(loop: Loop) -> None:
    calls: list[tuple[str, bool, bool]] = []

    def on_usr1(tag: str) -> None:
        in_loop_thread = threading.get_ident() == threading.main_thread().ident
        calls.append((tag, in_loop_thread, asyncio.get_running_loop() is loop))
        loop.stop()

    loop.add_signal_handler(signal.SIGUSR1, on_usr1, "usr1")
    try:
        timer = later_from_thread(0.1, os.kill, os.getpid(), signal.SIGUSR1)
        elapsed = run_until_stopped(loop, timeout=10)
        timer.join()
    finally:
        assert loop.remove_signal_handler(signal.SIGUSR1) is True
    assert calls == [("usr1", True, True)]
    assert elapsed < 1.0
    assert loop.remove_signal_handler(signal.SIGUSR1) is False


def test_add_signal_handler_argument_errors(loop: Loop) -> None:
    with pytest.raises(TypeError):
        loop.add_signal_handler("SIGUSR1", my_callback)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        loop.add_signal_handler(10_000, my_callback)
    with pytest.raises(RuntimeError):
        loop.add_signal_handler(signal.SIGKILL, my_callback)

    async def coro_fn() -> None:
        pass

    with pytest.raises(TypeError):
        loop.add_signal_handler(signal.SIGUSR1, coro_fn)


def test_python_signal_handler_runs_promptly_while_loop_is_blocked(loop: Loop) -> None:
    handled_at: list[float] = []
    woken = loop.create_future()

    def handler(signum: int, frame: Any) -> None:
        handled_at.append(time.monotonic())
        loop.call_soon_threadsafe(lambda: woken.done() or woken.set_result(None))

    previous = signal.signal(signal.SIGUSR2, handler)
    try:
        main_id = threading.main_thread().ident
        assert main_id is not None
        sent_at = time.monotonic() + 0.1
        timer = later_from_thread(0.1, signal.pthread_kill, main_id, signal.SIGUSR2)
        loop.run_until_complete(asyncio.wait({woken}, timeout=5))
        timer.join()
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert len(handled_at) == 1
    assert handled_at[0] - sent_at < 1.0, "the handler only ran when the loop woke up"


SIGINT_SCRIPT = FACTORY_PRELUDE + """
async def main():
    try:
        print("ready", flush=True)
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        print("cancelled", flush=True)
        raise
    finally:
        print("finally", flush=True)

try:
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())
except KeyboardInterrupt:
    print("KeyboardInterrupt", flush=True)
"""


def test_sigint_cancels_the_main_task_then_raises_keyboard_interrupt(loop_kind: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(os.path.abspath(p) for p in sys.path if p)}
    proc = subprocess.Popen([sys.executable, "-c", SIGINT_SCRIPT, loop_kind], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first == "ready\n", first + proc.stderr.read()  # type: ignore[union-attr]
        time.sleep(0.1)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
        elapsed = time.monotonic() - sent
    finally:
        proc.kill()
        proc.wait()
    assert out.splitlines() == ["cancelled", "finally", "KeyboardInterrupt"], err
    assert elapsed < 5


FORK_SCRIPT = FACTORY_PRELUDE + """
async def value():
    await asyncio.sleep(0.01)
    return 7

def child(label, body):
    pid = os.fork()
    if pid == 0:
        try:
            body()
        except BaseException as exc:
            print(label, "raised", type(exc).__name__, flush=True)
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)

def parent_loop_in_child():
    try:
        print("parent loop:", loop.run_until_complete(value()), flush=True)
    except Exception as exc:
        print("parent loop raised", type(exc).__name__, flush=True)
    fresh = loop_factory()
    print("new loop:", fresh.run_until_complete(value()), flush=True)
    fresh.close()

def new_loop_in_child_of_running_loop():
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        print("inside:", runner.run(value()), flush=True)

loop = loop_factory()
print("parent:", loop.run_until_complete(value()), flush=True)
print("exit", child("idle", parent_loop_in_child), flush=True)
loop.call_soon(lambda: print("exit", child("running", new_loop_in_child_of_running_loop), flush=True))
loop.call_soon(loop.stop)
loop.run_forever()
print("parent after:", loop.run_until_complete(value()), flush=True)
loop.close()
"""


def test_fork_child_can_use_a_new_loop(loop_kind: str) -> None:
    proc = run_script(FORK_SCRIPT, loop_kind)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert lines[0] == "parent: 7"
    assert lines[1] in ("parent loop: 7", "parent loop raised RuntimeError"), lines
    assert lines[2:] == ["new loop: 7", "exit 0", "inside: 7", "exit 0", "parent after: 7"], lines
