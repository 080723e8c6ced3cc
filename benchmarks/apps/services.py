"""Throwaway peers for the app benchmarks: a TLS certificate, redis-server and
a PostgreSQL cluster (initdb in a temporary directory, trust authentication,
as the `postgres` user when we are root), each on a free loopback port and
pinned to the server CPU. Each is a context manager yielding its address, or
raising Unavailable when the binary is missing."""
from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

from common import free_port, pin_cmd, wait_port


class Unavailable(Exception):
    """A peer this workload needs is not installed."""


def _quiet_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "PYTHONMALLOC")}
    env.update(extra)
    return env


@contextlib.contextmanager
def tls_cert() -> Iterator[tuple[str, str]]:
    """(cert, key): a self-signed certificate for 127.0.0.1/localhost."""
    if shutil.which("openssl") is None:
        raise Unavailable("openssl is not installed")
    with tempfile.TemporaryDirectory(prefix="pyac-apps-tls") as d:
        cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                        "-keyout", key, "-out", cert], check=True, capture_output=True)
        yield cert, key


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def redis_server(cpu: int | None) -> Iterator[str]:
    """host:port of a redis-server without persistence."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise Unavailable("redis-server is not installed (apt-get install redis-server)")
    with tempfile.TemporaryDirectory(prefix="pyac-apps-redis") as d:
        port = free_port()
        proc = subprocess.Popen(pin_cmd(cpu, [binary, "--port", str(port), "--bind", "127.0.0.1",
                                              "--save", "", "--appendonly", "no", "--dir", d,
                                              "--loglevel", "warning"]),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_quiet_env())
        try:
            wait_port(port, alive=lambda: proc.poll() is None)
            yield f"127.0.0.1:{port}"
        finally:
            _stop(proc)


def _pg_bindir() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    if found:
        return os.path.dirname(found[-1])
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


@contextlib.contextmanager
def postgres(cpu: int | None) -> Iterator[str]:
    """The DSN of a throwaway PostgreSQL cluster."""
    bindir = _pg_bindir()
    if bindir is None:
        raise Unavailable("PostgreSQL's initdb is not installed (apt-get install postgresql)")
    run_as: list[str] = []
    directory = tempfile.mkdtemp(prefix="pyac-apps-pg")
    if os.geteuid() == 0:
        import pwd
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(directory, ignore_errors=True)
            raise Unavailable("running as root and there is no 'postgres' user") from None
        os.chown(directory, owner.pw_uid, owner.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    data, port = os.path.join(directory, "data"), free_port()
    env = _quiet_env(LC_ALL="C", LANG="C")
    try:
        subprocess.run(run_as + [f"{bindir}/initdb", "-D", data, "-U", "bench", "-A", "trust",
                                 "--no-sync", "-E", "UTF8"],
                       check=True, capture_output=True, env=env, cwd=directory)
        options = (f"-p {port} -k {directory} -c listen_addresses=127.0.0.1 -F "
                   "-c max_connections=200 -c shared_buffers=32MB")
        subprocess.run(pin_cmd(cpu, run_as + [f"{bindir}/pg_ctl", "-D", data, "-l",
                                              f"{directory}/pg.log", "-o", options, "-w", "-t", "30",
                                              "start"]),
                       check=True, capture_output=True, env=env, cwd=directory)
    except subprocess.CalledProcessError as exc:
        log = Path(directory, "pg.log")
        text = log.read_text() if log.exists() else ""
        shutil.rmtree(directory, ignore_errors=True)
        raise RuntimeError(f"could not start PostgreSQL: {exc.stderr!r} {text}") from None
    try:
        yield f"postgresql://bench@127.0.0.1:{port}/postgres?sslmode=disable"
    finally:
        subprocess.run(run_as + [f"{bindir}/pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"],
                       capture_output=True, env=env, cwd=directory)
        shutil.rmtree(directory, ignore_errors=True)
