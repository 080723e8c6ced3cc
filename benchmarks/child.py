"""Run one benchmark cell and print its result as one JSON line on stdout.

    python3 benchmarks/child.py WORKLOAD --loop stdlib|uvloop|pyasync_c
                                         [--prims stdlib|c] [--n N]
                                         [--repeat R] [--warmup W]

run.py starts one of these per (workload, loop, primitives) cell so that
every cell gets a fresh interpreter. Status is "ok", "unavailable" (the loop
or a primitive is not importable: reported as n/a) or "error".
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import LOOP_NAMES, PRIMITIVE_SETS, Unavailable, load_registry, module_origin, run_cell  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    registry = load_registry()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workload", choices=sorted(registry))
    ap.add_argument("--loop", choices=LOOP_NAMES, required=True)
    ap.add_argument("--prims", choices=PRIMITIVE_SETS, default="stdlib")
    ap.add_argument("--n", type=int, help="size (default: the workload's full size)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs at n/10 first")
    args = ap.parse_args(argv)

    wl = registry[args.workload]
    n = args.n if args.n is not None else wl.n
    out: dict[str, Any] = {"workload": wl.name, "loop": args.loop, "prims": args.prims,
                           "n": n, "unit": wl.unit}
    try:
        result = run_cell(wl, args.loop, args.prims, n, args.repeat, args.warmup)
        out.update(result.summary())
    except Unavailable as exc:
        out.update(status="unavailable", reason=str(exc))
    except Exception as exc:  # a failing cell is reported, not fatal to the run
        out.update(status="error", reason=f"{type(exc).__name__}: {exc}",
                   traceback=traceback.format_exc())
    out["origin"] = module_origin(args.loop, args.prims)
    print(json.dumps(out), flush=True)
    return 0 if out["status"] != "error" else 1


if __name__ == "__main__":
    sys.exit(main())
