"""``python -m pyasync_c X`` behaves as ``python X`` for every X python runs.

Each case runs both in fresh interpreters and compares what the program sees
(the whole sys.path, sys.argv, its __main__ module) and what it prints on the
way out (tracebacks, exit status); the program under the runner must also be
on pyasync_c's loop.
"""
from __future__ import annotations

import json
import os
import py_compile
import signal
import subprocess
import sys
import textwrap
import zipapp
from pathlib import Path
from typing import Any

import pytest

from package_path import PACKAGE_PARENT


PROBE = """
import asyncio, atexit, json, sys
import __main__

async def main():
    return type(asyncio.get_running_loop()).__module__

def at_exit():
    # python removes __file__ and __cached__ from __main__ once the script is done
    print(json.dumps({"file_at_exit": getattr(__main__, "__file__", None)}))

atexit.register(at_exit)
print(json.dumps({
    "path": sys.path, "argv": sys.argv, "name": __name__,
    "file": globals().get("__file__"), "cached": globals().get("__cached__", "unset"),
    "spec": getattr(__spec__, "name", None), "package": __package__,
    "loader": type(__loader__).__name__ if not isinstance(__loader__, type) else __loader__.__name__,
    "main_is_module": sys.modules["__main__"] is __main__ and __main__.__dict__ is globals(),
    "globals": sorted(k for k in globals() if k.startswith("__")),
    "sibling": __import__("sibling").VALUE,
}))
print(json.dumps({"loop_module": asyncio.run(main())}))
"""


def python(args: list[str], cwd: Path, pythonpath: list[str] | None = None,
           stdin: bytes | None = None, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*(pythonpath or []), PACKAGE_PARENT])
    env.pop("PYTHONSAFEPATH", None)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, input=stdin,
                          capture_output=True, timeout=timeout)


def both(args: list[str], cwd: Path, **kwargs: Any) -> tuple[subprocess.CompletedProcess[bytes],
                                                              subprocess.CompletedProcess[bytes]]:
    """Run ``python *args`` and ``python -m pyasync_c *args`` (interpreter
    options, those before the first "{R}", stay in front of -m pyasync_c)."""
    if "{R}" not in args:
        args = ["{R}", *args]
    cut = args.index("{R}")
    plain = python(args[:cut] + args[cut + 1:], cwd, **kwargs)
    ours = python(args[:cut] + ["-m", "pyasync_c"] + args[cut + 1:], cwd, **kwargs)
    return plain, ours


def records(proc: subprocess.CompletedProcess[bytes]) -> dict[str, Any]:
    assert proc.returncode == 0, proc.stderr.decode()
    merged: dict[str, Any] = {}
    for line in proc.stdout.decode().splitlines():
        merged.update(json.loads(line))
    return merged


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """tmp/real/{probe.py,sibling.py}, tmp/bin/probe.py -> real/probe.py,
    tmp/appdir/{__main__,sibling}.py, tmp/app.pyz, tmp/lib/sibling.py (for
    PYTHONPATH), tmp/probe.pyc, tmp/pkg/ (a package run with -m)."""
    def put(path: str, text: str) -> Path:
        target = tmp_path / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        return target

    put("real/probe.py", PROBE)
    put("real/sibling.py", "VALUE = 'real'\n")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "probe.py").symlink_to(tmp_path / "real" / "probe.py")
    (tmp_path / "linkdir").symlink_to(tmp_path / "real")
    put("appdir/__main__.py", PROBE)
    put("appdir/sibling.py", "VALUE = 'appdir'\n")
    zipapp.create_archive(tmp_path / "appdir", tmp_path / "app.pyz")
    put("lib/sibling.py", "VALUE = 'lib'\n")
    put("sibling.py", "VALUE = 'cwd'\n")
    put("pkg/__init__.py", "")
    put("pkg/__main__.py", PROBE)
    put("modprobe.py", PROBE)
    py_compile.compile(str(tmp_path / "real" / "probe.py"), str(tmp_path / "probe.pyc"),
                       doraise=True)
    return tmp_path


CASES: dict[str, tuple[list[str], dict[str, Any]]] = {
    "script": (["real/probe.py", "a", "b"], {}),
    "script by absolute path": (["{TREE}/real/probe.py"], {}),
    "symlinked script": (["bin/probe.py", "x"], {}),
    "script in a symlinked directory": (["linkdir/probe.py"], {}),
    "-P script, PYTHONPATH": (["-P", "{R}", "real/probe.py"], {"pythonpath": ["{TREE}/lib"]}),
    "compiled script": (["probe.pyc"], {"pythonpath": ["{TREE}/real"]}),
    "directory": (["appdir", "arg"], {}),
    "-P directory": (["-P", "{R}", "appdir"], {}),
    "zipapp": (["app.pyz", "arg"], {}),
    "-m module": (["-m", "modprobe", "arg"], {}),
    "-mmodule": (["-mmodprobe"], {}),
    "-m package": (["-m", "pkg", "arg"], {}),
    "-P -m, PYTHONPATH": (["-P", "{R}", "-m", "modprobe"], {"pythonpath": ["{TREE}", "{TREE}/lib"]}),
    "-c": (["-c", PROBE, "arg"], {}),
    "-P -c, PYTHONPATH": (["-P", "{R}", "-c", PROBE], {"pythonpath": ["{TREE}/lib"]}),
    "stdin": (["-", "arg"], {"stdin": PROBE.encode()}),
    "stdin, no argument": ([], {"stdin": PROBE.encode()}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_runner_sees_what_python_sees(tree: Path, case: str) -> None:
    args, kwargs = CASES[case]
    args = [a.replace("{TREE}", str(tree)) for a in args]
    kwargs = {k: [p.replace("{TREE}", str(tree)) for p in v] if k == "pythonpath" else v
              for k, v in kwargs.items()}
    plain, ours = both(args, tree, **kwargs)
    expected, got = records(plain), records(ours)
    assert expected.pop("loop_module") == "asyncio.unix_events"
    assert got.pop("loop_module").startswith("pyasync_c")
    assert got == expected


def test_runner_keeps_the_current_directory_once_under_m(tree: Path) -> None:
    plain, ours = both(["-m", "modprobe"], tree)
    path = records(ours)["path"]
    assert path.count(str(tree)) == 1 == records(plain)["path"].count(str(tree))


# --------------------------------------------------------------------------
# Exit statuses and tracebacks
# --------------------------------------------------------------------------

FAILS = """\
import asyncio

async def main():
    await asyncio.sleep(0)
    return 1

def explode(value):
    raise ValueError(f"boom {value}")

explode(asyncio.run(main()))
"""


def _frames(stderr: bytes) -> list[str]:
    return [line.strip() for line in stderr.decode().splitlines()
            if line.strip().startswith("File ")]


@pytest.mark.parametrize("kind", ["script", "-c", "stdin", "-m", "directory", "zipapp"])
def test_runner_adds_no_frames_to_tracebacks(tmp_path: Path, kind: str) -> None:
    (tmp_path / "fails.py").write_text(FAILS)
    (tmp_path / "appdir").mkdir()
    (tmp_path / "appdir" / "__main__.py").write_text(FAILS)
    zipapp.create_archive(tmp_path / "appdir", tmp_path / "app.pyz")
    args, stdin = {"script": (["fails.py"], None), "-c": (["-c", FAILS], None),
                   "stdin": (["-"], FAILS.encode()), "-m": (["-m", "fails"], None),
                   "directory": (["appdir"], None), "zipapp": (["app.pyz"], None)}[kind]
    plain, ours = both(args, tmp_path, stdin=stdin)
    assert ours.returncode == plain.returncode == 1
    assert ours.stderr.decode().splitlines()[-1] == "ValueError: boom 1"
    got, expected = _frames(ours.stderr), _frames(plain.stderr)
    assert not [f for f in got if "pyasync_c" in f or "runpy" in f], ours.stderr.decode()
    # python -m / a directory / a zipapp show runpy's two frames; the rest is the same
    assert got == [f for f in expected if "runpy" not in f], (plain.stderr, ours.stderr)
    if kind in ("script", "-c", "stdin"):
        assert ours.stderr == plain.stderr


def test_runner_syntax_error_like_python(tmp_path: Path) -> None:
    (tmp_path / "bad.py").write_text("x = 1\ndef (:\n")
    plain, ours = both(["bad.py"], tmp_path)
    assert ours.returncode == plain.returncode == 1
    assert ours.stderr == plain.stderr
    assert b"Traceback" not in ours.stderr


def test_runner_user_excepthook_sees_python_traceback(tmp_path: Path) -> None:
    (tmp_path / "hook.py").write_text(textwrap.dedent("""
        import sys, traceback
        def hook(kind, exc, tb):
            print([f.name for f in traceback.extract_tb(tb)], exc.__traceback__ is tb)
        sys.excepthook = hook
        def inner():
            raise KeyError(1)
        inner()
    """))
    plain, ours = both(["hook.py"], tmp_path)
    assert plain.stdout == ours.stdout == b"['<module>', 'inner'] True\n"
    assert ours.returncode == plain.returncode == 1


@pytest.mark.parametrize("ending, status", [
    ("sys.exit(3)", 3), ("raise SystemExit(0)", 0), ("sys.exit('bye')", 1),
    ("raise KeyboardInterrupt", -signal.SIGINT), ("pass", 0),
])
def test_runner_exit_status_like_python(tmp_path: Path, ending: str, status: int) -> None:
    (tmp_path / "ends.py").write_text(f"import sys\n{ending}\n")
    plain, ours = both(["ends.py"], tmp_path)
    assert ours.returncode == plain.returncode == status
    assert _frames(ours.stderr) == _frames(plain.stderr)
    assert ours.stderr.splitlines()[-1:] == plain.stderr.splitlines()[-1:]


def test_runner_missing_script(tmp_path: Path) -> None:
    plain, ours = both(["missing.py"], tmp_path)
    assert ours.returncode == plain.returncode == 2
    assert b"can't open file" in ours.stderr and str(tmp_path / "missing.py").encode() in ours.stderr


def test_runner_missing_module(tmp_path: Path) -> None:
    plain, ours = both(["-m", "no_such_module_here"], tmp_path)
    assert ours.returncode == plain.returncode == 1
    assert ours.stderr == plain.stderr


def test_runner_options_and_check(tmp_path: Path) -> None:
    proc = python(["-m", "pyasync_c", "--check"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.decode()
    assert "create: pyasync_c.loop.Loop" in out and "on pyasync_c: yes" in out
    assert "asyncio's own: none" in out
    proc = python(["-m", "pyasync_c", "--stdlib-primitives", "--check"], tmp_path)
    assert "C primitives: none" in proc.stdout.decode()
    proc = python(["-m", "pyasync_c", "--bogus", "x.py"], tmp_path)
    assert proc.returncode == 2 and b"unknown option '--bogus'" in proc.stderr
    proc = python(["-m", "pyasync_c", "-m"], tmp_path)
    assert proc.returncode == 2 and b"argument expected" in proc.stderr


def test_status_inside_a_running_loop(tmp_path: Path) -> None:
    code = textwrap.dedent("""
        import asyncio, json, pyasync_c
        async def main():
            return pyasync_c.status()
        print(json.dumps({"outside": pyasync_c.status(), "inside": asyncio.run(main())}))
    """)
    plain = records(python(["-c", code], tmp_path))
    ours = records(python(["-m", "pyasync_c", "-c", code], tmp_path))
    assert plain["outside"]["running_loop"] is None
    assert plain["inside"]["running_loop"] == "asyncio.unix_events._UnixSelectorEventLoop"
    assert plain["inside"]["on_pyasync_c"] is False and plain["inside"]["c_primitives"] == []
    assert ours["inside"]["running_loop"] == "pyasync_c.loop.Loop"
    assert ours["inside"]["on_pyasync_c"] is True
    assert ours["inside"]["primitives"]["Queue"].startswith("pyasync_c.")
    assert ours["outside"]["default_loop"] == "pyasync_c.loop.Loop"


def test_spawned_children_run_on_pyasync_c(tmp_path: Path) -> None:
    """multiprocessing "spawn" children (uvicorn/hypercorn --workers) are set
    up as the parent: pyasync_c's loop and the C primitives."""
    (tmp_path / "spawner.py").write_text(textwrap.dedent("""
        import asyncio, multiprocessing

        async def probe():
            return (type(asyncio.get_running_loop()).__module__, asyncio.Queue.__module__)

        def child(queue):
            queue.put(asyncio.run(probe()))

        if __name__ == "__main__":
            ctx = multiprocessing.get_context("spawn")
            queue = ctx.Queue()
            process = ctx.Process(target=child, args=(queue,))
            process.start()
            print(queue.get(timeout=60))
            process.join(60)
            print(process.exitcode)
    """))
    plain, ours = both(["spawner.py"], tmp_path)
    assert plain.stdout.decode().split("\n")[:2] == ["('asyncio.unix_events', 'asyncio.queues')", "0"]
    lines = ours.stdout.decode().split("\n")
    assert lines[1] == "0", ours.stderr.decode()
    assert lines[0].startswith("('pyasync_c.") and "_primitives" in lines[0], lines
    proc = python(["-m", "pyasync_c", "--stdlib-primitives", "spawner.py"], tmp_path)
    assert proc.stdout.decode().startswith("('pyasync_c.loop', 'asyncio.queues')"), proc.stderr
