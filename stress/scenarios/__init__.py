"""Every scenario, in the order run.py runs them (``SCENARIOS``: name -> Scenario)."""
from __future__ import annotations

from ..harness import Scenario
from . import conns, emfile, faults, fork, server_close, slow_readers, soak, subprocs, threadsafe, udp

SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("conns", "10,000 concurrent TCP connections, echo checked byte for byte",
             conns.main, timeout=240),
    Scenario("resets", "clients reset (SO_LINGER 0) mid-request and mid-reply",
             faults.resets),
    Scenario("half_close", "request, write_eof(), then read the whole reply",
             faults.half_close),
    Scenario("slow_readers", "slow readers against large writes: flow control bounds memory",
             slow_readers.main, timeout=180),
    Scenario("idle", "idle connections held while active clients ping-pong",
             faults.idle_clients),
    Scenario("handler_errors", "protocol/handler exceptions and cancelled handlers",
             faults.handler_errors),
    Scenario("server_close", "server.close() + wait_closed() with clients connected",
             server_close.main),
    Scenario("emfile", "EMFILE on accept under a lowered RLIMIT_NOFILE, then recovery",
             emfile.main, timeout=120),
    Scenario("threadsafe", "threads hammering call_soon_threadsafe while serving",
             threadsafe.main, timeout=120),
    Scenario("subprocs", "500 concurrent subprocesses, exit codes and outputs",
             subprocs.main, timeout=180),
    Scenario("udp", "UDP flood on loopback: count, no corruption, loss reported",
             udp.main),
    Scenario("fork", "fork in a running loop: child os._exit / new loop / sys.exit",
             fork.main, timeout=120),
    Scenario("soak", "connections, timers, queues and tasks churned for --soak-seconds",
             soak.main, rounds=1, default=False),
)}
