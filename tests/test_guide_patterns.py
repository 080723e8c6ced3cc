"""Each asyncio-guide pattern of pyasync_c.demo, run on both loops."""
from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from pyasync_c import demo, demo_scale

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
                          capture_output=True, text=True, timeout=180)
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "cannot be imported" not in proc.stdout
    for pattern in demo.PATTERNS:
        assert pattern.name in proc.stdout
    uvloop = importlib.util.find_spec("uvloop") is not None
    assert ("uvloop is not available" in proc.stdout) is not uvloop
    for pattern in demo_scale.SCALE_PATTERNS:
        (row,) = [line for line in proc.stdout.splitlines() if line.startswith(pattern.name)]
        ratios = re.findall(r"\d+\.\d\dx", row)
        # pyasync_c vs stdlib, and vs uvloop when it is there
        assert len(ratios) == (2 if uvloop else 1), row
    assert elapsed < 180  # generous: the demo takes ~15 s on an idle 2-core machine


# ------------------------------------------------------------ the columns

def _loop_name_pattern() -> demo.Pattern:
    """A pattern whose result is the running loop's module: right only on
    the loop named in ``expected``."""
    async def loop_module() -> str:
        return type(asyncio.get_running_loop()).__module__.split(".")[0]
    return demo.Pattern("loop module", loop_module, expected="pyasync_c")


def _fake_columns(uvloop_factory: Any) -> Callable[[], tuple[list[demo.Column], list[str]]]:
    import pyasync_c

    def columns() -> tuple[list[demo.Column], list[str]]:
        return [demo.Column("stdlib", asyncio.SelectorEventLoop),
                demo.Column("uvloop", uvloop_factory, counts=False),
                demo.Column("pyasync_c", pyasync_c.new_event_loop, c_primitives=True)], []
    return columns


def test_columns_without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop -> ImportError
    cols, notes = demo.columns()
    assert [c.name for c in cols] == ["stdlib", "uvloop", "pyasync_c"]
    assert cols[1].factory is None and cols[2].factory is not None
    assert len(notes) == 1 and "uvloop is not available" in notes[0]


def test_columns_with_uvloop() -> None:
    uvloop = pytest.importorskip("uvloop")
    cols, notes = demo.columns()
    assert notes == [] and cols[1].factory is uvloop.new_event_loop and not cols[1].counts
    assert cols[0].counts and cols[2].counts and cols[2].c_primitives


def test_uvloop_column_is_shown_but_does_not_fail_the_demo(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The stdlib column gives a wrong result here (it counts: exit 1); the
    uvloop column, played by another stdlib loop, too (listed apart, not
    counted); without the stdlib column the demo passes."""
    pattern = _loop_name_pattern()
    monkeypatch.setattr(demo, "PATTERNS", [pattern])
    monkeypatch.setattr(demo_scale, "SCALE_PATTERNS", [demo_scale.ScalePattern(
        "tiny gather", lambda p: demo_scale.fan_in(p, tasks=10), sum(range(10)))])
    monkeypatch.setattr(demo, "columns", _fake_columns(asyncio.SelectorEventLoop))
    assert demo.main() == 1
    out = capsys.readouterr().out
    assert "FAIL/FAIL/ok" in out
    failures, _, differences = out.partition("uvloop gave other results")
    assert "loop module [stdlib]" in failures and "loop module [uvloop]" not in failures
    assert "loop module [uvloop]" in differences

    def without_stdlib() -> tuple[list[demo.Column], list[str]]:
        cols, notes = _fake_columns(asyncio.SelectorEventLoop)()
        return [demo.Column("stdlib", None), *cols[1:]], notes
    monkeypatch.setattr(demo, "columns", without_stdlib)
    assert demo.main() == 0
    out = capsys.readouterr().out
    assert "-/FAIL/ok" in out and "Failures" not in out and "loop module [uvloop]" in out
    (row,) = [line for line in out.splitlines() if line.startswith("tiny gather")]
    assert "-/ok/ok" in row and len(re.findall(r"\d+\.\d\dx", row)) == 1, row  # vs uvloop only


def test_scale_table_ratios(monkeypatch: pytest.MonkeyPatch,
                            capsys: pytest.CaptureFixture[str]) -> None:
    uvloop = pytest.importorskip("uvloop")
    monkeypatch.setattr(demo_scale, "SCALE_PATTERNS", [demo_scale.ScalePattern(
        "tiny gather", lambda p: demo_scale.fan_in(p, tasks=10), sum(range(10)))])
    cols, _ = _fake_columns(uvloop.new_event_loop)()
    assert demo_scale.print_scale_table(cols) == []
    out = capsys.readouterr().out
    (row,) = [line for line in out.splitlines() if line.startswith("tiny gather")]
    assert "ok/ok/ok" in row and len(re.findall(r"\d+\.\d\dx", row)) == 2, row
    assert "vs uvloop" in out and "uvloop.run()" in out


def test_make_demo_shows_the_setup_output_when_it_fails() -> None:
    """`make demo` keeps deps/build quiet, but a failing step prints its log
    and fails (here `.ci/deps` cannot set up PYTHON=false)."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    # make and the shell are not built for make asan's preloaded sanitizer runtime
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "ASAN_OPTIONS")}
    proc = subprocess.run(["make", "--no-print-directory", "demo", "PYTHON=false"], cwd=REPO,
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode != 0
    assert "deps: installing setuptools and pytest for false" in proc.stdout  # the log, shown
    assert "demo: the set-up failed" in proc.stderr
    assert "pattern" not in proc.stdout  # the demo itself did not run
