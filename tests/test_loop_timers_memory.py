"""Cancelled timers must not pile up: a million call_later()+cancel() pairs,
interleaved with loop iterations as a real program would, keep memory flat."""
from __future__ import annotations

import asyncio
import tracemalloc
from typing import Any, Callable


def test_a_million_cancelled_timers_do_not_grow_memory(run: Callable[..., Any]) -> None:
    def noop() -> None:
        pass

    async def main() -> int:
        loop = asyncio.get_running_loop()
        tracemalloc.start()
        try:
            baseline = 0
            for batch in range(100):
                handles = [loop.call_later(3600 + i, noop) for i in range(10_000)]
                for handle in handles:
                    handle.cancel()
                del handles
                await asyncio.sleep(0)
                if batch == 4:
                    baseline = tracemalloc.get_traced_memory()[0]
            return tracemalloc.get_traced_memory()[0] - baseline
        finally:
            tracemalloc.stop()

    growth = run(main())
    # A leak would keep ~10k handles (>1 MiB) per batch: ~100 MiB in all.
    assert growth < 4 * 1024 * 1024, f"memory grew by {growth} bytes"


def test_cancelled_timer_leaves_no_reference_to_its_callback(run: Callable[..., Any]) -> None:
    import gc
    import weakref

    class Callback:
        def __call__(self) -> None:
            pass

    async def main() -> bool:
        loop = asyncio.get_running_loop()
        callback = Callback()
        ref = weakref.ref(callback)
        loop.call_later(3600, callback).cancel()
        del callback
        await asyncio.sleep(0)
        gc.collect()
        return ref() is None

    assert run(main())
