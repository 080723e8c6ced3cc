"""Frameworks that build their own loop, run on pyasync_c: uvicorn (every
--loop choice, --workers), hypercorn, aiohttp's run_app, anyio, the gunicorn
workers (pyasync_c.workers) and the pytest plugin (pyasync_c.pytest_plugin).

Everything runs in subprocesses on loopback ports, with timeouts. Each
server records, per process, the class of the loop its app actually runs on
(a line in a file, at startup) and reports it per request too.
"""
from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from package_path import PACKAGE_PARENT

from integration_util import free_port, stop_process

ROOT = Path(__file__).resolve().parent.parent
PYASYNC_C_LOOP = "pyasync_c.loop.Loop"

APPS = '''
import asyncio, json, os

def describe():
    loop = type(asyncio.get_running_loop())
    return {"loop": f"{loop.__module__}.{loop.__qualname__}", "pid": os.getpid(),
            "queue": asyncio.Queue.__module__}

def record():
    with open(os.environ["FW_RECORD"], "a") as file:
        file.write(json.dumps(describe()) + "\\n")

async def app(scope, receive, send):
    """A bare ASGI app (uvicorn, hypercorn, gunicorn + UvicornWorker)."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                record()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    query = scope.get("query_string", b"").decode()
    if query.startswith("sleep="):
        await asyncio.sleep(float(query[6:]))
    body = json.dumps(describe()).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})

async def aiohttp_app():
    """An aiohttp.web app factory (run_app, gunicorn + AiohttpWorker)."""
    from aiohttp import web

    async def handler(request):
        if "sleep" in request.query:
            await asyncio.sleep(float(request.query["sleep"]))
        return web.json_response(describe())

    async def on_startup(app):
        record()

    application = web.Application()
    application.router.add_get("/", handler)
    application.on_startup.append(on_startup)
    return application

def selector_loop():
    return asyncio.SelectorEventLoop()
'''


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "fwapps.py").write_text(APPS)
    return tmp_path


def env_for(workdir: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, FW_RECORD=str(workdir / "record.jsonl"), **extra)
    env["PYTHONPATH"] = os.pathsep.join([PACKAGE_PARENT, str(workdir)])
    env.pop("PYASYNC_C_SAID", None)
    env.pop("PYASYNC_C_STDLIB_PRIMITIVES", None)
    return env


def records(workdir: Path) -> list[dict[str, Any]]:
    path = workdir / "record.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def get(port: int, path: str = "/", timeout: float = 10) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        assert resp.status == 200
        return json.loads(resp.read())  # type: ignore[no-any-return]
    finally:
        conn.close()


def wait_until(predicate: Any, proc: subprocess.Popen[bytes], what: str,
               timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"exited ({proc.returncode}) before {what}:\n{output(proc)}")
        if time.monotonic() > deadline:
            stop_process(proc)
            raise AssertionError(f"timed out waiting for {what}:\n{output(proc)}")
        time.sleep(0.05)


def output(proc: subprocess.Popen[bytes]) -> str:
    if proc.poll() is None:
        stop_process(proc)
    assert proc.stdout is not None
    return proc.stdout.read().decode(errors="replace")


@contextlib.contextmanager
def server(workdir: Path, args: list[str], processes: int = 1, **env: str
           ) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """Start ``python ARGS`` (with {port} filled in); yield once `processes`
    app processes have recorded their startup and the port answers."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, *[a.format(port=port) for a in args]],
                            cwd=workdir, env=env_for(workdir, **env),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: len(records(workdir)) >= processes, proc, f"{processes} app startups")

        def answers() -> bool:
            try:
                get(port, timeout=2)
                return True
            except (OSError, AssertionError, http.client.HTTPException):
                return False
        wait_until(answers, proc, "the first response")
        yield port, proc
    finally:
        stop_process(proc, timeout=15)
        if proc.stdout:
            proc.stdout.close()


def uvicorn_args(*extra: str, runner: bool = True) -> list[str]:
    return [*(["-m", "pyasync_c"] if runner else []), "-m", "uvicorn", "fwapps:app",
            "--host", "127.0.0.1", "--port", "{port}", "--log-level", "warning", *extra]


def stop_and_read(proc: subprocess.Popen[bytes]) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    assert proc.stdout is not None
    return proc.stdout.read().decode(errors="replace")


NOTE = "pyasync_c: "


# --------------------------------------------------------------------------
# uvicorn
# --------------------------------------------------------------------------

@pytest.mark.parametrize("loop, workers", [
    ("auto", 1), ("asyncio", 1), ("uvloop", 1), ("none", 1), ("auto", 2), ("uvloop", 2),
])
def test_uvicorn_under_runner(workdir: Path, loop: str, workers: int) -> None:
    pytest.importorskip("uvicorn")
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    extra = ["--loop", loop] + (["--workers", str(workers)] if workers > 1 else [])
    with server(workdir, uvicorn_args(*extra), processes=workers) as (port, proc):
        seen = get(port)
        assert seen["loop"] == PYASYNC_C_LOOP and seen["queue"] == "pyasync_c._primitives"
        started = records(workdir)
        assert len({r["pid"] for r in started}) == workers
        assert all(r["loop"] == PYASYNC_C_LOOP for r in started), started
        out = stop_and_read(proc)
    notes = [line for line in out.splitlines() if line.startswith(NOTE)]
    if loop == "uvloop":  # said once, naming the choice, also with two workers
        assert len(notes) == 1 and "--loop uvloop" in notes[0], out
    else:
        assert notes == [], out


def test_uvicorn_under_runner_fails_without_hooks(workdir: Path) -> None:
    """Plain uvicorn --loop auto picks uvloop (when installed): what the
    runner's hooks change."""
    pytest.importorskip("uvicorn")
    pytest.importorskip("uvloop")
    with server(workdir, uvicorn_args("--loop", "auto", runner=False)) as (port, proc):
        assert get(port)["loop"] == "uvloop.Loop"


@pytest.mark.parametrize("runner", [False, True])
def test_uvicorn_loop_import_string(workdir: Path, runner: bool) -> None:
    """The documented ``uvicorn --loop pyasync_c:new_event_loop`` (a loop
    factory import string, uvicorn >= 0.36), with two workers."""
    uvicorn = pytest.importorskip("uvicorn")
    if not hasattr(uvicorn.Config, "get_loop_factory"):
        pytest.skip("uvicorn < 0.36 has no custom --loop factory")
    args = uvicorn_args("--loop", "pyasync_c:new_event_loop", "--workers", "2", runner=runner)
    with server(workdir, args, processes=2) as (port, proc):
        assert all(r["loop"] == PYASYNC_C_LOOP for r in records(workdir))
        seen = get(port)
        assert seen["loop"] == PYASYNC_C_LOOP
        # without the runner: the loop only, asyncio's own primitives
        assert seen["queue"] == ("pyasync_c._primitives" if runner else "asyncio.queues")
        out = stop_and_read(proc)
    assert NOTE not in out, out


def test_uvicorn_custom_loop_is_kept_and_said(workdir: Path) -> None:
    """An explicit loop factory that is not pyasync_c's runs as asked, and
    pyasync_c says so once, naming the flag to use."""
    pytest.importorskip("uvicorn")
    with server(workdir, uvicorn_args("--loop", "fwapps:selector_loop")) as (port, proc):
        assert get(port)["loop"].startswith("asyncio.")
        out = stop_and_read(proc)
    notes = [line for line in out.splitlines() if line.startswith(NOTE)]
    assert len(notes) == 1 and "--loop pyasync_c:new_event_loop" in notes[0], out


# --------------------------------------------------------------------------
# hypercorn, aiohttp.web.run_app, anyio
# --------------------------------------------------------------------------

@pytest.mark.parametrize("worker_class", ["asyncio", "uvloop"])
def test_hypercorn_under_runner(workdir: Path, worker_class: str) -> None:
    pytest.importorskip("hypercorn")
    if worker_class == "uvloop":
        pytest.importorskip("uvloop")
    args = ["-m", "pyasync_c", "-m", "hypercorn", "fwapps:app", "-b", "127.0.0.1:{port}",
            "-w", "2", "-k", worker_class]
    with server(workdir, args, processes=2) as (port, proc):
        assert get(port)["loop"] == PYASYNC_C_LOOP
        assert all(r["loop"] == PYASYNC_C_LOOP for r in records(workdir)), records(workdir)
        out = stop_and_read(proc)
    notes = [line for line in out.splitlines() if line.startswith(NOTE)]
    assert len(notes) == (1 if worker_class == "uvloop" else 0), out


def test_aiohttp_run_app_under_runner(workdir: Path) -> None:
    pytest.importorskip("aiohttp")
    (workdir / "serve.py").write_text(textwrap.dedent("""
        import sys
        from aiohttp import web
        import fwapps
        web.run_app(fwapps.aiohttp_app(), host="127.0.0.1", port=int(sys.argv[1]), print=None)
    """))
    with server(workdir, ["-m", "pyasync_c", "serve.py", "{port}"]) as (port, proc):
        seen = get(port)
        assert seen["loop"] == PYASYNC_C_LOOP and seen["queue"] == "pyasync_c._primitives"
        assert records(workdir)[0]["loop"] == PYASYNC_C_LOOP


ANYIO_SCRIPT = """
import anyio, asyncio, json

async def main():
    return type(asyncio.get_running_loop()).__module__

print(json.dumps([anyio.run(main, backend="asyncio"),
                  anyio.run(main, backend="asyncio", backend_options={"use_uvloop": True}),
                  anyio.run(main, backend="asyncio", backend_options={"use_uvloop": True})]))
"""


def test_anyio_run_under_runner(workdir: Path) -> None:
    pytest.importorskip("anyio")
    pytest.importorskip("uvloop")
    (workdir / "anyio_main.py").write_text(ANYIO_SCRIPT)
    plain = subprocess.run([sys.executable, "anyio_main.py"], cwd=workdir, env=env_for(workdir),
                           capture_output=True, text=True, timeout=60)
    assert json.loads(plain.stdout) == ["asyncio.unix_events", "uvloop", "uvloop"], plain.stderr
    ours = subprocess.run([sys.executable, "-m", "pyasync_c", "anyio_main.py"], cwd=workdir,
                          env=env_for(workdir), capture_output=True, text=True, timeout=60)
    assert json.loads(ours.stdout) == ["pyasync_c.loop"] * 3, ours.stderr
    notes = [line for line in ours.stderr.splitlines() if line.startswith(NOTE)]
    assert len(notes) == 1 and "use_uvloop" in notes[0], ours.stderr


# --------------------------------------------------------------------------
# gunicorn workers
# --------------------------------------------------------------------------

GUNICORN_APPS = {"UvicornWorker": ("uvicorn", "fwapps:app"),
                 "AiohttpWorker": ("aiohttp", "fwapps:aiohttp_app")}


@pytest.mark.parametrize("worker", list(GUNICORN_APPS))
def test_gunicorn_worker(workdir: Path, worker: str) -> None:
    """Two workers on pyasync_c's loop serve requests; SIGHUP replaces them
    (still on pyasync_c); SIGTERM lets an in-flight request finish and exits 0."""
    pytest.importorskip("gunicorn")
    framework, app = GUNICORN_APPS[worker]
    pytest.importorskip(framework)
    args = ["-m", "gunicorn", "-w", "2", "-k", f"pyasync_c.workers.{worker}",
            "-b", "127.0.0.1:{port}", "--graceful-timeout", "10", app]
    with server(workdir, args, processes=2) as (port, proc):
        first = records(workdir)
        assert len({r["pid"] for r in first}) == 2
        assert all(r["loop"] == PYASYNC_C_LOOP and r["queue"] == "pyasync_c._primitives"
                   for r in first), first
        replies = [get(port) for _ in range(20)]
        assert {r["loop"] for r in replies} == {PYASYNC_C_LOOP}

        # SIGHUP: gunicorn reloads: two new workers, on pyasync_c again
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: len(records(workdir)) >= 4, proc, "the workers after SIGHUP")
        second = records(workdir)[2:]
        assert {r["pid"] for r in second}.isdisjoint({r["pid"] for r in first})
        assert all(r["loop"] == PYASYNC_C_LOOP for r in second), second
        new_pids = {r["pid"] for r in second}

        def only_new_workers_answer() -> bool:
            try:  # an old worker may drop a connection while it stops
                return {get(port, timeout=5)["pid"] for _ in range(10)} <= new_pids
            except (OSError, http.client.HTTPException):
                return False
        wait_until(only_new_workers_answer, proc, "only the new workers answering")

        # SIGTERM during a request: it completes, then everything exits
        result: dict[str, Any] = {}

        def slow_request() -> None:
            try:
                result["reply"] = get(port, "/?sleep=1", timeout=20)
            except Exception as exc:  # noqa: BLE001 - reported below
                result["error"] = exc
        thread = threading.Thread(target=slow_request)
        thread.start()
        time.sleep(0.4)
        proc.send_signal(signal.SIGTERM)
        thread.join(30)
        assert proc.wait(30) == 0
        assert "reply" in result, result
        assert result["reply"]["loop"] == PYASYNC_C_LOOP


@pytest.mark.parametrize("worker, app, notes", [
    ("uvicorn.workers.UvicornWorker", "fwapps:app", 0),
    ("aiohttp.GunicornUVLoopWebWorker", "fwapps:aiohttp_app", 1),
])
def test_gunicorn_framework_workers_under_runner(workdir: Path, worker: str, app: str,
                                                 notes: int) -> None:
    """``python -m pyasync_c -m gunicorn -k <the framework's own worker>``: the
    forked workers inherit the hooks; aiohttp's uvloop worker is said once."""
    pytest.importorskip("gunicorn")
    pytest.importorskip(worker.split(".")[0])
    pytest.importorskip("uvloop")
    args = ["-m", "pyasync_c", "-m", "gunicorn", "-w", "2", "-k", worker,
            "-b", "127.0.0.1:{port}", app]
    with server(workdir, args, processes=2) as (port, proc):
        assert all(r["loop"] == PYASYNC_C_LOOP for r in records(workdir)), records(workdir)
        assert get(port)["loop"] == PYASYNC_C_LOOP
        out = stop_and_read(proc)
    said = [line for line in out.splitlines() if line.startswith(NOTE)]
    assert len(said) == notes, out


# --------------------------------------------------------------------------
# pytest plugin
# --------------------------------------------------------------------------

SAMPLE_SUITE = '''
import asyncio, os
import pytest
import pytest_asyncio

def loop_module():
    return type(asyncio.get_running_loop()).__module__

def check():
    assert loop_module() == os.environ["EXPECT_LOOP"]
    assert asyncio.Queue.__module__ == os.environ["EXPECT_QUEUE"]

@pytest.mark.asyncio
async def test_pytest_asyncio():
    check()

@pytest_asyncio.fixture
async def loop_in_fixture():
    return loop_module()

@pytest.mark.asyncio
async def test_pytest_asyncio_fixture(loop_in_fixture):
    assert loop_in_fixture == os.environ["EXPECT_LOOP"]
    check()

@pytest.mark.anyio
async def test_anyio():
    check()
'''

SAMPLE_CONFTEST = '''
import os
import pytest

@pytest.fixture(params=["asyncio", ("asyncio", {"use_uvloop": True})] if os.environ.get("WITH_UVLOOP")
                else ["asyncio"])
def anyio_backend(request):
    return request.param
'''


def run_sample(tmp_path: Path, *args: str, expect_loop: str, expect_queue: str,
               ini: str = "", with_uvloop: bool = False, under_runner: bool = False
               ) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_sample.py").write_text(SAMPLE_SUITE)
    (tmp_path / "conftest.py").write_text(SAMPLE_CONFTEST)
    (tmp_path / "pytest.ini").write_text("[pytest]\nasyncio_default_fixture_loop_scope = function\n"
                                         "asyncio_mode = strict\n" + ini)
    env = dict(os.environ, PYTHONPATH=PACKAGE_PARENT, EXPECT_LOOP=expect_loop,
               EXPECT_QUEUE=expect_queue)
    env.pop("PYASYNC_C_SAID", None)
    env.pop("PYTEST_ADDOPTS", None)
    if with_uvloop:
        env["WITH_UVLOOP"] = "1"
    runner = ["-m", "pyasync_c"] if under_runner else []
    return subprocess.run([sys.executable, *runner, "-m", "pytest", "-p", "pyasync_c.pytest_plugin",
                           "-p", "no:cacheprovider", "-rs", *args, "test_sample.py"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def sample_deps() -> None:
    pytest.importorskip("pytest_asyncio")
    pytest.importorskip("anyio")


def test_pytest_plugin_is_opt_in(tmp_path: Path, sample_deps: None) -> None:
    proc = run_sample(tmp_path, expect_loop="asyncio.unix_events", expect_queue="asyncio.queues")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 passed" in proc.stdout and "pyasync_c" not in proc.stdout


@pytest.mark.parametrize("how", ["flag", "ini"])
def test_pytest_plugin_runs_tests_on_pyasync_c(tmp_path: Path, sample_deps: None, how: str) -> None:
    args, ini = (["--pyasync-c"], "") if how == "flag" else ([], "pyasync_c = true\n")
    proc = run_sample(tmp_path, *args, ini=ini, expect_loop="pyasync_c.loop",
                      expect_queue="pyasync_c._primitives")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 passed" in proc.stdout
    assert "pyasync_c 0.1.0: asyncio loop pyasync_c.loop.Loop" in proc.stdout


def test_pytest_under_runner(tmp_path: Path, sample_deps: None) -> None:
    """``python -m pyasync_c -m pytest``: the runner alone, no plugin option."""
    proc = run_sample(tmp_path, under_runner=True, with_uvloop=True, expect_loop="pyasync_c.loop",
                      expect_queue="pyasync_c._primitives")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "4 passed" in proc.stdout


def test_pytest_plugin_stdlib_primitives(tmp_path: Path, sample_deps: None) -> None:
    proc = run_sample(tmp_path, "--pyasync-c", "--pyasync-c-stdlib-primitives",
                      expect_loop="pyasync_c.loop", expect_queue="asyncio.queues")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 passed" in proc.stdout


def test_pytest_plugin_anyio_use_uvloop(tmp_path: Path, sample_deps: None) -> None:
    pytest.importorskip("uvloop")
    proc = run_sample(tmp_path, "--pyasync-c", with_uvloop=True, expect_loop="pyasync_c.loop",
                      expect_queue="pyasync_c._primitives")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "4 passed" in proc.stdout
    # pytest captures the tests' stderr: the plugin shows the note in its summary
    notes = [line for line in proc.stdout.splitlines() if line.startswith(NOTE)]
    assert len(notes) == 1 and "use_uvloop" in notes[0], proc.stdout


def test_pytest_plugin_entry_point_declared() -> None:
    import tomllib
    with open(ROOT / "pyproject.toml", "rb") as file:
        project = tomllib.load(file)["project"]
    assert project["entry-points"]["pytest11"] == {"pyasync_c": "pyasync_c.pytest_plugin"}
