"""loop.getaddrinfo / loop.getnameinfo on both loops (pyasync_c's: dns.c on
libuv's thread pool) must give exactly what socket.getaddrinfo /
socket.getnameinfo give: same results (enum members included), same
exceptions (type and message) for bad arguments and failed lookups."""
from __future__ import annotations

import asyncio
import socket
import sys
import threading
import time
from typing import Any, Callable

import pytest

from pyasync_c import _loop

HAS_IPV6 = socket.has_ipv6 and bool(
    [ai for ai in socket.getaddrinfo("::1", 0, type=socket.SOCK_STREAM)])


def outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    """("ok", result) or ("error", (type, str, args)) of call()."""
    try:
        return ("ok", call())
    except Exception as exc:  # noqa: BLE001 - compared as data
        return ("error", (type(exc), str(exc), exc.args))


async def async_outcome(coro: Any) -> tuple[str, Any]:
    try:
        return ("ok", await coro)
    except Exception as exc:  # noqa: BLE001
        return ("error", (type(exc), str(exc), exc.args))


ADDRINFO_CASES: list[tuple[tuple[Any, ...], dict[str, int]]] = [
    (("localhost", 80), {}),
    (("127.0.0.1", 80), {}),
    (("127.0.0.1", "80"), {}),
    (("127.0.0.1", b"80"), {}),
    ((b"127.0.0.1", 443), {}),
    (("localhost", None), {}),
    (("localhost", "http"), {}),
    (("localhost", 0), {}),
    ((None, 80), {}),
    ((None, 80), {"flags": socket.AI_PASSIVE}),
    ((None, "8080"), {"flags": socket.AI_PASSIVE}),
    ((None, 0), {"flags": socket.AI_PASSIVE, "type": socket.SOCK_STREAM}),
    (("localhost", 80), {"family": socket.AF_INET}),
    (("localhost", 80), {"type": socket.SOCK_STREAM}),
    (("localhost", 80), {"type": socket.SOCK_DGRAM}),
    (("localhost", 80), {"proto": socket.IPPROTO_UDP}),
    (("localhost", 80), {"family": socket.AF_INET, "type": socket.SOCK_STREAM,
                         "proto": socket.IPPROTO_TCP}),
    (("localhost", 80), {"flags": socket.AI_CANONNAME}),
    (("127.0.0.1", 80), {"flags": socket.AI_NUMERICHOST | socket.AI_NUMERICSERV}),
    (("LOCALHOST.", 80), {}),
    # failures resolved by the system
    ((None, None), {}),
    (("127.0.0.1", "nosuchservice"), {}),
    (("127.0.0.1", -1), {}),
    (("127.0.0.1", "a\0b"), {}),
    (("", 80), {}),
    (("localhost", 80), {"family": 999}),
    (("localhost", 80), {"type": 999}),
    (("localhost", 80), {"flags": -1}),
    (("localhost", 80), {"proto": 250}),
    (("127.0.0.1", 80), {"family": socket.AF_UNIX}),
    (("localhost", 80), {"flags": socket.AI_NUMERICHOST}),
    (("localhost", "http"), {"flags": socket.AI_NUMERICSERV}),
    # bad argument types and values
    ((1.5, 80), {}),
    ((bytearray(b"127.0.0.1"), 80), {}),
    (("127.0.0.1", 80.0), {}),
    (("127.0.0.1", True), {}),
    (("127.0.0.1", bytearray(b"80")), {}),
    (("127.0.0.1", 2**70), {}),  # 3.11: OverflowError; 3.12+: EAI_SERVICE
    (("127.0.0.1", 80), {"family": 1.5}),  # type: ignore[dict-item]
    (("127.0.0.1", 80), {"type": "x"}),  # type: ignore[dict-item]
    (("127.0.0.1", 80), {"flags": 2**40}),
    (("a" * 300, 80), {}),  # the idna codec refuses the label
    (("a..b", 80), {}),
    (("\udcff", 80), {}),
]
if HAS_IPV6:
    ADDRINFO_CASES += [
        (("::1", 80), {}),
        (("::1", 80), {"type": socket.SOCK_STREAM}),
        (("localhost", 80), {"family": socket.AF_INET6}),
        (("::1", 80), {"family": socket.AF_INET}),
    ]


@pytest.mark.parametrize("args,kwargs", ADDRINFO_CASES,
                         ids=[f"{a!r}-{k!r}"[:60] for a, k in ADDRINFO_CASES])
def test_getaddrinfo_as_socket(run, args, kwargs):
    expected = outcome(lambda: socket.getaddrinfo(*args, **kwargs))

    async def main():
        loop = asyncio.get_running_loop()
        return await async_outcome(loop.getaddrinfo(*args, **kwargs))

    got = run(main())
    assert got == expected
    if got[0] == "ok":  # enum members, not just equal ints
        assert [tuple(map(type, entry)) for entry in got[1]] == \
            [tuple(map(type, entry)) for entry in expected[1]]


def test_getaddrinfo_idna_name(run):
    # A non-ASCII name goes through the 'idna' codec like the socket module's.
    name = "b\u00fccher.invalid"
    started = time.monotonic()
    expected = outcome(lambda: socket.getaddrinfo(name, 80))
    if time.monotonic() - started > 5:
        pytest.skip("the resolver is too slow here")

    async def main():
        loop = asyncio.get_running_loop()
        return await async_outcome(asyncio.wait_for(loop.getaddrinfo(name, 80), 60))

    assert run(main()) == expected


def test_getaddrinfo_unknown_name(run):
    name = "no-such-host.invalid"
    started = time.monotonic()
    expected = outcome(lambda: socket.getaddrinfo(name, 80))
    if time.monotonic() - started > 5:
        pytest.skip("resolving a .invalid name takes more than 5s here")
    assert expected[0] == "error" and expected[1][0] is socket.gaierror

    async def main():
        loop = asyncio.get_running_loop()
        return await async_outcome(asyncio.wait_for(loop.getaddrinfo(name, 80), 60))

    assert run(main()) == expected


NAMEINFO_CASES: list[tuple[Any, ...]] = [
    (("127.0.0.1", 80), 0),
    (("127.0.0.1", 80), socket.NI_NUMERICHOST | socket.NI_NUMERICSERV),
    (("127.0.0.1", 80), socket.NI_NUMERICSERV),
    (("127.0.0.1", 53), socket.NI_DGRAM),
    (("127.0.0.1", 80),),
    # bad arguments
    (["127.0.0.1", 80], 0),
    (("127.0.0.1",), 0),
    (("127.0.0.1", "80"), 0),
    ((b"127.0.0.1", 80), 0),
    (("127.0.0.1", 80, 1), 0),
    (("127.0.0.1", 80, 0, 0, 0), 0),
    (("127.0.0.1", 2**40), 0),
    (("127.0.0.1\0", 80), 0),
    (("localhost", 80), 0),
    (("127.0.0.1", 80), 1.5),
    (("127.0.0.1", 80), -1),
]
if HAS_IPV6:
    NAMEINFO_CASES += [
        (("::1", 80, 0, 0), socket.NI_NUMERICHOST | socket.NI_NUMERICSERV),
        (("::1", 80), socket.NI_NUMERICHOST),
        (("::1", 80, 2**20), 0),
        (("::1", 80, -1), 0),
        (("fe80::1", 80, 0, 1), socket.NI_NUMERICHOST),
    ]


@pytest.mark.parametrize("args", NAMEINFO_CASES, ids=[repr(a)[:60] for a in NAMEINFO_CASES])
def test_getnameinfo_as_socket(run, args):
    # the loop's flags default to 0; socket.getnameinfo has no default
    expected = outcome(lambda: socket.getnameinfo(*args) if len(args) == 2
                       else socket.getnameinfo(args[0], 0))

    async def main():
        loop = asyncio.get_running_loop()
        return await async_outcome(loop.getnameinfo(*args))

    assert run(main()) == expected


def test_many_concurrent_lookups(run):
    hosts = ["localhost", "127.0.0.1"] + (["::1"] if HAS_IPV6 else [])
    expected = {h: socket.getaddrinfo(h, 80) for h in hosts}

    async def main():
        loop = asyncio.get_running_loop()
        names = [hosts[i % len(hosts)] for i in range(500)]
        results = await asyncio.gather(*[loop.getaddrinfo(n, 80) for n in names])
        names_back = await asyncio.gather(
            *[loop.getnameinfo(("127.0.0.1", i), socket.NI_NUMERICSERV) for i in range(100)])
        return names, results, names_back

    names, results, names_back = run(main())
    assert all(r == expected[n] for n, r in zip(names, results))
    assert [p for _, p in names_back] == [str(i) for i in range(100)]


def test_cancel_lookup(run):
    async def main():
        loop = asyncio.get_running_loop()
        tasks = [asyncio.ensure_future(loop.getaddrinfo("localhost", 80)) for _ in range(50)]
        await asyncio.sleep(0)  # every lookup submitted
        for t in tasks[::2]:
            t.cancel()
        done = await asyncio.gather(*tasks, return_exceptions=True)
        # a lookup cancelled before it even started
        early = asyncio.ensure_future(loop.getaddrinfo("localhost", 80))
        early.cancel()
        with pytest.raises(asyncio.CancelledError):
            await early
        # the loop is fine afterwards
        after = await loop.getaddrinfo("localhost", 80)
        await asyncio.sleep(0.05)  # the dropped results arrive meanwhile
        return done, after

    done, after = run(main())
    expected = socket.getaddrinfo("localhost", 80)
    assert all(isinstance(r, asyncio.CancelledError) for r in done[::2])
    assert all(r == expected for r in done[1::2])
    assert after == expected


def test_loop_keeps_running_while_resolving(run):
    async def main():
        loop = asyncio.get_running_loop()
        ticks = []

        def tick():
            ticks.append(loop.time())
            handle[0] = loop.call_later(0.001, tick)

        handle = [loop.call_later(0.001, tick)]
        lookups = asyncio.gather(*[loop.getaddrinfo("localhost", i) for i in range(2000)])
        while not lookups.done():
            await asyncio.sleep(0.0005)
        handle[0].cancel()
        await lookups
        return len(ticks)

    assert run(main()) > 0


def test_c_future_is_pending_at_first(loop, loop_name):
    if loop_name != "pyasync_c":
        pytest.skip("pyasync_c's C entry points")
    fut = _loop.getaddrinfo(loop, "localhost", 80)
    assert isinstance(fut, asyncio.Future) and fut.get_loop() is loop
    assert not fut.done()  # resolved on the thread pool, not inline
    assert loop.run_until_complete(fut) == socket.getaddrinfo("localhost", 80)
    fut = _loop.getnameinfo(loop, ("127.0.0.1", 80), socket.NI_NUMERICSERV)
    assert loop.run_until_complete(fut) == socket.getnameinfo(("127.0.0.1", 80),
                                                             socket.NI_NUMERICSERV)
    with pytest.raises(TypeError):
        _loop.getaddrinfo(object(), "localhost", 80)


def test_close_with_lookups_in_flight(loop_factory, loop_name):
    if loop_name != "pyasync_c":
        pytest.skip("pyasync_c's C entry points")
    loop = loop_factory()
    futures = [_loop.getaddrinfo(loop, "localhost", i) for i in range(300)]
    futures += [_loop.getnameinfo(loop, ("127.0.0.1", i)) for i in range(50)]
    loop.close()  # queued requests are cancelled, running ones waited for
    assert all(not f.done() for f in futures)  # results are dropped on a closed loop
    with pytest.raises(RuntimeError, match="closed"):
        _loop.getaddrinfo(loop, "localhost", 80)
    with pytest.raises(RuntimeError, match="closed"):
        _loop.getnameinfo(loop, ("127.0.0.1", 80))
    del futures


def test_other_thread_is_refused(run, loop_name):
    if loop_name != "pyasync_c":
        pytest.skip("pyasync_c's C entry points")

    async def main():
        loop = asyncio.get_running_loop()
        errors: list[BaseException] = []

        def other():
            try:
                _loop.getaddrinfo(loop, "localhost", 80)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        thread = threading.Thread(target=other)
        thread.start()
        while thread.is_alive():
            await asyncio.sleep(0.001)
        return errors

    errors = run(main())
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError)


def test_debug_mode(run, caplog):
    async def main():
        loop = asyncio.get_running_loop()
        return await loop.getaddrinfo("localhost", 80), await loop.getnameinfo(("127.0.0.1", 80))

    with caplog.at_level("DEBUG", logger="asyncio"):
        infos, names = run(main(), debug=True)
    assert infos == socket.getaddrinfo("localhost", 80)
    assert names == socket.getnameinfo(("127.0.0.1", 80), 0)
    assert any("Get address info" in r.getMessage() for r in caplog.records)


def test_sock_connect_resolves_names(run):
    async def main():
        loop = asyncio.get_running_loop()
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.setblocking(False)
        client = socket.socket()
        client.setblocking(False)
        try:
            await loop.sock_connect(client, ("localhost", server.getsockname()[1]))
            conn, _ = await loop.sock_accept(server)
            conn.close()
            return client.getpeername() == server.getsockname()
        finally:
            client.close()
            server.close()

    if socket.getaddrinfo("localhost", 0, socket.AF_INET)[0][4][0] != "127.0.0.1":
        pytest.skip("localhost is not 127.0.0.1 here")
    assert run(main())


@pytest.mark.skipif(sys.platform != "linux", reason="glibc error codes")
def test_error_codes_are_the_systems(run):
    async def main():
        loop = asyncio.get_running_loop()
        with pytest.raises(socket.gaierror) as info:
            await loop.getaddrinfo("127.0.0.1", "nosuchservice")
        return info.value

    exc = run(main())
    assert exc.errno == socket.EAI_SERVICE
    assert exc.args == (socket.EAI_SERVICE, "Servname not supported for ai_socktype")
