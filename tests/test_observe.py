"""Seeing inside the loop (issue #13): loop.stats() counters, lag histograms,
the blocking-call detector, periodic stats logging and ``--stats``.

Workloads run on both loops where the stdlib has a counterpart (the count a
workload makes is checked on both; only pyasync_c has stats()).  The
detector's timing tests assert ordering (the event arrived while the
callback still ran), never tight durations.
"""
from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import pytest

import pyasync_c
from pyasync_c import _observe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
THIS_FILE = os.path.abspath(__file__)

STATS_KEYS = {
    "iterations_total", "callbacks_total", "io_events_total", "timers_scheduled_total",
    "timers_fired_total", "timers_cancelled_total", "timers_pending", "callbacks_ready",
    "transports_open", "servers_open", "bytes_received_total", "bytes_sent_total",
    "poll_seconds_total", "busy_seconds_total", "busy_ratio", "longest_callback_seconds",
    "callback_lag_p50_seconds", "callback_lag_p99_seconds", "callback_lag_max_seconds",
    "timer_lateness_p50_seconds", "timer_lateness_p99_seconds", "timer_lateness_max_seconds",
    "callback_lag_buckets", "timer_lateness_buckets", "blocking_events_total",
    "blocked_seconds_total", "window_seconds", "running", "enabled",
}


def line_of(marker: str) -> int:
    with open(THIS_FILE) as source:
        for number, line in enumerate(source, 1):
            if marker in line and "line_of(" not in line:
                return number
    raise AssertionError(marker)


# ---- counters -----------------------------------------------------------------

def test_stats_keys_documented():
    loop = pyasync_c.new_event_loop()
    try:
        stats = loop.stats()
        assert set(stats) == STATS_KEYS
        assert stats["enabled"] is True
        with open(os.path.join(ROOT, "README.md")) as readme:
            text = readme.read()
        for key in STATS_KEYS:
            assert f"`{key}`" in text, key
    finally:
        loop.close()


def test_counters_exact_call_soon_and_timers(loop, loop_name):
    n, m, k = 1000, 40, 15
    ran = {"soon": 0, "timer": 0}

    def soon():
        ran["soon"] += 1

    def timer():
        ran["timer"] += 1

    async def main():
        if loop_name == "pyasync_c":
            loop.reset_stats()
        for _ in range(n):
            loop.call_soon(soon)
        handles = [loop.call_later(0.001 * (i % 5), timer) for i in range(m)]
        for handle in handles[:k]:
            handle.cancel()
        await asyncio.sleep(0.05)

    loop.run_until_complete(main())
    assert ran == {"soon": n, "timer": m - k}
    if loop_name != "pyasync_c":
        return
    stats = loop.stats()
    # + main's task steps and asyncio.sleep's own timer
    assert stats["timers_scheduled_total"] == m + 1
    assert stats["timers_cancelled_total"] == k
    assert stats["timers_fired_total"] == m - k + 1
    assert n + (m - k) <= stats["callbacks_total"] <= n + (m - k) + 5
    assert sum(stats["timer_lateness_buckets"]) == m - k + 1
    assert stats["timers_pending"] == 0
    assert stats["iterations_total"] >= 2


def test_timer_cancelled_while_ready_counts_once():
    loop = pyasync_c.new_event_loop()
    try:
        fired = []
        later = loop.call_later(0, fired.append, "late")

        def cancel_it():
            later.cancel()
            later.cancel()

        # a timer callback that cancels another timer popped in the same iteration
        loop.call_at(loop.time() - 1, cancel_it)
        loop.run_until_complete(asyncio.sleep(0.01))
        stats = loop.stats()
        assert fired == []
        assert stats["timers_cancelled_total"] == 1
        assert stats["timers_fired_total"] == 2  # cancel_it and sleep's timer
    finally:
        loop.close()


def test_timers_in_the_distant_past():
    loop = pyasync_c.new_event_loop()
    try:
        fired = []
        for when in (float("-inf"), -1e300, 0.0):
            loop.call_at(when, fired.append, when)
        loop.run_until_complete(asyncio.sleep(0))
        stats = loop.stats()
        assert len(fired) == 3
        assert stats["timers_fired_total"] == 3
        assert 0 < stats["timer_lateness_max_seconds"] < 1e10
        assert sum(stats["timer_lateness_buckets"]) == 3
    finally:
        loop.close()


def test_reset(loop, loop_name):
    if loop_name != "pyasync_c":
        pytest.skip("stats() is pyasync_c's")
    for _ in range(10):
        loop.call_soon(lambda: None)
    loop.run_until_complete(asyncio.sleep(0))
    before = loop.stats(reset=True)
    assert before["callbacks_total"] >= 10
    after = loop.stats()
    assert after["callbacks_total"] == 0 and after["iterations_total"] == 0
    assert after["callback_lag_buckets"] == [0] * len(after["callback_lag_buckets"])
    loop.call_soon(lambda: None)
    loop.run_until_complete(asyncio.sleep(0))
    assert loop.stats()["callbacks_total"] >= 1
    loop.reset_stats()
    assert loop.stats()["callbacks_total"] == 0
    with pytest.raises(TypeError):
        loop.stats(1, 2)
    with pytest.raises(TypeError):
        loop.stats(bogus=True)


class _Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


def test_bytes_and_transports_counted(loop, loop_name):
    payload = b"x" * 100_000
    seen: dict[str, Any] = {}

    async def main():
        server = await loop.create_server(_Echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        if loop_name == "pyasync_c":
            loop.reset_stats()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.sleep(0.01)
        if loop_name == "pyasync_c":
            seen["during"] = loop.stats()
        writer.write(payload)
        echoed = await reader.readexactly(len(payload))
        assert echoed == payload
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0.01)

    loop.run_until_complete(main())
    if loop_name != "pyasync_c":
        return
    during, stats = seen["during"], loop.stats()
    assert during["transports_open"] == 2  # the client's and the server's side
    assert during["servers_open"] == 1
    # the client sends it, the server receives it, echoes it, the client receives it
    assert stats["bytes_sent_total"] == 2 * len(payload)
    assert stats["bytes_received_total"] == 2 * len(payload)
    assert stats["io_events_total"] > 0
    assert stats["transports_open"] == 0 and stats["servers_open"] == 0


def test_poll_time_and_lag():
    loop = pyasync_c.new_event_loop()
    try:
        async def main():
            loop.reset_stats()
            await asyncio.sleep(0.1)          # idle: poll time
            loop.call_soon(lambda: None)      # waits behind the blocking callback below
            loop.call_later(0.01, lambda: None)  # fires late: the loop is blocked
            time.sleep(0.06)
            await asyncio.sleep(0)

        loop.run_until_complete(main())
        stats = loop.stats()
        assert stats["poll_seconds_total"] >= 0.08
        assert stats["busy_seconds_total"] >= 0.05
        assert 0 < stats["busy_ratio"] < 1
        assert stats["callback_lag_max_seconds"] >= 0.05
        assert stats["timer_lateness_max_seconds"] >= 0.04
        assert stats["longest_callback_seconds"] >= 0.05
        assert stats["callback_lag_p99_seconds"] <= stats["callback_lag_max_seconds"]
    finally:
        loop.close()


@pytest.mark.parametrize("warmup", [0, 1, 100, "slow"])
def test_longest_callback_between_idle_polls(warmup):
    loop = pyasync_c.new_event_loop()
    try:
        async def main():
            if warmup == "slow":  # slow callbacks: one clock window per callback
                for _ in range(3):
                    loop.call_soon(time.sleep, 0.001)
                    await asyncio.sleep(0)
            else:
                for _ in range(warmup):
                    await asyncio.sleep(0)
            await asyncio.sleep(0.01)
            loop.reset_stats()
            loop.call_soon(time.sleep, 0.05)  # alone between two blocking polls
            await asyncio.sleep(0.1)

        loop.run_until_complete(main())
        assert 0.045 <= loop.stats()["longest_callback_seconds"] < 0.09
    finally:
        loop.close()


def test_histogram_quantile():
    quantile = pyasync_c.Loop._histogram_quantile
    assert quantile([0] * 32, 0.5) == 0.0
    assert quantile([1] + [0] * 31, 0.99) == pytest.approx(1024e-9)
    assert quantile([0, 0, 10], 0.5) == pytest.approx(4096e-9)
    with pytest.raises(ValueError):
        quantile([1], 2)
    with pytest.raises(ValueError):
        quantile([1] * 33, 0.5)
    with pytest.raises(TypeError):
        quantile(5, 0.5)


# ---- the blocking detector ----------------------------------------------------

class Recorder:
    def __init__(self):
        self.events: list[Any] = []
        self.lock = threading.Lock()

    def __call__(self, event):
        event.received_at = time.monotonic()
        with self.lock:
            self.events.append(event)

    def kinds(self):
        return [event.kind for event in self.events]


def test_catches_time_sleep_in_the_act():
    recorder = Recorder()
    state = {}

    async def sleeper():
        await asyncio.sleep(0)
        state["start"] = time.monotonic()
        time.sleep(0.3)  # BLOCK-SLEEP
        state["end"] = time.monotonic()

    async def main():
        watch = pyasync_c.watch_blocking(0.1, callback=recorder)
        try:
            await asyncio.create_task(sleeper(), name="the-sleeper")
            await asyncio.sleep(0.05)  # the "finished" event follows the end of the block
        finally:
            watch.stop()

    pyasync_c.run(main())
    first = recorder.events[0]
    assert first.kind == "blocking" and first.in_the_act
    assert first.received_at < state["end"], "reported only after the callback returned"
    assert first.received_at - state["start"] >= 0.1
    assert first.filename == THIS_FILE and first.lineno == line_of("# BLOCK-SLEEP")
    assert first.function == "sleeper"
    assert first.task_name == "the-sleeper"
    assert any("sleeper" in link for link in first.coroutine_chain)
    assert recorder.kinds()[-1] == "finished"
    assert 0.2 < recorder.events[-1].duration < 0.5
    # reports at 1x and 2x the threshold while it ran (0.3 s)
    assert recorder.kinds().count("blocking") == 2


def test_catches_cpu_bound_loop_and_logs(caplog):
    state = {}

    async def spinner():
        state["start"] = time.monotonic()
        total = 0
        while time.monotonic() - state["start"] < 0.3:
            total += 1  # BLOCK-CPU
        state["end"] = time.monotonic()

    async def main():
        with pyasync_c.watch_blocking(0.1):
            await spinner()
            await asyncio.sleep(0.05)

    with caplog.at_level(logging.WARNING, logger="pyasync_c"):
        pyasync_c.run(main())
    records = [r for r in caplog.records if r.name == "pyasync_c"]
    assert records, "nothing logged"
    assert records[0].created < time.time()  # (logged from the watchdog thread)
    message = records[0].getMessage()
    assert "still running" in message
    assert f"{THIS_FILE}:" in message and "spinner" in message
    line = line_of("# BLOCK-CPU")
    assert any(f"{THIS_FILE}:{n} in spinner" in message for n in (line, line - 1)), message
    assert records[0].threadName == "pyasync_c-blocking-watchdog"
    assert "returned after" in records[-1].getMessage()


def test_event_arrives_before_cpu_loop_returns():
    recorder = Recorder()
    state = {"seen_while_running": False}

    async def spinner():
        start = time.monotonic()
        while time.monotonic() - start < 0.4:
            if recorder.events:
                state["seen_while_running"] = True
                break

    async def main():
        with pyasync_c.watch_blocking(0.1, callback=recorder):
            await spinner()

    pyasync_c.run(main())
    assert state["seen_while_running"]


def test_report_shows_source_lines_without_going_through_linecache(tmp_path, monkeypatch):
    """The report's stack has each frame's source line, read without releasing
    the GIL: not through linecache (os.stat/open/read release it, handing a
    CPU-bound loop thread the GIL for a whole switch interval before the
    report is out), so a module linecache never saw stays out of its cache."""
    import importlib
    import linecache

    module_file = tmp_path / "blocking_dep_mod.py"
    module_file.write_bytes(
        b"# -*- coding: latin-1 -*-\n"
        b"import time\n"
        b"def churn():\n"
        b"    start = time.monotonic()\n"
        b"    while time.monotonic() - start < 0.25:  # caf\xe9 spin\n"
        b"        sum(range(50))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("blocking_dep_mod")
    linecache.checkcache()
    linecache.cache.pop(str(module_file), None)
    recorder = Recorder()

    async def main():
        with pyasync_c.watch_blocking(0.1, callback=recorder):
            module.churn()
            await asyncio.sleep(0.05)

    pyasync_c.run(main())
    first = recorder.events[0]
    assert first.kind == "blocking" and first.in_the_act
    assert first.filename == str(module_file) and first.function == "churn"
    assert first.stack[-1].line in ("while time.monotonic() - start < 0.25:  # caf\xe9 spin", "sum(range(50))")
    assert "caf\xe9 spin" in first.format() or "sum(range(50))" in first.format()
    assert str(module_file) not in linecache.cache


def test_nothing_reported_for_many_short_callbacks():
    recorder = Recorder()

    async def main():
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        remaining = 100_000

        def callback():
            nonlocal remaining
            remaining -= 1
            if remaining == 0:
                done.set_result(None)
            else:
                loop.call_soon(callback)

        with pyasync_c.watch_blocking(0.05, callback=recorder):
            loop.call_soon(callback)
            await done
            await asyncio.sleep(0.15)  # idle in poll: not blocking either

    pyasync_c.run(main())
    assert recorder.events == []


def test_detection_while_executor_threads_run():
    recorder = Recorder()

    def busy_thread(seconds):
        end = time.monotonic() + seconds
        total = 0
        while time.monotonic() < end:
            total += 1
        return total

    async def main():
        loop = asyncio.get_running_loop()
        with pyasync_c.watch_blocking(0.1, callback=recorder):
            work = [loop.run_in_executor(None, busy_thread, 0.6) for _ in range(2)]
            await asyncio.sleep(0.05)
            time.sleep(0.3)  # BLOCK-EXECUTOR
            await asyncio.gather(*work)
            await asyncio.sleep(0.05)

    pyasync_c.run(main())
    # On a loaded machine the two CPU-bound threads can also keep the loop
    # thread from the GIL for a whole threshold in the middle of a short step:
    # the loop really was unresponsive, but the step is over by the time the
    # watchdog gets the GIL, so such a report has no location (in_the_act False).
    caught = [e for e in recorder.events if e.kind == "blocking" and e.in_the_act]
    assert caught and caught[0].lineno == line_of("# BLOCK-EXECUTOR")
    # awaiting the executor is not blocking: only that one callback is caught
    assert {e.lineno for e in caught} == {line_of("# BLOCK-EXECUTOR")}


def test_enable_disable_while_running_is_safe():
    recorder = Recorder()

    async def main():
        loop = asyncio.get_running_loop()
        stop = threading.Event()

        def toggler():  # from another thread, against the same loop
            while not stop.is_set():
                pyasync_c.watch_blocking(0.2, loop=loop, callback=recorder).stop()

        thread = threading.Thread(target=toggler)
        thread.start()
        try:
            for _ in range(200):
                watch = pyasync_c.watch_blocking(0.2, callback=recorder)
                await asyncio.sleep(0)
                watch.stop()
                watch.stop()  # idempotent
        finally:
            stop.set()
            thread.join()
        with pyasync_c.watch_blocking(0.1, callback=recorder):
            time.sleep(0.25)
            await asyncio.sleep(0.05)

    pyasync_c.run(main())
    assert "blocking" in recorder.kinds()
    assert not [t for t in threading.enumerate() if t.name == "pyasync_c-blocking-watchdog"]


def test_second_watch_replaces_first():
    first, second = Recorder(), Recorder()

    async def main():
        a = pyasync_c.watch_blocking(0.1, callback=first)
        b = pyasync_c.watch_blocking(0.1, callback=second)
        time.sleep(0.2)
        await asyncio.sleep(0.05)
        a.stop()  # stopping the replaced one leaves the new one on
        time.sleep(0.2)
        await asyncio.sleep(0.05)
        b.stop()

    pyasync_c.run(main())
    assert first.events == []
    assert second.kinds().count("finished") == 2


def test_watchdog_stops_with_loop_close():
    loop = pyasync_c.new_event_loop()
    watch = pyasync_c.watch_blocking(0.1, loop=loop, callback=Recorder())
    loop.run_until_complete(asyncio.sleep(0.01))
    loop.close()
    watch._thread.join(2)
    assert not watch._thread.is_alive() and not watch.active


def test_global_watch_applies_to_loops_started_later():
    recorder = Recorder()
    watch = pyasync_c.watch_blocking(0.1, callback=recorder)  # no loop running
    try:
        async def main():
            time.sleep(0.2)
            await asyncio.sleep(0.05)

        pyasync_c.run(main())
    finally:
        watch.stop()
    assert "blocking" in recorder.kinds()


def test_bad_arguments():
    loop = pyasync_c.new_event_loop()
    try:
        with pytest.raises(ValueError):
            pyasync_c.watch_blocking(-1, loop=loop)
        with pytest.raises(ValueError):
            pyasync_c.watch_blocking(float("nan"), loop=loop)
        with pytest.raises(TypeError):
            pyasync_c.watch_blocking("0.1", loop=loop)
        with pytest.raises(TypeError):
            pyasync_c.watch_blocking(0.1, loop=loop, callback=3)
        with pytest.raises(ValueError):
            pyasync_c.log_stats_every(0, loop=loop)
        with pytest.raises(TypeError):
            loop._watch_wait(1, 2)
        for period, timeout, threshold in ((-1.0, 0.1, 0.1), (5.0, 0.1, 0.1), (0.01, float("nan"), 0.1),
                                           (0.01, 0.1, 0.0)):
            with pytest.raises(ValueError):
                loop._watch_wait(0, period, timeout, threshold, -1, 0.0, 0.0)
        stdlib = asyncio.new_event_loop()
        try:
            with pytest.raises(TypeError):
                pyasync_c.watch_blocking(0.1, loop=stdlib)
            with pytest.raises(TypeError):
                pyasync_c.log_stats_every(1, loop=stdlib)
        finally:
            stdlib.close()
    finally:
        loop.close()


def test_blocking_events_counted_in_stats():
    async def main():
        loop = asyncio.get_running_loop()
        loop.reset_stats()
        with pyasync_c.watch_blocking(0.1, callback=Recorder()):
            time.sleep(0.25)
            await asyncio.sleep(0.05)
        return loop.stats()

    stats = pyasync_c.run(main())
    assert stats["blocking_events_total"] == 1
    assert 0.15 < stats["blocked_seconds_total"] < 0.5


# ---- periodic log, environment, command line, fork ----------------------------

def test_log_stats_every(caplog):
    async def main():
        logger = pyasync_c.log_stats_every(0.05)
        await asyncio.sleep(0.18)
        logger.cancel()

    with caplog.at_level(logging.INFO, logger="pyasync_c"):
        pyasync_c.run(main())
    lines = [r.getMessage() for r in caplog.records if "loop stats" in r.getMessage()]
    assert len(lines) >= 2
    assert "iterations" in lines[0] and "busy" in lines[0] and "lag p50" in lines[0]


def run_python(code: str, *args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, PYTHONPATH=ROOT, **(env or {}))
    return subprocess.run([sys.executable, *args] if not code else [sys.executable, "-c", code, *args],
                          capture_output=True, text=True, env=full_env, timeout=timeout, cwd=ROOT)


BLOCKING_SCRIPT = textwrap.dedent("""\
    import asyncio, time
    async def main():
        await asyncio.sleep(0)
        time.sleep(0.3)  # line 4
        await asyncio.sleep(0.05)
    asyncio.run(main())
""")


def test_env_var_enables_detector(tmp_path):
    script = tmp_path / "blocker.py"
    script.write_text(BLOCKING_SCRIPT)
    result = run_python("", "-m", "pyasync_c", str(script), env={"PYASYNC_C_BLOCKING": "0.1"})
    assert result.returncode == 0, result.stderr
    assert "still running" in result.stderr
    assert f"{script}:4 in main" in result.stderr
    assert "returned after" in result.stderr


def test_env_var_stats_interval(tmp_path):
    script = tmp_path / "idle.py"
    script.write_text("import asyncio, logging\nlogging.basicConfig(level=logging.INFO)\n"
                      "asyncio.run(asyncio.sleep(0.25))\n")
    result = run_python("", "-m", "pyasync_c", str(script), env={"PYASYNC_C_STATS_INTERVAL": "0.05"})
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("loop stats (last") >= 2


def test_cli_stats_and_blocking(tmp_path):
    script = tmp_path / "blocker.py"
    script.write_text(BLOCKING_SCRIPT)
    result = run_python("", "-m", "pyasync_c", "--stats", "--blocking", "0.1", str(script), "arg")
    assert result.returncode == 0, result.stderr
    err = result.stderr
    assert "still running" in err  # --blocking logs
    assert "pyasync_c stats (1 loop)" in err and "iterations" in err and "busy" in err
    assert "callback lag p50" in err
    assert "top sites by time blocked" in err and f"{script}:4 in main" in err
    # --stats alone: the summary, no per-event log
    result = run_python("", "-m", "pyasync_c", "--stats", str(script))
    assert result.returncode == 0, result.stderr
    assert "still running" not in result.stderr and f"{script}:4 in main" in result.stderr
    result = run_python("", "-m", "pyasync_c", "--blocking", "abc", str(script))
    assert result.returncode != 0 and "--blocking" in result.stderr


def test_detector_off_after_fork():
    code = textwrap.dedent("""\
        import asyncio, os, sys, time
        import pyasync_c
        events = []
        async def block():
            time.sleep(0.3)
            await asyncio.sleep(0.05)
        async def main():
            pyasync_c.watch_blocking(0.1, callback=events.append)
            pid = os.fork()
            if pid == 0:
                # the child: a new loop (the parent's cannot run here), env var ignored too
                os.environ["PYASYNC_C_BLOCKING"] = "0.1"
                child_events = []
                loop = pyasync_c.new_event_loop()
                loop.run_until_complete(block())
                loop.close()
                os._exit(0 if not events and not [t for t in __import__("threading").enumerate()
                                                  if t.name == "pyasync_c-blocking-watchdog"] else 3)
            _, status = os.waitpid(pid, 0)
            await block()
            print("child", os.waitstatus_to_exitcode(status), "parent", [e.kind for e in events])
        pyasync_c.run(main())
    """)
    result = run_python(code, env={"PYASYNC_C_BLOCKING": ""})
    assert result.returncode == 0, result.stderr
    assert "child 0" in result.stdout
    assert "'blocking'" in result.stdout and "'finished'" in result.stdout
    assert "still running" not in result.stderr  # nothing logged by the child


def test_detector_re_enabled_in_fork_child():
    code = textwrap.dedent("""\
        import asyncio, os, time
        import pyasync_c
        pid = os.fork()
        if pid == 0:
            events = []
            async def main():
                with pyasync_c.watch_blocking(0.1, callback=events.append):
                    time.sleep(0.25)
                    await asyncio.sleep(0.05)
            pyasync_c.run(main())
            os._exit(0 if "blocking" in [e.kind for e in events] else 4)
        _, status = os.waitpid(pid, 0)
        print("child", os.waitstatus_to_exitcode(status))
    """)
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert "child 0" in result.stdout


def test_run_hook_errors_do_not_stop_the_loop():
    seen = []

    def bad_hook(loop):
        seen.append(loop)
        raise RuntimeError("hook failed")

    original = _observe._on_loop_run
    pyasync_c.Loop._set_run_hook(bad_hook)
    try:
        with pytest.raises(TypeError):
            pyasync_c.Loop._set_run_hook(3)
        unraisable = []
        old_hook = sys.unraisablehook
        sys.unraisablehook = unraisable.append
        try:
            assert pyasync_c.run(asyncio.sleep(0, "done")) == "done"
        finally:
            sys.unraisablehook = old_hook
        assert seen and unraisable and isinstance(unraisable[0].exc_value, RuntimeError)
    finally:
        pyasync_c.Loop._set_run_hook(original)


def test_bad_env_value_is_ignored_with_a_warning(tmp_path):
    script = tmp_path / "blocker.py"
    script.write_text(BLOCKING_SCRIPT)
    result = run_python("", "-m", "pyasync_c", str(script), env={"PYASYNC_C_BLOCKING": "soon"})
    assert result.returncode == 0, result.stderr
    assert "ignoring PYASYNC_C_BLOCKING='soon'" in result.stderr
    assert "still running" not in result.stderr


ABANDONED_WATCHED_LOOPS = textwrap.dedent("""\
    import asyncio, gc, sys, threading, time, warnings, weakref
    import pyasync_c
    from pyasync_c import _observe
    warnings.simplefilter("ignore", ResourceWarning)
    factory = pyasync_c.new_event_loop if sys.argv[1] == "pyasync_c" else asyncio.new_event_loop
    def make():
        loop = factory()
        if sys.argv[1] == "pyasync_c":
            _observe.watch_blocking(0.5, loop=loop, callback=lambda event: None)
        loop.run_until_complete(asyncio.sleep(0.01))
        return weakref.ref(loop)   # never closed: abandoned in its reference cycles
    refs = [make() for _ in range(5)]
    for _ in range(40):
        gc.collect()
        if all(ref() is None for ref in refs):
            break
        time.sleep(0.05)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(
            t.name == "pyasync_c-blocking-watchdog" for t in threading.enumerate()):
        time.sleep(0.05)
    threads = sum(t.name == "pyasync_c-blocking-watchdog" for t in threading.enumerate())
    print(sum(ref() is not None for ref in refs), threads)
""")


@pytest.mark.parametrize("kind", ["asyncio", "pyasync_c"])
def test_watchdog_does_not_keep_an_abandoned_loop_alive(kind):
    # The watchdog thread holds only a weak handle (WatchPulse) on its loop:
    # an unclosed loop dropped by its owner is collected like asyncio's, and
    # its watchdog thread ends.
    result = run_python(ABANDONED_WATCHED_LOOPS, kind)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0", "0"], result.stdout


def test_watch_pulse_outlives_its_loop():
    loop = pyasync_c.new_event_loop()
    pulse = loop._watch_pulse()
    token = loop._watch_token(False)
    assert pulse.alive()
    assert pulse.wait(token, 0.001, 0.0, 1.0, -1, 0.0, 0.0) == ("timeout",)
    loop.close()
    del loop
    import gc
    gc.collect()
    assert not pulse.alive()
    assert pulse.wait(token, 0.001, 0.0, 1.0, -1, 0.0, 0.0) == ("stop",)
