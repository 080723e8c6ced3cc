"""pyasync_c: a libuv-backed asyncio event loop in C, with native primitives.

Select the loop in any of the usual ways::

    pyasync_c.run(main())                                   # like asyncio.run
    asyncio.run(main(), loop_factory=pyasync_c.new_event_loop)  # 3.12+
    asyncio.Runner(loop_factory=pyasync_c.new_event_loop)
    asyncio.set_event_loop_policy(pyasync_c.EventLoopPolicy())  # 3.11-3.13
    pyasync_c.install()                                     # policy + C primitives
    python -m pyasync_c script.py [args...]                 # no code change
"""
from __future__ import annotations

import asyncio
import sys
from typing import Any, Coroutine, TypeVar

from ._loop import Handle, TimerHandle, libuv_version
from .loop import Loop
from ._observe import log_stats_every, watch_blocking

__all__ = [
    "Loop", "Handle", "TimerHandle", "new_event_loop", "run", "install", "EventLoopPolicy",
    "libuv_version", "Lock", "Event", "Semaphore", "BoundedSemaphore", "Queue",
    "LifoQueue", "PriorityQueue", "gather", "sleep", "PRIMITIVE_NAMES",
    "watch_blocking", "log_stats_every",
]
__version__ = "0.1.0"

_T = TypeVar("_T")

#: The asyncio names that install(primitives=True) replaces with the C versions.
PRIMITIVE_NAMES = ("Lock", "Event", "Semaphore", "BoundedSemaphore",
                   "Queue", "LifoQueue", "PriorityQueue", "gather", "sleep")


def new_event_loop() -> Loop:
    """Return a new pyasync_c event loop (a zero-argument loop factory)."""
    return Loop()


def run(main: Coroutine[Any, Any, _T], *, debug: bool | None = None) -> _T:
    """Like asyncio.run(), on a fresh pyasync_c loop."""
    with asyncio.Runner(debug=debug, loop_factory=new_event_loop) as runner:
        return runner.run(main)


def _policy_base() -> type:
    if sys.version_info < (3, 14):
        # The Unix default policy: keeps get_child_watcher()/set_child_watcher().
        return asyncio.DefaultEventLoopPolicy
    # Policies are deprecated from 3.14: the private base does not warn.
    return asyncio.events._BaseDefaultEventLoopPolicy  # type: ignore[attr-defined]


_policy_class: type | None = None


def __getattr__(name: str) -> Any:
    # EventLoopPolicy is built on first use so importing pyasync_c never
    # touches asyncio's (deprecated on 3.14+) policy machinery.
    global _policy_class
    if name == "EventLoopPolicy":
        if _policy_class is None:
            _policy_class = type("EventLoopPolicy", (_policy_base(),), {
                "__doc__": "asyncio event loop policy whose loops are pyasync_c loops.",
                "__module__": __name__,
                "_loop_factory": staticmethod(new_event_loop),
            })
        return _policy_class
    if name in PRIMITIVE_NAMES:
        from . import _primitives
        try:
            return getattr(_primitives, name)
        except AttributeError:
            pass
    raise AttributeError(f"module 'pyasync_c' has no attribute {name!r}")


def install(*, primitives: bool = True) -> None:
    """Make asyncio use pyasync_c: its loop for asyncio.run()/new_event_loop(),
    and (primitives=True) the C Lock/Event/Semaphore/BoundedSemaphore/Queue/
    LifoQueue/PriorityQueue/gather/sleep in the asyncio namespace.

    The C primitives are not subclasses of asyncio's classes, so
    ``isinstance(x, asyncio.Queue)`` checks written against the stdlib class
    before install() see different objects; pass primitives=False to keep them.
    """
    if sys.version_info >= (3, 14):
        # Policies are deprecated: point asyncio's default factory at ours.
        asyncio.events.new_event_loop = new_event_loop  # type: ignore[assignment]
        asyncio.new_event_loop = new_event_loop  # type: ignore[assignment]
    else:
        asyncio.set_event_loop_policy(__getattr__("EventLoopPolicy")())
    if primitives:
        install_primitives()


def install_primitives() -> list[str]:
    """Put the C primitives that are available into asyncio's namespace;
    returns the names replaced."""
    from . import _primitives
    replaced = []
    for name in PRIMITIVE_NAMES:
        native = getattr(_primitives, name, None)
        if native is None:
            continue
        setattr(asyncio, name, native)
        module = asyncio.tasks if name in ("gather", "sleep") else (
            asyncio.queues if "Queue" in name else asyncio.locks)
        setattr(module, name, native)
        replaced.append(name)
    return replaced
