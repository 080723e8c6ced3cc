"""Run CPython's own gather tests (test.test_asyncio.test_tasks, ``-k gather -k Gather``)
against pyasync_c's native gather, by patching asyncio.gather first.

    <python> tests/conformance/gather_conformance.py [-v] [--stdlib]

``--stdlib`` runs the same selection without patching (baseline). Known
differences are listed in tests/conformance/xfail_gather.txt.
"""
import asyncio
import asyncio.tasks
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

if "--stdlib" in sys.argv:
    sys.argv.remove("--stdlib")
else:
    from pyasync_c import _primitives
    asyncio.gather = asyncio.tasks.gather = _primitives.gather

from test.test_asyncio import test_tasks  # noqa: E402

unittest.main(module=test_tasks, argv=[sys.argv[0], "-k", "gather", "-k", "Gather", *sys.argv[1:]])
