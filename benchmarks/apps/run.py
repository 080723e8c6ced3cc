"""Real-application benchmarks: frameworks and drivers on stdlib asyncio,
uvloop, pyasync_c (and rloop where it installs), interleaved in rounds.

    python3 benchmarks/apps/run.py [--quick] [--rounds K] [--duration S] [--requests N]
                                   [--only NAME,...] [--loops stdlib,uvloop,pyasync_c,rloop]

Server workloads run servers.py KIND on the loop under test, pinned to one CPU,
and load it with wrk (or, for websockets, clients.py on uvloop) pinned to
another; client workloads run clients.py on the loop under test against a
fixed peer (the plain Protocol responder on uvloop, redis-server, PostgreSQL).
Every cell is fresh processes. Each round runs every workload on every loop,
the loop order rotating from round to round; ratios to uvloop are taken
within a round, then their median over the rounds is reported. Writes
results.json, results.md and results.png to --out (default
benchmarks/results/apps/).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (HERE, LOOPS, REPO_ROOT, cpus, free_port, pin_cmd,  # noqa: E402
                    proc_cpu_seconds, wait_port)
import services  # noqa: E402

Cell = dict[str, Any]
BASELINE = "uvloop"


@dataclass(frozen=True)
class Workload:
    name: str
    doc: str
    unit: str                      # what one operation is
    server: str | None = None      # servers.py KIND on the loop under test
    wrk_conns: int = 0             # load it with wrk at this many connections
    https: bool = False
    client: str | None = None      # clients.py KIND ...
    client_loop: str | None = None  # ... on this loop (None: the loop under test)
    peer: str | None = None        # fixed peer of a client workload: "http", "redis", "postgres"
    concurrency: int = 100
    cpu_of: str = "server"         # whose CPU is charged per operation: server, client, both
    scale: float = 1.0             # client cells: operations = --requests x scale


WORKLOADS = [
    Workload("uvicorn_raw", "uvicorn (httptools if installed), raw ASGI app, 13-byte body, "
             "wrk 100 conns", "req", server="uvicorn_raw", wrk_conns=100),
    Workload("uvicorn_fastapi", "uvicorn + FastAPI, JSON route, wrk 100 conns", "req",
             server="uvicorn_fastapi", wrk_conns=100),
    Workload("aiohttp_web_100", "aiohttp.web, text route, wrk 100 conns", "req",
             server="aiohttp_web", wrk_conns=100),
    Workload("aiohttp_web_1000", "aiohttp.web, text route, wrk 1000 conns", "req",
             server="aiohttp_web", wrk_conns=1000),
    Workload("uvicorn_64k", "uvicorn raw ASGI, 64 KiB body, wrk 100 conns", "req",
             server="uvicorn_64k", wrk_conns=100),
    Workload("uvicorn_tls", "uvicorn raw ASGI over HTTPS, wrk 100 conns", "req",
             server="uvicorn_tls", wrk_conns=100, https=True),
    Workload("protocol_http_1000", "plain asyncio.Protocol HTTP responder, wrk 1000 conns", "req",
             server="protocol_http", wrk_conns=1000),
    Workload("websockets_echo", "websockets server echo, 1 KiB messages, 50 conns "
             "(load: websockets client on uvloop)", "msg", server="websockets_echo",
             client="websockets", client_loop=BASELINE, concurrency=50),
    Workload("httpx_client", "httpx.AsyncClient GETs, concurrency 100, against the Protocol "
             "responder on uvloop", "req", client="httpx", peer="http", cpu_of="client"),
    Workload("aiohttp_client", "aiohttp.ClientSession GETs, concurrency 100, against the "
             "Protocol responder on uvloop", "req", client="aiohttp", peer="http", cpu_of="client"),
    Workload("asyncpg", "asyncpg pool (10), 10-row queries", "query", client="asyncpg",
             peer="postgres", concurrency=10, cpu_of="client"),
    Workload("redis_pipeline", "redis-py asyncio, pipelines of 50 SET/GET, 10 connections",
             "pipeline", client="redis", peer="redis", concurrency=10, cpu_of="client", scale=0.1),
    Workload("conn_churn", "asyncio streams both ends (both on the loop under test): connect, "
             "3 checked lines, close; 200 at a time", "conn", server="streams_echo",
             client="churn", concurrency=200, cpu_of="both", scale=0.2),
    Workload("conn_10k", "asyncio streams both ends (both on the loop under test): 10,000 "
             "connections open at once (1,000 connecting at a time), 20 checked lines on each, "
             "close; one timed batch after one warm-up batch", "conn", server="streams_echo",
             client="conn10k", concurrency=1, cpu_of="both", scale=0.0),
]
REGISTRY = {w.name: w for w in WORKLOADS}


class CellError(Exception):
    pass


def _py(script: str, *args: str) -> list[str]:
    return [sys.executable, str(HERE / script), *args]


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONHASHSEED="0")


@contextlib.contextmanager
def serving(kind: str, loop: str, cpu: int | None, tls: tuple[str, str] | None) -> Iterator[tuple[int, int]]:
    """(port, pid) of servers.py KIND on `loop`, pinned to `cpu`."""
    port = free_port()
    args = ["--loop", loop, "--port", str(port)]
    if tls:
        args += ["--cert", tls[0], "--key", tls[1]]
    proc = subprocess.Popen(pin_cmd(cpu, _py("servers.py", kind, *args)), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO_ROOT)
    try:
        try:
            wait_port(port, alive=lambda: proc.poll() is None)
        except (RuntimeError, TimeoutError) as exc:
            proc.kill()
            _, err = proc.communicate()
            if b"NotImplementedError" in err:  # e.g. rloop without TLS servers
                raise services.Unavailable(f"{loop} lacks what {kind} needs: {_tail(err, 1)}") from None
            raise CellError(f"{kind} on {loop} did not start: {exc}\n{_tail(err)}") from None
        yield port, proc.pid
        if proc.poll() is not None:
            raise CellError(f"{kind} on {loop} exited during the run\n{_tail(proc.communicate()[1])}")
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr:
            proc.stderr.close()


def _tail(text: bytes | str | None, lines: int = 12) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return "\n".join((text or "").strip().splitlines()[-lines:])


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def wrk(url: str, conns: int, seconds: float, cpu: int | None) -> dict[str, Any]:
    seconds = max(1, round(seconds))  # wrk takes whole seconds
    cmd = pin_cmd(cpu, ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency", url])
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    total = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    if not (total and rate):
        raise CellError(f"could not read wrk's output:\n{_tail(out)}")
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"requests": int(total.group(1)), "rate": float(rate.group(1)),
            "p99_ms": float(p99.group(1)) * _UNITS[p99.group(2)] if p99 else None,
            "errors": errors + (int(bad.group(1)) if bad else 0)}


def run_wrk_cell(wl: Workload, loop: str, args: argparse.Namespace,
                 tls: tuple[str, str] | None) -> Cell:
    server_cpu, load_cpu = cpus()
    assert wl.server
    with serving(wl.server, loop, server_cpu, tls if wl.https else None) as (port, pid):
        url = f"{'https' if wl.https else 'http'}://127.0.0.1:{port}/"
        wrk(url, wl.wrk_conns, args.warmup, load_cpu)
        cpu0 = proc_cpu_seconds(pid)
        res = wrk(url, wl.wrk_conns, args.duration, load_cpu)
        cpu = proc_cpu_seconds(pid) - cpu0
    if res["requests"] == 0:
        raise CellError("no request completed")
    return {"ops_per_s": res["rate"], "p99_ms": res["p99_ms"],
            "cpu_us_per_op": cpu / res["requests"] * 1e6, "ops": res["requests"],
            "errors": res["errors"]}


def run_client(wl: Workload, loop: str, target: str, args: argparse.Namespace,
               server_pid: int | None) -> Cell:
    """clients.py on the load CPU; the server's CPU is sampled at the timed part's edges."""
    _, load_cpu = cpus()
    assert wl.client
    cmd = _py("clients.py", wl.client, "--loop", wl.client_loop or loop, "--target", target,
              "--concurrency", str(wl.concurrency))
    cmd += ["--duration", f"{args.duration:g}"] if wl.client == "websockets" else \
        ["--requests", str(max(wl.concurrency, int(args.requests * wl.scale)))]
    proc = subprocess.Popen(pin_cmd(load_cpu, cmd), env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    server_cpu: dict[str, float] = {}
    result: dict[str, Any] | None = None
    deadline = time.monotonic() + args.timeout
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            msg = json.loads(line)
            if "phase" in msg:
                if server_pid is not None:
                    server_cpu[msg["phase"]] = proc_cpu_seconds(server_pid)
            else:
                result = msg
            if time.monotonic() > deadline:
                break
        proc.wait(max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise CellError(f"client timed out after {args.timeout:g}s") from None
    finally:
        err = proc.stderr.read() if proc.stderr else ""
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if result is None or proc.returncode != 0:
        raise CellError(f"client failed (exit {proc.returncode})\n{_tail(err)}")
    ops = result["ops"]
    if ops == 0:
        raise CellError("no operation completed")
    srv = server_cpu.get("stop", 0.0) - server_cpu.get("start", 0.0)
    cpu = {"server": srv, "client": result["cpu"], "both": srv + result["cpu"]}[wl.cpu_of]
    return {"ops_per_s": ops / result["seconds"], "p99_ms": result["p99_ms"],
            "cpu_us_per_op": cpu / ops * 1e6, "ops": ops, "errors": 0}


class Peers:
    """The fixed peers, started on first use and kept for the whole run."""

    def __init__(self, stack: contextlib.ExitStack):
        self.stack = stack
        self.started: dict[str, str | Exception] = {}

    def get(self, name: str) -> str:
        if name not in self.started:
            server_cpu, _ = cpus()
            try:
                if name == "http":
                    port, _ = self.stack.enter_context(serving("protocol_http", BASELINE, server_cpu, None))
                    self.started[name] = f"127.0.0.1:{port}"
                elif name == "redis":
                    self.started[name] = self.stack.enter_context(services.redis_server(server_cpu))
                elif name == "postgres":
                    self.started[name] = self.stack.enter_context(services.postgres(server_cpu))
                elif name == "tls":
                    cert, key = self.stack.enter_context(services.tls_cert())
                    self.started[name] = f"{cert}\n{key}"
            except (services.Unavailable, RuntimeError, CellError) as exc:
                self.started[name] = exc
        value = self.started[name]
        if isinstance(value, Exception):
            raise value
        return value


def run_cell(wl: Workload, loop: str, args: argparse.Namespace, peers: Peers) -> Cell:
    base: Cell = {"workload": wl.name, "loop": loop}
    try:
        if wl.wrk_conns:
            tls = tuple(peers.get("tls").split("\n")) if wl.https else None
            return {**base, "status": "ok", **run_wrk_cell(wl, loop, args, tls)}  # type: ignore[arg-type]
        if wl.server:  # a client driving a server on the loop under test
            server_cpu, _ = cpus()
            with serving(wl.server, loop, server_cpu, None) as (port, pid):
                return {**base, "status": "ok",
                        **run_client(wl, loop, f"127.0.0.1:{port}", args, pid)}
        assert wl.peer
        return {**base, "status": "ok", **run_client(wl, loop, peers.get(wl.peer), args, None)}
    except services.Unavailable as exc:
        return {**base, "status": "unavailable", "reason": str(exc)}
    except (CellError, RuntimeError, OSError, subprocess.SubprocessError) as exc:
        return {**base, "status": "error", "reason": str(exc)}


def loop_available(loop: str) -> str | None:
    """None, or why the loop cannot be imported."""
    code = f"import sys; sys.path.insert(0, {str(HERE)!r}); import common; common.loop_factory({loop!r})"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT)
    return None if proc.returncode == 0 else _tail(proc.stderr, 1)


# ---- summary ---------------------------------------------------------------

def summarize(cells: list[Cell], loops: list[str], names: list[str]) -> dict[str, dict[str, Any]]:
    """Per (workload, loop): best/median ops/s, median p99 and CPU/op, and the
    median (min, max) over rounds of the ratios to uvloop of the same round."""
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        for loop in loops:
            mine = [c for c in cells if c["workload"] == name and c["loop"] == loop]
            ok = [c for c in mine if c["status"] == "ok"]
            s: dict[str, Any] = {"n": len(ok)}
            if not ok:
                s["status"] = mine[0]["status"] if mine else "missing"
                out[f"{name}/{loop}"] = s
                continue
            rates = [c["ops_per_s"] for c in ok]
            s.update(status="ok", best=max(rates), median=statistics.median(rates),
                     cpu=statistics.median(c["cpu_us_per_op"] for c in ok),
                     p99=statistics.median(c["p99_ms"] for c in ok if c["p99_ms"] is not None)
                     if any(c["p99_ms"] is not None for c in ok) else None,
                     errors=sum(c.get("errors", 0) for c in ok),
                     # share of one core the measured process used: well below 100% the
                     # load generator (or the peer), not the loop, sets the rate
                     busy=statistics.median(c["ops_per_s"] * c["cpu_us_per_op"] / 1e6 for c in ok))
            for key, field in (("rate_ratio", "ops_per_s"), ("cpu_ratio", "cpu_us_per_op")):
                ratios = []
                for c in ok:
                    base = [b for b in cells if b["workload"] == name and b["loop"] == BASELINE
                            and b["round"] == c["round"] and b["status"] == "ok"]
                    if base and base[0][field]:
                        ratios.append(c[field] / base[0][field])
                if ratios:
                    s[key] = (statistics.median(ratios), min(ratios), max(ratios))
            out[f"{name}/{loop}"] = s
    return out


def _fmt_rate(x: float) -> str:
    return f"{x / 1e3:.1f}k" if x >= 1e3 else f"{x:.0f}"


def _fmt_ratio(r: tuple[float, float, float] | None, rounds: int) -> str:
    if r is None:
        return "n/a"
    return f"{r[0]:.2f}x" + (f" ({r[1]:.2f}–{r[2]:.2f})" if rounds > 1 else "")


def tables(summary: dict[str, dict[str, Any]], loops: list[str], names: list[str],
           rounds: int) -> list[tuple[str, list[str], list[list[str]]]]:
    others = [lp for lp in loops if lp != BASELINE]

    def cell(name: str, loop: str, show: Any) -> str:
        s = summary[f"{name}/{loop}"]
        if s["status"] != "ok":
            return "n/a" if s["status"] == "unavailable" else s["status"]
        return show(s)
    unit = {w.name: w.unit for w in WORKLOADS}
    t1 = [[n, unit[n]] + [cell(n, lp, lambda s: f"{_fmt_rate(s['best'])} / {_fmt_rate(s['median'])}")
                          for lp in loops] for n in names]
    t2 = [[n] + [cell(n, lp, lambda s: _fmt_ratio(s.get("rate_ratio"), rounds)) for lp in others]
          for n in names]
    t3 = [[n] + [cell(n, lp, lambda s: f"{s['cpu']:.1f}") for lp in loops]
          + [cell(n, lp, lambda s: _fmt_ratio(s.get("cpu_ratio"), rounds)) for lp in others]
          for n in names]
    t4 = [[n] + [cell(n, lp, lambda s: f"{s['p99']:.2f}" if s.get("p99") is not None else "–")
                 for lp in loops] for n in names]
    t5 = [[n] + [cell(n, lp, lambda s: f"{s['busy'] * 100:.0f}%") for lp in loops] for n in names]
    return [
        ("Throughput: ops/s, best / median over rounds", ["workload", "op", *loops], t1),
        ("Throughput ratio to uvloop (median over rounds of the same-round ratio; range)",
         ["workload", *[f"{lp}/uvloop" for lp in others]], t2),
        ("CPU per operation (µs; server for server workloads, client for client workloads, "
         "both ends for conn_churn; below 1: uses less)",
         ["workload", *loops, *[f"{lp}/uvloop" for lp in others]], t3),
        ("p99 latency (ms, median over rounds)", ["workload", *loops], t4),
        ("CPU use of the measured process (% of one core, median; server workloads: the server). "
         "Well below 100%, the load generator or peer, not the loop, sets the rate: read CPU per "
         "operation there", ["workload", *loops], t5),
    ]


def render(tbls: list[tuple[str, list[str], list[list[str]]]], markdown: bool) -> str:
    out = []
    for title, header, rows in tbls:
        if markdown:
            out += [f"### {title}", "", "| " + " | ".join(header) + " |",
                    "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
            out += ["| " + " | ".join(r) + " |" for r in rows] + [""]
        else:
            widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
            out += [title] + ["  ".join(v.ljust(w) if i == 0 else v.rjust(w)
                                        for i, (v, w) in enumerate(zip(r, widths)))
                              for r in [header, *rows]] + [""]
    return "\n".join(out)


def chart(summary: dict[str, dict[str, Any]], loops: list[str], names: list[str], path: Path,
          title: str) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no chart: pip install matplotlib")
        return False
    others = [lp for lp in loops if lp != BASELINE]
    fig, axes = plt.subplots(2, 1, figsize=(max(8, 1.1 * len(names)), 8), sharex=True)
    width = 0.8 / max(1, len(others))
    for ax, key, label in ((axes[0], "rate_ratio", "ops/s ÷ uvloop (above 1: faster)"),
                           (axes[1], "cpu_ratio", "CPU per op ÷ uvloop (below 1: cheaper)")):
        for i, loop in enumerate(others):
            xs: list[float] = []
            ys: list[float] = []
            errs: list[list[float]] = [[], []]
            for j, name in enumerate(names):
                r = summary[f"{name}/{loop}"].get(key)
                if r:
                    xs.append(j + (i - (len(others) - 1) / 2) * width)
                    ys.append(r[0])
                    errs[0].append(r[0] - r[1])
                    errs[1].append(r[2] - r[0])
            ax.bar(xs, ys, width, yerr=errs, label=loop, capsize=2)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    axes[1].set_xticks(range(len(names)))
    axes[1].set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    axes[0].set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="2 rounds, 2 s windows, 2,000 requests: checks that everything runs")
    ap.add_argument("--rounds", type=int, help="interleaved rounds (default 6; quick: 2)")
    ap.add_argument("--duration", type=float, help="seconds of each wrk/websockets window (default 5; quick: 2)")
    ap.add_argument("--warmup", type=float, help="seconds of wrk warm-up (default 1)")
    ap.add_argument("--requests", type=int,
                    help="operations per client cell (default 20000; quick: 2000; redis: a tenth "
                         "(pipelines), churn: a fifth (connections))")
    ap.add_argument("--only", help="comma-separated workloads (see --list)")
    ap.add_argument("--loops", default=",".join(LOOPS), help="comma-separated loops")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds before a client cell is killed")
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "apps")
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args(argv)
    q = args.quick
    args.rounds = args.rounds or (2 if q else 6)
    args.duration = args.duration or (2.0 if q else 5.0)
    args.warmup = args.warmup or 1.0
    args.requests = args.requests or (2000 if q else 20_000)
    names = args.only.split(",") if args.only else list(REGISTRY)
    bad = [n for n in names if n not in REGISTRY]
    if bad:
        ap.error(f"unknown workload(s) {', '.join(bad)}; known: {', '.join(REGISTRY)}")
    args.names = names
    args.loop_list = [lp for lp in args.loops.split(",") if lp]
    bad = [lp for lp in args.loop_list if lp not in LOOPS]
    if bad:
        ap.error(f"unknown loop(s) {', '.join(bad)}; known: {', '.join(LOOPS)}")
    if BASELINE not in args.loop_list:
        ap.error("the ratios need uvloop in --loops")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for w in WORKLOADS:
            print(f"{w.name:20} {w.unit:6} {w.doc}")
        return 0
    if shutil.which("wrk") is None and any(REGISTRY[n].wrk_conns for n in args.names):
        print("wrk is not installed (apt-get install -y wrk): its workloads are skipped")
        args.names = [n for n in args.names if not REGISTRY[n].wrk_conns]
    missing = {lp: why for lp in args.loop_list if (why := loop_available(lp))}
    for lp, why in missing.items():
        print(f"{lp}: not importable ({why}); its cells show n/a")
    loops = args.loop_list
    load_before = os.getloadavg()[0]
    cells: list[Cell] = []
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        peers = Peers(stack)
        for rnd in range(args.rounds):
            for name in args.names:
                wl = REGISTRY[name]
                order = loops[rnd % len(loops):] + loops[:rnd % len(loops)]
                for loop in order:
                    print(f"[r{rnd + 1}/{args.rounds}] {name:18} {loop:9} ", end="", flush=True)
                    before = [c for c in cells if c["workload"] == name and c["loop"] == loop
                              and c["status"] == "unavailable"]
                    if loop in missing:
                        cell = {"workload": name, "loop": loop, "status": "unavailable",
                                "reason": missing[loop]}
                    elif before:  # once is enough
                        cell = dict(before[0])
                    else:
                        cell = run_cell(wl, loop, args, peers)
                    cell["round"] = rnd
                    cells.append(cell)
                    if cell["status"] == "ok":
                        print(f"{cell['ops_per_s']:10,.0f} {wl.unit}/s  cpu {cell['cpu_us_per_op']:7.1f} µs/{wl.unit}"
                              + (f"  p99 {cell['p99_ms']:.2f} ms" if cell.get("p99_ms") is not None else "")
                              + (f"  ERRORS {cell['errors']}" if cell.get("errors") else ""), flush=True)
                    else:
                        print(f"{cell['status'].upper()}: {cell['reason'].splitlines()[0] if cell['reason'] else ''}",
                              flush=True)
    meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
            "python": sys.version.split()[0], "rounds": args.rounds, "duration_s": args.duration,
            "requests": args.requests, "quick": args.quick, "cpus": cpus(),
            "loadavg": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "seconds": round(time.monotonic() - started)}
    summary = summarize(cells, loops, args.names)
    tbls = tables(summary, loops, args.names, args.rounds)
    note = (f"{args.rounds} interleaved round(s), {args.duration:g} s wrk windows, {args.requests:,} "
            f"client operations; server CPU {meta['cpus'][0]}, load CPU {meta['cpus'][1]}; "
            f"load average {meta['loadavg'][0]} before, {meta['loadavg'][1]} after"
            + (" — QUICK run: smoke test only" if args.quick else "") + ".")
    print("\n" + render(tbls, markdown=False) + note)
    for c in cells:
        if c["status"] == "error":
            print(f"--- {c['workload']} {c['loop']} round {c['round'] + 1}: {c['reason']}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "summary": summary,
                                                       "cells": cells}, indent=1) + "\n")
    (args.out / "results.md").write_text(render(tbls, markdown=True) + "\n" + note + "\n")
    written = [args.out / "results.json", args.out / "results.md"]
    if chart(summary, loops, args.names, args.out / "results.png", note):
        written.append(args.out / "results.png")
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
