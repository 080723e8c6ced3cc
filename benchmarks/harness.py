"""Shared benchmark machinery: the workload registry, loop and primitive
selection, and the timing of one (workload, loop, primitives) cell.

A workload is a plain function ``make(prims, n) -> coroutine``. Whatever it
does before returning the coroutine is untimed set-up (random delays, ...);
the coroutine itself is the timed part and returns how many operations it
performed. The harness owns everything else: creating the loop, warm-up,
repeats, garbage collection between repeats and the clock.
"""
from __future__ import annotations

import asyncio
import gc
import importlib
import statistics
import sys
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Coroutine, Iterable

REPO_ROOT = Path(__file__).resolve().parent.parent

LOOP_NAMES = ("stdlib", "uvloop", "pyasync_c")
PRIMITIVE_SETS = ("stdlib", "c", "installed")

Prims = types.SimpleNamespace
Body = Coroutine[Any, Any, int]
MakeFn = Callable[[Prims, int], Body]
LoopFactory = Callable[[], asyncio.AbstractEventLoop]


class Unavailable(Exception):
    """The loop or a primitive a cell needs cannot be imported (yet)."""


@dataclass(frozen=True)
class Workload:
    name: str
    group: str  # "loop": compares loops; "primitives": compares primitive sets
    unit: str  # what one counted operation is, e.g. "callbacks"
    n: int  # full size; --quick divides it by 10
    make: MakeFn
    requires: tuple[str, ...] = ()  # primitive names taken from ``prims``
    doc: str = ""
    # parameters of a workload that another runner runs (net/runner.py)
    params: dict[str, Any] = field(default_factory=dict, compare=False)


REGISTRY: dict[str, Workload] = {}


def workload(group: str, unit: str, n: int, requires: Iterable[str] = (),
             name: str | None = None) -> Callable[[MakeFn], MakeFn]:
    """Register ``make`` as a workload (the function name is the workload name)."""

    def register(make: MakeFn) -> MakeFn:
        wl_name = name or make.__name__
        if wl_name in REGISTRY:
            raise ValueError(f"duplicate workload {wl_name!r}")
        doc = (make.__doc__ or "").strip().splitlines()
        REGISTRY[wl_name] = Workload(wl_name, group, unit, n, make, tuple(requires),
                                     doc[0] if doc else "")
        return make

    return register


def load_registry() -> dict[str, Workload]:
    """Import the workload modules (they register themselves) and return the registry."""
    importlib.import_module("workloads_loop")
    importlib.import_module("workloads_primitives")
    importlib.import_module("workloads_tls")
    importlib.import_module("net.runner")
    return REGISTRY


# --------------------------------------------------------------------------
# Loops and primitives


def _import_pyasync_c(module: str) -> types.ModuleType:
    """Import pyasync_c (or a submodule), preferring an in-place build in this
    repository (``setup.py build_ext --inplace``) over an installed copy."""
    if any((REPO_ROOT / "pyasync_c").glob("_*.so")) and str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    return importlib.import_module(module)


def loop_factory(name: str) -> LoopFactory:
    try:
        if name == "stdlib":
            return asyncio.SelectorEventLoop
        if name == "uvloop":
            import uvloop
            return uvloop.new_event_loop
        if name == "pyasync_c":
            factory: LoopFactory = _import_pyasync_c("pyasync_c").new_event_loop
            return factory
    except (ImportError, AttributeError) as exc:
        raise Unavailable(f"loop {name}: {type(exc).__name__}: {exc}") from exc
    raise ValueError(f"unknown loop {name!r} (expected one of {LOOP_NAMES})")


def primitives(name: str, required: Iterable[str]) -> Prims:
    """The primitives a workload needs, from asyncio ("stdlib"), pyasync_c._primitives
    ("c"), or asyncio after pyasync_c.install_primitives() ("installed": what
    `python -m pyasync_c script.py` gives unmodified code, asyncio.sleep/gather/...
    being the C ones)."""
    if name == "stdlib":
        source: Any = asyncio
    elif name == "installed":
        try:
            _import_pyasync_c("pyasync_c").install_primitives()
        except (ImportError, AttributeError) as exc:
            raise Unavailable(f"primitives installed: {type(exc).__name__}: {exc}") from exc
        source = asyncio
    elif name == "c":
        try:
            source = _import_pyasync_c("pyasync_c._primitives")
        except ImportError as exc:
            raise Unavailable(f"primitives c: {type(exc).__name__}: {exc}") from exc
    else:
        raise ValueError(f"unknown primitive set {name!r} (expected one of {PRIMITIVE_SETS})")
    missing = [p for p in required if not hasattr(source, p)]
    if missing:
        raise Unavailable(f"primitives {name}: missing {', '.join(missing)}")
    return types.SimpleNamespace(**{p: getattr(source, p) for p in required})


def module_origin(loop: str, prims: str) -> dict[str, str]:
    """Where the modules under test came from (to spot a stale installed build)."""
    origin = {"python": sys.version.split()[0]}
    names = {"uvloop": "uvloop", "pyasync_c": "pyasync_c"}
    wanted = [names[loop]] if loop in names else []
    if prims in ("c", "installed"):
        wanted.append("pyasync_c._primitives")
    for mod in wanted:
        m = sys.modules.get(mod)
        if m is not None:
            origin[mod] = str(getattr(m, "__file__", None) or getattr(m, "__version__", "?"))
    return origin


# --------------------------------------------------------------------------
# Helpers shared by several workloads


async def run_tasks(count: int, body: Callable[[int], Awaitable[Any]]) -> None:
    """Run ``body(i)`` for i in range(count) as concurrent tasks and wait for all.

    Joining always uses asyncio.gather so that primitive workloads differ only
    in the primitive under test."""
    await asyncio.gather(*(body(i) for i in range(count)))


def per_unit(n: int, width: int) -> int:
    """How many rounds of ``width`` operations make about n (at least one)."""
    return max(1, n // width)


# --------------------------------------------------------------------------
# Timing one cell


@dataclass
class Sample:
    ops: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.ops / self.seconds if self.seconds > 0 else float("inf")


@dataclass
class CellResult:
    workload: str
    loop: str
    prims: str
    n: int
    unit: str
    samples: list[Sample] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"status": "ok", "workload": self.workload, "loop": self.loop,
                "prims": self.prims, "n": self.n, "unit": self.unit,
                **summarize([s.ops for s in self.samples], [s.seconds for s in self.samples])}


def summarize(ops: list[int], seconds: list[float]) -> dict[str, Any]:
    """Statistics of a cell's timed repeats (rates in ops/s)."""
    rates = [o / s if s > 0 else float("inf") for o, s in zip(ops, seconds)]
    best = max(rates)
    return {
        "ops": list(ops),
        "seconds": [round(s, 6) for s in seconds],
        "best": best,
        "median": statistics.median(rates),
        "worst": min(rates),
        # relative spread of the repeats; large values flag a noisy cell
        "spread": (best - min(rates)) / best if best else 0.0,
    }


def _time_once(loop: asyncio.AbstractEventLoop, wl: Workload, prims: Prims, n: int) -> Sample:
    body = wl.make(prims, n)  # untimed set-up happens here
    gc.collect()
    start = time.perf_counter()
    ops = loop.run_until_complete(body)
    elapsed = time.perf_counter() - start
    return Sample(ops, elapsed)


def _close(loop: asyncio.AbstractEventLoop) -> None:
    try:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def run_cell(wl: Workload, loop_name: str, prims_name: str, n: int,
             repeat: int, warmup: int) -> CellResult:
    """Time ``wl`` on one fresh loop: ``warmup`` untimed runs at n/10, then
    ``repeat`` timed runs at n. Raises Unavailable if the loop or a
    primitive is missing."""
    factory = loop_factory(loop_name)
    prims = primitives(prims_name, wl.requires)
    loop = factory()
    asyncio.set_event_loop(loop)
    result = CellResult(wl.name, loop_name, prims_name, n, wl.unit)
    try:
        for _ in range(warmup):
            _time_once(loop, wl, prims, max(1, n // 10))
        for _ in range(repeat):
            result.samples.append(_time_once(loop, wl, prims, n))
    finally:
        _close(loop)
    return result
