"""Frameworks that pick their own event loop, under ``python -m pyasync_c``.

asyncio.run() and asyncio.new_event_loop() already give pyasync_c's loop once
pyasync_c is installed (aiohttp's run_app, anyio.run, pytest-asyncio use them).
Some frameworks build a loop themselves instead:

- uvicorn (>= 0.36) calls the factory named by ``--loop``: ``auto`` picks
  uvloop when it is installed, ``asyncio`` the selector loop;
- hypercorn's ``--worker-class uvloop`` passes uvloop's factory to asyncio.Runner;
- anyio's asyncio backend with ``use_uvloop=True`` does the same;
- uvicorn ``--workers``/``--reload`` and hypercorn ``--workers`` start their
  workers through multiprocessing's "spawn", in fresh interpreters.

install_hooks() patches those places when the modules are imported (now, or
later through a meta path finder), so that they build pyasync_c's loop, and
makes spawned children set pyasync_c up as their parent did. Where the user
chose another loop explicitly, one line on stderr says which loop runs; a
custom loop factory that is not pyasync_c's is left alone, and said so.
"""
from __future__ import annotations

import asyncio
import contextlib
import importlib.abc
import importlib.machinery
import os
import platform
import sys
import types
from typing import Any, Callable, Iterator

from . import PRIMITIVE_NAMES, __version__, libuv_version, new_event_loop

_UVLOOP_HINT = "(python -m pyasync_c); run without python -m pyasync_c to get {0}"


# --------------------------------------------------------------------------
# Messages, once per process tree
# --------------------------------------------------------------------------

_SAID_ENV = "PYASYNC_C_SAID"

#: Where notes go instead of stderr (the pytest plugin shows them in its summary).
note_sink: Callable[[str], None] | None = None


def note(key: str, message: str) -> None:
    """Write ``pyasync_c: message`` on stderr, once per key in this process
    and its children (the keys said are kept in the environment, which forked
    and spawned workers inherit)."""
    said = os.environ.get(_SAID_ENV, "").split(",")
    if key in said:
        return
    os.environ[_SAID_ENV] = ",".join(filter(None, [*said, key]))
    if note_sink is not None:
        note_sink(f"pyasync_c: {message}")
        return
    try:
        sys.stderr.write(f"pyasync_c: {message}\n")
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):
        pass


def is_ours(factory: Any) -> bool:
    """Whether a loop factory builds pyasync_c's loop."""
    if factory is None:
        return False
    module = getattr(factory, "__module__", None) or ""
    return module == "pyasync_c" or module.startswith("pyasync_c.")


def _describe(factory: Any) -> str:
    module = getattr(factory, "__module__", None)
    name = getattr(factory, "__qualname__", None) or repr(factory)
    return f"{module}.{name}" if module else name


# --------------------------------------------------------------------------
# Patching modules when they are imported
# --------------------------------------------------------------------------

class _PatchingLoader(importlib.abc.Loader):
    """Runs the real loader, then the patch (the module keeps its own loader)."""

    def __init__(self, loader: Any, patch: Callable[[types.ModuleType], None]) -> None:
        self._loader, self._patch = loader, patch

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return self._loader.create_module(spec)  # type: ignore[no-any-return]

    def exec_module(self, module: types.ModuleType) -> None:
        spec = module.__spec__
        if spec is not None and spec.loader is self:
            spec.loader = self._loader
        if getattr(module, "__loader__", None) is self:
            module.__loader__ = self._loader
        self._loader.exec_module(module)
        _apply(self._patch, module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


class _PatchFinder(importlib.abc.MetaPathFinder):
    """Lets the other finders find the modules to patch, and wraps their loader."""

    def __init__(self) -> None:
        self.patches: dict[str, Callable[[types.ModuleType], None]] = {}

    def find_spec(self, name: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if sys.meta_path[:1] != [self]:
            # A finder inserted in front of us since (pytest's assertion
            # rewriter loads its plugins' packages, anyio's included) would
            # load the modules to patch without us: move back to the front.
            # The import system's loop over sys.meta_path goes on correctly:
            # the finders after us keep their positions.
            with contextlib.suppress(ValueError):
                sys.meta_path.remove(self)
                sys.meta_path.insert(0, self)
        patch = self.patches.get(name)
        if patch is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _PatchingLoader(spec.loader, patch)
        return spec  # type: ignore[no-any-return]


_finder = _PatchFinder()


def _apply(patch: Callable[[types.ModuleType], None], module: types.ModuleType) -> None:
    if getattr(module, "_pyasync_c_patched", False):
        return
    try:
        patch(module)
        module._pyasync_c_patched = True  # type: ignore[attr-defined]
    except Exception as exc:  # a framework version we do not know: say so, go on
        note(f"patch:{module.__name__}",
             f"could not adapt {module.__name__} ({type(exc).__name__}: {exc}); "
             f"it may not run on pyasync_c's loop")


def when_imported(name: str, patch: Callable[[types.ModuleType], None]) -> None:
    """Run patch(module) now if the module is imported, else right after its
    import."""
    _finder.patches[name] = patch
    if _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)
    module = sys.modules.get(name)
    if module is not None:
        _apply(patch, module)


# --------------------------------------------------------------------------
# The frameworks
# --------------------------------------------------------------------------

def _names_pyasync_c(import_string: Any) -> bool:
    """Whether a "module:attribute" string names something in pyasync_c."""
    module = str(import_string).split(":", 1)[0]
    return module == "pyasync_c" or module.startswith("pyasync_c.")


def _uvicorn_note(choice: str, builtin_names: Any) -> None:
    if choice in ("auto", "asyncio", "none") or _names_pyasync_c(choice):
        return
    if choice in builtin_names:
        note("uvicorn-loop", f"uvicorn --loop {choice}: running on pyasync_c's loop instead "
             + _UVLOOP_HINT.format(choice))
    else:
        note("uvicorn-loop", f"uvicorn --loop {choice} is a custom loop factory, used as given: "
             "this server does not run on pyasync_c's loop (pass --loop "
             "pyasync_c:new_event_loop for it)")


def _patch_uvicorn_config(module: types.ModuleType) -> None:
    config_class = module.Config
    original_init = config_class.__init__

    if "get_loop_factory" in vars(config_class) and hasattr(module, "LOOP_FACTORIES"):
        builtin_names: Any = module.LOOP_FACTORIES
        original = config_class.get_loop_factory

        def get_loop_factory(self: Any) -> Callable[[], asyncio.AbstractEventLoop] | None:
            choice = self.loop
            if not active():
                return original(self)  # type: ignore[no-any-return]
            _uvicorn_note(choice, builtin_names)
            if choice == "none":  # asyncio's default, which is pyasync_c's
                return original(self)  # type: ignore[no-any-return]
            if choice in builtin_names:  # auto, asyncio, uvloop...
                return new_event_loop
            return original(self)  # type: ignore[no-any-return]

        config_class.get_loop_factory = get_loop_factory
    elif "setup_event_loop" in vars(config_class) and hasattr(module, "LOOP_SETUPS"):
        # uvicorn < 0.36: setup_event_loop() installs a policy, then asyncio.run().
        builtin_names = module.LOOP_SETUPS
        original_setup = config_class.setup_event_loop

        def setup_event_loop(self: Any) -> None:
            if not active():
                return original_setup(self)  # type: ignore[no-any-return]
            _uvicorn_note(self.loop, builtin_names)
            if self.loop not in builtin_names:
                original_setup(self)
            # else: keep pyasync_c's policy

        config_class.setup_event_loop = setup_event_loop
    else:
        raise RuntimeError("unknown uvicorn.config.Config loop API")

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        if not active():
            return
        # Said here, in the process that reads the options (with --workers
        # the loop is built in the workers, which then stay quiet).
        _uvicorn_note(self.loop, builtin_names)

    __init__.__wrapped__ = original_init  # type: ignore[attr-defined]
    config_class.__init__ = __init__


def _patch_hypercorn_run(module: types.ModuleType) -> None:
    original = module._run

    def _run(*args: Any, loop_factory: Any = None, **kwargs: Any) -> Any:
        if active() and loop_factory is not None and not is_ours(loop_factory):
            if (getattr(loop_factory, "__module__", None) or "").startswith("uvloop"):
                _hypercorn_uvloop_note()
                loop_factory = new_event_loop
            else:
                note("hypercorn-loop", f"hypercorn's loop factory {_describe(loop_factory)} is "
                     "used as given: not pyasync_c's loop (pass --worker-class asyncio for it)")
        return original(*args, loop_factory=loop_factory, **kwargs)

    module._run = _run  # type: ignore[attr-defined]


def _hypercorn_uvloop_note() -> None:
    note("hypercorn-loop", "hypercorn --worker-class uvloop: running on pyasync_c's "
         "loop instead " + _UVLOOP_HINT.format("uvloop"))


def _patch_hypercorn_main_run(module: types.ModuleType) -> None:
    original = module.run

    def run(config: Any, *args: Any, **kwargs: Any) -> Any:
        worker_class = getattr(config, "worker_class", None)
        if active() and worker_class == "uvloop":
            _hypercorn_uvloop_note()  # before the workers start
        elif active() and worker_class == "trio":
            note("hypercorn-loop", "hypercorn --worker-class trio runs on trio, not asyncio: "
                 "pyasync_c is not used (pass --worker-class asyncio for it)")
        return original(config, *args, **kwargs)

    module.run = run  # type: ignore[attr-defined]


def anyio_options(options: dict[str, Any] | None) -> dict[str, Any]:
    """anyio asyncio-backend options with uvloop replaced by pyasync_c's loop."""
    options = dict(options or {})
    factory = options.get("loop_factory")
    if factory is None:
        if options.pop("use_uvloop", False):
            note("anyio-loop", "anyio use_uvloop=True: running on pyasync_c's loop instead "
                 + _UVLOOP_HINT.format("uvloop"))
        options["loop_factory"] = new_event_loop
    elif not is_ours(factory):
        note("anyio-loop", f"anyio loop_factory={_describe(factory)} is used as given: "
             "not pyasync_c's loop (pass loop_factory=pyasync_c.new_event_loop for it)")
    return options


def _patch_anyio_asyncio(module: types.ModuleType) -> None:
    backend = module.AsyncIOBackend
    run = vars(backend)["run"].__func__
    create_test_runner = vars(backend)["create_test_runner"].__func__

    def patched_run(cls: Any, func: Any, args: Any, kwargs: Any, options: dict[str, Any]) -> Any:
        if active():
            options = anyio_options(options)
        return run(cls, func, args, kwargs, options)

    def patched_create_test_runner(cls: Any, options: dict[str, Any]) -> Any:
        if active():
            options = anyio_options(options)
        return create_test_runner(cls, options)

    backend.run = classmethod(patched_run)
    backend.create_test_runner = classmethod(patched_create_test_runner)


def _patch_aiohttp_worker(module: types.ModuleType) -> None:
    uvloop_worker = module.GunicornUVLoopWebWorker
    base = module.GunicornWebWorker
    original_init = uvloop_worker.__init__
    original_init_process = uvloop_worker.init_process

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        if active():  # in gunicorn's master, before it forks the workers
            note("aiohttp-worker", "aiohttp.GunicornUVLoopWebWorker: running on pyasync_c's loop "
                 "instead " + _UVLOOP_HINT.format("uvloop"))

    def init_process(self: Any) -> None:
        if not active():
            return original_init_process(self)  # type: ignore[no-any-return]
        base.init_process(self)  # without installing uvloop's policy

    uvloop_worker.__init__ = __init__
    uvloop_worker.init_process = init_process


# --------------------------------------------------------------------------
# multiprocessing "spawn" children: set up as the parent
# --------------------------------------------------------------------------

def _patch_spawn() -> Callable[[types.ModuleType], None]:
    def patch(module: types.ModuleType) -> None:
        original = module.get_command_line

        def get_command_line(**kwds: Any) -> list[str]:
            command = list(original(**kwds))
            if active() and _installed.get("children") and "-c" in command:
                index = command.index("-c") + 1
                command[index] = child_prelude(_installed["primitives"]) + command[index]
            return command

        module.get_command_line = get_command_line  # type: ignore[attr-defined]
    return patch


def child_prelude(primitives: bool) -> str:
    """Python code run first in a spawned child: import pyasync_c from where
    the parent did and set it up the same way."""
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return (f"import sys; sys.path.insert(0, {package_parent!r}); "
            "import pyasync_c._runner as _pyasync_c_runner; "
            f"sys.path.remove({package_parent!r}); "
            f"_pyasync_c_runner.activate(primitives={primitives!r}); "
            "del _pyasync_c_runner; ")


_installed: dict[str, Any] = {}


def active() -> bool:
    """Whether the hooks act (the patches stay in place once made)."""
    return bool(_installed.get("hooks"))


def uninstall_hooks() -> None:
    """Make the patches pass everything through unchanged again."""
    _installed.clear()


def install_hooks(*, primitives: bool = True, children: bool = True) -> None:
    """Adapt uvicorn, hypercorn and anyio (now or when imported); with
    children=True, multiprocessing's spawned children are set up the same way."""
    when_imported("uvicorn.config", _patch_uvicorn_config)
    when_imported("hypercorn.asyncio.run", _patch_hypercorn_run)
    when_imported("hypercorn.run", _patch_hypercorn_main_run)
    when_imported("anyio._backends._asyncio", _patch_anyio_asyncio)
    when_imported("aiohttp.worker", _patch_aiohttp_worker)
    if children:
        when_imported("multiprocessing.spawn", _patch_spawn())
    _installed.update(hooks=True, primitives=primitives, children=children)


# --------------------------------------------------------------------------
# status()
# --------------------------------------------------------------------------

def _name(obj: Any) -> str:
    cls = obj if isinstance(obj, type) else type(obj)
    if not isinstance(obj, type) and callable(obj) and hasattr(obj, "__qualname__"):
        return f"{obj.__module__}.{obj.__qualname__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def _default_loop_class() -> str:
    """The class asyncio.new_event_loop() (and asyncio.run()) build here."""
    loop = asyncio.new_event_loop()
    try:
        return _name(type(loop))
    finally:
        loop.close()


def status() -> dict[str, Any]:
    """Which loop and primitives this process runs on.

    ``running_loop``: the class of the loop running in this thread (None
    outside a loop); ``default_loop``: the class asyncio.run() and
    asyncio.new_event_loop() create; ``on_pyasync_c``: whether the running
    loop (else the default one) is pyasync_c's; ``primitives``: where
    asyncio.Lock, Queue, gather... come from; ``frameworks``: whether the
    framework hooks of python -m pyasync_c (or the pytest plugin) are active.
    """
    try:
        running: str | None = _name(type(asyncio.get_running_loop()))
    except RuntimeError:
        running = None
    default = _default_loop_class()
    primitives = {name: _name(getattr(asyncio, name)) for name in PRIMITIVE_NAMES}
    return {
        "pyasync_c": __version__,
        "libuv": libuv_version,
        "python": platform.python_version(),
        "pid": os.getpid(),
        "running_loop": running,
        "default_loop": default,
        "on_pyasync_c": (running or default).startswith("pyasync_c."),
        "primitives": primitives,
        "c_primitives": [name for name, where in primitives.items()
                         if where.startswith("pyasync_c.")],
        "frameworks": bool(_installed.get("hooks")),
    }


def _group(names: Iterator[str] | list[str]) -> str:
    return ", ".join(names) or "none"


def format_status(info: dict[str, Any]) -> str:
    """The status as a few lines of text (python -m pyasync_c --check)."""
    c_names = info["c_primitives"]
    stdlib = [name for name in info["primitives"] if name not in c_names]
    lines = [
        f"pyasync_c {info['pyasync_c']} (libuv {info['libuv']}), Python {info['python']}, "
        f"pid {info['pid']}",
        f"running loop: {info['running_loop'] or 'none in this thread'}",
        f"asyncio.run()/new_event_loop() create: {info['default_loop']}",
        f"C primitives: {_group(c_names)}; asyncio's own: {_group(stdlib)}",
        f"framework hooks (uvicorn, hypercorn, anyio): {'on' if info['frameworks'] else 'off'}",
        f"on pyasync_c: {'yes' if info['on_pyasync_c'] else 'NO'}",
    ]
    return "\n".join(lines)
