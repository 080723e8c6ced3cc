"""500 concurrent subprocesses (asyncio.create_subprocess_exec): echo, true, and a
shell exiting with a chosen status; every exit code and output checked."""
from __future__ import annotations

import asyncio

from ..harness import Context


def command(i: int) -> tuple[list[str], int, bytes]:
    """(argv, expected exit status, expected stdout) of subprocess i."""
    kind = i % 3
    if kind == 0:
        return ["echo", f"stress {i}"], 0, b"stress %d\n" % i
    if kind == 1:
        return ["true"], 0, b""
    return ["sh", "-c", f"echo e{i}; exit {i % 7}"], i % 7, b"e%d\n" % i


async def one(ctx: Context, i: int) -> None:
    argv, status, output = command(i)
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    ctx.check(proc.returncode == status, f"{argv}: exit status {proc.returncode}, not {status}")
    ctx.check(out == output, f"{argv}: output {out!r}, not {output!r}")


async def main(ctx: Context) -> None:
    n = ctx.size(100, 500)
    async with asyncio.timeout(120):
        await asyncio.gather(*(one(ctx, i) for i in range(n)))
    ctx.note(f"{n} concurrent subprocesses")
