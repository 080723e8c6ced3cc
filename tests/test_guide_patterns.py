"""Each asyncio-guide pattern of pyasync_c.demo, run on both loops."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from pyasync_c import demo

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("pattern", demo.PATTERNS, ids=[p.name for p in demo.PATTERNS])
def test_pattern(pattern: demo.Pattern, run: Callable[..., Any]) -> None:
    assert run(pattern.func(), debug=pattern.debug) == pattern.expected


def test_semaphore_bound_is_respected_for_other_limits(run: Callable[..., Any]) -> None:
    result = run(demo.semaphore_pattern(jobs=30, limit=3))
    assert result == {"done": 30, "sum": 435, "max_concurrency": 3}


def test_run_pattern_reports_a_wrong_result() -> None:
    async def wrong() -> int:
        return 1

    import asyncio
    outcome = demo.run_pattern(demo.Pattern("wrong", wrong, expected=2), asyncio.SelectorEventLoop)
    assert not outcome.ok and "got 1" in outcome.error


def test_demo_runs_quickly_and_passes() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(os.path.abspath(p) for p in sys.path if p)}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pyasync_c.demo"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "cannot be imported" not in proc.stdout
    for pattern in demo.PATTERNS:
        assert pattern.name in proc.stdout
    assert elapsed < 60  # generous: the demo takes ~10 s on an idle 2-core machine
