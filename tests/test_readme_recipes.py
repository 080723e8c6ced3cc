"""The README's recipes, run as written.

Each recipe in README.md is a fenced code block preceded by an HTML comment
``<!-- recipe: NAME -->``. Python blocks whose first line is ``# FILE.py`` are
written to that file in a temporary directory; shell blocks are one command a
line, ``# comment`` after it. The commands run in subprocesses with timeouts:
servers on a free loopback port (the README's 8000/8080 replaced, ``-w 4`` /
``--workers 4`` reduced to 2 for a 2-core machine), each answer checked
against the JSON the ``curl`` line's comment shows, i.e. which loop served it.

The Docker recipe's structure is always checked; its equivalent without
docker (``make wheel`` in a copy of the tree, the wheel alone in a fresh venv
without system site-packages, no libuv in ``ldd``, the image's CMD) runs with
PYASYNC_C_TEST_WHEEL=1, like tests/test_packaging.py's wheel builds.
"""
from __future__ import annotations

import glob
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from integration_util import free_port
from test_frameworks import NOTE, PYASYNC_C_LOOP, env_for, get, stop_and_read, wait_until

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
RECIPE = re.compile(r"^<!-- recipe: ([\w-]+) -->\n```(\w+)\n(.*?)^```$", re.M | re.S)
README_PORTS = re.compile(r"\b(8000|8080)\b")
WHEEL_TESTS = os.environ.get("PYASYNC_C_TEST_WHEEL") == "1"


def recipes() -> dict[str, tuple[str, str]]:
    """name -> (language, code) for every recipe block of the README."""
    found: dict[str, tuple[str, str]] = {}
    for name, language, code in RECIPE.findall(README.read_text()):
        assert name not in found, f"recipe {name!r} appears twice"
        found[name] = (language, code)
    return found


RECIPES = recipes()


def recipe(name: str, language: str) -> str:
    assert name in RECIPES, f"README.md has no recipe {name!r}"
    assert RECIPES[name][0] == language, RECIPES[name]
    return RECIPES[name][1]


def write_file(workdir: Path, name: str, port: int | None = None) -> Path:
    """Write a Python recipe to the file its first line names."""
    code = recipe(name, "python")
    first = code.splitlines()[0]
    match = re.fullmatch(r"# ([\w.]+\.py)", first)
    assert match, f"recipe {name!r} does not start with '# FILE.py': {first!r}"
    if port is not None:
        code = README_PORTS.sub(str(port), code)
    path = workdir / match.group(1)
    path.write_text(code)
    return path


def commands(name: str) -> list[tuple[str, str]]:
    """(command, comment) for each line of a shell recipe."""
    lines = []
    for line in recipe(name, "sh").splitlines():
        if line.strip():
            command, _, comment = line.partition("  #")
            lines.append((command.strip(), comment.strip().lstrip("#").strip()))
    return lines


def pytest_plugin_registered() -> bool:
    return any(ep.value == "pyasync_c.pytest_plugin"
               for ep in importlib.metadata.entry_points(group="pytest11"))


def argv(command: str, port: int | None = None) -> list[str]:
    """The README command as this test runs it: this interpreter, the free
    port, at most 2 workers; pytest with the plugin loaded when pyasync_c is
    not installed (the README says to add -p pyasync_c.pytest_plugin then)."""
    if port is not None:
        command = README_PORTS.sub(str(port), command)
    words = shlex.split(command)
    for i, word in enumerate(words[:-1]):
        if word in ("-w", "--workers") and int(words[i + 1]) > 2:
            words[i + 1] = "2"
    program, rest = words[0], words[1:]
    if program == "python":
        return [sys.executable, *rest]
    assert program in ("gunicorn", "uvicorn", "pytest"), command
    extra = []
    if program == "pytest":
        extra = ["-p", "no:cacheprovider"]
        if not pytest_plugin_registered():
            extra += ["-p", "pyasync_c.pytest_plugin"]
    return [sys.executable, "-m", program, *extra, *rest]


def expected_reply(name: str) -> dict[str, Any]:
    (comment,) = [comment for command, comment in commands(name) if command.startswith("curl ")]
    return json.loads(comment)  # type: ignore[no-any-return]


def serve_and_check(workdir: Path, app_recipe: str, run_recipe: str, command: str) -> None:
    """Start one server command of a recipe, check its answers, stop it."""
    port = free_port()
    write_file(workdir, app_recipe, port)
    expected = expected_reply(run_recipe)
    proc = subprocess.Popen(argv(command, port), cwd=workdir, env=env_for(workdir),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        def answers() -> bool:
            try:
                get(port, timeout=2)
                return True
            except Exception:  # noqa: BLE001 - not up yet
                return False
        wait_until(answers, proc, f"an answer from {command!r}", timeout=60)
        replies = [get(port) for _ in range(10)]
        assert all(reply == expected for reply in replies), (command, replies)
        assert expected == {"loop": PYASYNC_C_LOOP}
    finally:
        out = stop_and_read(proc)
        if proc.stdout:
            proc.stdout.close()
    assert "Traceback" not in out, out
    assert NOTE not in out, out  # nothing to say: no uvloop was asked for


def test_every_recipe_is_tested() -> None:
    tested = {"fastapi-app", "fastapi-run", "aiohttp-app", "aiohttp-run", "anyio-app",
              "anyio-run", "anyio-code", "pytest-test", "pytest-run", "pytest-hook", "docker"}
    assert set(RECIPES) == tested


# --------------------------------------------------------------------------
# uvicorn / FastAPI, aiohttp
# --------------------------------------------------------------------------

def server_commands(run_recipe: str) -> list[str]:
    return [command for command, _ in commands(run_recipe) if not command.startswith("curl ")]


@pytest.mark.parametrize("command", server_commands("fastapi-run"))
def test_fastapi_recipe(tmp_path: Path, command: str) -> None:
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    if command.startswith("gunicorn"):
        pytest.importorskip("gunicorn")
    serve_and_check(tmp_path, "fastapi-app", "fastapi-run", command)


@pytest.mark.parametrize("command", server_commands("aiohttp-run"))
def test_aiohttp_recipe(tmp_path: Path, command: str) -> None:
    pytest.importorskip("aiohttp")
    if command.startswith("gunicorn"):
        pytest.importorskip("gunicorn")
    serve_and_check(tmp_path, "aiohttp-app", "aiohttp-run", command)


def test_server_recipes_cover_the_documented_ways() -> None:
    fastapi = " | ".join(server_commands("fastapi-run"))
    assert "-m uvicorn" in fastapi and "--workers" in fastapi
    assert "-k pyasync_c.workers.UvicornWorker" in fastapi
    aiohttp = " | ".join(server_commands("aiohttp-run"))
    assert "python -m pyasync_c server.py" in aiohttp and "-m aiohttp.web" in aiohttp
    assert "-k pyasync_c.workers.AiohttpWorker" in aiohttp


# --------------------------------------------------------------------------
# anyio
# --------------------------------------------------------------------------

def run_python(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=env_for(cwd), capture_output=True, text=True,
                          timeout=120)


def test_anyio_recipe(tmp_path: Path) -> None:
    pytest.importorskip("anyio")
    pytest.importorskip("uvloop")  # the recipe's script asks for uvloop
    write_file(tmp_path, "anyio-app")
    plain = run_python([sys.executable, "main.py"], tmp_path)
    assert plain.returncode == 0 and plain.stdout.strip() == "uvloop", plain.stderr
    ((command, comment),) = commands("anyio-run")
    printed = re.match(r"prints (\S+)", comment)
    assert printed, comment
    proc = run_python(argv(command), tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == printed.group(1) == "pyasync_c.loop"
    notes = [line for line in proc.stderr.splitlines() if line.startswith(NOTE)]
    assert len(notes) == 1 and "use_uvloop" in notes[0], proc.stderr


def test_anyio_in_code_recipe(tmp_path: Path) -> None:
    pytest.importorskip("anyio")
    proc = run_python([sys.executable, "-c", recipe("anyio-code", "python")], tmp_path)
    assert proc.returncode == 0, proc.stderr


# --------------------------------------------------------------------------
# pytest-asyncio
# --------------------------------------------------------------------------

def run_pytest(workdir: Path, command: str) -> subprocess.CompletedProcess[str]:
    env = env_for(workdir)
    env.pop("PYTEST_ADDOPTS", None)
    return subprocess.run(argv(command), cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=120)


def test_pytest_recipe(tmp_path: Path) -> None:
    pytest.importorskip("pytest_asyncio")
    write_file(tmp_path, "pytest-test")
    ((command, _),) = commands("pytest-run")
    assert "--pyasync-c" in command
    proc = run_pytest(tmp_path, command)
    assert proc.returncode == 0 and "1 passed" in proc.stdout, proc.stdout + proc.stderr
    # the sample test can fail: without the option it runs on asyncio's loop
    proc = run_pytest(tmp_path, command.replace("--pyasync-c", ""))
    assert proc.returncode == 1 and "1 failed" in proc.stdout, proc.stdout + proc.stderr


def test_pytest_ini_recipe(tmp_path: Path) -> None:
    """The comment's alternative: ``pyasync_c = true`` in pytest.ini."""
    pytest.importorskip("pytest_asyncio")
    ((command, comment),) = commands("pytest-run")
    assert "`pyasync_c = true` in the [pytest] section of pytest.ini" in comment
    write_file(tmp_path, "pytest-test")
    (tmp_path / "pytest.ini").write_text("[pytest]\npyasync_c = true\n")
    proc = run_pytest(tmp_path, command.replace("--pyasync-c", ""))
    assert proc.returncode == 0 and "1 passed" in proc.stdout, proc.stdout + proc.stderr


def test_pytest_hook_recipe(tmp_path: Path) -> None:
    pytest_asyncio = pytest.importorskip("pytest_asyncio")
    version = tuple(int(part) for part in pytest_asyncio.__version__.split(".")[:2])
    if version < (1, 4):
        pytest.skip("pytest_asyncio_loop_factories needs pytest-asyncio >= 1.4")
    write_file(tmp_path, "pytest-test")
    write_file(tmp_path, "pytest-hook")
    proc = run_pytest(tmp_path, "pytest test_app.py")
    assert proc.returncode == 0 and "1 passed" in proc.stdout, proc.stdout + proc.stderr


# --------------------------------------------------------------------------
# Docker
# --------------------------------------------------------------------------

def dockerfile_stages() -> list[list[str]]:
    """The Dockerfile recipe's instructions (continuation lines joined, comments
    dropped), split into stages."""
    text = re.sub(r"\\\n\s*", " ", recipe("docker", "dockerfile"))
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("FROM "):
            stages.append([])
        stages[-1].append(line)
    return stages


def test_dockerfile_recipe_shape() -> None:
    build, run = dockerfile_stages()
    base = build[0].split()[1]
    assert build[0] == f"FROM {base} AS build" and run[0] == f"FROM {base}", (build[0], run[0])
    assert re.fullmatch(r"python:3\.\d+-slim-\w+", base)  # same Python in both stages
    assert "WORKDIR /src" in build and "COPY . ." in build and "RUN make wheel" in build
    installs = next(line for line in build if line.startswith("RUN apt-get"))
    for package in ("make", "gcc", "libc6-dev", "pkg-config", "libuv1-dev", "dpkg-dev"):
        assert f" {package}" in installs, package
    # the runtime stage takes the wheel only, and needs nothing to build
    copies = [line for line in run if line.startswith("COPY")]
    assert copies == ["COPY --from=build /src/dist/*.whl /tmp/"], copies
    assert not any("apt-get" in line for line in run)
    assert run[-1] == 'CMD ["python", "-m", "pyasync_c", "--check"]'


@pytest.mark.skipif(not WHEEL_TESTS, reason="set PYASYNC_C_TEST_WHEEL=1 (builds the wheel)")
def test_docker_recipe_without_docker(tmp_path: Path) -> None:
    """What the two stages do, here: `make wheel` in a copy of the checkout
    (COPY . .), then the wheel alone in a fresh venv (no system
    site-packages, so nothing of this tree), and the image's CMD."""
    src = tmp_path / "src"
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    for path in tracked:
        if (ROOT / path).is_file():
            (src / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / path, src / path)
    # Reuse this tree's -fPIC libuv (libuv_pic.py's cache), if built, to save
    # the download and cmake; it is the same file the copy would build.
    for archive in glob.glob(str(ROOT / "build" / "libuv-pic" / "*" / "libuv_a.a")):
        target = src / Path(archive).relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(archive, target)
    make = subprocess.run(["make", "wheel", f"PYTHON={sys.executable}"], cwd=src,
                          capture_output=True, text=True, timeout=1200)
    assert make.returncode == 0, make.stdout[-5000:] + make.stderr[-5000:]
    (wheel,) = glob.glob(str(src / "dist" / "*.whl"))

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = str(venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PYASYNC_C_"))}
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-index", "--no-cache-dir", wheel],
                   check=True, timeout=300, env=env)
    where = subprocess.run([python, "-c", "import pyasync_c._loop as m; print(m.__file__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    loop_so = where.stdout.strip()
    assert where.returncode == 0 and loop_so.startswith(str(venv)), where.stdout + where.stderr
    ldd = subprocess.run(["ldd", loop_so], capture_output=True, text=True, check=True).stdout
    assert "libuv" not in ldd, ldd

    cmd = json.loads(dockerfile_stages()[1][-1].removeprefix("CMD "))
    assert cmd[0] == "python"
    proc = subprocess.run([python, *cmd[1:]], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "on pyasync_c: yes" in proc.stdout  # what the README says `docker run` prints
    assert "on pyasync_c: yes" in README.read_text().split("<!-- recipe: docker -->")[1]


# --------------------------------------------------------------------------
# "Coming from uvloop": the table names what exists
# --------------------------------------------------------------------------

def migration_rows() -> list[tuple[str, str]]:
    section = README.read_text().split("## Coming from uvloop", 1)[1].split("\n## ", 1)[0]
    rows = [line.split(" | ") for line in section.splitlines()
            if line.startswith("| ") and not line.startswith("| uvloop |")]
    return [(row[0].removeprefix("| "), row[1]) for row in rows]


def dotted(text: str, package: str) -> set[str]:
    """The names used as ``package.NAME`` (or ``package.sub.NAME``) in text."""
    return {name.rstrip(".") for name in re.findall(rf"(?<![\w.]){package}\.([\w.]+)", text)}


def test_migration_table_covers_uvloops_public_names() -> None:
    uvloop = pytest.importorskip("uvloop")
    named = set().union(*(dotted(left, "uvloop") for left, _ in migration_rows()))
    public = {*uvloop.__all__, "Loop"}
    assert public <= named, f"not in the table: {public - named}"
    for name in named:
        assert hasattr(uvloop, name), name


def test_migration_table_names_exist_in_pyasync_c() -> None:
    import pyasync_c
    import pyasync_c.workers
    named = set().union(*(dotted(right, "pyasync_c") for _, right in migration_rows()))
    assert {"run", "new_event_loop", "install", "EventLoopPolicy", "Loop",
            "workers.UvicornWorker", "workers.AiohttpWorker"} <= named, named
    for name in named:
        target: Any = pyasync_c
        for part in name.split("."):
            target = getattr(target, part)
