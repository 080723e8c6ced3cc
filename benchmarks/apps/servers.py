"""The servers under load, one small function each, run on a chosen loop:

    python benchmarks/apps/servers.py KIND --loop LOOP --port P [--cert F --key F]

uvicorn (raw ASGI, FastAPI, 64 KiB body, HTTPS), aiohttp.web, a plain
asyncio.Protocol HTTP responder, a websockets echo and an asyncio-streams echo
(for connection churn). Each answers GET / (websockets: echoes every message).
The process serves until it is terminated.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import Any, Awaitable, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import LOOPS, raise_nofile, run_on  # noqa: E402

HELLO = b"Hello, world!"
BIG = b"x" * (64 * 1024)
Serve = Callable[[argparse.Namespace], Awaitable[None]]
SERVERS: dict[str, Serve] = {}


def server(name: str) -> Callable[[Serve], Serve]:
    def register(fn: Serve) -> Serve:
        SERVERS[name] = fn
        return fn
    return register


async def forever() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGTERM, stop.set)
    except NotImplementedError:
        pass
    await stop.wait()


def raw_asgi(body: bytes) -> Any:
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    return app


async def run_uvicorn(args: argparse.Namespace, app: Any, **tls: Any) -> None:
    import uvicorn
    config = uvicorn.Config(app, host="127.0.0.1", port=args.port, loop="none", lifespan="off",
                            access_log=False, log_level="warning", **tls)
    await uvicorn.Server(config).serve()


@server("uvicorn_raw")
async def uvicorn_raw(args: argparse.Namespace) -> None:
    await run_uvicorn(args, raw_asgi(HELLO))


@server("uvicorn_64k")
async def uvicorn_64k(args: argparse.Namespace) -> None:
    await run_uvicorn(args, raw_asgi(BIG))


@server("uvicorn_tls")
async def uvicorn_tls(args: argparse.Namespace) -> None:
    await run_uvicorn(args, raw_asgi(HELLO), ssl_certfile=args.cert, ssl_keyfile=args.key)


@server("uvicorn_fastapi")
async def uvicorn_fastapi(args: argparse.Namespace) -> None:
    from fastapi import FastAPI
    app = FastAPI()

    @app.get("/")
    async def hello() -> dict[str, str]:
        return {"hello": "world"}
    await run_uvicorn(args, app)


@server("aiohttp_web")
async def aiohttp_web(args: argparse.Namespace) -> None:
    from aiohttp import web

    async def hello(request: web.Request) -> web.Response:
        return web.Response(body=HELLO, content_type="text/plain")
    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.port, backlog=2048).start()
    await forever()
    await runner.cleanup()


class HttpResponder(asyncio.Protocol):
    """Keep-alive HTTP/1.1: one fixed response per request head (no bodies)."""
    RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
                + str(len(HELLO)).encode() + b"\r\n\r\n" + HELLO)

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.pending = b""

    def data_received(self, data: bytes) -> None:
        data = self.pending + data
        count = data.count(b"\r\n\r\n")
        if count:
            self.transport.write(self.RESPONSE * count)
            data = data[data.rindex(b"\r\n\r\n") + 4:]
        self.pending = data


@server("protocol_http")
async def protocol_http(args: argparse.Namespace) -> None:
    srv = await asyncio.get_running_loop().create_server(HttpResponder, "127.0.0.1", args.port,
                                                         backlog=2048)
    async with srv:
        await forever()


@server("websockets_echo")
async def websockets_echo(args: argparse.Namespace) -> None:
    from websockets.asyncio.server import ServerConnection, serve

    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)
    async with serve(echo, "127.0.0.1", args.port, compression=None, ping_interval=None):
        await forever()


@server("streams_echo")
async def streams_echo(args: argparse.Namespace) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                writer.write(line)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
    # 4096: Linux's default somaxconn; conn_10k has 1,000 connects in flight
    srv = await asyncio.start_server(handle, "127.0.0.1", args.port, backlog=4096)
    async with srv:
        await forever()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("kind", choices=sorted(SERVERS))
    ap.add_argument("--loop", choices=LOOPS, required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--cert")
    ap.add_argument("--key")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    raise_nofile()
    try:
        run_on(args.loop, SERVERS[args.kind](args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
