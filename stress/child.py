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
import gc
import json
import os
import sys
import time
import traceback
from typing import Any

from .harness import Context, Failure, memory_kib, open_fds, raise_nofile_limit
from .scenarios import SCENARIOS

# "Keeps growing": each round after the warm-up round adds more than
# max(RSS_STEP_KIB, RSS_STEP_SHARE x the scenario's working set).
RSS_STEP_KIB = 1024
RSS_STEP_SHARE = 0.10


def rss_keeps_growing(after_rounds: list[int], working_set: int) -> str | None:
    """Why the RSS series (KiB after each round) counts as growing, or None.

    The first round is the warm-up: its own growth is not counted.  Needs 3+
    rounds; 4 (the default) gives 3 steps after the warm-up, so that a plateau
    still being filled (a queue or freelist reaching its high-water mark) is not
    taken for a leak, which grows every round.  The tolerance grows with the
    working set (peak minus starting RSS): with ~10,000 connections per round the
    allocator's fragmentation alone creeps up a few MiB per round for several
    rounds, on asyncio's loop too; smaller, steady leaks are the soak's job.
    """
    tolerance = max(RSS_STEP_KIB, int(RSS_STEP_SHARE * working_set))
    steps = [b - a for a, b in zip(after_rounds, after_rounds[1:])]
    if steps and all(step > tolerance for step in steps):
        return (f"RSS grew in every round after the first: "
                f"{', '.join(f'+{s / 1024:.1f}' for s in steps)} MiB "
                f"(tolerance {tolerance / 1024:.1f} MiB per round)")
    return None


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
    started = time.monotonic()
    try:
        for ctx.round in range(rounds or scenario.rounds):
            ctx.run_round(scenario.main)
            gc.collect()
            rss_rounds.append(memory_kib()[0])
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
    rss_end, rss_peak = memory_kib()
    if ctx.rss_checks and len(rss_rounds) >= 3 and not failures:
        growing = rss_keeps_growing(rss_rounds, rss_peak - rss_start)
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
