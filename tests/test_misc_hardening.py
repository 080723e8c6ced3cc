"""Values from Python code the loop and the primitives must not trust blindly:
a socket subclass's send()/recv_into()/accept() results, files whose st_size
is not their size (sendfile), Semaphore counters that are not small ints.
Each runs on the stdlib loop and on pyasync_c's (``loop``/``run``), and the
primitives under both implementations (``prims``), so parity is checked."""
from __future__ import annotations

import array
import asyncio
import fractions
import os
import socket
import tempfile

import pytest

DATA = b"0123456789abcdef"


def _pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    return a, b


def _wrap(cls: type[socket.socket], sock: socket.socket) -> socket.socket:
    s = cls(sock.family, sock.type, fileno=sock.detach())
    s.setblocking(False)
    return s


def _drain(sock: socket.socket) -> bytes:
    out = b""
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            return out
        if not chunk:
            return out
        out += chunk


# ---- sock_sendall and send()'s return value ----------------------------------

def _scripted_sender(counts: list[object], handed: list[object]) -> type[socket.socket]:
    """A socket whose send() records what it was handed and reports counts[i]
    (an int or an exception to raise); past the script, the real count."""
    class Sender(socket.socket):
        def send(self, data, *args):  # type: ignore[override]
            handed.append(data)
            if counts:
                c = counts.pop(0)
                if isinstance(c, BaseException):
                    raise c
                return c
            return super().send(data, *args)
    return Sender


def test_sendall_negative_count_follows_asyncio(run):
    # asyncio: pos = -64, and view[-64:] clamps to the whole data: the data is
    # sent again until pos reaches len(data).  Never memory before the buffer.
    async def main():
        loop = asyncio.get_running_loop()
        a, b = _pair()
        handed: list[object] = []
        s = _wrap(_scripted_sender([-64], handed), a)
        with s, b:
            data = bytearray(DATA)
            await asyncio.wait_for(loop.sock_sendall(s, data), 5)
            return [bytes(h) for h in handed], _drain(b)
    chunks, received = run(main())
    assert chunks == [DATA] * 6
    assert received == DATA * 5


def test_sendall_negative_count_partial_slice(run):
    async def main():
        loop = asyncio.get_running_loop()
        a, b = _pair()
        handed: list[object] = []
        s = _wrap(_scripted_sender([-4], handed), a)
        with s, b:
            await asyncio.wait_for(loop.sock_sendall(s, DATA), 5)
            return [bytes(h) for h in handed], _drain(b)
    chunks, received = run(main())
    # send(data) -> -4; view[-4:] (the last 4 bytes) -> 4; view[0:] -> all
    assert chunks == [DATA, DATA[-4:], DATA]
    assert received == DATA[-4:] + DATA


def test_sendall_first_send_gets_the_data_object(run):
    async def main():
        loop = asyncio.get_running_loop()
        a, b = _pair()
        handed: list[object] = []
        s = _wrap(_scripted_sender([BlockingIOError(), 3], handed), a)
        with s, b:
            data = bytearray(DATA)
            await asyncio.wait_for(loop.sock_sendall(s, data), 5)
            return handed[0] is data, [bytes(h) for h in handed[1:]], _drain(b)
    first_is_data, later, received = run(main())
    assert first_is_data  # as asyncio: sock.send(data)
    assert later == [DATA, DATA[3:]]
    assert received == DATA[3:]


def test_sendall_chunk_kept_by_send_stays_valid(run):
    # A send() that keeps the memoryview it was handed: the view must own its
    # export (asyncio's memoryview slices do), not point at a released buffer.
    async def main():
        loop = asyncio.get_running_loop()
        a, b = _pair()
        handed: list[object] = []
        s = _wrap(_scripted_sender([BlockingIOError(), 1], handed), a)
        with s, b:
            data = bytearray(DATA)
            await asyncio.wait_for(loop.sock_sendall(s, data), 5)
            kept = handed[-1]
            with pytest.raises(BufferError):
                data.extend(b"x" * 4096)  # the kept slice still exports it
            snapshot = bytes(kept)
            del handed[:], kept
            data.extend(b"x" * 4096)  # now it may move
            return snapshot
    assert run(main()) == DATA[1:]


@pytest.mark.parametrize("count", [len(DATA) + 1, 10**30, -(10**30)], ids=["over", "huge", "hugeneg"])
def test_sendall_count_out_of_range_is_oserror(run, loop_name, count):
    if loop_name == "stdlib":
        pytest.skip("asyncio sends empty slices forever")

    async def main():
        loop = asyncio.get_running_loop()
        a, b = _pair()
        handed: list[object] = []
        s = _wrap(_scripted_sender([BlockingIOError(), count], handed), a)
        with s, b:
            with pytest.raises(OSError, match="invalid length"):
                await asyncio.wait_for(loop.sock_sendall(s, DATA), 5)
            # the first attempt too: raised at once
            handed.clear()
            s2 = _wrap(_scripted_sender([count], handed), s.dup())
            with s2, pytest.raises(OSError, match="invalid length"):
                await asyncio.wait_for(loop.sock_sendall(s2, DATA), 5)
            assert not loop.remove_writer(s)
    run(main())


@pytest.mark.parametrize("value", [2.5, None, "3"])
def test_sendall_non_int_count_is_typeerror(run, loop_name, value):
    if loop_name == "stdlib":
        pytest.skip("asyncio: a TypeError in its writer callback on every iteration")

    async def main():
        loop = asyncio.get_running_loop()
        a, b = _pair()
        s = _wrap(_scripted_sender([BlockingIOError(), value], []), a)
        with s, b:
            with pytest.raises(TypeError, match="sock.send"):
                await asyncio.wait_for(loop.sock_sendall(s, DATA), 5)
    run(main())


def test_sendall_itemsize_above_one_sends_bytes(run, loop_name):
    if loop_name == "stdlib":
        pytest.skip("asyncio compares a byte count with len(data) in items: never done")

    async def main():
        loop = asyncio.get_running_loop()
        a, b = _pair()
        with a, b:
            data = array.array("H", range(2000))
            await asyncio.wait_for(loop.sock_sendall(a, data), 5)
            return _drain(b) == data.tobytes()
    assert run(main())


def test_sendall_non_contiguous_buffer(run):
    async def main():
        loop = asyncio.get_running_loop()
        a, b = _pair()
        with a, b:
            with pytest.raises(BufferError):
                await loop.sock_sendall(a, memoryview(DATA)[::2])
    run(main())


# ---- the other results a socket subclass reports ----------------------------

def test_recv_into_count_is_passed_through(run):
    class Liar(socket.socket):
        def recv_into(self, buf, *args):  # type: ignore[override]
            return 10**6  # asyncio returns it as is; nothing indexes with it

    async def main():
        loop = asyncio.get_running_loop()
        a, b = _pair()
        s = _wrap(Liar, a)
        with s, b:
            buf = bytearray(4)
            return await loop.sock_recv_into(s, buf), bytes(buf)
    assert run(main()) == (10**6, bytes(4))


@pytest.mark.parametrize("shape", ["list", "iterator"])
def test_accept_result_unpacked_as_asyncio(run, shape):
    class Acceptor(socket.socket):
        def accept(self):  # type: ignore[override]
            conn, addr = super().accept()
            return [conn, addr] if shape == "list" else iter((conn, addr))

    async def main():
        loop = asyncio.get_running_loop()
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        lst = _wrap(Acceptor, srv)
        cli = socket.create_connection(lst.getsockname())
        with lst, cli:
            r = await asyncio.wait_for(loop.sock_accept(lst), 5)
            r[0].close()
            return type(r), len(r)
    assert run(main()) == (tuple, 2)


@pytest.mark.parametrize("result", [(), 5], ids=["empty", "int"])
def test_accept_bad_result(run, result):
    class Acceptor(socket.socket):
        def accept(self):  # type: ignore[override]
            return result

    async def main():
        loop = asyncio.get_running_loop()
        a, b = _pair()
        s = _wrap(Acceptor, a)
        with s, b:
            with pytest.raises((TypeError, ValueError)) as info:
                await loop.sock_accept(s)
            return type(info.value)
    assert run(main()) is (ValueError if result == () else TypeError)


def test_sock_op_on_transport_fd_checked_only_when_waiting(run):
    # asyncio checks _ensure_fd_no_transport only before it registers a waiter.
    async def main():
        loop = asyncio.get_running_loop()
        a, b = _pair()
        with a, b:
            transport, _ = await loop.create_connection(asyncio.Protocol, sock=a)
            transport.pause_reading()
            b.send(b"ready")
            await asyncio.sleep(0.05)
            got = await loop.sock_recv(a, 100)  # completes at once: allowed
            with pytest.raises(RuntimeError, match="is used by transport"):
                await loop.sock_recv(a, 100)  # would wait: refused
            transport.abort()
            await asyncio.sleep(0)
            return got
    assert run(main()) == b"ready"


# ---- sendfile when st_size is not the size -------------------------------------

async def _sendfile(loop, via_transport: bool, sock, file, offset, count, fallback=True):
    if not via_transport:
        return await loop.sock_sendfile(sock, file, offset, count, fallback=fallback)
    transport, _ = await loop.create_connection(asyncio.Protocol, sock=sock)
    try:
        return await loop.sendfile(transport, file, offset, count, fallback=fallback)
    finally:
        transport.close()
        await asyncio.sleep(0)


async def _recv_all(loop, sock, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = await asyncio.wait_for(loop.sock_recv(sock, n - len(out)), 5)
        if not chunk:
            break
        out += chunk
    return out


@pytest.mark.parametrize("via_transport", [False, True], ids=["sock", "transport"])
def test_sendfile_dev_zero_with_count(run, via_transport):
    async def main():
        loop = asyncio.get_running_loop()
        a, b = _pair()
        with a, b, open("/dev/zero", "rb") as f:
            sent, got = await asyncio.gather(
                _sendfile(loop, via_transport, a, f, 0, 300_000, fallback=False),
                _recv_all(loop, b, 300_000))
            return sent, len(got), f.tell()
    assert run(main()) == (300_000, 300_000, 0)


@pytest.mark.parametrize("via_transport", [False, True], ids=["sock", "transport"])
def test_sendfile_dev_zero_without_count_sends_nothing(run, via_transport):
    # asyncio: the block size is st_size (0) without a count: "empty file".
    async def main():
        loop = asyncio.get_running_loop()
        a, b = _pair()
        with a, b, open("/dev/zero", "rb") as f:
            return await _sendfile(loop, via_transport, a, f, 0, None)
    assert run(main()) == 0


@pytest.mark.parametrize("via_transport", [False, True], ids=["sock", "transport"])
def test_sendfile_pipe_not_available_without_fallback(run, via_transport):
    async def main():
        loop = asyncio.get_running_loop()
        a, b = _pair()
        r, w = os.pipe()
        os.write(w, b"p" * 3000)
        os.close(w)
        c, d = _pair()
        with a, b, c, d, open(r, "rb") as f:
            with pytest.raises(asyncio.SendfileNotAvailableError):
                await _sendfile(loop, via_transport, a, f, 0, 4096, fallback=False)
            # no count: the block size is st_size (0), "empty file", as asyncio
            return await _sendfile(loop, via_transport, c, f, 0, None, fallback=False)
    assert run(main()) == 0


def test_sendfile_proc_file_falls_back(run):
    async def main():
        loop = asyncio.get_running_loop()
        a, b = _pair()
        with a, b, open("/proc/self/cmdline", "rb") as f:
            expected = f.read()
            f.seek(0)
            sent, got = await asyncio.gather(loop.sock_sendfile(a, f, 0, 1 << 20),
                                             _recv_all(loop, b, len(expected)))
            return sent == len(expected), got == expected
    assert run(main()) == (True, True)


@pytest.mark.parametrize("count", [None, 4500])
def test_sendfile_file_growing_during_send(run, count):
    # asyncio sends st_size-sized blocks until os.sendfile() reports EOF (or
    # `count`), so what is appended while it waits for the socket is sent too.
    async def main():
        loop = asyncio.get_running_loop()
        a, b = _pair()
        with a, b, tempfile.TemporaryFile() as f:
            f.write(b"A" * 1000)
            f.flush()
            f.seek(0)
            filler = 0
            while True:  # fill the socket: the first os.sendfile() must wait
                try:
                    filler += a.send(b"f" * 65536)
                except BlockingIOError:
                    break
            task = asyncio.ensure_future(loop.sock_sendfile(a, f, 0, count))
            for _ in range(5):
                await asyncio.sleep(0)
            assert not task.done()
            f.seek(0, os.SEEK_END)
            f.write(b"B" * 5000)
            f.flush()
            received = b""
            while not task.done() or received.count(b"A") + received.count(b"B") < task.result():
                try:
                    chunk = await asyncio.wait_for(loop.sock_recv(b, 1 << 20), 0.2)
                except asyncio.TimeoutError:
                    continue
                received += chunk
            sent = await task
            return sent, received[filler:], f.tell()
    sent, payload, pos = run(main())
    n = 6000 if count is None else count
    assert (sent, pos) == (n, n)
    assert payload == (b"A" * 1000 + b"B" * 5000)[:n]


# ---- Semaphore counters that are not small ints -------------------------------

def _state(sem) -> tuple[object, str, bool]:
    r = repr(sem)
    return sem._value, r[r.index("["):], sem.locked()


async def _try_acquire(sem) -> bool:
    """True if acquire() completed at once; a blocked one is cancelled."""
    task = asyncio.ensure_future(sem.acquire())
    for _ in range(3):
        await asyncio.sleep(0)
    if task.done():
        return task.result()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return False


def test_semaphore_float_value(run, prims):
    async def main():
        sem = prims.Semaphore(2.5)
        log = [_state(sem)]
        for _ in range(3):  # 2.5, 1.5, 0.5: never == 0, so never locked
            log.append(await _try_acquire(sem))
        log.append(_state(sem))
        sem.release()
        async with sem:
            log.append(_state(sem))
        log.append(_state(sem))
        return log
    assert run(main()) == [
        (2.5, "[unlocked, value:2.5]>", False), True, True, True,
        (-0.5, "[unlocked, value:-0.5]>", False),
        (-0.5, "[unlocked, value:-0.5]>", False),
        (0.5, "[unlocked, value:0.5]>", False)]


def test_semaphore_float_zero_blocks_and_wakes(run, prims):
    async def main():
        sem = prims.Semaphore(0.0)
        first = _state(sem)
        waiters = [asyncio.ensure_future(sem.acquire()) for _ in range(3)]
        await asyncio.sleep(0)
        sem.release()  # 1.0, then the first waiter takes it: 0.0
        for _ in range(3):
            await asyncio.sleep(0)
        woken = [w.done() for w in waiters]
        value = sem._value
        for w in waiters:
            w.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
        return first, woken, value, type(value)
    assert run(main()) == ((0.0, "[locked]>", True), [True, False, False], 0.0, float)


def test_semaphore_bool_and_fraction(run, prims):
    async def main():
        sem = prims.Semaphore(True)
        log = [_state(sem), type(sem._value)]
        log.append(await _try_acquire(sem))
        log += [_state(sem), type(sem._value)]
        log.append(await _try_acquire(sem))
        frac = prims.Semaphore(fractions.Fraction(3, 2))
        log.append(await _try_acquire(frac))
        log.append(_state(frac))
        return log
    assert run(main()) == [
        (True, "[unlocked, value:True]>", False), bool, True,
        (0, "[locked]>", True), int, False, True,
        (fractions.Fraction(1, 2), "[unlocked, value:1/2]>", False)]


def test_semaphore_huge_int(run, prims):
    async def main():
        sem = prims.Semaphore(10**30)
        await sem.acquire()
        after_acquire = sem._value
        sem.release()
        sem.release()
        edge = prims.Semaphore(2**63 - 1)
        edge.release()
        bounded = prims.BoundedSemaphore(10**30)
        await bounded.acquire()
        bounded.release()
        with pytest.raises(ValueError, match="released too many times"):
            bounded.release()
        return after_acquire, sem._value, edge._value, bounded._bound_value
    assert run(main()) == (10**30 - 1, 10**30 + 1, 2**63, 10**30)


def test_bounded_semaphore_float(run, prims):
    async def main():
        sem = prims.BoundedSemaphore(1.5)
        with pytest.raises(ValueError, match="released too many times"):
            sem.release()  # 1.5 >= 1.5
        await sem.acquire()
        sem.release()
        return sem._value, sem._bound_value
    assert run(main()) == (1.5, 1.5)


class _IndexOnly:
    def __index__(self) -> int:
        return 2


class _NoArithmetic:
    def __lt__(self, other: object) -> bool:
        return False


def test_semaphore_odd_initial_values(prims):
    for bad in (-1, -0.5, -(10**30), float("-inf")):
        with pytest.raises(ValueError, match="must be >= 0"):
            prims.Semaphore(bad)
        with pytest.raises(ValueError, match="must be >= 0"):
            prims.BoundedSemaphore(bad)
    for bad in (None, "1", _IndexOnly(), [1]):  # asyncio only compares with 0
        with pytest.raises(TypeError):
            prims.Semaphore(bad)
    odd = _NoArithmetic()
    sem = prims.Semaphore(odd)
    assert sem._value is odd
    assert not sem.locked()
    with pytest.raises(TypeError):
        sem.release()  # `self._value += 1`
    nan = prims.Semaphore(float("nan"))
    assert not nan.locked()


def test_semaphore_acquire_arithmetic_error_propagates(run, prims):
    async def main():
        sem = prims.Semaphore(_NoArithmetic())
        with pytest.raises(TypeError):
            await sem.acquire()  # `self._value -= 1`
        return True
    assert run(main())


def test_semaphore_value_attribute_assignable(run, prims):
    async def main():
        sem = prims.Semaphore(3)
        sem._value = 0
        locked = sem.locked()
        sem._value = 1.5
        acquired = await _try_acquire(sem)
        return locked, acquired, sem._value
    assert run(main()) == (True, True, 0.5)
