"""The ways a user selects pyasync_c's loop, each in a fresh interpreter.

Every script checks ``type(asyncio.get_running_loop()) is pyasync_c.Loop``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

MAIN = """
import asyncio, json, sys
import pyasync_c

async def main():
    loop = asyncio.get_running_loop()
    return {"on_pyasync_c": type(loop) is pyasync_c.Loop, "debug": loop.get_debug()}
"""

SELECTIONS: dict[str, str] = {
    "EventLoopPolicy": """
        asyncio.set_event_loop_policy(pyasync_c.EventLoopPolicy())
        result = asyncio.run(main())
    """,
    "Runner(loop_factory)": """
        with asyncio.Runner(loop_factory=pyasync_c.new_event_loop) as runner:
            result = runner.run(main())
    """,
    "install": """
        pyasync_c.install()
        result = asyncio.run(main())
    """,
    "asyncio.run(loop_factory)": """
        result = asyncio.run(main(), loop_factory=pyasync_c.new_event_loop)
    """,
}


def python(*args: str, cwd: Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run a fresh interpreter that can import the pyasync_c under test."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(os.path.abspath(p) for p in sys.path if p)}
    env.pop("PYTHONASYNCIODEBUG", None)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def run_selection(body: str, tmp_path: Path) -> dict[str, Any]:
    code = MAIN + textwrap.dedent(body) + "\nprint(json.dumps(result))\n"
    proc = python("-c", code, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def write(tmp_path: Path, name: str, code: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(code))
    return path


@pytest.mark.parametrize("selection", list(SELECTIONS))
def test_selection_runs_on_pyasync_c(selection: str, tmp_path: Path) -> None:
    if selection == "asyncio.run(loop_factory)" and sys.version_info < (3, 12):
        pytest.skip("asyncio.run(loop_factory=...) is 3.12+")
    assert run_selection(SELECTIONS[selection], tmp_path) == {"on_pyasync_c": True, "debug": False}


@pytest.mark.parametrize("debug", [True, False])
def test_pyasync_c_run(debug: bool, tmp_path: Path) -> None:
    body = f"result = pyasync_c.run(main(), debug={debug})"
    assert run_selection(body, tmp_path) == {"on_pyasync_c": True, "debug": debug}


SCRIPT = """
import asyncio, json, sys
import pyasync_c
import sibling  # found because sys.path[0] is the script's folder

async def main():
    return type(asyncio.get_running_loop()) is pyasync_c.Loop

if __name__ == "__main__":
    on_pyasync_c = asyncio.run(main())
    print(json.dumps({"argv": sys.argv, "name": __name__, "on_pyasync_c": on_pyasync_c,
                      "sibling": sibling.VALUE, "file": __file__}))
"""


@pytest.fixture
def script_dir(tmp_path: Path) -> Path:
    write(tmp_path, "script.py", SCRIPT)
    write(tmp_path, "sibling.py", "VALUE = 'next to the script'\n")
    return tmp_path


@pytest.mark.parametrize("warnings", [[], ["-W", "error::DeprecationWarning"]],
                         ids=["plain", "W-error-DeprecationWarning"])
def test_python_m_pyasync_c_runs_a_script(script_dir: Path, warnings: list[str]) -> None:
    proc = python(*warnings, "-m", "pyasync_c", "script.py", "a", "b", cwd=script_dir)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert json.loads(proc.stdout) == {
        "argv": ["script.py", "a", "b"], "name": "__main__", "on_pyasync_c": True,
        "sibling": "next to the script", "file": str(script_dir / "script.py"),  # absolute, as python
    }


def test_python_m_pyasync_c_runs_a_script_in_another_folder(script_dir: Path) -> None:
    proc = python("-m", "pyasync_c", str(script_dir / "script.py"), cwd=script_dir.parent)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["sibling"] == "next to the script"


@pytest.mark.parametrize("ending", ["sys.exit(asyncio.run(main()))", "raise SystemExit(3)"])
def test_python_m_pyasync_c_propagates_exit_code(tmp_path: Path, ending: str) -> None:
    write(tmp_path, "exits.py", f"""
        import asyncio, sys
        async def main():
            return 3
        {ending}
    """)
    assert python("-m", "pyasync_c", "exits.py", cwd=tmp_path).returncode == 3


def test_python_m_pyasync_c_shows_tracebacks_like_python(tmp_path: Path) -> None:
    write(tmp_path, "fails.py", """
        import asyncio

        async def main():
            await asyncio.sleep(0)
            return 1

        def explode(value):
            raise ValueError(f"boom {value}")

        explode(asyncio.run(main()))
    """)
    plain = python("fails.py", cwd=tmp_path)
    ours = python("-m", "pyasync_c", "fails.py", cwd=tmp_path)
    assert ours.returncode == plain.returncode == 1
    expected = plain.stderr.splitlines()
    got = ours.stderr.splitlines()
    assert expected[0] == "Traceback (most recent call last):" and got[0] == expected[0]
    assert got[-1] == expected[-1] == "ValueError: boom 1"
    remaining = iter(got)
    missing = [line for line in expected if line not in remaining]  # subsequence check
    assert not missing, ours.stderr
