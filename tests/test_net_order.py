"""When transport callbacks run relative to other callbacks, on both loops
(fixtures in conftest.py): asyncio runs the callbacks that were ready before a
poll first, then the I/O of that poll; debug mode times protocol callbacks
like any other callback."""
from __future__ import annotations

import asyncio
import logging
import socket
import time

import pytest


class Recorder(asyncio.Protocol):
    def __init__(self, events: list[str]) -> None:
        self.events = events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.events.append(f"data {data.decode()}")


async def stream_scenario() -> list[str]:
    """Data made readable, then two callbacks queued, in one step: the events in the order they ran."""
    loop = asyncio.get_running_loop()
    events: list[str] = []
    a, b = socket.socketpair()
    with b:
        transport, _ = await loop.create_connection(lambda: Recorder(events), sock=a)
        try:
            await asyncio.sleep(0.01)  # reading has started
            b.sendall(b"x")            # readable at the next poll...
            loop.call_soon(events.append, "callback 1")  # ...but these were ready first
            loop.call_soon(events.append, "callback 2")
            for _ in range(100):
                if "data x" in events:
                    break
                await asyncio.sleep(0.005)
            return events[:3]
        finally:
            transport.close()


async def datagram_scenario() -> list[str]:
    """A datagram sent, then a task created, in one step: the events in the order they ran."""
    loop = asyncio.get_running_loop()
    events: list[str] = []

    class Sink(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: object) -> None:
            events.append(f"datagram {data.decode()}")

    receiver, _ = await loop.create_datagram_endpoint(Sink, local_addr=("127.0.0.1", 0))
    sender, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, remote_addr=receiver.get_extra_info("sockname"))
    try:
        await asyncio.sleep(0.01)
        sender.sendto(b"d")

        async def first_step() -> None:
            events.append("task step")

        task = loop.create_task(first_step())
        for _ in range(100):
            if "datagram d" in events:
                break
            await asyncio.sleep(0.005)
        await task
        return events
    finally:
        sender.close()
        receiver.close()


def test_ready_callbacks_run_before_the_polled_io(run):
    assert run(stream_scenario()) == ["callback 1", "callback 2", "data x"]


def test_datagram_received_after_ready_callbacks(run):
    """A datagram sent before a coroutine sets up its waiter is delivered after
    that coroutine's first step (the order CPython's own tests rely on)."""
    assert run(datagram_scenario()) == ["task step", "datagram d"]


def _io_first_loop() -> asyncio.AbstractEventLoop:
    import pyasync_c
    loop = pyasync_c.new_event_loop()
    assert loop._io_first is False  # type: ignore[attr-defined]  # asyncio's order by default
    loop._io_first = True  # type: ignore[attr-defined]
    return loop


def _uvloop_loop() -> asyncio.AbstractEventLoop:
    uvloop = pytest.importorskip("uvloop")
    return uvloop.new_event_loop()


@pytest.mark.parametrize("factory", [_io_first_loop, _uvloop_loop], ids=["pyasync_c-io_first", "uvloop"])
def test_io_first_switch_gives_uvloops_order(factory):
    """pyasync_c's `_io_first` measurement switch (benchmarks/apps/instructions.py) runs a poll's
    I/O before the callbacks that were ready, as uvloop does: the same scenarios, the other order."""
    for scenario, expected in ((stream_scenario, ["data x", "callback 1", "callback 2"]),
                               (datagram_scenario, ["datagram d", "task step"])):
        with asyncio.Runner(loop_factory=factory) as runner:
            assert runner.run(scenario()) == expected, scenario.__name__


def test_io_first_switch_keeps_debug_modes_order():
    """In debug mode transport events still run as Handles (timed like any callback)."""
    with asyncio.Runner(loop_factory=_io_first_loop, debug=True) as runner:
        assert runner.run(stream_scenario()) == ["callback 1", "callback 2", "data x"]


def test_debug_mode_warns_about_a_slow_data_received(run, caplog):
    class Slow(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            time.sleep(0.15)
            self.transport.write(data)  # type: ignore[attr-defined]

    async def main():
        loop = asyncio.get_running_loop()
        loop.slow_callback_duration = 0.1
        server = await loop.create_server(Slow, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", server.sockets[0].getsockname()[1])
        writer.write(b"x")
        assert await reader.readexactly(1) == b"x"
        writer.close()
        server.close()
        await server.wait_closed()

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        run(main(), debug=True)
    slow = [r.getMessage() for r in caplog.records if "took" in r.getMessage()]
    assert slow, "no slow-callback warning for the 0.15 s data_received"
    assert any("_read_ready" in m or "_io_ready" in m for m in slow), slow


if __name__ == "__main__":
    pytest.main([__file__, "-q"])
