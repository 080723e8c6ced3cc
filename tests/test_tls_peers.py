"""TLS against real peers: other TLS implementations and real servers.

Each test runs on the stdlib loop (asyncio's sslproto) and on pyasync_c's
(the native TLS layer); a peer whose tool is missing skips.

- ``openssl s_server`` as the server of our client, ``openssl s_client`` as
  the client of our server, TLS 1.2 and 1.3;
- uvicorn serving HTTPS on pyasync_c's loop in a subprocess (the app reports
  its loop and the class of the TLS transport uvicorn's protocol got), httpx
  as the client;
- asyncpg with ``ssl=`` to a throwaway PostgreSQL with ``ssl=on``
  (integration_util's ``pg_server``: asyncpg upgrades with ``loop.start_tls``);
- redis-py over TLS to a throwaway ``redis-server --tls-port``.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from integration_util import (ROOT, HERE, PgServer, pg_server, server_env, stop_process,
                              wait_port)
from net_util import (TLSFiles, arun, client_context, free_port, server_context, server_port,
                      tcp_server, tls_files)

__all__ = ["arun", "tls_files", "pg_server"]  # fixtures, imported for pytest

TIMEOUT = 30.0
OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="the openssl CLI is not installed")
TLS_VERSIONS = {"1.2": ("-tls1_2", ssl.TLSVersion.TLSv1_2),
                "1.3": ("-tls1_3", ssl.TLSVersion.TLSv1_3)}


@pytest.fixture(autouse=True)
def native_tls(monkeypatch: pytest.MonkeyPatch, loop_name: str) -> None:
    """pyasync_c's loop uses the native TLS layer in this module."""
    if loop_name == "pyasync_c":
        from pyasync_c import _network
        monkeypatch.setattr(_network, "_NATIVE_TLS", True)


def check_native(transport: Any, loop_name: str) -> None:
    """On pyasync_c the app's transport is the native one."""
    if loop_name == "pyasync_c":
        from pyasync_c import _loop
        assert type(transport) is _loop.SSLTransport


# --------------------------------------------------------------------------
# openssl s_server / s_client
# --------------------------------------------------------------------------

@needs_openssl
@pytest.mark.parametrize("version", list(TLS_VERSIONS))
def test_client_to_openssl_s_server(arun, tls_files: TLSFiles, loop_name: str,
                                    version: str) -> None:
    """Our client against `openssl s_server -rev` (answers each line reversed)."""
    flag, tls_version = TLS_VERSIONS[version]
    port = free_port()
    proc = subprocess.Popen(
        [OPENSSL, "s_server", "-accept", f"127.0.0.1:{port}", "-cert", str(tls_files.cert),
         "-key", str(tls_files.key), "-rev", "-quiet", flag],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env=server_env())
    try:
        wait_port(port, proc=proc)

        async def main() -> None:
            ctx = client_context(tls_files)
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=ctx, server_hostname="localhost")
            check_native(writer.transport, loop_name)
            assert writer.get_extra_info("ssl_object").version() == f"TLSv{version}"
            for i in range(20):
                line = f"hello {i} " + "x" * (i * 500)
                writer.write(line.encode() + b"\n")
                answer = await reader.readline()
                assert answer.rstrip(b"\r\n") == line[::-1].encode()
            writer.close()
            await writer.wait_closed()

        arun(main(), timeout=TIMEOUT)
    finally:
        stop_process(proc)


@needs_openssl
@pytest.mark.parametrize("version", list(TLS_VERSIONS))
def test_openssl_s_client_to_server(arun, tls_files: TLSFiles, loop_name: str,
                                    version: str) -> None:
    """`openssl s_client` (verifying our certificate) against our server, which
    answers every line upper-cased and closes (close_notify) after the last."""
    flag, _ = TLS_VERSIONS[version]
    lines = [f"line {i} ".encode() + b"abc" * (i * 100) for i in range(30)]
    transports: list[Any] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        transports.append(writer.transport)
        for _ in lines:
            writer.write((await reader.readline()).upper())
        await writer.drain()
        writer.close()

    async def main() -> bytes:
        server = await asyncio.start_server(handle, "127.0.0.1", 0,
                                            ssl=server_context(tls_files))
        async with server:
            port = server_port(server)
            proc = await asyncio.get_running_loop().run_in_executor(None, lambda: subprocess.run(
                [OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", "-servername",
                 "localhost", "-CAfile", str(tls_files.cert), "-verify_return_error",
                 "-quiet", flag],
                input=b"".join(line + b"\n" for line in lines), capture_output=True,
                timeout=TIMEOUT - 5, env=server_env()))
            assert proc.returncode == 0, proc.stderr
            assert len(transports) == 1
            check_native(transports[0], loop_name)
            return proc.stdout

    out = arun(main(), timeout=TIMEOUT)
    assert out.splitlines() == [line.upper() for line in lines]


# --------------------------------------------------------------------------
# uvicorn (HTTPS on pyasync_c, subprocess) + httpx
# --------------------------------------------------------------------------

def make_asgi_app() -> Any:
    """`uvicorn --factory test_tls_peers:make_asgi_app --http h11`: an ASGI app
    answering the class of its loop and the classes of the transports uvicorn's
    h11 protocol was given (recorded by wrapping its connection_made)."""
    from uvicorn.protocols.http import h11_impl

    transport_types: list[str] = []
    original = h11_impl.H11Protocol.connection_made

    def connection_made(self: Any, transport: Any) -> None:
        cls = type(transport)
        transport_types.append(f"{cls.__module__}.{cls.__qualname__}")
        original(self, transport)

    h11_impl.H11Protocol.connection_made = connection_made  # type: ignore[method-assign]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/info":
            loop_cls = type(asyncio.get_running_loop())
            body = repr({"loop": f"{loop_cls.__module__}.{loop_cls.__qualname__}",
                         "transports": sorted(set(transport_types))}).encode()
        else:
            body = b"z" * int(scope["query_string"] or b"10")
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    return app


def test_httpx_to_uvicorn_https_on_pyasync_c(arun, tls_files: TLSFiles) -> None:
    pytest.importorskip("uvicorn")
    httpx = pytest.importorskip("httpx")
    port = free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(HERE)]))
    env.pop("PYASYNC_C_NATIVE_TLS", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "test_tls_peers:make_asgi_app",
         "--host", "127.0.0.1", "--port", str(port), "--loop", "pyasync_c:new_event_loop",
         "--http", "h11", "--ssl-keyfile", str(tls_files.key),
         "--ssl-certfile", str(tls_files.cert), "--log-level", "warning", "--no-access-log"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))
    try:
        try:
            wait_port(port, proc=proc)
        except (RuntimeError, TimeoutError):
            stop_process(proc)
            pytest.fail("uvicorn did not start: "
                        + (proc.stdout.read().decode(errors="replace") if proc.stdout else ""))

        async def main() -> dict[str, Any]:
            ctx = client_context(tls_files)
            async with httpx.AsyncClient(verify=ctx, base_url=f"https://localhost:{port}") as client:
                for size in (10, 100_000, 3_000_000):
                    r = await client.get(f"/data?{size}")
                    assert r.status_code == 200 and r.content == b"z" * size
                    assert r.url.scheme == "https"
                results = await asyncio.gather(*(client.get("/data?1000") for _ in range(20)))
                assert all(r.content == b"z" * 1000 for r in results)
                r = await client.get("/info")
                import ast
                return ast.literal_eval(r.text)

        info = arun(main(), timeout=TIMEOUT)
        assert info["loop"] == "pyasync_c.loop.Loop"
        assert info["transports"] == ["pyasync_c._loop.SSLTransport"]
    finally:
        stop_process(proc)
        if proc.stdout:
            proc.stdout.close()


# --------------------------------------------------------------------------
# asyncpg + PostgreSQL (ssl=on)
# --------------------------------------------------------------------------

def test_asyncpg_ssl(arun, loop_name: str, pg_server: PgServer, tls_files: TLSFiles) -> None:
    asyncpg = pytest.importorskip("asyncpg")

    async def main() -> None:
        conn = await asyncpg.connect(pg_server.dsn, ssl=client_context(tls_files))
        try:
            check_native(conn._transport, loop_name)
            assert conn._transport.get_extra_info("ssl_object") is not None
            row = await conn.fetchrow(
                "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            assert row["ssl"] is True and row["version"].startswith("TLSv1.")
            assert await conn.fetchval("SELECT length(repeat('q', 2000000))") == 2_000_000
            assert await conn.fetchval("SELECT $1::text", "é" * 70_000) == "é" * 70_000
        finally:
            await conn.close()

    arun(main(), timeout=TIMEOUT)


def test_asyncpg_ssl_require_and_verify_failure(arun, loop_name: str,
                                                pg_server: PgServer) -> None:
    """A CA that did not sign the server's certificate: asyncpg's verification
    error, as on the stdlib loop."""
    asyncpg = pytest.importorskip("asyncpg")
    ctx = ssl.create_default_context()  # system CAs only: the test cert is unknown

    async def main() -> None:
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncpg.connect(pg_server.dsn, ssl=ctx)
        conn = await asyncpg.connect(pg_server.dsn, ssl="require")  # no verification
        try:
            check_native(conn._transport, loop_name)
            assert await conn.fetchval("SELECT 1") == 1
        finally:
            await conn.close()

    arun(main(), timeout=TIMEOUT)


# --------------------------------------------------------------------------
# redis-py over TLS
# --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def redis_tls(tls_files: TLSFiles) -> Any:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    directory = tempfile.mkdtemp(prefix="pyac-redis-tls")
    port = free_port()
    log = Path(directory) / "redis.log"
    proc = subprocess.Popen(
        [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(tls_files.cert), "--tls-key-file", str(tls_files.key),
         "--tls-ca-cert-file", str(tls_files.cert), "--tls-auth-clients", "no",
         "--save", "", "--appendonly", "no", "--dir", directory, "--logfile", str(log)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=server_env())
    try:
        try:
            wait_port(port, proc=proc, timeout=10)
        except (RuntimeError, TimeoutError):
            text = log.read_text() if log.exists() else ""
            pytest.skip(f"redis-server does not serve TLS here: {text[-300:]}")
        yield port
    finally:
        stop_process(proc)
        shutil.rmtree(directory, ignore_errors=True)


def test_redis_tls(arun, loop_name: str, redis_tls: int, tls_files: TLSFiles) -> None:
    redis = pytest.importorskip("redis.asyncio")

    async def main() -> None:
        client = redis.Redis(host="localhost", port=redis_tls, ssl=True,
                             ssl_ca_certs=str(tls_files.cert), ssl_cert_reqs="required")
        try:
            assert await client.ping()
            big = os.urandom(1_000_000)
            await client.set("k", big)
            assert await client.get("k") == big
            async with client.pipeline() as pipe:
                for i in range(200):
                    pipe.incr("n")
                assert (await pipe.execute())[-1] == 200
            conn = await client.connection_pool.get_connection()
            try:
                check_native(conn._writer.transport, loop_name)
            finally:
                await client.connection_pool.release(conn)
            await client.delete("k", "n")
        finally:
            await client.aclose()

    arun(main(), timeout=TIMEOUT)
