"""mypy --strict must reject this program (tests/test_typing.py): each line
ending in an "E:" comment is an error the stubs must catch."""
from __future__ import annotations

import pyasync_c


async def main() -> None:
    q: pyasync_c.Queue[int] = pyasync_c.Queue()
    await q.put("x")  # E: put() of a str into a Queue[int]
    s: str = await q.get()  # E: get() of a Queue[int] is an int
    a, b = await pyasync_c.gather(q.get(), pyasync_c.sleep(0, "r"))
    c: bytes = b  # E: the second result is a str
    pyasync_c.run(main(), debug="yes")  # E: debug is a bool
    pyasync_c.install(primitives=1.5)  # E: primitives is a bool
    lq: pyasync_c.LifoQueue[int] = pyasync_c.LifoQueue()
    lq.put_nowait(b"x")  # E: bytes into LifoQueue[int]
