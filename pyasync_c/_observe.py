"""Seeing inside the loop: the blocking-call detector, periodic stats logging
and the ``python -m pyasync_c --stats`` summary.

The counters themselves live in C (``csrc/loop/stats.c``) and are read with
``loop.stats()``.  This module adds:

- ``watch_blocking(threshold, loop=None, callback=None)``: a watchdog thread
  that notices a callback holding the loop longer than ``threshold`` seconds
  *while it still runs*, captures the loop thread's Python stack at that
  moment and reports it (logger ``"pyasync_c"``, or ``callback(event)``);
- ``log_stats_every(seconds, loop=None)``: one log line per interval;
- the run hook the C loop calls when ``_run`` starts: environment variables
  ``PYASYNC_C_BLOCKING`` and ``PYASYNC_C_STATS_INTERVAL``, and the loops the
  ``--stats`` summary covers.

Why a Python thread is enough: the watchdog waits in C (``WatchPulse.wait``,
a handle holding only a weak reference to the loop, so a watched loop that is
abandoned is still collected and its watchdog ends)
with the GIL released, polling the loop's heartbeat (atomics the loop bumps
before each callback) every few ms, so it never competes for the GIL while
all is well.  It needs the GIL only to capture a stack once a block is seen;
the loop thread gives it up within ``sys.getswitchinterval()`` (5 ms) in
pure-Python code and at once in C calls that release it (time.sleep, file
and socket I/O).  A C call that keeps the GIL (e.g. a long regex match) delays
the report until it returns; the event then says so (``in_the_act=False``).
"""
from __future__ import annotations

import asyncio
import atexit
import dataclasses
import io
import linecache
import logging
import math
import os
import sys
import threading
import tokenize
import traceback
import weakref
from typing import Any, Callable, Optional

from . import _loop

__all__ = ["BlockingEvent", "BlockingWatch", "watch_blocking", "log_stats_every", "StatsLogger"]

logger = logging.getLogger("pyasync_c")

_CO_COROUTINE = 0x0080
_CO_ITERABLE_COROUTINE = 0x0100
_CO_ASYNC_GENERATOR = 0x0200
_COROUTINE_FLAGS = _CO_COROUTINE | _CO_ITERABLE_COROUTINE | _CO_ASYNC_GENERATOR

DEFAULT_MAX_REPORTS = 4   # reports while one callback runs: at 1x, 2x, 4x, 8x the threshold
_WAIT_TIMEOUT = 0.1       # the watchdog looks at the loop's state (closed?) this often


@dataclasses.dataclass
class BlockingEvent:
    """One report of the blocking-call detector.

    ``kind`` is ``"blocking"`` (the callback is still running: ``duration`` so
    far) or ``"finished"`` (it returned: ``duration`` is its total).  The
    location fields describe where the loop thread was when it was caught
    (for "finished": at the first report)."""
    kind: str
    duration: float                 # seconds (±period: the watchdog samples every few ms)
    threshold: float
    report: int                     # 1, 2, ... for this callback; the "finished" event has the last + 1
    started: float                  # time.monotonic() estimate of when the callback started
    task_name: Optional[str]        # the loop's current task, if the callback is a task step
    task: Any                       # that asyncio.Task (or None)
    coroutine_chain: list[str]      # "qualname (file:line)", outermost first
    filename: Optional[str]         # where the loop thread is (innermost Python frame)
    lineno: Optional[int]
    function: Optional[str]
    stack: list[traceback.FrameSummary]  # the loop thread's stack, innermost last
    in_the_act: bool                # False: the loop thread kept the GIL until the callback ended
    loop: Any = dataclasses.field(repr=False, default=None)

    @property
    def location(self) -> str:
        if self.filename is None:
            return "(unknown: C code holding the GIL)"
        return f"{self.filename}:{self.lineno} in {self.function}"

    def format(self) -> str:
        task = f"task {self.task_name!r}" if self.task_name is not None else "no task (plain callback)"
        if self.kind == "finished":
            return (f"blocking callback returned after {self.duration:.3f} s "
                    f"(threshold {self.threshold:.3f} s; {task}; caught at {self.location})")
        lines = [f"a callback has been blocking the loop for {self.duration:.3f} s "
                 f"(threshold {self.threshold:.3f} s) and is still running; {task}"]
        if self.coroutine_chain:
            lines.append("  coroutine chain: " + " -> ".join(self.coroutine_chain))
        if not self.in_the_act:
            lines.append("  the callback returned before the watchdog got the GIL (C code holding it, or "
                         "other threads keeping the loop thread from it): no stack could be taken while it ran")
        else:
            lines.append(f"  now at {self.location}")
            lines.append("  loop thread stack (most recent call last):")
            lines.extend("  " + line.rstrip("\n") for line in traceback.format_list(self.stack))
        return "\n".join(lines)


# ---- blocking sites, for the --stats summary --------------------------------
_sites: dict[str, list[float]] = {}   # location -> [callbacks, total seconds]
_sites_lock = threading.Lock()


def _note_site(location: str, seconds: float) -> None:
    with _sites_lock:
        entry = _sites.setdefault(location, [0, 0.0])
        entry[0] += 1
        entry[1] += seconds


def _current_task(loop: Any) -> Any:
    current = getattr(asyncio.tasks, "_current_tasks", None)
    if isinstance(current, dict):
        return current.get(loop)
    return None


def _chain_from_frames(frame: Any) -> list[str]:
    """Coroutine frames on the loop thread's stack, outermost first: the chain
    of a task step that is running (cr_await is only set while suspended)."""
    chain = []
    while frame is not None:
        code = frame.f_code
        if code.co_flags & _COROUTINE_FLAGS:
            chain.append(f"{getattr(code, 'co_qualname', code.co_name)} ({code.co_filename}:{frame.f_lineno})")
        frame = frame.f_back
    chain.reverse()
    return chain


def _chain_from_coro(coro: Any) -> list[str]:
    """A suspended coroutine's await chain (cr_await / gi_yieldfrom)."""
    chain = []
    for _ in range(200):
        if coro is None:
            break
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None) or getattr(coro, "ag_frame", None)
        name = getattr(coro, "__qualname__", type(coro).__name__)
        chain.append(f"{name} ({frame.f_code.co_filename}:{frame.f_lineno})" if frame is not None else name)
        coro = (getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
                or getattr(coro, "ag_await", None))
    return chain


def _check_threshold(threshold: Any) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise TypeError(f"threshold must be a number of seconds, not {type(threshold).__name__}")
    value = float(threshold)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"threshold must be a positive number of seconds, not {threshold!r}")
    return value


_RUN_FOREVER_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "loop.py")


def _callback_stack(frame: Any) -> list[traceback.FrameSummary]:
    """The loop thread's stack from the callback down (the frames above
    Loop.run_forever are whoever started the loop: left out), with each
    frame's source line.

    Nothing here may release the GIL: the loop thread, CPU-bound in Python,
    would take it back for a whole switch interval before the report is out.
    traceback.StackSummary.extract() calls linecache.checkcache() (os.stat)
    and linecache reads files with open()/read(), all of which release it;
    so the frames are walked here and source lines come from linecache's
    cache or from _source_lines (read in C holding the GIL)."""
    frames = []
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back
    frames.reverse()
    for index in range(len(frames) - 1, -1, -1):
        code = frames[index].f_code
        if code.co_name == "run_forever" and code.co_filename == _RUN_FOREVER_FILE:
            frames = frames[index + 1:]
            break
    stack = []
    for frame in frames:
        code, lineno = frame.f_code, frame.f_lineno
        stack.append(traceback.FrameSummary(code.co_filename, lineno, code.co_name, lookup_line=False,
                                            line=_source_line(code.co_filename, lineno)))
    return stack


# filename -> its lines, read by the watchdog (a few files: where loops block)
_source_cache: dict[str, Optional[list[str]]] = {}


def _source_line(filename: str, lineno: Optional[int]) -> str:
    if not lineno:
        return ""
    cached = linecache.cache.get(filename)
    if cached is not None and len(cached) != 1:
        lines: Optional[list[str]] = cached[2]
    else:
        if filename not in _source_cache:
            if len(_source_cache) >= 256:
                _source_cache.clear()
            data = _loop.LoopCore._read_source(filename) if not filename.startswith("<") else None
            _source_cache[filename] = _decode_source(data) if data is not None else None
        lines = _source_cache[filename]
    if lines is None or not 0 < lineno <= len(lines):
        return ""
    return lines[lineno - 1].strip()


def _decode_source(data: bytes) -> Optional[list[str]]:
    try:
        encoding = tokenize.detect_encoding(io.BytesIO(data).readline)[0]
        return data.decode(encoding, "replace").splitlines()
    except (SyntaxError, LookupError):
        return None


class BlockingWatch:
    """A running blocking-call detector on one loop.  ``stop()`` (or leaving a
    ``with`` block) stops it and joins its thread; closing the loop stops it
    too.  One per loop: starting another replaces this one."""

    def __init__(self, loop: Any, threshold: float, callback: Optional[Callable[[BlockingEvent], Any]],
                 max_reports: int = DEFAULT_MAX_REPORTS) -> None:
        if not hasattr(loop, "_watch_wait"):
            raise TypeError(f"watch_blocking() needs a pyasync_c loop, not {type(loop).__name__}")
        threshold = _check_threshold(threshold)
        if callback is not None and not callable(callback):
            raise TypeError("callback must be callable or None")
        if max_reports < 1:
            raise ValueError("max_reports must be >= 1")
        self.threshold = threshold
        self.callback = callback
        self.max_reports = int(max_reports)
        # Sampling period: the start of a block is known to within it.
        self.period = min(max(threshold / 20, 0.0005), 0.005)
        self._loop_ref = weakref.ref(loop)
        # The thread waits on the pulse, never on the loop: it must not keep an
        # abandoned loop alive (the pulse's wait returns "stop" once it is gone).
        self._pulse = loop._watch_pulse()
        self._pid = os.getpid()
        self._stopped = False
        self._token = loop._watch_token(True)  # a new token stops any earlier watchdog of this loop
        previous = _watches.get(loop)
        if previous is not None:
            previous._stopped = True
        _watches[loop] = self
        self._thread = threading.Thread(target=self._run, name="pyasync_c-blocking-watchdog", daemon=True)
        self._thread.start()

    @property
    def active(self) -> bool:
        return not self._stopped and self._thread.is_alive() and os.getpid() == self._pid

    def stop(self) -> None:
        """Stop watching and join the watchdog thread (idempotent).  A callback
        being reported that has returned meanwhile still gets its "finished"
        event."""
        already = self._stopped
        self._stopped = True
        if os.getpid() != self._pid:
            return  # a fork child: the thread does not exist here
        loop = self._loop_ref()
        if loop is not None and not already and loop._watch_token(False) == self._token:
            loop._watch_token(True)
        if loop is not None and _watches.get(loop) is self:
            del _watches[loop]
        if threading.current_thread() is not self._thread and self._thread.is_alive():
            self._thread.join()

    def __enter__(self) -> BlockingWatch:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<BlockingWatch threshold={self.threshold} active={self.active}>"

    # ---- the watchdog thread ----
    def _run(self) -> None:
        beat, since, until, reports = -1, 0.0, 0.0, 0
        first: Optional[BlockingEvent] = None
        while not self._stopped:
            loop = self._loop_ref()
            if loop is None or loop.is_closed():
                break
            del loop  # no strong reference while waiting (during a stall `first` holds one)
            result = self._pulse.wait(self._token, self.period, _WAIT_TIMEOUT, self.threshold, beat, since, until)
            kind = result[0]
            if kind == "stop":
                break
            if kind == "timeout":
                continue
            loop = self._loop_ref()
            if loop is None:
                break
            if kind == "stall":
                beat, since, reports = result[1], result[2], 1
                first = self._capture(loop, beat, since, reports)
                self._emit(first)
                until = since + self.threshold * 2 if reports < self.max_reports else math.inf
            elif kind == "still":
                reports += 1
                self._emit(self._capture(loop, beat, since, reports))
                until = since + self.threshold * (2 ** reports) if reports < self.max_reports else math.inf
            elif kind == "end":
                assert first is not None
                duration = result[1] - since
                _note_site(first.location, duration)
                self._emit(dataclasses.replace(first, kind="finished", duration=duration, report=reports + 1))
                beat, first = -1, None
            del loop
        self._stopped = True

    def _capture(self, loop: Any, beat: int, since: float, report: int) -> BlockingEvent:
        now = _monotonic()
        running, idle, current = loop._watch_state()
        in_the_act = bool(running and not idle and current == beat)
        frame = sys._current_frames().get(loop._thread_id) if in_the_act else None
        task = _current_task(loop) if in_the_act else None
        stack = _callback_stack(frame) if frame is not None else []
        chain = _chain_from_frames(frame) if frame is not None else []
        if not chain and task is not None:
            chain = _chain_from_coro(task.get_coro())
        innermost = stack[-1] if stack else None
        return BlockingEvent(
            kind="blocking", duration=now - since, threshold=self.threshold, report=report,
            started=since, task_name=task.get_name() if task is not None else None, task=task,
            coroutine_chain=chain, filename=innermost.filename if innermost else None,
            lineno=innermost.lineno if innermost else None, function=innermost.name if innermost else None,
            stack=stack, in_the_act=in_the_act, loop=loop)

    def _emit(self, event: BlockingEvent) -> None:
        if self.callback is None:
            logger.warning("%s", event.format())
            return
        try:
            self.callback(event)
        except Exception:
            logger.exception("pyasync_c: the blocking-call callback %r raised", self.callback)


def _monotonic() -> float:
    import time
    return time.monotonic()


# loop -> its BlockingWatch (weak keys: a watch never keeps its loop alive)
_watches: "weakref.WeakKeyDictionary[Any, BlockingWatch]" = weakref.WeakKeyDictionary()


class _GlobalWatch:
    """watch_blocking() with no loop and none running: every pyasync_c loop
    that starts running from now on gets a watchdog."""

    def __init__(self, threshold: float, callback: Any, max_reports: int) -> None:
        self.threshold, self.callback, self.max_reports = _check_threshold(threshold), callback, max_reports
        if callback is not None and not callable(callback):
            raise TypeError("callback must be callable or None")
        self._started: "weakref.WeakSet[BlockingWatch]" = weakref.WeakSet()
        self.active = True

    def _start_on(self, loop: Any) -> None:
        if loop not in _watches and not loop.is_closed():
            self._started.add(BlockingWatch(loop, self.threshold, self.callback, self.max_reports))

    def stop(self) -> None:
        global _global_watch
        self.active = False
        if _global_watch is self:
            _global_watch = None
        for watch in list(self._started):
            watch.stop()

    def __enter__(self) -> _GlobalWatch:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


_global_watch: Optional[_GlobalWatch] = None


def watch_blocking(threshold: float = 0.1, loop: Any = None,
                   callback: Optional[Callable[[BlockingEvent], Any]] = None, *,
                   max_reports: int = DEFAULT_MAX_REPORTS) -> Any:
    """Report any callback that holds ``loop`` for more than ``threshold``
    seconds, while it runs: where the loop thread is, the current task and its
    coroutine chain (logger ``"pyasync_c"``, WARNING; or ``callback(event)``,
    called in the watchdog thread, with a ``BlockingEvent``).  A callback that
    keeps blocking is reported again at 2x, 4x... the threshold
    (``max_reports`` in all), then once more when it returns, with its total.

    ``loop``: a pyasync_c loop; default the running one, or — called with no
    loop running — every pyasync_c loop that starts running afterwards.
    Returns an object whose ``stop()`` ends the watching (also a context
    manager).  Off in a fork() child until called again there."""
    global _global_watch
    if loop is None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            if _global_watch is not None:
                _global_watch.stop()
            _global_watch = _GlobalWatch(threshold, callback, max_reports)
            return _global_watch
    return BlockingWatch(loop, threshold, callback, max_reports)


# ---- periodic stats line ----------------------------------------------------

def _quantile(buckets: list[int], q: float, upper: float) -> float:
    return min(_loop.LoopCore._histogram_quantile(buckets, q), upper)


def _window(previous: Optional[dict[str, Any]], current: dict[str, Any]) -> dict[str, Any]:
    """The stats of the interval between two snapshots of one loop."""
    if previous is None:
        return current
    window = dict(current)
    for key, value in current.items():
        if key.endswith("_total") and key in previous:
            window[key] = value - previous[key]
    for name in ("callback_lag", "timer_lateness"):
        buckets = [a - b for a, b in zip(current[f"{name}_buckets"], previous[f"{name}_buckets"])]
        window[f"{name}_buckets"] = buckets
        if current[f"{name}_max_seconds"] > previous[f"{name}_max_seconds"]:
            upper = current[f"{name}_max_seconds"]  # a new maximum: exact
        else:  # the highest bucket used in the window, at most the overall maximum
            used = [i for i, count in enumerate(buckets) if count]
            upper = min(_loop.LoopCore._histogram_quantile(buckets, 1.0) if used else 0.0,
                        current[f"{name}_max_seconds"])
        window[f"{name}_max_seconds"] = upper
        window[f"{name}_p50_seconds"] = _quantile(buckets, 0.5, upper)
        window[f"{name}_p99_seconds"] = _quantile(buckets, 0.99, upper)
    busy, poll = window["busy_seconds_total"], window["poll_seconds_total"]
    window["busy_ratio"] = busy / (busy + poll) if busy + poll > 0 else 0.0
    window["window_seconds"] = current["window_seconds"] - previous["window_seconds"]
    return window


def _seconds(value: float) -> str:
    if value >= 1:
        return f"{value:.2f}s"
    if value >= 1e-3:
        return f"{value * 1e3:.1f}ms"
    return f"{value * 1e6:.0f}us"


def _bytes(value: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1000
    return f"{value}"


def format_stats_line(stats: dict[str, Any]) -> str:
    """One line: the figures an operator looks at first."""
    return (f"{stats['iterations_total']} iterations, {stats['callbacks_total']} callbacks, "
            f"busy {stats['busy_ratio'] * 100:.1f}%, "
            f"lag p50 {_seconds(stats['callback_lag_p50_seconds'])} p99 {_seconds(stats['callback_lag_p99_seconds'])} "
            f"max {_seconds(stats['callback_lag_max_seconds'])}, "
            f"timers late p99 {_seconds(stats['timer_lateness_p99_seconds'])}, "
            f"transports {stats['transports_open']}, servers {stats['servers_open']}, "
            f"in {_bytes(stats['bytes_received_total'])} out {_bytes(stats['bytes_sent_total'])}, "
            f"blocking {stats['blocking_events_total']}")


class StatsLogger:
    """log_stats_every()'s periodic timer on one loop; ``cancel()`` stops it."""

    def __init__(self, loop: Any, seconds: float) -> None:
        seconds = float(seconds)
        if not (seconds > 0 and math.isfinite(seconds)):
            raise ValueError(f"the interval must be a positive number of seconds, not {seconds!r}")
        self.seconds = seconds
        self._loop = loop
        self._previous: Optional[dict[str, Any]] = loop.stats()
        self._handle = loop.call_later(seconds, self._tick)

    def _tick(self) -> None:
        current = self._loop.stats()
        window = _window(self._previous, current)
        self._previous = current
        logger.info("pyasync_c loop stats (last %.1fs): %s", window["window_seconds"], format_stats_line(window))
        self._handle = self._loop.call_later(self.seconds, self._tick)

    def cancel(self) -> None:
        self._handle.cancel()


def log_stats_every(seconds: float, loop: Any = None) -> StatsLogger:
    """Log one line of loop stats (logger ``"pyasync_c"``, INFO) every
    ``seconds`` on ``loop`` (default: the running loop), for the interval
    just ended.  Runs as a timer on the loop itself (counted in its stats).
    Returns an object whose ``cancel()`` stops it."""
    if loop is None:
        loop = asyncio.get_running_loop()
    if not hasattr(loop, "stats"):
        raise TypeError(f"log_stats_every() needs a pyasync_c loop, not {type(loop).__name__}")
    return StatsLogger(loop, seconds)


# ---- the run hook: environment variables and --stats ------------------------

_env_seen: "weakref.WeakSet[Any]" = weakref.WeakSet()
_summary_loops: Optional[list[Any]] = None   # --stats: every loop that ran (kept for the summary)
_forked_child = False


def _env_seconds(name: str) -> Optional[float]:
    text = os.environ.get(name)
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        logger.warning("pyasync_c: ignoring %s=%r (expected a positive number of seconds)", name, text)
        return None
    return value


def _on_loop_run(loop: Any) -> None:
    """Called by the C loop each time _run starts."""
    if _global_watch is not None and loop not in _watches:
        _global_watch._start_on(loop)
    if _summary_loops is not None and loop not in _summary_loops:
        _summary_loops.append(loop)
    if _forked_child or loop in _env_seen:
        return
    _env_seen.add(loop)
    blocking = _env_seconds("PYASYNC_C_BLOCKING")
    if blocking is not None and loop not in _watches:
        BlockingWatch(loop, blocking, None)
    interval = _env_seconds("PYASYNC_C_STATS_INTERVAL")
    if interval is not None:
        StatsLogger(loop, interval)


def _after_fork_in_child() -> None:
    """The watchdog threads do not exist in a fork() child: mark them stopped;
    the detector stays off there (environment variable included) until
    watch_blocking() is called again."""
    global _forked_child, _global_watch
    _forked_child = True
    for watch in list(_watches.values()):
        watch._stopped = True
    _watches.clear()
    if _global_watch is not None:
        _global_watch.active = False
        _global_watch = None


_loop.LoopCore._set_run_hook(_on_loop_run)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# ---- python -m pyasync_c --stats / --blocking -------------------------------

def _merge(snapshots: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for key in snapshots[0]:
        values = [s[key] for s in snapshots]
        if key.endswith("_buckets"):
            merged[key] = [sum(column) for column in zip(*values)]
        elif key.endswith("_max_seconds") or key == "longest_callback_seconds":
            merged[key] = max(values)
        elif isinstance(values[0], (int, float)) and not isinstance(values[0], bool):
            merged[key] = sum(values)
    for name in ("callback_lag", "timer_lateness"):
        upper = merged[f"{name}_max_seconds"]
        merged[f"{name}_p50_seconds"] = _quantile(merged[f"{name}_buckets"], 0.5, upper)
        merged[f"{name}_p99_seconds"] = _quantile(merged[f"{name}_buckets"], 0.99, upper)
    busy, poll = merged["busy_seconds_total"], merged["poll_seconds_total"]
    merged["busy_ratio"] = busy / (busy + poll) if busy + poll > 0 else 0.0
    return merged


def format_summary(loops: list[Any], top: int = 5) -> str:
    if not loops:
        return "pyasync_c stats: no pyasync_c loop ran"
    s = _merge([loop.stats() for loop in loops])
    lines = [
        f"pyasync_c stats ({len(loops)} loop{'s' if len(loops) != 1 else ''}): "
        f"{s['iterations_total']} iterations, {s['callbacks_total']} callbacks, "
        f"{s['io_events_total']} I/O events; busy {s['busy_ratio'] * 100:.1f}% of "
        f"{s['busy_seconds_total'] + s['poll_seconds_total']:.3f}s running",
        f"  callback lag p50 {_seconds(s['callback_lag_p50_seconds'])}, p99 {_seconds(s['callback_lag_p99_seconds'])}, "
        f"max {_seconds(s['callback_lag_max_seconds'])}; timer lateness p50 {_seconds(s['timer_lateness_p50_seconds'])}, "
        f"p99 {_seconds(s['timer_lateness_p99_seconds'])}, max {_seconds(s['timer_lateness_max_seconds'])}",
        f"  longest callback {_seconds(s['longest_callback_seconds'])}; timers {s['timers_scheduled_total']} scheduled, "
        f"{s['timers_fired_total']} fired, {s['timers_cancelled_total']} cancelled; "
        f"bytes in {_bytes(s['bytes_received_total'])}, out {_bytes(s['bytes_sent_total'])}",
    ]
    with _sites_lock:
        sites = sorted(_sites.items(), key=lambda item: -item[1][1])
    if sites:
        lines.append(f"  blocking callbacks: {sum(int(v[0]) for _, v in sites)}, "
                     f"{sum(v[1] for _, v in sites):.3f}s in all; top sites by time blocked:")
        for location, (count, total) in sites[:top]:
            lines.append(f"    {total:8.3f}s  {int(count):4d}x  {location}")
    else:
        lines.append(f"  blocking callbacks: none caught"
                     + (f" (threshold {_cli_threshold}s)" if _cli_threshold else ""))
    return "\n".join(lines)


_cli_threshold: Optional[float] = None


def _print_summary() -> None:
    if _summary_loops is not None and not _forked_child:
        for watch in list(_watches.values()):
            watch.stop()  # their last "finished" events count in the summary
        print(format_summary(_summary_loops), file=sys.stderr)


def take_cli_options(argv: list[str]) -> list[str]:
    """``python -m pyasync_c``: removes and applies ``--stats`` and
    ``--blocking SECONDS`` among the options before the script (or -m)."""
    global _summary_loops, _cli_threshold
    rest = list(argv)
    kept: list[str] = []
    stats = False
    blocking: Optional[float] = None
    # stop at the target: -m/-c (also -mMODULE, -cCODE), - (stdin), --
    while rest and rest[0].startswith("-") and rest[0] not in ("-", "--") \
            and rest[0][:2] not in ("-m", "-c"):
        option = rest.pop(0)
        if option == "--stats":
            stats = True
        elif option == "--blocking" or option.startswith("--blocking="):
            text = option.partition("=")[2] if "=" in option else (rest.pop(0) if rest else "")
            try:
                blocking = float(text)
            except ValueError:
                blocking = math.nan
            if not (blocking > 0 and math.isfinite(blocking)):
                sys.exit(f"python -m pyasync_c: --blocking needs a positive number of seconds, not {text!r}")
        else:
            kept.append(option)
    if blocking is not None:
        watch_blocking(blocking)
    if stats:
        _summary_loops = []
        _cli_threshold = blocking if blocking is not None else 0.1
        if blocking is None:  # collect blocking sites for the summary without logging them
            watch_blocking(_cli_threshold, callback=lambda event: None)
        atexit.register(_print_summary)
    return kept + rest
