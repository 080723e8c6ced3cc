"""``python -m pyasync_c [options] script.py [args...]`` (or ``-m module``).

Runs an existing asyncio program unmodified on pyasync_c: the script sees
``sys.argv == ['script.py', *args]``, ``__name__ == '__main__'`` and its own
directory first on sys.path, exactly as with ``python script.py``; its
``asyncio.run(...)`` / ``asyncio.new_event_loop()`` get pyasync_c's loop, and
(unless --stdlib-primitives) asyncio's Lock, Event, Semaphore,
BoundedSemaphore, Queue, LifoQueue, PriorityQueue and gather are the C ones.
"""
from __future__ import annotations

import builtins
import importlib.machinery
import io
import os
import runpy
import sys
import types
from typing import NamedTuple

from . import install


USAGE = """usage: python -m pyasync_c [--stdlib-primitives] [--stats] [--blocking SECONDS] (script.py | -m module) [args...]

Run an asyncio program on pyasync_c's event loop, unmodified.

  --stdlib-primitives  keep asyncio's own Lock/Event/Semaphore/Queue/gather...
                       (by default the C versions replace them)
  --stats              print a summary of the loops' stats at exit (README: "Seeing inside the loop")
  --blocking SECONDS   report callbacks that block the loop longer than SECONDS
  -m MODULE            run a library module as a script, like python -m
Everything after the script path (or -m MODULE) is passed to it untouched.
"""


class _Options(NamedTuple):
    stdlib_primitives: bool
    module: str | None
    target: list[str]


def _parse(argv: list[str]) -> _Options:
    stdlib_primitives = False
    rest = list(argv)
    while rest and rest[0].startswith("-"):
        option = rest.pop(0)
        if option == "--stdlib-primitives":
            stdlib_primitives = True
        elif option == "-m" and rest:
            return _Options(stdlib_primitives, rest[0], rest[1:])
        elif option in ("-h", "--help"):
            print(USAGE, end="")
            sys.exit(0)
        else:
            sys.exit(f"python -m pyasync_c: unknown option {option!r}\n\n{USAGE}")
    if not rest:
        sys.exit(f"python -m pyasync_c: a script path (or -m MODULE) is required\n\n{USAGE}")
    return _Options(stdlib_primitives, None, rest)


def main(argv: list[str] | None = None) -> None:
    from ._observe import take_cli_options  # --stats, --blocking SECONDS
    options = _parse(take_cli_options(sys.argv[1:] if argv is None else argv))
    install(primitives=not options.stdlib_primitives)
    if options.module is not None:
        sys.argv = [options.module, *options.target]
        sys.path.insert(0, os.getcwd())
        runpy.run_module(options.module, run_name="__main__", alter_sys=True)
        return
    script, *args = options.target
    sys.argv = [script, *args]  # argv[0] as given, like `python script.py`
    _run_script(script)


def _run_script(script: str) -> None:
    """Execute a script as the __main__ module, as the interpreter does for
    ``python script.py`` (3.9+): absolute ``__file__`` and traceback paths,
    the script's directory first on sys.path, ``__spec__`` None, and the
    module registered as ``sys.modules['__main__']`` so pickling works."""
    path = os.path.abspath(script)
    try:
        with io.open_code(path) as source_file:
            source = source_file.read()
    except OSError as exc:
        sys.exit(f"python -m pyasync_c: can't open file {script!r}: [Errno {exc.errno}] {exc.strerror}")
    code = compile(source, path, "exec", dont_inherit=True)
    # `python -m` put the current directory first; `python script.py` puts
    # the script's directory there instead.
    sys.path[0] = os.path.dirname(path)
    module = types.ModuleType("__main__")
    module.__dict__.update(__file__=path, __cached__=None, __package__=None, __spec__=None,
                           __loader__=importlib.machinery.SourceFileLoader("__main__", path),
                           __builtins__=builtins)
    sys.modules["__main__"] = module
    exec(code, module.__dict__)

if __name__ == "__main__":
    main()
