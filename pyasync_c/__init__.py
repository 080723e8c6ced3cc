"""pyasync_c: a libuv-backed asyncio event loop in C, with native primitives.

Select the loop in any of the usual ways::

    pyasync_c.run(main())                                   # like asyncio.run / uvloop.run
    asyncio.run(main(), loop_factory=pyasync_c.new_event_loop)  # 3.12+
    asyncio.Runner(loop_factory=pyasync_c.new_event_loop)
    asyncio.set_event_loop_policy(pyasync_c.EventLoopPolicy())  # 3.11-3.13
    pyasync_c.install()                                     # policy + C primitives
    python -m pyasync_c script.py [args...]                 # no code change

The C primitives (Lock, Event, Semaphore, BoundedSemaphore, Queue, LifoQueue,
PriorityQueue, gather, sleep) work on any event loop, and need no libuv: they
stay importable even where the loop extension cannot be loaded.
"""
from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING, Any, Callable, Coroutine, TypeVar

from ._version import __version__ as __version__

__all__ = [
    "Loop", "Handle", "TimerHandle", "new_event_loop", "run", "install", "install_primitives",
    "EventLoopPolicy", "libuv_version", "Lock", "Event", "Semaphore", "BoundedSemaphore", "Queue",
    "LifoQueue", "PriorityQueue", "gather", "sleep", "PRIMITIVE_NAMES", "status",
    "watch_blocking", "log_stats_every",
]

_T = TypeVar("_T")

#: The asyncio names that install(primitives=True) replaces with the C versions.
PRIMITIVE_NAMES = ("Lock", "Event", "Semaphore", "BoundedSemaphore",
                   "Queue", "LifoQueue", "PriorityQueue", "gather", "sleep")
_LOOP_NAMES = ("Loop", "Handle", "TimerHandle", "libuv_version", "watch_blocking", "log_stats_every")

# The two extensions are imported independently: _primitives needs no libuv,
# so a missing libuv.so (or an unbuilt _loop) only disables the loop, with a
# clear error when the loop is used (see _unavailable()).
_import_errors: dict[str, ImportError] = {}
try:
    from ._primitives import (  # noqa: F401  (re-exported)
        BoundedSemaphore, Event, LifoQueue, Lock, PriorityQueue, Queue, Semaphore, gather, sleep)
except ImportError as exc:
    _import_errors["_primitives"] = exc
try:
    from ._loop import Handle, TimerHandle, libuv_version  # noqa: F401  (re-exported)
    from .loop import Loop
    from ._observe import log_stats_every, watch_blocking  # noqa: F401  (re-exported)
except ImportError as exc:
    _import_errors["_loop"] = exc


def _unavailable(extension: str) -> ImportError:
    """A clear ImportError for a C extension that failed to import: what is
    missing and how to fix it, chained to the original error."""
    exc = _import_errors[extension]
    cause = str(exc)
    if extension == "_loop":
        what = "pyasync_c's event loop (the C extension pyasync_c._loop) is not available"
        still = ("The C primitives (pyasync_c.Queue, Semaphore, Lock, Event, gather, sleep...) "
                 "do not need it and still work.")
    else:
        what = "pyasync_c's C primitives (pyasync_c._primitives) are not available"
        still = ""
    if "libuv" in cause:
        fix = ("This build of pyasync_c links libuv dynamically and the libuv shared library "
               "cannot be loaded: install it (Debian/Ubuntu: apt-get install libuv1; "
               "Fedora: dnf install libuv), or install a self-contained pyasync_c wheel "
               "(`make wheel` links libuv statically).")
    elif isinstance(exc, ModuleNotFoundError):
        fix = ("The extension is not built: run `python setup.py build_ext --inplace` in the "
               "source tree, or install pyasync_c with pip.")
    else:
        fix = "Rebuild or reinstall pyasync_c for this Python."
    error = ImportError(" ".join(filter(None, [f"{what}: {cause}.", fix, still])),
                        name=f"pyasync_c.{extension}")
    error.__cause__ = exc
    return error


def _require_loop() -> None:
    if "_loop" in _import_errors:
        raise _unavailable("_loop")


def new_event_loop() -> Loop:
    """Return a new pyasync_c event loop (a zero-argument loop factory)."""
    _require_loop()
    return Loop()


def run(main: Coroutine[Any, Any, _T], *, loop_factory: Callable[[], Loop] | None = new_event_loop,
        debug: bool | None = None, **run_kwargs: Any) -> _T:
    """Run a coroutine on a fresh pyasync_c loop, as asyncio.run() does (same as uvloop.run)."""
    # Same keywords as uvloop.run(): loop_factory, debug, and any further
    # keyword for asyncio.run() (asyncio.Runner on 3.11).  The loop must be a
    # pyasync_c Loop (uvloop.run() requires a uvloop Loop the same way); it is
    # checked when the loop is made, so `main` stays the main task's coroutine.
    _require_loop()
    make_loop = new_event_loop if loop_factory is None else loop_factory

    def checked_loop_factory() -> Loop:
        loop = make_loop()
        if not isinstance(loop, Loop):
            loop.close()
            if isinstance(main, Coroutine):
                main.close()      # never run: no "never awaited" warning
            raise TypeError(f"pyasync_c.run() needs a pyasync_c event loop; "
                            f"loop_factory returned {type(loop).__name__}")
        return loop

    if sys.version_info >= (3, 12):
        return asyncio.run(main, loop_factory=checked_loop_factory, debug=debug, **run_kwargs)
    if asyncio.events._get_running_loop() is not None:
        raise RuntimeError("asyncio.run() cannot be called from a running event loop")
    with asyncio.Runner(loop_factory=checked_loop_factory, debug=debug, **run_kwargs) as runner:
        return runner.run(main)


def _policy_base() -> type:
    if sys.version_info < (3, 14):
        # The Unix default policy: keeps get_child_watcher()/set_child_watcher().
        return asyncio.DefaultEventLoopPolicy
    # Policies are deprecated from 3.14: the private base does not warn.
    return asyncio.events._BaseDefaultEventLoopPolicy  # type: ignore[attr-defined]


_policy_class: type | None = None

if TYPE_CHECKING:
    # Built by __getattr__ at run time (see below); this is its type.
    class EventLoopPolicy(asyncio.DefaultEventLoopPolicy):
        """asyncio event loop policy whose loops are pyasync_c loops."""


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
    if name in _LOOP_NAMES and "_loop" in _import_errors:
        raise _unavailable("_loop")
    if name in PRIMITIVE_NAMES and "_primitives" in _import_errors:
        raise _unavailable("_primitives")
    raise AttributeError(f"module 'pyasync_c' has no attribute {name!r}")


def __dir__() -> list[str]:
    # What dir()/help() list: the names that are available (EventLoopPolicy
    # included), without this module's own attribute hooks.
    missing = (_LOOP_NAMES if "_loop" in _import_errors else ()) + (
        PRIMITIVE_NAMES if "_primitives" in _import_errors else ())
    hidden = {"__getattr__", "__dir__", "__annotations__", "__builtins__", *missing}
    return sorted((set(globals()) | set(__all__)) - hidden)


def install(*, primitives: bool = True) -> None:
    """Make asyncio use pyasync_c's loop (and, by default, the C primitives).

    asyncio.run()/new_event_loop() then make pyasync_c loops, and with
    primitives=True asyncio's Lock/Event/Semaphore/BoundedSemaphore/Queue/
    LifoQueue/PriorityQueue/gather/sleep are the C ones (install_primitives()).

    The C primitives are not subclasses of asyncio's classes, so
    ``isinstance(x, asyncio.Queue)`` checks written against the stdlib class
    before install() see different objects; pass primitives=False to keep them.
    """
    _require_loop()
    if sys.version_info >= (3, 14):
        # Policies are deprecated: point asyncio's default factory at ours.
        asyncio.events.new_event_loop = new_event_loop  # type: ignore[assignment]
        asyncio.new_event_loop = new_event_loop  # type: ignore[assignment]
    else:
        asyncio.set_event_loop_policy(__getattr__("EventLoopPolicy")())
    if primitives:
        install_primitives()


def install_primitives() -> list[str]:
    """Put the C primitives into asyncio's namespace (any loop); returns the names replaced."""
    if "_primitives" in _import_errors:
        raise _unavailable("_primitives")
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


def status() -> dict[str, Any]:
    """Which loop and primitives this process runs on: a dict with
    ``running_loop``, ``default_loop`` (what asyncio.run() creates),
    ``on_pyasync_c``, ``primitives`` (where asyncio.Lock, Queue, gather...
    come from) and more; ``python -m pyasync_c --check`` prints it."""
    from ._frameworks import status as _status
    return _status()
