"""Network benchmark cells: echo servers under a C load driver.

This module owns the network workloads (it registers them in the harness's
registry so that run.py's --list/--only see them) and how one of their cells
runs: it builds the two C programs into build/bench/, starts the echo server
(servers.py on a loop, or echo_server_libuv for the "libuv" reference column)
pinned to one CPU, starts echo_client pinned to another, and reads their
JSON lines. One cell is one server and one client process: one warm-up, then
``repeat`` timed windows; between windows the client lets the messages in
flight come back and the server is asked for its CPU time, so the CPU
charged to a window is exactly the server's work for that window's traffic.
"""
from __future__ import annotations

import json
import os
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable

from harness import REGISTRY, REPO_ROOT, Unavailable, Workload, summarize

HERE = Path(__file__).resolve().parent
BUILD_DIR = REPO_ROOT / "build" / "bench"
NET_GROUPS = ("net", "net_memory")
REFERENCE = "libuv"  # the extra "loop" name of the raw libuv server column
DEFAULT_CONNS = 10
START_TIMEOUT = 20.0  # seconds for a server to listen / the client to connect


@dataclass(frozen=True)
class NetSpec:
    server: str  # servers.py KIND: protocol, buffered, streams, unix, udp
    transport: str  # echo_client --mode: tcp, unix, udp, idle
    size: int = 1024  # message bytes (echo)


def _not_a_child_workload(prims: Any, n: int) -> Any:
    raise TypeError("network workloads are run by benchmarks/net/runner.py, not child.py")


def _register(name: str, group: str, unit: str, n: int, spec: NetSpec, doc: str) -> None:
    if name in REGISTRY:
        raise ValueError(f"duplicate workload {name!r}")
    REGISTRY[name] = Workload(name, group, unit, n, _not_a_child_workload, doc=doc, params={"net": spec})


# n of an echo workload is the length of one timed window in ms (--quick: /10);
# n of net_idle_memory is the number of connections.
WINDOW_MS = 1000
for _kind, _what in (("protocol", "asyncio.Protocol, data_received -> write"),
                     ("buffered", "asyncio.BufferedProtocol into a preallocated buffer"),
                     ("streams", "asyncio.start_server, read/write/drain")):
    for _size, _tag in ((1024, "1k"), (65536, "64k")):
        _register(f"net_tcp_{_kind}_{_tag}", "net", "round trips", WINDOW_MS,
                  NetSpec(_kind, "tcp", _size), f"TCP echo of {_tag}B messages, {_what}")
_register("net_unix_protocol_1k", "net", "round trips", WINDOW_MS, NetSpec("unix", "unix", 1024),
          "Unix socket echo of 1kB messages, asyncio.Protocol")
_register("net_udp_1k", "net", "round trips", WINDOW_MS, NetSpec("udp", "udp", 1024),
          "UDP echo of 1kB datagrams, DatagramProtocol")
_register("net_idle_memory", "net_memory", "bytes/conn", 10_000, NetSpec("protocol", "idle"),
          "server RSS growth per idle TCP connection (Protocol echo server)")


def is_net(wl: Workload) -> bool:
    return wl.group in NET_GROUPS


def cpus() -> tuple[int, int] | None:
    """(server CPU, client CPU), or None if there is only one CPU to run on."""
    allowed = sorted(os.sched_getaffinity(0))
    return (allowed[0], allowed[1]) if len(allowed) >= 2 else None


# --------------------------------------------------------------------------
# Building the C programs


class BuildError(Exception):
    pass


_built: dict[str, Path | BuildError] = {}


def binary(name: str) -> Path:
    """Compile benchmarks/net/NAME.c into build/bench/NAME (if it is older than
    its source) and return its path; BuildError says why it cannot be built."""
    if name not in _built:
        _built[name] = _build(name)
    result = _built[name]
    if isinstance(result, BuildError):
        raise result
    return result


def _build(name: str) -> Path | BuildError:
    src, out = HERE / f"{name}.c", BUILD_DIR / name
    if out.exists() and out.stat().st_mtime >= src.stat().st_mtime:
        return out
    flags: list[str] = []
    if "libuv" in name:
        try:
            flags = subprocess.check_output(["pkg-config", "--cflags", "--libs", "libuv"], text=True,
                                            stderr=subprocess.PIPE).split()
        except (OSError, subprocess.CalledProcessError) as exc:
            return BuildError(f"{name}: no libuv via pkg-config ({exc}); apt-get install libuv1-dev")
    cc = os.environ.get("CC", "gcc")
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    cmd = [cc, "-std=c11", "-O2", "-Wall", "-o", str(out), str(src), *flags]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as exc:
        return BuildError(f"{name}: cannot run {cc}: {exc}")
    if proc.returncode:
        return BuildError(f"{name}: {' '.join(cmd)} failed:\n{proc.stderr.strip()}")
    return out


# --------------------------------------------------------------------------
# Child processes that talk in JSON lines


class ProcFailed(Exception):
    pass


class Proc:
    """A pinned child whose stdout is read as JSON lines with a deadline and
    whose stderr goes to a file (kept for the report)."""

    def __init__(self, label: str, cmd: list[str], cpu: int | None, workdir: Path):
        self.label = label
        self.err_path = workdir / f"{label}.stderr"
        self._err: IO[bytes] = open(self.err_path, "wb")

        def pin() -> None:  # runs in the child before exec
            if cpu is not None:
                os.sched_setaffinity(0, {cpu})

        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._err, preexec_fn=pin, cwd=REPO_ROOT,
                                     env=dict(os.environ, PYTHONHASHSEED="0"))
        self._buf = b""

    def read_json(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise ProcFailed(f"{self.label}: no answer within {timeout:g}s")
            chunk = os.read(fd, 65536)
            if not chunk:
                rc = self.proc.wait(timeout=5)
                raise ProcFailed(f"{self.label} exited (status {rc}) without answering")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            raise ProcFailed(f"{self.label}: not a JSON line: {line[:200]!r}") from None

    def ask(self) -> dict[str, Any]:
        """A server's usage line (CPU time, RSS): one line in, one line out."""
        self.send_line()
        return self.read_json(10.0)

    def send_line(self) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(b"\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise ProcFailed(f"{self.label} has exited") from None

    def finish(self, timeout: float = 10.0) -> int | None:
        """Close stdin (the signal to stop), wait, kill if it does not go."""
        try:
            if self.proc.stdin:
                self.proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
        self._err.close()
        return rc

    def stderr_tail(self, lines: int = 15) -> str:
        try:
            text = self.err_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])


# --------------------------------------------------------------------------
# One cell


def _server_cmd(loop: str, spec: NetSpec, sock_path: Path) -> list[str]:
    if loop == REFERENCE:
        mode = "tcp" if spec.transport == "idle" else spec.transport  # one TCP server for every flavour
        return [str(binary("echo_server_libuv")), mode] + ([str(sock_path)] if mode == "unix" else [])
    cmd = [sys.executable, str(HERE / "servers.py"), spec.server, "--loop", loop]
    return cmd + (["--path", str(sock_path)] if spec.server == "unix" else [])


def _client_address(ready: dict[str, Any]) -> list[str]:
    if "path" in ready:
        return ["--path", ready["path"]]
    return ["--host", ready["host"], "--port", str(ready["port"])]


def run_cell(wl: Workload, loop: str, n: int, repeat: int, warmup: int, timeout: float,
             conns: int | None = None) -> dict[str, Any]:
    """Run one network cell; never raises: failures come back as a cell with
    status unavailable (n/a) or error."""
    spec: NetSpec = wl.params["net"]
    pinned = cpus()
    base: dict[str, Any] = {"workload": wl.name, "loop": loop, "prims": "-", "n": n, "unit": wl.unit,
                            "group": wl.group, "cpus": list(pinned) if pinned else None}
    procs: list[Proc] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pyasync_c-net-") as tmp:
        workdir = Path(tmp)
        try:
            client_bin = binary("echo_client")
            server = Proc("server", _server_cmd(loop, spec, workdir / "echo.sock"),
                          pinned[0] if pinned else None, workdir)
            procs.append(server)
            ready = server.read_json(START_TIMEOUT)
            if ready.get("status") == "unavailable":
                raise Unavailable(ready.get("reason", "unavailable"))
            if not ready.get("ready"):
                raise ProcFailed(f"server: unexpected first line {ready}")
            client_cmd = [str(client_bin), "--mode", spec.transport, *_client_address(ready)]

            def start_client(extra: list[str]) -> tuple[Proc, dict[str, Any]]:
                client = Proc("client", client_cmd + extra, pinned[1] if pinned else None, workdir)
                procs.append(client)
                return client, client.read_json(START_TIMEOUT + timeout / 4)

            if spec.transport == "idle":
                result = _idle_memory(server, start_client, n)
            else:
                result = _echo(server, start_client, spec, n, repeat, warmup, timeout,
                               conns or DEFAULT_CONNS)
            for p in reversed(procs):
                rc = p.finish()
                if rc and p.label == "client":
                    raise ProcFailed(f"client exited with status {rc}")
            return {**base, **result, "status": "ok", "elapsed": round(time.monotonic() - started, 2)}
        except BuildError as exc:
            return {**base, "status": "unavailable", "reason": str(exc).splitlines()[0],
                    "stderr": str(exc)}
        except Unavailable as exc:
            return {**base, "status": "unavailable", "reason": str(exc)}
        except Exception as exc:  # a failing cell is reported, not fatal to the run
            for p in procs:
                if p.proc.poll() is None:
                    p.proc.kill()
                p.finish()
            tails = "\n".join(f"[{p.label} stderr]\n{t}" for p in procs if (t := p.stderr_tail()))
            cell = {**base, "status": "error", "reason": f"{type(exc).__name__}: {exc}", "stderr": tails}
            if not isinstance(exc, ProcFailed):
                cell["traceback"] = traceback.format_exc()
            return cell
        finally:
            for p in procs:
                if p.proc.poll() is None:
                    p.proc.kill()
                    p.proc.wait()


StartClient = Callable[[list[str]], tuple["Proc", dict[str, Any]]]  # extra args -> (client, first line)


def _echo(server: Proc, start_client: StartClient, spec: NetSpec, n: int, repeat: int, warmup: int,
          timeout: float, conns: int) -> dict[str, Any]:
    window = n / 1000
    client, ready = start_client(["--conns", str(conns), "--size", str(spec.size), "--control",
                                  "--warmup", f"{warmup * window / 4:g}", "--duration", f"{window:g}"])
    if not ready.get("ready"):
        raise ProcFailed(f"client: unexpected first line {ready}")
    windows = []
    for _ in range(repeat):
        before = server.ask()
        client.send_line()
        w = client.read_json(window * 3 + 30)
        after = server.ask()
        w["server_utime_us"] = after["utime_us"] - before["utime_us"]
        w["server_stime_us"] = after["stime_us"] - before["stime_us"]
        windows.append(w)
    return {"load": f"{conns}×{_bytes(spec.size)}", "conns": conns, "size": spec.size,
            "warmup_round_trips": ready.get("warmup_round_trips"), **summarize_windows(windows)}


def _idle_memory(server: Proc, start_client: StartClient, n: int) -> dict[str, Any]:
    before = server.ask()
    client, ready = start_client(["--conns", str(n)])
    if ready.get("connections") != n:
        raise ProcFailed(f"client: unexpected first line {ready}")
    time.sleep(0.2)  # let the server finish with the last echoes
    after = server.ask()
    grown = (after["rss_kb"] - before["rss_kb"]) * 1024
    return {"load": f"{n:,} conns", "connections": n, "rss_before_kb": before["rss_kb"],
            "rss_after_kb": after["rss_kb"], "bytes_per_conn": grown / n,
            "setup_seconds": ready.get("seconds")}


def _bytes(size: int) -> str:
    return f"{size // 1024} KiB" if size % 1024 == 0 else f"{size} B"


def summarize_windows(windows: list[dict[str, Any]]) -> dict[str, Any]:
    """Statistics of a cell's timed windows: round trips/s best of N (with
    median, worst, spread as for every cell); latency percentiles and server
    CPU per round trip as the median over the windows."""
    def med(key: str) -> float:
        return statistics.median(w[key] for w in windows)

    def per_rt(key: str) -> float:
        return statistics.median(w[key] / w["round_trips"] for w in windows if w["round_trips"])

    return {
        **summarize([w["round_trips"] for w in windows], [w["seconds"] for w in windows]),
        "p50_us": med("p50_us"),
        "p99_us": med("p99_us"),
        "server_user_us_per_rt": per_rt("server_utime_us"),
        "server_sys_us_per_rt": per_rt("server_stime_us"),
        "server_cpu_us_per_rt": statistics.median(
            (w["server_utime_us"] + w["server_stime_us"]) / w["round_trips"]
            for w in windows if w["round_trips"]),
        "lost": sum(w.get("lost", 0) for w in windows),
        "windows": windows,
    }


def merge(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Pool a later round's windows into the earlier result of the same cell."""
    if old["status"] != "ok":
        return old
    if new["status"] != "ok":
        return new
    if "windows" not in old:  # idle memory: one measurement per round, keep the lower
        return old if old["bytes_per_conn"] <= new["bytes_per_conn"] else new
    return {**old, **summarize_windows(old["windows"] + new["windows"])}


def describe(cell: dict[str, Any]) -> str:
    if "bytes_per_conn" in cell:
        return (f"{cell['bytes_per_conn']:,.0f} bytes/conn  (RSS {cell['rss_before_kb']:,} -> "
                f"{cell['rss_after_kb']:,} kB, {cell['load']})")
    return (f"{cell['best']:,.0f} rt/s  (median {cell['median']:,.0f}, spread {cell['spread']:.0%}; "
            f"p50 {cell['p50_us']:.0f} µs, p99 {cell['p99_us']:.0f} µs; "
            f"server {cell['server_user_us_per_rt']:.1f} µs user/rt)")


def meta(quick_factor: int, quick: bool, warmup: int, conns: int | None) -> dict[str, Any]:
    pinned = cpus()
    window = WINDOW_MS / (quick_factor if quick else 1) / 1000
    return {"window_s": window, "warmup_s": warmup * window / 4,
            "conns": conns or DEFAULT_CONNS, "server_cpu": pinned[0] if pinned else None,
            "client_cpu": pinned[1] if pinned else None, "cc": shutil.which(os.environ.get("CC", "gcc"))}
