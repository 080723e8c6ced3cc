"""Real servers and apps for tests/test_integration.py.

- ``redis_server`` (session fixture): a throwaway ``redis-server`` on a free
  loopback port and a unix socket, no persistence; skips when the binary is
  missing.
- ``pg_server`` (session fixture): a throwaway PostgreSQL cluster made with
  ``initdb`` in a temporary directory (as the ``postgres`` user when we are
  root: PostgreSQL refuses to run as root), listening on a free loopback port
  and a unix socket directory, with TLS on (the test certificate) and trust
  authentication; skips when the binaries are missing.
- ``make_fastapi_app()``: the FastAPI app the uvicorn tests serve, in process
  and in a ``python -m uvicorn --factory integration_util:make_fastapi_app``
  subprocess.  ``/loop`` answers the class of the loop serving it, ``/primitives``
  the module asyncio's Queue and Lock come from.

Everything listens on 127.0.0.1 (or a unix socket) only, and is stopped at
the end of the session.
"""

import asyncio
import contextlib
import dataclasses
import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from package_path import PACKAGE_PARENT

from net_util import TLSFiles, free_port

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def wait_port(port: int, timeout: float = 15.0, proc: subprocess.Popen[Any] | None = None) -> None:
    """Block until something accepts on 127.0.0.1:port (or fail after timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited early with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")
            time.sleep(0.05)


def server_env(**extra: str) -> dict[str, str]:
    """The environment for a server binary: without the sanitizer runtime that
    `make asan` preloads (an uninstrumented postgres or redis-server under
    LD_PRELOAD=libasan hangs or aborts)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS", "PYTHONMALLOC")}
    env.update(extra)
    return env


def stop_process(proc: subprocess.Popen[Any], timeout: float = 5.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------
# redis
# --------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RedisServer:
    port: int
    unix_socket: str


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    directory = tempfile.mkdtemp(prefix="pyac-redis")
    port = free_port()
    sock = os.path.join(directory, "redis.sock")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--daemonize", "no", "--dir", directory,
         "--unixsocket", sock, "--unixsocketperm", "700", "--loglevel", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=server_env())
    try:
        wait_port(port, proc=proc)
        yield RedisServer(port, sock)
    finally:
        stop_process(proc)
        shutil.rmtree(directory, ignore_errors=True)


# --------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class PgServer:
    port: int
    socket_dir: str
    user: str = "test"
    database: str = "postgres"

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.database}"


def _pg_bindir() -> str | None:
    # Debian's versioned directory first (its /usr/bin has only some wrappers).
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    if found:
        return os.path.dirname(found[-1])
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


@pytest.fixture(scope="session")
def pg_server(tls_files: TLSFiles) -> Iterator[PgServer]:
    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL's initdb is not installed (apt-get install postgresql)")
    run_as: list[str] = []
    owner: pwd.struct_passwd | None = None
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run PostgreSQL as")
        run_as = ["runuser", "-u", "postgres", "--"]
    directory = tempfile.mkdtemp(prefix="pyac-pg")
    data, sockdir = os.path.join(directory, "data"), os.path.join(directory, "sock")
    os.mkdir(sockdir)
    # PostgreSQL wants its own copy of the key, owned by it and 0600.
    cert, key = os.path.join(directory, "server.crt"), os.path.join(directory, "server.key")
    shutil.copy(tls_files.cert, cert)
    shutil.copy(tls_files.key, key)
    os.chmod(key, 0o600)
    if owner is not None:
        for path in (directory, sockdir, cert, key):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    port = free_port()
    log = os.path.join(directory, "pg.log")
    env = server_env(LC_ALL="C", LANG="C")
    try:
        subprocess.run(run_as + [os.path.join(bindir, "initdb"), "-D", data, "-U", "test",
                                 "-A", "trust", "--no-sync", "-E", "UTF8"],
                       check=True, capture_output=True, env=env, cwd=directory)
        options = (f"-p {port} -k {sockdir} -c listen_addresses=127.0.0.1 -F "
                   f"-c ssl=on -c ssl_cert_file={cert} -c ssl_key_file={key} "
                   f"-c max_connections=50 -c shared_buffers=16MB")
        subprocess.run(run_as + [os.path.join(bindir, "pg_ctl"), "-D", data, "-l", log,
                                 "-o", options, "-w", "-t", "30", "start"],
                       check=True, capture_output=True, env=env, cwd=directory)
    except subprocess.CalledProcessError as exc:
        logtext = Path(log).read_text() if os.path.exists(log) else ""
        shutil.rmtree(directory, ignore_errors=True)
        pytest.fail(f"could not start PostgreSQL: {exc.stderr!r} {logtext}")
    try:
        yield PgServer(port, sockdir)
    finally:
        subprocess.run(run_as + [os.path.join(bindir, "pg_ctl"), "-D", data, "-m", "immediate",
                                 "-w", "stop"], capture_output=True, env=env, cwd=directory)
        shutil.rmtree(directory, ignore_errors=True)


# --------------------------------------------------------------------------
# FastAPI
# --------------------------------------------------------------------------

def make_fastapi_app() -> Any:
    """The app the uvicorn tests serve (also loaded by `uvicorn --factory`)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import StreamingResponse
    from pydantic import BaseModel

    app = FastAPI()

    class Item(BaseModel):
        name: str
        count: int

    @app.get("/hello")
    async def hello() -> dict[str, str]:
        return {"hello": "world"}

    @app.get("/loop")
    async def loop() -> dict[str, str]:
        cls = type(asyncio.get_running_loop())
        return {"loop": f"{cls.__module__}.{cls.__qualname__}"}

    @app.get("/primitives")
    async def primitives() -> dict[str, str]:
        return {"Queue": asyncio.Queue.__module__, "Lock": asyncio.Lock.__module__}

    @app.post("/items")
    async def items(item: Item) -> dict[str, Any]:
        return {"name": item.name.upper(), "count": item.count * 2}

    @app.post("/raw")
    async def raw(request: Request) -> dict[str, int]:
        body = await request.body()
        return {"size": len(body), "sum": sum(body) % 65521}

    @app.get("/stream")
    async def stream(chunks: int = 20, size: int = 1000) -> StreamingResponse:
        async def gen() -> Any:
            for i in range(chunks):
                yield bytes([65 + i % 26]) * size
                await asyncio.sleep(0)
        return StreamingResponse(gen(), media_type="application/octet-stream")

    @app.get("/sleep")
    async def sleep(seconds: float = 0.01) -> dict[str, float]:
        await asyncio.sleep(seconds)
        return {"slept": seconds}

    return app


@contextlib.contextmanager
def uvicorn_subprocess(loop: str, extra_env: dict[str, str] | None = None,
                       graceful_timeout: float | None = None, under_pyasync_c: bool = False
                       ) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """``python -m uvicorn --factory integration_util:make_fastapi_app --loop LOOP``;
    with under_pyasync_c, ``python -m pyasync_c -m uvicorn ...`` (the C primitives
    put into asyncio before uvicorn and the app are imported)."""
    port = free_port()
    env = dict(os.environ, **(extra_env or {}))
    # The in-place pyasync_c build (the repo root) and this directory.
    env["PYTHONPATH"] = os.pathsep.join(
        ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []) + [PACKAGE_PARENT, str(HERE)])
    proc = subprocess.Popen(
        [sys.executable, *(["-m", "pyasync_c"] if under_pyasync_c else []), "-m", "uvicorn", "--factory", "integration_util:make_fastapi_app",
         "--host", "127.0.0.1", "--port", str(port), "--loop", loop,
         "--log-level", "info" if graceful_timeout else "warning", "--no-access-log"]
        + (["--timeout-graceful-shutdown", str(graceful_timeout)] if graceful_timeout else []),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))
    try:
        try:
            wait_port(port, proc=proc)
        except (RuntimeError, TimeoutError) as exc:
            stop_process(proc)
            out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            raise RuntimeError(f"uvicorn did not start: {exc}\n{out}") from None
        yield port, proc
    finally:
        stop_process(proc)
        if proc.stdout:
            proc.stdout.close()
