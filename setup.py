"""Build script for pyasync_c's two C extension modules.

- pyasync_c._loop        the libuv event loop (csrc/loop/*.c), links the system libuv
- pyasync_c._primitives  Semaphore/Lock/Event/Queue/gather (csrc/primitives/*.c), no libuv

libuv is found with pkg-config (Debian: ``apt-get install libuv1-dev pkg-config``).
Environment knobs:
  PYASYNC_C_SANITIZE=1   build with AddressSanitizer + UndefinedBehaviorSanitizer
  PYASYNC_C_DEBUG=1      build with -O0 -g3
"""
import glob
import os
import shutil
import subprocess
import sys

from setuptools import Extension, setup


def pkg_config(*args: str) -> list[str]:
    if shutil.which("pkg-config") is None:
        sys.exit("pyasync_c: pkg-config is required to find libuv "
                 "(Debian/Ubuntu: apt-get install pkg-config libuv1-dev)")
    try:
        out = subprocess.check_output(["pkg-config", *args, "libuv"], text=True)
    except subprocess.CalledProcessError:
        sys.exit("pyasync_c: libuv development files not found by pkg-config "
                 "(Debian/Ubuntu: apt-get install libuv1-dev; Fedora: dnf install libuv-devel)")
    return out.split()


def uv_flags() -> dict[str, list[str]]:
    cflags = pkg_config("--cflags")
    libs = pkg_config("--libs")
    return {
        "include_dirs": [f[2:] for f in cflags if f.startswith("-I")],
        "library_dirs": [f[2:] for f in libs if f.startswith("-L")],
        "libraries": [f[2:] for f in libs if f.startswith("-l")],
    }


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


ext_modules = [
    Extension(
        "pyasync_c._loop",
        sources=sources("loop"),
        depends=glob.glob("csrc/loop/*.h"),
        extra_compile_args=compile_args,
        extra_link_args=link_args,
        **uv_flags(),
    ),
    Extension(
        "pyasync_c._primitives",
        sources=sources("primitives"),
        depends=glob.glob("csrc/primitives/*.h"),
        extra_compile_args=compile_args,
        extra_link_args=link_args,
    ),
]

setup(ext_modules=ext_modules)
