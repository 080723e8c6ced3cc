"""TLS workloads beyond tls_pingpong (workloads_loop.py): bulk transfer, new
connections per second; and, run as a script, RSS per idle TLS connection and
a uvloop/pyasync_c comparison by CPU time per unit (steadier than wall-clock
rates on a loaded machine):

    python benchmarks/workloads_tls.py idle-memory stdlib|uvloop|pyasync_c [COUNT]
    python benchmarks/workloads_tls.py compare tls_pingpong|tls_bulk|tls_connect N ROUNDS

Each ``make(prims, n)`` does its untimed set-up and returns the timed
coroutine, which returns the number of units it moved.
"""
from __future__ import annotations

import asyncio
import os
from typing import Any

from harness import Body, Prims, loop_factory, workload
from workloads_loop import EchoProtocol, _self_signed_contexts

CHUNK = 64 * 1024


@workload("loop", "MiB", n=256)
def tls_bulk(prims: Prims, n: int) -> Body:
    """TLS bulk transfer over loopback in one process: a client writes n MiB in
    64 KiB writes (honouring pause_writing), the server counts them and answers
    one byte at the end (asyncio's SSLProtocol / uvloop's / pyasync_c's)."""
    server_ctx, client_ctx = _self_signed_contexts()
    total = n * 1024 * 1024
    chunk = b"b" * CHUNK

    class Sink(asyncio.Protocol):
        def __init__(self) -> None:
            self.received = 0

        def connection_made(self, transport: Any) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.received += len(data)
            if self.received >= total:
                self.transport.write(b"k")

    class Client(asyncio.Protocol):
        def __init__(self, done: asyncio.Future[None]) -> None:
            self.done = done
            self.resumed: asyncio.Future[None] | None = None

        def connection_made(self, transport: Any) -> None:
            self.transport = transport

        def pause_writing(self) -> None:
            self.resumed = asyncio.get_running_loop().create_future()

        def resume_writing(self) -> None:
            if self.resumed is not None:
                self.resumed.set_result(None)
                self.resumed = None

        def data_received(self, data: bytes) -> None:
            if not self.done.done():
                self.done.set_result(None)

    async def body() -> int:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Sink, "127.0.0.1", 0, ssl=server_ctx)
        done: asyncio.Future[None] = loop.create_future()
        transport, client = await loop.create_connection(
            lambda: Client(done), "127.0.0.1", server.sockets[0].getsockname()[1],
            ssl=client_ctx, server_hostname="localhost")
        try:
            sent = 0
            while sent < total:
                transport.write(chunk)
                sent += CHUNK
                if client.resumed is not None:
                    await client.resumed
            await done
            return n
        finally:
            transport.close()
            server.close()

    return body()


@workload("loop", "connections", n=500)
def tls_connect(prims: Prims, n: int) -> Body:
    """New TLS connections over loopback in one process, one at a time: connect,
    handshake (RSA 2048, TLS 1.3), one 100-byte exchange, close (close_notify
    both ways)."""
    server_ctx, client_ctx = _self_signed_contexts()
    message = b"c" * 100

    class Client(asyncio.Protocol):
        def __init__(self) -> None:
            self.got = 0
            self.lost = asyncio.get_running_loop().create_future()

        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            transport.write(message)

        def data_received(self, data: bytes) -> None:
            self.got += len(data)
            if self.got >= len(message):
                self.transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            self.lost.set_result(None)

    async def body() -> int:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(EchoProtocol, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        try:
            for _ in range(n):
                _, client = await loop.create_connection(
                    Client, "127.0.0.1", port, ssl=client_ctx, server_hostname="localhost")
                await client.lost
            return n
        finally:
            server.close()

    return body()


def idle_memory(loop_name: str, count: int = 1000) -> float:
    """KiB of RSS per idle TLS connection (both ends in this process, so per
    pair of ends / 2): `count` connections opened, one exchange each, then held
    idle while RSS is measured against the same process before opening them."""
    import gc

    def rss_kib() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)

    server_ctx, client_ctx = _self_signed_contexts()

    class Client(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            self.got = asyncio.get_running_loop().create_future()
            transport.write(b"hello")

        def data_received(self, data: bytes) -> None:
            if not self.got.done():
                self.got.set_result(None)

    async def main() -> float:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(EchoProtocol, "127.0.0.1", 0, ssl=server_ctx, backlog=count)
        port = server.sockets[0].getsockname()[1]

        async def one() -> Any:
            _, client = await loop.create_connection(
                Client, "127.0.0.1", port, ssl=client_ctx, server_hostname="localhost")
            await client.got
            return client

        # warm-up: allocator arenas, caches, the loop's buffers
        warm = [await one() for _ in range(50)]
        for c in warm:
            c.transport.close()
        await asyncio.sleep(0.5)
        gc.collect()
        before = rss_kib()
        clients = []
        for start in range(0, count, 100):
            clients += await asyncio.gather(*(one() for _ in range(min(100, count - start))))
        await asyncio.sleep(0.5)
        gc.collect()
        after = rss_kib()
        for c in clients:
            c.transport.close()
        await asyncio.sleep(0.5)
        server.close()
        return (after - before) / (2 * count)

    with asyncio.Runner(loop_factory=_loop_factory(loop_name)) as runner:
        return runner.run(main())


def _loop_factory(loop_name: str) -> Any:
    # harness's: pyasync_c from this repository's in-place build (the repository
    # root goes on sys.path), so the script needs no PYTHONPATH
    return loop_factory(loop_name)


def _timed_runs(loop_name: str, name: str, n: int, runs: int) -> None:
    """Child of `compare`: one warm-up and `runs` timed runs of a workload on one
    loop; prints rate, user and system CPU seconds per unit, one line per run."""
    import resource
    import time
    import workloads_loop
    make = {"tls_pingpong": workloads_loop.tls_pingpong, "tls_bulk": tls_bulk,
            "tls_connect": tls_connect}[name]
    loop = _loop_factory(loop_name)()
    loop.run_until_complete(make(None, max(1, n // 10)))  # type: ignore[arg-type]
    for _ in range(runs):
        body = make(None, n)  # type: ignore[arg-type]
        start, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        loop.run_until_complete(body)
        wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
        print(n / wall, (after.ru_utime - before.ru_utime) / n,
              (after.ru_stime - before.ru_stime) / n, flush=True)
    loop.close()


def compare(name: str, n: int, rounds: int) -> None:
    """uvloop against pyasync_c on one TLS workload, alternating fresh processes
    (`rounds` each, 2 timed runs per process): medians of the rate and of the
    CPU time per unit. On a loaded machine the CPU time is the steadier figure."""
    import statistics
    import subprocess
    import sys
    results: dict[str, list[list[float]]] = {"uvloop": [], "pyasync_c": []}
    for r in range(rounds):
        for loop_name in (("uvloop", "pyasync_c") if r % 2 == 0 else ("pyasync_c", "uvloop")):
            out = subprocess.run([sys.executable, __file__, "_runs", loop_name, name, str(n), "2"],
                                 capture_output=True, text=True, check=True).stdout
            results[loop_name] += [[float(x) for x in line.split()] for line in out.splitlines()]
    med = {k: [statistics.median(run[i] for run in v) for i in range(3)]
           for k, v in results.items()}
    for k, (rate, user, system) in med.items():
        print(f"{name} {k:9}: median {rate:.0f}/s, user {user * 1e6:.2f} us, "
              f"system {system * 1e6:.2f} us per unit ({len(results[k])} runs)")
    u, p = med["uvloop"], med["pyasync_c"]
    print(f"{name} pyasync_c/uvloop: rate {p[0] / u[0]:.2f}x, "
          f"CPU per unit {(u[1] + u[2]) / (p[1] + p[2]):.2f}x less")


if __name__ == "__main__":
    # python benchmarks/workloads_tls.py idle-memory LOOP [COUNT]
    # python benchmarks/workloads_tls.py compare tls_pingpong|tls_bulk|tls_connect N ROUNDS
    import resource
    import sys
    if len(sys.argv) >= 2 and sys.argv[1] == "_runs":
        _timed_runs(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
        sys.exit(0)
    if len(sys.argv) == 5 and sys.argv[1] == "compare":
        compare(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        sys.exit(0)
    if len(sys.argv) < 3 or sys.argv[1] != "idle-memory":
        sys.exit("usage: workloads_tls.py idle-memory stdlib|uvloop|pyasync_c [COUNT]\n"
                 "       workloads_tls.py compare tls_pingpong|tls_bulk|tls_connect N ROUNDS")
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * count + 256)), hard))
    print(f"{sys.argv[2]}: {idle_memory(sys.argv[2], count):.1f} KiB per idle TLS connection end")
