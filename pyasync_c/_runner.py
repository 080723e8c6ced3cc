"""``python -m pyasync_c``: run anything ``python`` runs, on pyasync_c.

The target is found and executed the way the interpreter does it (CPython's
Modules/main.c and Python/pythonrun.c), so that ``python -m pyasync_c X`` and
``python X`` see the same ``sys.path``, ``sys.argv``, ``__main__`` module and
tracebacks:

=================  ==================  =========================================
target             sys.argv[0]         sys.path[0] (nothing under -P, except
                                       for a directory or zip file)
=================  ==================  =========================================
script.py          as given            dirname(realpath(script))
directory / zip    as given            abspath(path); runs its __main__ module
-m module          the module's file   the current directory (absolute)
-c CODE            '-c'                ''
- (stdin), none    '-' / ''            ''
=================  ==================  =========================================

``python -m pyasync_c`` itself made the interpreter put the current directory
first on sys.path (unless -P): that entry is replaced by the target's.
"""
from __future__ import annotations

import builtins
import code as code_module
import importlib.machinery
import importlib.util
import io
import os
import pkgutil
import runpy
import sys
import types
from typing import Any, Callable, NamedTuple

USAGE = """\
usage: python -m pyasync_c [--stdlib-primitives] [--check] [target [args...]]

Run a Python program on pyasync_c's event loop, unmodified: the target is
anything `python` accepts, with the same sys.argv and sys.path:
  script.py            a script (also a .pyc file, a directory or a zip file
                       with a __main__.py)
  -m MODULE            a library module, like python -m
  -c CODE              a program passed as a string, like python -c
  -                    a program read from stdin (no target and stdin not a
                       terminal: the same; a terminal: an interactive console)
Options:
  --stdlib-primitives  keep asyncio's own Lock/Event/Semaphore/Queue/gather...
                       (by default the C versions replace them)
  --check              print which loop and primitives asyncio uses here, and
                       exit (pyasync_c.status() gives the same from code)
  --stats              print a summary of the loops' stats at exit (README:
                       "Seeing inside the loop")
  --blocking SECONDS   report callbacks that block the loop longer than SECONDS
Everything after the target is passed to it untouched.
"""


class Target(NamedTuple):
    kind: str          # "path", "module", "command", "stdin" or "interactive"
    value: str | None  # the path, module name or code
    args: list[str]    # what follows it


class Options(NamedTuple):
    stdlib_primitives: bool
    check: bool
    target: Target


def _fail(message: str, status: int = 2) -> None:
    sys.stderr.write(f"python -m pyasync_c: {message}\n\n{USAGE}")
    sys.exit(status)


def parse(argv: list[str]) -> Options:
    """Split our own options from the target and its arguments (python's
    -m/-c forms included: ``-mMODULE``, ``-cCODE``)."""
    stdlib_primitives = check = False
    rest = list(argv)
    while rest:
        option = rest[0]
        if option == "--stdlib-primitives":
            stdlib_primitives = True
        elif option == "--check":
            check = True
        elif option in ("-h", "--help"):
            sys.stdout.write(USAGE)
            sys.exit(0)
        elif option == "--":
            rest.pop(0)
            break
        elif option[:2] in ("-m", "-c"):
            kind = "module" if option[1] == "m" else "command"
            if len(option) > 2:
                return Options(stdlib_primitives, check, Target(kind, option[2:], rest[1:]))
            if len(rest) < 2:
                _fail(f"argument expected for the {option} option")
            return Options(stdlib_primitives, check, Target(kind, rest[1], rest[2:]))
        elif option == "-":
            return Options(stdlib_primitives, check, Target("stdin", None, rest[1:]))
        elif option.startswith("-"):
            _fail(f"unknown option {option!r} (interpreter options go before -m pyasync_c)")
        else:
            break
        rest.pop(0)
    if rest:
        return Options(stdlib_primitives, check, Target("path", rest[0], rest[1:]))
    return Options(stdlib_primitives, check, Target("interactive", None, []))


# --------------------------------------------------------------------------
# The __main__ module and sys.path, as the interpreter sets them up
# --------------------------------------------------------------------------

def _fresh_main() -> types.ModuleType:
    """A new ``__main__`` module, as the interpreter creates it at startup, put
    in sys.modules (the runner's own code ran in the previous one)."""
    module = types.ModuleType("__main__")
    module.__dict__.update(__builtins__=builtins, __loader__=importlib.machinery.BuiltinImporter)
    if sys.version_info < (3, 14):
        module.__dict__["__annotations__"] = {}
    sys.modules["__main__"] = module
    return module


def _set_path0(entry: str, *, under_safe_path: bool = False) -> None:
    """Replace the sys.path[0] that ``python -m pyasync_c`` got (the current
    directory; none under -P) with the target's. Under -P the interpreter
    adds no entry, except a directory's or zip file's (under_safe_path)."""
    if not sys.flags.safe_path:
        if sys.path:
            del sys.path[0]
    elif not under_safe_path:
        return
    sys.path.insert(0, entry)


def _run_source(source: bytes | str, filename: str, main: types.ModuleType) -> None:
    exec(compile(source, filename, "exec", dont_inherit=True), main.__dict__)


def _run_with_file(main: types.ModuleType, path: str, run: Callable[[], None]) -> None:
    """Run with ``__file__``/``__cached__`` set, removed afterwards as the
    interpreter does (kept when the program exits through SystemExit)."""
    main.__dict__.update(__file__=path, __cached__=None)
    exiting = False
    try:
        run()
    except SystemExit:
        exiting = True
        raise
    finally:
        if not exiting:
            main.__dict__.pop("__file__", None)
            main.__dict__.pop("__cached__", None)


def _is_compiled(path: str, data: bytes) -> bool:
    """A .pyc file, by its name or by its magic number (as the interpreter checks)."""
    return path.endswith(".pyc") or data[:2] == importlib.util.MAGIC_NUMBER[:2]


def _run_path(path: str, main: types.ModuleType) -> None:
    if pkgutil.get_importer(path) is not None:
        # A directory or a zip file: its __main__ module, found on sys.path[0].
        _set_path0(os.path.abspath(path), under_safe_path=True)
        _run_main_module("__main__", alter_argv=False)
        return
    full = os.path.abspath(path)
    try:
        with io.open_code(full) as file:
            data = file.read()
    except OSError as exc:
        sys.stderr.write(f"{sys.executable}: can't open file {full!r}: "
                         f"[Errno {exc.errno}] {exc.strerror}\n")
        sys.exit(2)
    _set_path0(os.path.dirname(os.path.realpath(full)))
    if _is_compiled(full, data):
        loader: Any = importlib.machinery.SourcelessFileLoader("__main__", full)
        main.__loader__ = loader
        code = loader.get_code("__main__")
        _run_with_file(main, full, lambda: exec(code, main.__dict__))
    else:
        main.__loader__ = importlib.machinery.SourceFileLoader("__main__", full)
        _run_with_file(main, full, lambda: _run_source(data, full, main))


def _run_main_module(name: str, alter_argv: bool) -> None:
    """What the interpreter calls for -m, a directory or a zip file."""
    run_as_main = getattr(runpy, "_run_module_as_main", None)
    if run_as_main is not None:
        run_as_main(name, alter_argv)
    else:  # pragma: no cover - a runpy without it (not CPython 3.11-3.14)
        runpy.run_module(name, run_name="__main__", alter_sys=True)


def _run_target(target: Target) -> None:
    main = _fresh_main()
    if target.kind == "path":
        assert target.value is not None
        sys.argv = [target.value, *target.args]
        _run_path(target.value, main)
    elif target.kind == "module":
        assert target.value is not None
        # python -m: argv[0] is '-m' while the module is found, then its file;
        # sys.path[0] stays the current directory python -m pyasync_c got.
        sys.argv = ["-m", *target.args]
        _run_main_module(target.value, alter_argv=True)
    elif target.kind == "command":
        assert target.value is not None
        sys.argv = ["-c", *target.args]
        _set_path0("")
        if sys.version_info >= (3, 13):
            # python -c keeps the code for tracebacks to show its lines (3.13+)
            import linecache
            linecache.cache["<string>"] = (len(target.value), None, [
                line + "\n" for line in target.value.splitlines()], "<string>")
        _run_source(target.value, "<string>", main)
    elif target.kind == "stdin" or not sys.stdin.isatty():
        sys.argv = ["-" if target.kind == "stdin" else "", *target.args]
        _set_path0("")
        source = sys.stdin.buffer.read()
        _run_with_file(main, "<stdin>", lambda: _run_source(source, "<stdin>", main))
    else:
        sys.argv = [""]
        _set_path0("")
        console = code_module.InteractiveConsole(main.__dict__)
        console.interact(banner=f"Python {sys.version} on {sys.platform} (pyasync_c)",
                         exitmsg="")


# --------------------------------------------------------------------------
# Tracebacks without the runner's frames
# --------------------------------------------------------------------------

def _runner_files() -> frozenset[str]:
    files = {os.path.abspath(__file__), "<frozen runpy>", runpy.__file__ or ""}
    main_file = os.path.join(os.path.dirname(os.path.abspath(__file__)), "__main__.py")
    files.add(main_file)
    return frozenset(files)


def _strip_runner_frames(tb: types.TracebackType | None) -> types.TracebackType | None:
    files = _runner_files()
    while tb is not None and tb.tb_frame.f_code.co_filename in files:
        tb = tb.tb_next
    return tb


class _TrimmingExceptHook:
    """sys.excepthook for the duration of one exception's way out: the frames
    above ``start`` (the runner's, and runpy's that ran ``python -m
    pyasync_c``) are dropped before the previous hook prints it."""

    def __init__(self, previous: Callable[..., Any], exc: BaseException,
                 start: types.TracebackType | None) -> None:
        self.previous, self.exc, self.start = previous, exc, start

    def __call__(self, exc_type: type[BaseException], exc: BaseException,
                 tb: types.TracebackType | None) -> Any:
        if sys.excepthook is self:
            sys.excepthook = self.previous
        if exc is self.exc:
            tb = self.start
            exc.__traceback__ = tb
            if getattr(sys, "last_traceback", None) is not None:
                sys.last_traceback = tb
        return self.previous(exc_type, exc, tb)


def run(target: Target) -> None:
    """Run the target; an exception leaving it propagates (so the interpreter
    prints it, sets the exit status, re-raises SIGINT for KeyboardInterrupt)
    but is printed without the runner's frames."""
    try:
        _run_target(target)
    except SystemExit:
        raise
    except BaseException as exc:
        start = _strip_runner_frames(exc.__traceback__)
        exc.__traceback__ = start
        sys.excepthook = _TrimmingExceptHook(sys.excepthook, exc, start)
        raise


# --------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------

def activate(*, primitives: bool) -> None:
    """What python -m pyasync_c sets up before the target runs (also in the
    children multiprocessing spawns): asyncio's default loop is pyasync_c's,
    the C primitives (unless primitives=False), the framework hooks."""
    from . import install
    from . import _frameworks
    install(primitives=primitives)
    _frameworks.install_hooks(primitives=primitives)


def main(argv: list[str] | None = None) -> None:
    from ._observe import take_cli_options  # --stats, --blocking SECONDS
    options = parse(take_cli_options(sys.argv[1:] if argv is None else argv))
    activate(primitives=not options.stdlib_primitives)
    if options.check:
        from . import _frameworks
        print(_frameworks.format_status(_frameworks.status()))
        return
    run(options.target)
