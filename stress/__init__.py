"""Reliability harness for pyasync_c (issue #10): `make stress`, `make stress-short`,
`make soak`, `make stress-asan`.

- ``run.py``: the driver; runs every scenario on every loop, each in its own
  subprocess with a hard timeout, and prints one table per scenario.
- ``child.py``: the subprocess side; the shared bookkeeping (fd count, RSS per
  round, exception-handler contexts) around one scenario on one loop.
- ``harness.py``: what scenarios see (``Context``, ``Failure``, loop factories).
- ``scenarios/``: one module per scenario family; ``scenarios.SCENARIOS`` lists them.
- ``common.py``: small helpers the scenarios share (patterns, RST close, echo).

Not collected by pytest (the project's testpaths is ``tests``).
"""
