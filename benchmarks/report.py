"""Turn cell results into ratio tables (text/markdown) and a PNG chart.

A cell result is the dict printed by child.py (or made by net/runner.py),
with "status" one of ok, unavailable (shown as n/a) or error/crash/timeout
(shown as "err"). Each table is a Group: which workloads, which cells as
columns, which figure of a cell it shows and which ratios of columns.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from harness import Workload

Cell = dict[str, Any]
Key = tuple[str, str, str]  # (workload, loop, prims)

# Columns of each group: (label, loop, prims)
LOOP_COLUMNS: list[tuple[str, str, str]] = [
    ("stdlib", "stdlib", "stdlib"),
    ("uvloop", "uvloop", "stdlib"),
    ("pyasync_c", "pyasync_c", "stdlib"),
    ("pyasync_c + install()", "pyasync_c", "installed"),
]
PRIM_COLUMNS: list[tuple[str, str, str]] = [
    ("stdlib loop · asyncio", "stdlib", "stdlib"),
    ("stdlib loop · C", "stdlib", "c"),
    ("pyasync_c loop · asyncio", "pyasync_c", "stdlib"),
    ("pyasync_c loop · C", "pyasync_c", "c"),
    ("uvloop · asyncio", "uvloop", "stdlib"),
    ("uvloop · C", "uvloop", "c"),
]
NET_COLUMNS: list[tuple[str, str, str]] = [
    ("stdlib", "stdlib", "-"),
    ("uvloop", "uvloop", "-"),
    ("pyasync_c", "pyasync_c", "-"),
    ("raw libuv", "libuv", "-"),
]
# Ratios of each group: (label, numerator column index, denominator column index)
LOOP_RATIOS = [("pyasync_c/uvloop", 2, 1), ("installed/uvloop", 3, 1), ("pyasync_c/stdlib", 2, 0),
               ("uvloop/stdlib", 1, 0)]
PRIM_RATIOS = [("C/asyncio on stdlib loop", 1, 0), ("C/asyncio on pyasync_c loop", 3, 2),
               ("C/asyncio on uvloop", 5, 4)]
NET_RATIOS = [("pyasync_c/uvloop", 2, 1), ("pyasync_c/libuv", 2, 3), ("uvloop/libuv", 1, 3),
              ("stdlib/libuv", 0, 3)]

NOISY_SPREAD = 0.15  # repeats further apart than this (relative to best) are flagged


def _best(c: Cell) -> float | None:
    return c.get("best")


def _fixed(key: str) -> Callable[[Cell], str]:
    """Show a small figure (µs, bytes) with the digits that matter."""
    def show(c: Cell) -> str:
        v = c[key]
        return f"{v:.2f}" if v < 10 else f"{v:,.0f}" if v >= 100 else f"{v:.1f}"
    return show


@dataclass
class Group:
    title: str
    group: str  # the Workload.group of its rows
    columns: list[tuple[str, str, str]]
    ratios: list[tuple[str, int, int]]
    value: Callable[[Cell], float | None] = _best  # the figure ratios and the chart use
    show: Callable[[Cell], str] | None = None  # how an ok cell prints (default: si(value))
    unit_header: str = "unit/s"
    axis: str = "ops/s (best of N, log)"  # the chart's y label for the values
    lower_is_better: bool = False  # a cost (CPU, memory): ratios below 1 favour the numerator
    chart: bool = True


GROUPS = [
    Group("Event loop (asyncio primitives; last column: C primitives installed)", "loop",
          LOOP_COLUMNS, LOOP_RATIOS),
    Group("Primitives (asyncio's vs pyasync_c._primitives')", "primitives", PRIM_COLUMNS, PRIM_RATIOS),
    Group("Network echo: round trips/s", "net", NET_COLUMNS, NET_RATIOS, unit_header="load",
          axis="round trips/s (best of N, log)"),
    Group("Network echo: latency p50 / p99 (µs)", "net", NET_COLUMNS, [],
          value=lambda c: c.get("p99_us"),
          show=lambda c: f"{c['p50_us']:,.0f} / {c['p99_us']:,.0f}", unit_header="load", chart=False),
    Group("Network echo: server user CPU per round trip (µs)", "net", NET_COLUMNS,
          [("pyasync_c/uvloop", 2, 1), ("pyasync_c/stdlib", 2, 0), ("uvloop/stdlib", 1, 0)],
          value=lambda c: c.get("server_user_us_per_rt"), show=_fixed("server_user_us_per_rt"),
          unit_header="load", lower_is_better=True, chart=False),
    Group("Network echo: server user+system CPU per round trip (µs)", "net", NET_COLUMNS, NET_RATIOS,
          value=lambda c: c.get("server_cpu_us_per_rt"), show=_fixed("server_cpu_us_per_rt"),
          unit_header="load", axis="server user+sys CPU µs per round trip (log)", lower_is_better=True),
    Group("Idle connections: server RSS growth per connection (bytes)", "net_memory", NET_COLUMNS,
          NET_RATIOS, value=lambda c: c.get("bytes_per_conn"), show=_fixed("bytes_per_conn"),
          unit_header="load", lower_is_better=True, chart=False),
]


def si(x: float) -> str:
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= factor:
            return f"{x / factor:.3g}{suffix}"
    return f"{x:.3g}"


class Table:
    """Results indexed by cell, with the best-of-N rate as the figure."""

    def __init__(self, cells: Sequence[Cell], workloads: Sequence[Workload]):
        self.cells: dict[Key, Cell] = {(c["workload"], c["loop"], c["prims"]): c for c in cells}
        self.order = [w.name for w in workloads]
        self.units = {w.name: w.unit for w in workloads}
        for c in cells:  # network cells say what load they ran (e.g. 10×1 KiB)
            if "load" in c:
                self.units[c["workload"]] = c["load"]
        self.group_of = {w.name: w.group for w in workloads}

    def value(self, group: Group, wl: str, loop: str, prims: str) -> float | None:
        c = self.cells.get((wl, loop, prims))
        return group.value(c) if c and c.get("status") == "ok" else None

    def shown(self, group: Group, wl: str, loop: str, prims: str) -> str:
        c = self.cells.get((wl, loop, prims))
        if c is None:
            return "–"  # not run (e.g. --loops excluded it)
        if c.get("status") == "ok":
            mark = "~" if c.get("spread", 0) > NOISY_SPREAD else ""
            return mark + (group.show(c) if group.show else si(group.value(c) or 0.0))
        return "n/a" if c.get("status") == "unavailable" else "err"

    def workloads(self, group: Group) -> list[str]:
        present = {k[0] for k in self.cells}
        return [w for w in self.order if w in present and self.group_of[w] == group.group]

    def ratio(self, group: Group, wl: str, num: int, den: int) -> float | None:
        a = self.value(group, wl, *group.columns[num][1:])
        b = self.value(group, wl, *group.columns[den][1:])
        return a / b if a is not None and b else None

    def rows(self, group: Group) -> tuple[list[str], list[list[str]]]:
        header = ["workload", group.unit_header] + [c[0] for c in group.columns] + [r[0] for r in group.ratios]
        rows = []
        for wl in self.workloads(group):
            row = [wl, self.units[wl]]
            row += [self.shown(group, wl, *col[1:]) for col in group.columns]
            for _, num, den in group.ratios:
                r = self.ratio(group, wl, num, den)
                row.append(f"{r:.2f}x" if r is not None else "n/a")
            rows.append(row)
        return header, rows

    def noisy(self) -> list[Cell]:
        return [c for c in self.cells.values()
                if c.get("status") == "ok" and c.get("spread", 0) > NOISY_SPREAD]

    def problems(self) -> list[Cell]:
        return [c for c in self.cells.values() if c.get("status") not in ("ok", "unavailable")]


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt: Callable[[list[str]], str] = lambda r: "  ".join(
        (v.ljust(w) if i < 2 else v.rjust(w)) for i, (v, w) in enumerate(zip(r, widths)))
    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, rows)])


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def render_text(table: Table, markdown: bool, meta: dict[str, Any]) -> str:
    out = []
    rounds = meta.get("rounds", 1)
    stat = (f"Best of {meta['repeat']} timed repeats (ops/s), each cell in a fresh process after a warm-up"
            + (f", {rounds} interleaved rounds pooled" if rounds > 1 else ""))
    for group in GROUPS:
        header, rows = table.rows(group)
        if not rows:
            continue
        if markdown:
            out += [f"### {group.title}", "", markdown_table(header, rows), ""]
        else:
            out += [group.title, text_table(header, rows), ""]
    notes = [stat + (" — QUICK run (sizes /10): smoke test only" if meta.get("quick") else "") + ".",
             "n/a: loop or primitive not importable/implemented; err: the cell failed (see results.json); "
             f"~: repeats spread over more than {NOISY_SPREAD:.0%} (noisy)."]
    net = meta.get("net")
    if net and any(table.workloads(g) for g in GROUPS if g.group.startswith("net")):
        pins = (f"server pinned to CPU {net['server_cpu']}, load driver (net/echo_client.c) to CPU "
                f"{net['client_cpu']}" if net.get("server_cpu") is not None else "not pinned (one CPU)")
        notes.append(f"Network: round trips/s is the best of {meta['repeat']} windows of {net['window_s']:g} s "
                     f"after a {net['warmup_s']:g} s warm-up, each connection with one message in flight; "
                     f"latency and server CPU are the median over the windows; {pins}. "
                     "raw libuv: net/echo_server_libuv.c. CPU and memory ratios: below 1 means the "
                     "first named uses less.")
    origin = meta.get("pyasync_c")
    if origin:
        notes.append(f"pyasync_c from {origin}.")
    load = meta.get("loadavg")
    notes.append(f"Python {meta['python']}, {meta['cpu']}, git {meta['git']}, {meta['date']}"
                 + (f", load average {load[0]:g} before / {load[1]:g} after" if load else "") + ".")
    if markdown:
        out += [f"_{n}_  " for n in notes]
    else:
        out += notes
    return "\n".join(out).rstrip() + "\n"


def render_chart(table: Table, path: Path, meta: dict[str, Any]) -> bool:
    """One row per charted group that has results (loop, primitives, network
    round trips/s, network server CPU) × two panels: the figures on a log
    scale, and the ratios as bars up or down from 1 (log scale). Returns
    False (and writes nothing) when no group has anything to chart."""
    groups = [g for g in GROUPS if g.chart and table.workloads(g)]
    if not groups:
        return False
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(groups), 2, figsize=(17, 5.2 * len(groups)), squeeze=False,
                             gridspec_kw={"width_ratios": [3, 2]})
    for (ax_rate, ax_ratio), group in zip(axes, groups):
        wls = table.workloads(group)
        _bars(ax_rate, wls, [c[0] for c in group.columns],
              [[table.value(group, w, *c[1:]) for w in wls] for c in group.columns], RATE_COLORS)
        ax_rate.set_ylabel(group.axis)
        ax_rate.set_title(group.title)
        _bars(ax_ratio, wls, [r[0] for r in group.ratios],
              [[table.ratio(group, w, num, den) for w in wls] for _, num, den in group.ratios],
              RATIO_COLORS, baseline=1.0)
        ax_ratio.axhline(1.0, color="black", linewidth=0.8)
        ax_ratio.set_ylabel("ratio (<1: first named uses less, log)" if group.lower_is_better
                            else "ratio (>1: first named is faster, log)")
        ax_ratio.set_title(f"{group.title.split(' (')[0]}: ratios")
    title = "pyasync_c benchmarks" + (" (QUICK smoke run)" if meta.get("quick") else "")
    fig.suptitle(f"{title} — Python {meta['python']}, best of {meta['repeat']}, {meta['date']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


RATE_COLORS = ["#7f7f7f", "#1f77b4", "#d62728", "#2ca02c", "#bcbd22", "#e377c2"]
RATIO_COLORS = ["#9467bd", "#ff7f0e", "#17becf", "#8c564b"]


def _bars(ax: Any, workloads: list[str], series_labels: list[str],
          series: list[list[float | None]], colors: list[str],
          baseline: float | None = None) -> None:
    """Grouped bars on a log scale; a missing value is drawn as an 'n/a' mark.
    Without ``baseline`` bars rise from the bottom of the axis; with it they
    go up or down from ``baseline`` and carry their value as a label."""
    k = len(series)
    width = 0.8 / k
    present = [v for s in series for v in s if v]
    if baseline is None:
        lo = min(present) / 3 if present else 1.0
        hi = max(present) * 3 if present else 10.0
    else:
        lo = min(present + [baseline]) / 1.6
        hi = max(present + [baseline]) * 1.6
    bottom = lo if baseline is None else baseline
    for i, (label, values) in enumerate(zip(series_labels, series)):
        xs = [j + (i - (k - 1) / 2) * width for j in range(len(workloads))]
        heights = [v - bottom if v else 0.0 for v in values]
        ax.bar(xs, heights, width, bottom=bottom, label=label, color=colors[i % len(colors)])
        for x, v in zip(xs, values):
            if not v:
                ax.text(x, bottom, "n/a", ha="center", va="bottom", fontsize=7, rotation=90)
            elif baseline is not None:
                ax.text(x, v, f"{v:.3g}", ha="center", va="bottom" if v >= baseline else "top",
                        fontsize=7)
    ax.set_yscale("log")
    ax.set_ylim(lo, hi)
    if baseline is not None:  # ratios span little: plain 0.5, 1, 2, 5 ticks
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks(range(len(workloads)))
    ax.set_xticklabels(workloads, rotation=25, ha="right")
    ax.grid(axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8)
