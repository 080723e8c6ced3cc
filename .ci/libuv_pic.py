#!/usr/bin/env python3
"""Build a position-independent static libuv for the self-contained wheel.

Debian's libuv1-dev ships a static archive (libuv_a.a), but it is compiled
without -fPIC: a few references to glibc data (environ, stderr, in6addr_any)
cannot be linked into a shared object such as pyasync_c/_loop.so.  This
script fetches the Debian *source* package of the installed libuv1-dev
version (same version as the headers we compile against, Debian's patches
applied) with apt's ordinary client, using a private apt state directory and
deb-src entries derived from the system's own configured Debian sources, so
the system's apt configuration is not touched, and builds libuv_a.a with
-fPIC.  Nothing of libuv is kept in this repository.

Prints the archive's path; setup.py takes it from PYASYNC_C_LIBUV_ARCHIVE
(`make wheel` does this).  The result is cached under build/libuv-pic/.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = os.path.join(ROOT, "build", "libuv-pic")


def log(msg: str) -> None:
    print(f"libuv_pic: {msg}", file=sys.stderr)


def run(cmd: list[str], **kw) -> None:
    subprocess.run(cmd, check=True, **kw)


def run_quiet(cmd: list[str]) -> None:
    """Run a build step; its output (compiler warnings...) only if it fails."""
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout)
        sys.exit(f"libuv_pic: {' '.join(cmd)} failed ({proc.returncode})")


def installed_version() -> str:
    try:
        return subprocess.check_output(["dpkg-query", "-W", "-f=${Version}", "libuv1-dev"],
                                       text=True, stderr=subprocess.DEVNULL).strip()
    except (OSError, subprocess.CalledProcessError):
        sys.exit("libuv_pic: libuv1-dev (a Debian package) is not installed; on other systems "
                 "point PYASYNC_C_LIBUV_ARCHIVE at a libuv.a built with -fPIC")


def codename() -> str:
    with open("/etc/os-release") as f:
        for line in f:
            if line.startswith("VERSION_CODENAME="):
                return line.split("=", 1)[1].strip().strip('"')
    sys.exit("libuv_pic: no VERSION_CODENAME in /etc/os-release")


def source_entries(release: str) -> list[str]:
    """deb-src lines for the configured Debian archives of this release
    (the same URIs and suites as the system's `deb` entries)."""
    entries: list[tuple[str, str, str, str]] = []   # (options, uri, suite, components)
    for path in glob.glob("/etc/apt/sources.list.d/*.sources"):
        with open(path) as f:
            for stanza in re.split(r"\n\s*\n", f.read()):
                fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", stanza, re.M))
                if "deb" not in fields.get("Types", "").split():
                    continue
                keyring = fields.get("Signed-By", "")
                options = f"[signed-by={keyring}] " if keyring.startswith("/") else ""
                for uri in fields.get("URIs", "").split():
                    for suite in fields.get("Suites", "").split():
                        entries.append((options, uri, suite, fields.get("Components", "main")))
    for path in ["/etc/apt/sources.list", *glob.glob("/etc/apt/sources.list.d/*.list")]:
        if not os.path.exists(path):
            continue
        with open(path) as f:
            for line in f:
                line = line.split("#", 1)[0]
                bracket = re.search(r"\[[^]]*\]", line)
                options = bracket.group(0) + " " if bracket else ""
                parts = re.sub(r"\[[^]]*\]", "", line).split()
                if len(parts) >= 3 and parts[0] == "deb":
                    entries.append((options, parts[1], parts[2], " ".join(parts[3:]) or "main"))
    lines = [f"deb-src {options}{uri} {suite} {comps}\n" for options, uri, suite, comps in entries
             if suite == release or suite.startswith(release + "-")]
    if not lines:
        sys.exit(f"libuv_pic: no configured apt source for {release!r} to derive deb-src from")
    return sorted(set(lines))


def fetch_source(version: str, dest: str) -> str:
    for tool, package in (("apt-get", "apt"), ("dpkg-source", "dpkg-dev")):
        if shutil.which(tool) is None:
            sys.exit(f"libuv_pic: {tool} is needed (Debian: apt-get install {package})")
    apt = os.path.join(WORK, "apt")
    for sub in ("lists/partial", "archives/partial", "sources.list.d"):
        os.makedirs(os.path.join(apt, sub), exist_ok=True)
    with open(os.path.join(apt, "sources.list"), "w") as f:
        f.writelines(source_entries(codename()))
    opts = ["-o", f"Dir::Etc::SourceList={apt}/sources.list",
            "-o", f"Dir::Etc::SourceParts={apt}/sources.list.d",
            "-o", f"Dir::State::Lists={apt}/lists",
            "-o", f"Dir::Cache::Archives={apt}/archives",
            "-o", "Debug::NoLocking=1", "-qq"]
    run(["apt-get", *opts, "update"])
    os.makedirs(dest, exist_ok=True)
    run(["apt-get", *opts, "source", "--download-only", f"libuv1={version}"], cwd=dest,
        stderr=subprocess.DEVNULL)
    dsc = glob.glob(os.path.join(dest, "libuv1_*.dsc"))
    if not dsc:
        sys.exit("libuv_pic: apt-get source left no .dsc")
    tree = os.path.join(dest, "libuv")
    shutil.rmtree(tree, ignore_errors=True)
    run(["dpkg-source", "--no-check", "-x", dsc[0], tree], stdout=subprocess.DEVNULL)
    return tree


def build(tree: str, out: str) -> None:
    cmake = shutil.which("cmake")
    if cmake is None:
        log("cmake not found: installing it with pip")
        run([sys.executable, "-m", "pip", "install", "-q", "cmake"])
        cmake = shutil.which("cmake") or os.path.join(os.path.dirname(sys.executable), "cmake")
    build_dir = os.path.join(os.path.dirname(out), "cmake")
    shutil.rmtree(build_dir, ignore_errors=True)
    run_quiet([cmake, "-Wno-dev", "-S", tree, "-B", build_dir, "-DCMAKE_BUILD_TYPE=Release",
         "-DCMAKE_POSITION_INDEPENDENT_CODE=ON", "-DLIBUV_BUILD_TESTS=OFF",
         "-DLIBUV_BUILD_BENCH=OFF",
         # libuv 1.44 declares cmake_minimum_required(3.4); cmake >= 4 needs this
         "-DCMAKE_POLICY_VERSION_MINIMUM=3.5"])
    run_quiet([cmake, "--build", build_dir, "--target", "uv_a", "-j", str(os.cpu_count() or 1)])
    shutil.copy(os.path.join(build_dir, "libuv_a.a"), out)


def main() -> None:
    version = installed_version()
    out_dir = os.path.join(WORK, re.sub(r"[^A-Za-z0-9.+-]", "_", version))
    out = os.path.join(out_dir, "libuv_a.a")
    if not os.path.exists(out):
        log(f"building libuv {version} with -fPIC from Debian's source package")
        tree = fetch_source(version, os.path.join(out_dir, "src"))
        build(tree, out)
    print(out)


if __name__ == "__main__":
    main()
