"""The client workloads, one small coroutine each, run on a chosen loop:

    python benchmarks/apps/clients.py KIND --loop LOOP --target T [--requests N]
                                      [--concurrency C] [--duration S]

httpx and aiohttp GETs, keep-alive GETs on raw connections (rawhttp: one
request in flight on each of `concurrency` connections, the load of
instructions.py), asyncpg queries, redis-py pipelines, connection churn
(asyncio streams: connect, a few checked lines, close), 10,000 connections open
at once exchanging checked lines (conn10k) and the websockets
echo load driver. `concurrency` workers share `requests` operations, after a
warm-up of a tenth as many; the result line is JSON: ops, seconds, this
process's CPU seconds over the timed part and the p99 latency of one
operation (ms); before it, {"phase": "start"} and {"phase": "stop"} lines
mark the timed part's edges.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import LOOPS, emit, percentile, raise_nofile, run_on, self_cpu_seconds  # noqa: E402

# one operation; its return value is the operation count it stands for
Op = Callable[[int], Awaitable[int]]
# set-up on the loop: returns (op, tear-down)
Client = Callable[[argparse.Namespace], Awaitable[tuple[Op, Callable[[], Awaitable[None]]]]]
CLIENTS: dict[str, Client] = {}


def client(name: str) -> Callable[[Client], Client]:
    def register(fn: Client) -> Client:
        CLIENTS[name] = fn
        return fn
    return register


@client("httpx")
async def httpx_client(args: argparse.Namespace) -> tuple[Op, Callable[[], Awaitable[None]]]:
    import httpx
    session = httpx.AsyncClient(limits=httpx.Limits(max_connections=args.concurrency,
                                                    max_keepalive_connections=args.concurrency))
    url = f"http://{args.target}/"

    async def op(i: int) -> int:
        r = await session.get(url)
        if r.status_code != 200 or not r.content:
            raise RuntimeError(f"bad answer {r.status_code}")
        return 1
    return op, session.aclose


@client("aiohttp")
async def aiohttp_client(args: argparse.Namespace) -> tuple[Op, Callable[[], Awaitable[None]]]:
    import aiohttp
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=args.concurrency))
    url = f"http://{args.target}/"

    async def op(i: int) -> int:
        async with session.get(url) as r:
            if r.status != 200 or not await r.read():
                raise RuntimeError(f"bad answer {r.status}")
        return 1
    return op, session.close


@client("asyncpg")
async def asyncpg_client(args: argparse.Namespace) -> tuple[Op, Callable[[], Awaitable[None]]]:
    import asyncpg
    pool = await asyncpg.create_pool(args.target, min_size=args.concurrency,
                                     max_size=args.concurrency)
    query = "SELECT g, 'row ' || g AS name FROM generate_series(1, $1::int) g"

    async def op(i: int) -> int:
        async with pool.acquire() as con:
            rows = await con.fetch(query, 10)
        if len(rows) != 10:
            raise RuntimeError("short result")
        return 1
    return op, pool.close


PIPELINE = 50  # commands per redis pipeline


@client("redis")  # one operation: one pipeline of PIPELINE commands
async def redis_client(args: argparse.Namespace) -> tuple[Op, Callable[[], Awaitable[None]]]:
    import redis.asyncio as aioredis
    host, port = args.target.rsplit(":", 1)
    r = aioredis.Redis(host=host, port=int(port), max_connections=args.concurrency)

    async def op(i: int) -> int:
        pipe = r.pipeline(transaction=False)
        for k in range(PIPELINE // 2):
            pipe.set(f"k{i % 1000}:{k}", b"v" * 64)
            pipe.get(f"k{i % 1000}:{k}")
        answers = await pipe.execute()
        if len(answers) != PIPELINE:
            raise RuntimeError("short pipeline answer")
        return 1
    return op, r.aclose


async def _echo_checked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        lines: Iterable[bytes]) -> None:
    """Send each line and check the echo comes back unchanged."""
    for line in lines:
        writer.write(line)
        if await reader.readline() != line:
            raise RuntimeError("bad echo")


@client("rawhttp")
async def rawhttp_client(args: argparse.Namespace) -> tuple[Op, Callable[[], Awaitable[None]]]:
    host, port = args.target.rsplit(":", 1)
    request = b"GET / HTTP/1.1\r\nHost: %s\r\n\r\n" % host.encode()
    idle = [await asyncio.open_connection(host, int(port)) for _ in range(args.concurrency)]

    async def op(i: int) -> int:
        reader, writer = idle.pop()  # one worker per connection: never empty
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        lengths = [line for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")]
        if not head.startswith(b"HTTP/1.1 200") or not lengths:
            raise RuntimeError(f"unexpected response head {head[:200]!r}")
        await reader.readexactly(int(lengths[0].split(b":")[1]))
        idle.append((reader, writer))
        return 1

    async def close() -> None:
        for _, writer in idle:
            writer.close()
    return op, close


@client("churn")
async def churn_client(args: argparse.Namespace) -> tuple[Op, Callable[[], Awaitable[None]]]:
    host, port = args.target.rsplit(":", 1)

    async def op(i: int) -> int:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            await _echo_checked(reader, writer, (b"message %d %d\n" % (i, k) for k in range(3)))
        finally:
            writer.close()
            await writer.wait_closed()
        return 1

    async def nothing() -> None:
        pass
    return op, nothing


CONN_10K = 10_000       # connections open at once
CONN_10K_MESSAGES = 20  # checked round trips on each
CONN_10K_CONNECTING = 1_000  # connects in flight (the server's backlog is 4096)


@client("conn10k")
async def conn10k_client(args: argparse.Namespace) -> tuple[Op, Callable[[], Awaitable[None]]]:
    """One operation opens CONN_10K connections (asyncio streams), holds them
    all open, then each exchanges CONN_10K_MESSAGES checked lines, all at
    once, and closes; it counts as CONN_10K operations (connections)."""
    host, port = args.target.rsplit(":", 1)

    async def op(i: int) -> int:
        connecting = asyncio.Semaphore(CONN_10K_CONNECTING)
        all_open = asyncio.Event()
        opened = 0

        async def one(c: int) -> None:
            nonlocal opened
            async with connecting:
                reader, writer = await asyncio.open_connection(host, int(port))
            opened += 1
            if opened == CONN_10K:
                all_open.set()
            try:
                await all_open.wait()
                await _echo_checked(reader, writer,
                                    (b"conn %d message %d\n" % (c, k) for k in range(CONN_10K_MESSAGES)))
            finally:
                writer.close()
                await writer.wait_closed()
        await asyncio.gather(*(one(c) for c in range(CONN_10K)))
        return CONN_10K

    async def nothing() -> None:
        pass
    return op, nothing


@client("websockets")
async def websockets_client(args: argparse.Namespace) -> tuple[Op, Callable[[], Awaitable[None]]]:
    from websockets.asyncio.client import connect
    conns = [await connect(f"ws://{args.target}/", compression=None, ping_interval=None)
             for _ in range(args.concurrency)]
    free = asyncio.Queue[Any]()
    for ws in conns:
        free.put_nowait(ws)
    message = b"m" * 1024

    async def op(i: int) -> int:
        ws = free.get_nowait()  # as many workers as connections: never empty
        try:
            await ws.send(message)
            if await ws.recv() != message:
                raise RuntimeError("bad echo")
        finally:
            free.put_nowait(ws)
        return 1

    async def close() -> None:
        await asyncio.gather(*(ws.close() for ws in conns))
    return op, close


def warmup_ops(requests: int, concurrency: int) -> int:
    """Operations measure() runs untimed before the timed `requests`."""
    return max(concurrency, requests // 10)


async def drive(op: Op, total: int, concurrency: int, deadline: float | None) -> tuple[int, list[float]]:
    """`concurrency` workers run op until `total` are done (or the deadline passes)."""
    issued = 0
    done = 0
    latencies: list[float] = []

    async def worker() -> None:
        nonlocal issued, done
        while issued < total and (deadline is None or time.perf_counter() < deadline):
            i = issued
            issued += 1
            t0 = time.perf_counter()
            n = await op(i)  # (not `done += await ...`: that reads `done` before the await)
            latencies.append(time.perf_counter() - t0)
            done += n
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done, latencies


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    op, close = await CLIENTS[args.kind](args)
    try:
        warm = warmup_ops(args.requests, args.concurrency)
        await drive(op, warm, args.concurrency, time.perf_counter() + 2.0 if args.duration else None)
        emit({"phase": "start"})  # the runner samples the server's CPU at both edges
        cpu0, t0 = self_cpu_seconds(), time.perf_counter()
        deadline = t0 + args.duration if args.duration else None
        ops, lat = await drive(op, 1 << 62 if args.duration else args.requests, args.concurrency,
                               deadline)
        seconds, cpu = time.perf_counter() - t0, self_cpu_seconds() - cpu0
        emit({"phase": "stop"})
    finally:
        await close()
    lat.sort()
    return {"ops": ops, "seconds": seconds, "cpu": cpu, "p99_ms": percentile(lat, 0.99) * 1e3}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("kind", choices=sorted(CLIENTS))
    ap.add_argument("--loop", choices=LOOPS, required=True)
    ap.add_argument("--target", required=True, help="host:port, or a DSN for asyncpg")
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--concurrency", type=int, default=100)
    ap.add_argument("--duration", type=float, default=0.0,
                    help="run for this many seconds instead of --requests operations")
    args = ap.parse_args()
    raise_nofile()
    emit(run_on(args.loop, measure(args)))


if __name__ == "__main__":
    main()
