"""EMFILE while serving, and recovery.

A helper process (its own fd table) holds FLOOD connections to the server.  With
this process's RLIMIT_NOFILE soft limit lowered to a few fds above those in use,
the server can accept only a handful: accept() fails with EMFILE.  The loop must
survive that (asyncio reports it to the exception handler and retries after
ACCEPT_RETRY_DELAY; such reports are expected and counted).  With the limit
restored, every flooded connection must be accepted and echo correctly, and a
new client too.
"""
from __future__ import annotations

import asyncio
import errno
import resource
import sys

from ..common import echo_server, stream_echo_once, wait_until
from ..harness import Context, HandlerContext, open_fds

HEADROOM = 8  # fds left free under the lowered limit

FLOOD_SCRIPT = r"""
import socket, struct, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
sys.stdin.readline()
socks = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(n)]
print("connected", flush=True)
sys.stdin.readline()
for i, s in enumerate(socks):
    s.sendall(b"%06d\n" % i)
bad = 0
for i, s in enumerate(socks):
    want, got = b"%06d\n" % i, b""
    while len(got) < len(want):
        data = s.recv(len(want) - len(got))
        if not data:
            break
        got += data
    bad += got != want
for s in socks:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
print("bad", bad, flush=True)
"""


def is_accept_resource_error(context: HandlerContext) -> bool:
    exc = context.get("exception")
    return isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE)


async def main(ctx: Context) -> None:
    flood = ctx.size(100, 300)
    server, port, stats = await echo_server(backlog=flood + 10)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", FLOOD_SCRIPT, str(port), str(flood),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowered = max(open_fds()) + 1 + HEADROOM
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))
    try:
        proc.stdin.write(b"connect\n")
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        ctx.check(line == b"connected\n", f"flood helper: {line!r}")
        await asyncio.sleep(0.5)  # accept attempts run into the limit meanwhile
        accepted_while_limited = stats.opened
        ctx.check(accepted_while_limited < flood,
                  f"all {flood} accepted under a limit of {lowered} fds: no EMFILE happened")
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    reports = len(ctx.take_handler_contexts(is_accept_resource_error))
    proc.stdin.write(b"go\n")
    line = await asyncio.wait_for(proc.stdout.readline(), 60)
    ctx.check(line == b"bad 0\n", f"flood helper after recovery: {line!r} "
              f"(accepted {stats.opened} of {flood})")
    ctx.check(await asyncio.wait_for(proc.wait(), 10) == 0, f"flood helper exit {proc.returncode}")
    ctx.check(stats.opened == flood, f"accepted {stats.opened} of {flood} after recovery")
    reports += len(ctx.take_handler_contexts(is_accept_resource_error))
    ctx.note(f"{accepted_while_limited} of {flood} accepted under the lowered limit; "
             f"{reports} EMFILE report(s) to the exception handler")
    data = b"after EMFILE|" * 100
    ctx.check(await asyncio.wait_for(stream_echo_once(port, data), 10) == data,
              "a new client's echo differs after recovery")
    await wait_until(lambda: stats.live == 0, 10, "flooded connections to close")
    server.close()
    await server.wait_closed()
