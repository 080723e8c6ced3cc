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


def test_ready_callbacks_run_before_the_polled_io(run):
    async def main():
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
                assert events[:3] == ["callback 1", "callback 2", "data x"]
            finally:
                transport.close()
    run(main())


def test_datagram_received_after_ready_callbacks(run):
    """A datagram sent before a coroutine sets up its waiter is delivered after
    that coroutine's first step (the order CPython's own tests rely on)."""
    async def main():
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
            assert events == ["task step", "datagram d"]
        finally:
            sender.close()
            receiver.close()
    run(main())


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
