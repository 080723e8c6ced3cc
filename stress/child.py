"""One scenario on one loop kind, in its own process (started by run.py):

    python -P -m stress.child SCENARIO LOOP --out RESULT.json [--short] [--no-rss]

The bookkeeping every scenario shares: the RLIMIT_NOFILE soft limit raised to the
hard limit; open fds counted before the first round and after the last (after
closing everything and a gc pass): any new fd fails; RSS after each round: growth
in every round past the first (warm-up) beyond a tolerance fails (rss_keeps_growing).  The result
goes to RESULT.json; a crash or a hang is seen by run.py from outside.
"""
from __future__ import annotations

import argparse
import asyncio
import faulthandler
import gc
import json
import os
import signal
import sys
import time
import traceback
from typing import Any

from .harness import Context, Failure, memory_kib, open_fds, raise_nofile_limit
from .scenarios import SCENARIOS

# "Keeps growing": after the warm-up round, every round adds more than this both
# to the RSS left after it and to its own peak.
RSS_STEP_KIB = 1024


def rss_keeps_growing(after: list[int], peaks: list[int] | None) -> str | None:
    """Why the RSS series (KiB, after each round and each round's peak) counts as
    growing, or None.

    The first round is the warm-up: its own growth is not counted.  Needs 3+
    rounds; 4 (the default) gives 3 steps after the warm-up, so a plateau still
    being filled (a queue or freelist reaching its high-water mark) is not taken
    for a leak.  Allocator fragmentation makes the RSS left after a round creep
    towards the round's peak for several rounds (asyncio's loop with thousands of
    connections: +1-4 MiB a round), while the peak itself stays put; a leak raises
    both.  So both must grow, when per-round peaks are known (/proc/self/clear_refs).
    Leaks below RSS_STEP_KIB a round are the soak's job.
    """
    def steps(series: list[int]) -> list[int]:
        return [b - a for a, b in zip(series, series[1:])]
    grew = steps(after)
    if not grew or not all(step > RSS_STEP_KIB for step in grew):
        return None
    if peaks is not None and not all(step > RSS_STEP_KIB for step in steps(peaks)):
        return None
    shown = ", ".join(f"+{s / 1024:.1f}" for s in grew)
    peak_note = ("" if peaks is None else
                 "; peaks " + ", ".join(f"+{s / 1024:.1f}" for s in steps(peaks)))
    return f"RSS grew in every round after the first: {shown} MiB{peak_note}"


def reset_peak() -> bool:
    """Reset this process's VmHWM to its current RSS; False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def warm_up(ctx: Context) -> None:
    """Create, run and close one loop before counting fds: libuv keeps a process-wide
    pipe from its first loop on (signal handling), which is not a leak."""
    loop = ctx.factory()
    try:
        loop.run_until_complete(asyncio.sleep(0))
    finally:
        loop.close()


def run_scenario(name: str, ctx: Context, rounds: int = 0) -> dict[str, Any]:
    scenario = SCENARIOS[name]
    ctx.metrics["nofile"] = raise_nofile_limit()
    main_pid = os.getpid()
    failures: list[str] = []
    warm_up(ctx)
    gc.collect()
    fds_start = open_fds()
    rss_start, _ = memory_kib()
    rss_rounds: list[int] = []
    peak_rounds: list[int] | None = [] if reset_peak() else None
    rss_peak = rss_start
    started = time.monotonic()
    try:
        for ctx.round in range(rounds or scenario.rounds):
            if peak_rounds is not None:
                reset_peak()
            ctx.run_round(scenario.main)
            gc.collect()
            rss, peak = memory_kib()
            rss_rounds.append(rss)
            rss_peak = max(rss_peak, peak)
            if peak_rounds is not None:
                peak_rounds.append(peak)
    except BaseException as exc:
        if os.getpid() != main_pid:
            raise  # a forked child leaving through the scenario (e.g. sys.exit): let it exit
        if isinstance(exc, Failure):
            failures.append(f"round {ctx.round + 1}: {exc}")
        else:
            tb = traceback.format_exception(exc)
            failures.append(f"round {ctx.round + 1}: {type(exc).__name__}: {exc}\n"
                            + "".join(tb[-6:]))
    elapsed = time.monotonic() - started
    gc.collect()
    fds_end = open_fds()
    leaked = {fd: target for fd, target in fds_end.items() if fds_start.get(fd) != target}
    if leaked:
        shown = ", ".join(f"{fd}->{target}" for fd, target in sorted(leaked.items())[:8])
        failures.append(f"{len(leaked)} fd(s) left open: {shown}")
    rss_end, peak = memory_kib()
    rss_peak = max(rss_peak, peak)  # the peak of a failed round too
    if ctx.rss_checks and len(rss_rounds) >= 3 and not failures:
        growing = rss_keeps_growing(rss_rounds, peak_rounds)
        if growing:
            failures.append(growing)
    module = sys.modules.get("pyasync_c")
    return {
        "outcome": "FAIL" if failures else "PASS",
        "failures": failures,
        "notes": ctx.notes,
        "metrics": ctx.metrics,
        "seconds": elapsed,
        "fds_start": len(fds_start),
        "fds_end": len(fds_end),
        "rss_start_kib": rss_start,
        "rss_peak_kib": rss_peak,
        "rss_end_kib": rss_end,
        "rss_rounds_kib": rss_rounds,
        "rss_round_peaks_kib": peak_rounds,
        "pyasync_c_file": getattr(module, "__file__", None),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stress.child")
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("loop")
    parser.add_argument("--out", required=True)
    parser.add_argument("--short", action="store_true")
    parser.add_argument("--no-rss", action="store_true")
    parser.add_argument("--soak-seconds", type=float, default=600.0)
    parser.add_argument("--rounds", type=int, default=0, help="instead of the scenario's own")
    args = parser.parse_args(argv)
    # run.py sends SIGUSR1 before killing a hung process: its stacks go to stderr.
    # (A signal handler, not dump_traceback_later: that one's watchdog thread makes
    # a fork()ed child hang on its lock.)
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    ctx = Context(loop_name=args.loop, short=args.short, rss_checks=not args.no_rss,
                  soak_seconds=args.soak_seconds)
    result = run_scenario(args.scenario, ctx, args.rounds)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as out:
        json.dump(result, out)
    os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
