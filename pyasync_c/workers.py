"""gunicorn worker classes running on pyasync_c's loop.

    gunicorn -w 2 -k pyasync_c.workers.UvicornWorker app:app        # ASGI apps (uvicorn)
    gunicorn -w 2 -k pyasync_c.workers.AiohttpWorker app:make_app   # aiohttp.web apps

Each worker process sets pyasync_c up as ``python -m pyasync_c`` does (its
loop, the C primitives, the framework hooks) before it loads the app; set
``PYASYNC_C_STDLIB_PRIMITIVES=1`` in the environment to keep asyncio's own
Lock/Queue/gather... . The classes are built on first access, so importing
this module needs neither uvicorn nor aiohttp.
"""
from __future__ import annotations

import os
import warnings
from typing import Any

__all__ = ["UvicornWorker", "AiohttpWorker"]


def _primitives_wanted() -> bool:
    return os.environ.get("PYASYNC_C_STDLIB_PRIMITIVES", "") in ("", "0")


def activate_worker() -> None:
    """Set up pyasync_c in a worker process (after gunicorn forked it)."""
    from ._runner import activate
    activate(primitives=_primitives_wanted())


def _uvicorn_worker_class() -> type:
    try:  # the maintained home of uvicorn's gunicorn worker
        from uvicorn_worker import UvicornWorker as base  # type: ignore[import-not-found]
    except ImportError:
        with warnings.catch_warnings():  # uvicorn.workers warns that it moved
            warnings.simplefilter("ignore", DeprecationWarning)
            from uvicorn.workers import UvicornWorker as base  # type: ignore[no-redef]
    from uvicorn.config import Config

    # uvicorn >= 0.36 takes a loop factory as "module:attribute"; before,
    # "asyncio" keeps the policy pyasync_c installs.
    loop = "pyasync_c:new_event_loop" if hasattr(Config, "get_loop_factory") else "asyncio"

    def init_process(self: Any) -> None:
        activate_worker()
        base.init_process(self)

    return type("UvicornWorker", (base,), {
        "__doc__": "gunicorn worker for ASGI apps: uvicorn on pyasync_c's loop.",
        "__module__": __name__,
        "CONFIG_KWARGS": {**base.CONFIG_KWARGS, "loop": loop},
        "init_process": init_process,
    })


def _aiohttp_worker_class() -> type:
    from aiohttp.worker import GunicornWebWorker as base

    def init_process(self: Any) -> None:
        activate_worker()  # then aiohttp's asyncio.new_event_loop() is pyasync_c's
        base.init_process(self)

    return type("AiohttpWorker", (base,), {
        "__doc__": "gunicorn worker for aiohttp.web apps, on pyasync_c's loop.",
        "__module__": __name__,
        "init_process": init_process,
    })


_builders = {"UvicornWorker": _uvicorn_worker_class, "AiohttpWorker": _aiohttp_worker_class}


def __getattr__(name: str) -> Any:
    builder = _builders.get(name)
    if builder is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    cls = builder()
    globals()[name] = cls
    return cls
