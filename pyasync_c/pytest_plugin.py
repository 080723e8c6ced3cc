"""pytest plugin: run pytest-asyncio's and anyio's tests on pyasync_c's loop.

Opt-in, so that installing pyasync_c changes no test suite::

    pytest --pyasync-c                      # loop + C primitives, as python -m pyasync_c
    pytest --pyasync-c --pyasync-c-stdlib-primitives   # the loop only
    # or in the ini file:  pyasync_c = true  (and pyasync_c_stdlib_primitives = true)

The plugin is registered through the ``pytest11`` entry point; without the
package installed, load it with ``-p pyasync_c.pytest_plugin``.

What it does when enabled, before the tests are collected: asyncio's default
loop becomes pyasync_c's (pytest-asyncio's runners and anyio's asyncio
backend create their loops through it), anyio's ``use_uvloop`` option gives
pyasync_c's loop (said once on stderr), and the C primitives replace asyncio's.
A suite that picks a loop itself (its own ``event_loop_policy`` fixture,
pytest-asyncio's loop factories, anyio's ``loop_factory`` option) keeps it;
the report header says which loop asyncio creates.
Everything is undone when pytest finishes.
"""
from __future__ import annotations

import asyncio
import sys
from typing import Any, Callable

import pytest

_HELP = ("run asyncio tests (pytest-asyncio, anyio's asyncio backend) on pyasync_c's "
         "loop, with the C primitives")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pyasync_c")
    group.addoption("--pyasync-c", action="store_true", default=None, dest="pyasync_c",
                    help=_HELP)
    group.addoption("--pyasync-c-stdlib-primitives", action="store_true", default=None,
                    dest="pyasync_c_stdlib_primitives",
                    help="with --pyasync-c: keep asyncio's own Lock/Queue/gather...")
    parser.addini("pyasync_c", _HELP + " (like --pyasync-c)", type="bool", default=False)
    parser.addini("pyasync_c_stdlib_primitives", "like --pyasync-c-stdlib-primitives",
                  type="bool", default=False)


def _enabled(config: pytest.Config, name: str) -> bool:
    option = config.getoption(name)
    return bool(option) if option is not None else bool(config.getini(name))


_undo: list[Callable[[], None]] = []
_notes: list[str] = []


def _reset_note_sink() -> None:
    from . import _frameworks
    _frameworks.note_sink = None


def _save_asyncio_state() -> None:
    """Remember what install() changes, for pytest_unconfigure."""
    from . import PRIMITIVE_NAMES
    import asyncio.locks
    import asyncio.queues
    import asyncio.tasks
    saved = []
    for name in PRIMITIVE_NAMES:
        for module in (asyncio, asyncio.tasks, asyncio.queues, asyncio.locks):
            if name in vars(module):
                saved.append((module, name, vars(module)[name]))

    def restore_primitives() -> None:
        for module, name, value in saved:
            setattr(module, name, value)
    _undo.append(restore_primitives)

    if sys.version_info < (3, 14):
        policy = asyncio.events._event_loop_policy  # type: ignore[attr-defined]
        _undo.append(lambda: asyncio.set_event_loop_policy(policy))
    else:
        new_loop = (asyncio.events.new_event_loop, asyncio.new_event_loop)

        def restore_new_event_loop() -> None:
            asyncio.events.new_event_loop, asyncio.new_event_loop = new_loop  # type: ignore[misc]
        _undo.append(restore_new_event_loop)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    if not _enabled(config, "pyasync_c"):
        return
    from . import _frameworks, install
    primitives = not _enabled(config, "pyasync_c_stdlib_primitives")
    _save_asyncio_state()
    install(primitives=primitives)
    _frameworks.install_hooks(primitives=primitives, children=False)
    _undo.append(_frameworks.uninstall_hooks)
    # pytest captures the tests' stderr: notes are shown in the summary.
    _frameworks.note_sink = _notes.append
    _undo.append(_reset_note_sink)
    config.stash[_ENABLED] = primitives


_ENABLED = pytest.StashKey[bool]()


def pytest_unconfigure(config: pytest.Config) -> None:
    while _undo:
        _undo.pop()()


def pytest_report_header(config: pytest.Config) -> str | None:
    if _ENABLED not in config.stash:
        return None
    from ._frameworks import status
    info = status()
    return (f"pyasync_c {info['pyasync_c']}: asyncio loop {info['default_loop']}, "
            f"C primitives: {', '.join(info['c_primitives']) or 'none'}")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _notes:
        terminalreporter.section("pyasync_c")
        for line in _notes:
            terminalreporter.write_line(line)
        _notes.clear()
