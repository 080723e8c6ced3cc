"""Real asyncio libraries, unmodified, on the stdlib loop and on pyasync_c's,
against real peers on loopback.

Every test is parametrised over both loops (conftest.py's ``loop_factory`` /
``run``, bounded by ``arun`` below), and a third time as ``installed``: on
pyasync_c's loop with the C Lock/Event/Semaphore/Queue/gather/sleep put into
asyncio (primitive_loops.py), which the libraries then use as they would
under ``python -m pyasync_c``; its uvicorn subprocesses run under
``python -m pyasync_c -m uvicorn``.  A test skips when its library is not
installed (``pytest.importorskip``) or its server binary is missing
(integration_util's ``redis_server`` / ``pg_server`` fixtures); .ci/integration-deps
installs them all.

- aiohttp server + client: GET/POST, streaming both ways, FileResponse (which
  goes through loop.sendfile), websocket echo, keep-alive reuse, 100 concurrent
  requests, TLS, a slow reader (sendfile EAGAIN, pause_writing) and abandoned
  downloads, unix sockets (UnixSite/UnixConnector, and httpx over uds).
- httpx (anyio's own TLS over a plain transport) against aiohttp over TLS.
- uvicorn serving a FastAPI app in-process on the running loop (TCP and unix
  socket), hit with httpx.AsyncClient; ``python -m uvicorn --loop
  pyasync_c:new_event_loop`` in a subprocess; graceful shutdown on
  SIGINT/SIGTERM with ``--loop asyncio`` / ``--loop pyasync_c:new_event_loop``.
- websockets server + client: echo, a client that does not read
  (pause_reading), server shutdown with a client connected.
- redis-py's asyncio client against a throwaway redis-server: set/get,
  pipeline, pubsub, 200 concurrent commands, unix socket, a connection killed
  by the server, a cancelled blocking command.
- asyncpg against a throwaway PostgreSQL cluster: simple query, prepared
  statement, cursor, COPY, transactions, a pool under concurrency, TLS
  (start_tls), unix socket, query cancellation, killed/terminated connections.
- plain asyncio streams with TLS, and a STARTTLS upgrade on both sides.

Every test also fails if the loop's exception handler was called.
"""
from __future__ import annotations

import asyncio
import hashlib
import io
import os
import ssl
import sys
from pathlib import Path
from typing import Any

import pytest

from integration_util import (PgServer, RedisServer, pg_server, redis_server,  # noqa: F401
                              uvicorn_subprocess)
from net_util import TLSFiles, client_context, server_context, tls_files  # noqa: F401
from primitive_loops import INSTALLED, loop_name_with_installed  # noqa: F401  (fixture: loop_name)

TIMEOUT = 20.0


@pytest.fixture
def arun(run: Any, loop_name: str) -> Any:
    """Like net_util's ``arun`` (conftest's ``run`` bounded by asyncio.timeout),
    and also fails the test when the loop's exception handler was called (an
    error a library or the loop reported but did not raise: "Fatal error on
    transport", "Exception in callback"...)."""
    def checked(coro: Any, timeout: float = TIMEOUT, debug: bool = False) -> Any:
        contexts: list[dict[str, Any]] = []

        async def main() -> Any:
            expect_loop(loop_name)
            loop = asyncio.get_running_loop()
            default = loop.default_exception_handler

            def handler(loop: Any, context: dict[str, Any]) -> None:
                contexts.append(context)
                default(context)
            loop.set_exception_handler(handler)
            async with asyncio.timeout(timeout):
                return await coro

        result = run(main(), debug=debug)
        assert not contexts, [(c.get("message"), repr(c.get("exception"))) for c in contexts]
        return result
    return checked


def blob(size: int, seed: int = 0) -> bytes:
    """Deterministic, non-repeating-ish bytes."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def loop_class_name() -> str:
    cls = type(asyncio.get_running_loop())
    return f"{cls.__module__}.{cls.__qualname__}"


def expect_loop(loop_name: str) -> None:
    """The test really runs on the loop it claims to."""
    name = loop_class_name()
    if loop_name in ("pyasync_c", INSTALLED):
        assert name.startswith("pyasync_c."), name
        if loop_name == INSTALLED:
            from pyasync_c import _primitives
            assert asyncio.Lock is _primitives.Lock and asyncio.gather is _primitives.gather
    else:
        assert name.startswith("asyncio."), name


# --------------------------------------------------------------------------
# aiohttp
# --------------------------------------------------------------------------

class AiohttpApp:
    """An aiohttp.web app on 127.0.0.1:<free port>, served by the running loop."""

    def __init__(self, tmp_path: Path, ssl_context: ssl.SSLContext | None = None) -> None:
        self.tmp_path = tmp_path
        self.ssl_context = ssl_context
        self.peers: list[Any] = []
        self.file_data = blob(3 * 1024 * 1024 + 123, seed=1)
        self.file_path = tmp_path / "payload.bin"
        self.file_path.write_bytes(self.file_data)
        self.base = ""

    async def __aenter__(self) -> "AiohttpApp":
        from aiohttp import WSMsgType, web

        async def hello(request: web.Request) -> web.Response:
            self.peers.append(request.transport.get_extra_info("peername")
                              if request.transport else None)
            return web.Response(text="hello " + request.query.get("name", "world"))

        async def echo(request: web.Request) -> web.Response:
            body = await request.read()
            return web.Response(body=body, headers={"X-Sha": hashlib.sha256(body).hexdigest()})

        async def json_sum(request: web.Request) -> web.Response:
            data = await request.json()
            return web.json_response({"sum": sum(data["values"]), "n": len(data["values"])})

        async def upload(request: web.Request) -> web.Response:
            digest, size = hashlib.sha256(), 0
            async for chunk in request.content.iter_chunked(65536):
                digest.update(chunk)
                size += len(chunk)
            return web.json_response({"size": size, "sha": digest.hexdigest()})

        async def stream(request: web.Request) -> web.StreamResponse:
            chunks, size = int(request.query["chunks"]), int(request.query["size"])
            resp = web.StreamResponse()
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            for i in range(chunks):
                await resp.write(blob(size, seed=i))
            await resp.write_eof()
            return resp

        async def file(request: web.Request) -> web.FileResponse:
            return web.FileResponse(self.file_path)

        async def ws(request: web.Request) -> web.WebSocketResponse:
            sock = web.WebSocketResponse()
            await sock.prepare(request)
            async for msg in sock:
                if msg.type == WSMsgType.TEXT:
                    if msg.data == "close":
                        await sock.close(code=4000, message=b"bye")
                    else:
                        await sock.send_str("echo:" + msg.data)
                elif msg.type == WSMsgType.BINARY:
                    await sock.send_bytes(msg.data[::-1])
            return sock

        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_get("/hello", hello)
        app.router.add_post("/echo", echo)
        app.router.add_post("/json", json_sum)
        app.router.add_post("/upload", upload)
        app.router.add_get("/stream", stream)
        app.router.add_get("/file", file)
        app.router.add_get("/ws", ws)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=self.ssl_context)
        await site.start()
        port = self.runner.addresses[0][1]
        scheme = "https" if self.ssl_context else "http"
        self.base = f"{scheme}://localhost:{port}" if self.ssl_context else f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.runner.cleanup()


def test_aiohttp_get_post(arun: Any, loop_name: str, tmp_path: Path) -> None:
    aiohttp = pytest.importorskip("aiohttp")

    async def main() -> None:
        expect_loop(loop_name)
        async with AiohttpApp(tmp_path) as srv, aiohttp.ClientSession() as session:
            async with session.get(srv.base + "/hello", params={"name": "pyasync"}) as resp:
                assert resp.status == 200
                assert await resp.text() == "hello pyasync"
            body = blob(200_000, seed=7)
            async with session.post(srv.base + "/echo", data=body) as resp:
                assert resp.status == 200
                assert await resp.read() == body
                assert resp.headers["X-Sha"] == hashlib.sha256(body).hexdigest()
            async with session.post(srv.base + "/json", json={"values": list(range(1000))}) as resp:
                assert await resp.json() == {"sum": 499500, "n": 1000}
            async with session.get(srv.base + "/missing") as resp:
                assert resp.status == 404

    arun(main(), timeout=TIMEOUT)


def test_aiohttp_streaming(arun: Any, loop_name: str, tmp_path: Path) -> None:
    aiohttp = pytest.importorskip("aiohttp")

    async def main() -> None:
        async with AiohttpApp(tmp_path) as srv, aiohttp.ClientSession() as session:
            # Chunked response, read incrementally.
            chunks, size = 64, 16 * 1024
            expected = b"".join(blob(size, seed=i) for i in range(chunks))
            got = bytearray()
            async with session.get(srv.base + "/stream",
                                   params={"chunks": chunks, "size": size}) as resp:
                assert resp.headers.get("Transfer-Encoding") == "chunked"
                async for piece in resp.content.iter_chunked(4096):
                    got += piece
            assert bytes(got) == expected

            # Chunked request body from an async generator.
            async def gen() -> Any:
                for i in range(50):
                    yield blob(32 * 1024, seed=100 + i)
                    await asyncio.sleep(0)
            sent = b"".join(blob(32 * 1024, seed=100 + i) for i in range(50))
            async with session.post(srv.base + "/upload", data=gen()) as resp:
                assert await resp.json() == {"size": len(sent),
                                             "sha": hashlib.sha256(sent).hexdigest()}

    arun(main(), timeout=TIMEOUT)


def test_aiohttp_file_response_sendfile(arun: Any, loop_name: str, tmp_path: Path) -> None:
    aiohttp = pytest.importorskip("aiohttp")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        calls: list[Any] = []
        real_sendfile = loop.sendfile

        async def spy(transport: Any, file: Any, offset: int = 0, count: Any = None,
                      **kw: Any) -> int:
            calls.append((offset, count))
            return await real_sendfile(transport, file, offset, count, **kw)

        loop.sendfile = spy  # type: ignore[method-assign]
        async with AiohttpApp(tmp_path) as srv, aiohttp.ClientSession() as session:
            for _ in range(2):  # twice on the same keep-alive connection
                async with session.get(srv.base + "/file") as resp:
                    assert resp.status == 200
                    data = await resp.read()
                assert len(data) == len(srv.file_data)
                assert data == srv.file_data
            async with session.get(srv.base + "/file",
                                   headers={"Range": "bytes=1000000-1000999"}) as resp:
                assert resp.status == 206
                assert await resp.read() == srv.file_data[1000000:1001000]
            # And the connection is still usable for a plain request after sendfile.
            async with session.get(srv.base + "/hello") as resp:
                assert await resp.text() == "hello world"
        assert calls, "aiohttp's FileResponse did not go through loop.sendfile"

    arun(main(), timeout=TIMEOUT)


def test_aiohttp_websocket(arun: Any, loop_name: str, tmp_path: Path) -> None:
    aiohttp = pytest.importorskip("aiohttp")

    async def main() -> None:
        async with AiohttpApp(tmp_path) as srv, aiohttp.ClientSession() as session:
            async with session.ws_connect(srv.base + "/ws", max_msg_size=0) as ws:
                for i in range(100):
                    await ws.send_str(f"m{i}")
                    assert await ws.receive_str() == f"echo:m{i}"
                big = blob(1024 * 1024, seed=3)
                await ws.send_bytes(big)
                assert await ws.receive_bytes() == big[::-1]
                await ws.send_str("close")
                msg = await ws.receive()
                assert msg.type == aiohttp.WSMsgType.CLOSE
                assert msg.data == 4000
            assert ws.closed

    arun(main(), timeout=TIMEOUT)


def test_aiohttp_keepalive_many_requests(arun: Any, loop_name: str, tmp_path: Path) -> None:
    aiohttp = pytest.importorskip("aiohttp")

    async def main() -> None:
        async with AiohttpApp(tmp_path) as srv:
            connector = aiohttp.TCPConnector(limit=1)
            async with aiohttp.ClientSession(connector=connector) as session:
                for i in range(300):
                    async with session.get(srv.base + "/hello", params={"name": str(i)}) as resp:
                        assert await resp.text() == f"hello {i}"
            assert len(srv.peers) == 300
            assert len(set(srv.peers)) == 1, "keep-alive connection was not reused"

    arun(main(), timeout=TIMEOUT)


def test_aiohttp_100_concurrent_requests(arun: Any, loop_name: str, tmp_path: Path) -> None:
    aiohttp = pytest.importorskip("aiohttp")

    async def main() -> None:
        async with AiohttpApp(tmp_path) as srv:
            connector = aiohttp.TCPConnector(limit=100)
            async with aiohttp.ClientSession(connector=connector) as session:
                async def one(i: int) -> bytes:
                    body = blob(2000 + i, seed=i)
                    async with session.post(srv.base + "/echo", data=body) as resp:
                        assert resp.status == 200
                        return await resp.read()
                for _ in range(2):  # the second round reuses the pooled connections
                    results = await asyncio.gather(*(one(i) for i in range(100)))
                    assert results == [blob(2000 + i, seed=i) for i in range(100)]

    arun(main(), timeout=TIMEOUT)


def test_aiohttp_tls(arun: Any, loop_name: str, tmp_path: Path, tls_files: TLSFiles) -> None:
    aiohttp = pytest.importorskip("aiohttp")

    async def main() -> None:
        async with AiohttpApp(tmp_path, ssl_context=server_context(tls_files)) as srv:
            connector = aiohttp.TCPConnector(ssl=client_context(tls_files))
            async with aiohttp.ClientSession(connector=connector) as session:
                for _ in range(3):
                    async with session.get(srv.base + "/hello") as resp:
                        assert await resp.text() == "hello world"
                body = blob(1024 * 1024, seed=5)
                async with session.post(srv.base + "/echo", data=body) as resp:
                    assert await resp.read() == body
                # Over TLS aiohttp cannot sendfile(): the fallback path must work too.
                async with session.get(srv.base + "/file") as resp:
                    assert await resp.read() == srv.file_data
                async with session.ws_connect(srv.base + "/ws") as ws:
                    await ws.send_str("tls")
                    assert await ws.receive_str() == "echo:tls"

    arun(main(), timeout=TIMEOUT)


def test_aiohttp_slow_reader_backpressure(arun: Any, loop_name: str, tmp_path: Path) -> None:
    """A client reading slowly: the server's sendfile() meets EAGAIN and its
    streamed writes meet pause_writing(); cancelled downloads leave the
    session usable."""
    aiohttp = pytest.importorskip("aiohttp")

    async def main() -> None:
        async with AiohttpApp(tmp_path) as srv:
            big = blob(12 * 1024 * 1024, seed=21)
            (tmp_path / "big.bin").write_bytes(big)
            srv.file_path = tmp_path / "big.bin"
            async with aiohttp.ClientSession(read_bufsize=2 ** 16) as session:
                got = bytearray()
                async with session.get(srv.base + "/file") as resp:
                    async for chunk in resp.content.iter_chunked(65536):
                        got += chunk
                        if len(got) < 2 * 1024 * 1024:
                            await asyncio.sleep(0.002)
                assert bytes(got) == big
                n = 0
                async with session.get(srv.base + "/stream",
                                       params={"chunks": 200, "size": 65536}) as resp:
                    async for chunk in resp.content.iter_chunked(65536):
                        n += len(chunk)
                        if n < 3 * 1024 * 1024:
                            await asyncio.sleep(0.001)
                assert n == 200 * 65536
                for _ in range(3):  # abandon downloads half-way: cancelled...
                    with pytest.raises(TimeoutError):
                        async with asyncio.timeout(0.02):
                            async with session.get(srv.base + "/file") as resp:
                                async for _chunk in resp.content.iter_chunked(65536):
                                    await asyncio.sleep(0.001)  # >= 190 ms in all
                for _ in range(3):  # ...or left unread (aiohttp closes the connection)
                    async with session.get(srv.base + "/file") as resp:
                        assert len(await resp.content.read(65536)) > 0
                async with session.get(srv.base + "/file") as resp:
                    assert await resp.read() == big

    arun(main(), timeout=TIMEOUT)


def test_aiohttp_unix_socket_and_httpx_uds(arun: Any, loop_name: str, tmp_path: Path) -> None:
    """aiohttp's UnixSite (create_unix_server) hit by aiohttp's UnixConnector
    (create_unix_connection) and by httpx over a unix socket (anyio:
    sock_connect + add_reader/add_writer on the raw socket)."""
    aiohttp = pytest.importorskip("aiohttp")
    httpx = pytest.importorskip("httpx")
    from aiohttp import web

    async def main() -> None:
        srv = AiohttpApp(tmp_path)
        await srv.__aenter__()
        try:
            import tempfile
            path = os.path.join(tempfile.mkdtemp(prefix="pyac"), "aiohttp.sock")
            site = web.UnixSite(srv.runner, path)
            await site.start()
            connector = aiohttp.UnixConnector(path=path)
            async with aiohttp.ClientSession(connector=connector) as session:
                async with session.get("http://unix/hello") as resp:
                    assert await resp.text() == "hello world"
                body = blob(3 * 1024 * 1024, seed=12)
                async with session.post("http://unix/echo", data=io.BytesIO(body)) as resp:
                    assert await resp.read() == body
                async with session.get("http://unix/file") as resp:  # sendfile on AF_UNIX
                    assert await resp.read() == srv.file_data
            transport = httpx.AsyncHTTPTransport(uds=path)
            async with httpx.AsyncClient(transport=transport, base_url="http://unix") as client:
                resp = await client.post("/echo", content=body)
                assert resp.content == body
                resp = await client.get("/file")
                assert resp.content == srv.file_data
                resps = await asyncio.gather(*(client.get("/hello", params={"name": str(i)})
                                               for i in range(30)))
                assert [r.text for r in resps] == [f"hello {i}" for i in range(30)]
        finally:
            await srv.__aexit__()

    arun(main(), timeout=TIMEOUT)


def test_httpx_tls_against_aiohttp(arun: Any, loop_name: str, tmp_path: Path,
                                   tls_files: TLSFiles) -> None:
    """httpx/anyio does TLS itself (ssl.MemoryBIO over a plain transport);
    the server side is asyncio's SSLProtocol."""
    pytest.importorskip("aiohttp")
    httpx = pytest.importorskip("httpx")

    async def main() -> None:
        async with AiohttpApp(tmp_path, ssl_context=server_context(tls_files)) as srv:
            async with httpx.AsyncClient(verify=client_context(tls_files),
                                         base_url=srv.base) as client:
                resp = await client.get("/file")
                assert resp.content == srv.file_data
                body = blob(2 * 1024 * 1024, seed=13)
                resp = await client.post("/echo", content=body)
                assert resp.content == body
                resps = await asyncio.gather(*(client.get("/hello") for _ in range(30)))
                assert all(r.text == "hello world" for r in resps)

    arun(main(), timeout=TIMEOUT)


# --------------------------------------------------------------------------
# uvicorn + FastAPI + httpx
# --------------------------------------------------------------------------

def test_uvicorn_fastapi_in_process(arun: Any, loop_name: str) -> None:
    uvicorn = pytest.importorskip("uvicorn")
    pytest.importorskip("fastapi")
    httpx = pytest.importorskip("httpx")
    from integration_util import make_fastapi_app
    from net_util import free_port

    async def main() -> None:
        port = free_port()
        config = uvicorn.Config(make_fastapi_app(), host="127.0.0.1", port=port, loop="none",
                                log_level="warning", access_log=False, lifespan="on")
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        try:
            async with asyncio.timeout(10):
                while not server.started:
                    assert not task.done(), task.exception() if task.done() else None
                    await asyncio.sleep(0.01)
            base = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(base_url=base) as client:
                resp = await client.get("/hello")
                assert resp.status_code == 200 and resp.json() == {"hello": "world"}
                resp = await client.get("/loop")
                assert resp.json() == {"loop": loop_class_name()}
                expect_loop(loop_name)
                resp = await client.post("/items", json={"name": "abc", "count": 21})
                assert resp.json() == {"name": "ABC", "count": 42}
                resp = await client.post("/items", json={"name": "abc"})
                assert resp.status_code == 422
                body = blob(2 * 1024 * 1024, seed=9)
                resp = await client.post("/raw", content=body)
                assert resp.json() == {"size": len(body), "sum": sum(body) % 65521}
                async with client.stream("GET", "/stream", params={"chunks": 50, "size": 4000}) as r:
                    got = b"".join([c async for c in r.aiter_bytes()])
                assert got == b"".join(bytes([65 + i % 26]) * 4000 for i in range(50))
            limits = httpx.Limits(max_connections=50)
            async with httpx.AsyncClient(base_url=base, limits=limits) as client:
                resps = await asyncio.gather(*(client.get("/sleep", params={"seconds": 0.05})
                                               for _ in range(100)))
                assert all(r.status_code == 200 for r in resps)
        finally:
            server.should_exit = True
            await asyncio.wait_for(task, 10)

    arun(main(), timeout=TIMEOUT + 10)


def test_uvicorn_subprocess_pyasync_c_loop(arun: Any, loop_name: str) -> None:
    """`python -m uvicorn --loop pyasync_c:new_event_loop` (uvicorn >= 0.36's
    custom loop factory); the client runs on the parametrised loop."""
    uvicorn = pytest.importorskip("uvicorn")
    pytest.importorskip("fastapi")
    httpx = pytest.importorskip("httpx")
    version = tuple(int(x) for x in uvicorn.__version__.split(".")[:2])
    if version < (0, 36):
        pytest.skip("uvicorn < 0.36 has no custom --loop factory")

    installed = loop_name == INSTALLED   # then under `python -m pyasync_c`
    with uvicorn_subprocess("pyasync_c:new_event_loop", under_pyasync_c=installed) as (port, proc):
        async def main() -> None:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                resp = await client.get("/loop")
                assert resp.json() == {"loop": "pyasync_c.loop.Loop"}
                module = "pyasync_c._primitives" if installed else "asyncio."
                resp = await client.get("/primitives")
                assert all(m.startswith(module) for m in resp.json().values()), resp.json()
                resp = await client.post("/items", json={"name": "x", "count": 1})
                assert resp.json() == {"name": "X", "count": 2}
                body = blob(512 * 1024, seed=11)
                resp = await client.post("/raw", content=body)
                assert resp.json() == {"size": len(body), "sum": sum(body) % 65521}
                resps = await asyncio.gather(*(client.get("/sleep", params={"seconds": 0.02})
                                               for _ in range(50)))
                assert all(r.status_code == 200 for r in resps)

        arun(main(), timeout=TIMEOUT)
        assert proc.poll() is None, "uvicorn exited while serving"


def test_uvicorn_unix_socket(arun: Any, loop_name: str) -> None:
    uvicorn = pytest.importorskip("uvicorn")
    pytest.importorskip("fastapi")
    httpx = pytest.importorskip("httpx")
    import tempfile
    from integration_util import make_fastapi_app

    async def main() -> None:
        path = os.path.join(tempfile.mkdtemp(prefix="pyac"), "uvicorn.sock")
        config = uvicorn.Config(make_fastapi_app(), uds=path, loop="none", log_level="warning",
                                access_log=False)
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        try:
            async with asyncio.timeout(10):
                while not server.started:
                    assert not task.done()
                    await asyncio.sleep(0.01)
            transport = httpx.AsyncHTTPTransport(uds=path)
            async with httpx.AsyncClient(transport=transport, base_url="http://unix") as client:
                assert (await client.get("/loop")).json() == {"loop": loop_class_name()}
                body = blob(2 * 1024 * 1024, seed=14)
                resp = await client.post("/raw", content=body)
                assert resp.json() == {"size": len(body), "sum": sum(body) % 65521}
        finally:
            server.should_exit = True
            await asyncio.wait_for(task, 10)

    arun(main(), timeout=TIMEOUT)


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_uvicorn_graceful_shutdown_on_signal(loop_name: str, signame: str) -> None:
    """`uvicorn --loop asyncio` / `--loop pyasync_c:new_event_loop` in a
    subprocess: a signal during a request lets the request finish, runs the
    lifespan shutdown and exits."""
    pytest.importorskip("uvicorn")
    pytest.importorskip("fastapi")
    import http.client
    import signal
    import threading
    import time

    loop_arg = "asyncio" if loop_name == "stdlib" else "pyasync_c:new_event_loop"
    with uvicorn_subprocess(loop_arg, graceful_timeout=5,
                            under_pyasync_c=loop_name == INSTALLED) as (port, proc):
        result: dict[str, Any] = {}

        def request() -> None:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                try:
                    conn.request("GET", "/sleep?seconds=0.5")
                    resp = conn.getresponse()
                    result["response"] = (resp.status, resp.read())
                finally:
                    conn.close()
            except Exception as exc:  # pragma: no cover - reported below
                result["error"] = exc

        thread = threading.Thread(target=request)
        thread.start()
        time.sleep(0.2)
        proc.send_signal(getattr(signal, signame))
        try:
            returncode = proc.wait(10)
        except Exception:
            proc.kill()
            raise
        thread.join(10)
        output = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
    assert result.get("response") == (200, b'{"slept":0.5}'), (result, output)
    assert returncode in (0, -signal.SIGTERM), (returncode, output)
    assert "Application shutdown complete" in output, output
    assert "Traceback" not in output, output


# --------------------------------------------------------------------------
# websockets
# --------------------------------------------------------------------------

def test_websockets_echo(arun: Any, loop_name: str) -> None:
    pytest.importorskip("websockets")
    try:
        from websockets.asyncio.client import connect
        from websockets.asyncio.server import serve
    except ImportError:
        pytest.skip("websockets >= 13 (websockets.asyncio) is needed")
    from websockets.exceptions import ConnectionClosedOK

    async def handler(ws: Any) -> None:
        async for message in ws:
            if message == "bye":
                await ws.close(1000, "done")
                return
            await ws.send(message if isinstance(message, str) else message[::-1])

    async def main() -> None:
        async with serve(handler, "127.0.0.1", 0, max_size=None) as server:
            port = list(server.sockets)[0].getsockname()[1]
            async with connect(f"ws://127.0.0.1:{port}", max_size=None) as ws:
                for i in range(200):
                    await ws.send(f"hello {i}")
                    assert await ws.recv() == f"hello {i}"
                big = blob(2 * 1024 * 1024, seed=4)
                await ws.send(big)
                assert await ws.recv() == big[::-1]
                # Pipelined: many sends before reading.
                for i in range(100):
                    await ws.send(f"p{i}")
                assert [await ws.recv() for _ in range(100)] == [f"p{i}" for i in range(100)]
                latency = await (await ws.ping())
                assert latency is None or latency >= 0
                await ws.send("bye")
                with pytest.raises(ConnectionClosedOK):
                    await ws.recv()
            assert ws.close_code == 1000

    arun(main(), timeout=TIMEOUT)


def test_websockets_backpressure_and_server_close(arun: Any, loop_name: str) -> None:
    """A client that does not read (websockets pauses the transport's reading
    when its queue is full), then a server shutdown with a client connected."""
    pytest.importorskip("websockets")
    try:
        from websockets.asyncio.client import connect
        from websockets.asyncio.server import serve
    except ImportError:
        pytest.skip("websockets >= 13 (websockets.asyncio) is needed")
    from websockets.exceptions import ConnectionClosedOK

    async def flood(ws: Any) -> None:
        for i in range(2000):
            await ws.send(i.to_bytes(4, "big") * 2500)
        await ws.close()

    async def echo(ws: Any) -> None:
        async for message in ws:
            await ws.send(message)

    async def main() -> None:
        async with serve(flood, "127.0.0.1", 0, compression=None) as server:
            port = list(server.sockets)[0].getsockname()[1]
            async with connect(f"ws://127.0.0.1:{port}", max_queue=4) as ws:
                await asyncio.sleep(0.3)  # let the server fill every buffer
                received = [m async for m in ws]
            assert received == [i.to_bytes(4, "big") * 2500 for i in range(2000)]
        server = await serve(echo, "127.0.0.1", 0)  # permessage-deflate on
        port = list(server.sockets)[0].getsockname()[1]
        ws = await connect(f"ws://127.0.0.1:{port}")
        for i in range(50):
            await ws.send("abc" * 1000 + str(i))
            assert await ws.recv() == "abc" * 1000 + str(i)
        server.close()
        await asyncio.wait_for(server.wait_closed(), 5)
        with pytest.raises(ConnectionClosedOK):
            await ws.recv()
        assert ws.close_code == 1001

    arun(main(), timeout=TIMEOUT)


# --------------------------------------------------------------------------
# redis-py (asyncio)
# --------------------------------------------------------------------------

def _redis(server: RedisServer, **kw: Any) -> Any:
    aioredis = pytest.importorskip("redis.asyncio")
    return aioredis.Redis(host="127.0.0.1", port=server.port, **kw)


def test_redis_set_get(arun: Any, loop_name: str, redis_server: RedisServer) -> None:
    async def main() -> None:
        r = _redis(redis_server)
        try:
            key = f"pyac:{loop_name}:k"
            assert await r.set(key, "v1") is True
            assert await r.get(key) == b"v1"
            big = blob(1024 * 1024, seed=2)
            await r.set(key + ":big", big)
            assert await r.get(key + ":big") == big
            assert await r.incr(key + ":n") >= 1
            assert await r.delete(key, key + ":big", key + ":n") == 3
            assert await r.get(key) is None
        finally:
            await r.aclose()

    arun(main(), timeout=TIMEOUT)


def test_redis_pipeline(arun: Any, loop_name: str, redis_server: RedisServer) -> None:
    async def main() -> None:
        r = _redis(redis_server, decode_responses=True)
        try:
            key = f"pyac:{loop_name}:pipe"
            async with r.pipeline(transaction=True) as pipe:
                pipe.delete(key)
                for i in range(500):
                    pipe.rpush(key, i)
                pipe.lrange(key, 0, -1)
                results = await pipe.execute()
            assert results[-1] == [str(i) for i in range(500)]
            async with r.pipeline(transaction=False) as pipe:
                for i in range(1000):
                    pipe.set(f"{key}:{i}", i)
                await pipe.execute()
            values = await r.mget([f"{key}:{i}" for i in range(1000)])
            assert values == [str(i) for i in range(1000)]
            await r.delete(key, *[f"{key}:{i}" for i in range(1000)])
        finally:
            await r.aclose()

    arun(main(), timeout=TIMEOUT)


def test_redis_pubsub(arun: Any, loop_name: str, redis_server: RedisServer) -> None:
    async def main() -> None:
        sub, pub = _redis(redis_server), _redis(redis_server)
        channel = f"pyac:{loop_name}:chan"
        try:
            ps = sub.pubsub()
            await ps.subscribe(channel)
            msg = await ps.get_message(timeout=5)
            assert msg and msg["type"] == "subscribe"
            for i in range(50):
                assert await pub.publish(channel, f"msg{i}") == 1
            received = []
            async with asyncio.timeout(10):
                while len(received) < 50:
                    m = await ps.get_message(ignore_subscribe_messages=True, timeout=1)
                    if m is not None:
                        received.append(m["data"])
            assert received == [f"msg{i}".encode() for i in range(50)]
            await ps.unsubscribe(channel)
            await ps.aclose()
        finally:
            await sub.aclose()
            await pub.aclose()

    arun(main(), timeout=TIMEOUT)


def test_redis_200_concurrent_commands(arun: Any, loop_name: str,
                                       redis_server: RedisServer) -> None:
    async def main() -> None:
        aioredis = pytest.importorskip("redis.asyncio")
        pool = aioredis.BlockingConnectionPool(host="127.0.0.1", port=redis_server.port,
                                               max_connections=50, timeout=10)
        r = aioredis.Redis(connection_pool=pool)
        key = f"pyac:{loop_name}:conc"
        try:
            async def one(i: int) -> bytes:
                await r.set(f"{key}:{i}", f"value-{i}" * (1 + i % 50))
                return await r.get(f"{key}:{i}")
            results = await asyncio.gather(*(one(i) for i in range(200)))
            assert results == [(f"value-{i}" * (1 + i % 50)).encode() for i in range(200)]
            counts = await asyncio.gather(*(r.incr(key + ":ctr") for _ in range(200)))
            assert sorted(counts) == list(range(1, 201))
            await r.delete(key + ":ctr", *[f"{key}:{i}" for i in range(200)])
        finally:
            await r.aclose()
            await pool.aclose()

    arun(main(), timeout=TIMEOUT)


def test_redis_unix_socket(arun: Any, loop_name: str, redis_server: RedisServer) -> None:
    aioredis = pytest.importorskip("redis.asyncio")

    async def main() -> None:
        r = aioredis.Redis(unix_socket_path=redis_server.unix_socket)
        try:
            assert await r.ping() is True
            await r.set(f"pyac:{loop_name}:unix", b"x" * 100_000)
            assert await r.get(f"pyac:{loop_name}:unix") == b"x" * 100_000
            await r.delete(f"pyac:{loop_name}:unix")
        finally:
            await r.aclose()

    arun(main(), timeout=TIMEOUT)


def test_redis_killed_connection_and_cancelled_command(arun: Any, loop_name: str,
                                                       redis_server: RedisServer) -> None:
    """The server closes a client's connection (CLIENT KILL): redis-py sees
    the EOF/reset and reconnects; a blocking command cancelled by a timeout
    leaves the client usable."""
    async def main() -> None:
        victim, admin = _redis(redis_server), _redis(redis_server)
        try:
            await victim.client_setname(f"victim-{loop_name}")
            assert await victim.ping() is True
            for client in await admin.client_list():
                if client.get("name") == f"victim-{loop_name}":
                    await admin.client_kill_filter(_id=client["id"])
            assert await victim.ping() is True  # reconnected (retry on ConnectionError)
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.1):
                    await victim.blpop([f"pyac:{loop_name}:nothing"], timeout=5)
            assert await victim.ping() is True
            await victim.set(f"pyac:{loop_name}:after", "ok")
            assert await victim.get(f"pyac:{loop_name}:after") == b"ok"
            await victim.delete(f"pyac:{loop_name}:after")
        finally:
            await victim.aclose()
            await admin.aclose()

    arun(main(), timeout=TIMEOUT)


# --------------------------------------------------------------------------
# asyncpg
# --------------------------------------------------------------------------

async def _pg_connect(server: PgServer, **kw: Any) -> Any:
    import asyncpg
    kw.setdefault("ssl", False)
    return await asyncpg.connect(server.dsn, **kw)


def test_asyncpg_query_and_prepared(arun: Any, loop_name: str, pg_server: PgServer) -> None:
    pytest.importorskip("asyncpg")

    async def main() -> None:
        conn = await _pg_connect(pg_server)
        try:
            assert await conn.fetchval("SELECT 1 + 1") == 2
            rows = await conn.fetch("SELECT g, g * g AS sq FROM generate_series(1, 1000) g")
            assert len(rows) == 1000 and rows[9]["sq"] == 100
            assert await conn.fetchval("SELECT $1::text || $2::text", "a", "b") == "ab"
            big = await conn.fetchval("SELECT repeat('x', 3000000)")
            assert big == "x" * 3_000_000
            stmt = await conn.prepare("SELECT $1::int * 2 AS doubled, $2::text AS label")
            for i in range(200):
                row = await stmt.fetchrow(i, f"l{i}")
                assert (row["doubled"], row["label"]) == (i * 2, f"l{i}")
            assert [a.name for a in stmt.get_attributes()] == ["doubled", "label"]
            cursor_total = 0
            async with conn.transaction():
                async for record in conn.cursor("SELECT g FROM generate_series(1, 5000) g",
                                                prefetch=100):
                    cursor_total += record["g"]
            assert cursor_total == 5000 * 5001 // 2
        finally:
            await conn.close()

    arun(main(), timeout=TIMEOUT)


def test_asyncpg_copy(arun: Any, loop_name: str, pg_server: PgServer) -> None:
    pytest.importorskip("asyncpg")

    async def main() -> None:
        conn = await _pg_connect(pg_server)
        try:
            await conn.execute("CREATE TEMP TABLE items (id int PRIMARY KEY, name text, data bytea)")
            records = [(i, f"name-{i}", blob(100, seed=i)) for i in range(20_000)]
            result = await conn.copy_records_to_table("items", records=records)
            assert result == "COPY 20000"
            assert await conn.fetchval("SELECT count(*) FROM items") == 20_000
            out = io.BytesIO()
            await conn.copy_from_query("SELECT id, name FROM items ORDER BY id", output=out,
                                       format="csv")
            lines = out.getvalue().decode().splitlines()
            assert len(lines) == 20_000 and lines[123] == "123,name-123"
            # COPY FROM a file-like source.
            await conn.execute("CREATE TEMP TABLE names (name text)")
            source = io.BytesIO("".join(f"n{i}\n" for i in range(10_000)).encode())
            assert await conn.copy_to_table("names", source=source) == "COPY 10000"
            assert await conn.fetchval("SELECT count(DISTINCT name) FROM names") == 10_000
        finally:
            await conn.close()

    arun(main(), timeout=TIMEOUT)


def test_asyncpg_transaction(arun: Any, loop_name: str, pg_server: PgServer) -> None:
    asyncpg = pytest.importorskip("asyncpg")

    async def main() -> None:
        conn = await _pg_connect(pg_server)
        try:
            await conn.execute("CREATE TEMP TABLE t (v int UNIQUE)")
            async with conn.transaction():
                await conn.execute("INSERT INTO t VALUES (1), (2)")
            with pytest.raises(asyncpg.UniqueViolationError):
                async with conn.transaction():
                    await conn.execute("INSERT INTO t VALUES (3)")
                    await conn.execute("INSERT INTO t VALUES (1)")
            assert [r["v"] for r in await conn.fetch("SELECT v FROM t ORDER BY v")] == [1, 2]
            async with conn.transaction():
                await conn.execute("INSERT INTO t VALUES (10)")
                try:
                    async with conn.transaction():  # savepoint
                        await conn.execute("INSERT INTO t VALUES (11)")
                        raise RuntimeError("roll back the savepoint")
                except RuntimeError:
                    pass
            assert [r["v"] for r in await conn.fetch("SELECT v FROM t ORDER BY v")] == [1, 2, 10]
            # A server-side error does not break the connection.
            with pytest.raises(asyncpg.PostgresSyntaxError):
                await conn.execute("SELEC 1")
            assert await conn.fetchval("SELECT 42") == 42
        finally:
            await conn.close()

    arun(main(), timeout=TIMEOUT)


def test_asyncpg_pool_concurrent(arun: Any, loop_name: str, pg_server: PgServer) -> None:
    asyncpg = pytest.importorskip("asyncpg")

    async def main() -> None:
        async with asyncpg.create_pool(pg_server.dsn, ssl=False, min_size=2,
                                       max_size=10) as pool:
            async def one(i: int) -> int:
                async with pool.acquire() as conn:
                    return await conn.fetchval("SELECT $1::int", i)

            results = await asyncio.gather(*(one(i) for i in range(200)))
            assert results == list(range(200))
            slept = await asyncio.gather(*(pool.fetchval("SELECT pg_sleep(0.05)::text || $1::text",
                                                         str(i)) for i in range(40)))
            assert slept == [str(i) for i in range(40)]
            assert pool.get_size() <= 10

    arun(main(), timeout=TIMEOUT)


def test_asyncpg_tls(arun: Any, loop_name: str, pg_server: PgServer, tls_files: TLSFiles) -> None:
    """asyncpg negotiates TLS in-band and upgrades with loop.start_tls()."""
    pytest.importorskip("asyncpg")

    async def main() -> None:
        ctx = client_context(tls_files)
        conn = await _pg_connect(pg_server, ssl=ctx)
        try:
            assert await conn.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            big = await conn.fetchval("SELECT repeat('y', 1000000)")
            assert big == "y" * 1_000_000
            records = [(i, f"n{i}") for i in range(5000)]
            await conn.execute("CREATE TEMP TABLE tt (id int, name text)")
            await conn.copy_records_to_table("tt", records=records)
            assert await conn.fetchval("SELECT count(*) FROM tt") == 5000
        finally:
            await conn.close()

    arun(main(), timeout=TIMEOUT)


def test_asyncpg_unix_socket(arun: Any, loop_name: str, pg_server: PgServer) -> None:
    asyncpg = pytest.importorskip("asyncpg")

    async def main() -> None:
        conn = await asyncpg.connect(host=pg_server.socket_dir, port=pg_server.port,
                                     user=pg_server.user, database=pg_server.database)
        try:
            assert await conn.fetchval("SELECT 7 * 6") == 42
            assert await conn.fetchval(
                "SELECT client_addr IS NULL FROM pg_stat_activity WHERE pid = pg_backend_pid()")
        finally:
            await conn.close()

    arun(main(), timeout=TIMEOUT)


def test_asyncpg_cancel_and_terminate(arun: Any, loop_name: str, pg_server: PgServer) -> None:
    """A query cancelled by a timeout (asyncpg sends a CancelRequest on a new
    connection and resynchronises), a backend killed by the server, a
    connection terminated mid-query, a pool closed with queries in flight."""
    asyncpg = pytest.importorskip("asyncpg")

    async def main() -> None:
        conn = await _pg_connect(pg_server)
        try:
            for _ in range(3):
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(conn.fetch("SELECT pg_sleep(5)"), 0.1)
                assert await conn.fetchval("SELECT 1") == 1
            other = await _pg_connect(pg_server)
            await other.execute("SELECT pg_terminate_backend($1)", conn.get_server_pid())
            await other.close()
            # Which error depends on when the termination notice arrives
            # (InternalClientError "cannot switch to state 12" on either loop).
            with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError,
                                asyncpg.InternalClientError, OSError)):
                await conn.fetchval("SELECT 1")
        finally:
            # Not close(): on a connection whose backend was killed asyncpg's
            # close() sometimes raises InternalClientError "cannot switch to
            # state 12" (on either loop).
            conn.terminate()
        conn = await _pg_connect(pg_server)
        query = asyncio.ensure_future(conn.fetch("SELECT pg_sleep(5)"))
        await asyncio.sleep(0.1)
        conn.terminate()
        with pytest.raises(asyncpg.ConnectionDoesNotExistError):
            await query
        assert conn.is_closed()
        pool = await asyncpg.create_pool(pg_server.dsn, ssl=False, min_size=3, max_size=3)
        queries = [asyncio.ensure_future(pool.fetchval("SELECT pg_sleep(0.2)"))
                   for _ in range(3)]
        await asyncio.sleep(0.05)
        await asyncio.wait_for(pool.close(), 5)
        await asyncio.gather(*queries, return_exceptions=True)

    arun(main(), timeout=TIMEOUT)


# --------------------------------------------------------------------------
# plain asyncio streams with TLS
# --------------------------------------------------------------------------

def test_streams_tls_echo(arun: Any, loop_name: str, tls_files: TLSFiles) -> None:
    async def main() -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            assert writer.get_extra_info("ssl_object") is not None
            try:
                while line := await reader.readline():
                    if line.startswith(b"BLOB "):
                        n = int(line.split()[1])
                        data = await reader.readexactly(n)
                        writer.write(hashlib.sha256(data).hexdigest().encode() + b"\n")
                    else:
                        writer.write(line.upper())
                    await writer.drain()
            finally:
                writer.close()
                await writer.wait_closed()

        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_context(tls_files))
        port = server.sockets[0].getsockname()[1]
        async with server:
            async def client(i: int) -> None:
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", port, ssl=client_context(tls_files), server_hostname="localhost")
                assert writer.get_extra_info("peercert") is not None
                for j in range(20):
                    writer.write(f"line {i} {j}\n".encode())
                    assert await reader.readline() == f"LINE {i} {j}\n".encode()
                data = blob(1024 * 1024 + i, seed=i)
                writer.write(f"BLOB {len(data)}\n".encode() + data)
                await writer.drain()
                assert (await reader.readline()).strip().decode() == hashlib.sha256(data).hexdigest()
                writer.write_eof() if writer.can_write_eof() else None
                writer.close()
                await writer.wait_closed()
            await asyncio.gather(*(client(i) for i in range(10)))

    arun(main(), timeout=TIMEOUT)


def test_streams_starttls_upgrade(arun: Any, loop_name: str, tls_files: TLSFiles) -> None:
    """A plain connection upgraded to TLS on both sides (StreamWriter.start_tls ->
    loop.start_tls), as SMTP/IMAP/PostgreSQL clients do."""
    async def main() -> None:
        done = asyncio.get_running_loop().create_future()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                assert await reader.readline() == b"STARTTLS\n"
                writer.write(b"GO\n")
                await writer.drain()
                await writer.start_tls(server_context(tls_files))
                assert writer.get_extra_info("ssl_object") is not None
                while line := await reader.readline():
                    writer.write(b"secure:" + line)
                    await writer.drain()
                writer.close()
                await writer.wait_closed()
                done.set_result(True)
            except BaseException as exc:
                if not done.done():
                    done.set_exception(exc)
                raise

        server = await asyncio.start_server(handle, "127.0.0.1", 0, limit=4 * 1024 * 1024)
        port = server.sockets[0].getsockname()[1]
        async with server:
            reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                           limit=4 * 1024 * 1024)
            writer.write(b"STARTTLS\n")
            assert await reader.readline() == b"GO\n"
            await writer.start_tls(client_context(tls_files), server_hostname="localhost")
            assert writer.get_extra_info("ssl_object") is not None
            for i in range(50):
                writer.write(f"{i}\n".encode())
                assert await reader.readline() == f"secure:{i}\n".encode()
            big = blob(500_000).hex().encode() + b"\n"
            writer.write(big)
            assert await reader.readexactly(len(big) + 7) == b"secure:" + big
            writer.close()
            await writer.wait_closed()
            assert await asyncio.wait_for(done, 5) is True

    arun(main(), timeout=TIMEOUT)
