"""Event-loop workloads: run on the stdlib, uvloop and pyasync_c loops with
asyncio's own primitives (``prims`` is unused here).

Each ``make(prims, n)`` does its untimed set-up and returns the timed
coroutine, which returns the number of operations it performed.
"""
from __future__ import annotations

import asyncio
import random
import threading
from typing import Any, Callable

from harness import Body, Prims, per_unit, run_tasks, workload

SEED = 20240601


async def gather_rounds(gather: Callable[..., Any], n: int, width: int = 1000) -> int:
    """``await gather(*(tiny() for _ in range(width)))`` repeated; returns coroutines run.
    Shared with the primitives group (gather_coros)."""

    async def tiny() -> None:
        return None

    rounds = per_unit(n, width)
    for _ in range(rounds):
        await gather(*(tiny() for _ in range(width)))
    return rounds * width


async def _count_callbacks(n: int, schedule: Callable[[Callable[[], None]], object],
                           reschedule: bool) -> int:
    """Wait until a callback has run n times. ``schedule(cb)`` posts it once;
    with ``reschedule`` each run posts the next one (a sequential chain),
    otherwise the caller of ``schedule`` posts all n itself."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    remaining = n

    def callback() -> None:
        nonlocal remaining
        remaining -= 1
        if remaining == 0:
            done.set_result(None)
        elif reschedule:
            schedule(callback)

    schedule(callback)
    await done
    return n


@workload("loop", "callbacks", n=600_000)
def call_soon_chain(prims: Prims, n: int) -> Body:
    """A callback re-scheduling itself with loop.call_soon, n times in sequence."""

    async def body() -> int:
        loop = asyncio.get_running_loop()
        return await _count_callbacks(n, loop.call_soon, reschedule=True)

    return body()


@workload("loop", "switches", n=300_000)
def sleep0_pingpong(prims: Prims, n: int) -> Body:
    """100 tasks each looping ``await asyncio.sleep(0)``."""
    tasks = 100
    per_task = per_unit(n, tasks)

    async def spin(_: int) -> None:
        for _ in range(per_task):
            await asyncio.sleep(0)

    async def body() -> int:
        await run_tasks(tasks, spin)
        return tasks * per_task

    return body()


@workload("loop", "tasks", n=100_000)
def task_churn(prims: Prims, n: int) -> Body:
    """``await asyncio.gather(*(tiny() for _ in range(1000)))`` repeated."""
    return gather_rounds(asyncio.gather, n)


@workload("loop", "timers", n=200_000)
def timers(prims: Prims, n: int) -> Body:
    """n call_later timers, uniform random delays over 0..50 ms (scaled with n
    below full size), every other one cancelled; run until the rest fired."""
    rng = random.Random(SEED)
    spread = 0.050 * min(1.0, n / 200_000)
    delays = [rng.uniform(0.0, spread) for _ in range(n)]
    expected = n - n // 2

    async def body() -> int:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        fired = 0

        def fire() -> None:
            nonlocal fired
            fired += 1
            if fired == expected:
                done.set_result(None)

        handles = [loop.call_later(d, fire) for d in delays]
        for h in handles[1::2]:
            h.cancel()
        await done
        return n

    return body()


@workload("loop", "sleeps", n=100_000)
def sleep_concurrent(prims: Prims, n: int) -> Body:
    """n concurrent ``asyncio.sleep(d)`` (d uniform over 0..10 ms) gathered."""
    rng = random.Random(SEED)
    delays = [rng.uniform(0.0, 0.010) for _ in range(n)]

    async def body() -> int:
        await asyncio.gather(*(asyncio.sleep(d) for d in delays))
        return n

    return body()


@workload("loop", "callbacks", n=300_000)
def threadsafe(prims: Prims, n: int) -> Body:
    """Another thread posts n callbacks with call_soon_threadsafe as fast as it can."""

    async def body() -> int:
        loop = asyncio.get_running_loop()
        post = loop.call_soon_threadsafe

        def producer(callback: Callable[[], None]) -> None:
            for _ in range(n):
                post(callback)

        def start(callback: Callable[[], None]) -> None:
            threading.Thread(target=producer, args=(callback,), daemon=True).start()

        return await _count_callbacks(n, start, reschedule=False)

    return body()


@workload("loop", "round trips", n=10_000)
def executor(prims: Prims, n: int) -> Body:
    """Sequential ``await loop.run_in_executor(None, f)`` with a trivial f."""

    def trivial() -> None:
        return None

    async def body() -> int:
        loop = asyncio.get_running_loop()
        for _ in range(n):
            await loop.run_in_executor(None, trivial)
        return n

    return body()


def _self_signed_contexts() -> tuple[Any, Any]:
    """(server, client) SSLContexts for a throwaway self-signed localhost cert
    made with the openssl CLI (untimed set-up)."""
    import os
    import ssl
    import subprocess
    import tempfile

    folder = tempfile.mkdtemp(prefix="pyasync_c-bench-tls-")
    cert, key = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", key, "-out", cert], check=True, capture_output=True)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=cert)
    return server, client


class EchoProtocol(asyncio.Protocol):
    """The TLS workloads' server: writes back whatever it receives."""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


@workload("loop", "round trips", n=20_000)
def tls_pingpong(prims: Prims, n: int) -> Body:
    """TLS echo over loopback in one process: a Protocol client and server (asyncio's
    SSLProtocol over each loop's transport; uvloop: its own), 1 KiB, n round trips."""
    server_ctx, client_ctx = _self_signed_contexts()
    message = b"x" * 1024

    class Client(asyncio.Protocol):
        def __init__(self, done: asyncio.Future[int]) -> None:
            self.done, self.count, self.pending = done, 0, 0

        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            transport.write(message)

        def data_received(self, data: bytes) -> None:
            self.pending += len(data)
            if self.pending >= len(message):
                self.pending -= len(message)
                self.count += 1
                if self.count == n:
                    self.done.set_result(n)
                else:
                    self.transport.write(message)

    async def body() -> int:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(EchoProtocol, "127.0.0.1", 0, ssl=server_ctx)
        done: asyncio.Future[int] = loop.create_future()
        transport, _ = await loop.create_connection(
            lambda: Client(done), "127.0.0.1", server.sockets[0].getsockname()[1],
            ssl=client_ctx, server_hostname="localhost")
        try:
            return await done
        finally:
            transport.close()
            server.close()

    return body()
