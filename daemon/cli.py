"""The `candled` command line (also `python -m candled`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import uvloop

from candled import __version__, logs, oneshot, research
from candled.config import EX_CONFIG, Config, ConfigError, load_config, parse_duration
from candled.domain import SeriesKey


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="PATH",
        help="config file (default: $CANDLED_CONFIG, else ./config.toml)",
    )
    p = argparse.ArgumentParser(
        prog="candled", description="Keep a TimescaleDB store of market candles complete."
    )
    p.add_argument("--version", action="version", version=f"candled {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("run", parents=[common], help="run the daemon in the foreground")
    sub.add_parser("migrate", parents=[common], help="apply pending migrations, then exit")
    sub.add_parser(
        "check-config", parents=[common], help="validate the config (exit 0, or 78 naming the key)"
    )
    series = argparse.ArgumentParser(add_help=False)
    series.add_argument(
        "--series", nargs="+", type=_series, metavar="V:S:TF", help="only these series"
    )
    # Run by hand, an audit scans each series' whole history: a hole can be
    # anywhere. --full stays accepted (it was the opt-in before).
    scan = argparse.ArgumentParser(add_help=False)
    depth = scan.add_mutually_exclusive_group()
    depth.add_argument("--full", action="store_true", help="scan whole histories (the default)")
    depth.add_argument(
        "--incremental", action="store_true",
        help="scan only what changed since the last audit (plus any series purged since)",
    )  # fmt: skip
    audit = sub.add_parser(
        "audit", parents=[common, series, scan], help="audit now; exit 1 if any series is not OK"
    )
    audit.add_argument("--json", action="store_true", help="machine-readable output")
    repair = sub.add_parser("repair", parents=[common, series, scan], help="targeted repair now")
    repair.add_argument("--max-fills", type=int, metavar="N", help="requests per series")
    repair.add_argument(
        "--reset-genesis", action="store_true", help="forget the genesis of the series first"
    )
    backfill = sub.add_parser("backfill", parents=[common, series], help="orchestrated backfill")
    backfill.add_argument("--since", type=_duration, metavar="DURATION", help="e.g. 200d")
    export = sub.add_parser(
        "export-returns", parents=[common, series], help="aligned returns matrix (CSV or Parquet)"
    )
    export.add_argument("--since", type=_duration, required=True, metavar="DURATION")
    export.add_argument("--out", type=Path, required=True, metavar="FILE")
    candles = sub.add_parser(
        "export", parents=[common], help="candles of some series to a .csv or .parquet file"
    )
    candles.add_argument("--series", nargs="+", type=_series, required=True, metavar="V:S:TF")
    when = "a duration before now (30d) or a UTC date/time (2026-01-05T14:30)"
    candles.add_argument("--since", type=_when, required=True, metavar="WHEN", help=when)
    candles.add_argument("--until", type=_when, metavar="WHEN", help=f"{when}; default: now")
    candles.add_argument("--out", type=Path, required=True, metavar="FILE.csv|FILE.parquet")
    how = "rows: outer (any series has a bar), inner (all do), calendar (every expected bar)"
    candles.add_argument("--how", choices=["outer", "inner", "calendar"], default="outer", help=how)
    empty = "confirmed-empty bars on the calendar grid: NaN rows (default), or left out"
    candles.add_argument("--empty", choices=["nan", "drop"], default="nan", help=empty)
    coverage = sub.add_parser(
        "coverage", parents=[common, series],
        help="draw the store's coverage (/coverage's picture) to an .html or .svg file; "
        "exit 1 if bars are missing",
    )  # fmt: skip
    coverage.add_argument("--out", type=Path, required=True, metavar="FILE.html|FILE.svg")
    coverage.add_argument(
        "--since", type=_duration, metavar="DURATION", help="default: the longest lookback"
    )
    status = sub.add_parser(
        "status", parents=[common],
        help="the cluster's members and each series' owner; exit 1 if a series has none",
    )  # fmt: skip
    status.add_argument("--json", action="store_true", help="machine-readable output")
    sim = sub.add_parser("sim", parents=[common], help="run the built-in simulated exchange")
    sim.add_argument("--listen", default="127.0.0.1:9100", metavar="HOST:PORT")
    sim.add_argument("--scenario", type=Path, metavar="FILE", help="TOML scenario with faults")
    sim.add_argument(
        "--protocol",
        default="binance",
        metavar="NAME",
        help="the venue protocol to speak: binance (default), coinbase, kraken, alpaca, oanda",
    )
    return p


def _series(text: str) -> SeriesKey:
    try:
        return SeriesKey.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _duration(text: str) -> timedelta:
    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _when(text: str) -> timedelta | datetime:
    try:
        return parse_duration(text)
    except ValueError:
        pass
    try:
        return research.utc_time(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected a duration (30d, 6h) or a UTC date/time (2026-01-05T14:30)"
        ) from None


def _load(args: argparse.Namespace) -> Config:
    config = load_config(args.config)
    logs.configure(config.daemon.log_level, config.daemon.log_format)
    return config


async def _migrate(args: argparse.Namespace) -> int:
    from candled.store.provision import open_database

    config = _load(args)
    async with open_database(config.database.dsn, config.daemon.state_dir) as db:
        print(f"migrations applied; {db.info.describe}")
    return 0


async def _run(args: argparse.Namespace) -> int:
    from candled.app import run_daemon

    return await run_daemon(_load(args))


async def _sim(args: argparse.Namespace) -> int:
    from candled_sim.server import run_sim

    logs.configure("info", "console")
    try:
        await run_sim(args.listen, args.scenario, args.protocol)
    except ValueError as e:  # a bad --listen, --protocol or scenario
        print(f"candled sim: {e}", file=sys.stderr)
        return 2
    return 0


async def _audit(args: argparse.Namespace) -> int:
    return await oneshot.audit(
        _load(args), args.series, as_json=args.json, full=not args.incremental
    )


async def _repair(args: argparse.Namespace) -> int:
    return await oneshot.repair(
        _load(args), args.series, max_fills=args.max_fills, reset=args.reset_genesis,
        full=not args.incremental,
    )  # fmt: skip


async def _backfill(args: argparse.Namespace) -> int:
    return await oneshot.backfill(_load(args), args.series, args.since)


async def _export(args: argparse.Namespace) -> int:
    if not args.series:
        raise SystemExit("candled: export-returns needs --series")
    return await oneshot.export_returns(_load(args), args.series, args.since, args.out)


async def _export_candles(args: argparse.Namespace) -> int:
    config = _load(args)
    return await research.export_command(
        config.database.dsn, config.daemon.state_dir, args.series, args.since, args.until,
        args.out, how=args.how, empty=args.empty, overrides=config.healing.overrides(),
    )  # fmt: skip


async def _status(args: argparse.Namespace) -> int:
    return await oneshot.status(_load(args), as_json=args.json)


async def _coverage(args: argparse.Namespace) -> int:
    return await oneshot.coverage(_load(args), args.series, args.since, args.out)


_ASYNC: dict[str, Callable[[argparse.Namespace], Coroutine[Any, Any, int]]] = {
    "run": _run,
    "migrate": _migrate,
    "audit": _audit,
    "repair": _repair,
    "backfill": _backfill,
    "export-returns": _export,
    "export": _export_candles,
    "coverage": _coverage,
    "status": _status,
    "sim": _sim,
}


def main(argv: Sequence[str] | None = None) -> int:
    """The `candled` command: run one subcommand and return its exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "check-config":
            config = load_config(args.config)
            n = len(config.series_specs())
            print(f"{config.source}: ok ({len(config.venues)} venues, {n} series)")
            return 0
        return uvloop.run(_ASYNC[args.command](args))
    except ConfigError as e:
        print(f"candled: config error: {e}", file=sys.stderr)
        return EX_CONFIG
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
