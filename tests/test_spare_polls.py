"""Connections that reuse fd numbers (issue #14), on both loops.

pyasync_c keeps a closed connection's stopped poll under its fd number and
gives it to the next socket transport on that number (csrc/loop/spare_polls.c),
so these tests make fd numbers come back -- one connection after another,
and between transports, pipes and add_reader() -- and check that every
reader gets its own data.  Also the addresses that are now formatted in C
(the client's peer, the sockname kept at close)."""
from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from net_util import EchoProtocol as Echo, fd_leak, open_fds
from package_path import PACKAGE_PARENT


async def echo_once(port: int, payload: bytes) -> int:
    """One connection: sends payload, checks the echo; its client fd."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    fd = writer.get_extra_info("socket").fileno()
    writer.write(payload)
    assert await reader.readexactly(len(payload)) == payload
    writer.close()
    await writer.wait_closed()
    return fd


def test_connections_one_after_another_reuse_fds(run, loop_name):
    """60 connections in sequence, then 3 rounds of 20 at once: fd numbers
    come back, and each connection reads only its own echo."""
    async def main():
        loop = asyncio.get_running_loop()
        before = open_fds()
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        fds = [await echo_once(port, b"one %d\n" % i) for i in range(60)]
        for round_ in range(3):
            fds += await asyncio.gather(*(echo_once(port, b"r%d c%d " % (round_, i) * (i + 1))
                                          for i in range(20)))
        server.close()
        await server.wait_closed()
        if loop_name == "pyasync_c":
            assert loop._poll_stats["spare_polls"] > 0
        return fds, fd_leak(before)

    fds, leaked = run(main())
    assert len(set(fds)) <= 30, sorted(set(fds))  # the numbers really were reused
    assert not leaked


def test_fd_number_goes_from_transport_to_pipe_to_reader_and_back(run):
    """A connection's fd number is taken next by a read pipe, then by a
    socketpair watched with add_reader, then by a connection again: each
    gets its own data."""
    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        for round_ in range(5):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            number = writer.get_extra_info("socket").fileno()
            writer.write(b"before %d\n" % round_)
            assert await reader.readline() == b"before %d\n" % round_
            writer.close()
            await writer.wait_closed()

            read_end, write_end = os.pipe()  # the lowest free number: that one
            pipe_reader = asyncio.StreamReader()
            pipe_transport, _ = await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(pipe_reader), os.fdopen(read_end, "rb", 0))
            os.write(write_end, b"pipe %d\n" % round_)
            assert await pipe_reader.readline() == b"pipe %d\n" % round_
            pipe_transport.close()
            os.close(write_end)
            await asyncio.sleep(0)

            a, b = socket.socketpair()
            a.setblocking(False)
            got = loop.create_future()
            loop.add_reader(a, lambda: got.done() or got.set_result(a.recv(100)))
            b.send(b"reader %d" % round_)
            assert await asyncio.wait_for(got, 5) == b"reader %d" % round_
            assert loop.remove_reader(a)
            a.close()
            b.close()

            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert writer.get_extra_info("socket").fileno() == number
            writer.write(b"after %d\n" % round_)
            assert await reader.readline() == b"after %d\n" % round_
            writer.close()
            await writer.wait_closed()
        server.close()
        await server.wait_closed()
    run(main())


def test_a_loop_closed_with_spare_polls_leaves_nothing_open(loop_factory, loop_name):
    before = open_fds()
    loop = loop_factory()

    async def main():
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        for i in range(10):
            await echo_once(port, b"%d\n" % i)
        server.close()
        await server.wait_closed()

    loop.run_until_complete(main())
    if loop_name == "pyasync_c":
        assert loop._poll_stats["spare_polls"] > 0
    loop.close()
    assert not fd_leak(before)
    loop.close()  # twice is fine


@pytest.mark.parametrize("host", ["127.0.0.1", "127.10.100.255", "127.255.9.99", "127.0.10.200"])
def test_addresses_formatted_in_c_match_the_socket_modules(run, host):
    """Peer (client end, read in C), accepted peer and the sockname kept
    at close are the tuples the socket module gives."""
    async def main():
        loop = asyncio.get_running_loop()
        accepted = loop.create_future()

        class Keep(asyncio.Protocol):
            def connection_made(self, transport):
                accepted.set_result(transport)

        try:
            server = await loop.create_server(Keep, host, 0)
        except OSError as exc:
            pytest.skip(f"cannot bind {host}: {exc}")
        address = server.sockets[0].getsockname()
        tr, _ = await loop.create_connection(asyncio.Protocol, host, address[1])
        sock = tr.get_extra_info("socket")
        assert tr.get_extra_info("peername") == address == sock.getpeername()
        local = sock.getsockname()
        server_tr = await accepted
        assert server_tr.get_extra_info("peername") == local
        server_sockname = server_tr.get_extra_info("socket").getsockname()
        tr.close()
        server_tr.close()
        await asyncio.sleep(0.01)
        assert tr.get_extra_info("sockname") == local
        assert server_tr.get_extra_info("sockname") == server_sockname == address
        assert isinstance(local[0], str) and type(local[1]) is int
        server.close()
        await server.wait_closed()
    run(main())


def test_peername_of_a_unix_connection(run, tmp_path):
    """Not an IP socket: the peer is asked from the socket itself."""
    path = str(tmp_path / "s")

    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_unix_server(Echo, path)
        tr, _ = await loop.create_unix_connection(asyncio.Protocol, path)
        assert tr.get_extra_info("peername") == path
        tr.close()
        await asyncio.sleep(0.05)  # the server end sees EOF and closes too
        server.close()
        await server.wait_closed()
    run(main())


_FORK_SCRIPT = textwrap.dedent("""
    import asyncio, os, socket, sys
    sys.path.insert(0, {root!r})
    import pyasync_c

    class Echo(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
        def data_received(self, data):
            self.transport.write(data)

    async def echo_once(port, payload):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(payload)
        assert await reader.readexactly(len(payload)) == payload
        writer.close()
        await writer.wait_closed()

    async def churn(port, tag, n):
        for i in range(n):
            await echo_once(port, b"%s %d\\n" % (tag, i))

    loop = pyasync_c.new_event_loop() if sys.argv[1] == "pyasync_c" else asyncio.new_event_loop()
    server_sock = socket.create_server(("127.0.0.1", 0))
    port = server_sock.getsockname()[1]
    server = loop.run_until_complete(loop.create_server(Echo, sock=server_sock))
    loop.run_until_complete(churn(port, b"parent-before", 20))
    spares = loop._poll_stats["spare_polls"] if sys.argv[1] == "pyasync_c" else 1
    pid = os.fork()
    if pid == 0:  # the child: its own connections to its copy of the server
        status = 1
        try:
            loop.run_until_complete(asyncio.wait_for(churn(port, b"child", 20), 10))
            status = 0
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    loop.run_until_complete(asyncio.wait_for(churn(port, b"parent-after", 20), 10))
    server.close()
    loop.run_until_complete(server.wait_closed())
    loop.close()
    print(spares > 0, os.waitstatus_to_exitcode(status))
""")


def test_spare_polls_across_fork(loop_name, tmp_path):
    """Connections leave spares in the parent; a fork() child runs more
    connections on the same loop object (its own epoll after the fork),
    then the parent goes on: every connection gets its own data.  In a
    fresh interpreter: pytest's process has threads."""
    script = tmp_path / "fork_spares.py"
    script.write_text(_FORK_SCRIPT.format(root=PACKAGE_PARENT))
    name = "pyasync_c" if loop_name == "pyasync_c" else "asyncio"
    proc = subprocess.run([sys.executable, str(script), name], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "0"], proc.stdout
