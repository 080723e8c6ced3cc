"""Build script for pyasync_c's two C extension modules.

- pyasync_c._loop        the libuv event loop (csrc/loop/*.c), links libuv
- pyasync_c._primitives  Semaphore/Lock/Event/Queue/gather (csrc/primitives/*.c), no libuv

libuv is found with pkg-config (Debian: ``apt-get install libuv1-dev pkg-config``).
It is linked statically when a position-independent static archive is
available, so the extension, and a wheel made from it, needs no libuv.so at
run time.  Debian's own libuv_a.a is not built with -fPIC and cannot go into
a shared object: ``make wheel`` builds one from Debian's libuv source package
(.ci/libuv_pic.py) and passes it in PYASYNC_C_LIBUV_ARCHIVE.
Environment knobs:
  PYASYNC_C_LIBUV_ARCHIVE=/path/libuv.a  the static archive to link (-fPIC)
  PYASYNC_C_LIBUV=static  require a static libuv (fail if none can be linked)
  PYASYNC_C_LIBUV=shared  link the system's shared libuv.so
  (unset)                 static when an archive links, else shared (a note says so)
  PYASYNC_C_SANITIZE=1    build with AddressSanitizer + UndefinedBehaviorSanitizer
  PYASYNC_C_DEBUG=1       build with -O0 -g3
"""
import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile

import setuptools
from setuptools import Extension, setup

INSTALL_HINT = ("Debian/Ubuntu: apt-get install libuv1-dev pkg-config; "
                "Fedora: dnf install libuv-devel libuv-static pkgconf")


def pkg_config(package: str, *args: str) -> list[str]:
    if shutil.which("pkg-config") is None:
        sys.exit(f"pyasync_c: pkg-config is required to find libuv ({INSTALL_HINT})")
    try:
        out = subprocess.check_output(["pkg-config", *args, package], text=True)
    except subprocess.CalledProcessError:
        sys.exit(f"pyasync_c: libuv development files not found by pkg-config ({INSTALL_HINT})")
    return out.split()


def links_into_shared_object(archive: str, libraries: list[str]) -> bool:
    """True if the whole archive links into a shared object (it was compiled
    with -fPIC).  Debian's libuv_a.a is not: glibc data references fail."""
    compiler = (sysconfig.get_config_var("CC") or "cc").split()
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [*compiler, "-shared", "-o", os.path.join(tmp, "probe.so"),
               "-Wl,--whole-archive", archive, "-Wl,--no-whole-archive",
               *(f"-l{lib}" for lib in libraries)]
        return subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0


def static_archive(libraries: list[str]) -> tuple[str | None, str]:
    """(path of a linkable static libuv or None, why not)."""
    explicit = os.environ.get("PYASYNC_C_LIBUV_ARCHIVE")
    if explicit:
        if not os.path.isfile(explicit):
            sys.exit(f"pyasync_c: PYASYNC_C_LIBUV_ARCHIVE={explicit}: no such file")
        return explicit, ""
    for folder in pkg_config("libuv", "--variable=libdir"):
        for name in ("libuv_a.a", "libuv.a"):
            path = os.path.join(folder, name)
            if not os.path.isfile(path):
                continue
            if links_into_shared_object(path, libraries):
                return path, ""
            return None, (f"{path} was not compiled with -fPIC (Debian's is not); "
                          "`make wheel` builds one from Debian's source (.ci/libuv_pic.py)")
    return None, "no libuv_a.a/libuv.a next to the shared library"


def uv_flags() -> dict[str, list[str]]:
    mode = os.environ.get("PYASYNC_C_LIBUV", "").strip().lower() or "auto"
    if mode not in ("auto", "static", "shared"):
        sys.exit(f"pyasync_c: PYASYNC_C_LIBUV must be 'static' or 'shared', not {mode!r}")
    cflags = pkg_config("libuv", "--cflags")
    # libuv's own dependencies (pthread, dl, rt) stay dynamic: they are glibc's.
    private = {"uv", "uv_a"}
    static_libs = [f[2:] for f in pkg_config("libuv", "--libs", "--static")
                   if f.startswith("-l") and f[2:] not in private]
    archive, why = static_archive(static_libs) if mode != "shared" else (None, "")
    if mode == "static" and archive is None:
        sys.exit(f"pyasync_c: PYASYNC_C_LIBUV=static but libuv cannot be linked statically: {why}")
    if mode == "auto" and archive is None:
        print(f"pyasync_c: linking the shared libuv (the extension needs libuv.so.1 at run "
              f"time): {why}", file=sys.stderr)
    flags = {"include_dirs": [f[2:] for f in cflags if f.startswith("-I")]}
    if archive is None:
        libs = pkg_config("libuv", "--libs")
        flags["library_dirs"] = [f[2:] for f in libs if f.startswith("-L")]
        flags["libraries"] = [f[2:] for f in libs if f.startswith("-l")]
        return flags
    # The archive's symbols are kept out of our dynamic symbol table, so they
    # never interpose on another libuv loaded in the same process (uvloop...).
    flags["extra_objects"] = [archive]
    flags["libraries"] = static_libs
    flags["extra_link_args"] = ["-Wl,--exclude-libs,ALL"]
    return flags


def accept_spdx_license_on_old_setuptools() -> None:
    """pyproject.toml's ``project.license`` is an SPDX string (PEP 639), which
    setuptools < 77 rejects when ``setup.py`` is run directly (an isolated
    ``pip install``/``pip wheel`` gets setuptools >= 77 from build-system
    requires).  For such direct runs (``setup.py build_ext --inplace``) with an
    older setuptools, read the string as the old ``{text = ...}`` form."""
    major = int(setuptools.__version__.split(".")[0])
    if major >= 77:
        return
    from setuptools.config import pyprojecttoml

    load_file = pyprojecttoml.load_file

    def load_with_license_text(filepath):
        data = load_file(filepath)
        project = data.get("project", {}) if isinstance(data, dict) else {}
        if isinstance(project.get("license"), str):
            project["license"] = {"text": project["license"]}
        return data

    pyprojecttoml.load_file = load_with_license_text


compile_args = ["-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter",
                "-Wno-missing-field-initializers", "-fno-strict-aliasing"]
link_args: list[str] = []
if os.environ.get("PYASYNC_C_DEBUG"):
    compile_args += ["-O0", "-g3"]
else:
    compile_args += ["-O2"]
if os.environ.get("PYASYNC_C_SANITIZE"):
    san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined"]
    compile_args += san + ["-g"]
    link_args += san


def sources(folder: str) -> list[str]:
    return sorted(glob.glob(os.path.join("csrc", folder, "*.c")))


def link_stamp(uv: dict[str, list[str]]) -> str:
    """A file whose mtime changes when the way libuv is linked changes, so
    that build_ext relinks _loop instead of reusing a build/ product made
    the other way (it only compares the mtimes of sources and depends)."""
    tag = sysconfig.get_config_var("EXT_SUFFIX") or sys.implementation.cache_tag
    path = os.path.join("build", f"libuv-link{tag}.txt")
    text = repr(sorted(uv.items())) + "\n"
    try:
        with open(path) as f:
            if f.read() == text:
                return path
    except OSError:
        pass
    os.makedirs("build", exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return path


def loop_extension() -> Extension:
    uv = uv_flags()
    return Extension(
        "pyasync_c._loop",
        sources=sources("loop"),
        depends=glob.glob("csrc/loop/*.h") + uv.get("extra_objects", []) + [link_stamp(uv)],
        extra_compile_args=compile_args,
        extra_link_args=link_args + uv.pop("extra_link_args", []),
        **uv,
    )


ext_modules = [
    loop_extension(),
    Extension(
        "pyasync_c._primitives",
        sources=sources("primitives"),
        depends=glob.glob("csrc/primitives/*.h"),
        extra_compile_args=compile_args,
        extra_link_args=link_args,
    ),
]

accept_spdx_license_on_old_setuptools()
setup(ext_modules=ext_modules)
