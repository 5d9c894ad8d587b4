"""The results of a run as Markdown, JSON and PNG charts.

Charts need matplotlib (``pip install 'apiary[bench]'``); without it the Markdown and
JSON files are still written and the run says that the charts were left out.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apiary
from apiary._bench.runner import Outcome, Result
from apiary._bench.workloads import WORKLOADS

#: (numerator, denominator, what the ratio shows, kind, target). ``kind`` "overhead":
#: 1 - numerator/denominator in throughput, target a maximum; "speed-up": the ratio,
#: target a minimum.
COMPARISONS: list[tuple[str, str, str, str, float | None]] = []
for _base in ("apiary-sqlite", "apiary-pg", "apiary-pg-client"):
    COMPARISONS += [
        (f"{_base}:trace-on", f"{_base}:trace-off", "tracing", "overhead", 0.10),
        (f"{_base}:manual-log", f"{_base}:trace-off", "manual logging", "overhead", None),
        (f"{_base}:record-sfr", f"{_base}:record-none", "SFR recording", "overhead", 0.03),
        (f"{_base}:record-all", f"{_base}:record-none", "recording everything", "overhead", None),
        # trace-off is record-sfr: a run of the tracing variants alone compares with it.
        (f"{_base}:trace-off", f"{_base}:record-none", "SFR recording", "overhead", 0.03),
    ]
COMPARISONS += [
    ("apiary-pg", "apiary-pg-client", "placement=db over client", "speed-up", None),
    ("apiary-http", "rpc-baseline", "end to end over HTTP", "speed-up", 2.0),
    ("apiary-pg", "rpc-baseline", "in-process apiary-pg over the RPC baseline", "speed-up", None),
    ("apiary-pg", "direct", "in-process apiary-pg over direct calls", "speed-up", None),
    (
        "apiary-pg:trace-off",
        "direct",
        "in-process apiary-pg (tracing off) over direct calls",
        "speed-up",
        None,
    ),
    ("apiary-pg", "dbos", "apiary-pg over DBOS", "speed-up", 20.0),
    ("apiary-pg:trace-off", "dbos", "apiary-pg (tracing off) over DBOS", "speed-up", 20.0),
    (
        "apiary-pg:trace-off",
        "rpc-baseline",
        "in-process apiary-pg (tracing off) over the RPC baseline",
        "speed-up",
        None,
    ),
]


def machine(db_url: str | None = None) -> str:
    """One line describing the machine and versions."""
    line = (
        f"{os.cpu_count()} CPUs, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
        f"apiary {apiary.__version__}"
    )
    if db_url:
        try:
            import psycopg

            with psycopg.connect(db_url, autocommit=True, connect_timeout=5) as conn:
                row = conn.execute("SHOW server_version").fetchone()
            line += f", PostgreSQL {row[0] if row else '?'} (psycopg {psycopg.__version__})"
        except Exception as exc:
            line += f", PostgreSQL unreachable ({type(exc).__name__})"
    return line


def _ratios(results: list[Result]) -> Iterator[dict[str, Any]]:
    by_key = {(r.workload, r.clients, r.system): r.throughput for r in results}
    configs = sorted(
        {(r.workload, r.clients) for r in results},
        key=lambda c: (list(WORKLOADS).index(c[0]), c[1]),
    )
    for workload, clients in configs:
        for top, bottom, label, kind, target in COMPARISONS:
            a = by_key.get((workload, clients, top))
            b = by_key.get((workload, clients, bottom))
            if not a or not b:
                continue
            ratio = a / b
            entry: dict[str, Any] = {
                "workload": workload,
                "clients": clients,
                "comparison": label,
                "systems": [top, bottom],
                "throughput": [a, b],
                "ratio": ratio,
                "kind": kind,
                "target": target,
            }
            if kind == "overhead":
                entry["overhead"] = 1 - ratio
                entry["met"] = None if target is None else 1 - ratio <= target
            else:
                entry["met"] = None if target is None else ratio >= target
            yield entry


def to_json(outcome: Outcome, command: str, described: str) -> dict[str, Any]:
    """Everything as one JSON document."""
    s = outcome.settings
    return {
        "command": command,
        "machine": described,
        "settings": {
            "workloads": s.workloads,
            "systems": s.systems,
            "clients": s.clients,
            "duration": s.duration,
            "rounds": s.rounds,
            "warmup": s.warmup,
            "scale": s.scale,
        },
        "params": outcome.params,
        "results": [r.to_json() for r in outcome.results],
        "ratios": list(_ratios(outcome.results)),
        "skipped": outcome.skipped,
        "checks": outcome.checks,
    }


def to_markdown(data: dict[str, Any]) -> str:
    """The JSON document as Markdown tables."""
    s = data["settings"]
    lines = [
        "# apiary bench",
        "",
        f"Command: `{data['command']}`",
        "",
        f"Machine: {data['machine']}",
        "",
        f"Scale `{s['scale']}`; {s['rounds']} rounds of {s['duration']:g} s per system, "
        f"interleaved across systems, after {s['warmup']:g} s of warm-up; medians over rounds. "
        "Throughput counts operations (workflows) completed per second by all clients. "
        "A round of an Apiary system with tracing on ends when its traces are in the trace "
        "store (settling); that time counts in the round.",
    ]
    for workload in s["workloads"]:
        rows = [r for r in data["results"] if r["workload"] == workload]
        lines += ["", f"## {workload}", "", WORKLOADS[workload].description, ""]
        lines.append(
            f"Data: {', '.join(f'{k} = {v:,}' for k, v in data['params'][workload].items())}; mix: "
            + ", ".join(f"{op} {share:.0%}" for op, share in WORKLOADS[workload].mix.items())
            + "."
        )
        lines += [
            "",
            "| clients | system | ops/s (median) | min - max | p50 ms | p99 ms | failed |",
            "|---:|---|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            failed = sum(r["errors"].values())
            lines.append(
                f"| {r['clients']} | {r['system']} | {r['throughput']:,.0f} "
                f"| {r['throughput_min']:,.0f} - {r['throughput_max']:,.0f} "
                f"| {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | "
                + (", ".join(f"{n} {k}" for k, n in r["errors"].items()) if failed else "0")
                + " |"
            )
    failures = [r for r in data["results"] if r.get("error_messages")]
    if failures:
        lines += ["", "## Failed operations", "", "The first message of each error type:", ""]
        for r in failures:
            for kind, message in r["error_messages"].items():
                one_line = " ".join(message.split()).replace("`", "'")
                lines.append(
                    f"- {r['workload']}, {r['system']}, {_clients(r['clients'])}: "
                    f"{r['errors'].get(kind, 0)} {kind}: `{one_line}`"
                )
    if data["ratios"]:
        lines += [
            "",
            "## Ratios",
            "",
            "| workload | clients | comparison | ops/s | vs ops/s | ratio | overhead | target |",
            "|---|---:|---|---:|---:|---:|---:|---|",
        ]
        for e in data["ratios"]:
            a, b = e["throughput"]
            overhead = f"{e['overhead']:+.1%}" if e["kind"] == "overhead" else "-"
            target = "-"
            if e["target"] is not None:
                bound = (
                    f"<= {e['target']:.0%}" if e["kind"] == "overhead" else f">= {e['target']:g}x"
                )
                target = f"{bound}: {'met' if e['met'] else 'MISSED'}"
            lines.append(
                f"| {e['workload']} | {e['clients']} | {e['comparison']} "
                f"({e['systems'][0]} / {e['systems'][1]}) | {a:,.0f} | {b:,.0f} "
                f"| {e['ratio']:.2f}x | {overhead} | {target} |"
            )
    lines += ["", "## Checks", ""]
    for c in data["checks"]:
        verdict = "ok" if c["ok"] else "**FAILED**"
        lines.append(f"- {c['workload']} ({', '.join(c['systems'])}): {verdict}: {c['summary']}")
    if not data["checks"]:
        lines.append("- nothing ran")
    if data["skipped"]:
        lines += ["", "## Skipped", ""]
        lines += [f"- {name}: {reason}" for name, reason in data["skipped"].items()]
    return "\n".join(lines) + "\n"


def charts(data: dict[str, Any], out: Path) -> list[Path] | str:
    """One PNG per workload (throughput; p50 and p99); or why none were drawn."""
    try:
        matplotlib: Any = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        plt: Any = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        return "matplotlib is not installed (pip install 'apiary[bench]'): no charts drawn"
    written: list[Path] = []
    for workload in data["settings"]["workloads"]:
        rows = [r for r in data["results"] if r["workload"] == workload]
        if not rows:
            continue
        systems = list(dict.fromkeys(r["system"] for r in rows))
        clients = sorted({r["clients"] for r in rows})
        cell = {(r["system"], r["clients"]): r for r in rows}
        fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
        width = 0.8 / len(systems)
        for i, system in enumerate(systems):
            xs = [c + (i - (len(systems) - 1) / 2) * width for c in range(len(clients))]
            found = [cell.get((system, c)) for c in clients]
            left.bar(xs, [r["throughput"] if r else 0 for r in found], width, label=system)
            p50 = [r["p50_ms"] if r else 0 for r in found]
            p99 = [r["p99_ms"] if r else 0 for r in found]
            bars = right.bar(xs, p99, width, alpha=0.35)
            right.bar(
                xs, p50, width, color=bars.patches[0].get_facecolor()[:3] if bars.patches else None
            )
        for axis, title in (
            (left, "throughput (ops/s)"),
            (right, "latency ms: p50 (solid), p99 (light)"),
        ):
            axis.set_xticks(range(len(clients)), [_clients(c) for c in clients])
            axis.set_title(title)
            axis.grid(axis="y", alpha=0.3)
        right.set_yscale("log")
        left.legend(fontsize="small")
        fig.suptitle(f"apiary bench: {workload} (scale {data['settings']['scale']})")
        fig.tight_layout()
        path = out / f"{workload}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def write(
    outcome: Outcome, out: Path, command: str
) -> tuple[dict[str, Any], list[Path], str | None]:
    """Write ``results.json``, ``results.md`` and the charts into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    data = to_json(outcome, command, machine(outcome.settings.db_url))
    (out / "results.json").write_text(json.dumps(data, indent=2) + "\n")
    (out / "results.md").write_text(to_markdown(data))
    drawn = charts(data, out)
    if isinstance(drawn, str):
        return data, [out / "results.md", out / "results.json"], drawn
    return data, [out / "results.md", out / "results.json", *drawn], None


def _clients(count: int) -> str:
    """``"1 client"``, ``"4 clients"``."""
    return f"{count} client" + ("" if count == 1 else "s")
