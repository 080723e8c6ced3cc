#!/usr/bin/env bash
# Count the instructions one benchmark cell executes, under callgrind.
#
#   benchmarks/profile.sh WORKLOAD LOOP [PRIMS] [N]
#     WORKLOAD  a name from `python3 benchmarks/run.py --list`
#     LOOP      stdlib | uvloop | pyasync_c
#     PRIMS     stdlib (default) | c
#     N         size (default: the workload's full size / 100)
#
# Runs the cell twice, at N and at 2N (no warm-up, one repeat, fixed hash
# seed), and prints:
#   total Ir at N         everything, interpreter start-up and imports included
#   Ir per op (marginal)  (Ir(2N) - Ir(N)) / (ops(2N) - ops(N)): the cost of one
#                         operation with start-up and set-up cancelled out.
#                         This is the figure to compare before/after a change.
# The callgrind output of the N run is kept (path printed) for
# callgrind_annotate / kcachegrind. Set PROFILE_MARGINAL=0 to skip the 2N run.
# Workloads that wait on real time (timers, sleep_concurrent, executor,
# threadsafe) vary more from run to run: valgrind slows the program, not the
# clock, and thread interleaving is not deterministic.
set -euo pipefail

if [[ $# -lt 2 || $# -gt 4 ]]; then
    sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 2
fi
workload=$1 loop=$2 prims=${3:-stdlib} n=${4:-}
here=$(cd "$(dirname "$0")" && pwd)
# the real interpreter, not a wrapper script (pyenv shims...) valgrind would stop at
python=$("${PYTHON:-python3}" -c 'import sys; print(sys.executable)')

if ! command -v valgrind >/dev/null; then
    echo "profile.sh: valgrind not found (Debian/Ubuntu: apt-get install -y valgrind)" >&2
    exit 1
fi
if [[ -z $n ]]; then
    n=$(cd "$here" && "$python" -c "
import sys
from harness import load_registry
r = load_registry()
if sys.argv[1] not in r: sys.exit('unknown workload %s; known: %s' % (sys.argv[1], ', '.join(r)))
print(max(1, r[sys.argv[1]].n // 100))" "$workload")
fi

outdir=${PROFILE_OUT:-$here/results/callgrind}
mkdir -p "$outdir"

# run_one SIZE -> prints "IR OPS"; keeps the callgrind file
run_one() {
    local size=$1 out="$outdir/callgrind.$workload.$loop.$prims.$1.out" json
    json=$(PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file="$out" -q \
        "$python" "$here/child.py" "$workload" --loop "$loop" --prims "$prims" \
        --n "$size" --repeat 1 --warmup 0 | tail -n 1)
    "$python" -c '
import json, sys
d = json.loads(sys.argv[1])
if d["status"] != "ok":
    sys.exit("profile.sh: cell %s: %s" % (d["status"], d.get("reason")))
ir = next(int(l.split()[1]) for l in open(sys.argv[2]) if l.startswith(("summary:", "totals:")))
print(ir, d["ops"][0])' "$json" "$out"
}

read -r ir1 ops1 < <(run_one "$n")
echo "$workload loop=$loop prims=$prims n=$n ops=$ops1"
printf 'total Ir at N         %d\n' "$ir1"
echo "callgrind output      $outdir/callgrind.$workload.$loop.$prims.$n.out"
if [[ ${PROFILE_MARGINAL:-1} != 0 ]]; then
    read -r ir2 ops2 < <(run_one $((2 * n)))
    if (( ops2 > ops1 )); then
        printf 'Ir per op (marginal)  %d\n' $(( (ir2 - ir1) / (ops2 - ops1) ))
    fi
fi
