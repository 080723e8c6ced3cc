"""Run the pyasync_c benchmark suite and report it.

    python3 benchmarks/run.py [--quick] [--only NAME[,NAME]] [--repeat N]
                              [--loops stdlib,uvloop,pyasync_c,libuv] [--out DIR]

Loop workloads run on the stdlib, uvloop and pyasync_c loops (asyncio's
primitives); primitive workloads run asyncio's and pyasync_c's primitives on
the stdlib, pyasync_c and uvloop loops. Every cell is a fresh `child.py` process: one
warm-up at n/10, then N timed repeats; the figure kept is the best of N
(the median is in results.json). Network workloads (net_*) run echo servers
on the three loops and a raw libuv C server ("libuv") under a C load driver,
one server and one client process per cell (net/runner.py). Writes
results.json, results.md and results.png to --out (default benchmarks/results/).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import LOOP_NAMES, REPO_ROOT, Workload, load_registry, summarize  # noqa: E402
from net import runner as net  # noqa: E402
from report import Cell, Table, render_chart, render_text, si  # noqa: E402

QUICK_FACTOR = 10
ALL_LOOPS = (*LOOP_NAMES, net.REFERENCE)  # libuv: the raw C server, network workloads only


def cells_of(wl: Workload, loops: list[str]) -> list[tuple[str, str]]:
    """(loop, prims) pairs a workload runs on."""
    if net.is_net(wl):
        return [(loop, "-") for loop in loops]
    if wl.group == "loop":  # plus pyasync_c as `python -m pyasync_c` runs code: C primitives installed
        return ([(loop, "stdlib") for loop in loops if loop in LOOP_NAMES]
                + [("pyasync_c", "installed")] * ("pyasync_c" in loops))
    # The primitives work on any loop: asyncio's and the C ones on each of the three.
    return [(loop, prims) for loop in loops if loop in LOOP_NAMES for prims in ("stdlib", "c")]


def run_child(wl: Workload, loop: str, prims: str, n: int, repeat: int, warmup: int,
              timeout: float) -> Cell:
    cmd = [sys.executable, str(HERE / "child.py"), wl.name, "--loop", loop, "--prims", prims,
           "--n", str(n), "--repeat", str(repeat), "--warmup", str(warmup)]
    base: Cell = {"workload": wl.name, "loop": loop, "prims": prims, "n": n, "unit": wl.unit}
    env = dict(os.environ, PYTHONHASHSEED="0")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                              cwd=REPO_ROOT)
    except subprocess.TimeoutExpired as exc:
        return {**base, "status": "timeout", "reason": f"no result after {timeout:g}s",
                "stderr": _tail(exc.stderr)}
    lines = proc.stdout.strip().splitlines()
    if lines:
        try:
            cell: Cell = json.loads(lines[-1])
            if proc.stderr.strip():
                cell["stderr"] = _tail(proc.stderr)
            return cell
        except json.JSONDecodeError:
            pass
    rc = proc.returncode
    why = f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exit status {rc}"
    return {**base, "status": "crash", "reason": f"child {why}, no result",
            "stderr": _tail(proc.stderr)}


def _tail(text: str | bytes | None, lines: int = 15) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return "\n".join((text or "").strip().splitlines()[-lines:])


def merge(old: Cell | None, new: Cell) -> Cell:
    """Fold a later round's result for the same cell into the earlier one:
    repeats are pooled; a failure in any round makes the cell fail."""
    if old is None or old["status"] != "ok":
        return old or new
    if old.get("group") in net.NET_GROUPS:
        return net.merge(old, new)
    if new["status"] != "ok":
        return new
    return {**old, **summarize(old["ops"] + new["ops"], old["seconds"] + new["seconds"])}


def describe(cell: Cell) -> str:
    if cell["status"] == "ok" and cell.get("group") in net.NET_GROUPS:
        return net.describe(cell)
    if cell["status"] == "ok":
        return (f"{si(cell['best'])} {cell['unit']}/s  (median {si(cell['median'])}, "
                f"spread {cell['spread']:.0%})")
    if cell["status"] == "unavailable":
        return f"n/a  ({cell['reason']})"
    return f"{cell['status'].upper()}  ({cell['reason']})"


def metadata(args: argparse.Namespace, cells: list[Cell], load_before: float) -> dict[str, Any]:
    def git() -> str:
        try:
            return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT,
                                           text=True, stderr=subprocess.DEVNULL).strip()
        except (OSError, subprocess.CalledProcessError):
            return "?"

    def cpu() -> str:
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} x{os.cpu_count()}"
        except OSError:
            pass
        return f"{platform.processor() or platform.machine()} x{os.cpu_count()}"

    origins = {c.get("origin", {}).get("pyasync_c") or c.get("origin", {}).get("pyasync_c._primitives")
               for c in cells} - {None}
    def shown(path: str) -> str:
        p = Path(path)
        return str(p.relative_to(REPO_ROOT)) + " (in-tree build)" if p.is_relative_to(REPO_ROOT) else path

    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu(),
        "git": git(),
        "quick": args.quick,
        "repeat": args.repeat * args.rounds,
        "rounds": args.rounds,
        "warmup": args.warmup,
        # 1-minute load average before and after: well above 0 means something
        # else competed for the cores during the run
        "loadavg": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "statistic": "best",
        "pyasync_c": ", ".join(sorted(shown(o) for o in origins)),
        **({"net": net.meta(QUICK_FACTOR, args.quick, args.warmup, args.conns)}
           if any(net.is_net(w) for w in args.workloads) else {}),
    }


def parse_args(registry: dict[str, Workload], argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help=f"sizes / {QUICK_FACTOR}, 3 repeats: a smoke run")
    ap.add_argument("--only", help="comma-separated workload names (see --list)")
    ap.add_argument("--loops", default=",".join(ALL_LOOPS),
                    help="comma-separated loops to run on (libuv: the raw C reference server, "
                         "network workloads only)")
    ap.add_argument("--conns", type=int,
                    help=f"concurrent connections of the network echo workloads (default {net.DEFAULT_CONNS})")
    ap.add_argument("--repeat", type=int, help="timed repeats per cell (default 5, 3 with --quick)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run the whole plan this many times, interleaved, pooling the repeats "
                         "(evens out bursts of background load across loops)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed warm-up runs at n/10 per cell")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds before a cell is killed")
    ap.add_argument("--out", type=Path, default=HERE / "results", help="output directory")
    ap.add_argument("--list", action="store_true", help="list the workloads and exit")
    args = ap.parse_args(argv)
    if args.repeat is None:
        args.repeat = 3 if args.quick else 5
    if args.repeat < 1 or args.rounds < 1:
        ap.error("--repeat and --rounds must be at least 1")
    names = args.only.split(",") if args.only else list(registry)
    unknown = [n for n in names if n not in registry]
    if unknown:
        ap.error(f"unknown workload(s) {', '.join(unknown)}; known: {', '.join(registry)}")
    args.workloads = [registry[n] for n in names]
    args.loop_list = [s for s in args.loops.split(",") if s]
    bad = [s for s in args.loop_list if s not in ALL_LOOPS]
    if bad:
        ap.error(f"unknown loop(s) {', '.join(bad)}; known: {', '.join(ALL_LOOPS)}")
    if args.conns is not None and args.conns < 1:
        ap.error("--conns must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    registry = load_registry()
    args = parse_args(registry, argv)
    if args.list:
        for wl in registry.values():
            per = "" if wl.group == "net_memory" else "/s"
            size = f"{wl.n:,} ms" if wl.group == "net" else f"{wl.n:,}"
            print(f"{wl.name:21} {wl.group:10} n={size:<9} {wl.unit}{per}  {wl.doc}")
        return 0

    plan = [(wl, loop, prims) for wl in args.workloads for loop, prims in cells_of(wl, args.loop_list)]
    results: dict[tuple[str, str, str], Cell] = {}
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    for rnd in range(1, args.rounds + 1):
        for i, (wl, loop, prims) in enumerate(plan, 1):
            key = (wl.name, loop, prims)
            if key in results and results[key]["status"] != "ok":
                continue  # unavailable or failing: once is enough
            n = max(1, wl.n // QUICK_FACTOR) if args.quick else wl.n
            tag = f"r{rnd} " if args.rounds > 1 else ""
            print(f"[{tag}{i:2}/{len(plan)}] {wl.name:20} {loop:9} prims={prims:6} n={n:<9,} ",
                  end="", flush=True)
            if net.is_net(wl):
                cell = net.run_cell(wl, loop, n, args.repeat, args.warmup, args.timeout, args.conns)
            else:
                cell = run_child(wl, loop, prims, n, args.repeat, args.warmup, args.timeout)
            cell["group"] = wl.group
            results[key] = merge(results.get(key), cell)
            print(describe(cell), flush=True)
    cells = list(results.values())
    print(f"({len(plan)} cells x {args.rounds} round(s) in {time.monotonic() - started:.0f}s)\n")

    meta = metadata(args, cells, load_before)
    table = Table(cells, args.workloads)
    print(render_text(table, markdown=False, meta=meta))
    for cell in table.problems():
        print(f"--- {cell['workload']} {cell['loop']} prims={cell['prims']}: {cell['status']}: "
              f"{cell['reason']}\n{cell.get('traceback') or cell.get('stderr', '')}")

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "cells": cells}, indent=1) + "\n")
    (args.out / "results.md").write_text(render_text(table, markdown=True, meta=meta))
    written = [args.out / "results.json", args.out / "results.md"]
    try:
        if render_chart(table, args.out / "results.png", meta):
            written.append(args.out / "results.png")
    except ImportError as exc:
        print(f"no chart: {exc} (pip install -r benchmarks/requirements.txt)")
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
