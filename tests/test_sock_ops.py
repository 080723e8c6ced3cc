"""loop.sock_recv / sock_recv_into / sock_sendall / sock_connect / sock_accept /
sock_recvfrom / sock_recvfrom_into / sock_sendto, on the stdlib loop and on pyasync_c's (fixtures in conftest.py)."""
from __future__ import annotations

import asyncio
import socket

import pytest


def _pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    return a, b


def _listener(backlog: int = 128) -> socket.socket:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(backlog)
    srv.setblocking(False)
    return srv


def _no_watcher(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bool:
    return not loop.remove_reader(sock) and not loop.remove_writer(sock)


def test_echo_socketpair(run):
    async def main():
        loop = asyncio.get_running_loop()
        a, b = _pair()
        with a, b:
            async def echo():
                data = await loop.sock_recv(b, 100)
                await loop.sock_sendall(b, data.upper())
            task = asyncio.create_task(echo())
            await asyncio.sleep(0)  # echo now blocks in sock_recv
            await loop.sock_sendall(a, b"hello")
            reply = await loop.sock_recv(a, 100)
            await task
            assert _no_watcher(loop, a) and _no_watcher(loop, b)
            return reply
    assert run(main()) == b"HELLO"


def test_echo_tcp_connect_accept(run):
    async def main():
        loop = asyncio.get_running_loop()
        srv = _listener()
        cli = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        cli.setblocking(False)
        with srv, cli:
            accept = asyncio.ensure_future(loop.sock_accept(srv))
            await loop.sock_connect(cli, srv.getsockname())
            conn, addr = await accept
            with conn:
                assert conn.gettimeout() == 0  # non-blocking
                assert addr == cli.getsockname()
                await loop.sock_sendall(cli, b"ping")
                assert await loop.sock_recv(conn, 10) == b"ping"
                await loop.sock_sendall(conn, b"pong")
                assert await loop.sock_recv(cli, 10) == b"pong"
            assert _no_watcher(loop, srv) and _no_watcher(loop, cli)
    run(main())


def test_connect_resolves_localhost_name(run):
    async def main():
        loop = asyncio.get_running_loop()
        srv = _listener()
        cli = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        cli.setblocking(False)
        with srv, cli:
            await loop.sock_connect(cli, ("localhost", srv.getsockname()[1]))
            conn, _ = await loop.sock_accept(srv)
            conn.close()
    run(main())


def test_large_sendall_with_slow_reader(run):
    size = 8 * 1024 * 1024
    payload = bytes(range(256)) * (size // 256)

    async def main():
        loop = asyncio.get_running_loop()
        a, b = _pair()
        with a, b:
            async def reader():
                chunks, total = [], 0
                while total < size:
                    chunk = await loop.sock_recv(b, 65536)
                    assert chunk
                    chunks.append(chunk)
                    total += len(chunk)
                    await asyncio.sleep(0)
                    if len(chunks) % 16 == 0:
                        await asyncio.sleep(0.001)
                return b"".join(chunks)
            task = asyncio.create_task(reader())
            await loop.sock_sendall(a, memoryview(payload))
            received = await task
            assert received == payload
            assert _no_watcher(loop, a) and _no_watcher(loop, b)
    run(main())


def test_recv_into(run):
    async def main():
        loop = asyncio.get_running_loop()
        a, b = _pair()
        with a, b:
            buf = bytearray(16)
            task = asyncio.create_task(loop.sock_recv_into(b, buf))
            await asyncio.sleep(0)
            assert not task.done()
            await loop.sock_sendall(a, b"abcdef")
            n = await task
            assert (n, bytes(buf[:n])) == (6, b"abcdef")
            await loop.sock_sendall(a, b"xyz")
            await asyncio.sleep(0.01)
            assert await loop.sock_recv_into(b, memoryview(buf)[4:]) == 3  # ready at once
            assert bytes(buf[:7]) == b"abcdxyz"
    run(main())


def test_connect_refused(run):
    async def main():
        loop = asyncio.get_running_loop()
        srv = _listener()
        port = srv.getsockname()[1]
        srv.close()  # nothing listens there now
        cli = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        cli.setblocking(False)
        with cli:
            with pytest.raises(ConnectionRefusedError) as info:
                await loop.sock_connect(cli, ("127.0.0.1", port))
            assert _no_watcher(loop, cli)
            return info.value
    exc = run(main())
    assert exc.errno is not None


def test_connect_failing_at_once(run):
    """connect() itself raising (not EINPROGRESS): the error reaches the caller."""
    async def main():
        loop = asyncio.get_running_loop()
        a, b = _pair()
        with a, b:
            with pytest.raises(OSError):  # already connected (EISCONN)
                await loop.sock_connect(a, "/nonexistent/pyasync_c.sock")
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            with sock:
                with pytest.raises(FileNotFoundError):
                    await loop.sock_connect(sock, "/nonexistent/pyasync_c.sock")
                assert _no_watcher(loop, sock)
    run(main())


def test_blocking_socket_rejected_in_debug_mode(run):
    async def main():
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        with a, b:
            for coro in (loop.sock_recv(a, 1), loop.sock_recv_into(a, bytearray(1)),
                         loop.sock_sendall(a, b"x"), loop.sock_accept(a),
                         loop.sock_connect(a, "x")):
                with pytest.raises(ValueError, match="the socket must be non-blocking"):
                    await coro
    run(main(), debug=True)


def test_ssl_socket_rejected(run):
    ssl = pytest.importorskip("ssl")

    async def main():
        loop = asyncio.get_running_loop()
        ctx = ssl.create_default_context()
        raw = socket.socket()
        sock = ctx.wrap_socket(raw, do_handshake_on_connect=False, server_hostname="x")
        with sock:
            with pytest.raises(TypeError):
                await loop.sock_recv(sock, 1)
            with pytest.raises(TypeError):
                await loop.sock_sendall(sock, b"x")
            with pytest.raises(TypeError):
                await loop.sock_recvfrom(sock, 1)
            with pytest.raises(TypeError):
                await loop.sock_recvfrom_into(sock, bytearray(1))
            with pytest.raises(TypeError):
                await loop.sock_sendto(sock, b"x", ("127.0.0.1", 9))
    run(main())


@pytest.mark.parametrize("which", ["recv", "recv_into", "accept"])
def test_cancel_leaves_no_watcher(run, which):
    async def main():
        loop = asyncio.get_running_loop()
        a, b = _pair()
        srv = _listener()
        with a, b, srv:
            if which == "recv":
                sock, coro = b, loop.sock_recv(b, 10)
            elif which == "recv_into":
                sock, coro = b, loop.sock_recv_into(b, bytearray(10))
            else:
                sock, coro = srv, loop.sock_accept(srv)
            task = asyncio.create_task(coro)
            await asyncio.sleep(0.01)
            assert not task.done()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert loop.remove_reader(sock) is False
            # The socket can be watched again, and used again.
            fired = loop.create_future()
            loop.add_reader(a, fired.set_result, None)
            assert loop.remove_reader(a) is True
            await loop.sock_sendall(a, b"again")
            assert await loop.sock_recv(b, 10) == b"again"
            assert _no_watcher(loop, b)
    run(main())


def test_cancel_sendall_leaves_no_writer(run):
    async def main():
        loop = asyncio.get_running_loop()
        a, b = _pair()
        with a, b:
            task = asyncio.create_task(loop.sock_sendall(a, b"x" * (32 * 1024 * 1024)))
            await asyncio.sleep(0.01)
            assert not task.done()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert loop.remove_writer(a) is False
    run(main())


def test_wait_for_timeout_on_recv(run):
    async def main():
        loop = asyncio.get_running_loop()
        a, b = _pair()
        with a, b:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(loop.sock_recv(b, 10), 0.05)
            assert loop.remove_reader(b) is False
            await loop.sock_sendall(a, b"late")
            assert await asyncio.wait_for(loop.sock_recv(b, 10), 5) == b"late"
    run(main())


def test_peer_close_gives_empty_bytes(run):
    async def main():
        loop = asyncio.get_running_loop()
        a, b = _pair()
        with b:
            task = asyncio.create_task(loop.sock_recv(b, 10))
            await asyncio.sleep(0.01)
            a.close()
            assert await task == b""
            assert await loop.sock_recv(b, 10) == b""  # at once now
    run(main())


def test_second_recv_replaces_first_reader(run):
    """As asyncio: the second sock_recv's add_reader replaces the first, whose
    future then waits until cancelled."""
    async def main():
        loop = asyncio.get_running_loop()
        a, b = _pair()
        with a, b:
            first = asyncio.create_task(loop.sock_recv(b, 10))
            await asyncio.sleep(0)
            second = asyncio.create_task(loop.sock_recv(b, 10))
            await asyncio.sleep(0)
            await loop.sock_sendall(a, b"data")
            assert await asyncio.wait_for(second, 5) == b"data"
            assert not first.done()
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
            assert _no_watcher(loop, b)
    run(main())


def test_errors_raise(run):
    async def main():
        loop = asyncio.get_running_loop()
        a, b = _pair()
        a.close()
        with b:
            with pytest.raises(OSError):
                await loop.sock_recv(a, 10)
            with pytest.raises(TypeError):
                await loop.sock_sendall(b, "not bytes")
    run(main())


def test_works_with_create_task_and_ensure_future(run):
    async def main():
        loop = asyncio.get_running_loop()
        a, b = _pair()
        with a, b:
            t1 = loop.create_task(loop.sock_recv(b, 5))
            t2 = asyncio.ensure_future(loop.sock_sendall(a, b"12345"))
            await t2
            assert await t1 == b"12345"
    run(main())


def test_many_concurrent_connections(run):
    count = 200

    async def main():
        loop = asyncio.get_running_loop()
        srv = _listener(backlog=count)
        addr = srv.getsockname()

        async def server():
            handlers = []
            for _ in range(count):
                conn, _ = await loop.sock_accept(srv)
                handlers.append(asyncio.create_task(handle(conn)))
            await asyncio.gather(*handlers)

        async def handle(conn):
            with conn:
                data = b""
                while not data.endswith(b"\n"):
                    chunk = await loop.sock_recv(conn, 1024)
                    assert chunk
                    data += chunk
                await loop.sock_sendall(conn, data * 10)

        async def client(i):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            with sock:
                await loop.sock_connect(sock, addr)
                line = f"client {i}\n".encode()
                await loop.sock_sendall(sock, line)
                data = b""
                while True:
                    chunk = await loop.sock_recv(sock, 4096)
                    if not chunk:
                        break
                    data += chunk
                return data == line * 10

        with srv:
            server_task = asyncio.create_task(server())
            results = await asyncio.gather(*(client(i) for i in range(count)))
            await server_task
            assert all(results)
            assert _no_watcher(loop, srv)
    run(main())


def _udp() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


def test_udp_echo(run):
    async def main():
        loop = asyncio.get_running_loop()
        server, client = _udp(), _udp()
        with server, client:
            async def echo():
                data, addr = await loop.sock_recvfrom(server, 100)
                assert await loop.sock_sendto(server, data.upper(), addr) == len(data)
            task = asyncio.create_task(echo())
            await asyncio.sleep(0)  # echo now waits in sock_recvfrom
            assert not task.done()
            assert await loop.sock_sendto(client, b"hello", server.getsockname()) == 5
            reply = await loop.sock_recvfrom(client, 100)
            await task
            assert _no_watcher(loop, server) and _no_watcher(loop, client)
            return reply, server.getsockname()
    (data, addr), server_addr = run(main())
    assert (data, addr) == (b"HELLO", server_addr)


def test_recvfrom_into_nbytes(run):
    async def main():
        loop = asyncio.get_running_loop()
        a, b = _udp(), _udp()
        with a, b:
            buf = bytearray(16)
            task = asyncio.create_task(loop.sock_recvfrom_into(b, buf, 4))
            await asyncio.sleep(0)
            assert not task.done()
            await loop.sock_sendto(a, b"abcdefgh", b.getsockname())
            n, addr = await task
            assert (n, bytes(buf[:6]), addr) == (4, b"abcd\0\0", a.getsockname())
            await loop.sock_sendto(a, b"xyz", b.getsockname())
            await asyncio.sleep(0.01)
            n, addr = await loop.sock_recvfrom_into(b, memoryview(buf)[8:])  # nbytes=0: len(buf)
            assert (n, bytes(buf[8:11]), addr) == (3, b"xyz", a.getsockname())
            with pytest.raises(ValueError):  # nbytes > len(buf), as sock.recvfrom_into
                await loop.sock_recvfrom_into(b, bytearray(2), 10)
            assert _no_watcher(loop, b)
    run(main())


@pytest.mark.parametrize("which", ["recvfrom", "recvfrom_into"])
def test_recvfrom_cancelled_leaves_no_reader(run, which):
    async def main():
        loop = asyncio.get_running_loop()
        a, b = _udp(), _udp()
        with a, b:
            if which == "recvfrom":
                coro = loop.sock_recvfrom(b, 10)
            else:
                coro = loop.sock_recvfrom_into(b, bytearray(10))
            task = asyncio.create_task(coro)
            await asyncio.sleep(0.01)
            assert not task.done()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert loop.remove_reader(b) is False
            await loop.sock_sendto(a, b"again", b.getsockname())
            assert await loop.sock_recvfrom(b, 10) == (b"again", a.getsockname())
    run(main())


def test_sendto_wrong_address_type(run):
    async def main():
        loop = asyncio.get_running_loop()
        with _udp() as sock:
            with pytest.raises(TypeError) as info:
                await loop.sock_sendto(sock, b"x", "not an (host, port) pair")
            assert _no_watcher(loop, sock)
            return type(info.value), str(info.value)
    expected = None
    with _udp() as sock:
        try:
            sock.sendto(b"x", "not an (host, port) pair")
        except TypeError as exc:
            expected = (type(exc), str(exc))
    assert run(main()) == expected


def test_datagram_ops_check_the_socket(run):
    async def main():
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:  # blocking
            for coro in (loop.sock_recvfrom(sock, 1), loop.sock_recvfrom_into(sock, bytearray(1)),
                         loop.sock_sendto(sock, b"x", ("127.0.0.1", 9))):
                with pytest.raises(ValueError, match="the socket must be non-blocking"):
                    await coro
    run(main(), debug=True)
