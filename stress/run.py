"""Run the stress scenarios on pyasync_c and, side by side, on asyncio's own loop and
uvloop (when installed); one table per scenario.  Each (scenario, loop) runs in its
own process (stress/child.py) with a hard timeout; the process group is killed
when it expires.  Outcomes:

    PASS     every check held
    FAIL     a check failed (data, fds, RSS, an exception-handler call...): see below the table
    CRASH    the process died of a signal
    HANG     the hard timeout expired
    ERROR    the process exited without a result (see its stderr tail)
    STRAY    it passed, but left processes behind in its process group

Exit status 1 if any loop in --gate (default: pyasync_c and asyncio) did not pass:
pyasync_c is the loop under test; asyncio is the reference (a check failing there is
wrong).  uvloop is shown for comparison only.

    python stress/run.py [--short] [--loops pyasync_c,asyncio] [--only conns,udp]
    python stress/run.py --only soak --loops pyasync_c --soak-seconds 600
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))  # `stress` itself; pyasync_c is imported by the children only

from stress.harness import LOOP_NAMES, Scenario  # noqa: E402
from stress.scenarios import SCENARIOS  # noqa: E402


@dataclasses.dataclass
class Outcome:
    loop: str
    outcome: str
    seconds: float
    result: dict[str, Any] | None = None
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.outcome in ("PASS", "SKIP")


def child_env() -> dict[str, str]:
    """The children import pyasync_c from PYTHONPATH first (e.g. build/asan), then
    from the repository (the in-place build), and find `stress` there."""
    env = dict(os.environ)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths + [str(REPO)])
    return env


def stderr_tail(path: Path, lines: int = 12) -> str:
    text = path.read_text(errors="replace").strip().splitlines()
    return "\n".join(text[-lines:])


def run_one(scenario: Scenario, loop: str, args: argparse.Namespace, tmp: Path) -> Outcome:
    if loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
        return Outcome(loop, "SKIP", 0.0, detail="uvloop not installed")
    out = tmp / f"{scenario.name}-{loop}.json"
    err = tmp / f"{scenario.name}-{loop}.stderr"
    cmd = [sys.executable, "-P", "-m", "stress.child", scenario.name, loop, "--out", str(out),
           "--soak-seconds", str(args.soak_seconds)]
    cmd += ["--short"] if args.short else []
    cmd += ["--no-rss"] if args.no_rss else []
    cmd += ["--rounds", str(args.rounds)] if args.rounds else []
    timeout = scenario.timeout * (0.5 if args.short else 1.0) * args.timeout_scale
    if scenario.name == "soak":
        timeout = (args.soak_seconds + 120) * args.timeout_scale
    started = time.monotonic()
    with open(err, "wb") as stderr:
        # stdout is passed through (the soak prints its series there); a new
        # session, so a hang's whole process group (forks, subprocesses) is killed
        proc = subprocess.Popen(cmd, cwd=REPO, env=child_env(), stderr=stderr,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGUSR1)  # stack dump to stderr (faulthandler)
            time.sleep(1)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return Outcome(loop, "HANG", time.monotonic() - started,
                           detail=f"killed after the {timeout:.0f}s timeout\n"
                           + stderr_tail(err, 30))
    seconds = time.monotonic() - started
    stray = ""
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # anything of its group still alive is stray
        stray = "processes of its group were still running after it exited (killed)"
    except ProcessLookupError:
        pass
    if rc < 0:
        return Outcome(loop, "CRASH", seconds,
                       detail=f"killed by {signal.Signals(-rc).name}\n" + stderr_tail(err))
    if rc != 0 or not out.exists():
        return Outcome(loop, "ERROR", seconds, detail=f"exit status {rc}\n" + stderr_tail(err))
    result = json.loads(out.read_text())
    if args.expect_build and args.expect_build not in (result.get("pyasync_c_file") or ""):
        return Outcome(loop, "ERROR", seconds, result,
                       f"pyasync_c imported from {result.get('pyasync_c_file')}, "
                       f"not from {args.expect_build}")
    detail = "\n".join(result["failures"])
    if result["failures"] and err.stat().st_size:
        detail += "\nstderr (this process and any child it forked):\n" + stderr_tail(err, 8)
    outcome = Outcome(loop, result["outcome"], seconds, result, detail)
    if stray and outcome.outcome == "PASS":
        outcome.outcome, outcome.detail = "STRAY", stray
    return outcome


def mib(kib: int) -> str:
    return f"{kib / 1024:.0f}"


def print_table(scenario: Scenario, outcomes: list[Outcome]) -> None:
    print(f"\n== {scenario.name}: {scenario.title}")
    header = (f"{'loop':<10} {'outcome':<8} {'time':>7}  {'fds start->end':<15}"
              f"{'RSS MiB start/peak/end':<24}{'RSS MiB per round: after/peak'}")
    print(header)
    print("-" * len(header))
    for o in outcomes:
        r = o.result
        if r is None:
            print(f"{o.loop:<10} {o.outcome:<8} {o.seconds:>6.1f}s")
            continue
        fds = f"{r['fds_start']}->{r['fds_end']}"
        rss = f"{mib(r['rss_start_kib'])}/{mib(r['rss_peak_kib'])}/{mib(r['rss_end_kib'])}"
        peaks = r["rss_round_peaks_kib"] or [None] * len(r["rss_rounds_kib"])
        rounds = " ".join(f"{k / 1024:.0f}" + ("" if p is None else f"/{p / 1024:.0f}")
                          for k, p in zip(r["rss_rounds_kib"], peaks))
        print(f"{o.loop:<10} {o.outcome:<8} {o.seconds:>6.1f}s  {fds:<15}{rss:<24}{rounds}")
    for o in outcomes:
        for note in (o.result or {}).get("notes", []):
            print(f"  {o.loop}: {note}")
    for o in outcomes:
        if o.detail:
            print(f"  {o.loop} {o.outcome}: " + o.detail.replace("\n", "\n    "))
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stress/run.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", action="store_true", help="CI sizes (well under 2 minutes)")
    parser.add_argument("--loops", default=",".join(LOOP_NAMES),
                        help="comma-separated, of: " + ", ".join(LOOP_NAMES))
    parser.add_argument("--gate", default="pyasync_c,asyncio",
                        help="loops whose failure makes the exit status 1")
    parser.add_argument("--only", default="", help="comma-separated scenario names")
    parser.add_argument("--soak-seconds", type=float, default=600.0)
    parser.add_argument("--rounds", type=int, default=0,
                        help="rounds per scenario (default: each scenario's own; 3+ for RSS checks)")
    parser.add_argument("--timeout-scale", type=float, default=1.0,
                        help="multiply every hard timeout (e.g. under ASan)")
    parser.add_argument("--no-rss", action="store_true",
                        help="no RSS checks (ASan's quarantine keeps freed memory resident)")
    parser.add_argument("--expect-build", default="",
                        help="fail unless the children's pyasync_c path contains this")
    args = parser.parse_args(argv)
    loops = [name for name in args.loops.split(",") if name]
    unknown = set(loops) - set(LOOP_NAMES)
    if unknown:
        parser.error(f"unknown loop(s): {', '.join(sorted(unknown))}")
    if args.only:
        names = args.only.split(",")
        missing = [n for n in names if n not in SCENARIOS]
        if missing:
            parser.error(f"unknown scenario(s): {', '.join(missing)}; "
                         f"known: {', '.join(SCENARIOS)}")
        chosen = [SCENARIOS[n] for n in names]
    else:
        chosen = [s for s in SCENARIOS.values() if s.default]
    gate = set(args.gate.split(","))
    mode = "short" if args.short else "full"
    print(f"stress ({mode}) on {', '.join(loops)} with {sys.executable} "
          f"{sys.version.split()[0]}; scenarios: {', '.join(s.name for s in chosen)}")
    failed: list[str] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pyasync_c-stress-") as tmp:
        for scenario in chosen:
            outcomes = [run_one(scenario, loop, args, Path(tmp)) for loop in loops]
            print_table(scenario, outcomes)
            failed += [f"{scenario.name}/{o.loop}: {o.outcome}"
                       for o in outcomes if o.loop in gate and not o.passed]
            if scenario is chosen[0]:
                for o in outcomes:
                    if o.result and o.loop == "pyasync_c":
                        print(f"  (pyasync_c from {o.result['pyasync_c_file']})")
    print(f"\nstress ({mode}): {len(chosen)} scenario(s) in {time.monotonic() - started:.0f}s; "
          + (f"FAILED: {'; '.join(failed)}" if failed else "all gated loops passed"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
