"""Random-input fuzzing of pyasync_c's C primitives, for sanitizer builds.

    python tests/fuzz_primitives.py [--seeds N] [--first S]

Two drivers per seed, and the process must neither crash nor trip ASan/UBSan
(`make asan` runs it under both after pytest):

1. API: every public and private method of Lock/Event/Semaphore/
   BoundedSemaphore/Queue/LifoQueue/PriorityQueue, gather and sleep called
   with arguments drawn from a pool of odd values (None, huge ints, NaN,
   futures, exception classes...), and every awaitable they return driven
   outside any loop with send/throw/close in random order.
2. Loop: on the stdlib loop and on pyasync_c's, tasks use the primitives
   (plain ones and Python subclasses whose overrides re-enter: they cancel
   other tasks, release/put/get on other primitives, raise, run the GC)
   while the driver cancels tasks at random; at the end every task is
   cancelled until all are done, and each object's repr is taken.

Exceptions raised by the calls are expected and ignored: the point is memory
safety under misuse and re-entrancy. Outcomes are compared with asyncio's
elsewhere (tests/test_primitives_differential.py).
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import random
import sys
import warnings
from typing import Any

import pyasync_c
from pyasync_c import _primitives as C

CLASSES = ("Lock", "Event", "Semaphore", "BoundedSemaphore", "Queue", "LifoQueue", "PriorityQueue")


def drive(rnd: random.Random, awaitable: Any, pool: list[Any]) -> None:
    """send/throw/close an awaitable a few times, in random order."""
    try:
        it = awaitable.__await__() if hasattr(awaitable, "__await__") else awaitable
    except BaseException:
        return
    for _ in range(rnd.randint(0, 3)):
        r = rnd.random()
        try:
            if r < 0.5:
                it.send(rnd.choice(pool))
            elif r < 0.8:
                it.throw(rnd.choice([asyncio.CancelledError(), KeyError(1), GeneratorExit(),
                                     StopIteration(3)]))
            else:
                it.close()
        except BaseException:
            pass


def fuzz_api(rnd: random.Random, rounds: int) -> int:
    loop = asyncio.new_event_loop()
    future = loop.create_future()

    async def coro() -> int:
        return 1

    pool: list[Any] = [None, 0, 1, -1, 2**100, -2**100, 1.5, float("nan"), "x", b"", [], {}, (),
                       object(), future, asyncio.CancelledError(), KeyError("k"), ValueError,
                       type, True, slice(1)]
    calls = 0
    for _ in range(rounds):
        cls = getattr(C, rnd.choice(CLASSES))
        try:
            obj = cls(*[rnd.choice(pool) for _ in range(rnd.randint(0, 2))]) \
                if rnd.random() < 0.3 else cls()
        except BaseException:
            continue
        names = [m for m in dir(obj) if not m.startswith("__")
                 or m in ("__aenter__", "__aexit__", "__repr__", "__class_getitem__")]
        for _ in range(rnd.randint(1, 6)):
            try:
                attr = getattr(obj, rnd.choice(names))
            except BaseException:
                continue
            if not callable(attr):
                continue
            try:
                result = attr(*[rnd.choice(pool) for _ in range(rnd.randint(0, 3))])
            except BaseException:
                continue
            calls += 1
            if hasattr(result, "__await__") or hasattr(result, "send"):
                drive(rnd, result, pool)
    for _ in range(rounds // 5):
        args = [rnd.choice(pool + [coro()]) for _ in range(rnd.randint(0, 3))]
        try:
            drive(rnd, C.gather(*args, return_exceptions=rnd.choice(pool)), pool)
        except BaseException:
            pass
        for a in args:
            if asyncio.iscoroutine(a):
                a.close()
        try:
            drive(rnd, C.sleep(*[rnd.choice(pool) for _ in range(rnd.randint(0, 3))]), pool)
        except BaseException:
            pass
    loop.close()
    return calls


class Chaos:
    """Re-entrant mischief, run from inside the subclasses' overrides."""

    def __init__(self, rnd: random.Random):
        self.rnd = rnd
        self.objects: list[Any] = []
        self.tasks: list[asyncio.Task[Any]] = []

    def __call__(self) -> None:
        r = self.rnd.random()
        if r < 0.05:
            raise KeyError("chaos")
        try:
            if r < 0.2 and self.tasks:
                self.rnd.choice(self.tasks).cancel()
            elif r < 0.35 and self.objects:
                other = self.rnd.choice(self.objects)
                for name in ("release", "set", "clear", "put_nowait", "get_nowait", "task_done"):
                    if hasattr(other, name) and self.rnd.random() < 0.3:
                        getattr(other, name)(*([1] if name == "put_nowait" else []))
            elif r < 0.4:
                gc.collect()
        except Exception:
            pass

    def subclass(self, base: type, names: list[str]) -> type:
        chaos = self
        namespace: dict[str, Any] = {}
        for name in names:
            if asyncio.iscoroutinefunction(getattr(base, name, None)) or name == "acquire":
                async def method(self, *args, _name=name, **kwargs):  # type: ignore[no-untyped-def]
                    chaos()
                    return await getattr(super(cls, self), _name)(*args, **kwargs)
            else:
                def method(self, *args, _name=name, **kwargs):  # type: ignore[no-untyped-def]
                    chaos()
                    return getattr(super(cls, self), _name)(*args, **kwargs)
            namespace[name] = method
        cls = type("Chaotic" + base.__name__, (base,), namespace)
        return cls


OVERRIDABLE = {
    "Lock": ["acquire", "release", "locked"],
    "Semaphore": ["acquire", "release", "locked"],
    "BoundedSemaphore": ["acquire", "release", "locked"],
    "Event": ["set", "clear", "is_set"],
    "Queue": ["put_nowait", "get_nowait", "full", "empty", "qsize", "_put", "_get", "task_done"],
    "LifoQueue": ["put_nowait", "get_nowait", "full", "_put", "_get"],
    "PriorityQueue": ["put_nowait", "get_nowait", "empty", "_get"],
}


async def use(rnd: random.Random, obj: Any) -> None:
    for _ in range(rnd.randint(1, 5)):
        try:
            if hasattr(obj, "acquire"):
                if rnd.random() < 0.5:
                    async with obj:
                        await asyncio.sleep(0)
                else:
                    await obj.acquire()
                    await asyncio.sleep(0)
                    obj.release()
            elif hasattr(obj, "wait"):
                await obj.wait()
            else:
                r = rnd.random()
                if r < 0.4:
                    await obj.put(rnd.randint(0, 5))
                elif r < 0.8:
                    await obj.get()
                elif r < 0.9:
                    await obj.join()
                elif hasattr(obj, "shutdown"):
                    obj.shutdown(immediate=rnd.random() < 0.5)
        except asyncio.CancelledError:
            if rnd.random() < 0.5:
                raise             # else swallowed: the task goes on
        except Exception:
            pass


async def fuzz_loop(rnd: random.Random, steps: int) -> None:
    chaos = Chaos(rnd)
    for _ in range(40):
        name = rnd.choice(CLASSES)
        base = getattr(C, name)
        cls = chaos.subclass(base, rnd.sample(OVERRIDABLE[name], rnd.randint(1, len(OVERRIDABLE[name])))) \
            if rnd.random() < 0.7 else base
        try:
            chaos.objects.append(cls() if name in ("Lock", "Event") else cls(rnd.randint(0, 3)))
        except Exception:
            pass
    for _ in range(steps):
        r = rnd.random()
        if r < 0.4:
            chaos.tasks.append(asyncio.ensure_future(use(rnd, rnd.choice(chaos.objects))))
        elif r < 0.6:
            try:
                chaos()
            except KeyError:
                pass
        elif r < 0.7 and chaos.tasks:
            rnd.choice(chaos.tasks).cancel()
        else:
            await asyncio.sleep(0)
        if len(chaos.tasks) > 200:
            chaos.tasks = [t for t in chaos.tasks if not t.done()]
    for _ in range(100):      # tasks may swallow a cancel: cancel until all are done
        pending = [t for t in chaos.tasks if not t.done()]
        if not pending:
            break
        for t in pending:
            t.cancel()
        await asyncio.wait(pending, timeout=0.05)
    for obj in chaos.objects:
        try:
            repr(obj)
        except KeyError:
            pass


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--first", type=int, default=0)
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    for seed in range(args.first, args.first + args.seeds):
        rnd = random.Random(seed)
        calls = fuzz_api(rnd, 5000)
        for factory in (asyncio.SelectorEventLoop, pyasync_c.new_event_loop):
            with asyncio.Runner(loop_factory=factory) as runner:
                runner.run(fuzz_loop(rnd, 600))
        gc.collect()
        print(f"fuzz seed {seed}: {calls} API calls, loop rounds done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
