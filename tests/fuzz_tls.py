"""Random-input fuzzing of pyasync_c's native TLS layer (csrc/loop/tls_transport.c).

    python tests/fuzz_tls.py [--seeds N | --seconds T] [--first S] [--loop pyasync_c|stdlib]

--seconds T runs consecutive seeds until T seconds have passed (at least one;
`make asan` runs it for 60 s under the sanitizers).

Per seed, on one loop, a few TLS connections (client and server in this
process) where both application protocols act at random on every callback
and from timers: write/writelines of random sizes and types, pause/resume
reading, set_write_buffer_limits, close, abort, get_extra_info, odd
arguments; a third kind of peer speaks raw bytes over plain TCP (truncated or
garbage records, early EOF) to a TLS server.  Invariants checked (with the
stdlib loop as a control): nothing crashes; every protocol that got
connection_made gets exactly one connection_lost, after it; nothing comes
after connection_lost; no fd is left open.  Connections still open after
6 s are counted and aborted, not failed: asyncio's SSL layer can legitimately
stay up forever (close() waits for a peer that stopped reading, the app never
resumes reading...), and the stdlib loop shows the same seeds stuck; compare
the "stuck" lists of both loops.  Exceptions from calls with odd arguments are
expected.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import socket
import ssl
import sys
import tempfile
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pyasync_c  # noqa: E402
from net_util import make_self_signed  # noqa: E402

STUCK: list[str] = []
ODD_DATA = [b"", b"x", bytearray(b"yy"), memoryview(b"zzz"), "text", None, 42, [b"a"]]


class FuzzProtocol(asyncio.Protocol):
    """Acts at random on each callback; records the order of callbacks."""

    def __init__(self, rng: random.Random, errors: list[str], name: str) -> None:
        self.rng, self.errors, self.name = rng, errors, name
        self.transport = None
        self.made = self.lost = 0
        self.history: list[str] = []
        self.done = asyncio.get_running_loop().create_future()

    def check(self, what: str) -> None:
        if self.lost:
            self.errors.append(f"{self.name}: {what} after connection_lost")

    def act(self) -> None:
        tr, rng = self.transport, self.rng
        if tr is None:
            return
        choice = rng.randrange(14)
        self.history.append(f"act{choice}")
        try:
            if choice < 4:
                tr.write(os.urandom(rng.choice([1, 100, 5000, 70000, 300000])))
            elif choice == 4:
                tr.writelines([os.urandom(rng.randrange(1, 3000)) for _ in range(rng.randrange(4))])
            elif choice == 5:
                tr.write(rng.choice(ODD_DATA))
            elif choice == 6:
                tr.pause_reading()
                asyncio.get_running_loop().call_later(rng.random() * 0.05, self.resume)
            elif choice == 7:
                tr.set_write_buffer_limits(rng.choice([None, 0, 1, 1000, 100000]),
                                           rng.choice([None, 0, 10]))
            elif choice == 8:
                tr.get_extra_info(rng.choice(["ssl_object", "peercert", "cipher", "socket",
                                              "peername", "nope", None]))
                tr.get_write_buffer_size()
                tr.is_reading()
            elif choice == 9 and rng.random() < 0.3:
                tr.close()
            elif choice == 10 and rng.random() < 0.1:
                tr.abort()
            elif choice == 11:
                tr.write_eof()
            elif choice == 12:
                # (not 0: asyncio's SSL layer then pauses the socket for good)
                tr.set_read_buffer_limits(rng.choice([None, 5000]))
        except (TypeError, ValueError, NotImplementedError, RuntimeError, AttributeError):
            pass

    def resume(self) -> None:
        try:
            if self.transport is not None and not self.lost:
                self.transport.resume_reading()
        except RuntimeError:
            pass

    def connection_made(self, transport) -> None:
        self.history.append("made")
        self.made += 1
        if self.made > 1:
            self.errors.append(f"{self.name}: connection_made twice")
        self.transport = transport
        self.act()

    def data_received(self, data: bytes) -> None:
        self.history.append("data")
        self.check("data_received")
        if not self.made:
            self.errors.append(f"{self.name}: data before connection_made")
        if self.rng.random() < 0.3:
            self.act()

    def eof_received(self):
        self.history.append("eof")
        self.check("eof_received")
        self.act()
        return self.rng.choice([None, True, False])

    def pause_writing(self) -> None:
        self.history.append("pause_writing")
        self.check("pause_writing")

    def resume_writing(self) -> None:
        self.history.append("resume_writing")
        self.check("resume_writing")
        self.act()

    def connection_lost(self, exc) -> None:
        self.lost += 1
        if self.lost > 1:
            self.errors.append(f"{self.name}: connection_lost twice")
        if not self.done.done():
            self.done.set_result(exc)


async def raw_peer(port: int, rng: random.Random) -> None:
    """Plain TCP to the TLS server: garbage, a truncated ClientHello, or nothing."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, ("127.0.0.1", port))
        kind = rng.randrange(4)
        if kind == 0:
            await loop.sock_sendall(sock, os.urandom(rng.randrange(1, 3000)))
        elif kind == 1:
            await loop.sock_sendall(sock, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        elif kind == 2:
            await loop.sock_sendall(sock, b"\x17\x03\x03\xff\xff" + os.urandom(100))
        await asyncio.sleep(rng.random() * 0.05)
    except OSError:
        pass
    finally:
        sock.close()


async def one_seed(seed: int, sctx: ssl.SSLContext, cctx: ssl.SSLContext) -> list[str]:
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda loop, context: None)
    errors: list[str] = []
    servers: list[FuzzProtocol] = []
    stuck = STUCK

    def make_server() -> FuzzProtocol:
        proto = FuzzProtocol(rng, errors, f"server{len(servers)}")
        servers.append(proto)
        return proto

    server = await loop.create_server(make_server, "127.0.0.1", 0, ssl=sctx,
                                      ssl_handshake_timeout=2, ssl_shutdown_timeout=1)
    port = server.sockets[0].getsockname()[1]
    clients: list[FuzzProtocol] = []

    async def client(i: int) -> None:
        proto = FuzzProtocol(rng, errors, f"client{i}")
        clients.append(proto)
        try:
            tr, _ = await loop.create_connection(
                lambda: proto, "127.0.0.1", port, ssl=cctx, server_hostname="localhost",
                ssl_handshake_timeout=2, ssl_shutdown_timeout=1)
        except (OSError, asyncio.TimeoutError, ssl.SSLError):
            return
        for _ in range(rng.randrange(1, 8)):
            await asyncio.sleep(rng.random() * 0.02)
            proto.act()
        if not proto.lost:
            tr.close()

    tasks = [client(i) for i in range(rng.randrange(1, 4))]
    tasks += [raw_peer(port, rng) for _ in range(rng.randrange(0, 3))]
    await asyncio.gather(*tasks, return_exceptions=True)
    for proto in clients + servers:
        if proto.made:
            try:
                await asyncio.wait_for(asyncio.shield(proto.done), 6)
            except asyncio.TimeoutError:
                stuck.append(f"seed {seed} {proto.name}")
                if os.environ.get("FUZZ_VERBOSE"):
                    print(proto.name, proto.history, proto.transport,
                          getattr(proto.transport, "_ssl_protocol", None) and
                          getattr(proto.transport._ssl_protocol, "_state", None))
                if proto.transport is not None:
                    proto.transport.abort()
    server.close()
    await server.wait_closed()
    await asyncio.sleep(0.02)
    return errors


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=None,
                    help="run seeds from --first on until this many seconds passed")
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--loop", choices=["pyasync_c", "stdlib"], default="pyasync_c")
    args = ap.parse_args()
    import pathlib
    files = make_self_signed(pathlib.Path(tempfile.mkdtemp(prefix="fuzz-tls-")))
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(files.cert, files.key)
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cctx.load_verify_locations(files.cert)
    factory = pyasync_c.new_event_loop if args.loop == "pyasync_c" else asyncio.new_event_loop
    warnings.simplefilter("ignore")
    import logging
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    failures = 0
    with asyncio.Runner(loop_factory=factory) as runner:  # process-wide libuv fds
        runner.run(asyncio.sleep(0))
    fds_before = len(os.listdir("/proc/self/fd"))
    import itertools
    import time
    deadline = time.monotonic() + args.seconds if args.seconds is not None else None
    seeds = (itertools.count(args.first) if deadline is not None
             else range(args.first, args.first + args.seeds))
    done = 0
    for seed in seeds:
        if deadline is not None and done and time.monotonic() >= deadline:
            break
        done += 1
        with asyncio.Runner(loop_factory=factory) as runner:
            errors = runner.run(one_seed(seed, sctx, cctx))
        gc.collect()
        if errors:
            failures += 1
            print(f"seed {seed}: " + "; ".join(sorted(set(errors))))
    leaked = len(os.listdir("/proc/self/fd")) - fds_before
    print(f"{args.loop}: {done} seeds, {failures} with invariant violations, fds leaked: "
          f"{leaked}; still open after 6 s (aborted): {STUCK or 'none'}")
    return 1 if failures or leaked > 0 else 0


if __name__ == "__main__":
    sys.exit(main())
