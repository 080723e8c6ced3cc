"""What a scenario sees: the loop factories, process measurements, ``Context``
(checks, notes, expected exception-handler contexts) and ``Scenario``.

A scenario is ``async def main(ctx: Context) -> None``, run once per round on a
fresh loop of the kind under test (``Context.run_round``).  It raises
``Failure`` (through ``ctx.check``) when an outcome is wrong; anything it does not
expect that reaches the loop's exception handler fails the round too.
"""
from __future__ import annotations

import asyncio
import dataclasses
import os
import resource
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

LOOP_NAMES = ("pyasync_c", "asyncio", "uvloop")

HandlerContext = dict[str, Any]
T = TypeVar("T", int, float)


class Failure(Exception):
    """A check of a scenario did not hold."""


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """A zero-argument factory of a fresh loop of that kind."""
    if name == "pyasync_c":
        import pyasync_c
        return pyasync_c.new_event_loop
    if name == "asyncio":
        return asyncio.SelectorEventLoop
    if name == "uvloop":
        import uvloop
        return uvloop.new_event_loop
    raise ValueError(f"unknown loop {name!r} (one of {', '.join(LOOP_NAMES)})")


def open_fds() -> dict[int, str]:
    """This process's open fds and what each points to (/proc/self/fd)."""
    fds: dict[int, str] = {}
    for entry in os.listdir("/proc/self/fd"):
        try:
            fds[int(entry)] = os.readlink(f"/proc/self/fd/{entry}")
        except OSError:  # the fd listdir itself used, gone by now
            pass
    return fds


def memory_kib() -> tuple[int, int]:
    """(VmRSS, VmHWM) of this process in KiB: resident now, and the peak so far."""
    values: dict[str, int] = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
    return values["VmRSS"], values["VmHWM"]


def raise_nofile_limit() -> int:
    """Raise the RLIMIT_NOFILE soft limit to the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@dataclasses.dataclass
class Context:
    """One scenario on one loop kind, across its rounds."""
    loop_name: str
    short: bool
    rss_checks: bool = True        # off under ASan (its quarantine keeps freed memory resident)
    soak_seconds: float = 600.0
    round: int = 0
    notes: list[str] = dataclasses.field(default_factory=list)
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    handler_contexts: list[HandlerContext] = dataclasses.field(default_factory=list)

    @property
    def factory(self) -> Callable[[], asyncio.AbstractEventLoop]:
        return loop_factory(self.loop_name)

    def size(self, short: T, full: T) -> T:
        """A count (or duration) for this mode."""
        return short if self.short else full

    def check(self, condition: object, message: str) -> None:
        if not condition:
            raise Failure(message)

    def note(self, message: str) -> None:
        """A line for the report, from the first round (the others repeat it)."""
        if self.round == 0 and message not in self.notes:
            self.notes.append(message)

    def take_handler_contexts(self, expected: Callable[[HandlerContext], bool]
                              ) -> list[HandlerContext]:
        """Remove and return the exception-handler contexts this scenario expects."""
        taken = [c for c in self.handler_contexts if expected(c)]
        self.handler_contexts[:] = [c for c in self.handler_contexts if not expected(c)]
        return taken

    def run_round(self, main: Callable[[Context], Coroutine[Any, Any, None]]) -> None:
        """Run ``main(self)`` on a fresh loop (asyncio.Runner, as asyncio.run does);
        fail on exception-handler contexts it did not take."""
        self.handler_contexts = []

        def record(loop: asyncio.AbstractEventLoop, context: HandlerContext) -> None:
            self.handler_contexts.append(context)

        with asyncio.Runner(loop_factory=self.factory) as runner:
            runner.get_loop().set_exception_handler(record)
            runner.run(main(self))
        if self.handler_contexts:
            shown = "; ".join(describe_context(c) for c in self.handler_contexts[:3])
            raise Failure(f"{len(self.handler_contexts)} unexpected exception-handler "
                          f"call(s): {shown}")


def describe_context(context: HandlerContext) -> str:
    exc = context.get("exception")
    return f"{context.get('message')!r}" + (f" ({exc!r})" if exc is not None else "")


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    main: Callable[[Context], Coroutine[Any, Any, None]]
    timeout: float = 90.0          # seconds, full mode (the short mode gets half)
    rounds: int = 4                # RSS is compared across rounds (the first is warm-up)
    default: bool = True           # part of `make stress` (the soak is not)
