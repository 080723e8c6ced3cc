"""The asyncio guide's patterns, run on the stdlib loop, uvloop (when it is
installed) and pyasync_c's loop.

Run ``python -m pyasync_c.demo`` (or ``python pyasync_c/demo.py``). Each pattern
is an ``async def`` returning a plain, deterministic value that is compared with
``Pattern.expected``; the tests import :data:`PATTERNS` and assert the same.
Then demo_scale times the patterns at scale on the same loops.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from dataclasses import dataclass
from typing import Any, AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine, Optional

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


# --------------------------------------------------------------- gather


async def _value_after(value: int, delay: float = 0.01) -> int:
    await asyncio.sleep(delay)
    return value


async def _fail_after(exc: BaseException, delay: float = 0.005) -> int:
    await asyncio.sleep(delay)
    raise exc


async def gather_pattern() -> dict[str, Any]:
    """gather keeps argument order; return_exceptions turns errors into results."""
    ordered = await asyncio.gather(_value_after(1, 0.03), _value_after(2, 0.01), _value_after(3, 0.02))
    mixed = await asyncio.gather(_value_after(1), _fail_after(ValueError("bad")), _value_after(3),
                                 return_exceptions=True)
    try:
        await asyncio.gather(_value_after(1), _fail_after(KeyError("k")))
        raised = "nothing"
    except KeyError:
        raised = "KeyError"
    return {
        "ordered": ordered,
        "mixed": [type(r).__name__ if isinstance(r, BaseException) else r for r in mixed],
        "raised": raised,
    }


# ------------------------------------------------------ create_task refs


async def create_task_pattern() -> dict[str, Any]:
    """Fire-and-forget tasks kept alive by a set, discarded when done."""
    background: set[asyncio.Task[int]] = set()
    results: list[int] = []

    async def job(i: int) -> int:
        # 5 ms apart: the finish order must not depend on how long starting
        # the five tasks took on a loaded machine.
        await asyncio.sleep(0.005 * (5 - i))
        results.append(i)
        return i

    for i in range(5):
        task = asyncio.create_task(job(i), name=f"job-{i}")
        background.add(task)
        task.add_done_callback(background.discard)
    alive_at_start = len(background)
    while background:
        await asyncio.sleep(0.002)
    return {"alive_at_start": alive_at_start, "alive_at_end": len(background),
            "finish_order": results}


# --------------------------------------------------- TaskGroup + except*


async def taskgroup_pattern() -> dict[str, Any]:
    """A TaskGroup cancels siblings on failure; except* splits the group."""
    sibling_cancelled = False

    async def sibling() -> None:
        nonlocal sibling_cancelled
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            sibling_cancelled = True
            raise

    caught: dict[str, int] = {}
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(sibling())
            tg.create_task(_fail_after(ValueError("v")))
            tg.create_task(_fail_after(TypeError("t")))
    except* ValueError as group:
        caught["ValueError"] = len(group.exceptions)
    except* TypeError as group:
        caught["TypeError"] = len(group.exceptions)

    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(_value_after(i, 0.005)) for i in range(3)]
    return {"caught": caught, "sibling_cancelled": sibling_cancelled,
            "ok_results": [t.result() for t in tasks]}


# ---------------------------------------------------- Semaphore fan-out


async def semaphore_pattern(jobs: int = 100, limit: int = 5) -> dict[str, int]:
    """Bounded fan-out: 100 jobs, at most 5 running at once."""
    sem = asyncio.Semaphore(limit)
    running = 0
    max_seen = 0

    async def job(i: int) -> int:
        nonlocal running, max_seen
        async with sem:
            running += 1
            max_seen = max(max_seen, running)
            await asyncio.sleep(0.001)
            running -= 1
        return i

    results = await asyncio.gather(*(job(i) for i in range(jobs)))
    return {"done": len(results), "sum": sum(results), "max_concurrency": max_seen}


# ---------------------------------------------------------------- Queue


async def queue_pattern(items: int = 30, maxsize: int = 3) -> dict[str, Any]:
    """Producer/consumers with backpressure, task_done/join, then a get_nowait pool."""
    queue: asyncio.Queue[int] = asyncio.Queue(maxsize=maxsize)
    consumed: list[int] = []
    max_qsize = 0
    producer_waited = False

    async def producer() -> None:
        nonlocal max_qsize, producer_waited
        for i in range(items):
            producer_waited |= queue.full()
            await queue.put(i)
            max_qsize = max(max_qsize, queue.qsize())

    async def consumer() -> None:
        while True:
            item = await queue.get()
            await asyncio.sleep(0.001)
            consumed.append(item)
            queue.task_done()

    consumers = [asyncio.create_task(consumer()) for _ in range(2)]
    await producer()
    await queue.join()
    for c in consumers:
        c.cancel()
    await asyncio.gather(*consumers, return_exceptions=True)

    pool_queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(20):
        pool_queue.put_nowait(i)

    async def pool_worker() -> int:
        handled = 0
        while True:
            try:
                pool_queue.get_nowait()
            except asyncio.QueueEmpty:
                return handled
            handled += 1
            await asyncio.sleep(0)

    per_worker = await asyncio.gather(*(pool_worker() for _ in range(4)))
    return {
        "consumed": sorted(consumed) == list(range(items)),
        "backpressure": producer_waited and max_qsize <= maxsize,
        "pool_total": sum(per_worker),
        "pool_all_worked": all(n > 0 for n in per_worker),
    }


# -------------------------------------------------------------- timeouts


async def timeout_pattern() -> dict[str, Any]:
    """wait_for and asyncio.timeout raise TimeoutError; fast work gets through."""
    outcome: dict[str, Any] = {}
    try:
        await asyncio.wait_for(asyncio.sleep(10), timeout=0.02)
        outcome["wait_for"] = "finished"
    except TimeoutError:
        outcome["wait_for"] = "TimeoutError"
    outcome["wait_for_fast"] = await asyncio.wait_for(_value_after(42, 0.001), timeout=1)
    try:
        async with asyncio.timeout(0.02) as cm:
            await asyncio.sleep(10)
        outcome["timeout_cm"] = "finished"
    except TimeoutError:
        outcome["timeout_cm"] = "TimeoutError"
    outcome["expired"] = cm.expired()
    async with asyncio.timeout(1) as cm_fast:
        await asyncio.sleep(0.001)
    outcome["fast_expired"] = cm_fast.expired()
    return outcome


# ------------------------------------------------- wait(FIRST_COMPLETED)


async def first_completed_pattern() -> dict[str, Any]:
    """Take the first finisher, cancel the rest and wait for them to settle."""
    tasks = {
        asyncio.create_task(_value_after(1, 0.005), name="fast"),
        asyncio.create_task(_value_after(2, 10), name="slow-a"),
        asyncio.create_task(_value_after(3, 10), name="slow-b"),
    }
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    await asyncio.wait(pending)
    return {"winner": [t.get_name() for t in done], "winner_result": [t.result() for t in done],
            "cancelled": sorted(t.get_name() for t in pending if t.cancelled())}


# ---------------------------------------------------------- cancellation


async def cancellation_pattern() -> dict[str, Any]:
    """A cancelled task runs its except/finally cleanup and reports cancelled()."""
    events: list[str] = []
    started = asyncio.Event()

    async def worker() -> None:
        try:
            started.set()
            await asyncio.sleep(10)
        except asyncio.CancelledError as exc:
            events.append(f"cancelled:{exc.args[0] if exc.args else ''}")
            raise
        finally:
            await asyncio.sleep(0)  # cleanup may itself await
            events.append("cleanup")

    task = asyncio.create_task(worker())
    await started.wait()
    task.cancel("shutdown")
    try:
        await task
    except asyncio.CancelledError:
        events.append("awaiter saw CancelledError")
    return {"events": events, "cancelled": task.cancelled()}


# ---------------------------------------------------------------- retry


async def retry(op: Callable[[], Awaitable[Any]], attempts: int, base_delay: float,
                on_retry: Optional[Callable[[float], None]] = None) -> Any:
    """Call ``op`` until it succeeds, sleeping base_delay * 2**n between tries."""
    for attempt in range(attempts):
        try:
            return await op()
        except ConnectionError:
            if attempt == attempts - 1:
                raise
            delay = base_delay * 2 ** attempt
            if on_retry is not None:
                on_retry(delay)
            await asyncio.sleep(delay)


async def retry_pattern() -> dict[str, Any]:
    """Exponential backoff: a flaky op failing 3 times succeeds on the 4th."""
    calls = 0
    delays: list[float] = []

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls <= 3:
            raise ConnectionError(f"attempt {calls}")
        return "ok"

    loop = asyncio.get_running_loop()
    start = loop.time()
    result = await retry(flaky, attempts=5, base_delay=0.004, on_retry=delays.append)
    elapsed = loop.time() - start
    try:
        await retry(flaky_always_fails, attempts=2, base_delay=0.001)
        gave_up = False
    except ConnectionError:
        gave_up = True
    return {"result": result, "attempts": calls, "delays": delays,
            "waited_long_enough": elapsed >= sum(delays), "gave_up": gave_up}


async def flaky_always_fails() -> None:
    raise ConnectionError("down")


# ---------------------------------------------------- executors / threads


async def _ticks_during(blocking: Awaitable[Any], period: float = 0.005) -> tuple[Any, int]:
    """Await ``blocking`` while a ticker task counts loop ticks."""
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(period)
            ticks += 1

    tick_task = asyncio.create_task(ticker())
    try:
        result = await blocking
    finally:
        tick_task.cancel()
    return result, ticks


def _blocking_work(seconds: float, value: int) -> int:
    time.sleep(seconds)
    return value


async def executor_pattern(block: float = 0.15) -> dict[str, Any]:
    """Blocking calls run in threads while the loop keeps ticking."""
    loop = asyncio.get_running_loop()
    r1, ticks1 = await _ticks_during(loop.run_in_executor(None, _blocking_work, block, 1))
    r2, ticks2 = await _ticks_during(asyncio.to_thread(_blocking_work, block, 2))
    min_ticks = 5  # a 0.15 s block at 5 ms per tick allows ~30
    return {"results": [r1, r2], "executor_ticked": ticks1 >= min_ticks,
            "to_thread_ticked": ticks2 >= min_ticks}


# ------------------------------------------- async generators / managers


async def countdown(n: int, log: list[str]) -> AsyncGenerator[int, None]:
    try:
        while n > 0:
            await asyncio.sleep(0)
            yield n
            n -= 1
    finally:
        log.append("countdown closed")


@contextlib.asynccontextmanager
async def resource(name: str, log: list[str]) -> AsyncIterator[str]:
    await asyncio.sleep(0)
    log.append(f"open {name}")
    try:
        yield name
    finally:
        await asyncio.sleep(0)
        log.append(f"close {name}")


class Connection:
    """A hand-written async context manager."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    async def __aenter__(self) -> Connection:
        await asyncio.sleep(0)
        self.log.append("connect")
        return self

    async def __aexit__(self, *exc_info: Any) -> bool:
        self.log.append(f"disconnect({exc_info[0].__name__ if exc_info[0] else None})")
        return False


async def async_gen_cm_pattern() -> dict[str, Any]:
    log: list[str] = []
    full = [n async for n in countdown(3, log)]
    gen = countdown(10, log)
    first = [await gen.__anext__(), await gen.__anext__()]
    await gen.aclose()
    async with resource("db", log) as name:
        log.append(f"use {name}")
    try:
        async with Connection(log):
            raise KeyError("inside")
    except KeyError:
        log.append("KeyError propagated")
    return {"full": full, "partial": first, "log": log}


# ---------------------------------------------------- debounce / throttle


class Debouncer:
    """Call ``fn`` once, ``delay`` after the last of a burst of triggers."""

    def __init__(self, delay: float, fn: Callable[[Any], None]) -> None:
        self.delay = delay
        self.fn = fn
        self._handle: Optional[asyncio.TimerHandle] = None

    def trigger(self, value: Any) -> None:
        if self._handle is not None:
            self._handle.cancel()
        loop = asyncio.get_running_loop()
        self._handle = loop.call_at(loop.time() + self.delay, self.fn, value)


class Throttler:
    """Let at most one call through per ``interval`` of loop time."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._next_allowed = float("-inf")

    def allow(self) -> bool:
        now = asyncio.get_running_loop().time()
        if now < self._next_allowed:
            return False
        self._next_allowed = now + self.interval
        return True


async def debounce_throttle_pattern() -> dict[str, Any]:
    fired: list[Any] = []
    debouncer = Debouncer(0.04, fired.append)
    for burst in ("a", "b"):
        for i in range(5):
            debouncer.trigger(f"{burst}{i}")
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.08)

    throttler = Throttler(0.03)
    loop = asyncio.get_running_loop()
    start = loop.time()
    allowed = 0
    while loop.time() - start < 0.1:
        allowed += throttler.allow()
        await asyncio.sleep(0.002)
    return {"debounced": fired, "throttled_ok": 2 <= allowed <= 4}


# --------------------------------------------------------- debug mode


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


async def debug_pattern() -> dict[str, Any]:
    """Under asyncio.run(debug=True) a slow callback is logged by 'asyncio'."""
    loop = asyncio.get_running_loop()
    loop.slow_callback_duration = 0.02
    collector = _Collect()
    logger = logging.getLogger("asyncio")
    logger.addHandler(collector)
    try:
        done = loop.create_future()

        def slow_callback() -> None:
            time.sleep(0.05)
            done.set_result(None)

        loop.call_soon(slow_callback)
        await done
    finally:
        logger.removeHandler(collector)
    warned = any("slow_callback" in m and "took" in m for m in collector.messages)
    return {"debug": loop.get_debug(), "slow_callback_warned": warned}


# --------------------------------------------------------------- table


@dataclass(frozen=True)
class Pattern:
    name: str
    func: Callable[[], Coroutine[Any, Any, Any]]
    expected: Any
    debug: bool = False


PATTERNS: list[Pattern] = [
    Pattern("gather", gather_pattern,
            {"ordered": [1, 2, 3], "mixed": [1, "ValueError", 3], "raised": "KeyError"}),
    Pattern("create_task refs", create_task_pattern,
            {"alive_at_start": 5, "alive_at_end": 0, "finish_order": [4, 3, 2, 1, 0]}),
    Pattern("TaskGroup except*", taskgroup_pattern,
            {"caught": {"ValueError": 1, "TypeError": 1}, "sibling_cancelled": True,
             "ok_results": [0, 1, 2]}),
    Pattern("Semaphore fan-out", semaphore_pattern,
            {"done": 100, "sum": 4950, "max_concurrency": 5}),
    Pattern("Queue", queue_pattern,
            {"consumed": True, "backpressure": True, "pool_total": 20, "pool_all_worked": True}),
    Pattern("wait_for / timeout", timeout_pattern,
            {"wait_for": "TimeoutError", "wait_for_fast": 42, "timeout_cm": "TimeoutError",
             "expired": True, "fast_expired": False}),
    Pattern("wait FIRST_COMPLETED", first_completed_pattern,
            {"winner": ["fast"], "winner_result": [1], "cancelled": ["slow-a", "slow-b"]}),
    Pattern("cancellation cleanup", cancellation_pattern,
            {"events": ["cancelled:shutdown", "cleanup", "awaiter saw CancelledError"],
             "cancelled": True}),
    Pattern("retry backoff", retry_pattern,
            {"result": "ok", "attempts": 4, "delays": [0.004, 0.008, 0.016],
             "waited_long_enough": True, "gave_up": True}),
    Pattern("executor / to_thread", executor_pattern,
            {"results": [1, 2], "executor_ticked": True, "to_thread_ticked": True}),
    Pattern("async gen / async with", async_gen_cm_pattern,
            {"full": [3, 2, 1], "partial": [10, 9],
             "log": ["countdown closed", "countdown closed", "open db", "use db", "close db",
                     "connect", "disconnect(KeyError)", "KeyError propagated"]}),
    Pattern("debounce / throttle", debounce_throttle_pattern,
            {"debounced": ["a4", "b4"], "throttled_ok": True}),
    Pattern("run(debug=True)", debug_pattern,
            {"debug": True, "slow_callback_warned": True}, debug=True),
]


@dataclass
class Outcome:
    ok: bool
    seconds: float
    error: str = ""


def run_pattern(pattern: Pattern, loop_factory: LoopFactory) -> Outcome:
    start = time.perf_counter()
    try:
        with asyncio.Runner(loop_factory=loop_factory, debug=pattern.debug) as runner:
            result = runner.run(pattern.func())
    except Exception as exc:  # a broken loop must not stop the table
        return Outcome(False, time.perf_counter() - start, f"{type(exc).__name__}: {exc}")
    elapsed = time.perf_counter() - start
    if result != pattern.expected:
        return Outcome(False, elapsed, f"got {result!r}")
    return Outcome(True, elapsed)


def load_pyasync_c() -> tuple[Optional[LoopFactory], str]:
    """pyasync_c's loop factory, or None and the reason it is unavailable."""
    try:
        import pyasync_c
        return pyasync_c.new_event_loop, ""
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}"


def load_uvloop() -> tuple[Optional[LoopFactory], str]:
    """uvloop's loop factory, or None and the reason it is unavailable."""
    try:
        import uvloop
        return uvloop.new_event_loop, ""
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class Column:
    """A loop the demo runs every pattern on."""
    name: str
    factory: Optional[LoopFactory]   # None: not available, the column shows n/a
    counts: bool = True              # whether a wrong result fails the demo
    c_primitives: bool = False       # the scale table gives it pyasync_c's C primitives


def columns() -> tuple[list[Column], list[str]]:
    """stdlib, uvloop, pyasync_c (in that order), and a note per missing loop."""
    notes = []
    uvloop_factory, why_uvloop = load_uvloop()
    if uvloop_factory is None:
        notes.append(f"uvloop is not available ({why_uvloop}): its column shows n/a "
                     "(pip install uvloop to compare).")
    pyasync_factory, why = load_pyasync_c()
    if pyasync_factory is None:
        notes.append(f"pyasync_c cannot be imported ({why}); its column shows n/a.")
    # uvloop is the reference being compared with: a result of its that
    # differs is shown, but only stdlib's and pyasync_c's fail the demo.
    return [Column("stdlib", asyncio.SelectorEventLoop),
            Column("uvloop", uvloop_factory, counts=False),
            Column("pyasync_c", pyasync_factory, c_primitives=True)], notes


def _cell(outcome: Optional[Outcome]) -> str:
    return "n/a" if outcome is None else f"{outcome.seconds * 1000:.1f} ms"


def ok_cell(oks: list[Optional[bool]]) -> str:
    """'ok/ok/FAIL' for the columns in order; '-' for a loop not available."""
    return "/".join("-" if ok is None else "ok" if ok else "FAIL" for ok in oks)


@dataclass(frozen=True)
class Problem:
    """A wrong result: `counts` if it fails the demo (stdlib's, pyasync_c's)."""
    text: str
    counts: bool


def print_pattern_table(cols: list[Column]) -> list[Problem]:
    """Runs every guide pattern on every loop, prints the table, returns the wrong results."""
    header = (f"{'pattern':<24} {'ok?':<13}"
              + "".join(f" {col.name:>10}" for col in cols))
    print(header)
    print("-" * len(header))
    problems: list[Problem] = []
    for pattern in PATTERNS:
        outcomes = [run_pattern(pattern, col.factory) if col.factory else None for col in cols]
        print(f"{pattern.name:<24} {ok_cell([o.ok if o else None for o in outcomes]):<13}"
              + "".join(f" {_cell(o):>10}" for o in outcomes))
        for col, outcome in zip(cols, outcomes):
            if outcome is not None and not outcome.ok:
                problems.append(Problem(f"{pattern.name} [{col.name}]: {outcome.error}",
                                        col.counts))
    names = "/".join(col.name for col in cols)
    print(f"\nok? is {names}: each loop's result is checked against the expected one.")
    print("These patterns wait on sleeps and threads, so every loop takes about the same time;")
    print("the table below measures the loops and the primitives.\n")
    return problems


def main() -> int:
    cols, notes = columns()
    for note in notes:
        print(note)
    if notes:
        print()
    problems = print_pattern_table(cols)
    try:
        from pyasync_c.demo_scale import print_scale_table
    except ImportError as exc:
        print(f"(throughput table unavailable: {exc})")
    else:
        problems += [Problem(text, counts) for text, counts in print_scale_table(cols)]
    failures = [p.text for p in problems if p.counts]
    differences = [p.text for p in problems if not p.counts]
    if failures:
        print("\nFailures:")
        print("".join(f"  {line}\n" for line in failures), end="")
    if differences:
        print("\nuvloop gave other results (shown for comparison; they do not fail the demo):")
        print("".join(f"  {line}\n" for line in differences), end="")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
