"""The type stubs, checked with mypy (skipped when mypy is not installed).

- tests/typing_samples/sample_ok.py uses every public name of pyasync_c as a
  user program would: `mypy --strict` must accept it, and it must also run.
- tests/typing_samples/sample_bad.py has mistakes the generic stubs must catch
  (`Queue[int]().put("x")`...): mypy must report exactly the lines marked `# E:`.

mypy runs in a subprocess with --follow-imports=silent, as for an installed
package: only errors in the sample count.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLES = os.path.join(ROOT, "tests", "typing_samples")

pytest.importorskip("mypy", reason="mypy is not installed")


def mypy(sample: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, MYPYPATH=ROOT)
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent", "--no-incremental",
         "--cache-dir", os.devnull, "--no-color-output", "--no-error-summary",
         os.path.join(SAMPLES, sample)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_strict_accepts_a_program_using_every_public_name() -> None:
    import pyasync_c
    source = open(os.path.join(SAMPLES, "sample_ok.py")).read()
    unused = [name for name in pyasync_c.__all__ if not re.search(rf"\b{name}\b", source)]
    assert unused == [], f"sample_ok.py should use every public name: {unused}"
    proc = mypy("sample_ok.py")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_strict_rejects_wrongly_typed_uses() -> None:
    path = os.path.join(SAMPLES, "sample_bad.py")
    expected = {i for i, line in enumerate(open(path), 1) if "# E:" in line}
    proc = mypy("sample_bad.py")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    reported = {int(m.group(1)) for m in re.finditer(r"sample_bad\.py:(\d+): error:", proc.stdout)}
    assert reported == expected, proc.stdout


def test_the_typed_sample_runs() -> None:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, os.path.join(SAMPLES, "sample_ok.py")], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("(46, 'done')"), proc.stdout
