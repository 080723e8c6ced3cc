"""A server's instructions per operation under callgrind: figures that do not
move with the machine's load, to read beside run.py's CPU per operation.

    python3 benchmarks/apps/instructions.py [--only NAME,...] [--loops uvloop,pyasync_c]
                                            [--gc] [--io-first]

For each workload and loop, servers.py KIND runs under valgrind's callgrind
and clients.py (on uvloop, or the stdlib loop without it) loads it twice, with
a small and a large operation count in fresh server processes. The server's
instructions per operation are (total(large) - total(small)) / (operations
between them): start-up, imports and connection set-up cancel out.

- The cyclic GC is off in the server unless --gc: with it on, whether a full
  collection happens to fall inside the difference decides the figure.
- --io-first sets pyasync_c's `_io_first` switch: a poll's transport I/O runs
  before the callbacks that were ready (uvloop's order) instead of after them
  (asyncio's, the default). The difference is what asyncio's order costs.

Each cell takes one to three minutes (the server runs ~50x slower under
callgrind).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from clients import warmup_ops  # noqa: E402
from common import HERE, REPO_ROOT, cpus, free_port, pin_cmd, wait_port  # noqa: E402


@dataclass(frozen=True)
class Workload:
    name: str
    server: str       # servers.py KIND
    client: str       # clients.py KIND
    concurrency: int
    small: int        # timed operations of the two runs
    large: int
    unit: str


WORKLOADS = [
    Workload("aiohttp_web_1000", "aiohttp_web", "rawhttp", 1000, 5000, 25000, "req"),
    Workload("aiohttp_web_100", "aiohttp_web", "rawhttp", 100, 2000, 12000, "req"),
    Workload("uvicorn_raw", "uvicorn_raw", "rawhttp", 100, 2000, 12000, "req"),
    Workload("uvicorn_fastapi", "uvicorn_fastapi", "rawhttp", 100, 1000, 6000, "req"),
    Workload("websockets_echo", "websockets_echo", "websockets", 50, 2000, 12000, "msg"),
    Workload("protocol_http_1000", "protocol_http", "rawhttp", 1000, 5000, 25000, "req"),
    Workload("conn_churn", "streams_echo", "churn", 200, 500, 2500, "conn"),
]
REGISTRY = {w.name: w for w in WORKLOADS}

# Runs servers.py in the process callgrind measures, the GC and the switch set first.
BOOTSTRAP = """
import gc, runpy, sys
here, gc_on, io_first = sys.argv[1], sys.argv[2] == "1", sys.argv[3] == "1"
sys.path.insert(0, here)
if not gc_on:
    gc.disable()
if io_first:
    import common
    make = common.loop_factory
    def loop_factory(name):
        factory = make(name)
        if name != "pyasync_c":
            return factory
        def new_loop():
            loop = factory()
            loop._io_first = True
            return loop
        return new_loop
    common.loop_factory = loop_factory
sys.argv = [here + "/servers.py"] + sys.argv[4:]
runpy.run_path(here + "/servers.py", run_name="__main__")
"""


def total_instructions(path: Path) -> int:
    """The Ir total callgrind writes at the end of its output file."""
    text = path.read_text(errors="replace")
    match = re.search(r"^(?:summary|totals):\s+(\d+)", text, re.M)
    if not match:
        raise RuntimeError(f"no instruction total in {path}")
    return int(match.group(1))


def client_loop() -> str:
    try:
        import uvloop  # noqa: F401
        return "uvloop"
    except ImportError:
        return "stdlib"


def run_once(wl: Workload, loop: str, ops: int, out: Path, args: argparse.Namespace) -> int:
    """Instructions of one server process serving one client run of `ops` timed operations."""
    server_cpu, load_cpu = cpus()
    port = free_port()
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
           "-c", BOOTSTRAP, str(HERE), "1" if args.gc else "0", "1" if args.io_first else "0",
           wl.server, "--loop", loop, "--port", str(port)]
    env = dict(os.environ, PYTHONHASHSEED="0")
    server = subprocess.Popen(pin_cmd(server_cpu, cmd), env=env, cwd=REPO_ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    failure = None
    try:
        wait_port(port, timeout=300, alive=lambda: server.poll() is None)
        client = [sys.executable, str(HERE / "clients.py"), wl.client, "--loop", client_loop(),
                  "--target", f"127.0.0.1:{port}", "--requests", str(ops),
                  "--concurrency", str(wl.concurrency)]
        done = subprocess.run(pin_cmd(load_cpu, client), env=env, cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=args.timeout)
        if done.returncode != 0:
            failure = f"the client failed: {done.stderr.strip()[-800:]}"
    except (RuntimeError, TimeoutError, subprocess.TimeoutExpired) as exc:
        failure = f"{exc}"
    finally:
        if server.poll() is None:
            server.terminate()  # callgrind writes its file as the process ends
        _, err = server.communicate(timeout=120)
    if failure:
        raise RuntimeError(f"{wl.name} on {loop}: {failure}\nserver: {err.strip()[-800:]}")
    return total_instructions(out)


def measure(wl: Workload, loop: str, args: argparse.Namespace, tmp: Path) -> float:
    totals = []
    for ops in (wl.small, wl.large):
        totals.append(run_once(wl, loop, ops, tmp / f"{wl.name}.{loop}.{ops}.out", args))
    served = [ops + warmup_ops(ops, wl.concurrency) for ops in (wl.small, wl.large)]
    return (totals[1] - totals[0]) / (served[1] - served[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="comma-separated workloads: " + ", ".join(REGISTRY))
    ap.add_argument("--loops", default="uvloop,pyasync_c", help="comma-separated loops")
    ap.add_argument("--gc", action="store_true", help="keep the cyclic GC on in the server")
    ap.add_argument("--io-first", action="store_true",
                    help="pyasync_c runs a poll's I/O before the ready callbacks (uvloop's order)")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds one client run may take")
    args = ap.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (Debian: apt-get install valgrind)")
    names = args.only.split(",") if args.only else [w.name for w in WORKLOADS]
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        sys.exit(f"unknown workload(s) {', '.join(unknown)}; known: {', '.join(REGISTRY)}")
    loops = args.loops.split(",")
    note = ", GC on" if args.gc else ", GC off"
    note += ", pyasync_c with _io_first (uvloop's order)" if args.io_first else ""
    print(f"server instructions per operation (callgrind{note})")
    failed = 0
    with tempfile.TemporaryDirectory(prefix="instructions-") as tmp:
        for name in names:
            wl = REGISTRY[name]
            try:
                figures = {loop: measure(wl, loop, args, Path(tmp)) for loop in loops}
            except RuntimeError as exc:
                print(f"{name:20} error: {exc}", flush=True)
                failed += 1
                continue
            cells = "  ".join(f"{loop} {value / 1000:8.1f}k" for loop, value in figures.items())
            ratio = (f"  pyasync_c/uvloop {figures['pyasync_c'] / figures['uvloop']:.3f}"
                     if {"pyasync_c", "uvloop"} <= figures.keys() else "")
            print(f"{name:20} per {wl.unit:5} {cells}{ratio}", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
