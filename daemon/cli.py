"""The `candled` command line (also `python -m daemon`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import uvloop

from daemon import logs
from daemon.config import EX_CONFIG, Config, ConfigError, load_config


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
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("run", parents=[common], help="run the daemon in the foreground")
    sub.add_parser("migrate", parents=[common], help="apply pending migrations, then exit")
    sub.add_parser(
        "check-config", parents=[common], help="validate the config (exit 0, or 78 naming the key)"
    )
    sim = sub.add_parser("sim", parents=[common], help="run the built-in simulated exchange")
    sim.add_argument("--listen", default="127.0.0.1:9100", metavar="HOST:PORT")
    sim.add_argument("--scenario", type=Path, metavar="FILE", help="TOML scenario with faults")
    return p


def _load(args: argparse.Namespace) -> Config:
    config = load_config(args.config)
    logs.configure(config.daemon.log_level, config.daemon.log_format)
    return config


async def _migrate(args: argparse.Namespace) -> int:
    from daemon.store.provision import open_database

    config = _load(args)
    async with open_database(config) as db:
        print(f"migrations applied; {db.info.describe}")
    return 0


async def _run(args: argparse.Namespace) -> int:
    from daemon.app import run_daemon

    return await run_daemon(_load(args))


async def _sim(args: argparse.Namespace) -> int:
    from daemon.sim.server import run_sim

    logs.configure("info", "console")
    await run_sim(args.listen, args.scenario)
    return 0


_ASYNC: dict[str, Callable[[argparse.Namespace], Coroutine[Any, Any, int]]] = {
    "run": _run,
    "migrate": _migrate,
    "sim": _sim,
}


def main(argv: Sequence[str] | None = None) -> int:
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
