"""``python -m pyasync_c [--stdlib-primitives] [--check] target [args...]``.

Runs an existing asyncio program unmodified on pyasync_c. The target is
anything ``python`` runs (a script, a directory or zip file, ``-m module``,
``-c code``, ``-`` for stdin) and sees the same ``sys.argv``, ``sys.path`` and
``__main__`` module as under ``python target``; its ``asyncio.run(...)`` /
``asyncio.new_event_loop()`` get pyasync_c's loop, frameworks that pick their
own loop (uvicorn, hypercorn, anyio) get it too, and (unless
--stdlib-primitives) asyncio's Lock, Event, Semaphore, BoundedSemaphore,
Queue, LifoQueue, PriorityQueue, gather and sleep are the C ones.
See pyasync_c/_runner.py.
"""
from pyasync_c._runner import main

if __name__ == "__main__":
    main()
