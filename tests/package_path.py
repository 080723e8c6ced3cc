"""Where the pyasync_c under test was imported from, for tests that start
Python subprocesses: they put this directory on the child's PYTHONPATH, so a
child imports the same build as the test process (the in-place build, or
`make asan`'s build/asan), not whatever the source tree holds."""
from __future__ import annotations

import os

import pyasync_c

PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(pyasync_c.__file__)))
