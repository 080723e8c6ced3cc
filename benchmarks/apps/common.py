"""What the app-benchmark processes share: loop selection, CPU accounting,
ports, pinning, latency percentiles, one JSON line of result."""
from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
LOOPS = ("stdlib", "uvloop", "pyasync_c", "rloop")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """A zero-argument loop factory; pyasync_c from this checkout when built in place."""
    if name == "stdlib":
        return asyncio.SelectorEventLoop
    if name == "uvloop":
        import uvloop
        return uvloop.new_event_loop
    if name == "pyasync_c":
        if any((REPO_ROOT / "pyasync_c").glob("_loop*.so")):
            sys.path.insert(0, str(REPO_ROOT))
        import pyasync_c
        return pyasync_c.new_event_loop
    if name == "rloop":
        import rloop
        return rloop.new_event_loop
    raise ValueError(f"unknown loop {name!r}; known: {', '.join(LOOPS)}")


def run_on(loop: str, main: Any) -> Any:
    """Run the coroutine `main` to completion on a fresh loop of that kind."""
    with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
        return runner.run(main)


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (and its threads) from /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat(5)


def self_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0, alive: Callable[[], bool] = lambda: True) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if not alive():
            raise RuntimeError("the server exited before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout:g}s")
            time.sleep(0.05)


def cpus() -> tuple[int | None, int | None]:
    """(server CPU, load CPU): the first two CPUs this process may use."""
    allowed = sorted(os.sched_getaffinity(0))
    return (allowed[0], allowed[1]) if len(allowed) >= 2 else (None, None)


def pin_cmd(cpu: int | None, cmd: list[str]) -> list[str]:
    return ["taskset", "-c", str(cpu), *cmd] if cpu is not None else cmd


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def emit(result: dict[str, Any]) -> None:
    print(json.dumps(result), flush=True)


def raise_nofile() -> None:
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
